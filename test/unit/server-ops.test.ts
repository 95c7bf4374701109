import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { createMetrics } from '../../src/metrics.ts';
import { buildOpsApp, type Readiness } from '../../src/server/ops.ts';

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
});
