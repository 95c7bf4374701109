/**
 * listenOn: the metadata app on several addresses (the host's IPv4 and IPv6), over real loopback sockets. Every
 * address answers exactly as app.server does (warm path, fastify, malformed requests), the peer address is the
 * client's own (IPv6 as it is, IPv4-mapped reduced to IPv4), and closing the app closes them all.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterEach, describe, it } from 'node:test';
import Fastify from 'fastify';
import { pino } from 'pino';
import { createMetrics } from '../../src/metrics.ts';
import { buildApp, listenOn } from '../../src/server/app.ts';
import type { CredentialProvider, Credentials, IdentityLookup, Lookup, RoleIdentity } from '../../src/server/ports.ts';
import { createTokenService } from '../../src/server/tokens.ts';
import type { UpstreamClient } from '../../src/server/upstream.ts';
import { FakeClock } from '../fakes/clock.ts';
import { own, request } from './http-support.ts';

/** ::1 on this machine's loopback; under CI its absence is a failure, elsewhere a skip. */
async function hasIpv6Loopback(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '::1', port: 0 }, () => s.close(() => resolve(true)));
  });
}
const skipV6 = !(await hasIpv6Loopback()) && process.env.CI !== 'true' ? 'no IPv6 loopback (::1) here' : false;

const role = (name: string): RoleIdentity => ({ key: `k-${name}`, roleArn: `arn:aws:iam::123456789012:role/${name}`, roleName: name, sessionName: `s.${name}` });
const ANSWERS: Record<string, Lookup> = {
  '127.0.0.1': { kind: 'role', pod: { uid: 'uid-v4', ip: '127.0.0.1', namespace: 'ns', name: 'pod-v4' }, identity: role('role-v4') },
  '::1': { kind: 'role', pod: { uid: 'uid-v6', ip: '127.0.0.1', namespace: 'ns', name: 'pod-v6' }, identity: role('role-v6') },
};
const DOC = (name: string) => `/latest/meta-data/iam/security-credentials/${name}`;

class Lookups implements IdentityLookup {
  readonly asked: string[] = [];
  readonly peeked: string[] = [];
  async lookup(ip: string): Promise<Lookup> {
    this.asked.push(ip);
    return ANSWERS[ip] ?? { kind: 'unknown' };
  }
  peek(ip: string): Lookup | undefined {
    this.peeked.push(ip);
    return ANSWERS[ip];
  }
}

function setup() {
  const clock = new FakeClock();
  const creds: Credentials = { accessKeyId: 'ASIALISTEN0000000001', secretAccessKey: 's', sessionToken: 't', expiration: clock.now() + 3600_000, lastUpdated: clock.now() };
  const credentials: CredentialProvider = { get: async () => creds, peek: () => creds };
  const upstreamCalls: string[] = [];
  const upstream: UpstreamClient = {
    request: async (_method: string, path: string) => {
      upstreamCalls.push(path);
      return { status: 200, body: Buffer.from('i-0123'), contentType: 'text/plain' } as never;
    },
    getText: async () => '',
    getJson: async () => ({}),
    close: () => {},
  };
  const lookup = new Lookups();
  const app = buildApp({
    lookup,
    credentials,
    upstream,
    tokens: createTokenService({ clock }),
    metrics: createMetrics(),
    logger: pino({ level: 'silent' }),
    clock,
    allowRoutes: [],
    denyRoutes: [],
  });
  opened.push(() => app.close());
  return { app, lookup, upstreamCalls };
}

const opened: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (opened.length) await opened.pop()?.();
});

/** Raw bytes to host:port; resolves with everything the server sent before closing. */
function raw(host: string, port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host, () => socket.write(bytes));
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString()));
    socket.on('error', reject);
    socket.on('close', () => resolve(data));
  });
}

describe('listenOn', () => {
  it('listens on IPv4 and IPv6 on one port; each peer is its own pod, and both answer alike', { skip: skipV6 }, async () => {
    const { app, lookup, upstreamCalls } = setup();
    await listenOn(app, ['127.0.0.1', '[::1]', '127.0.0.1'], 0);
    const port = (app.server.address() as AddressInfo).port;

    // The warm path on each address, with each address's own pod.
    const v4 = await request('127.0.0.1', port, DOC('role-v4'));
    const v6 = await request('::1', port, DOC('role-v6'));
    assert.equal(v4.status, 200);
    assert.equal(v6.status, 200);
    assert.deepEqual(lookup.peeked, ['127.0.0.1', '::1'], 'the extra server runs the same warm path');
    assert.deepEqual(lookup.asked, [], 'both answered warm');
    // Byte for byte what fastify answers for the same pod.
    const slow = await app.inject({ method: 'GET', url: DOC('role-v6'), remoteAddress: '::1' });
    assert.equal(v6.body, slow.body);
    assert.deepEqual(own(v6.headers), own(slow.headers as http.IncomingHttpHeaders));
    // Another pod's role on the IPv6 address: fastify, which looked ::1 up.
    assert.equal((await request('::1', port, DOC('role-v4'))).status, 404);
    // Tokens and pass-through on the IPv6 address.
    const token = await request('::1', port, '/latest/api/token', { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } });
    assert.equal(token.status, 200);
    const id = await request('::1', port, '/latest/meta-data/instance-id', { headers: { 'x-aws-ec2-metadata-token': token.body } });
    assert.deepEqual([id.status, id.body], [200, 'i-0123']);
    assert.equal((await request('127.0.0.1', port, '/latest/meta-data/instance-id', { headers: { 'x-aws-ec2-metadata-token': token.body } })).status, 401, 'a token of the IPv6 peer is not the IPv4 one');
    assert.deepEqual(lookup.asked, ['::1', '::1', '::1', '::1', '127.0.0.1']);
    assert.deepEqual(upstreamCalls, ['/latest/meta-data/instance-id']);
    // A malformed request on the extra server gets the same terse 400 as on the first.
    for (const host of ['127.0.0.1', '::1']) {
      const answer = await raw(host, port, 'GARBAGE\r\n\r\n');
      assert.match(answer, /^HTTP\/1\.1 400 Bad Request\r\nServer: EC2ws\r\n/, host);
    }
  });

  it('reduces an IPv4-mapped peer of a dual-stack socket to its IPv4 address', { skip: skipV6 }, async () => {
    const { app, lookup } = setup();
    await listenOn(app, ['::'], 0);
    const port = (app.server.address() as AddressInfo).port;
    const res = await request('127.0.0.1', port, '/latest/meta-data/iam/security-credentials/');
    assert.deepEqual([res.status, res.body], [200, 'role-v4']);
    assert.deepEqual(lookup.peeked, ['127.0.0.1']);
    const other = await request('127.0.0.1', port, '/latest/meta-data/iam/info');
    assert.equal(other.status, 200);
    assert.deepEqual(lookup.asked, ['127.0.0.1']);
  });

  it('closing the app closes every address, idle keep-alive connections included', { skip: skipV6 }, async () => {
    const { app } = setup();
    const close = await listenOn(app, ['127.0.0.1', '::1'], 0);
    const port = (app.server.address() as AddressInfo).port;
    const agent = new http.Agent({ keepAlive: true });
    assert.equal((await request('::1', port, DOC('role-v6'), { agent })).status, 200);
    assert.equal((await request('127.0.0.1', port, DOC('role-v4'), { agent })).status, 200);
    await close();
    agent.destroy();
    for (const host of ['127.0.0.1', '::1']) {
      await assert.rejects(request(host, port, DOC('role-v4')), { code: 'ECONNREFUSED' }, host);
    }
  });

  it('fails naming the address it cannot listen on, and leaves nothing listening', async () => {
    const { app } = setup();
    // 192.0.2.1 (TEST-NET-1, RFC 5737) is on no interface here.
    await assert.rejects(listenOn(app, ['127.0.0.1', '192.0.2.1'], 0), /metadata server cannot listen on 192\.0\.2\.1:\d+: .*EADDRNOTAVAIL/);
    assert.equal(app.server.listening, false);
    const busy = setup();
    await listenOn(busy.app, ['127.0.0.1'], 0);
    const port = (busy.app.server.address() as AddressInfo).port;
    const { app: second } = setup();
    await assert.rejects(listenOn(second, ['127.0.0.1'], port), /metadata server cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  });

  it('refuses an app buildApp did not make, and an empty list of addresses', async () => {
    const plain = Fastify();
    opened.push(() => plain.close());
    await assert.rejects(listenOn(plain, ['127.0.0.1'], 0), /not a metadata app/);
    const { app } = setup();
    await assert.rejects(listenOn(app, [], 0), /no address/);
  });
});
