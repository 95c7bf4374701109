import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { after, before, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { AwsStsGateway, StsError, toStsError, validate, type AssumeRoleRequest } from '../../src/cache/sts.ts';
import { systemClock } from '../../src/clock.ts';
import { createMetrics } from '../../src/metrics.ts';
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
