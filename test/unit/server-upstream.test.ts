import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { autodetectRoleBaseArn, createUpstream, UpstreamError, type UpstreamClient, type UpstreamOptions } from '../../src/server/upstream.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeMetadataService, type FakeMetadataOptions } from '../fakes/metadata.ts';

const logger = pino({ level: 'silent' });
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()?.();
});

async function setup(fakeOptions: FakeMetadataOptions = {}, options: Partial<UpstreamOptions> = {}) {
  const fake = new FakeMetadataService(fakeOptions);
  const url = await fake.start();
  const clock = new FakeClock();
  const upstream = createUpstream({ endpoint: url, clock, logger, ...options });
  cleanups.push(() => fake.close(), () => upstream.close());
  return { fake, clock, upstream, url };
}

const puts = (fake: FakeMetadataService) => fake.requests.filter((r) => r.method === 'PUT');

describe('upstream client', () => {
  it('takes one IMDSv2 token for concurrent and later requests, and sends nothing else', async () => {
    const { fake, upstream } = await setup({ tokenMode: 'required' });
    const results = await Promise.all([1, 2, 3].map(() => upstream.request('GET', '/latest/meta-data/instance-id')));
    assert.deepEqual(results.map((r) => r.status), [200, 200, 200]);
    assert.equal(results[0]?.body.toString(), 'i-0123456789abcdef0');
    assert.equal(results[0]?.contentType, 'text/plain');
    assert.equal((await upstream.getText('latest/meta-data/local-ipv4')), '10.0.0.10');
    assert.equal(puts(fake).length, 1);
    assert.equal(puts(fake)[0]?.headers['x-aws-ec2-metadata-token-ttl-seconds'], '21600');
    const token = fake.requests.find((r) => r.method === 'GET')?.headers['x-aws-ec2-metadata-token'];
    for (const r of fake.requests.filter((x) => x.method === 'GET')) {
      assert.equal(r.headers['x-aws-ec2-metadata-token'], token);
      assert.deepEqual(Object.keys(r.headers).sort(), ['connection', 'host', 'x-aws-ec2-metadata-token']);
    }
  });

  it('renews its token before it expires', async () => {
    const { fake, clock, upstream } = await setup({}, { tokenTtlSeconds: 600 });
    await upstream.getText('/latest/meta-data/instance-id');
    await clock.advance(299_000); // renews at TTL - min(5 min, TTL/2) = 300 s
    await upstream.getText('/latest/meta-data/instance-id');
    assert.equal(puts(fake).length, 1);
    await clock.advance(1_000);
    await upstream.getText('/latest/meta-data/instance-id');
    assert.equal(puts(fake).length, 2);
    assert.equal(puts(fake)[1]?.headers['x-aws-ec2-metadata-token-ttl-seconds'], '600');
  });

  it('falls back to IMDSv1 when the PUT is refused, and does not ask again', async () => {
    const { fake, upstream } = await setup({ tokenMode: 'v1-only' });
    assert.equal(await upstream.getText('/latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.equal(await upstream.getText('/latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.equal(puts(fake).length, 1);
    for (const r of fake.requests.filter((x) => x.method === 'GET')) assert.equal(r.headers['x-aws-ec2-metadata-token'], undefined);
  });

  it('retries once with a fresh token on 401', async () => {
    const { fake, upstream } = await setup({ tokenMode: 'required' });
    await upstream.getText('/latest/meta-data/instance-id');
    fake.revokeTokens();
    assert.equal(await upstream.getText('/latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.equal(puts(fake).length, 2);
    const gets = fake.requests.filter((r) => r.method === 'GET');
    assert.equal(gets.length, 3);
    assert.notEqual(gets[1]?.headers['x-aws-ec2-metadata-token'], gets[2]?.headers['x-aws-ec2-metadata-token']);
  });

  it('goes back to IMDSv2 when a v1 GET answers 401', async () => {
    const { fake, upstream } = await setup({ tokenMode: 'v1-only' });
    await upstream.getText('/latest/meta-data/instance-id');
    fake.tokenMode = 'required';
    assert.equal(await upstream.getText('/latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.equal(puts(fake).length, 2);
  });

  it('reports statuses, timeouts and unreachable endpoints as UpstreamError', async () => {
    const { fake, upstream, url } = await setup({}, { timeoutMs: 100 });
    const missing = await upstream.request('GET', '/latest/meta-data/none');
    assert.equal(missing.status, 404);
    await assert.rejects(upstream.getText('/latest/meta-data/none'), (e: unknown) => e instanceof UpstreamError && e.kind === 'status' && e.status === 404);
    await assert.rejects(upstream.getJson('/latest/meta-data/instance-id'), (e: unknown) => e instanceof UpstreamError && e.kind === 'invalid');
    fake.delayMs = 1000;
    await assert.rejects(upstream.getText('/latest/meta-data/instance-id'), (e: unknown) => e instanceof UpstreamError && e.kind === 'timeout');
    await fake.close();
    const dead = createUpstream({ endpoint: url, clock: new FakeClock(), logger });
    cleanups.push(() => dead.close());
    await assert.rejects(dead.getText('/latest/meta-data/instance-id'), (e: unknown) => e instanceof UpstreamError && e.kind === 'network');
  });

  it('refuses a body over the limit', async () => {
    const { upstream } = await setup({}, { maxBodyBytes: 8 });
    await assert.rejects(upstream.getText('/latest/user-data'), (e: unknown) => e instanceof UpstreamError && e.kind === 'too-large');
  });

  it('keeps a path prefix of the endpoint and refuses non-http endpoints', async () => {
    const { fake, url } = await setup();
    const prefixed = createUpstream({ endpoint: `${url}/`, clock: new FakeClock(), logger });
    cleanups.push(() => prefixed.close());
    assert.equal(await prefixed.getText('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.ok(fake.requests.some((r) => r.path === '/latest/meta-data/instance-id'));
    assert.throws(() => createUpstream({ endpoint: 'https://169.254.169.254', clock: new FakeClock(), logger }), /http:\/\//);
  });
});

describe('autodetectRoleBaseArn', () => {
  it('turns the node instance profile into a role base ARN', async () => {
    const { upstream } = await setup({ tokenMode: 'required' });
    assert.equal(await autodetectRoleBaseArn(upstream), 'arn:aws:iam::111122223333:role/');
  });

  it('fails clearly without a usable instance profile', async () => {
    const stub = (info: unknown): Pick<UpstreamClient, 'getJson'> => ({ getJson: async () => info });
    await assert.rejects(autodetectRoleBaseArn(stub({ Code: 'Success' })), /no InstanceProfileArn/);
    await assert.rejects(autodetectRoleBaseArn(stub(null)), /no InstanceProfileArn/);
    await assert.rejects(autodetectRoleBaseArn(stub({ InstanceProfileArn: 'arn:aws:iam::1:role/x' })), /cannot derive/);
    assert.equal(await autodetectRoleBaseArn(stub({ InstanceProfileArn: 'arn:aws-cn:iam::123456789012:instance-profile/path/p' })), 'arn:aws-cn:iam::123456789012:role/');
  });
});
