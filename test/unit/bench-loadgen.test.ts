import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { fetchOnce, generate } from '../../bench/loadgen.ts';
import { headline, targets, type Sections } from '../../bench/report.ts';
import type { WarmRun } from '../../bench/warm.ts';

describe('bench load generator', () => {
  let server: http.Server;
  let port = 0;
  const seen: { method: string; url: string; token?: string; close: boolean }[] = [];
  before(async () => {
    server = http.createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', token: req.headers['x-aws-ec2-metadata-token'] as string | undefined, close: req.headers.connection === 'close' });
      const send = (status: number, body: string, headers: Record<string, string> = {}) =>
        res.writeHead(status, { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(body)), ...headers }).end(body);
      if (req.method === 'PUT') return void send(200, 'TOKEN-1');
      if (req.url?.endsWith('/role-a')) return void send(200, '{"Code":"Success"}', { server: 'EC2ws' });
      send(404, '<html>404</html>');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  it('runs keep-alive, new-connection and token loops, counts statuses inside the window only', async () => {
    const now = Date.now();
    const r = await generate({
      host: '127.0.0.1',
      port,
      sources: [{ ip: '127.0.0.1', role: 'role-a' }, { ip: '127.0.0.1', role: 'role-b' }],
      slots: [{ kind: 'ka', source: 0 }, { kind: 'new', source: 0 }, { kind: 'token', source: 0 }, { kind: 'ka', source: 1, pauseMs: 20 }],
      measureFrom: now + 100,
      measureTo: now + 500,
    });
    assert.ok(r.byKind.ka! > 10 && r.byKind.new! > 5 && r.byKind.token! > 10, JSON.stringify(r.byKind));
    assert.ok(r.errors.status['404']! > 0, 'role-b is answered 404 and counted as an error');
    assert.equal(r.ok + r.errors.status['404']!, r.requests);
    assert.equal(r.errors.protocol, 0);
    assert.equal(r.latencyUs.count, r.requests);
    assert.ok(r.windowMs >= 350 && r.windowMs < 1_000, String(r.windowMs));
    assert.ok(seen.some((s) => s.method === 'GET' && s.token === 'TOKEN-1'), 'token loops send the token they got');
    assert.ok(seen.some((s) => s.close) && seen.some((s) => !s.close));
    assert.ok(r.connections > r.byKind.new!, 'one connection per new-connection request');
  });

  it('fetches one raw answer', async () => {
    const r = await fetchOnce({ host: '127.0.0.1', port, ip: '127.0.0.1', path: '/x/role-a' });
    assert.equal(r.status, 200);
    assert.match(r.head, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(r.head, /\r\nserver: EC2ws/i);
    assert.equal(Buffer.from(r.body, 'base64').toString(), '{"Code":"Success"}');
  });
});

describe('bench report', () => {
  const run = (server: 'agent' | 'baseline', connections: number, rps: number, p99: number, cpu: number): WarmRun => ({
    server, mode: 'keep-alive', connections, rps, p99_ms: p99, server_cpu_us_per_req: cpu,
    requests: 1, ok: 1, errors: 0, errorDetail: { status: {}, net: {}, protocol: 0 }, p50_ms: 0, p999_ms: 0, mean_ms: 0, max_ms: 0, byKind: {}, windowS: 1, generators: [],
  });

  it('judges the warm targets at 64 connections against the baseline of the same run', () => {
    const s: Sections = { warm: { document_bytes: 1, document_headers: [], runs: [run('agent', 1, 5000, 0.4, 50), run('agent', 64, 8000, 3, 40), run('baseline', 64, 10000, 2.5, 30)] } };
    const h = headline(s).warm as Record<string, number>;
    assert.equal(h.ratio, 0.8);
    assert.equal(h.agent_rps, 8000);
    assert.equal(h.baseline_p99_ms, 2.5);
    const t = Object.fromEntries(targets(s).map((x) => [x.what.split(',')[0], x.pass]));
    assert.equal(t['warm req/s vs baseline'], true);
    assert.equal(t['warm p99 vs baseline p99'], true);
    assert.equal(t['server CPU per request vs baseline'], true);
    assert.equal(t['warm p99'], true);
    s.warm!.runs[1] = run('agent', 64, 7000, 4, 50);
    const missed = targets(s).filter((x) => x.pass === false).map((x) => x.what.split(',')[0]);
    assert.deepEqual(missed, ['warm req/s vs baseline', 'warm p99 vs baseline p99', 'server CPU per request vs baseline']);
  });
});
