import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';
import { Cluster } from '../../bench/cluster.ts';
import type { FirstVariant } from '../../bench/first.ts';
import { AGENT_TOKEN_ARGS, authorization, BENCH_PATHS, documentRole, pathLabel, TOKEN_AUDIENCE } from '../../bench/lib/token-path.ts';
import { generate, prime } from '../../bench/loadgen.ts';
import { pin } from '../../bench/node.ts';
import { comparePaths, headline, markdown, targets, tokenReviews, type Sections } from '../../bench/report.ts';
import type { WarmRun } from '../../bench/warm.ts';
import { targetSources, usedSources, splitSlots, type Generator } from '../../bench/world.ts';

describe('bench pinning', () => {
  it('prefixes argv with taskset only when a CPU list is given', () => {
    assert.deepEqual(pin(undefined, ['node', 'x.mjs']), ['node', 'x.mjs']);
    assert.deepEqual(pin('', ['node', 'x.mjs']), ['node', 'x.mjs'], 'an empty variable pins nothing');
    assert.deepEqual(pin('1', ['node', 'x.mjs', '--a']), ['taskset', '-c', '1', 'node', 'x.mjs', '--a']);
    assert.deepEqual(pin('0,2-3', ['node']), ['taskset', '-c', '0,2-3', 'node']);
  });
});

describe('bench token path helpers', () => {
  it('names the token path after the interception paths and turns the listener on in the agent', () => {
    assert.deepEqual(BENCH_PATHS, ['iptables', 'ebpf', 'auto', 'token']);
    assert.equal(pathLabel('token'), 'token');
    assert.equal(pathLabel('iptables'), 'DNAT');
    assert.deepEqual(AGENT_TOKEN_ARGS, ['--container-credentials', '--container-credentials-address', '169.254.170.23', '--token-audience', 'kiam']);
    assert.deepEqual(authorization('abc.def.ghi'), { Authorization: 'abc.def.ghi' }, 'the raw token, no Bearer');
  });

  it("reads the role out of the fake STS's session token, and nothing out of anything else", () => {
    const arn = 'arn:aws:iam::123456789012:role/role-07';
    const body = JSON.stringify({ AccessKeyId: 'ASIAFAKE000000000001', Token: `fakeSessionToken/1/${Buffer.from(`${arn}|first.first-3`).toString('base64')}` });
    assert.deepEqual(documentRole(body), { roleArn: arn, sessionName: 'first.first-3' });
    assert.equal(documentRole('{"Token":"FQoGZXIvYXdzE"}'), undefined);
    assert.equal(documentRole('not json'), undefined);
    assert.equal(documentRole('null'), undefined);
  });

  it('gives each source its pod token and lists the sources a split uses', () => {
    const sources = [{ ip: '10.79.1.1', role: 'role-00', name: 'app-0' }, { ip: '10.79.1.2', role: 'role-01', name: 'app-1' }];
    assert.deepEqual(targetSources(sources, { host: '169.254.169.254', port: 80, protocol: 'imds' }), [{ ip: '10.79.1.1', role: 'role-00' }, { ip: '10.79.1.2', role: 'role-01' }], 'the IMDS config is what it was');
    assert.deepEqual(targetSources(sources, { host: '169.254.170.23', port: 80, protocol: 'container-credentials', tokens: new Map([['app-1', 'T1']]) }), [
      { ip: '10.79.1.1', role: 'role-00' },
      { ip: '10.79.1.2', role: 'role-01', token: 'T1' },
    ]);
    const gen = (g: number): Generator => ({ pod: {} as Generator['pod'], sources: Array.from({ length: 32 }, (_, i) => ({ ip: `10.79.${g}.${i + 1}`, role: 'r', name: `app-${(g - 1) * 32 + i}` })) });
    const world = { gens: [gen(1), gen(2)] as [Generator, Generator] };
    assert.deepEqual(usedSources(world, splitSlots(1, 'ka')).map((s) => s.name), ['app-0']);
    assert.deepEqual(usedSources(world, splitSlots(3, 'ka')).map((s) => s.name), ['app-0', 'app-1', 'app-32']);
    assert.equal(usedSources(world, splitSlots(64, 'new')).length, 64);
  });
});

describe('bench load generator, container-credentials protocol', () => {
  let server: http.Server;
  let port = 0;
  const seen: { method: string; url: string; auth?: string; host?: string }[] = [];
  let unavailable = 0;
  before(async () => {
    server = http.createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', auth: req.headers.authorization, host: req.headers.host });
      const send = (status: number, body: string) => res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }).end(body);
      if (req.url !== '/v1/credentials') return void send(404, '{"message":"not found"}');
      if (req.headers.authorization === 'SLOW' && unavailable-- > 0) return void send(503, '{"message":"unavailable"}');
      if (req.headers.authorization === 'T-a' || req.headers.authorization === 'SLOW') return void send(200, '{"AccessKeyId":"ASIA"}');
      send(401, '{"message":"unauthenticated"}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  it('GETs /v1/credentials with each source pod token, keep-alive and new connections', async () => {
    seen.length = 0;
    const now = Date.now();
    const r = await generate({
      host: '127.0.0.1',
      port,
      protocol: 'container-credentials',
      sources: [{ ip: '127.0.0.1', role: 'role-a', token: 'T-a' }, { ip: '127.0.0.1', role: 'role-b', token: 'T-b' }],
      slots: [{ kind: 'ka', source: 0 }, { kind: 'new', source: 0 }, { kind: 'ka', source: 1, pauseMs: 20 }],
      measureFrom: now + 100,
      measureTo: now + 400,
    });
    assert.ok(r.byKind.ka! > 10 && r.byKind.new! > 5, JSON.stringify(r.byKind));
    assert.ok(r.errors.status['401']! > 0, "the other pod's token is refused and counted as an error");
    assert.equal(r.ok + r.errors.status['401']!, r.requests);
    assert.ok(seen.every((s) => s.method === 'GET' && s.url === '/v1/credentials' && s.host === '169.254.170.23'), JSON.stringify(seen.slice(0, 3)));
    assert.deepEqual([...new Set(seen.map((s) => s.auth))].sort(), ['T-a', 'T-b']);
  });

  it('refuses a token path source without a token, and the IMDSv2 slot kind', async () => {
    const base = { host: '127.0.0.1', port, protocol: 'container-credentials' as const, measureFrom: Date.now(), measureTo: Date.now() + 50 };
    await assert.rejects(generate({ ...base, sources: [{ ip: '127.0.0.1', role: 'r' }], slots: [{ kind: 'ka', source: 0 }] }), /need a token/);
    await assert.rejects(generate({ ...base, sources: [{ ip: '127.0.0.1', role: 'r', token: 't' }], slots: [{ kind: 'token', source: 0 }] }), /no container-credentials form/);
  });

  it('primes: asks again after a 503 or a refused connection, and gives up at the deadline', async () => {
    unavailable = 2;
    const req = (token: string, p = port) => ({ host: '127.0.0.1', port: p, ip: '127.0.0.1', path: '/v1/credentials', headers: authorization(token), hostHeader: '169.254.170.23' });
    assert.deepEqual(await prime({ requests: [req('SLOW'), req('T-a'), req('T-b')], retryMs: 10 }), [200, 200, 401], '4xx is final, not retried');
    assert.equal(unavailable, -1, 'two 503s, then the 200');
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const dead = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const t0 = Date.now();
    assert.deepEqual(await prime({ requests: [req('T-a', dead)], retryMs: 20, deadlineMs: 150 }), [0]);
    assert.ok(Date.now() - t0 >= 150);
  });
});

describe('bench cluster control: tokens', () => {
  let kube: FakeKubeApiServer;
  let control: http.Server;
  let dir = '';
  const call = <T>(method: string, path: string, body?: unknown) =>
    new Promise<{ status: number; json: T }>((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request({ socketPath: join(dir, 'c.sock'), method, path, headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as T }));
      });
      req.on('error', reject);
      req.end(payload);
    });
  before(async () => {
    kube = await FakeKubeApiServer.start();
    const cluster = new Cluster(kube);
    dir = mkdtempSync(join(tmpdir(), 'kiam-bench-token-'));
    control = http.createServer((req, res) => {
      cluster.handle(req, res).catch((err: unknown) => res.writeHead(400).end(JSON.stringify({ error: String(err) })));
    });
    await new Promise<void>((r) => control.listen(join(dir, 'c.sock'), r));
  });
  after(async () => {
    await new Promise<void>((r) => control.close(() => r()));
    await kube.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('issues tokens bound to the pods, which a TokenReview then authenticates, and counts the reviews', async () => {
    await call('POST', '/namespaces', [{ name: 'bench' }]);
    const created = await call<{ uids: string[] }>('POST', '/pods', [{ namespace: 'bench', name: 'app-0', ip: '10.79.1.1', node: 'node-1', role: 'role-00' }]);
    assert.equal(created.status, 200);
    const issued = await call<{ tokens: string[] }>('POST', '/tokens', [{ namespace: 'bench', pod: 'app-0', audience: TOKEN_AUDIENCE, expirationSeconds: 86_400 }]);
    assert.equal(issued.status, 200);
    const [token] = issued.json.tokens;
    const claims = JSON.parse(Buffer.from(token!.split('.')[1]!, 'base64url').toString()) as { aud: string[]; exp: number; iat: number; 'kubernetes.io': { pod: { name: string; uid: string } } };
    assert.deepEqual(claims.aud, ['kiam']);
    assert.equal(claims.exp - claims.iat, 86_400);
    assert.deepEqual(claims['kubernetes.io'].pod, { name: 'app-0', uid: created.json.uids[0] });
    assert.equal(kube.reviewToken(token!, ['kiam']).user?.extra?.['authentication.kubernetes.io/pod-name']?.[0], 'app-0');

    assert.deepEqual((await call<{ count: number }>('GET', '/token-reviews')).json, { count: 0 });
    const review = await new Promise<number>((resolve, reject) => {
      const body = JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: ['kiam'] } });
      const req = https.request(`${kube.url}/apis/authentication.k8s.io/v1/tokenreviews`, { method: 'POST', ca: kube.caPem, headers: { authorization: `Bearer ${kube.token}`, 'content-type': 'application/json' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(body);
    });
    assert.equal(review, 201, 'created, as the API server answers a TokenReview');
    assert.deepEqual((await call<{ count: number }>('GET', '/token-reviews')).json, { count: 1 });
    // A pod that does not exist gets no token.
    assert.equal((await call('POST', '/tokens', [{ namespace: 'bench', pod: 'nope' }])).status, 400);
  });
});

describe('bench report with the token path', () => {
  const run = (path: WarmRun['path'], server: WarmRun['server'], mode: WarmRun['mode'], connections: number, rps: number, p99: number, cpu: number, extra: Partial<WarmRun> = {}): WarmRun => ({
    ...(path ? { path } : {}), server, mode, connections, rps, p99_ms: p99, server_cpu_us_per_req: cpu,
    requests: rps * 10, ok: rps * 10, errors: 0, errorDetail: { status: {}, net: {}, protocol: 0 }, p50_ms: 0, p999_ms: 0, mean_ms: 0, max_ms: 0, byKind: {}, windowS: 10,
    generators: [{ slots: 1, requests: rps * 5, cpu_pct: 50, late_ms: -1000, connections: 1 }],
    ...extra,
  });
  const sections = (reviews = 0): Sections => ({
    warm: {
      document_bytes: 332,
      document_headers: [],
      token_document_bytes: 301,
      token_document_headers: [],
      runs: [
        run('iptables', 'agent', 'keep-alive', 1, 8000, 0.3, 80),
        run('iptables', 'agent', 'keep-alive', 64, 20000, 5, 40, { conntrack_entries: 64 }),
        run('iptables', 'baseline', 'keep-alive', 64, 25000, 5, 30),
        run('token', 'agent', 'keep-alive', 1, 9000, 0.25, 75, { token_reviews: 0 }),
        run('token', 'agent', 'keep-alive', 64, 22000, 4, 38, { token_reviews: reviews, conntrack_entries: 0 }),
        run('token', 'baseline', 'keep-alive', 64, 26000, 4, 29),
      ],
    },
    first: {
      sts_delay_ms: 500,
      variants: (['iptables', 'token'] as const).flatMap((path): FirstVariant[] => [
        { path, delay_ms: 1000, pods: 10, ok: 10, p50_ms: 6, p99_ms: path === 'token' ? 9 : 16, max_ms: 16, samples: [] },
        { path, delay_ms: 0, pods: 10, ok: 10, p50_ms: 505, p99_ms: 512, max_ms: 512, samples: [] },
      ]),
    },
  });
  const meta = { date: 'd', quick: true, intercept: ['iptables'], token: true, pinned: { agent: '1', load: '0' }, machine: { cpus: 2, cpu_model: 'x', node: '20', kernel: 'k', commit: 'c', dirty_files: 0, loadavg_start: [0, 0, 0] }, agent_log_level: 'info', command: 'c' };

  it('puts the token path in the headline and the targets, TokenReviews included', () => {
    const s = sections();
    const h = headline(s);
    assert.equal((h.warm_token as Record<string, number>).agent_rps, 22000);
    assert.equal((h.warm_token as Record<string, number>).baseline_rps, 26000, 'against its own baseline');
    assert.equal((h.warm_token as Record<string, number>).token_reviews, 0);
    assert.equal((h.warm as Record<string, unknown>).token_reviews, undefined);
    assert.deepEqual(h.first_credential_token, { p50_ms: 6, p99_ms: 9, ok: 10, pods: 10 });
    const t = Object.fromEntries(targets(s).map((x) => [x.what, x.pass]));
    assert.equal(t['warm req/s vs baseline, 64 conn keep-alive, token'], true);
    assert.equal(t['warm p99, 1 connection keep-alive, token'], true);
    assert.equal(t["new pod's first credential, request after 1 s, p99, token"], true);
    assert.equal(t['warm, token: TokenReviews during the runs (every token reviewed once before)'], true);
    assert.equal(tokenReviews(sections(3).warm!), 3);
    assert.equal(targets(sections(3)).find((x) => x.what.startsWith('warm, token: TokenReviews'))!.pass, false, 'a review during a run is a cache miss');
    assert.equal(tokenReviews({ document_bytes: 1, document_headers: [], runs: [run('iptables', 'agent', 'keep-alive', 1, 1, 1, 1)] }), null);
  });

  it('compares the token path with the DNAT, variant by variant', () => {
    const rows = comparePaths(sections().warm!, 'token');
    assert.deepEqual(rows.map((r) => `${r.mode}/${r.connections}/${r.server}`), ['keep-alive/1/agent', 'keep-alive/64/agent', 'keep-alive/64/baseline']);
    assert.equal(rows[1]!.rps_ratio, 1.1);
  });

  it('prints token rows in the same tables, and says what the token path is', () => {
    const md = markdown(sections(), meta);
    assert.match(md, /## 1\. Warm credential requests \(through the DNAT \/ token,/);
    assert.match(md, /\| keep-alive \| 64 \| token \| agent \| 22000 \| 0\.85 \|/);
    assert.match(md, /its document: 301 bytes/);
    assert.match(md, /TokenReviews during the runs: 0\)/);
    assert.match(md, /### The token path against the DNAT/);
    assert.match(md, /\| keep-alive \| 64 \| agent \| 20000 → 22000 \| 1\.10 \|.* \| 64 → 0 \|\n/);
    assert.match(md, /\| token \| 1000 ms after the pod appeared \| 10 \| 10 \| 6\.0 \| 9\.0 \|/);
    assert.match(md, /token path: the pod created, a token issued for it/);
    assert.match(md, /token path: 169\.254\.170\.23:80 by service-account token/);
    assert.match(md, /pinned: agent and baselines on CPUs 1, load generators on CPUs 0/);
    const plain = markdown({ warm: { ...sections().warm!, runs: sections().warm!.runs.filter((r) => r.path !== 'token') } }, { ...meta, token: false, pinned: undefined });
    assert.doesNotMatch(plain, /token/i);
  });
});
