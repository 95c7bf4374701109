import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import {
  BACKOFF_JITTER,
  backoffMs,
  CredentialCache,
  floorForLifetime,
  refreshDelayMs,
  RETRY_WINDOW_MAX_MS,
  servingFloorMs,
  STALE_FLOOR_MS,
  type CacheIdentity,
  type CredentialCacheDeps,
} from '../../src/cache/credentials.ts';
import { StsError, type AssumeRoleRequest, type StsCredentials } from '../../src/cache/sts.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import type { CredentialProvider, RoleIdentity } from '../../src/server/ports.ts';
import { FakeClock, settle } from '../fakes/clock.ts';
import { ScriptedSts } from '../fakes/sts.ts';

const MIN = 60_000;

function identity(name = 'app', externalId?: string): RoleIdentity {
  const roleArn = `arn:aws:iam::123456789012:role/${name}`;
  const sessionName = `kiam-default-${name}`;
  return { key: `${roleArn}|${externalId ?? ''}|${sessionName}`, roleArn, roleName: name, sessionName, ...(externalId ? { externalId } : {}) };
}

interface Harness {
  clock: FakeClock;
  sts: ScriptedSts;
  metrics: Metrics;
  cache: CredentialCache;
  logs: string[];
}

/** Credentials like STS's: distinguishable per call, lifetime from the request (or `lifetimeMs`). */
function issuer(clock: FakeClock, lifetimeMs?: number) {
  return (req: AssumeRoleRequest, n: number): StsCredentials => ({
    accessKeyId: `ASIATEST${String(n).padStart(12, '0')}`,
    secretAccessKey: `secret-${n}`,
    sessionToken: `token-${n}`,
    expiration: clock.now() + (lifetimeMs ?? req.durationSeconds * 1000),
  });
}

function harness(opts: Partial<CredentialCacheDeps> & { respond?: ScriptedSts['respond'] } = {}): Harness {
  const clock = new FakeClock();
  const sts = new ScriptedSts(opts.respond === undefined ? issuer(clock) : opts.respond);
  const metrics = createMetrics();
  const logs: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  const cache = new CredentialCache({
    sts,
    clock,
    metrics,
    logger: pino({ level: 'debug' }, stream),
    sessionDurationSec: 3600,
    stsTimeoutMs: 5000,
    random: () => 0,
    ...opts,
  });
  return { clock, sts, metrics, cache, logs };
}

async function value(metric: { get(): Promise<{ values: Array<{ value: number; labels: Record<string, unknown> }> }> }, labels: Record<string, string> = {}) {
  const { values } = await metric.get();
  const found = values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l));
  return found?.value ?? 0;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail('expected a rejection');
}

describe('serving floor and refresh arithmetic', () => {
  it('floor is min(30 min, duration / 2)', () => {
    assert.equal(servingFloorMs(3600), 30 * MIN);
    assert.equal(servingFloorMs(43200), 30 * MIN);
    assert.equal(servingFloorMs(900), 7.5 * MIN); // a 15-minute session can never have 30 min left
    assert.equal(servingFloorMs(1800), 15 * MIN);
  });

  it('refresh is at min(duration / 5, duration − floor − 5 min), at least 1 min', () => {
    assert.equal(refreshDelayMs(60 * MIN, 30 * MIN), 12 * MIN);
    assert.equal(refreshDelayMs(12 * 60 * MIN, 30 * MIN), 144 * MIN);
    assert.equal(refreshDelayMs(15 * MIN, 7.5 * MIN), 2.5 * MIN);
    assert.equal(refreshDelayMs(4 * MIN, 2 * MIN), 1 * MIN);
    // What that buys: an outage beginning as a 1 h session's refresh is due is bridged down to 5 min before expiry.
    assert.ok(60 * MIN - refreshDelayMs(60 * MIN, 30 * MIN) - STALE_FLOOR_MS >= 40 * MIN + RETRY_WINDOW_MAX_MS * (1 + BACKOFF_JITTER));
  });

  it('backs off retryable errors 5 s then 10 s (Throttling 10 s at once), refusals 30 s doubling to 2 min', () => {
    const unavailable = new StsError('ServiceUnavailable', 'down', true, 503);
    const throttled = new StsError('Throttling', 'Rate exceeded', true, 400);
    const denied = new StsError('AccessDenied', 'no', false, 403);
    assert.deepEqual([1, 2, 3, 50].map((n) => backoffMs(n, unavailable)), [5000, 10_000, 10_000, 10_000]);
    assert.deepEqual([1, 2, 3].map((n) => backoffMs(n, throttled)), [10_000, 10_000, 10_000]);
    assert.deepEqual([1, 2, 3, 4, 50].map((n) => backoffMs(n, denied)), [30_000, 60_000, 120_000, 120_000, 120_000]);
    // Every window keeps a failing identity at one call per 5 s at most, and jittered it stays under 12.5 s for outages.
    for (const n of [1, 2, 10]) {
      for (const e of [unavailable, throttled]) {
        assert.ok(backoffMs(n, e) >= 5000 && backoffMs(n, e) * (1 + BACKOFF_JITTER) <= 12_500);
        assert.ok(backoffMs(n, denied) > backoffMs(n, e), 'a refusal backs off longer than an outage');
      }
    }
  });

  it('a short grant lowers the floor only when it could not otherwise be served for 5 min', () => {
    assert.equal(floorForLifetime(30 * MIN, 60 * MIN), 30 * MIN);
    assert.equal(floorForLifetime(30 * MIN, 35 * MIN), 30 * MIN);
    assert.equal(floorForLifetime(30 * MIN, 20 * MIN), 10 * MIN);
  });

  it('rejects a session duration STS would refuse', () => {
    assert.throws(() => harness({ sessionDurationSec: 600 }), /sessionDurationSec/);
    assert.throws(() => harness({ stsTimeoutMs: 0 }), /stsTimeoutMs/);
  });
});

describe('CredentialCache', () => {
  it('is a CredentialProvider', async () => {
    const { cache } = harness();
    const provider: CredentialProvider = cache;
    const creds = await provider.get(identity());
    assert.match(creds.accessKeyId, /^ASIATEST/);
    cache.stop();
  });

  it('shares one STS call among concurrent gets (singleflight), then serves from the cache', async () => {
    const { cache, sts, clock, metrics } = harness({ respond: () => 'hang' });
    const id = identity();
    const waiting = Array.from({ length: 50 }, () => cache.get(id));
    await settle();
    assert.equal(sts.calls.length, 1);
    const call = sts.calls[0]!;
    assert.deepEqual(call.req, { roleArn: id.roleArn, sessionName: id.sessionName, durationSeconds: 3600 });
    call.resolve(issuer(clock)(call.req, 1));
    const all = await Promise.all(waiting);
    assert.ok(all.every((c) => c === all[0]));
    assert.equal(all[0]!.lastUpdated, clock.now());
    const again = await cache.get(id);
    assert.equal(again.accessKeyId, all[0]!.accessKeyId);
    assert.equal(sts.calls.length, 1);
    assert.equal(await value(metrics.cacheMisses), 50);
    assert.equal(await value(metrics.cacheHits), 1);
    assert.equal(await value(metrics.cachedIdentities), 1);
    cache.stop();
  });

  it('peek() hands out a hit at once (the same object until new credentials), and never starts a fetch', async () => {
    const { cache, sts, clock, metrics } = harness();
    const id = identity();
    assert.equal(cache.peek(id), undefined, 'unknown identity');
    assert.equal(sts.calls.length, 0, 'peek does not fetch');
    assert.equal(cache.size, 0, 'peek does not create entries');
    const first = await cache.get(id);
    assert.equal(cache.peek(id), first);
    assert.equal(cache.peek(id), first);
    assert.equal(await value(metrics.cacheHits), 2);
    // Below the 30-minute floor: no hit, as get() would not serve it either.
    await clock.advance(30 * MIN + 1);
    assert.equal(cache.peek(id), undefined);
    assert.equal(await value(metrics.cacheHits), 2);
    cache.stop();
    assert.equal(cache.peek(id), undefined, 'stopped');
  });

  it('passes the external ID and keeps identities apart', async () => {
    const { cache, sts } = harness();
    const a = await cache.get(identity('app', 'ext-1'));
    const b = await cache.get(identity('app'));
    assert.notEqual(a.accessKeyId, b.accessKeyId);
    assert.equal(sts.calls[0]!.req.externalId, 'ext-1');
    assert.equal(sts.calls[1]!.req.externalId, undefined);
    cache.stop();
  });

  it('a caller that gives up does not fail the others or the STS call', async () => {
    const { cache, sts, clock } = harness({ respond: () => 'hang' });
    const id = identity();
    const impatient = new AbortController();
    const first = cache.get(id, impatient.signal);
    const second = cache.get(id);
    await settle();
    impatient.abort(new Error('client went away'));
    const err = await rejection(first);
    assert.equal((err as Error).message, 'client went away');
    assert.equal(sts.calls.length, 1);
    assert.equal(sts.calls[0]!.signal.aborted, false);
    sts.calls[0]!.resolve(issuer(clock)(sts.calls[0]!.req, 1));
    const creds = await second;
    assert.match(creds.accessKeyId, /^ASIATEST/);
    // And a later caller is served from what the abandoned call brought.
    assert.equal((await cache.get(id)).accessKeyId, creds.accessKeyId);
    assert.equal(sts.calls.length, 1);
    cache.stop();
  });

  it('times the STS call out by itself, whoever waits', async () => {
    const { cache, sts, clock, metrics } = harness({ respond: () => 'hang', stsTimeoutMs: 2000 });
    const p = cache.get(identity());
    await clock.advance(1999);
    assert.equal(sts.calls[0]!.signal.aborted, false);
    await clock.advance(1);
    const err = await rejection(p);
    assert.ok(err instanceof StsError);
    assert.equal(err.code, 'timeout');
    assert.equal(sts.calls[0]!.signal.aborted, true);
    assert.equal(await value(metrics.stsErrors, { code: 'timeout' }), 1);
    cache.stop();
  });

  it('refreshes in the background at issue + 12 min for 1 h sessions: exactly one call per cycle', async () => {
    const { cache, sts, clock } = harness();
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    const first = await cache.get(id);
    assert.equal(sts.calls.length, 1);
    await clock.advance(12 * MIN - 1);
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    assert.equal(sts.calls.length, 2);
    const second = await cache.get(id);
    assert.notEqual(second.accessKeyId, first.accessKeyId);
    assert.equal(second.expiration, clock.now() + 60 * MIN);
    // Three hours in all: refreshes at 12, 24, …, 180 min.
    await clock.advance(180 * MIN - 12 * MIN);
    assert.equal(sts.calls.length, 1 + Math.floor(180 / 12));
    cache.stop();
  });

  it('jitters the refresh earlier (by at most 5 %), never later', async () => {
    // The window the spec allows, not the implementation's formula: with the largest jitter draw the refresh falls
    // strictly before 12 min and not before 95 % of it.
    for (const draw of [0.5, 0.999]) {
      const { cache, sts, clock } = harness({ random: () => draw });
      const id = identity();
      cache.retain(id);
      await cache.prefetch(id);
      await clock.advance(0.95 * 12 * MIN - 1);
      assert.equal(sts.calls.length, 1, `draw ${draw}: not more than 5 % early`);
      await clock.advance(0.05 * 12 * MIN);
      assert.equal(sts.calls.length, 2, `draw ${draw}: earlier than the unjittered 12 min`);
      cache.stop();
    }
  });

  it('stops refreshing once released, and drops the identity', async () => {
    const { cache, sts, clock, metrics } = harness();
    const id = identity();
    cache.retain(id);
    cache.retain(id);
    await cache.prefetch(id);
    cache.release(id.key);
    assert.equal(cache.size, 1); // one retainer left
    await clock.advance(12 * MIN);
    assert.equal(sts.calls.length, 2);
    cache.release(id.key);
    assert.equal(cache.size, 0);
    assert.equal(clock.timers, 0);
    assert.equal(await value(metrics.cachedIdentities), 0);
    await clock.advance(180 * MIN);
    assert.equal(sts.calls.length, 2);
    cache.stop();
  });

  it('a failed refresh keeps serving the old credentials above the floor and retries with backoff', async () => {
    const { cache, sts, clock, metrics } = harness();
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    const old = await cache.get(id);
    const working = sts.respond;
    sts.respond = () => new StsError('ServiceUnavailable', 'down', true, 503);
    await clock.advance(12 * MIN);
    assert.equal(sts.calls.length, 2);
    assert.equal((await cache.get(id)).accessKeyId, old.accessKeyId);
    // Retries 5 s, then 10 s, after each failed call began.
    await clock.advance(5000);
    assert.equal(sts.calls.length, 3);
    await clock.advance(9999);
    assert.equal(sts.calls.length, 3);
    await clock.advance(1);
    assert.equal(sts.calls.length, 4);
    assert.equal((await cache.get(id)).accessKeyId, old.accessKeyId);
    sts.respond = working;
    await clock.advance(10_000);
    assert.equal(sts.calls.length, 5);
    const fresh = await cache.get(id);
    assert.notEqual(fresh.accessKeyId, old.accessKeyId);
    assert.equal(await value(metrics.stsErrors, { code: 'ServiceUnavailable' }), 3);
    // Success resets the backoff: the next cycle is a full refresh interval away.
    await clock.advance(12 * MIN - 1);
    assert.equal(sts.calls.length, 5);
    await clock.advance(1);
    assert.equal(sts.calls.length, 6);
    cache.stop();
  });

  it('never serves credentials below the floor while STS refuses (a non-retryable error is no outage)', async () => {
    const { cache, sts, clock } = harness();
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    const issued = await cache.get(id);
    sts.respond = () => new StsError('AccessDenied', 'trust policy changed', false, 403);
    let servedLast = -1;
    for (let t = 0; t <= 45 * MIN; t += 10_000) {
      await clock.advance(t === 0 ? 0 : 10_000);
      try {
        const c = await cache.get(id);
        assert.ok(c.expiration - clock.now() >= cache.floorMs, `served ${c.expiration - clock.now()} ms of lifetime`);
        servedLast = clock.now();
      } catch (err) {
        assert.ok(err instanceof StsError);
      }
    }
    assert.equal(servedLast, issued.expiration - cache.floorMs);
    cache.stop();
  });

  it('refuses at 1 ms below the floor and fetches anew', async () => {
    const { cache, sts, clock } = harness();
    const id = identity();
    const first = await cache.get(id);
    await clock.advance(30 * MIN); // exactly at the floor: still served
    assert.equal((await cache.get(id)).accessKeyId, first.accessKeyId);
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    const next = await cache.get(id);
    assert.notEqual(next.accessKeyId, first.accessKeyId);
    assert.equal(sts.calls.length, 2);
    cache.stop();
  });

  it('uses half a 15-minute session as its floor and refreshes at 2.5 min', async () => {
    const { cache, sts, clock } = harness({ sessionDurationSec: 900 });
    assert.equal(cache.floorMs, 7.5 * MIN);
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    assert.equal(sts.calls[0]!.req.durationSeconds, 900);
    await clock.advance(2.5 * MIN - 1);
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    assert.equal(sts.calls.length, 2);
    cache.stop();
  });

  it('honours a shorter expiration than asked', async () => {
    const clock = new FakeClock();
    const { cache, sts } = harness({ clock, respond: issuer(clock, 20 * MIN) });
    const id = identity();
    cache.retain(id);
    const c = await cache.get(id);
    assert.equal(c.expiration, clock.now() + 20 * MIN);
    // floor for a 20-min grant is 10 min; refresh at max(1, min(20 / 5, 20 − 10 − 5)) = 4 min.
    await clock.advance(4 * MIN - 1);
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    assert.equal(sts.calls.length, 2);
    cache.stop();
  });

  it('keeps the 30-min floor for a 40-min grant and refreshes after 5 min', async () => {
    const clock = new FakeClock();
    const { cache, sts } = harness({ clock, respond: issuer(clock, 40 * MIN) });
    const id = identity();
    cache.retain(id);
    const c = await cache.get(id);
    await clock.advance(5 * MIN - 1);
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    assert.equal(sts.calls.length, 2);
    assert.notEqual((await cache.get(id)).accessKeyId, c.accessKeyId);
    cache.stop();
  });

  it('refuses credentials granted with under 2 minutes to live', async () => {
    const clock = new FakeClock();
    const { cache } = harness({ clock, respond: issuer(clock, 90_000) });
    const err = await rejection(cache.get(identity()));
    assert.ok(err instanceof StsError);
    assert.equal(err.code, 'short-lifetime');
    cache.stop();
  });

  it('caches a refusal and backs off 30 s doubling to 2 min', async () => {
    const denied = new StsError('AccessDenied', 'not authorized', false, 403);
    const { cache, sts, clock, metrics } = harness({ respond: () => denied });
    const id = identity();
    assert.equal(await rejection(cache.get(id)), denied);
    assert.equal(sts.calls.length, 1);
    const windows = [30_000, 60_000, 120_000, 120_000, 120_000];
    for (const [i, w] of windows.entries()) {
      await clock.advance(w - 1);
      assert.equal(await rejection(cache.get(id)), denied);
      assert.equal(sts.calls.length, i + 1, `no STS call within window ${i}`);
      await clock.advance(1);
      assert.equal(await rejection(cache.get(id)), denied);
      assert.equal(sts.calls.length, i + 2, `a new call after window ${i}`);
    }
    assert.equal(await value(metrics.stsErrors, { code: 'AccessDenied' }), windows.length + 1);
    cache.stop();
  });

  it('backs off harder on Throttling: 10 s from the first failure', async () => {
    const { cache, sts, clock } = harness({ respond: () => new StsError('Throttling', 'Rate exceeded', true, 400) });
    const id = identity();
    await rejection(cache.get(id));
    await clock.advance(9999);
    await rejection(cache.get(id));
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    await rejection(cache.get(id));
    assert.equal(sts.calls.length, 2);
    await clock.advance(9999);
    await rejection(cache.get(id));
    assert.equal(sts.calls.length, 2);
    cache.stop();
  });

  it('a retained identity retries by itself after a failed first fetch', async () => {
    const { cache, sts, clock } = harness();
    const working = sts.respond;
    sts.respond = () => new StsError('network', 'ECONNREFUSED', true);
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    assert.equal(sts.calls.length, 1);
    sts.respond = working;
    await clock.advance(4999);
    assert.equal(sts.calls.length, 1);
    await clock.advance(1);
    assert.equal(sts.calls.length, 2);
    const c = await cache.get(id);
    assert.equal(sts.calls.length, 2);
    assert.match(c.accessKeyId, /^ASIATEST/);
    cache.stop();
  });

  it('wraps errors that are not StsErrors', async () => {
    const { cache } = harness({ respond: () => new TypeError('bug in a fake') });
    const err = await rejection(cache.get(identity()));
    assert.ok(err instanceof StsError);
    assert.equal(err.code, 'unknown');
    cache.stop();
  });

  it('drops an identity nobody retains once its credentials reach the floor, without refreshing it', async () => {
    const { cache, sts, clock, metrics } = harness();
    await cache.get(identity());
    assert.equal(cache.size, 1);
    await clock.advance(30 * MIN); // still servable at exactly the floor
    assert.equal(cache.size, 1);
    await clock.advance(1);
    assert.equal(cache.size, 0);
    assert.equal(clock.timers, 0);
    assert.equal(sts.calls.length, 1);
    assert.equal(await value(metrics.cachedIdentities), 0);
    cache.stop();
  });

  it('prefetch warms the cache so the first get is a hit, and skips fresh identities', async () => {
    const { cache, sts, metrics } = harness();
    const id = identity();
    await cache.prefetch(id);
    await cache.prefetch(id);
    assert.equal(sts.calls.length, 1);
    await cache.get(id);
    assert.equal(await value(metrics.cacheHits), 1);
    assert.equal(await value(metrics.cacheMisses), 0);
    cache.stop();
  });

  it('records STS latency by result', async () => {
    const { cache, clock, sts, metrics } = harness({ respond: () => 'hang' });
    const p = cache.get(identity());
    await clock.advance(1500);
    sts.calls[0]!.resolve(issuer(clock)(sts.calls[0]!.req, 1));
    await p;
    const { values } = await metrics.stsDuration.get();
    const sum = values.find((v) => v.metricName?.endsWith('_sum') && v.labels.result === 'success');
    assert.equal(sum?.value, 1.5);
    cache.stop();
  });

  it('logs role, session and access key id, never the secret or the token', async () => {
    const { cache, logs, clock } = harness();
    const id = identity('logged');
    cache.retain(id);
    const c = await cache.get(id);
    await clock.advance(25 * MIN);
    cache.release(id.key);
    const text = logs.join('');
    assert.ok(text.includes(c.accessKeyId));
    assert.ok(text.includes(id.roleArn));
    assert.ok(text.includes(id.sessionName));
    assert.ok(!/secret-\d|token-\d/.test(text), 'a secret or token was logged');
    cache.stop();
  });

  it('stop() cancels timers and in-flight calls; later calls reject', async () => {
    const { cache, sts, clock } = harness({ respond: () => 'hang' });
    const a = identity('a');
    const b = identity('b');
    cache.retain(b);
    const first = cache.get(b);
    await settle();
    sts.calls[0]!.resolve(issuer(clock)(sts.calls[0]!.req, 1));
    await first;
    assert.equal(clock.timers, 1); // b's refresh
    const stuck = cache.get(a);
    await settle();
    cache.stop();
    const err = await rejection(stuck);
    assert.ok(err instanceof StsError);
    assert.equal(err.code, 'stopped');
    assert.equal(sts.calls[1]!.signal.aborted, true);
    assert.equal(clock.timers, 0);
    assert.equal(((await rejection(cache.get(a))) as StsError).code, 'stopped');
    cache.stop(); // idempotent
  });

  it('release of an unknown key is harmless', () => {
    const { cache } = harness();
    cache.release('nope');
    assert.equal(cache.size, 0);
    cache.stop();
  });
});

/** A deterministic jitter source (xorshift), so that tests see spread-out retries without depending on Math.random. */
function seeded(seed = 42): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return ((x >>> 0) % 1_000_000) / 1_000_000;
  };
}

interface LogLine {
  level: number;
  msg: string;
  code?: string;
  fix?: string;
  sessionName?: string;
}
const parsed = (logs: string[]): LogLine[] => logs.map((l) => JSON.parse(l) as LogLine);

describe('STS outages', () => {
  /** Record every call's time per role; answer as `answer` says for the time the call is made. */
  function scripted(clock: FakeClock, answer: (req: AssumeRoleRequest, now: number) => StsError | 'hang' | 'ok') {
    const calls = new Map<string, number[]>();
    const ok = issuer(clock);
    const respond = (req: AssumeRoleRequest, n: number) => {
      const now = clock.now();
      const list = calls.get(req.roleArn) ?? [];
      list.push(now);
      calls.set(req.roleArn, list);
      const a = answer(req, now);
      return a === 'ok' ? ok(req, n) : a;
    };
    return { calls, respond };
  }

  it('after STS recovers every identity is served again within 15 s, at one call per 5 s at most while it fails', async () => {
    // 20 identities retained and fetched before STS goes down for 10 minutes (their refresh falls in the outage), and 5
    // whose pods appear during it; every pod asks every second throughout. Some calls fail at once (503), the rest hang
    // until the cache's own 5 s timeout.
    const clock = new FakeClock();
    const start = clock.now();
    const down = start + 10 * MIN;
    const up = down + 10 * MIN;
    const { calls, respond } = scripted(clock, (req, now) => {
      if (now < down || now >= up) return 'ok';
      return /[05]$/.test(req.roleArn) ? 'hang' : new StsError('ServiceUnavailable', 'down', true, 503);
    });
    const { cache } = harness({ clock, random: seeded(), respond });
    const early = Array.from({ length: 20 }, (_, i) => identity(`early-${i}`));
    const late = Array.from({ length: 5 }, (_, i) => identity(`late-${i}`));
    for (const id of early) {
      cache.retain(id);
      await cache.prefetch(id);
    }
    let rejectedEarly = 0;
    for (let t = start; t < up + 30_000; t += 1000) {
      await clock.advance(1000);
      if (clock.now() === down + MIN) {
        for (const id of late) {
          cache.retain(id);
          void cache.prefetch(id);
        }
      }
      for (const id of early) cache.get(id).catch(() => rejectedEarly++);
      if (clock.now() > down + MIN) for (const id of late) cache.get(id).catch(() => {});
    }
    await settle();
    assert.equal(rejectedEarly, 0, 'credentials fetched before the outage were served throughout');
    for (const id of [...early, ...late]) {
      const times = calls.get(id.roleArn)!;
      const during = times.filter((t) => t >= down && t < up);
      assert.ok(during.length >= 2, `${id.roleArn} was retried during the outage`);
      for (let k = 1; k < during.length; k++) {
        assert.ok(during[k]! - during[k - 1]! >= 5000, `${id.roleArn}: calls ${during[k]! - during[k - 1]!} ms apart`);
      }
      const after = times.find((t) => t >= up);
      assert.ok(after !== undefined && after - up <= 15_000, `${id.roleArn}: first call after recovery ${after === undefined ? 'never' : `${(after - up) / 1000} s`} after it`);
      const snap = cache.snapshot().find((i) => i.roleArn === id.roleArn)!;
      assert.equal(snap.consecutiveFailures, 0);
      assert.ok(snap.lastSuccessAt! >= up && snap.lastSuccessAt! - up <= 15_000);
    }
    cache.stop();
  });

  it('a 40-minute outage beginning as the refresh falls due is bridged for a pod with 1 h sessions', async () => {
    const clock = new FakeClock();
    const start = clock.now();
    // The worst case: the last successful call is the one at start, and STS fails from the refresh (12 min) on.
    const down = start + 12 * MIN;
    const up = down + 40 * MIN;
    const { respond } = scripted(clock, (_req, now) => (now >= down && now < up ? new StsError('ServiceUnavailable', 'down', true, 503) : 'ok'));
    // No jitter: the refresh falls exactly at 12 min, as the outage begins.
    const { cache, metrics, logs } = harness({ clock, random: () => 0, respond });
    const id = identity('pod');
    cache.retain(id);
    await cache.prefetch(id);
    const first = await cache.get(id);
    let minLeft = Infinity;
    let failures = 0;
    for (let t = start; t <= up + 30_000; t += 10_000) {
      await clock.advance(t === start ? 0 : 10_000);
      try {
        const c = await cache.get(id);
        minLeft = Math.min(minLeft, c.expiration - clock.now());
        if (clock.now() < up) assert.equal(c.accessKeyId, first.accessKeyId);
      } catch (err) {
        failures++;
        assert.fail(`no credentials ${(clock.now() - start) / MIN} min in: ${String(err)}`);
      }
    }
    assert.equal(failures, 0);
    assert.ok(minLeft >= STALE_FLOOR_MS, `served with ${minLeft / 1000} s left`);
    assert.ok(minLeft < cache.floorMs, 'below the 30-minute floor during the outage');
    const fresh = await cache.get(id);
    assert.notEqual(fresh.accessKeyId, first.accessKeyId, 'new credentials once STS answers again');
    // The floor was crossed at 30 min: requests every 10 s from then until STS came back at 52 min were served stale.
    assert.equal(await value(metrics.staleServed), (up - (start + 30 * MIN)) / 10_000);
    const stale = parsed(logs).filter((l) => /below the 30-minute floor/.test(l.msg));
    assert.equal(stale.length, 1, 'one warning per identity and outage');
    assert.equal(stale[0]!.level, 40);
    cache.stop();
  });

  it('stops serving 5 minutes before expiry, and never after a refusal', async () => {
    const { cache, sts, clock } = harness();
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    const issued = await cache.get(id);
    sts.respond = () => new StsError('InternalFailure', 'boom', true, 500);
    let servedLast = -1;
    for (let t = 0; t <= 60 * MIN; t += 10_000) {
      await clock.advance(t === 0 ? 0 : 10_000);
      try {
        const c = await cache.get(id);
        assert.ok(c.expiration - clock.now() >= STALE_FLOOR_MS, `served ${c.expiration - clock.now()} ms of lifetime`);
        servedLast = clock.now();
      } catch (err) {
        assert.ok(err instanceof StsError);
      }
    }
    assert.equal(servedLast, issued.expiration - STALE_FLOOR_MS);
    cache.stop();
  });

  it('below the floor with no failure known yet, a request waits for the running call, and gets the old credentials if it fails', async () => {
    // Only a slow call can leave an identity below the floor without a known failure: give STS 30 min to answer.
    const { cache, sts, clock, metrics } = harness({ respond: () => 'hang', stsTimeoutMs: 30 * MIN });
    const id = identity();
    cache.retain(id);
    const pending = cache.get(id);
    await settle();
    sts.calls[0]!.resolve(issuer(clock)(sts.calls[0]!.req, 1));
    const first = await pending;
    await clock.advance(12 * MIN); // the refresh starts, and hangs
    assert.equal(sts.calls.length, 2);
    await clock.advance(19 * MIN); // 29 min left: below the floor, and STS not known to fail
    const asked = cache.get(id);
    let settled = false;
    void asked.finally(() => (settled = true));
    await settle();
    assert.equal(settled, false, 'waits: the floor applies while STS is not known to fail');
    assert.equal(sts.calls.length, 2, 'joins the running call');
    sts.calls[1]!.reject(new StsError('ServiceUnavailable', 'down', true, 503));
    assert.equal((await asked).accessKeyId, first.accessKeyId, 'the old credentials when that call failed');
    assert.equal(await value(metrics.staleServed), 1);
    // The failed call began 19 min ago, so the next request is answered at once and starts a retry beside.
    assert.equal((await cache.get(id)).accessKeyId, first.accessKeyId);
    assert.equal(sts.calls.length, 3);
    sts.calls[2]!.resolve(issuer(clock)(sts.calls[2]!.req, 3));
    await settle();
    assert.notEqual((await cache.get(id)).accessKeyId, first.accessKeyId);
    cache.stop();
  });

  it('a refusal backs off longer than an outage, is logged once per identity with the fix, and shows as not retryable', async () => {
    const { cache, clock, logs, metrics } = harness({ respond: (req) => (req.roleArn.endsWith('/denied') ? new StsError('AccessDenied', 'not authorized to perform: sts:AssumeRole', false, 403) : new StsError('Throttling', 'Rate exceeded', true, 400)) });
    const denied = identity('denied');
    const throttled = identity('throttled');
    cache.retain(denied);
    cache.retain(throttled);
    await cache.prefetch(denied);
    await cache.prefetch(throttled);
    await clock.advance(10 * MIN - 1);
    const lines = parsed(logs).filter((l) => l.msg === 'assume role failed');
    const deniedLines = lines.filter((l) => l.sessionName === denied.sessionName);
    const throttledLines = lines.filter((l) => l.sessionName === throttled.sessionName);
    // 10 min of retries: after 30 s, 60 s, then every 2 min for the refusal (7 calls); every 10 s for Throttling (60).
    assert.equal(deniedLines.length, 7);
    assert.equal(throttledLines.length, 60);
    const loud = (ls: LogLine[]) => ls.filter((l) => l.level >= 40);
    assert.equal(loud(deniedLines).length, 1, 'logged once per identity');
    assert.equal(loud(deniedLines)[0]!.level, 50, 'at error: it needs a fix');
    assert.match(loud(deniedLines)[0]!.fix!, /trust policy.*sts:AssumeRole/);
    assert.equal(loud(throttledLines).length, 1);
    assert.equal(loud(throttledLines)[0]!.level, 40);
    assert.match(loud(throttledLines)[0]!.fix!, /throttles/);
    const snap = cache.snapshot().find((i) => i.roleArn === denied.roleArn)!;
    assert.equal(snap.lastError?.retryable, false);
    assert.equal(snap.consecutiveFailures, 7);
    assert.equal(snap.lastErrorCode, 'AccessDenied');
    assert.equal(await value(metrics.stsFailingIdentities, { kind: 'non-retryable' }), 1);
    assert.equal(await value(metrics.stsFailingIdentities, { kind: 'retryable' }), 1);
    cache.stop();
  });

  it('reports STS health per identity: last success, failures in a row, the last error even after a success', async () => {
    const { cache, sts, clock, metrics } = harness();
    const id = identity();
    cache.retain(id);
    await cache.prefetch(id);
    const t0 = clock.now();
    let snap = cache.snapshot()[0]!;
    assert.deepEqual([snap.lastSuccessAt, snap.consecutiveFailures, snap.lastErrorCode, snap.stale], [t0, 0, undefined, false]);
    assert.equal(await value(metrics.stsFailingIdentities, { kind: 'retryable' }), 0);
    const working = sts.respond;
    sts.respond = () => new StsError('ServiceUnavailable', 'down', true, 503);
    await clock.advance(12 * MIN + 5000); // the refresh and one retry
    snap = cache.snapshot()[0]!;
    assert.equal(snap.consecutiveFailures, 2);
    assert.equal(snap.lastErrorCode, 'ServiceUnavailable');
    assert.equal(snap.lastError?.retryable, true);
    assert.equal(snap.staleUntil, snap.expiration! - STALE_FLOOR_MS);
    assert.equal(snap.stale, false, 'still above the floor');
    assert.equal(await value(metrics.stsFailingIdentities, { kind: 'retryable' }), 1);
    await clock.advance(18 * MIN + 1); // past the floor
    assert.equal(cache.snapshot()[0]!.stale, true);
    sts.respond = working;
    await clock.advance(RETRY_WINDOW_MAX_MS * (1 + BACKOFF_JITTER));
    snap = cache.snapshot()[0]!;
    assert.equal(snap.consecutiveFailures, 0);
    assert.equal(snap.lastErrorCode, 'ServiceUnavailable', 'kept after the success');
    assert.equal(snap.lastError, undefined);
    assert.equal(snap.stale, false);
    assert.ok(snap.lastSuccessAt! > t0);
    assert.equal(await value(metrics.stsFailingIdentities, { kind: 'retryable' }), 0);
    cache.stop();
  });
});

// Keep CacheIdentity structurally compatible with the server's RoleIdentity.
const _compat: CacheIdentity = identity();
void _compat;
