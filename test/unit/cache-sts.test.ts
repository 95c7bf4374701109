import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { after, before, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { sessionTags } from '../../src/cache/session-tags.ts';
import { AwsStsGateway, StsError, toStsError, validate, type AssumeRoleRequest, type StsCredentials, type StsGateway } from '../../src/cache/sts.ts';
import { systemClock } from '../../src/clock.ts';
import { createMetrics } from '../../src/metrics.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeSts, type FakeStsCall } from '../fakes/sts.ts';

process.env.AWS_EC2_METADATA_DISABLED = 'true';

const KEYS = { accessKeyId: 'AKIAKIAMTEST00000001', secretAccessKey: 'kiam-test-secret-not-real' };
const REQ: AssumeRoleRequest = {
  roleArn: 'arn:aws:iam::123456789012:role/app',
  sessionName: 'kiam-default-web-1',
  externalId: 'ext-42',
  durationSeconds: 3600,
};

async function rejection(p: Promise<unknown>): Promise<StsError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof StsError, `expected a StsError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a rejection');
}

const live = () => new AbortController().signal;

describe('AwsStsGateway against the fake STS', () => {
  const fake = new FakeSts({ config: { expectedCredentials: KEYS } });
  let gateways: AwsStsGateway[] = [];
  const gateway = (overrides: Partial<ConstructorParameters<typeof AwsStsGateway>[0]> = {}) => {
    const gw = new AwsStsGateway({ region: 'us-east-1', endpoint: fake.url, credentials: KEYS, timeoutMs: 3000, ...overrides });
    gateways.push(gw);
    return gw;
  };

  before(async () => {
    await fake.start();
  });
  beforeEach(() => {
    fake.reset();
  });
  after(async () => {
    for (const gw of gateways) gw.destroy();
    gateways = [];
    await fake.stop();
  });

  it('assumes the role: fields parsed, request sent as asked, signature verified', async () => {
    const before = Date.now();
    const creds = await gateway().assumeRole(REQ, live());
    const calls = fake.calls;
    assert.equal(calls.length, 1);
    const call = calls[0] as FakeStsCall;
    assert.equal(call.result, 'ok');
    assert.equal(call.roleArn, REQ.roleArn);
    assert.equal(call.sessionName, REQ.sessionName);
    assert.equal(call.externalId, REQ.externalId);
    assert.equal(call.durationSeconds, 3600);
    assert.equal(creds.accessKeyId, call.accessKeyId);
    assert.match(creds.accessKeyId, /^ASIA[A-Z0-9]{16}$/);
    assert.ok(creds.secretAccessKey.length > 0);
    assert.ok(creds.sessionToken.length > 0);
    assert.equal(creds.expiration, call.expiration);
    assert.equal(creds.expiration % 1000, 0);
    assert.ok(creds.expiration >= Math.floor(before / 1000) * 1000 + 3600_000);
    assert.ok(creds.expiration <= Date.now() + 3600_000);
  });

  it('omits ExternalId when the identity has none, and hands out distinct credentials per call', async () => {
    const gw = gateway();
    const { externalId: _omit, ...plain } = REQ;
    const a = await gw.assumeRole(plain, live());
    const b = await gw.assumeRole(plain, live());
    assert.notEqual(a.accessKeyId, b.accessKeyId);
    assert.equal(fake.calls[0]!.externalId, undefined);
  });

  it('rejects a request signed with the wrong secret: SignatureDoesNotMatch', async () => {
    const err = await rejection(gateway({ credentials: { ...KEYS, secretAccessKey: 'wrong' } }).assumeRole(REQ, live()));
    assert.equal(err.code, 'SignatureDoesNotMatch');
    assert.equal(err.status, 403);
    assert.equal(err.retryable, false);
  });

  it('verifies signatures made with temporary credentials (session token signed too)', async () => {
    const temp = { ...KEYS, sessionToken: 'agent-session-token' };
    fake.configure({ expectedCredentials: temp });
    try {
      const creds = await gateway({ credentials: temp }).assumeRole(REQ, live());
      assert.match(creds.accessKeyId, /^ASIA/);
      const err = await rejection(gateway({ credentials: { ...temp, sessionToken: 'another' } }).assumeRole(REQ, live()));
      assert.equal(err.code, 'SignatureDoesNotMatch');
    } finally {
      fake.configure({ expectedCredentials: KEYS });
    }
  });

  it('rejects an unknown access key: InvalidClientTokenId', async () => {
    const err = await rejection(gateway({ credentials: { ...KEYS, accessKeyId: 'AKIAOTHER' } }).assumeRole(REQ, live()));
    assert.equal(err.code, 'InvalidClientTokenId');
  });

  it('maps AccessDenied (not retryable) and Throttling (retryable)', async () => {
    const gw = gateway();
    const denied = await rejection(gw.assumeRole({ ...REQ, roleArn: 'arn:aws:iam::123456789012:role/forbidden-role' }, live()));
    assert.equal(denied.code, 'AccessDenied');
    assert.equal(denied.status, 403);
    assert.equal(denied.retryable, false);
    fake.configure({ failNext: 1 });
    const throttled = await rejection(gw.assumeRole(REQ, live()));
    assert.equal(throttled.code, 'Throttling');
    assert.equal(throttled.status, 400);
    assert.equal(throttled.retryable, true);
    assert.equal(fake.calls.length, 2); // the SDK did not retry on its own
    fake.configure({ failNext: 1, failCode: 'InternalFailure' });
    const internal = await rejection(gw.assumeRole(REQ, live()));
    assert.equal(internal.code, 'InternalFailure');
    assert.equal(internal.retryable, true);
    fake.configure({ denyRoles: [REQ.roleArn] });
    assert.equal((await rejection(gw.assumeRole(REQ, live()))).code, 'AccessDenied');
  });

  for (const kind of ['empty', 'garbage', 'no-credentials', 'no-token', 'bad-expiration'] as const) {
    it(`rejects a malformed 200 answer (${kind}) as invalid-response`, async () => {
      fake.configure({ malformedNext: 1, malformedKind: kind });
      const err = await rejection(gateway().assumeRole(REQ, live()));
      assert.equal(err.code, 'invalid-response');
      assert.equal(err.retryable, true);
      assert.ok(!err.message.includes('\n'));
    });
  }

  it('times out a slow STS at its own timeoutMs', async () => {
    // Behaviour, not a stopwatch: the same slow answer is a timeout under a short timeoutMs and a success under a long
    // one, so the configured value is what decides (not some fixed timeout of the SDK). 1.5 s against 200 ms and 10 s
    // leaves wide margins either way on a loaded machine.
    fake.configure({ roleDelayMs: { [REQ.roleArn]: 1500 } });
    const err = await rejection(gateway({ timeoutMs: 200 }).assumeRole(REQ, live()));
    assert.equal(err.code, 'timeout');
    assert.equal(err.retryable, true);
    const patient = await gateway({ timeoutMs: 10_000 }).assumeRole(REQ, live());
    assert.match(patient.accessKeyId, /^ASIA/);
    assert.deepEqual(fake.calls.map((c) => c.result), ['ok', 'ok'], 'both reached STS; only the patient one waited for the answer');
  });

  it('stops when the caller aborts', async () => {
    fake.configure({ delayMs: 5000 });
    const ac = new AbortController();
    const p = gateway().assumeRole(REQ, ac.signal);
    setImmediate(() => ac.abort());
    const err = await rejection(p);
    assert.equal(err.code, 'aborted');
  });

  it('reports an unreachable endpoint as network', async () => {
    const closed = new FakeSts();
    const url = await closed.start();
    await closed.stop();
    const err = await rejection(gateway({ endpoint: url }).assumeRole(REQ, live()));
    assert.equal(err.code, 'network');
    assert.equal(err.retryable, true);
  });

  it('feeds the credential cache: 20 concurrent gets, one STS call', async () => {
    fake.configure({ delayMs: 100 });
    const cache = new CredentialCache({
      sts: gateway(),
      clock: systemClock,
      metrics: createMetrics(),
      logger: pino({ level: 'silent' }),
      sessionDurationSec: 3600,
      stsTimeoutMs: 3000,
    });
    const id = { key: 'k', roleArn: REQ.roleArn, sessionName: REQ.sessionName };
    const all = await Promise.all(Array.from({ length: 20 }, () => cache.get(id)));
    assert.ok(all.every((c) => c.accessKeyId === all[0]!.accessKeyId));
    assert.equal(fake.calls.length, 1);
    cache.stop();
  });
});

describe('session tags and outages, the real SDK against the fake STS', () => {
  const TAGS = sessionTags({ namespace: 'team-a', pod: 'web-1', serviceAccount: 'reader', node: 'ip-10-0-0-1.ec2.internal', clusterName: 'prod eu/1' });

  /** Wraps a gateway so a test can wait for every call it made to settle (an event, not a sleep). */
  function tracked(inner: StsGateway) {
    const pending: Array<Promise<unknown>> = [];
    const gateway: StsGateway = {
      assumeRole(req: AssumeRoleRequest, signal: AbortSignal): Promise<StsCredentials> {
        const p = inner.assumeRole(req, signal);
        pending.push(p.catch(() => {}));
        return p;
      },
    };
    return { gateway, settled: () => Promise.all(pending.splice(0)) };
  }

  it('sends the tags as Tags.member.N, not transitive; STS without sts:TagSession in the trust policy answers AccessDenied', async () => {
    const fake = new FakeSts({ config: { expectedCredentials: KEYS } });
    const url = await fake.start();
    const gw = new AwsStsGateway({ region: 'eu-west-1', endpoint: url, credentials: KEYS, timeoutMs: 3000 });
    try {
      const creds = await gw.assumeRole({ ...REQ, tags: TAGS }, live());
      assert.match(creds.accessKeyId, /^ASIA/);
      const [call] = fake.calls;
      assert.equal(call!.result, 'ok', 'tags within STS limits, signature verified');
      assert.deepEqual(call!.tags, TAGS.map((t) => ({ key: t.key, value: t.value })));
      assert.equal(call!.transitiveTagKeys, undefined);
      fake.configure({ denyTagSession: [REQ.roleArn] });
      const denied = await rejection(gw.assumeRole({ ...REQ, tags: TAGS }, live()));
      assert.equal(denied.code, 'AccessDenied');
      assert.equal(denied.retryable, false);
      assert.match(denied.message, /sts:TagSession/);
      // The same role without tags is still fine.
      const { externalId: _e, ...plain } = REQ;
      assert.match((await gw.assumeRole(plain, live())).accessKeyId, /^ASIA/);
      assert.equal(fake.calls.at(-1)!.tags, undefined);
    } finally {
      gw.destroy();
      await fake.stop();
    }
  });

  it('the cache through a 40-minute 503 outage: serves below the floor, logs the fix once, and is served again within 15 s', async () => {
    const clock = new FakeClock();
    const fake = new FakeSts({ config: { expectedCredentials: KEYS }, now: () => clock.now() });
    const url = await fake.start();
    const gw = new AwsStsGateway({ region: 'eu-west-1', endpoint: url, credentials: KEYS, timeoutMs: 3000 });
    const { gateway, settled } = tracked(gw);
    const logs: string[] = [];
    const logger = pino(
      { level: 'debug' },
      new Writable({
        write(chunk, _enc, cb) {
          logs.push(String(chunk));
          cb();
        },
      }),
    );
    const metrics = createMetrics();
    const cache = new CredentialCache({ sts: gateway, clock, metrics, logger, sessionDurationSec: 3600, stsTimeoutMs: 3000, random: () => 0 });
    const id = { key: 'k', roleArn: REQ.roleArn, sessionName: REQ.sessionName, tags: TAGS };
    /**
     * Advance the fake clock in 1 s steps, letting each real HTTP call the timers start finish before the next step (so
     * that the cache's 3 s deadline, on the fake clock, never overtakes a call the fake STS answers at once).
     */
    const advance = async (ms: number, step = 1000) => {
      for (let done = 0; done < ms; done += step) {
        await clock.advance(Math.min(step, ms - done));
        await settled();
      }
    };
    try {
      cache.retain(id);
      await cache.prefetch(id);
      const first = await cache.get(id);
      assert.deepEqual(fake.calls[0]!.tags, TAGS.map((t) => ({ key: t.key, value: t.value })));
      fake.configure({ failNext: 1_000_000, failCode: 'ServiceUnavailable' });
      const down = clock.now() + 12 * 60_000; // the refresh is due then
      await advance(12 * 60_000);
      for (let minute = 12; minute < 52; minute++) {
        const c = await cache.get(id);
        assert.equal(c.accessKeyId, first.accessKeyId, `minute ${minute}`);
        assert.ok(c.expiration - clock.now() >= 5 * 60_000);
        await advance(60_000);
      }
      const failedCalls = fake.calls.filter((c) => c.result === 'ServiceUnavailable');
      for (let k = 1; k < failedCalls.length; k++) assert.ok(failedCalls[k]!.time - failedCalls[k - 1]!.time >= 5000);
      assert.ok(failedCalls.length >= 200, `${failedCalls.length} retries in 40 min`);
      const up = clock.now();
      assert.equal(up - down, 40 * 60_000);
      fake.configure({ failNext: 0 });
      await advance(15_000);
      const back = fake.calls.find((c) => c.result === 'ok' && c.time >= up);
      assert.ok(back && back.time - up <= 15_000, 'STS asked again within 15 s of answering');
      assert.notEqual((await cache.get(id)).accessKeyId, first.accessKeyId);
      const warned = logs.map((l) => JSON.parse(l) as { level: number; msg: string; fix?: string }).filter((l) => l.level >= 40);
      assert.deepEqual(warned.map((l) => l.msg), [
        'credential refresh failed; serving the previous credentials',
        'STS is failing: serving credentials below the 30-minute floor until 5 minutes before they expire',
      ]);
      assert.match(warned[0]!.fix!, /STS is failing on its side/);
      assert.ok((await metrics.staleServed.get()).values[0]!.value > 0);
    } finally {
      cache.stop();
      gw.destroy();
      await fake.stop();
    }
  });
});

describe('STS response validation and error mapping', () => {
  it('validate() demands every field', () => {
    const ok = { AccessKeyId: 'ASIA1', SecretAccessKey: 's', SessionToken: 't', Expiration: new Date(1_800_000_000_000) };
    assert.deepEqual(validate(ok), { accessKeyId: 'ASIA1', secretAccessKey: 's', sessionToken: 't', expiration: 1_800_000_000_000 });
    for (const bad of [null, undefined, {}, { ...ok, AccessKeyId: '' }, { ...ok, SecretAccessKey: ' ' }, { ...ok, SessionToken: undefined }, { ...ok, Expiration: new Date('x') }]) {
      assert.throws(() => validate(bad), (e: unknown) => e instanceof StsError && e.code === 'invalid-response');
    }
  });

  it('toStsError() names network failures, missing credentials and unknown HTTP errors', () => {
    assert.equal(toStsError(Object.assign(new Error('connect'), { code: 'ECONNRESET' })).code, 'network');
    assert.equal(toStsError(Object.assign(new Error('none'), { name: 'CredentialsProviderError' })).code, 'no-credentials');
    const http = toStsError(Object.assign(new Error('huh'), { name: 'Unknown', $metadata: { httpStatusCode: 502 } }));
    assert.equal(http.code, 'http-502');
    assert.equal(http.retryable, true);
    assert.equal(toStsError('weird').code, 'unknown');
  });

  it('rejects bad options', () => {
    assert.throws(() => new AwsStsGateway({ region: '', timeoutMs: 1000 }), /region/);
    assert.throws(() => new AwsStsGateway({ region: 'us-east-1', timeoutMs: 0 }), /timeoutMs/);
  });
});

describe('FakeSts standalone', () => {
  it('prints its URL, is driven over /_fake/, and exits 0 on SIGTERM', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fakes/sts.ts', '--host', '127.0.0.1', '--port', '0', '--delay-ms', '0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      // The iterator ends (instead of waiting forever, as once(lines, 'line') would) if the child dies first.
      const first = await createInterface({ input: child.stdout! })[Symbol.asyncIterator]().next();
      assert.equal(first.done, false, 'the fake STS exited before printing its URL');
      const { url } = JSON.parse(first.value as string) as { url: string };
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);

      const cfg = await fetch(`${url}/_fake/config`, { method: 'POST', body: JSON.stringify({ failNext: 1 }) });
      assert.equal(cfg.status, 200);
      assert.equal(((await cfg.json()) as { failNext: number }).failNext, 1);
      const bad = await fetch(`${url}/_fake/config`, { method: 'POST', body: JSON.stringify({ delayMs: -1 }) });
      assert.equal(bad.status, 400);

      const form = new URLSearchParams({ Action: 'AssumeRole', Version: '2011-06-15', RoleArn: REQ.roleArn, RoleSessionName: 's1', DurationSeconds: '900' });
      const throttled = await fetch(url, { method: 'POST', body: form });
      assert.equal(throttled.status, 400);
      assert.match(await throttled.text(), /<ErrorResponse[^>]*>\s*<Error>\s*<Type>Sender<\/Type>\s*<Code>Throttling<\/Code>/);
      const ok = await fetch(url, { method: 'POST', body: form });
      assert.equal(ok.status, 200);
      const xml = await ok.text();
      assert.match(xml, /<AssumedRoleUser>/);
      assert.match(xml, /<RequestId>[0-9a-f-]{36}<\/RequestId>/);
      assert.match(xml, /<Expiration>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ<\/Expiration>/);

      const calls = (await (await fetch(`${url}/_fake/calls`)).json()) as FakeStsCall[];
      assert.deepEqual(calls.map((c) => [c.result, c.durationSeconds, c.sessionName]), [['Throttling', 900, 's1'], ['ok', 900, 's1']]);
      const reset = await fetch(`${url}/_fake/reset`, { method: 'POST' });
      assert.equal(reset.status, 200);
      assert.deepEqual(await (await fetch(`${url}/_fake/calls`)).json(), []);
      const invalid = await fetch(url, { method: 'POST', body: new URLSearchParams({ Action: 'AssumeRole', RoleArn: REQ.roleArn, RoleSessionName: 'x y' }) });
      assert.equal(invalid.status, 400);
      assert.match(await invalid.text(), /<Code>ValidationError<\/Code>/);

      child.kill('SIGTERM');
      const [code] = (await once(child, 'exit')) as [number | null];
      assert.equal(code, 0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  it('refuses a bad flag with a message', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fakes/sts.ts', '--port', 'abc'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += String(d)));
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 2);
    assert.match(stderr, /--port/);
  });
});
