import assert from 'node:assert/strict';
import net from 'node:net';
import { Writable } from 'node:stream';
import { after, afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { buildApp, type UnderPressureSettings } from '../../src/server/app.ts';
import type { CredentialProvider, Credentials, IdentityLookup, Lookup, PodRef, RoleIdentity } from '../../src/server/ports.ts';
import { createTokenService } from '../../src/server/tokens.ts';
import { createUpstream, type UpstreamClient } from '../../src/server/upstream.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeMetadataService, NODE_ROLE } from '../fakes/metadata.ts';

// ---------------------------------------------------------------------------------------------------------
// Fakes of the ports the server consumes.

const IP_A = '10.1.0.11';
const IP_B = '10.1.0.12';
const IP_NOROLE = '10.1.0.13';
const IP_DENIED = '10.1.0.14';
const IP_AMBIGUOUS = '10.1.0.15';
const IP_BROKEN = '10.1.0.16';
const IP_UNKNOWN = '10.1.0.99';

function pod(uid: string, ip: string, namespace: string, name: string): PodRef {
  return { uid, ip, namespace, name };
}

function identity(roleArn: string): RoleIdentity {
  const roleName = roleArn.slice(roleArn.lastIndexOf('/') + 1);
  return { key: `${roleArn}|${roleName}-session`, roleArn, roleName, sessionName: `${roleName}-session` };
}

const ROLE_A = identity('arn:aws:iam::123456789012:role/team-a/app-a');
const ROLE_B = identity('arn:aws:iam::210987654321:role/app-b');
const ROLE_BROKEN = identity('arn:aws:iam::123456789012:role/sts-down');

class FakeLookup implements IdentityLookup {
  readonly byIp = new Map<string, Lookup>();
  calls = 0;
  /** IPs asked for, in order. */
  readonly asked: string[] = [];
  set(ip: string, found: Lookup): void {
    this.byIp.set(ip, found);
  }
  async lookup(ip: string): Promise<Lookup> {
    this.calls++;
    this.asked.push(ip);
    return this.byIp.get(ip) ?? { kind: 'unknown' };
  }
}

class FakeCredentials implements CredentialProvider {
  readonly byKey = new Map<string, Credentials>();
  calls = 0;
  constructor(private readonly clock: FakeClock) {}
  issue(id: RoleIdentity, accessKeyId: string): Credentials {
    const now = this.clock.now();
    const creds = {
      accessKeyId,
      secretAccessKey: `secret-of-${accessKeyId}`,
      sessionToken: `session-token-of-${accessKeyId}`,
      expiration: now + 3600_000 + 999, // a fraction of a second, to see it truncated (not rounded up)
      lastUpdated: now - 60_000 + 456,
    };
    this.byKey.set(id.key, creds);
    return creds;
  }
  async get(id: RoleIdentity): Promise<Credentials> {
    this.calls++;
    const creds = this.byKey.get(id.key);
    if (!creds) throw new Error(`AccessDenied: not authorized to assume ${id.roleArn}`);
    return creds;
  }
}

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

const DEFAULT_DENY = [/^[^/]+\/user-data(\/|$)/, /^[^/]+\/meta-data\/identity-credentials(\/|$)/];

interface Fixture {
  app: FastifyInstance;
  clock: FakeClock;
  lookup: FakeLookup;
  credentials: FakeCredentials;
  metrics: Metrics;
  fake: FakeMetadataService;
  upstream: UpstreamClient;
  logs: LogLine[];
  credsA: Credentials;
  credsB: Credentials;
}

const open: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (open.length) await open.pop()?.();
});

async function setup(
  options: { allow?: RegExp[]; deny?: RegExp[]; underPressure?: UnderPressureSettings; upstreamTimeoutMs?: number; imdsv2?: 'optional' | 'required' } = {},
): Promise<Fixture> {
  const clock = new FakeClock();
  const lookup = new FakeLookup();
  const credentials = new FakeCredentials(clock);
  lookup.set(IP_A, { kind: 'role', pod: pod('uid-a', IP_A, 'team-a', 'app-a-7d9f'), identity: ROLE_A });
  lookup.set(IP_B, { kind: 'role', pod: pod('uid-b', IP_B, 'team-b', 'app-b-5c4e'), identity: ROLE_B });
  lookup.set(IP_NOROLE, { kind: 'no-role', pod: pod('uid-n', IP_NOROLE, 'plain', 'plain-pod') });
  lookup.set(IP_DENIED, { kind: 'denied', pod: pod('uid-d', IP_DENIED, 'sneaky-ns', 'sneaky-pod'), reason: 'namespace sneaky-ns does not permit admin-role', code: 'not-permitted' });
  lookup.set(IP_AMBIGUOUS, { kind: 'ambiguous' });
  lookup.set(IP_BROKEN, { kind: 'role', pod: pod('uid-x', IP_BROKEN, 'broken', 'broken-pod'), identity: ROLE_BROKEN });
  const credsA = credentials.issue(ROLE_A, 'ASIAPODAAAAAAAAAAAAA');
  const credsB = credentials.issue(ROLE_B, 'ASIAPODBBBBBBBBBBBBB');

  const logs: LogLine[] = [];
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        logs.push(JSON.parse(chunk.toString()) as LogLine);
        done();
      },
    }),
  );
  const fake = new FakeMetadataService();
  const url = await fake.start();
  const upstream = createUpstream({ endpoint: url, clock, logger, timeoutMs: options.upstreamTimeoutMs ?? 2000 });
  const metrics = createMetrics();
  const app = buildApp({
    lookup,
    credentials,
    upstream,
    tokens: createTokenService({ clock }),
    metrics,
    logger,
    clock,
    allowRoutes: options.allow ?? [],
    denyRoutes: options.deny ?? DEFAULT_DENY,
    ...(options.underPressure ? { underPressure: options.underPressure } : {}),
    ...(options.imdsv2 ? { imdsv2: options.imdsv2 } : {}),
  });
  open.push(async () => {
    await app.close();
    upstream.close();
    await fake.close();
  });
  await app.ready();
  return { app, clock, lookup, credentials, metrics, fake, upstream, logs, credsA, credsB };
}

function get(app: FastifyInstance, url: string, ip: string, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'GET', url, remoteAddress: ip, headers });
}

async function putToken(app: FastifyInstance, ip: string, ttl = '21600'): Promise<string> {
  const res = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: ip, headers: { 'x-aws-ec2-metadata-token-ttl-seconds': ttl } });
  assert.equal(res.statusCode, 200);
  return res.body;
}

/** A terse error page: the status in it, none of the pod's secrets, names or reasons. */
function assertTerse(res: LightMyRequestResponse, status: number): void {
  assert.equal(res.statusCode, status);
  assert.equal(res.headers['content-type'], 'text/html');
  assert.equal(res.headers.server, 'EC2ws');
  assert.match(res.body, new RegExp(`<title>${status} - `));
  for (const secret of ['team-a', 'app-a', 'app-b', 'sneaky', 'admin-role', 'namespace', 'AccessDenied', 'sts-down', 'ASIA', NODE_ROLE]) {
    assert.ok(!res.body.includes(secret), `error body mentions ${secret}`);
  }
}

/**
 * The document for credsA, issued when the FakeClock stands at its start, 2026-11-28T07:00:00Z: expiration one hour
 * and 999 ms later, last updated 59.544 s before. The times are written out, not computed the way the code does.
 */
const DOC_A = (creds: Credentials) =>
  '{\n' +
  '  "Code" : "Success",\n' +
  '  "LastUpdated" : "2026-11-28T06:59:00Z",\n' +
  '  "Type" : "AWS-HMAC",\n' +
  `  "AccessKeyId" : "${creds.accessKeyId}",\n` +
  `  "SecretAccessKey" : "${creds.secretAccessKey}",\n` +
  `  "Token" : "${creds.sessionToken}",\n` +
  '  "Expiration" : "2026-11-28T08:00:00Z"\n' +
  '}';

// ---------------------------------------------------------------------------------------------------------

describe('token endpoint', () => {
  it('mints a token for a PUT with a valid TTL and echoes the TTL', async () => {
    const { app } = await setup();
    for (const ttl of ['1', '300', '21600']) {
      const res = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: IP_A, headers: { 'X-aws-ec2-metadata-token-ttl-seconds': ttl } });
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers['x-aws-ec2-metadata-token-ttl-seconds'], ttl);
      assert.equal(res.headers['content-type'], 'text/plain');
      assert.equal(res.headers.server, 'EC2ws');
      assert.match(res.body, /^[A-Za-z0-9_-]{40,}$/);
    }
  });

  it('accepts header names in any case', async () => {
    const { app } = await setup();
    const res = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: IP_A, headers: { 'X-AWS-EC2-METADATA-TOKEN-TTL-SECONDS': '60' } });
    assert.equal(res.statusCode, 200);
    const doc = await get(app, '/latest/meta-data/iam/security-credentials/', IP_A, { 'X-AWS-EC2-METADATA-TOKEN': res.body });
    assert.equal(doc.statusCode, 200);
    assert.equal(doc.body, 'app-a');
  });

  it('answers 400 for a missing or invalid TTL', async () => {
    const { app } = await setup();
    for (const headers of [{}, { 'x-aws-ec2-metadata-token-ttl-seconds': '0' }, { 'x-aws-ec2-metadata-token-ttl-seconds': '21601' }, { 'x-aws-ec2-metadata-token-ttl-seconds': 'abc' }, { 'x-aws-ec2-metadata-token-ttl-seconds': '-5' }, { 'x-aws-ec2-metadata-token-ttl-seconds': '1.5' }]) {
      const res = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: IP_A, headers });
      assertTerse(res, 400);
    }
  });

  it('refuses a PUT carrying X-Forwarded-For with 403', async () => {
    const { app } = await setup();
    const res = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: IP_A, headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '21600', 'X-Forwarded-For': '10.9.9.9' } });
    assertTerse(res, 403);
  });

  it('answers 405 with Allow: OPTIONS, PUT to other methods on the token path', async () => {
    const { app } = await setup();
    for (const method of ['GET', 'HEAD', 'POST', 'DELETE'] as const) {
      const res = await app.inject({ method, url: '/latest/api/token', remoteAddress: IP_A });
      assert.equal(res.statusCode, 405, method);
      assert.equal(res.headers.allow, 'OPTIONS, PUT');
    }
  });

  it('never proxies a token PUT to the upstream', async () => {
    const { app, fake } = await setup();
    await putToken(app, IP_A);
    assert.deepEqual(fake.requests, []);
  });

  it('answers a token PUT once the look-up has placed the source on a pod, and binds the token to that pod', async () => {
    const { app, lookup } = await setup();
    const ip = '10.1.0.60';
    // A pod the live look-up finds before the watch has reported it.
    let answer: (l: Lookup) => void = () => {};
    lookup.lookup = (asked) => {
      assert.equal(asked, ip);
      return new Promise<Lookup>((resolve) => (answer = resolve));
    };
    const pending = app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: ip, headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '300' } });
    await new Promise((r) => setImmediate(r));
    answer({ kind: 'role', pod: pod('uid-live', ip, 'team-a', 'live'), identity: ROLE_A });
    const res = await pending;
    assert.equal(res.statusCode, 200);
    const found: Lookup = { kind: 'role', pod: pod('uid-live', ip, 'team-a', 'live'), identity: ROLE_A };
    lookup.lookup = async () => found;
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', ip, { 'x-aws-ec2-metadata-token': res.body })).body, 'app-a');
    // Another pod on that IP later: the token was bound to the first one's uid.
    lookup.lookup = async () => ({ kind: 'role', pod: pod('uid-next', ip, 'team-a', 'next'), identity: ROLE_A });
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/', ip, { 'x-aws-ec2-metadata-token': res.body }), 401);
  });
});

describe('token checks on GET', () => {
  it('accepts GETs without a token (IMDSv1)', async () => {
    const { app } = await setup();
    const res = await get(app, '/latest/meta-data/iam/security-credentials/', IP_A);
    assert.equal(res.statusCode, 200);
    assert.equal(res.body, 'app-a');
  });

  it('answers 401 for an invalid token', async () => {
    const { app, credentials, fake } = await setup();
    const token = await putToken(app, IP_A);
    for (const bad of ['nope', '', `${token.slice(0, -2)}AA`, token.toLowerCase()]) {
      assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A, { 'x-aws-ec2-metadata-token': bad }), 401);
      assertTerse(await get(app, '/latest/meta-data/instance-id', IP_A, { 'x-aws-ec2-metadata-token': bad }), 401);
    }
    assert.equal(credentials.calls, 0);
    assert.deepEqual(fake.requests, []);
  });

  it('answers 401 once the token has expired', async () => {
    const { app, clock } = await setup();
    const token = await putToken(app, IP_A, '60');
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', IP_A, { 'x-aws-ec2-metadata-token': token })).statusCode, 200);
    await clock.advance(59_000);
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', IP_A, { 'x-aws-ec2-metadata-token': token })).statusCode, 200);
    await clock.advance(1_000);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/', IP_A, { 'x-aws-ec2-metadata-token': token }), 401);
  });

  it('answers 401 for a token minted for another IP', async () => {
    const { app } = await setup();
    const token = await putToken(app, IP_A);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/', IP_B, { 'x-aws-ec2-metadata-token': token }), 401);
    assertTerse(await get(app, '/latest/meta-data/instance-id', IP_B, { 'x-aws-ec2-metadata-token': token }), 401);
  });

  it('answers 401 when the IP has passed to another pod since the token was minted', async () => {
    const { app, lookup } = await setup();
    const token = await putToken(app, IP_A);
    // app-a goes away, a new pod (another uid) gets the same IP and the same role.
    lookup.set(IP_A, { kind: 'role', pod: pod('uid-a2', IP_A, 'team-a', 'app-a-new'), identity: ROLE_A });
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A, { 'x-aws-ec2-metadata-token': token }), 401);
    // The pod gone and the IP unknown: refused before the token is even looked at.
    lookup.byIp.delete(IP_A);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A, { 'x-aws-ec2-metadata-token': token }), 403);
    // The new pod's own token works.
    lookup.set(IP_A, { kind: 'role', pod: pod('uid-a2', IP_A, 'team-a', 'app-a-new'), identity: ROLE_A });
    const fresh = await putToken(app, IP_A);
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A, { 'x-aws-ec2-metadata-token': fresh })).statusCode, 200);
  });

  it('mints no token for a source that is no pod of this node', async () => {
    const { app } = await setup();
    const res = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: '10.1.0.50', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } });
    assertTerse(res, 403);
  });
});

describe('credentials', () => {
  it('serves the role listing and the exact credential document over IMDSv2', async () => {
    const { app, credsA } = await setup();
    const token = await putToken(app, IP_A);
    const listing = await get(app, '/latest/meta-data/iam/security-credentials/', IP_A, { 'x-aws-ec2-metadata-token': token });
    assert.equal(listing.statusCode, 200);
    assert.equal(listing.body, 'app-a');
    assert.equal(listing.headers['content-type'], 'text/plain');
    assert.equal(listing.headers.server, 'EC2ws');

    const doc = await get(app, `/latest/meta-data/iam/security-credentials/${listing.body}`, IP_A, { 'x-aws-ec2-metadata-token': token });
    assert.equal(doc.statusCode, 200);
    assert.equal(doc.headers['content-type'], 'text/plain');
    assert.equal(doc.headers.server, 'EC2ws');
    assert.equal(doc.body, DOC_A(credsA));
    const parsed = JSON.parse(doc.body) as Record<string, string>;
    assert.deepEqual(Object.keys(parsed), ['Code', 'LastUpdated', 'Type', 'AccessKeyId', 'SecretAccessKey', 'Token', 'Expiration']);
    assert.match(parsed.Expiration ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.match(parsed.LastUpdated ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });

  it('serves each pod its own role', async () => {
    const { app, credsB } = await setup();
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', IP_B)).body, 'app-b');
    const doc = await get(app, '/latest/meta-data/iam/security-credentials/app-b', IP_B);
    assert.equal(JSON.parse(doc.body).AccessKeyId, credsB.accessKeyId);
  });

  it('answers 404 for another pod\'s role', async () => {
    const { app, credentials } = await setup();
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/app-b', IP_A), 404);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/App-A', IP_A), 404);
    assertTerse(await get(app, `/latest/meta-data/iam/security-credentials/${NODE_ROLE}`, IP_A), 404);
    assert.equal(credentials.calls, 0);
  });

  it('lists the iam directory', async () => {
    const { app } = await setup();
    for (const url of ['/latest/meta-data/iam/', '/latest/meta-data/iam']) {
      const res = await get(app, url, IP_A);
      assert.equal(res.statusCode, 200);
      assert.equal(res.body, 'info\nsecurity-credentials/');
    }
  });

  it('describes the role in iam/info', async () => {
    const { app } = await setup();
    const res = await get(app, '/latest/meta-data/iam/info', IP_A);
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-type'], 'text/plain');
    const info = JSON.parse(res.body) as Record<string, string>;
    assert.deepEqual(Object.keys(info), ['Code', 'LastUpdated', 'InstanceProfileArn', 'InstanceProfileId']);
    assert.equal(info.Code, 'Success');
    assert.equal(info.InstanceProfileArn, 'arn:aws:iam::123456789012:instance-profile/app-a');
    assert.equal(info.LastUpdated, '2026-11-28T07:00:00Z'); // the FakeClock's start
    assert.match(info.InstanceProfileId ?? '', /^AIPA[A-Z0-9]{17}$/);
    const again = JSON.parse((await get(app, '/latest/meta-data/iam/info', IP_A)).body) as Record<string, string>;
    assert.equal(again.InstanceProfileId, info.InstanceProfileId, 'stable');
    const other = JSON.parse((await get(app, '/latest/meta-data/iam/info', IP_B)).body) as Record<string, string>;
    assert.equal(other.InstanceProfileArn, 'arn:aws:iam::210987654321:instance-profile/app-b');
    assert.notEqual(other.InstanceProfileId, info.InstanceProfileId);
  });

  it('answers 404 for security-credentials-extended and unknown iam paths, counting no denial', async () => {
    const { app, metrics } = await setup();
    for (const url of ['/latest/meta-data/iam/security-credentials-extended/', '/latest/meta-data/iam/security-credentials-extended/app-a', '/latest/meta-data/iam/nothing', '/latest/meta-data/iam/security-credentials/app-a/more']) {
      assertTerse(await get(app, url, IP_A), 404);
      assertTerse(await get(app, url, IP_DENIED), 404);
    }
    assert.equal((await metrics.denials.get()).values.length, 0);
  });

  it('answers 404 to a pod without a role, 403 to an unknown and an ambiguous IP', async () => {
    const { app, credentials, fake } = await setup();
    for (const [ip, status] of [[IP_NOROLE, 404], [IP_UNKNOWN, 403], [IP_AMBIGUOUS, 403]] as const) {
      for (const url of ['/latest/meta-data/iam/', '/latest/meta-data/iam/info', '/latest/meta-data/iam/security-credentials/', `/latest/meta-data/iam/security-credentials/${NODE_ROLE}`, '/latest/meta-data/iam/security-credentials/app-a']) {
        assertTerse(await get(app, url, ip), status);
      }
    }
    assert.equal(credentials.calls, 0);
    assert.deepEqual(fake.requests, [], 'the node role is never asked for');
  });

  it('answers 403 to a pod whose role is denied, 404 on extended; counts the denial by code and logs its reason once per pod', async () => {
    const { app, logs, metrics, fake } = await setup();
    const denied = await get(app, '/latest/meta-data/iam/security-credentials/', IP_DENIED);
    assertTerse(denied, 403);
    assert.doesNotMatch(denied.body, /sneaky|admin/);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/admin-role', IP_DENIED), 403);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials-extended/', IP_DENIED), 404);
    // Pass-through and tokens are not credential requests: answered, and no denial counted for them.
    assert.equal((await get(app, '/latest/meta-data/instance-id', IP_DENIED)).statusCode, 200);
    await putToken(app, IP_DENIED);
    const denials = (await metrics.denials.get()).values;
    assert.deepEqual(denials.map((v) => [v.labels.reason, v.value]), [['not-permitted', 2]]);
    const warns = logs.filter((l) => l.msg === 'credentials denied' && l.level === 40);
    assert.equal(warns.length, 1, 'once per pod');
    assert.deepEqual([warns[0]?.pod, warns[0]?.namespace, warns[0]?.code], ['sneaky-pod', 'sneaky-ns', 'not-permitted']);
    assert.match(String(warns[0]?.reason), /does not permit/);
    assert.equal(logs.filter((l) => l.msg === 'credentials denied' && l.level === 20).length, 1, 'then at debug');
    assert.equal(fake.requests.filter((r) => /iam/.test(r.path)).length, 0);
  });

  it('answers 503 when no credentials can be had, and hands out nothing', async () => {
    const { app, logs } = await setup();
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', IP_BROKEN)).body, 'sts-down');
    for (let i = 0; i < 3; i++) assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/sts-down', IP_BROKEN), 503);
    const warnings = logs.filter((l) => l.msg === 'no credentials for pod' && l.level === 40);
    assert.equal(warnings.length, 1, 'warned once');
    assert.match(String(warnings[0]?.err), /AccessDenied/);
  });

  it('answers 503 rather than serve expired credentials', async () => {
    const { app, clock } = await setup();
    await clock.advance(3600_000 + 1000);
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A), 503);
  });

  it('logs at info once per pod and access key, never a secret', async () => {
    const { app, credentials, logs, credsA } = await setup();
    for (let i = 0; i < 3; i++) assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A)).statusCode, 200);
    let served = logs.filter((l) => l.level === 30 && l.msg === 'credentials served');
    assert.equal(served.length, 1);
    assert.deepEqual(
      { pod: served[0]?.pod, namespace: served[0]?.namespace, role: served[0]?.role, accessKeyId: served[0]?.accessKeyId },
      { pod: 'app-a-7d9f', namespace: 'team-a', role: ROLE_A.roleArn, accessKeyId: credsA.accessKeyId },
    );
    // New credentials for the same pod: logged again.
    const next = credentials.issue(ROLE_A, 'ASIAPODAAAAAAAAAAAA2');
    await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A);
    served = logs.filter((l) => l.level === 30 && l.msg === 'credentials served');
    assert.equal(served.length, 2);
    assert.equal(served[1]?.accessKeyId, next.accessKeyId);
    const all = JSON.stringify(logs);
    for (const secret of [credsA.secretAccessKey, credsA.sessionToken, next.secretAccessKey, next.sessionToken]) assert.ok(!all.includes(secret));
  });

  it('answers HEAD like GET without a body', async () => {
    const { app, credsA } = await setup();
    const res = await app.inject({ method: 'HEAD', url: '/latest/meta-data/iam/security-credentials/app-a', remoteAddress: IP_A });
    assert.equal(res.statusCode, 200);
    assert.equal(res.body, '');
    assert.equal(Number(res.headers['content-length']), Buffer.byteLength(DOC_A(credsA)));
  });

  it('answers 405 to methods other than GET and HEAD', async () => {
    const { app, credentials } = await setup();
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH'] as const) {
      const res = await app.inject({ method, url: '/latest/meta-data/iam/security-credentials/app-a', remoteAddress: IP_A });
      assertTerse(res, 405);
      assert.equal(res.headers.allow, 'GET, HEAD');
    }
    assert.equal(credentials.calls, 0);
  });

  it('takes the source IP from the socket: X-Forwarded-For and friends are ignored', async () => {
    const { app } = await setup();
    const res = await get(app, '/latest/meta-data/iam/security-credentials/', IP_NOROLE, { 'x-forwarded-for': IP_A, 'x-real-ip': IP_A, forwarded: `for=${IP_A}` });
    assertTerse(res, 404);
    const mapped = await get(app, '/latest/meta-data/iam/security-credentials/', `::ffff:${IP_A}`);
    assert.equal(mapped.body, 'app-a');
  });
});

describe('path spellings', () => {
  const ours = [
    '/latest/meta-data/iam/security-credentials/',
    '/latest/meta-data/iam/security-credentials',
    '/latest//meta-data//iam//security-credentials/',
    '//latest/meta-data/iam/security-credentials/',
    '/latest/meta-data/%69am/security-credentials/',
    '/latest/meta-data/%49%41%4D/security-credentials/',
    '/latest/meta-data/IAM/security-credentials/',
    '/latest/Meta-Data/Iam/Security-Credentials/',
    '/latest/meta-data%2Fiam%2Fsecurity-credentials/',
    '/latest/meta-data/%2e/iam/security-credentials/',
    '/latest/dynamic/%2e%2e/meta-data/iam/security-credentials/',
    '/2016-09-02/meta-data/iam/security-credentials/',
    '/2009-04-04/meta-data/iam/security-credentials/',
    '/meta-data/iam/security-credentials/',
    '/LATEST/meta-data/iam/security-credentials/',
    '/latest/meta-data/iam/security-credentials/?x=1',
  ];
  const refused: Array<[string, number]> = [
    ['/latest/meta-data/%2569am/security-credentials/', 400],
    ['/latest/meta-data/iam%00/security-credentials/', 400],
    ['/latest/meta-data/%zz/', 400],
    ['/latest/meta-data/iam;x=1/security-credentials/', 404],
    ['/latest/meta-data/iam./security-credentials/', 404],
    ['/latest/meta-data/iam%20/security-credentials/', 404],
    ['/latest/meta-data/i-a-m/security-credentials/', 404],
    ['/foo/meta-data/iam/security-credentials/', 404],
    ['/latest/api/iam', 404],
    ['/latest/api/token/extra', 404],
    ['/api/token', 404],
  ];

  it('answers every spelling of meta-data/iam itself', async () => {
    const { app, fake } = await setup();
    for (const url of ours) {
      const res = await get(app, url, IP_A);
      assert.equal(res.statusCode, 200, url);
      assert.equal(res.body, 'app-a', url);
    }
    assert.deepEqual(fake.requests, []);
  });

  it('refuses spellings that could reach iam upstream, and proxies none of them', async () => {
    const { app, fake } = await setup({ deny: [] });
    for (const [url, status] of refused) {
      const res = await get(app, url, IP_A);
      assertTerse(res, status);
    }
    // Also for pods without a role: nothing reaches the node's role.
    for (const url of [...ours, ...refused.map(([u]) => u)]) {
      const res = await get(app, url, IP_NOROLE);
      assert.ok(res.statusCode >= 400, url);
      assert.ok(!res.body.includes('ASIANODE') && !res.body.includes(NODE_ROLE), url);
    }
    assert.deepEqual(fake.requests, []);
  });

  it('handles raw request targets that inject would normalise (dot segments, absolute form, backslashes)', async () => {
    const { app, fake, lookup } = await setup({ deny: [] });
    // The client connects from loopback: here that is a pod without a role.
    lookup.set('127.0.0.1', { kind: 'no-role', pod: pod('uid-lo', '127.0.0.1', 'plain', 'loopback-pod') });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as net.AddressInfo;
    const raw = async (target: string): Promise<{ status: number; body: string }> =>
      new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => socket.write(`GET ${target} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n`));
        let data = '';
        socket.on('data', (c: Buffer) => (data += c.toString()));
        socket.on('error', reject);
        socket.on('close', () => resolve({ status: Number(data.slice(9, 12)), body: data.slice(data.indexOf('\r\n\r\n') + 4) }));
      });
    // A pod without a role: "ours" answers 404, and never reaches upstream.
    for (const target of [
      '/latest/meta-data/../meta-data/iam/security-credentials/',
      '/latest/meta-data/./iam/security-credentials/',
      '/latest/x/../../latest/meta-data/iam/',
      'http://169.254.169.254/latest/meta-data/iam/security-credentials/',
      'http://169.254.169.254/latest/meta-data/foo/../iam/',
      '/latest/meta-data\\iam/security-credentials/',
      '/latest/meta-data/%5Ciam/',
      '*',
    ]) {
      const res = await raw(target);
      assert.ok(res.status === 404 || res.status === 400, `${target} → ${res.status}`);
      assert.ok(!res.body.includes(NODE_ROLE), target);
    }
    assert.deepEqual(fake.requests, []);
    // And a well-formed absolute-form pass-through still works.
    const ok = await raw('http://169.254.169.254/latest/meta-data/instance-id');
    assert.equal(ok.status, 200);
    assert.equal(ok.body, 'i-0123456789abcdef0');
  });
});

describe('pass-through', () => {
  it('proxies other metadata paths with the agent\'s own token, never the pod\'s headers', async () => {
    const { app, fake } = await setup();
    const podToken = await putToken(app, IP_A);
    const res = await get(app, '/latest/meta-data/instance-id', IP_A, {
      'x-aws-ec2-metadata-token': podToken,
      'x-forwarded-for': '10.200.0.1',
      'x-pod-secret': 'do-not-forward',
      'user-agent': 'aws-sdk-js/3',
      cookie: 'a=b',
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.body, 'i-0123456789abcdef0');
    assert.equal(res.headers['content-type'], 'text/plain');
    assert.equal(res.headers.server, 'EC2ws');

    const puts = fake.requests.filter((r) => r.method === 'PUT');
    const gets = fake.requests.filter((r) => r.method === 'GET');
    assert.equal(puts.length, 1);
    assert.equal(puts[0]?.headers['x-aws-ec2-metadata-token-ttl-seconds'], '21600');
    assert.equal(gets.length, 1);
    assert.equal(gets[0]?.path, '/latest/meta-data/instance-id');
    const seen = gets[0]?.headers ?? {};
    assert.ok(typeof seen['x-aws-ec2-metadata-token'] === 'string' && seen['x-aws-ec2-metadata-token'] !== podToken);
    for (const r of fake.requests) {
      for (const name of ['x-forwarded-for', 'x-pod-secret', 'user-agent', 'cookie', 'forwarded', 'x-real-ip']) assert.equal(r.headers[name], undefined, name);
      assert.ok(!JSON.stringify(r.headers).includes(podToken));
    }
  });

  it('passes status codes, bodies and content types through', async () => {
    const { app } = await setup();
    const doc = await get(app, '/latest/dynamic/instance-identity/document', IP_A);
    assert.equal(doc.statusCode, 200);
    assert.equal(doc.headers['content-type'], 'application/json');
    assert.equal(JSON.parse(doc.body).accountId, '111122223333');
    const region = await get(app, '/2016-09-02/meta-data/placement/region', IP_NOROLE);
    assert.equal(region.body, 'eu-west-1');
    const listing = await get(app, '/latest/meta-data/placement/', IP_DENIED);
    assert.equal(listing.body, 'availability-zone\nregion');
    const missing = await get(app, '/latest/meta-data/nothing-here', IP_A);
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.headers['content-type'], 'text/html');
  });

  it('holds the deny list, in any case spelling, without contacting the upstream', async () => {
    const { app, fake, logs } = await setup();
    for (const url of [
      '/latest/user-data',
      '/latest/user-data/',
      '/latest/USER-DATA',
      '/2016-09-02/user-data',
      '/latest//user-data',
      '/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance',
      '/latest/meta-data/%69dentity-credentials/ec2/security-credentials/ec2-instance',
      '/latest/meta-data/Identity-Credentials/ec2/security-credentials/ec2-instance',
    ]) {
      const res = await get(app, url, IP_A);
      assertTerse(res, 404);
      assert.ok(!res.body.includes('secret') && !res.body.includes('ASIANODE'));
    }
    assert.deepEqual(fake.requests, []);
    assert.ok(logs.some((l) => l.msg === 'metadata path denied' && l.path === 'latest/user-data'));
  });

  it('with an allow list, proxies only what it allows', async () => {
    const { app, fake } = await setup({ allow: [/^latest\/meta-data\/instance-id$/, /^$/] });
    assert.equal((await get(app, '/latest/meta-data/instance-id', IP_A)).statusCode, 200);
    assert.equal((await get(app, '/', IP_A)).statusCode, 200);
    assertTerse(await get(app, '/latest/meta-data/placement/region', IP_A), 404);
    assertTerse(await get(app, '/latest/meta-data/local-ipv4', IP_A), 404);
    assert.deepEqual(
      fake.requests.filter((r) => r.method === 'GET').map((r) => r.path),
      ['/latest/meta-data/instance-id', '/'],
    );
  });

  it('answers HEAD through the upstream', async () => {
    const { app, fake } = await setup();
    const res = await app.inject({ method: 'HEAD', url: '/latest/meta-data/local-ipv4', remoteAddress: IP_A });
    assert.equal(res.statusCode, 200);
    assert.equal(res.body, '');
    assert.equal(res.headers['content-length'], String('10.0.0.10'.length));
    assert.deepEqual(fake.requests.filter((r) => r.method !== 'PUT').map((r) => r.method), ['HEAD']);
  });

  it('answers 502 when the upstream cannot be reached and 504 when it is too slow', async () => {
    const slow = await setup({ upstreamTimeoutMs: 100 });
    slow.fake.delayMs = 1000;
    assertTerse(await get(slow.app, '/latest/meta-data/instance-id', IP_A), 504);

    const down = await setup();
    await down.fake.close();
    assertTerse(await get(down.app, '/latest/meta-data/instance-id', IP_A), 502);
  });

  it('refuses other methods and unversioned paths', async () => {
    const { app, fake } = await setup();
    assertTerse(await app.inject({ method: 'POST', url: '/latest/meta-data/instance-id', remoteAddress: IP_A }), 405);
    assertTerse(await get(app, '/meta-data/instance-id', IP_A), 404);
    assertTerse(await get(app, '/favicon.ico', IP_A), 404);
    assert.deepEqual(fake.requests, []);
  });
});

describe('only pods of this node are served', () => {
  const requests: Array<{ method: 'GET' | 'PUT' | 'OPTIONS' | 'POST' | 'HEAD'; url: string; headers?: Record<string, string> }> = [
    { method: 'GET', url: '/latest/meta-data/iam/security-credentials/' },
    { method: 'GET', url: `/latest/meta-data/iam/security-credentials/${NODE_ROLE}` },
    { method: 'GET', url: '/latest/meta-data/iam/info' },
    { method: 'PUT', url: '/latest/api/token', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '21600' } },
    { method: 'OPTIONS', url: '/latest/api/token' },
    { method: 'GET', url: '/latest/meta-data/instance-id' },
    { method: 'HEAD', url: '/latest/meta-data/local-ipv4' },
    { method: 'GET', url: '/latest/dynamic/instance-identity/document' },
    { method: 'GET', url: '/latest/dynamic/instance-identity/pkcs7' },
    { method: 'GET', url: '/latest/user-data' },
    { method: 'GET', url: '/latest/meta-data/%zz/' },
    { method: 'GET', url: '/' },
    { method: 'POST', url: '/latest/meta-data/instance-id' },
  ];

  for (const [what, ip, reason] of [
    ['another node, the VPC or the host (unknown)', IP_UNKNOWN, 'unknown'],
    ['an IP two live pods share (ambiguous)', IP_AMBIGUOUS, 'ambiguous'],
  ] as const) {
    it(`answers 403 to ${what} for everything, and never calls the upstream`, async () => {
      const { app, fake, credentials, metrics, logs, lookup } = await setup();
      for (const r of requests) {
        const res = await app.inject({ method: r.method, url: r.url, remoteAddress: ip, headers: r.headers ?? {} });
        assert.equal(res.statusCode, 403, `${r.method} ${r.url}`);
        if (r.method !== 'HEAD') assertTerse(res, 403);
        assert.equal(res.headers['x-aws-ec2-metadata-token-ttl-seconds'], undefined);
      }
      assert.deepEqual(fake.requests, [], 'the upstream was never called');
      assert.equal(credentials.calls, 0);
      assert.equal(lookup.asked.length, requests.length, 'each request looked its source up (wait, then live look-up)');
      const foreign = (await metrics.foreignSources.get()).values;
      assert.deepEqual(foreign.map((v) => [v.labels.reason, v.value]), [[reason, requests.length]]);
      const durations = (await metrics.requestDuration.get()).values.filter((v) => v.metricName === 'kiam_metadata_request_duration_seconds_count');
      // (The malformed URL is refused from fastify's frameworkErrors, which runs no onResponse hook: not timed.)
      assert.deepEqual(durations.map((v) => [v.labels.handler, v.labels.code, v.value]), [['foreign', '403', requests.length - 1]]);
      const lines = logs.filter((l) => l.msg === 'request from a source that is not a pod of this node refused');
      assert.equal(lines.filter((l) => l.level === 40).length, 1, 'warned once per address');
      assert.equal(lines.filter((l) => l.level === 20).length, requests.length - 1, 'then at debug');
      assert.deepEqual([lines[0]?.ip, lines[0]?.reason], [ip, reason]);
      assert.equal((await metrics.denials.get()).values.length, 0, 'not a credential denial');
    });
  }

  it('warns once per foreign address, each address on its own', async () => {
    const { app, logs } = await setup();
    for (const ip of ['10.9.0.1', '10.9.0.2', '10.9.0.1', 'fd00:9::1', 'fd00:9::1']) assertTerse(await get(app, '/latest/meta-data/instance-id', ip), 403);
    const warned = logs.filter((l) => l.level === 40 && l.msg === 'request from a source that is not a pod of this node refused').map((l) => l.ip);
    assert.deepEqual(warned, ['10.9.0.1', '10.9.0.2', 'fd00:9::1']);
  });

  it('serves a pod of this node on its IPv6 address, and an IPv4-mapped peer as its IPv4 address', async () => {
    const { app, lookup, fake } = await setup();
    const v6 = 'fd00:10:1::11';
    lookup.set(v6, { kind: 'role', pod: pod('uid-a', IP_A, 'team-a', 'app-a-7d9f'), identity: ROLE_A });
    const token = await putToken(app, v6);
    const listing = await get(app, '/latest/meta-data/iam/security-credentials/', v6, { 'x-aws-ec2-metadata-token': token });
    assert.equal(listing.body, 'app-a');
    assert.equal((await get(app, '/latest/meta-data/instance-id', v6, { 'x-aws-ec2-metadata-token': token })).statusCode, 200);
    assertTerse(await get(app, '/latest/meta-data/instance-id', IP_A, { 'x-aws-ec2-metadata-token': token }), 401);
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', `::ffff:${IP_B}`)).body, 'app-b');
    assert.deepEqual(lookup.asked, [v6, v6, v6, IP_A, IP_B]);
    assert.equal(fake.requests.filter((r) => r.method === 'GET').length, 1);
  });
});

describe('operations on the metadata app', () => {
  it('records request duration by handler and code', async () => {
    const { app, metrics } = await setup();
    await putToken(app, IP_A);
    await get(app, '/latest/meta-data/iam/security-credentials/', IP_A);
    await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A);
    await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_NOROLE);
    await get(app, '/latest/meta-data/instance-id', IP_A);
    await get(app, '/latest/user-data', IP_A);
    const data = await metrics.requestDuration.get();
    const counts = new Map(
      data.values.filter((v) => v.metricName === 'kiam_metadata_request_duration_seconds_count').map((v) => [`${v.labels.handler}:${v.labels.code}`, v.value]),
    );
    assert.deepEqual(Object.fromEntries(counts), {
      'token:200': 1,
      'listing:200': 1,
      'credentials:200': 1,
      'credentials:404': 1,
      'passthrough:200': 1,
      'passthrough-denied:404': 1,
    });
  });

  it('answers 503 with Retry-After under pressure', async () => {
    const { app, lookup } = await setup({ underPressure: { healthCheck: async () => false, healthCheckInterval: 60_000, retryAfter: 3 } });
    const res = await get(app, '/latest/meta-data/iam/security-credentials/', IP_A);
    assertTerse(res, 503);
    assert.equal(res.headers['retry-after'], '3');
    assert.equal(lookup.calls, 0);
    const put = await app.inject({ method: 'PUT', url: '/latest/api/token', remoteAddress: IP_A, headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } });
    assert.equal(put.statusCode, 503);
  });

  it('ignores request bodies of any content type', async () => {
    const { app } = await setup();
    const res = await app.inject({
      method: 'PUT',
      url: '/latest/api/token',
      remoteAddress: IP_A,
      headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60', 'content-type': 'application/json' },
      payload: '{not json',
    });
    assert.equal(res.statusCode, 200);
  });
});

describe('paths that merely contain iam', () => {
  it('proxies a path with iam inside a segment (an instance tag named William) like any other', async () => {
    const { app, fake } = await setup();
    for (const path of ['/latest/meta-data/tags/instance/William', '/latest/meta-data/tags/instance/iam', '/latest/dynamic/iam']) {
      const res = await get(app, path, IP_A);
      assertTerse(res, 404); // the upstream's own answer: the fake has no tags
      assert.equal(fake.seen(path).filter((r) => r.method === 'GET').length, 1, path);
    }
    // meta-data/iam itself stays ours.
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', IP_A)).body, 'app-a');
    assert.equal(fake.seen('/latest/meta-data/iam/security-credentials/').length, 0);
  });
});

describe('--imdsv2 required', () => {
  const everyKind = [
    '/latest/meta-data/iam/security-credentials/',
    '/latest/meta-data/iam/security-credentials/app-a',
    '/latest/meta-data/iam/info',
    '/latest/meta-data/instance-id',
    '/latest/meta-data/tags/instance/William',
    '/latest/user-data',
    '/latest/meta-data/iam./',
    '/',
  ];

  it("answers every GET and HEAD without a token with the real service's 401, and asks nobody", async () => {
    const { app, fake, credentials, metrics } = await setup({ imdsv2: 'required' });
    for (const url of everyKind) {
      const res = await get(app, url, IP_A);
      assertTerse(res, 401);
      // As captured from an instance with HttpTokens=required (DataDog/datadog-agent#4857): the 401 page, text/html, 343 bytes.
      assert.equal(res.headers['content-length'], '343', url);
      const head = await app.inject({ method: 'HEAD', url, remoteAddress: IP_A });
      assert.equal(head.statusCode, 401, `HEAD ${url}`);
    }
    assert.deepEqual(fake.requests, []);
    assert.equal(credentials.calls, 0);
    assert.match(await metrics.registry.metrics(), /kiam_metadata_request_duration_seconds_count\{handler="iam",code="401"\} \d+/);
  });

  it('serves everything as before with a token, which the PUT hands out without one', async () => {
    const { app, fake } = await setup({ imdsv2: 'required' });
    fake.tokenMode = 'required';
    const token = await putToken(app, IP_A);
    const headers = { 'x-aws-ec2-metadata-token': token };
    assert.equal((await get(app, '/latest/meta-data/iam/security-credentials/', IP_A, headers)).body, 'app-a');
    assert.equal(JSON.parse((await get(app, '/latest/meta-data/iam/security-credentials/app-a', IP_A, headers)).body).AccessKeyId, 'ASIAPODAAAAAAAAAAAAA');
    // Pass-through goes upstream with the agent's own token, never without one.
    assert.equal((await get(app, '/latest/meta-data/instance-id', IP_A, headers)).body, 'i-0123456789abcdef0');
    const upstreamGets = fake.requests.filter((r) => r.method === 'GET');
    assert.equal(upstreamGets.length, 1);
    assert.equal(typeof upstreamGets[0]!.headers['x-aws-ec2-metadata-token'], 'string');
    assertTerse(await get(app, '/latest/meta-data/iam/security-credentials/', IP_B, headers), 401);
  });

  it('still refuses sources that are no pod of this node first (403), as in optional mode', async () => {
    const { app } = await setup({ imdsv2: 'required' });
    assertTerse(await get(app, '/latest/meta-data/instance-id', IP_UNKNOWN), 403);
    assertTerse(await get(app, '/latest/meta-data/instance-id', IP_AMBIGUOUS), 403);
  });

  it('the warm path (before fastify) holds it too: a token-less GET over a socket gets 401', async () => {
    const clock = new FakeClock();
    const ip = '127.0.0.1';
    const found: Lookup = { kind: 'role', pod: pod('uid-warm', ip, 'team-a', 'app-a-warm'), identity: ROLE_A };
    const creds: Credentials = { accessKeyId: 'ASIAWARMAAAAAAAAAAAA', secretAccessKey: 's', sessionToken: 't', expiration: clock.now() + 3600_000, lastUpdated: clock.now() };
    const app = buildApp({
      lookup: { lookup: async () => found, peek: () => found },
      credentials: { get: async () => creds, peek: () => creds },
      upstream: { request: async () => { throw new Error('no upstream here'); }, getText: async () => '', getJson: async () => ({}), close: () => {} } as unknown as UpstreamClient,
      tokens: createTokenService({ clock }),
      metrics: createMetrics(),
      logger: pino({ level: 'silent' }),
      clock,
      allowRoutes: [],
      denyRoutes: [],
      imdsv2: 'required',
    });
    await app.listen({ host: ip, port: 0 });
    open.push(() => app.close());
    const base = `http://${ip}:${(app.server.address() as net.AddressInfo).port}`;
    for (const path of ['/latest/meta-data/iam/security-credentials/', '/latest/meta-data/iam/security-credentials/app-a']) {
      const bare = await fetch(`${base}${path}`);
      assert.equal(bare.status, 401, path);
      assert.match(await bare.text(), /<title>401 - Unauthorized<\/title>/);
    }
    const put = await fetch(`${base}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } });
    const token = await put.text();
    const listing = await fetch(`${base}/latest/meta-data/iam/security-credentials/`, { headers: { 'x-aws-ec2-metadata-token': token } });
    assert.equal(listing.status, 200);
    assert.equal(await listing.text(), 'app-a');
  });
});

after(() => {
  assert.equal(open.length, 0);
});
