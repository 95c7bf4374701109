/**
 * The container-credentials server (src/server/container-credentials.ts) on a loopback socket, with a fake
 * TokenIdentity and a fake credential cache: every status of design's table, the body shape the SDKs parse, the
 * Bearer prefix, the pod always the token's (never the peer address's), terse errors with the detail in the log,
 * the per-source limits.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { Writable } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { TokenIdentity } from '../../src/identity/token-identity.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { Policy } from '../../src/resolver/policy.ts';
import {
  accountOf,
  createContainerCredentialsServer,
  tokenId,
  type ContainerCredentialsServer,
  type TokenAnswer,
  type TokenIdentityPort,
} from '../../src/server/container-credentials.ts';
import type { CredentialProvider, Credentials, RoleIdentity } from '../../src/server/ports.ts';
import { FakeClock } from '../fakes/clock.ts';
import { request, type Answer } from './http-support.ts';

function identity(roleArn: string): RoleIdentity {
  const roleName = roleArn.slice(roleArn.lastIndexOf('/') + 1);
  return { key: `${roleArn}|${roleName}-session`, roleArn, roleName, sessionName: `${roleName}-session` };
}

const ROLE_A = identity('arn:aws:iam::123456789012:role/team-a/app-a');
const ROLE_B = identity('arn:aws-cn:iam::210987654321:role/app-b');
const ROLE_DOWN = identity('arn:aws:iam::123456789012:role/sts-down');
const POD_A = { uid: 'uid-a', name: 'app-a-7d9f', namespace: 'team-a' };
const POD_B = { uid: 'uid-b', name: 'app-b-5c4e', namespace: 'team-b' };
const POD_N = { uid: 'uid-n', name: 'plain-pod', namespace: 'plain' };
const POD_D = { uid: 'uid-d', name: 'sneaky-pod', namespace: 'sneaky-ns' };
const POD_X = { uid: 'uid-x', name: 'broken-pod', namespace: 'broken' };

/** A token-shaped string (a compact JWS) naming who it is for; the fake identity maps it to a verdict. */
function jwt(sub: string): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'RS256', kid: 'k1' })}.${part({ sub, aud: ['kiam'] })}.${Buffer.from(`signature of ${sub}`).toString('base64url')}`;
}

const TOKEN_A = jwt('system:serviceaccount:team-a:app-a');
const TOKEN_B = jwt('system:serviceaccount:team-b:app-b');
const TOKEN_NOROLE = jwt('system:serviceaccount:plain:default');
const TOKEN_DENIED = jwt('system:serviceaccount:sneaky-ns:default');
const TOKEN_FORGED = jwt('forged');
const TOKEN_OTHER_NODE = jwt('system:serviceaccount:team-c:on-node-2');
const TOKEN_REVIEW_DOWN = jwt('review-down');
const TOKEN_STS_DOWN = jwt('system:serviceaccount:broken:default');
const TOKEN_THROWS = jwt('throws');
const TOKEN_EXPIRED = jwt('expired');

class FakeIdentity implements TokenIdentityPort {
  readonly verdicts = new Map<string, TokenAnswer>();
  readonly asked: string[] = [];
  readonly signals: AbortSignal[] = [];
  /** When set, identify() waits for it before answering. */
  gate: Promise<void> | undefined;
  /** Tokens whose 'ok' verdict peek() gives (as TokenIdentity does once everything is cached). */
  readonly peekable = new Set<string>();
  readonly peeked: string[] = [];
  peek(token: string): (TokenAnswer & { kind: 'ok' }) | undefined {
    this.peeked.push(token);
    const v = this.verdicts.get(token);
    return this.peekable.has(token) && v?.kind === 'ok' ? v : undefined;
  }
  async identify(token: string, signal?: AbortSignal): Promise<TokenAnswer> {
    this.asked.push(token);
    if (signal) this.signals.push(signal);
    if (this.gate) await this.gate;
    if (token === TOKEN_THROWS) throw new Error('bug in the identity');
    return this.verdicts.get(token) ?? { kind: 'unauthenticated', reason: 'token signature invalid' };
  }
}

class FakeCredentials implements CredentialProvider {
  readonly byKey = new Map<string, Credentials>();
  gets = 0;
  peeks = 0;
  constructor(private readonly clock: FakeClock) {}
  issue(id: RoleIdentity, accessKeyId: string): Credentials {
    const now = this.clock.now();
    const creds = { accessKeyId, secretAccessKey: `secret-of-${accessKeyId}`, sessionToken: `session-token-of-${accessKeyId}`, expiration: now + 3600_000 + 999, lastUpdated: now - 60_000 };
    this.byKey.set(id.key, creds);
    return creds;
  }
  async get(id: RoleIdentity): Promise<Credentials> {
    this.gets++;
    const creds = this.byKey.get(id.key);
    if (!creds) throw new Error(`AccessDenied: not authorized to perform sts:AssumeRole on ${id.roleArn}`);
    return creds;
  }
}

/** A cache that also answers peek() (the CredentialCache does): the warm answer without a promise. */
class PeekingCredentials extends FakeCredentials {
  peek(id: RoleIdentity): Credentials | undefined {
    this.peeks++;
    return this.byKey.get(id.key);
  }
}

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

interface Fixture {
  server: ContainerCredentialsServer;
  port: number;
  identity: FakeIdentity;
  credentials: FakeCredentials;
  metrics: Metrics;
  logs: LogLine[];
  credsA: Credentials;
  credsB: Credentials;
  pressure: { on: boolean };
  get(headers?: Record<string, string>, options?: { path?: string; method?: string; from?: string; agent?: http.Agent }): Promise<Answer>;
}

const open: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (open.length) await open.pop()?.();
});

async function setup(options: { peek?: boolean; limits?: { maxConnectionsPerIp: number; maxRequestsPerSecond: number; idleTimeoutMs: number } } = {}): Promise<Fixture> {
  const clock = new FakeClock();
  const identity = new FakeIdentity();
  const credentials = options.peek ? new PeekingCredentials(clock) : new FakeCredentials(clock);
  identity.verdicts.set(TOKEN_A, { kind: 'ok', pod: POD_A, lookup: { kind: 'role', pod: { ...POD_A, ip: '10.1.0.11' }, identity: ROLE_A } });
  identity.verdicts.set(TOKEN_B, { kind: 'ok', pod: POD_B, lookup: { kind: 'role', pod: { ...POD_B, ip: '10.1.0.12' }, identity: ROLE_B } });
  identity.verdicts.set(TOKEN_NOROLE, { kind: 'ok', pod: POD_N, lookup: { kind: 'no-role', pod: { ...POD_N, ip: '10.1.0.13' } } });
  identity.verdicts.set(TOKEN_DENIED, {
    kind: 'ok',
    pod: POD_D,
    lookup: { kind: 'denied', pod: { ...POD_D, ip: '10.1.0.14' }, reason: 'namespace sneaky-ns does not permit arn:aws:iam::123456789012:role/admin', code: 'not-permitted', role: 'arn:aws:iam::123456789012:role/admin' },
  });
  identity.verdicts.set(TOKEN_OTHER_NODE, { kind: 'forbidden', code: 'other-node', reason: 'pod team-c/on-node-2 runs on node-2, not node-1' });
  identity.verdicts.set(TOKEN_REVIEW_DOWN, { kind: 'unavailable', code: 'review-failed', reason: 'TokenReview failed: connect ECONNREFUSED 10.96.0.1:443' });
  identity.verdicts.set(TOKEN_EXPIRED, { kind: 'unauthenticated', code: 'expired', reason: 'token expired at 2026-11-28T06:00:00.000Z (unverified)' });
  identity.verdicts.set(TOKEN_STS_DOWN, { kind: 'ok', pod: POD_X, lookup: { kind: 'role', pod: { ...POD_X, ip: '10.1.0.16' }, identity: ROLE_DOWN } });
  const credsA = credentials.issue(ROLE_A, 'ASIAPODAAAAAAAAAAAAA');
  const credsB = credentials.issue(ROLE_B, 'ASIAPODBBBBBBBBBBBBB');
  const logs: LogLine[] = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (c: Buffer, _e, done) => (logs.push(JSON.parse(c.toString()) as LogLine), done()) }));
  const metrics = createMetrics();
  const pressure = { on: false };
  const server = createContainerCredentialsServer({
    identity,
    credentials,
    metrics,
    logger,
    clock,
    underPressure: () => pressure.on,
    ...(options.limits ? { limits: options.limits } : {}),
  });
  await server.listen(['127.0.0.1'], 0);
  open.push(() => server.close());
  const port = server.addresses()[0]!.port;
  return {
    server,
    port,
    identity,
    credentials,
    metrics,
    logs,
    credsA,
    credsB,
    pressure,
    get: (headers = {}, o = {}) =>
      request('127.0.0.1', port, o.path ?? '/v1/credentials', { headers, ...(o.method ? { method: o.method } : {}), ...(o.from ? { from: o.from } : {}), ...(o.agent ? { agent: o.agent } : {}) }),
  };
}

async function counted(metrics: Metrics, metric: 'containerCredentialsRequests' | 'tokenRefusals' | 'clientLimits', label: string, value: string): Promise<number> {
  const { values } = await metrics[metric].get();
  return values.find((v) => (v.labels as Record<string, string>)[label] === value)?.value ?? 0;
}

const parsed = (a: Answer) => JSON.parse(a.body) as Record<string, unknown>;
const refusals = (logs: LogLine[]) => logs.filter((l) => l.msg === 'container credentials refused');

describe('the warm path: a token whose verdict and credentials are cached is answered before any promise', () => {
  it('answers from peek() without identify(), with the same bytes as the full path', async () => {
    const f = await setup({ peek: true });
    const full = await f.get({ authorization: TOKEN_A });
    assert.deepEqual(f.identity.asked, [TOKEN_A], 'not peekable yet: identify() decides');
    f.identity.peekable.add(TOKEN_A);
    const warm = await f.get({ authorization: `Bearer ${TOKEN_A}` });
    assert.equal(warm.status, 200);
    assert.equal(warm.body, full.body);
    assert.equal(warm.headers['content-type'], full.headers['content-type']);
    assert.deepEqual(f.identity.asked, [TOKEN_A], 'identify() not asked again');
    assert.equal(f.identity.peeked.at(-1), TOKEN_A, 'the bare token is peeked');
    assert.equal(await counted(f.metrics, 'containerCredentialsRequests', 'code', '200'), 2);
  });

  it('any doubt goes the full way: a refusal, no cached credentials, a query string, pressure', async () => {
    const f = await setup({ peek: true });
    for (const t of [TOKEN_A, TOKEN_NOROLE, TOKEN_DENIED, TOKEN_STS_DOWN]) f.identity.peekable.add(t);
    assert.equal((await f.get({ authorization: TOKEN_NOROLE })).status, 403);
    assert.equal((await f.get({ authorization: TOKEN_DENIED })).status, 403);
    assert.equal((await f.get({ authorization: TOKEN_STS_DOWN })).status, 503, 'no credentials cached: the full path asks the cache');
    assert.equal((await f.get({ authorization: TOKEN_A }, { path: '/v1/credentials?x=1' })).status, 200);
    f.pressure.on = true;
    assert.equal((await f.get({ authorization: TOKEN_A })).status, 503);
    // Each went through identify() (under pressure the full path answers 503 before asking).
    assert.deepEqual(f.identity.asked, [TOKEN_NOROLE, TOKEN_DENIED, TOKEN_STS_DOWN, TOKEN_A]);
  });
});

describe('200: the credentials of the pod the token names', () => {
  it('the body the SDKs parse: AccessKeyId, SecretAccessKey, Token, AccountId, Expiration (ISO 8601, whole seconds, UTC)', async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_A });
    assert.equal(a.status, 200);
    assert.equal(a.headers['content-type'], 'application/json');
    assert.equal(a.headers['content-length'], String(Buffer.byteLength(a.body)));
    assert.deepEqual(parsed(a), {
      AccessKeyId: 'ASIAPODAAAAAAAAAAAAA',
      SecretAccessKey: 'secret-of-ASIAPODAAAAAAAAAAAAA',
      Token: 'session-token-of-ASIAPODAAAAAAAAAAAAA',
      AccountId: '123456789012',
      Expiration: new Date(Math.floor(f.credsA.expiration / 1000) * 1000).toISOString().replace('.000Z', 'Z'),
    });
    assert.match(String(parsed(a).Expiration), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'RFC 3339, as the JS SDK parses it');
    assert.deepEqual(f.identity.asked, [TOKEN_A]);
    assert.equal(await counted(f.metrics, 'containerCredentialsRequests', 'code', '200'), 1);
  });

  it('the account comes from the role ARN, whatever the partition', async () => {
    const f = await setup();
    assert.equal(parsed(await f.get({ authorization: TOKEN_B })).AccountId, '210987654321');
    assert.equal(accountOf('arn:aws-us-gov:iam::111122223333:role/path/to/r'), '111122223333');
    assert.equal(accountOf('not an arn'), '');
  });

  it('"Bearer <token>" is accepted (any case), and the token handed on without it; blanks around it are trimmed', async () => {
    const f = await setup();
    assert.equal((await f.get({ authorization: `Bearer ${TOKEN_A}` })).status, 200);
    assert.equal((await f.get({ authorization: `bearer  ${TOKEN_A} ` })).status, 200);
    assert.deepEqual(f.identity.asked, [TOKEN_A, TOKEN_A]);
  });

  it('a token copied to another pod still names the pod it was issued to: the peer address never picks the pod', async () => {
    const f = await setup();
    // Two "pods" on loopback: each presents the other's token and gets the token's pod's credentials, never its own.
    const fromA = await f.get({ authorization: TOKEN_B }, { from: '127.0.0.11' });
    const fromB = await f.get({ authorization: TOKEN_A }, { from: '127.0.0.12' });
    assert.equal(parsed(fromA).AccessKeyId, 'ASIAPODBBBBBBBBBBBBB');
    assert.equal(parsed(fromB).AccessKeyId, 'ASIAPODAAAAAAAAAAAAA');
    // A token of a pod on another node gets nothing, from any address.
    for (const from of ['127.0.0.11', '127.0.0.12']) assert.equal((await f.get({ authorization: TOKEN_OTHER_NODE }, { from })).status, 403);
  });

  it('logged at info the first time a pod is served these credentials (with a token id, never the token), at debug after', async () => {
    const f = await setup();
    await f.get({ authorization: TOKEN_A });
    await f.get({ authorization: TOKEN_A });
    const served = f.logs.filter((l) => l.msg === 'credentials served by token');
    assert.deepEqual(served.map((l) => l.level), [30, 20]);
    assert.equal(served[0]!.token, tokenId(TOKEN_A));
    assert.match(String(served[0]!.token), /^[0-9a-f]{8}$/);
    assert.deepEqual([served[0]!.pod, served[0]!.namespace, served[0]!.role, served[0]!.accessKeyId], [POD_A.name, POD_A.namespace, ROLE_A.roleArn, 'ASIAPODAAAAAAAAAAAAA']);
    const all = f.logs.map((l) => JSON.stringify(l)).join('\n');
    assert.ok(!all.includes(TOKEN_A) && !all.includes(TOKEN_A.split('.')[2]!), 'the token is never logged');
    assert.ok(!all.includes('secret-of-'), 'nor the secret key');
  });

  it('credentials the cache can peek at are answered without waiting on get()', async () => {
    const f = await setup({ peek: true });
    assert.equal((await f.get({ authorization: TOKEN_A })).status, 200);
    assert.equal((f.credentials as PeekingCredentials).peeks, 1);
    assert.equal(f.credentials.gets, 0);
  });

  it('a query string is ignored; keep-alive connections are served again', async () => {
    const f = await setup();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < 3; i++) assert.equal((await f.get({ authorization: TOKEN_A }, { path: '/v1/credentials?x=1', agent })).status, 200);
    } finally {
      agent.destroy();
    }
  });
});

describe('refusals: the status the SDKs expect, a terse JSON message, the reason in the metric and the log', () => {
  const SECRETS = ['team-a', 'team-c', 'sneaky', 'arn:', 'node-2', 'ECONNREFUSED', 'AccessDenied', 'signature', 'permit'];
  function assertTerse(a: Answer): void {
    assert.equal(a.headers['content-type'], 'application/json');
    const body = parsed(a);
    assert.deepEqual(Object.keys(body), ['message']);
    for (const s of SECRETS) assert.ok(!a.body.includes(s), `the body ${a.body} does not mention ${s}`);
  }

  async function refusal(f: Fixture, status: number, reason: string): Promise<LogLine> {
    assert.equal(await counted(f.metrics, 'containerCredentialsRequests', 'code', String(status)), 1, `one ${status} counted`);
    assert.equal(await counted(f.metrics, 'tokenRefusals', 'reason', reason), 1, `one refusal ${reason} counted`);
    const lines = refusals(f.logs);
    assert.equal(lines.length, 1, 'one log line');
    assert.equal(lines[0]!.level, 40, 'at warn');
    assert.equal(lines[0]!.reason, reason);
    assert.equal(lines[0]!.status, status);
    return lines[0]!;
  }

  it('400 without an Authorization header, or an empty one; the identity is never asked', async () => {
    const f = await setup();
    const a = await f.get();
    assert.equal(a.status, 400);
    assertTerse(a);
    assert.deepEqual(parsed(a), { message: 'missing Authorization header' });
    await refusal(f, 400, 'no-token');
    assert.equal((await f.get({ authorization: '  ' })).status, 400);
    assert.deepEqual(f.identity.asked, []);
  });

  it('400 for a header that is not a JWT (garbage, "Bearer" alone, a basic credential)', async () => {
    const f = await setup();
    for (const value of ['not-a-token', 'Bearer', 'Basic dXNlcjpwYXNz', `${TOKEN_A}.extra`, 'a.b.c d']) {
      const a = await f.get({ authorization: value });
      assert.equal(a.status, 400, value);
      assert.deepEqual(parsed(a), { message: 'malformed Authorization header' });
    }
    assert.equal(await counted(f.metrics, 'tokenRefusals', 'reason', 'malformed-token'), 5);
    assert.deepEqual(f.identity.asked, []);
  });

  it('401 for a token the TokenReview does not authenticate: the reason logged, not sent', async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_FORGED });
    assert.equal(a.status, 401);
    assertTerse(a);
    const line = await refusal(f, 401, 'unauthenticated');
    assert.equal(line.detail, 'token signature invalid');
    assert.equal(line.token, tokenId(TOKEN_FORGED));
    assert.equal(line.ip, '127.0.0.1');
  });

  it("401's reason label is TokenIdentity's code when it gives one (expired, wrong-audience, invalid, malformed)", async () => {
    const f = await setup();
    assert.equal((await f.get({ authorization: TOKEN_EXPIRED })).status, 401);
    const line = await refusal(f, 401, 'expired');
    assert.match(String(line.detail), /expired at/);
  });

  it("403 for an authenticated token whose pod is no live pod of this node, labelled with TokenIdentity's code", async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_OTHER_NODE });
    assert.equal(a.status, 403);
    assertTerse(a);
    const line = await refusal(f, 403, 'other-node');
    assert.match(String(line.detail), /runs on node-2/);
  });

  it('403 for a pod without a role', async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_NOROLE });
    assert.equal(a.status, 403);
    assertTerse(a);
    const line = await refusal(f, 403, 'no-role');
    assert.deepEqual([line.pod, line.namespace], [POD_N.name, POD_N.namespace]);
  });

  it("403 for a role the namespace's policy denies, labelled with the denial code", async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_DENIED });
    assert.equal(a.status, 403);
    assertTerse(a);
    const line = await refusal(f, 403, 'not-permitted');
    assert.match(String(line.detail), /does not permit/);
    assert.equal(line.role, 'arn:aws:iam::123456789012:role/admin');
  });

  it('503 with Retry-After: 1 while the TokenReview API is unavailable', async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_REVIEW_DOWN });
    assert.equal(a.status, 503);
    assert.equal(a.headers['retry-after'], '1');
    assertTerse(a);
    const line = await refusal(f, 503, 'review-failed');
    assert.match(String(line.detail), /ECONNREFUSED/);
  });

  it('503 with Retry-After: 1 when STS gives no credentials; the error logged', async () => {
    const f = await setup();
    const a = await f.get({ authorization: TOKEN_STS_DOWN });
    assert.equal(a.status, 503);
    assert.equal(a.headers['retry-after'], '1');
    assertTerse(a);
    const line = await refusal(f, 503, 'no-credentials');
    assert.match(String(line.detail), /AccessDenied/);
    assert.equal(line.role, ROLE_DOWN.roleArn);
  });

  it('503 when the identity itself throws (a bug): answered, logged, the agent keeps serving', async () => {
    const f = await setup();
    assert.equal((await f.get({ authorization: TOKEN_THROWS })).status, 503);
    assert.match(String(refusals(f.logs)[0]!.detail), /bug in the identity/);
    assert.equal(await counted(f.metrics, 'tokenRefusals', 'reason', 'identity-failed'), 1);
    assert.equal((await f.get({ authorization: TOKEN_A })).status, 200);
  });

  it('warn once per source or pod and reason, debug afterwards; every refusal counted', async () => {
    const f = await setup();
    for (let i = 0; i < 3; i++) assert.equal((await f.get({ authorization: TOKEN_FORGED })).status, 401);
    assert.deepEqual(refusals(f.logs).map((l) => l.level), [40, 20, 20]);
    assert.equal(await counted(f.metrics, 'tokenRefusals', 'reason', 'unauthenticated'), 3);
  });

  it('404 for any other path, 405 (Allow: GET) for any other method; neither looks at the token', async () => {
    const f = await setup();
    for (const path of ['/', '/v1/credentials/', '/V1/credentials', '/latest/meta-data/iam/security-credentials/', '/v1/credentials/../credentials']) {
      const a = await f.get({ authorization: TOKEN_A }, { path });
      assert.equal(a.status, 404, path);
      assert.deepEqual(parsed(a), { message: 'not found' });
    }
    for (const method of ['POST', 'PUT', 'HEAD', 'DELETE']) {
      const a = await f.get({ authorization: TOKEN_A }, { method });
      assert.equal(a.status, 405, method);
      assert.equal(a.headers.allow, 'GET');
    }
    assert.deepEqual(f.identity.asked, []);
    assert.equal(await counted(f.metrics, 'containerCredentialsRequests', 'code', '404'), 5);
  });

  it('503 with Retry-After: 1 under event-loop pressure, before anything else', async () => {
    const f = await setup();
    f.pressure.on = true;
    const a = await f.get({ authorization: TOKEN_A });
    assert.equal(a.status, 503);
    assert.equal(a.headers['retry-after'], '1');
    assert.deepEqual(f.identity.asked, []);
  });
});

describe('per-source limits (fairness.ts)', () => {
  it('over the request rate: 429 as JSON with Retry-After, counted, the connection kept', async () => {
    const f = await setup({ limits: { maxConnectionsPerIp: 0, maxRequestsPerSecond: 1, idleTimeoutMs: 5_000 } });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const statuses: number[] = [];
      let limited: Answer | undefined;
      for (let i = 0; i < 4; i++) {
        const a = await f.get({ authorization: TOKEN_A }, { agent });
        statuses.push(a.status);
        if (a.status === 429) limited = a;
      }
      assert.deepEqual(statuses, [200, 200, 200, 429], 'a burst of 3 s at 1/s, then refused');
      assert.ok(limited);
      assert.equal(limited.headers['content-type'], 'application/json');
      assert.deepEqual(parsed(limited), { message: 'too many requests' });
      assert.equal(limited.headers['retry-after'], '1');
      assert.equal(await counted(f.metrics, 'containerCredentialsRequests', 'code', '429'), 1);
      assert.equal(await counted(f.metrics, 'clientLimits', 'reason', 'rate'), 1);
    } finally {
      agent.destroy();
    }
  });

  it('over the connection cap: a canned JSON 429 and close', async () => {
    const f = await setup({ limits: { maxConnectionsPerIp: 1, maxRequestsPerSecond: 0, idleTimeoutMs: 5_000 } });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      assert.equal((await f.get({ authorization: TOKEN_A }, { agent })).status, 200);
      const second = await f.get({ authorization: TOKEN_A });
      assert.equal(second.status, 429);
      assert.deepEqual(parsed(second), { message: 'too many requests' });
      assert.equal(await counted(f.metrics, 'clientLimits', 'reason', 'connections'), 1);
    } finally {
      agent.destroy();
    }
  });
});

describe('listening and closing', () => {
  it('several addresses share one port; addresses() reports them', async () => {
    const f = await setup();
    const extra = createContainerCredentialsServer({ identity: f.identity, credentials: f.credentials, metrics: createMetrics(), logger: pino({ level: 'silent' }), clock: new FakeClock() });
    await extra.listen(['127.0.0.1', '127.0.0.2'], 0);
    open.push(() => extra.close());
    const [a, b] = extra.addresses();
    assert.equal(a!.port, b!.port);
    assert.deepEqual([a!.host, b!.host], ['127.0.0.1', '127.0.0.2']);
    assert.equal((await request('127.0.0.2', b!.port, '/v1/credentials', { headers: { authorization: TOKEN_B } })).status, 200);
  });

  it('an address it cannot bind: the error names it, and what did listen is closed', async () => {
    const f = await setup();
    const s = createContainerCredentialsServer({ identity: f.identity, credentials: f.credentials, metrics: createMetrics(), logger: pino({ level: 'silent' }), clock: new FakeClock() });
    // 192.0.2.1 (TEST-NET-1, RFC 5737) is on no link of this host.
    await assert.rejects(s.listen(['127.0.0.1', '192.0.2.1'], 0), /container credentials server cannot listen on 192\.0\.2\.1:\d+: .*EADDRNOTAVAIL.*--container-credentials-link/);
    assert.deepEqual(s.addresses(), [], 'nothing left listening');
    await s.close();
  });

  it('close(): requests in flight finish, then new connections are refused; idempotent', async () => {
    const f = await setup();
    let open_: () => void = () => {};
    f.identity.gate = new Promise((resolve) => (open_ = resolve));
    const inFlight = f.get({ authorization: TOKEN_A });
    while (f.identity.asked.length === 0) await new Promise((r) => setImmediate(r));
    const closing = f.server.close();
    assert.equal(f.server.close(), closing, 'the same promise');
    open_();
    assert.equal((await inFlight).status, 200);
    await closing;
    await assert.rejects(f.get({ authorization: TOKEN_A }), /ECONNREFUSED/);
  });

  it('a client that goes away aborts the signal handed to the identity', async () => {
    const f = await setup();
    let release: () => void = () => {};
    f.identity.gate = new Promise((resolve) => (release = resolve));
    const req = http.request({ host: '127.0.0.1', port: f.port, path: '/v1/credentials', headers: { authorization: TOKEN_A }, agent: false });
    req.on('error', () => {});
    req.end();
    while (f.identity.signals.length === 0) await new Promise((r) => setImmediate(r));
    const signal = f.identity.signals[0]!;
    assert.equal(signal.aborted, false);
    const aborted = new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    req.destroy();
    await aborted;
    release();
  });
});

describe('with the real TokenIdentity (a fake TokenReview and resolver): its verdicts as the pods see them', () => {
  const NODE = 'node-1';
  const BASE = 'arn:aws:iam::123456789012:role/';

  async function withIdentity() {
    const clock = new FakeClock();
    const exp = Math.floor(clock.now() / 1000) + 3600;
    const token = (sub: string, over: Record<string, unknown> = {}) => {
      const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
      return `${part({ alg: 'RS256' })}.${part({ sub, aud: ['kiam'], exp, ...over })}.${Buffer.from(sub).toString('base64url')}`;
    };
    const podInfo = (name: string, role?: string) => ({
      uid: `uid-${name}`, name, namespace: 'team-a', ip: '10.1.0.20', ips: ['10.1.0.20'], serviceAccount: 'default', phase: 'Running', hostNetwork: false, deleting: false, ...(role ? { role } : {}),
    });
    const pods = new Map([['p1', podInfo('p1', 'app-reader')], ['p2', podInfo('p2')]]);
    const reviews = new Map<string, { authenticated: boolean; error?: string; podName?: string; nodeName?: string }>();
    const reviewer = {
      async review(t: string) {
        const r = reviews.get(t) ?? { authenticated: false, error: 'invalid bearer token' };
        return r.authenticated
          ? { authenticated: true, username: 'system:serviceaccount:team-a:default', namespace: 'team-a', serviceAccount: 'default', podName: r.podName, podUid: `uid-${r.podName}`, ...(r.nodeName ? { nodeName: r.nodeName } : {}), audiences: ['kiam'] }
          : { authenticated: false, error: r.error };
      },
    };
    const identity = new TokenIdentity({
      reviewer,
      resolver: {
        async findPod(claim: { uid: string; name: string }) {
          const p = pods.get(claim.name);
          return p ? { kind: 'pod' as const, pod: p, from: 'index' as const } : { kind: 'not-found' as const };
        },
        namespaceAnnotations: () => ({ 'iam.amazonaws.com/permitted': `${BASE}app-.*` }),
      },
      serviceAccounts: { get: async () => ({}) },
      policy: new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: NODE }),
      audiences: ['kiam'],
      nodeName: NODE,
      clock,
      metrics: createMetrics(),
      logger: pino({ level: 'silent' }),
    });
    const credentials = new FakeCredentials(clock);
    const metrics = createMetrics();
    const server = createContainerCredentialsServer({ identity, credentials, metrics, logger: pino({ level: 'silent' }), clock });
    await server.listen(['127.0.0.1'], 0);
    open.push(() => server.close());
    const port = server.addresses()[0]!.port;
    return { token, reviews, credentials, metrics, get: (authorization: string) => request('127.0.0.1', port, '/v1/credentials', { headers: { authorization } }) };
  }

  it('200 for its pod; 401 forged or expired; 403 another node, no role, a pod gone; each with its reason', async () => {
    const h = await withIdentity();
    const ok = h.token('p1');
    h.reviews.set(ok, { authenticated: true, podName: 'p1' });
    // The cache's key is the identity the policy resolves for p1.
    const p1 = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: NODE }).evaluate(
      { uid: 'uid-p1', name: 'p1', namespace: 'team-a', ip: '10.1.0.20', ips: ['10.1.0.20'], serviceAccount: 'default', phase: 'Running', hostNetwork: false, deleting: false, role: 'app-reader' },
      { 'iam.amazonaws.com/permitted': `${BASE}app-.*` },
    );
    assert.equal(p1.kind, 'role');
    if (p1.kind === 'role') h.credentials.issue(p1.identity, 'ASIAP1P1P1P1P1P1P1P1');
    const answer = await h.get(ok);
    assert.equal(answer.status, 200, answer.body);
    assert.equal(parsed(answer).AccessKeyId, 'ASIAP1P1P1P1P1P1P1P1');

    const other = h.token('p1-elsewhere');
    h.reviews.set(other, { authenticated: true, podName: 'p1', nodeName: 'node-2' });
    const noRole = h.token('p2');
    h.reviews.set(noRole, { authenticated: true, podName: 'p2' });
    const gone = h.token('p3');
    h.reviews.set(gone, { authenticated: true, podName: 'p3' });
    const cases: Array<[string, number, string]> = [
      [h.token('forged'), 401, 'invalid'],
      [h.token('old', { exp: 1 }), 401, 'expired'],
      [h.token('elsewhere', { aud: ['sts.amazonaws.com'] }), 401, 'wrong-audience'],
      [other, 403, 'other-node'],
      [noRole, 403, 'no-role'],
      [gone, 403, 'pod-not-found'],
    ];
    for (const [t, status, reason] of cases) {
      const a = await h.get(t);
      assert.equal(a.status, status, `${reason}: ${a.body}`);
      assert.deepEqual(Object.keys(parsed(a)), ['message']);
      assert.equal(await counted(h.metrics, 'tokenRefusals', 'reason', reason), 1, reason);
    }
  });
});
