/**
 * The STS region when --region and AWS_REGION say nothing: the node's metadata, else the partition's default
 * region (from the metadata or the role ARNs), never us-east-1 for a node in China or GovCloud.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { partitionOfArn, partitionOfRegion, resolveRegion, type MetadataReader } from '../../src/cache/region.ts';
import { systemClock } from '../../src/clock.ts';
import { createUpstream, UpstreamError } from '../../src/server/upstream.ts';
import { FakeMetadataService } from '../fakes/metadata.ts';

process.env.AWS_EC2_METADATA_DISABLED = 'true';

/** A metadata service answering these paths (404 for the rest), or none at all (every read fails like a timeout). */
function metadata(paths: Record<string, string> | 'unreachable'): MetadataReader & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    async getText(path: string) {
      asked.push(path);
      if (paths === 'unreachable') throw new UpstreamError('timeout', `upstream ${path} timed out`);
      const text = paths[path];
      if (text === undefined) throw new UpstreamError('status', `upstream ${path} answered 404`, 404);
      return text;
    },
  };
}

function logger() {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)) as { level: number; msg: string });
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream), warnings: () => lines.filter((l) => l.level === 40).map((l) => l.msg) };
}

const PLACEMENT = 'latest/meta-data/placement/region';
const DOCUMENT = 'latest/dynamic/instance-identity/document';
const PARTITION = 'latest/meta-data/services/partition';
const IAM_INFO = 'latest/meta-data/iam/info';

describe('partitions', () => {
  it('of regions and ARNs', () => {
    assert.deepEqual(['eu-west-1', 'cn-north-1', 'cn-northwest-1', 'us-gov-west-1', 'us-gov-east-1', 'us-iso-east-1', 'us-isob-east-1'].map(partitionOfRegion),
      ['aws', 'aws-cn', 'aws-cn', 'aws-us-gov', 'aws-us-gov', 'aws-iso', 'aws-iso-b']);
    assert.equal(partitionOfArn('arn:aws-cn:iam::123456789012:role/'), 'aws-cn');
    assert.equal(partitionOfArn('arn:aws-us-gov:iam::123456789012:role/x'), 'aws-us-gov');
    assert.equal(partitionOfArn('arn:aws:iam::123456789012:role/x'), 'aws');
    assert.equal(partitionOfArn('reader'), undefined);
    assert.equal(partitionOfArn(undefined), undefined);
  });
});

describe('resolveRegion', () => {
  it('--region (or AWS_REGION) wins, without asking the metadata', async () => {
    const md = metadata({ [PLACEMENT]: 'eu-west-1' });
    const { log } = logger();
    assert.deepEqual(await resolveRegion({ configured: 'eu-central-1', metadata: md, roleArns: [], logger: log }), { region: 'eu-central-1', source: 'configured' });
    assert.deepEqual(md.asked, []);
  });

  it("the node's placement region first", async () => {
    const { log } = logger();
    assert.deepEqual(await resolveRegion({ configured: '', metadata: metadata({ [PLACEMENT]: 'cn-northwest-1\n' }), roleArns: [], logger: log }), { region: 'cn-northwest-1', source: 'metadata' });
  });

  it('else the region of the instance identity document', async () => {
    const { log } = logger();
    const md = metadata({ [DOCUMENT]: JSON.stringify({ accountId: '123456789012', region: 'us-gov-east-1' }) });
    assert.deepEqual(await resolveRegion({ configured: '', metadata: md, roleArns: [], logger: log }), { region: 'us-gov-east-1', source: 'identity-document' });
  });

  it("else the default region of the node's partition (services/partition, or the instance profile's ARN)", async () => {
    const { log } = logger();
    assert.deepEqual(await resolveRegion({ configured: '', metadata: metadata({ [PARTITION]: 'aws-cn' }), roleArns: [], logger: log }),
      { region: 'cn-north-1', source: 'partition', partitionFrom: 'meta-data/services/partition' });
    const info = JSON.stringify({ Code: 'Success', InstanceProfileArn: 'arn:aws-us-gov:iam::123456789012:instance-profile/node' });
    assert.deepEqual(await resolveRegion({ configured: '', metadata: metadata({ [IAM_INFO]: info }), roleArns: [], logger: log }),
      { region: 'us-gov-west-1', source: 'partition', partitionFrom: 'the instance profile ARN' });
  });

  it('without metadata, the partition of the role ARNs: a China or GovCloud node never falls back to us-east-1', async () => {
    for (const [arn, region] of [['arn:aws-cn:iam::123456789012:role/', 'cn-north-1'], ['arn:aws-us-gov:iam::123456789012:role/', 'us-gov-west-1']] as const) {
      const { log, warnings } = logger();
      const md = metadata('unreachable');
      const got = await resolveRegion({ configured: '', metadata: md, roleArns: [arn, undefined], logger: log });
      assert.deepEqual(got, { region, source: 'partition', partitionFrom: arn });
      assert.deepEqual(md.asked, [PLACEMENT], 'an unreachable service is asked once, not once per path');
      assert.deepEqual(warnings(), []);
    }
    // --default-role counts too.
    const { log } = logger();
    assert.equal((await resolveRegion({ configured: '', metadata: metadata('unreachable'), roleArns: [undefined, 'arn:aws-cn:iam::123456789012:role/app'], logger: log })).region, 'cn-north-1');
  });

  it('us-east-1 only when nothing says otherwise, with a warning', async () => {
    const { log, warnings } = logger();
    assert.deepEqual(await resolveRegion({ configured: '', metadata: metadata('unreachable'), roleArns: [undefined, 'reader'], logger: log }), { region: 'us-east-1', source: 'default' });
    assert.deepEqual(warnings(), ['no --region, AWS_REGION, node metadata region or partition: using us-east-1']);
  });

  it('warns when the region and the role ARNs are in different partitions', async () => {
    const { log, warnings } = logger();
    await resolveRegion({ configured: 'us-east-1', metadata: metadata({}), roleArns: ['arn:aws-cn:iam::123456789012:role/'], logger: log });
    assert.match(warnings()[0]!, /region us-east-1 is in partition aws but role ARNs are in aws-cn: STS will not know those roles; set --region/);
  });
});

describe('resolveRegion against the fake metadata service, through the agent\'s upstream client', () => {
  const fake = new FakeMetadataService({ region: 'cn-northwest-1', tokenMode: 'required' });
  let upstream: ReturnType<typeof createUpstream>;
  before(async () => {
    const url = await fake.start('127.0.0.1');
    upstream = createUpstream({ endpoint: url, clock: systemClock, logger: pino({ level: 'silent' }) });
  });
  after(async () => {
    upstream.close();
    await fake.close();
  });

  it('reads placement/region with an IMDSv2 token', async () => {
    const { log } = logger();
    assert.deepEqual(await resolveRegion({ configured: '', metadata: upstream, roleArns: ['arn:aws-cn:iam::123456789012:role/'], logger: log }), { region: 'cn-northwest-1', source: 'metadata' });
    assert.ok(fake.seen('/latest/meta-data/placement/region').some((r) => typeof r.headers['x-aws-ec2-metadata-token'] === 'string'));
  });
});
