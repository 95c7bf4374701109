import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { createMetrics } from '../../src/metrics.ts';
import { buildOpsApp, isLoopback, type Readiness } from '../../src/server/ops.ts';

describe('ops endpoint', () => {
  it('serves metrics, liveness and readiness', async (t) => {
    const metrics = createMetrics();
    metrics.requestDuration.observe({ handler: 'credentials', code: '200' }, 0.002);
    let state: Readiness = { ready: false, checks: { watchSynced: true, rulesInstalled: false } };
    const app = buildOpsApp({ metrics, readiness: () => state, logger: pino({ level: 'silent' }) });
    t.after(() => app.close());

    const m = await app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(m.statusCode, 200);
    assert.match(String(m.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    assert.match(m.body, /kiam_metadata_request_duration_seconds_count\{handler="credentials",code="200"\} 1/);

    const h = await app.inject({ method: 'GET', url: '/healthz' });
    assert.equal(h.statusCode, 200);

    let r = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(r.statusCode, 503);
    assert.deepEqual(JSON.parse(r.body), { ready: false, checks: { watchSynced: true, rulesInstalled: false } });

    state = { ready: true, checks: { watchSynced: true, rulesInstalled: true } };
    r = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(r.statusCode, 200);
    assert.deepEqual(JSON.parse(r.body), state);
  });

  it('answers 503 when the readiness check throws', async (t) => {
    const app = buildOpsApp({
      metrics: createMetrics(),
      readiness: () => {
        throw new Error('boom');
      },
      logger: pino({ level: 'silent' }),
    });
    t.after(() => app.close());
    const r = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(r.statusCode, 503);
    assert.deepEqual(JSON.parse(r.body), { ready: false, checks: {} });
  });

  describe('/debug/state', () => {
    const state = { schema: 1, pods: [{ namespace: 'team-a', name: 'a1', ip: '10.0.0.2', answer: 'role', roleArn: 'arn:aws:iam::123456789012:role/app' }] };
    const build = (debugState?: () => unknown) =>
      buildOpsApp({ metrics: createMetrics(), readiness: () => ({ ready: true, checks: {} }), logger: pino({ level: 'silent' }), ...(debugState ? { debugState } : {}) });

    it('answers loopback clients with the state as JSON, never cached', async (t) => {
      let calls = 0;
      const app = build(() => (calls++, state));
      t.after(() => app.close());
      for (const remoteAddress of ['127.0.0.1', '127.0.0.53', '::1', '::ffff:127.0.0.1']) {
        const r = await app.inject({ method: 'GET', url: '/debug/state', remoteAddress });
        assert.equal(r.statusCode, 200, remoteAddress);
        assert.match(String(r.headers['content-type']), /^application\/json/);
        assert.equal(r.headers['cache-control'], 'no-store');
        assert.deepEqual(JSON.parse(r.body), state);
      }
      assert.equal(calls, 4, 'built afresh for every request');
    });

    it('refuses every other client with a terse 403 (pods reach the metrics port on the node IP), headers notwithstanding', async (t) => {
      let calls = 0;
      const app = build(() => (calls++, state));
      t.after(() => app.close());
      for (const remoteAddress of ['10.77.1.2', '10.0.1.23', '::ffff:10.77.1.2', 'fd00::1', '128.0.0.1']) {
        const r = await app.inject({ method: 'GET', url: '/debug/state', remoteAddress, headers: { 'x-forwarded-for': '127.0.0.1', 'x-real-ip': '127.0.0.1' } });
        assert.equal(r.statusCode, 403, remoteAddress);
        assert.equal(r.body, 'forbidden\n');
        assert.doesNotMatch(r.body, /team-a|arn:/);
      }
      const other = await app.inject({ method: 'GET', url: '/debug/anything', remoteAddress: '10.77.1.2' });
      assert.notEqual(other.statusCode, 200);
      assert.equal(calls, 0, 'the state is never built for them');
      // The rest of the ops port stays open to everyone (Prometheus, kubelet probes).
      for (const url of ['/metrics', '/healthz', '/readyz']) {
        assert.equal((await app.inject({ method: 'GET', url, remoteAddress: '10.77.1.2' })).statusCode, 200, url);
      }
    });

    it('404 without a state source, 500 (logged, no detail) when building it throws', async (t) => {
      const none = build();
      t.after(() => none.close());
      assert.equal((await none.inject({ method: 'GET', url: '/debug/state' })).statusCode, 404);
      const broken = build(() => {
        throw new Error('secret detail');
      });
      t.after(() => broken.close());
      const r = await broken.inject({ method: 'GET', url: '/debug/state' });
      assert.equal(r.statusCode, 500);
      assert.doesNotMatch(r.body, /secret detail/);
    });

    it('isLoopback', () => {
      const cases: Array<[string | undefined, boolean]> = [
        ['127.0.0.1', true], ['127.255.255.254', true], ['::1', true], ['::ffff:127.0.0.1', true],
        ['10.0.0.1', false], ['::ffff:10.0.0.1', false], ['1127.0.0.1', false], ['127.0.0.1.evil', false], ['', false], [undefined, false],
      ];
      for (const [address, want] of cases) assert.equal(isLoopback(address), want, String(address));
    });
  });
});

