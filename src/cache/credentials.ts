/**
 * The credential cache: STS credentials per identity (role ARN + external ID + session name), fetched once
 * for all concurrent callers, refreshed ahead of expiry while someone retains the identity, and never handed
 * out with less than the serving floor of lifetime left.
 *
 * Serving floor. floor = min(30 min, sessionDuration / 2). Thirty minutes keeps every SDK away from its own
 * refresh-before-expiry thresholds (botocore: 15 and 10 min); but a 15-minute session can never have 30 min
 * left, so short sessions get half their duration instead (7.5 min for 15 min). When STS grants less than asked,
 * credentials with under floor + 5 min of lifetime use half their own lifetime as their floor, so that fresh
 * credentials are always servable. Credentials granted with under 2 min of lifetime are refused.
 *
 * Refresh. While an identity is retained, a background fetch runs at
 * issue + max(1 min, min(lifetime / 2, lifetime − floor − 5 min)), up to 5 % earlier (jitter), where lifetime
 * is what STS actually granted. A failed refresh keeps serving the previous credentials while they are above
 * the floor and retries with the negative-cache backoff.
 *
 * Negative cache. A failed fetch is remembered per identity for a backoff that doubles with each consecutive
 * failure (1 s, 2 s, 4 s … 60 s; Throttling twice that, same cap); meanwhile get() rejects at once with the
 * cached error. Retained identities retry by themselves when the window ends (plus up to 10 % jitter).
 *
 * Lifetime of entries. retain()/release() count users; when the count drops to zero the identity is dropped
 * at once (timers cancelled). An identity fetched by get() or prefetch() without being retained is kept only
 * as long as it has servable credentials (or, after a failure, its backoff state), and is never refreshed.
 *
 * The STS call of an identity is detached from every caller: it has its own timeout, and a caller that gives up
 * (its AbortSignal fires) only stops waiting itself.
 */
import type { Logger } from 'pino';
import type { Clock, Timer } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import { raceAbort, StsError, THROTTLING_CODES, type StsCredentials, type StsGateway } from './sts.ts';

/** What the cache needs to know of an identity (structurally a RoleIdentity). */
export interface CacheIdentity {
  /** Stable key from roleArn, externalId and sessionName. */
  key: string;
  roleArn: string;
  externalId?: string;
  sessionName: string;
}

/** Structurally the server's Credentials. */
export interface CachedCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** Epoch ms. */
  expiration: number;
  /** Epoch ms: when the cache received them. */
  lastUpdated: number;
}

export interface CredentialCacheDeps {
  sts: StsGateway;
  clock: Clock;
  metrics: Pick<Metrics, 'cacheHits' | 'cacheMisses' | 'stsDuration' | 'stsErrors' | 'cachedIdentities'>;
  logger: Logger;
  /** DurationSeconds asked of STS (900…43200). */
  sessionDurationSec: number;
  /** Deadline of one STS call, independent of any caller. */
  stsTimeoutMs: number;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
  /** Negative-cache backoff: first window (default 1000 ms) and cap (default 60000 ms). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
}

const MINUTE = 60_000;
/** The serving floor never exceeds this. */
export const MAX_SERVING_FLOOR_MS = 30 * MINUTE;
/** Credentials granted with less lifetime than this are refused ('short-lifetime'). */
export const MIN_GRANTED_LIFETIME_MS = 2 * MINUTE;
const REFRESH_SLACK_MS = 5 * MINUTE;
const MIN_REFRESH_MS = MINUTE;

/** floor = min(30 min, sessionDuration / 2), in ms. */
export function servingFloorMs(sessionDurationSec: number): number {
  return Math.min(MAX_SERVING_FLOOR_MS, (sessionDurationSec * 1000) / 2);
}

/** The floor that applies to credentials with this lifetime (see the module comment). */
export function floorForLifetime(floorMs: number, lifetimeMs: number): number {
  return lifetimeMs >= floorMs + REFRESH_SLACK_MS ? floorMs : lifetimeMs / 2;
}

/** Delay from issue to background refresh, before jitter. */
export function refreshDelayMs(lifetimeMs: number, floorMs: number): number {
  return Math.max(MIN_REFRESH_MS, Math.min(lifetimeMs / 2, lifetimeMs - floorMs - REFRESH_SLACK_MS));
}

/** One identity as CredentialCache.snapshot() reports it (times in epoch ms). */
export interface IdentitySnapshot {
  roleArn: string;
  sessionName: string;
  /** Whether an external ID is part of the identity (its value is not reported). */
  externalId: boolean;
  /** Live pods retaining the identity (0: kept only while its credentials last). */
  users: number;
  /** An STS call for it is running. */
  fetching: boolean;
  accessKeyId?: string;
  expiration?: number;
  lastUpdated?: number;
  /** Served until then (expiration minus the floor); a refresh must land before. */
  servableUntil?: number;
  /** Next background refresh or retry (retained identities only). */
  refreshAt?: number;
  /** The last failed STS call, while it is the latest outcome. */
  lastError?: { code: string; message: string; failures: number; retryAt: number };
}

type FetchReason = 'request' | 'prefetch' | 'refresh' | 'retry';

interface Entry {
  readonly identity: CacheIdentity;
  refs: number;
  creds: CachedCredentials | undefined;
  /** Floor applying to creds. */
  floorMs: number;
  inflight: { promise: Promise<CachedCredentials>; abort: AbortController } | undefined;
  failure: { error: StsError; until: number } | undefined;
  failures: number;
  /** When a retained entry should fetch in the background next (refresh or retry). */
  dueAt: number | undefined;
  timer: Timer | undefined;
}

const noop = () => {};

export class CredentialCache {
  /** The serving floor in ms for the configured session duration. */
  readonly floorMs: number;
  private readonly entries = new Map<string, Entry>();
  private readonly random: () => number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private stopped = false;

  constructor(private readonly deps: CredentialCacheDeps) {
    const { sessionDurationSec, stsTimeoutMs } = deps;
    if (!Number.isInteger(sessionDurationSec) || sessionDurationSec < 900 || sessionDurationSec > 43200) {
      throw new Error(`CredentialCache: sessionDurationSec must be a whole number in 900..43200, got ${sessionDurationSec}`);
    }
    if (!(stsTimeoutMs > 0)) throw new Error(`CredentialCache: stsTimeoutMs must be positive, got ${stsTimeoutMs}`);
    this.floorMs = servingFloorMs(sessionDurationSec);
    this.random = deps.random ?? Math.random;
    this.backoffInitialMs = deps.backoffInitialMs ?? 1000;
    this.backoffMaxMs = deps.backoffMaxMs ?? 60_000;
  }

  /**
   * Credentials with at least the floor of lifetime left. Shares the identity's in-flight STS call; rejects at
   * once (with the cached StsError) while the identity is in its negative-cache window. A caller's signal only
   * ends its own wait (rejecting with the signal's reason).
   */
  get(identity: CacheIdentity, signal?: AbortSignal): Promise<CachedCredentials> {
    if (this.stopped) return Promise.reject(stoppedError());
    const now = this.deps.clock.now();
    let entry = this.entries.get(identity.key);
    if (entry) {
      const creds = this.usable(entry, now);
      if (creds) {
        this.deps.metrics.cacheHits.inc();
        return Promise.resolve(creds);
      }
      if (!entry.inflight && entry.failure && now < entry.failure.until) return Promise.reject(entry.failure.error);
    } else {
      entry = this.create(identity);
    }
    this.deps.metrics.cacheMisses.inc();
    const shared = this.fetch(entry, 'request');
    return signal ? raceAbort(shared, signal) : shared;
  }

  /**
   * The hit get() would resolve with at once (counted as a hit), or undefined when get() would wait or reject;
   * never starts a fetch. Synchronous and allocation-free: the server's warm path. The same object is returned
   * until new credentials replace it, so callers may memoise what they derive from it.
   */
  peek(identity: CacheIdentity): CachedCredentials | undefined {
    if (this.stopped) return undefined;
    const entry = this.entries.get(identity.key);
    const creds = entry && this.usable(entry, this.deps.clock.now());
    if (creds) this.deps.metrics.cacheHits.inc();
    return creds;
  }

  /** Start fetching an identity nobody is waiting for yet (no-op when servable or backing off). Never rejects. */
  async prefetch(identity: CacheIdentity): Promise<void> {
    if (this.stopped) return;
    const entry = this.entries.get(identity.key) ?? this.create(identity);
    const now = this.deps.clock.now();
    if (this.usable(entry, now)) return;
    if (!entry.inflight && entry.failure && now < entry.failure.until) return;
    await this.fetch(entry, 'prefetch').catch(noop);
  }

  /** One more user of this identity: refreshes run while there is any. */
  retain(identity: CacheIdentity): void {
    if (this.stopped) return;
    const entry = this.entries.get(identity.key) ?? this.create(identity);
    entry.refs++;
    if (entry.refs === 1) this.arm(entry);
  }

  /** One user fewer; at zero the identity is dropped and its timers cancelled. */
  release(key: string): void {
    const entry = this.entries.get(key);
    if (!entry || entry.refs === 0) return;
    entry.refs--;
    if (entry.refs === 0) this.drop(entry, 'released');
  }

  /** Number of identities known (retained or holding credentials). */
  get size(): number {
    return this.entries.size;
  }

  /**
   * A read-only picture of every identity for the debug endpoint: never the secret key or the session token,
   * and not the external ID's value (only whether there is one). Off the request path; O(identities).
   */
  snapshot(): IdentitySnapshot[] {
    const out: IdentitySnapshot[] = [];
    for (const entry of this.entries.values()) {
      const { identity, creds, failure } = entry;
      const item: IdentitySnapshot = {
        roleArn: identity.roleArn,
        sessionName: identity.sessionName,
        externalId: identity.externalId !== undefined,
        users: entry.refs,
        fetching: entry.inflight !== undefined,
      };
      if (creds) {
        item.accessKeyId = creds.accessKeyId;
        item.expiration = creds.expiration;
        item.lastUpdated = creds.lastUpdated;
        item.servableUntil = creds.expiration - entry.floorMs;
      }
      if (entry.refs > 0 && entry.dueAt !== undefined) item.refreshAt = entry.dueAt;
      if (failure) item.lastError = { code: failure.error.code, message: failure.error.message, failures: entry.failures, retryAt: failure.until };
      out.push(item);
    }
    return out;
  }

  /** Cancel every timer and in-flight call; later calls reject with code 'stopped'. Idempotent. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const entry of this.entries.values()) {
      entry.timer?.cancel();
      entry.timer = undefined;
      entry.inflight?.abort.abort(stoppedError());
    }
    this.entries.clear();
    this.deps.metrics.cachedIdentities.set(0);
  }

  private create(identity: CacheIdentity): Entry {
    const entry: Entry = {
      identity: { key: identity.key, roleArn: identity.roleArn, sessionName: identity.sessionName, ...(identity.externalId !== undefined ? { externalId: identity.externalId } : {}) },
      refs: 0,
      creds: undefined,
      floorMs: this.floorMs,
      inflight: undefined,
      failure: undefined,
      failures: 0,
      dueAt: undefined,
      timer: undefined,
    };
    this.entries.set(identity.key, entry);
    return entry;
  }

  private usable(entry: Entry, now: number): CachedCredentials | undefined {
    const creds = entry.creds;
    return creds && creds.expiration - now >= entry.floorMs ? creds : undefined;
  }

  /** The identity's one STS call: joined if running, started otherwise. */
  private fetch(entry: Entry, reason: FetchReason): Promise<CachedCredentials> {
    if (entry.inflight) return entry.inflight.promise;
    const { clock, sts, stsTimeoutMs, sessionDurationSec } = this.deps;
    const { identity } = entry;
    const abort = new AbortController();
    const started = clock.now();
    const deadline = clock.setTimeout(
      () => abort.abort(new StsError('timeout', `STS did not answer within ${stsTimeoutMs} ms`, true)),
      stsTimeoutMs,
    );
    let call: Promise<StsCredentials>;
    try {
      call = sts.assumeRole(
        {
          roleArn: identity.roleArn,
          sessionName: identity.sessionName,
          durationSeconds: sessionDurationSec,
          ...(identity.externalId !== undefined ? { externalId: identity.externalId } : {}),
        },
        abort.signal,
      );
    } catch (err) {
      call = Promise.reject(err);
    }
    const promise = raceAbort(call, abort.signal).then(
      (raw) => {
        deadline.cancel();
        return this.succeeded(entry, raw, started, reason);
      },
      (err: unknown) => {
        deadline.cancel();
        throw this.failed(entry, err, started, reason);
      },
    );
    promise.catch(noop); // callers may all have gone away
    entry.inflight = { promise, abort };
    return promise;
  }

  private succeeded(entry: Entry, raw: StsCredentials, started: number, reason: FetchReason): CachedCredentials {
    const now = this.deps.clock.now();
    const lifetime = raw.expiration - now;
    if (!(lifetime >= MIN_GRANTED_LIFETIME_MS)) {
      throw this.failed(
        entry,
        new StsError('short-lifetime', `STS granted credentials expiring at ${iso(raw.expiration)}, ${Math.round(lifetime / 1000)} s from now`, true),
        started,
        reason,
      );
    }
    entry.inflight = undefined;
    const { identity } = entry;
    const { metrics, logger } = this.deps;
    metrics.stsDuration.observe({ result: 'success' }, (now - started) / 1000);
    const creds: CachedCredentials = {
      accessKeyId: raw.accessKeyId,
      secretAccessKey: raw.secretAccessKey,
      sessionToken: raw.sessionToken,
      expiration: raw.expiration,
      lastUpdated: now,
    };
    entry.creds = creds;
    entry.floorMs = floorForLifetime(this.floorMs, lifetime);
    entry.failure = undefined;
    entry.failures = 0;
    const base = refreshDelayMs(lifetime, entry.floorMs);
    entry.dueAt = now + base - Math.floor(base * 0.05 * this.random());
    this.updateGauge();
    logger.info(
      { roleArn: identity.roleArn, sessionName: identity.sessionName, accessKeyId: creds.accessKeyId, expiration: iso(creds.expiration), reason, refreshAt: iso(entry.dueAt) },
      'assumed role',
    );
    this.arm(entry);
    return creds;
  }

  private failed(entry: Entry, err: unknown, started: number, reason: FetchReason): StsError {
    entry.inflight = undefined;
    const error = asStsError(err);
    if (this.stopped || error.code === 'stopped') return error;
    const now = this.deps.clock.now();
    const { metrics, logger } = this.deps;
    const { identity } = entry;
    metrics.stsDuration.observe({ result: 'error' }, (now - started) / 1000);
    metrics.stsErrors.inc({ code: error.code });
    entry.failures++;
    const window = this.backoffMs(entry.failures, error.code);
    entry.failure = { error, until: now + window };
    entry.dueAt = now + window + Math.floor(window * 0.1 * this.random());
    const kept = this.usable(entry, now);
    if (!kept && entry.creds) {
      entry.creds = undefined;
      this.updateGauge();
    }
    logger.warn(
      {
        roleArn: identity.roleArn,
        sessionName: identity.sessionName,
        code: error.code,
        retryable: error.retryable,
        error: error.message,
        reason,
        failures: entry.failures,
        backoffMs: window,
        ...(kept ? { servingAccessKeyId: kept.accessKeyId, servingUntil: iso(kept.expiration - entry.floorMs) } : {}),
      },
      kept ? 'credential refresh failed; serving the previous credentials' : 'assume role failed',
    );
    this.arm(entry);
    return error;
  }

  private backoffMs(failures: number, code: string): number {
    const exp = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** Math.min(failures - 1, 30));
    return THROTTLING_CODES.has(code) ? Math.min(this.backoffMaxMs, exp * 2) : exp;
  }

  /** (Re)set the entry's one timer: background fetch when retained, drop when nothing useful is left. */
  private arm(entry: Entry): void {
    entry.timer?.cancel();
    entry.timer = undefined;
    if (this.stopped || this.entries.get(entry.identity.key) !== entry || entry.inflight) return;
    const { clock } = this.deps;
    const now = clock.now();
    if (entry.refs > 0) {
      if (entry.dueAt === undefined) return; // not fetched yet: prefetch() or get() will
      entry.timer = clock.setTimeout(() => {
        entry.timer = undefined;
        if (this.entries.get(entry.identity.key) !== entry || entry.refs === 0) return;
        this.fetch(entry, entry.creds ? 'refresh' : 'retry').catch(noop);
      }, Math.max(0, entry.dueAt - now));
      return;
    }
    let keepUntil = -Infinity;
    if (entry.creds) keepUntil = entry.creds.expiration - entry.floorMs;
    if (entry.failure) keepUntil = Math.max(keepUntil, entry.failure.until + this.backoffMaxMs);
    // Still servable at exactly keepUntil: drop just after.
    if (keepUntil < now) {
      this.drop(entry, 'unused');
      return;
    }
    entry.timer = clock.setTimeout(() => {
      entry.timer = undefined;
      this.arm(entry);
    }, keepUntil - now + 1);
  }

  private drop(entry: Entry, why: 'released' | 'unused'): void {
    entry.timer?.cancel();
    entry.timer = undefined;
    if (this.entries.get(entry.identity.key) !== entry) return;
    this.entries.delete(entry.identity.key);
    if (entry.creds) this.updateGauge();
    this.deps.logger.debug({ roleArn: entry.identity.roleArn, sessionName: entry.identity.sessionName, why }, 'identity dropped from the credential cache');
  }

  private updateGauge(): void {
    let n = 0;
    for (const e of this.entries.values()) if (e.creds) n++;
    this.deps.metrics.cachedIdentities.set(n);
  }
}

function stoppedError(): StsError {
  return new StsError('stopped', 'credential cache stopped', false);
}

function asStsError(err: unknown): StsError {
  if (err instanceof StsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new StsError('unknown', message, true);
}


function iso(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString() : String(ms);
}
