/**
 * STS health as an operator sees it: the credential cache during an outage and a refusal, read through
 * /debug/state (the ops app), `kiam doctor`'s rows and the metrics text. Fake clock, scripted STS.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { StsError, type AssumeRoleRequest } from '../../src/cache/sts.ts';
import { buildConfig } from '../../src/config.ts';
import { agentRows, identityRow, stsRow } from '../../src/doctor/checks.ts';
import { collectDebugState, type DebugState } from '../../src/doctor/state.ts';
import { createMetrics } from '../../src/metrics.ts';
import { buildOpsApp } from '../../src/server/ops.ts';
import { FakeClock } from '../fakes/clock.ts';
import { ScriptedSts } from '../fakes/sts.ts';

const MIN = 60_000;
const BASE = 'arn:aws:iam::123456789012:role/';

function world() {
  const clock = new FakeClock();
  let outage = false;
  const sts = new ScriptedSts((req: AssumeRoleRequest, n: number) => {
    if (req.roleArn.endsWith('/denied')) return new StsError('AccessDenied', 'not authorized to perform: sts:AssumeRole', false, 403);
    if (outage) return new StsError('ServiceUnavailable', 'Service unavailable', true, 503);
    return { accessKeyId: `ASIATEST${String(n).padStart(12, '0')}`, secretAccessKey: `secret-${n}`, sessionToken: `token-${n}`, expiration: clock.now() + req.durationSeconds * 1000 };
  });
  const metrics = createMetrics();
  const cache = new CredentialCache({ sts, clock, metrics, logger: pino({ level: 'silent' }), sessionDurationSec: 3600, stsTimeoutMs: 5000, random: () => 0 });
  const config = buildConfig({ nodeName: 'node-1', roleBaseArn: BASE }, {});
  const state = () =>
    collectDebugState({
      version: '1.0.0',
      startedAt: clock.now(),
      now: () => clock.now(),
      config,
      readiness: () => ({ ready: true, checks: { watch: true, serving: true, rules: true } }),
      identities: () => cache.snapshot(),
      sts: () => ({ region: 'eu-west-1', regionSource: 'metadata' }),
    });
  const ops = buildOpsApp({ metrics, logger: pino({ level: 'silent' }), readiness: () => ({ ready: true, checks: {} }), debugState: state });
  const setOutage = (on: boolean) => {
    outage = on;
  };
  return { clock, cache, metrics, ops, setOutage };
}

const id = (name: string) => ({ key: name, roleArn: `${BASE}${name}`, sessionName: `team-a.${name}` });

async function debugState(ops: ReturnType<typeof buildOpsApp>): Promise<DebugState> {
  const res = await ops.inject({ method: 'GET', url: '/debug/state', remoteAddress: '127.0.0.1' });
  assert.equal(res.statusCode, 200);
  return JSON.parse(res.body) as DebugState;
}

describe('STS health in /debug/state, doctor and metrics', () => {
  it('healthy: last success per identity, no failures, no STS row', async () => {
    const { clock, cache, ops } = world();
    cache.retain(id('app'));
    await cache.prefetch(id('app'));
    const state = await debugState(ops);
    const [app] = state.identities!;
    assert.equal(app!.lastSuccess, new Date(clock.now()).toISOString());
    assert.equal(app!.consecutiveFailures, 0);
    assert.equal(app!.lastErrorCode, null);
    assert.equal(app!.stale, false);
    assert.deepEqual(state.sts, { region: 'eu-west-1', regionSource: 'metadata' });
    assert.equal(stsRow(state, clock.now()), undefined);
    assert.equal(identityRow(app!, clock.now()).status, 'ok');
    await ops.close();
    cache.stop();
  });

  it('an outage: failures in a row, serving below the floor, a WARN per identity and one for STS, the metrics', async () => {
    const { clock, cache, metrics, ops, setOutage } = world();
    cache.retain(id('app'));
    await cache.prefetch(id('app'));
    setOutage(true);
    await clock.advance(35 * MIN); // the refresh at 12 min and its retries failed; 25 min left
    assert.match((await cache.get(id('app'))).accessKeyId, /^ASIATEST/, 'served during the outage');
    const state = await debugState(ops);
    const [app] = state.identities!;
    assert.ok(app!.consecutiveFailures! > 100);
    assert.equal(app!.lastErrorCode, 'ServiceUnavailable');
    assert.equal(app!.lastError?.retryable, true);
    assert.equal(app!.stale, true);
    assert.equal(app!.staleUntil, new Date(Date.parse(app!.expiration!) - 5 * MIN).toISOString());
    const row = identityRow(app!, clock.now());
    assert.equal(row.status, 'warn');
    assert.match(row.detail, /STS failing \(ServiceUnavailable: Service unavailable, \d+ in a row\); serving ASIATEST0+1 below the 30-minute floor until .* \(5 min before it expires\)/);
    assert.match(row.fix!, /retries every 5-12 s/);
    const sts = stsRow(state, clock.now())!;
    assert.equal(sts.status, 'warn');
    assert.match(sts.detail, /^1 of 1 identity failing \(region eu-west-1, from metadata\): ServiceUnavailable; 1 served below the 30-minute floor; last success 35 min ago$/);
    assert.deepEqual(agentRows(state, clock.now()).map((r) => r.id), ['agent', 'agent.pods', 'agent.sts', `identity.team-a.app.${BASE}app`]);
    const text = (await ops.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(text, /^kiam_sts_failing_identities\{kind="retryable"\} 1$/m);
    assert.match(text, /^kiam_sts_failing_identities\{kind="non-retryable"\} 0$/m);
    assert.match(text, /^kiam_credentials_stale_served_total 1$/m);
    // Back: the STS row goes, the identity is fresh again, the gauge drops.
    setOutage(false);
    await clock.advance(13_000);
    const after = await debugState(ops);
    assert.equal(after.identities![0]!.consecutiveFailures, 0);
    assert.equal(after.identities![0]!.stale, false);
    assert.equal(stsRow(after, clock.now()), undefined);
    assert.equal((await metrics.stsFailingIdentities.get()).values.find((v) => v.labels.kind === 'retryable')?.value, 0);
    await ops.close();
    cache.stop();
  });

  it('a refusal: FAIL with the fix and "not retryable", counted apart from outages', async () => {
    const { clock, cache, ops } = world();
    cache.retain(id('denied'));
    await cache.prefetch(id('denied'));
    const state = await debugState(ops);
    const row = identityRow(state.identities![0]!, clock.now());
    assert.equal(row.status, 'fail');
    assert.match(row.detail, /AccessDenied: not authorized to perform: sts:AssumeRole \(1 failure\(s\), next try in 1 min\); not retryable/);
    assert.match(row.fix!, /^pods using it get 503; .*trust policy must allow the agent's role sts:AssumeRole/);
    const sts = stsRow(state, clock.now())!;
    assert.match(sts.detail, /1 not retryable; no success yet$/);
    assert.match(sts.fix!, /needs a fix on the AWS side/);
    assert.match((await ops.inject({ method: 'GET', url: '/metrics' })).body, /^kiam_sts_failing_identities\{kind="non-retryable"\} 1$/m);
    await ops.close();
    cache.stop();
  });

  it('doctor reads an older agent without the STS health fields', () => {
    const now = Date.parse('2026-11-28T07:00:00Z');
    const old = {
      roleArn: `${BASE}app`,
      sessionName: 'team-a.app',
      externalId: false,
      users: 1,
      fetching: false,
      accessKeyId: null,
      expiration: null,
      lastUpdated: null,
      servableUntil: null,
      refreshAt: null,
      lastError: { code: 'Throttling', message: 'Rate exceeded', failures: 2, retryAt: new Date(now + 4000).toISOString() },
    };
    const row = identityRow(old, now);
    assert.equal(row.status, 'fail');
    assert.doesNotMatch(row.detail, /not retryable/);
    assert.match(row.fix!, /throttles/);
  });
});
