/**
 * Fairness between pods (src/server/fairness.ts), over real loopback sockets: the per-source request rate and
 * connection caps answer 429 with Retry-After, request headers over 8 KiB get 431 on the warm path and through
 * fastify, headers that dribble in and idle keep-alive connections are cut off, and nothing thrown while answering
 * outside fastify escapes as an uncaught exception. Time for the request bucket comes from the fake clock; the
 * timeouts are node:http's own, so those tests wait for the close event (never for a fixed time).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { parseCommandLine } from '../../src/cli.ts';
import { buildConfig, ConfigError } from '../../src/config.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { buildApp, listenOn } from '../../src/server/app.ts';
import { BURST_SECONDS, DEFAULT_CLIENT_LIMITS, MAX_HEADER_BYTES, SourceLimits, peerAddress, type ClientLimits } from '../../src/server/fairness.ts';
import type { CredentialProvider, Credentials, IdentityLookup, Lookup, RoleIdentity } from '../../src/server/ports.ts';
import { errorPage } from '../../src/server/routes/respond.ts';
import { createTokenService } from '../../src/server/tokens.ts';
import type { UpstreamClient } from '../../src/server/upstream.ts';
import { FakeClock } from '../fakes/clock.ts';
import { observed, request, type Answer } from './http-support.ts';

const IP = '127.0.0.1';
const OTHER_IP = '127.0.0.2';
const ROLE: RoleIdentity = { key: 'k-app', roleArn: 'arn:aws:iam::123456789012:role/app', roleName: 'app', sessionName: 'ns.app' };
const DOC = '/latest/meta-data/iam/security-credentials/app';
const PASS = '/latest/meta-data/instance-id';

class Lookups implements IdentityLookup {
  lookups = 0;
  peekError: Error | undefined;
  async lookup(ip: string): Promise<Lookup> {
    this.lookups++;
    return this.answer(ip);
  }
  peek(ip: string): Lookup | undefined {
    if (this.peekError) throw this.peekError;
    return this.answer(ip);
  }
  private answer(ip: string): Lookup {
    return { kind: 'role', pod: { uid: `uid-${ip}`, ip, namespace: 'ns', name: `pod-${ip}` }, identity: ROLE };
  }
}

const upstream: UpstreamClient = {
  request: async () => ({ status: 200, body: Buffer.from('i-0123'), contentType: 'text/plain' }) as never,
  getText: async () => '',
  getJson: async () => ({}),
  close: () => {},
};

interface Fixture {
  app: FastifyInstance;
  port: number;
  clock: FakeClock;
  lookup: Lookups;
  metrics: Metrics;
  logs: Array<Record<string, unknown>>;
}

const open: Array<() => unknown> = [];
afterEach(async () => {
  while (open.length) await open.pop()?.();
});

async function setup(limits: Partial<ClientLimits>, opts: { hosts?: string[]; metrics?: Metrics } = {}): Promise<Fixture> {
  const clock = new FakeClock();
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  const creds: Credentials = { accessKeyId: 'ASIAFAIR000000000001', secretAccessKey: 's', sessionToken: 't', expiration: clock.now() + 3600_000, lastUpdated: clock.now() };
  const credentials: CredentialProvider = { get: async () => creds, peek: () => creds };
  const lookup = new Lookups();
  const metrics = opts.metrics ?? createMetrics();
  const app = buildApp({
    lookup,
    credentials,
    upstream,
    tokens: createTokenService({ clock }),
    metrics,
    logger: pino({ level: 'debug' }, sink),
    clock,
    allowRoutes: [],
    denyRoutes: [],
    limits: { ...DEFAULT_CLIENT_LIMITS, ...limits },
  });
  const close = await listenOn(app, opts.hosts ?? [IP], 0);
  open.push(close);
  return { app, port: (app.server.address() as AddressInfo).port, clock, lookup, metrics, logs };
}

function get(port: number, path: string, opts: { from?: string; headers?: Record<string, string>; agent?: http.Agent } = {}): Promise<Answer> {
  return request(IP, port, path, opts);
}

/** A raw connection: what the server sent until it closed, and when it did. */
function connect(port: number, host = IP): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host });
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (c: string) => (data += c));
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => {}); // a reset after the answer is fine: the test reads what arrived
    socket.once('connect', () => resolve({ socket, received: () => data, closed }));
    socket.once('error', reject);
    open.push(() => socket.destroy());
  });
}

async function count(metrics: Metrics, reason: string): Promise<number> {
  const { values } = await metrics.clientLimits.get();
  return values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

describe('per-source request rate', () => {
  it('answers 429 with Retry-After once a source has used its burst, on the warm path and through fastify; other sources go on', async () => {
    const f = await setup({ maxRequestsPerSecond: 2, maxConnectionsPerIp: 0 });
    const burst = 2 * BURST_SECONDS;
    // A new connection per request: the bucket belongs to the source, not to the connection.
    for (let i = 0; i < burst; i++) assert.equal((await get(f.port, i % 2 ? DOC : PASS)).status, 200, `request ${i + 1}`);
    for (const path of [DOC, PASS]) {
      const refused = await get(f.port, path);
      assert.equal(refused.status, 429, path);
      assert.equal(refused.headers['retry-after'], '1');
      assert.equal(refused.headers.server, 'EC2ws');
      assert.equal(refused.headers['content-type'], 'text/html');
      assert.equal(refused.body, errorPage(429));
      assert.match(refused.body, /429 - Too Many Requests/);
    }
    assert.equal(f.lookup.lookups, burst / 2, 'a refused request is never looked up');
    assert.equal((await get(f.port, DOC, { from: OTHER_IP })).status, 200, 'another source has a bucket of its own');

    assert.equal(await count(f.metrics, 'rate'), 2);
    assert.equal(await observed(f.metrics, 'limited', '429'), 2);
    const warned = f.logs.filter((l) => l.msg === 'client over a per-source limit refused' && l.level === 40);
    assert.deepEqual(warned.map((l) => [l.ip, l.reason]), [[IP, 'rate']], 'warn once per source and reason');

    // Time refills the bucket at the sustained rate: half a second is one request at 2/s.
    await f.clock.advance(500);
    assert.equal((await get(f.port, DOC)).status, 200);
    assert.equal((await get(f.port, DOC)).status, 429);
    await f.clock.advance(60_000);
    for (let i = 0; i < burst; i++) assert.equal((await get(f.port, PASS)).status, 200, 'refilled to the burst, no further');
    assert.equal((await get(f.port, PASS)).status, 429);
  });

  it('keeps the connection open after a 429 and says when to come back', async () => {
    const f = await setup({ maxRequestsPerSecond: 1, maxConnectionsPerIp: 0 });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    open.push(() => agent.destroy());
    const sockets = new Set<Socket>();
    for (let i = 0; i < BURST_SECONDS + 2; i++) {
      const answer = await new Promise<Answer & { socket: Socket }>((resolve, reject) => {
        http.get({ host: IP, port: f.port, path: DOC, agent }, (res) => {
          sockets.add(res.socket);
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '', socket: res.socket }));
        }).on('error', reject);
      });
      assert.equal(answer.status, i < BURST_SECONDS ? 200 : 429, `request ${i + 1}`);
      if (answer.status === 429) assert.equal(answer.headers['retry-after'], '1');
    }
    assert.equal(sockets.size, 1, 'one keep-alive connection throughout');
    await f.clock.advance(1_000);
    assert.equal((await get(f.port, DOC)).status, 200);
  });

  it('0 means no cap', async () => {
    const f = await setup({ maxRequestsPerSecond: 0, maxConnectionsPerIp: 0 });
    for (let i = 0; i < 50; i++) assert.equal((await get(f.port, DOC)).status, 200);
    assert.equal(await count(f.metrics, 'rate'), 0);
  });
});

describe('per-source connection cap', () => {
  it('answers a connection over the cap 429 at once and closes it, unparsed; a slot frees when a connection closes', async () => {
    const f = await setup({ maxConnectionsPerIp: 2, maxRequestsPerSecond: 0 });
    const accepted: Socket[] = [];
    f.app.server.on('connection', (s: Socket) => accepted.push(s));
    const first = await connect(f.port);
    const second = await connect(f.port);
    // The third sends nothing: the answer does not wait for a request.
    const third = await connect(f.port);
    await third.closed;
    assert.match(third.received(), /^HTTP\/1\.1 429 Too Many Requests\r\nServer: EC2ws\r\nContent-Type: text\/html\r\nContent-Length: \d+\r\nRetry-After: 1\r\nConnection: close\r\n\r\n/);
    assert.ok(third.received().endsWith(errorPage(429)));
    // One that sends a request at once gets the same, and its request is never parsed nor looked up.
    const fourth = await connect(f.port);
    fourth.socket.write(`GET ${DOC} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await fourth.closed;
    assert.match(fourth.received(), /^HTTP\/1\.1 429 /);
    assert.equal((fourth.received().match(/HTTP\/1\.1/g) ?? []).length, 1, 'one answer only');
    assert.equal(f.lookup.lookups, 0);
    assert.equal(await count(f.metrics, 'connections'), 2);
    assert.equal(first.received() + second.received(), '', 'the two within the cap are untouched');
    assert.equal((await get(f.port, DOC, { from: OTHER_IP })).status, 200, 'another source is not affected');

    // The first two still work, and once one closes (on the server side too) there is room for another.
    first.socket.write(`GET ${DOC} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await once(first.socket, 'data');
    assert.match(first.received(), /^HTTP\/1\.1 200 /);
    second.socket.destroy();
    await once(accepted[1]!, 'close');
    assert.equal((await get(f.port, DOC)).status, 200);
  });

  it('counts an IPv4-mapped peer of a dual-stack socket as its IPv4 address', async (t) => {
    const f = await setup({ maxConnectionsPerIp: 1, maxRequestsPerSecond: 0 }, { hosts: ['::'] }).catch((err: Error) => {
      if (process.env.CI !== 'true' && /EAFNOSUPPORT|EADDRNOTAVAIL/.test(err.message)) return undefined;
      throw err;
    });
    if (!f) return t.skip('no IPv6 here');
    const held = await connect(f.port, IP);
    const over = await connect(f.port, '::ffff:127.0.0.1');
    await over.closed;
    assert.match(over.received(), /^HTTP\/1\.1 429 /, 'the v4-mapped form is the same source');
    const warned = f.logs.find((l) => l.reason === 'connections');
    assert.equal(warned?.ip, IP);
    held.socket.destroy();
  });

  it('peerAddress: IPv4-mapped IPv6 is its IPv4 address, anything else as given', () => {
    assert.equal(peerAddress('::ffff:10.1.2.3'), '10.1.2.3');
    assert.equal(peerAddress('10.1.2.3'), '10.1.2.3');
    assert.equal(peerAddress('fd00::1'), 'fd00::1');
    assert.equal(peerAddress('::ffff:a01:203'), '::ffff:a01:203', 'not in dotted form: as the socket reports it');
    assert.equal(peerAddress(undefined), '');
  });

  it('refuses negative or non-numeric limits', () => {
    const deps = { clock: new FakeClock(), metrics: createMetrics(), logger: pino({ level: 'silent' }) };
    assert.throws(() => new SourceLimits({ ...DEFAULT_CLIENT_LIMITS, maxConnectionsPerIp: -1 }, deps), /maxConnectionsPerIp/);
    assert.throws(() => new SourceLimits({ ...DEFAULT_CLIENT_LIMITS, maxRequestsPerSecond: Number.NaN }, deps), /maxRequestsPerSecond/);
    assert.throws(() => new SourceLimits({ ...DEFAULT_CLIENT_LIMITS, idleTimeoutMs: 0 }, deps), /idleTimeoutMs/);
  });
});

describe('header size and timeouts', () => {
  it(`answers 431 to request headers over ${MAX_HEADER_BYTES} bytes, on the warm path and through fastify`, async () => {
    const f = await setup({});
    for (const path of [DOC, PASS]) {
      const big = await get(f.port, path, { headers: { 'x-padding': 'a'.repeat(MAX_HEADER_BYTES) } });
      assert.equal(big.status, 431, path);
      assert.equal(big.headers.server, 'EC2ws');
      assert.equal(big.headers.connection, 'close');
      assert.equal(big.body, errorPage(431));
      assert.equal((await get(f.port, path, { headers: { 'x-padding': 'a'.repeat(MAX_HEADER_BYTES - 1024) } })).status, 200, `${path}: under the limit`);
    }
    assert.equal(await count(f.metrics, 'header-size'), 2);
  });

  it('cuts off a connection whose headers dribble in past the idle timeout, with 408', { timeout: 10_000 }, async () => {
    const f = await setup({ idleTimeoutMs: 300 });
    const slow = await connect(f.port);
    slow.socket.write(`GET ${DOC} HTTP/1.1\r\nHost: x\r\n`);
    // One byte every 20 ms, for as long as the connection lasts: never a whole request.
    const drip = setInterval(() => slow.socket.writable && slow.socket.write('a'), 20);
    open.push(() => clearInterval(drip));
    await slow.closed;
    clearInterval(drip);
    assert.match(slow.received(), /^HTTP\/1\.1 408 Request Timeout\r\nServer: EC2ws\r\n/);
    // A connection that never sends a byte goes the same way.
    const silent = await connect(f.port);
    await silent.closed;
    assert.match(silent.received(), /^HTTP\/1\.1 408 /);
    assert.equal(await count(f.metrics, 'header-timeout'), 2);
    assert.equal(f.lookup.lookups, 0);
  });

  it('closes a keep-alive connection left idle for the idle timeout', { timeout: 10_000 }, async () => {
    const f = await setup({ idleTimeoutMs: 300 });
    // A raw client that never closes by itself: the close can only come from the server.
    const idle = await connect(f.port);
    idle.socket.write(`GET ${DOC} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await idle.closed;
    assert.match(idle.received(), /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(idle.received(), /\r\nConnection: keep-alive\r\n/, 'kept alive after the answer, then closed for idling');
    assert.equal((idle.received().match(/HTTP\/1\.1/g) ?? []).length, 1, 'no 408 for an idle connection: it had no request under way');
  });
});

describe('errors while answering outside fastify', () => {
  it('a warm path that throws before answering leaves the request to fastify', async () => {
    const f = await setup({});
    f.lookup.peekError = new Error('index broken');
    const answer = await get(f.port, DOC);
    assert.equal(answer.status, 200);
    assert.equal(f.lookup.lookups, 1, 'answered by fastify, which looked the source up');
  });

  it('an exception after the warm path has answered is logged, never thrown out of the server', async () => {
    const metrics = createMetrics();
    const labels = metrics.requestDuration.labels.bind(metrics.requestDuration);
    // The warm path's timers are taken once, when the app is built; make observing the listing fail.
    metrics.requestDuration.labels = ((...args: Parameters<typeof labels>) => {
      const child = labels(...args);
      const [first] = args;
      if (typeof first === 'object' && first.handler === 'listing') return { ...child, observe: () => { throw new Error('metrics broken'); } };
      return child;
    }) as typeof metrics.requestDuration.labels;
    const f = await setup({}, { metrics });
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    open.push(() => process.off('uncaughtException', onUncaught));
    const answer = await get(f.port, '/latest/meta-data/iam/security-credentials/');
    assert.deepEqual([answer.status, answer.body], [200, 'app'], 'the response had gone out whole');
    assert.deepEqual(uncaught, []);
    const logged = f.logs.find((l) => l.msg === 'metadata request failed outside fastify');
    assert.equal(logged?.err, 'metrics broken');
    assert.equal(logged?.level, 50);
    // The server goes on.
    assert.equal((await get(f.port, DOC)).status, 200);
  });
});

describe('flags', () => {
  it('default to DEFAULT_CLIENT_LIMITS, take 0 for no cap, and name the flag of a bad value', () => {
    const cfg = buildConfig({ nodeName: 'n' }, {});
    assert.deepEqual({ maxConnectionsPerIp: cfg.maxConnectionsPerIp, maxRequestsPerSecond: cfg.maxRequestsPerSecond, idleTimeoutMs: cfg.idleTimeoutMs }, DEFAULT_CLIENT_LIMITS);
    const inv = parseCommandLine(['agent', '--node-name', 'n', '--max-connections-per-ip', '0', '--max-requests-per-second', '500', '--idle-timeout', '30s'], {});
    assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : '');
    const { config } = inv as Extract<typeof inv, { kind: 'agent' }>;
    assert.deepEqual([config.maxConnectionsPerIp, config.maxRequestsPerSecond, config.idleTimeoutMs], [0, 500, 30_000]);
    for (const [raw, flag] of [
      [{ maxConnectionsPerIp: '-1' }, '--max-connections-per-ip'],
      [{ maxConnectionsPerIp: 'lots' }, '--max-connections-per-ip'],
      [{ maxRequestsPerSecond: '1.5' }, '--max-requests-per-second'],
      [{ idleTimeout: '500ms' }, '--idle-timeout'],
      [{ idleTimeout: '10m' }, '--idle-timeout'],
    ] as const) {
      assert.throws(() => buildConfig({ nodeName: 'n', ...raw }, {}), (err: unknown) => err instanceof ConfigError && err.problems.length === 1 && err.problems[0]!.startsWith(flag));
    }
    const help = parseCommandLine(['agent', '--help'], {});
    for (const flag of ['--max-connections-per-ip', '--max-requests-per-second', '--idle-timeout']) assert.ok(help.kind === 'exit' && help.output.includes(flag), flag);
  });
});
