/**
 * The warm path: a GET of the listing or the document from an indexed pod with cached credentials is answered
 * before fastify, over a real socket. It must answer byte for byte, count and log as fastify's path does, and
 * hand everything else (other spellings, bad tokens, other roles, misses, pressure) to fastify.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import type { FastifyInstance } from 'fastify';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { buildApp, type UnderPressureSettings } from '../../src/server/app.ts';
import type { CredentialProvider, Credentials, IdentityLookup, Lookup, RoleIdentity } from '../../src/server/ports.ts';
import { createTokenService, type TokenService } from '../../src/server/tokens.ts';
import type { UpstreamClient } from '../../src/server/upstream.ts';
import { FakeClock } from '../fakes/clock.ts';
import { observed, own, request, type Answer } from './http-support.ts';

// The client connects from 127.0.0.1: that is the pod's IP here.
const IP = '127.0.0.1';
const ROLE: RoleIdentity = { key: 'k-app-a', roleArn: 'arn:aws:iam::123456789012:role/team-a/app-a', roleName: 'app-a', sessionName: 'team-a.app-a' };
const FOUND: Lookup = { kind: 'role', pod: { uid: 'uid-a', ip: IP, namespace: 'team-a', name: 'app-a-1' }, identity: ROLE };
const DOC = '/latest/meta-data/iam/security-credentials/app-a';
const LISTING = '/latest/meta-data/iam/security-credentials/';

class Lookups implements IdentityLookup {
  answer: Lookup = FOUND;
  lookups = 0;
  peeks = 0;
  async lookup(): Promise<Lookup> {
    this.lookups++;
    return this.answer;
  }
  peek(): Lookup | undefined {
    this.peeks++;
    return this.answer;
  }
}

class Creds implements CredentialProvider {
  current: Credentials | undefined;
  gets = 0;
  peeks = 0;
  constructor(clock: FakeClock) {
    this.current = { accessKeyId: 'ASIAWARM000000000001', secretAccessKey: 'warm-secret', sessionToken: 'warm-token', expiration: clock.now() + 3600_000, lastUpdated: clock.now() };
  }
  async get(): Promise<Credentials> {
    this.gets++;
    if (!this.current) throw new Error('AccessDenied');
    return this.current;
  }
  peek(): Credentials | undefined {
    this.peeks++;
    return this.current;
  }
}

interface Fixture {
  app: FastifyInstance;
  port: number;
  lookup: Lookups;
  creds: Creds;
  metrics: Metrics;
  tokens: TokenService;
  logs: Array<Record<string, unknown>>;
}

const open: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (open.length) await open.pop()?.();
});

const upstream: UpstreamClient = {
  request: async () => ({ status: 200, body: Buffer.from('i-0123'), contentType: 'text/plain' }) as never,
  getText: async () => '',
  getJson: async () => ({}),
  close: () => {},
};

async function setup(underPressure?: UnderPressureSettings): Promise<Fixture> {
  const clock = new FakeClock(Date.parse('2026-11-28T07:00:00Z'));
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      cb();
    },
  });
  const lookup = new Lookups();
  const creds = new Creds(clock);
  const metrics = createMetrics();
  const tokens = createTokenService({ clock });
  const app = buildApp({
    lookup,
    credentials: creds,
    upstream,
    tokens,
    metrics,
    logger: pino({ level: 'info' }, sink),
    clock,
    allowRoutes: [],
    denyRoutes: [],
    ...(underPressure ? { underPressure } : {}),
  });
  await app.listen({ host: IP, port: 0 });
  open.push(() => app.close());
  return { app, port: (app.server.address() as AddressInfo).port, lookup, creds, metrics, tokens, logs };
}

function get(port: number, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return request(IP, port, path, { headers });
}

describe('warm path', () => {
  it('answers the document and the listing exactly as the fastify path does, without a lookup', async () => {
    const f = await setup();
    for (const path of [DOC, LISTING]) {
      const warm = await get(f.port, path);
      const slow = await f.app.inject({ method: 'GET', url: path, remoteAddress: IP });
      assert.equal(warm.status, 200);
      assert.equal(warm.body, slow.body, path);
      assert.deepEqual(own(warm.headers), own(slow.headers), path);
    }
    assert.equal(f.lookup.lookups, 2, 'only the two inject() requests went through lookup()');
    assert.equal(f.creds.gets, 1, 'only the injected document request went through get()');
    const doc = JSON.parse((await get(f.port, DOC)).body) as Record<string, string>;
    assert.equal(doc.AccessKeyId, 'ASIAWARM000000000001');
    assert.equal(doc.Expiration, '2026-11-28T08:00:00Z');
    assert.equal(await observed(f.metrics, 'credentials', '200'), 3);
    assert.equal(await observed(f.metrics, 'listing', '200'), 2);
  });

  it('logs "credentials served" at info once per pod and credentials, whichever path served them', async () => {
    const f = await setup();
    await get(f.port, DOC);
    await f.app.inject({ method: 'GET', url: DOC, remoteAddress: IP });
    await get(f.port, DOC);
    const served = () => f.logs.filter((l) => l.msg === 'credentials served' && l.level === 30);
    assert.equal(served().length, 1);
    assert.equal(served()[0]?.accessKeyId, 'ASIAWARM000000000001');
    f.creds.current = { ...f.creds.current!, accessKeyId: 'ASIAWARM000000000002' };
    assert.equal(JSON.parse((await get(f.port, DOC)).body).AccessKeyId, 'ASIAWARM000000000002', 'new credentials, new document');
    assert.equal(served().length, 2);
    assert.ok(!JSON.stringify(f.logs).includes('warm-secret'));
  });

  it('checks tokens: a valid one is served warm, a bad one gets 401 from fastify', async () => {
    const f = await setup();
    const token = f.tokens.mint(IP, 'uid-a', 60);
    const ok = await get(f.port, DOC, { 'x-aws-ec2-metadata-token': token });
    assert.equal(ok.status, 200);
    assert.equal(f.lookup.lookups, 0);
    const otherPod = f.tokens.mint(IP, 'uid-other', 60);
    assert.equal((await get(f.port, DOC, { 'x-aws-ec2-metadata-token': otherPod })).status, 401);
    assert.equal((await get(f.port, DOC, { 'x-aws-ec2-metadata-token': 'garbage' })).status, 401);
  });

  it('leaves other roles, other spellings, misses and refusals to fastify', async () => {
    const f = await setup();
    assert.equal((await get(f.port, `${LISTING}admin`)).status, 404, 'another role');
    assert.equal((await get(f.port, `${DOC}/`)).status, 200, 'a trailing slash: normalised by the full path');
    assert.equal(f.lookup.lookups, 2);
    const spelled = await get(f.port, '/latest/meta-data/iam/security-credentials/%61pp-a');
    assert.equal(spelled.status, 200, 'percent-encoded role name: normalised by the full path');
    assert.equal(f.lookup.lookups, 3);

    f.creds.current = undefined;
    assert.equal((await get(f.port, DOC)).status, 503, 'no cached credentials: get() decides');
    assert.equal(f.creds.gets, 3, "the two normalised spellings and this miss");

    f.lookup.answer = { kind: 'no-role', pod: { uid: 'uid-a', ip: IP, namespace: 'team-a', name: 'app-a-1' } };
    assert.equal((await get(f.port, LISTING)).status, 404);
    f.lookup.answer = { kind: 'ambiguous' };
    assert.equal((await get(f.port, LISTING)).status, 403, 'no pod of this node: refused');
    assert.equal(f.lookup.lookups, 6);
  });

  it('answers HEAD and other methods through fastify', async () => {
    const f = await setup();
    const head = await f.app.inject({ method: 'HEAD', url: DOC, remoteAddress: IP });
    assert.equal(head.statusCode, 200);
    const res = await new Promise<number>((resolve, reject) => {
      http.request({ host: IP, port: f.port, path: DOC, method: 'POST', agent: false }, (r) => {
        r.resume();
        resolve(r.statusCode ?? 0);
      }).on('error', reject).end();
    });
    assert.equal(res, 405);
  });

  it('answers 503 with Retry-After under pressure, on the warm path too', async () => {
    const f = await setup({ healthCheck: async () => false, healthCheckInterval: 60_000, retryAfter: 3 });
    const res = await get(f.port, DOC);
    assert.equal(res.status, 503);
    assert.equal(res.headers['retry-after'], '3');
    assert.equal(f.creds.peeks, 0);
  });
});
