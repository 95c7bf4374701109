/**
 * The credential cache: STS credentials per identity (role ARN + external ID + session name, and session tags
 * when --session-tags is on), fetched once for all concurrent callers, refreshed ahead of expiry while someone
 * retains the identity, and never handed out with less than the serving floor of lifetime left while STS works.
 *
 * Serving floor. floor = min(30 min, sessionDuration / 2). Thirty minutes keeps every SDK away from its own
 * refresh-before-expiry thresholds (botocore: 15 and 10 min); but a 15-minute session can never have 30 min
 * left, so short sessions get half their duration instead (7.5 min for 15 min). When STS grants less than asked,
 * credentials with under floor + 5 min of lifetime use half their own lifetime as their floor, so that fresh
 * credentials are always servable. Credentials granted with under 2 min of lifetime are refused.
 *
 * Outages: serving below the floor. While the identity's last STS call failed with a retryable error
 * (Throttling, 5xx, timeout, network…), credentials already held are served below the floor, down to
 * STALE_FLOOR_MS (5 min) before they expire, counted in kiam_credentials_stale_served_total and logged once per
 * identity and outage. SDKs cope with short-lived instance credentials: they extend them themselves when the
 * metadata service cannot refresh them (https://docs.aws.amazon.com/sdkref/latest/guide/feature-static-credentials.html).
 * A request that finds the credentials below the floor while STS is healthy waits for a fresh fetch instead, and
 * is served the old ones if that fetch fails retryably.
 * After a non-retryable error (AccessDenied…) the floor holds: that is not an outage but a refusal.
 *
 * Refresh. While an identity is retained, a background fetch runs at
 * issue + max(1 min, min(lifetime / 5, lifetime − floor − 5 min)), up to 5 % earlier (jitter), where lifetime
 * is what STS actually granted: 12 min into a 1 h session, so that an STS outage beginning just as a refresh is
 * due is bridged for lifetime − 12 min − 5 min = 43 min (serving below the floor), at 5 AssumeRole calls per hour.
 *
 * Negative cache and retries. A failed call is remembered per identity for a window counted from the call's
 * start; meanwhile get() answers at once (the credentials still servable, else the cached error). Windows, each
 * jittered up to 25 % longer: retryable errors 5 s then 10 s (Throttling 10 s from the first), so a failing
 * identity costs at most one call per 5 s and is served again within 12.5 s of STS recovering; non-retryable
 * errors 30 s doubling to 2 min. Retained identities retry by themselves when the window ends; others on the next
 * request. The first failure of a streak (and each change of error code) is logged at warn (error when not
 * retryable) with the fix; repeats at debug.
 *
 * Lifetime of entries. retain()/release() count users; when the count drops to zero the identity is dropped
 * at once (timers cancelled). An identity fetched by get() or prefetch() without being retained is kept only
 * as long as it has servable credentials (or, after a failure, its backoff state), and is never refreshed.
 *
 * The STS call of an identity is detached from every caller: it has its own timeout, and a caller that gives up
 * (its AbortSignal fires) only stops waiting itself.
 */
import type { Logger } from 'pino';
import { raceAbort, type Clock, type Timer } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import { stsErrorFix, THROTTLING_CODES } from './sts-errors.ts';
import { StsError, type SessionTag, type StsCredentials, type StsGateway } from './sts.ts';

/** What the cache needs to know of an identity (structurally a RoleIdentity). */
export interface CacheIdentity {
  /** Stable key from roleArn, externalId, sessionName (and the session tags, when there are any). */
  key: string;
  roleArn: string;
  externalId?: string;
  sessionName: string;
  /** STS session tags (--session-tags). */
  tags?: readonly SessionTag[];
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
  metrics: Pick<Metrics, 'cacheHits' | 'cacheMisses' | 'stsDuration' | 'stsErrors' | 'cachedIdentities' | 'staleServed' | 'stsFailingIdentities'>;
  logger: Logger;
  /** DurationSeconds asked of STS (900…43200). */
  sessionDurationSec: number;
  /** Deadline of one STS call, independent of any caller. */
  stsTimeoutMs: number;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
}

const SECOND = 1000;
const MINUTE = 60_000;
/** The serving floor never exceeds this. */
export const MAX_SERVING_FLOOR_MS = 30 * MINUTE;
/** While STS fails retryably, credentials are served down to this much lifetime left (never less). */
export const STALE_FLOOR_MS = 5 * MINUTE;
/** Credentials granted with less lifetime than this are refused ('short-lifetime'). */
export const MIN_GRANTED_LIFETIME_MS = 2 * MINUTE;
const REFRESH_SLACK_MS = 5 * MINUTE;
const MIN_REFRESH_MS = MINUTE;
/** Retryable failures: the first window, and the cap (Throttling starts at the cap). At most one call per 5 s. */
export const RETRY_WINDOW_MS = 5 * SECOND;
export const RETRY_WINDOW_MAX_MS = 10 * SECOND;
/** Non-retryable failures (AccessDenied, ValidationError…): a configuration problem, retried more slowly. */
export const REFUSED_WINDOW_MS = 30 * SECOND;
export const REFUSED_WINDOW_MAX_MS = 2 * MINUTE;
/** Windows are stretched by up to this fraction (jitter), so identities that failed together do not retry together. */
export const BACKOFF_JITTER = 0.25;

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
  return Math.max(MIN_REFRESH_MS, Math.min(lifetimeMs / 5, lifetimeMs - floorMs - REFRESH_SLACK_MS));
}

/** Negative-cache window after the n-th consecutive failure (n ≥ 1), before jitter. */
export function backoffMs(failures: number, error: Pick<StsError, 'code' | 'retryable'>): number {
  const n = Math.min(Math.max(failures, 1) - 1, 30);
  if (!error.retryable) return Math.min(REFUSED_WINDOW_MAX_MS, REFUSED_WINDOW_MS * 2 ** n);
  if (THROTTLING_CODES.has(error.code)) return RETRY_WINDOW_MAX_MS;
  return Math.min(RETRY_WINDOW_MAX_MS, RETRY_WINDOW_MS * 2 ** n);
}

/** One identity as CredentialCache.snapshot() reports it (times in epoch ms). */
export interface IdentitySnapshot {
  roleArn: string;
  sessionName: string;
  /** Whether an external ID is part of the identity (its value is not reported). */
  externalId: boolean;
  /** The session tags sent with it (--session-tags). */
  tags?: SessionTag[];
  /** Live pods retaining the identity (0: kept only while its credentials last). */
  users: number;
  /** An STS call for it is running. */
  fetching: boolean;
  accessKeyId?: string;
  expiration?: number;
  lastUpdated?: number;
  /** Served until then (expiration minus the floor) while STS works; a refresh must land before. */
  servableUntil?: number;
  /** While STS fails retryably: served until then (expiration minus 5 min). */
  staleUntil?: number;
  /** Being served below the floor right now, because STS fails. */
  stale: boolean;
  /** Next background refresh or retry (retained identities only). */
  refreshAt?: number;
  /** The last successful STS call for it. */
  lastSuccessAt?: number;
  /** STS calls that failed in a row (0 after a success). */
  consecutiveFailures: number;
  /** The most recent failure, even if a success followed. */
  lastErrorCode?: string;
  lastErrorAt?: number;
  /** The last failed STS call, while it is the latest outcome. */
  lastError?: { code: string; message: string; failures: number; retryAt: number; retryable: boolean };
}

type FetchReason = 'request' | 'prefetch' | 'refresh' | 'retry';

interface Entry {
  readonly identity: CacheIdentity;
  refs: number;
  creds: CachedCredentials | undefined;
  /** Floor applying to creds. */
  floorMs: number;
  inflight: { promise: Promise<CachedCredentials>; abort: AbortController } | undefined;
  /** The latest outcome was this failure; no new call before `until`. */
  failure: { error: StsError; until: number } | undefined;
  failures: number;
  /** When a retained entry should fetch in the background next (refresh or retry). */
  dueAt: number | undefined;
  timer: Timer | undefined;
  lastSuccessAt: number | undefined;
  lastErrorCode: string | undefined;
  lastErrorAt: number | undefined;
  /** The error code already logged at warn in this failure streak. */
  loggedCode: string | undefined;
  /** Serving below the floor has been logged in this failure streak. */
  staleLogged: boolean;
}

const noop = () => {};

export class CredentialCache {
  /** The serving floor in ms for the configured session duration. */
  readonly floorMs: number;
  private readonly entries = new Map<string, Entry>();
  private readonly random: () => number;
  private stopped = false;

  constructor(private readonly deps: CredentialCacheDeps) {
    const { sessionDurationSec, stsTimeoutMs } = deps;
    if (!Number.isInteger(sessionDurationSec) || sessionDurationSec < 900 || sessionDurationSec > 43200) {
      throw new Error(`CredentialCache: sessionDurationSec must be a whole number in 900..43200, got ${sessionDurationSec}`);
    }
    if (!(stsTimeoutMs > 0)) throw new Error(`CredentialCache: stsTimeoutMs must be positive, got ${stsTimeoutMs}`);
    this.floorMs = servingFloorMs(sessionDurationSec);
    this.random = deps.random ?? Math.random;
    this.updateGauges(); // both kinds of failing identities at 0, not absent
  }

  /**
   * Credentials with at least the floor of lifetime left (or, while STS fails retryably, at least 5 min). Shares
   * the identity's in-flight STS call; answers at once while the identity is in its negative-cache window (what
   * is still servable, else the cached StsError). A caller's signal only ends its own wait (rejecting with the
   * signal's reason).
   */
  get(identity: CacheIdentity, signal?: AbortSignal): Promise<CachedCredentials> {
    if (this.stopped) return Promise.reject(stoppedError());
    const now = this.deps.clock.now();
    let entry = this.entries.get(identity.key);
    if (entry) {
      const creds = this.fresh(entry, now);
      if (creds) {
        this.deps.metrics.cacheHits.inc();
        return Promise.resolve(creds);
      }
      const stale = this.stale(entry, now);
      if (stale) {
        // STS is failing: answer now, and try again in the background once the window allows.
        if (!entry.inflight && entry.failure && now >= entry.failure.until) this.fetch(entry, 'request').catch(noop);
        this.servedStale(entry, stale, now);
        return Promise.resolve(stale);
      }
      if (!entry.inflight && entry.failure && now < entry.failure.until) return Promise.reject(entry.failure.error);
    } else {
      entry = this.create(identity);
    }
    this.deps.metrics.cacheMisses.inc();
    const found = entry;
    // Below the floor while STS seemed healthy: if this fetch fails retryably, the old credentials are still better than a 503.
    const shared = this.fetch(found, 'request').catch((err: unknown) => {
      const now2 = this.deps.clock.now();
      const stale = this.stale(found, now2);
      if (!stale) throw err;
      this.servedStale(found, stale, now2, false);
      return stale;
    });
    shared.catch(noop); // as the shared call's own promise: a caller that has not awaited yet is no unhandled rejection
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
    if (!entry) return undefined;
    const now = this.deps.clock.now();
    const creds = this.fresh(entry, now);
    if (creds) {
      this.deps.metrics.cacheHits.inc();
      return creds;
    }
    // Below the floor: get() decides (it may also start a retry); it answers at once in an outage anyway.
    return undefined;
  }

  /** Start fetching an identity nobody is waiting for yet (no-op when servable or backing off). Never rejects. */
  async prefetch(identity: CacheIdentity): Promise<void> {
    if (this.stopped) return;
    const entry = this.entries.get(identity.key) ?? this.create(identity);
    const now = this.deps.clock.now();
    if (this.fresh(entry, now)) return;
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
    const now = this.deps.clock.now();
    for (const entry of this.entries.values()) {
      const { identity, creds, failure } = entry;
      const item: IdentitySnapshot = {
        roleArn: identity.roleArn,
        sessionName: identity.sessionName,
        externalId: identity.externalId !== undefined,
        users: entry.refs,
        fetching: entry.inflight !== undefined,
        stale: !this.fresh(entry, now) && this.stale(entry, now) !== undefined,
        consecutiveFailures: entry.failures,
      };
      if (identity.tags) item.tags = identity.tags.map((t) => ({ key: t.key, value: t.value }));
      if (creds) {
        item.accessKeyId = creds.accessKeyId;
        item.expiration = creds.expiration;
        item.lastUpdated = creds.lastUpdated;
        item.servableUntil = creds.expiration - entry.floorMs;
        if (this.inOutage(entry)) item.staleUntil = creds.expiration - this.staleFloor(entry);
      }
      if (entry.refs > 0 && entry.dueAt !== undefined) item.refreshAt = entry.dueAt;
      if (entry.lastSuccessAt !== undefined) item.lastSuccessAt = entry.lastSuccessAt;
      if (entry.lastErrorCode !== undefined) item.lastErrorCode = entry.lastErrorCode;
      if (entry.lastErrorAt !== undefined) item.lastErrorAt = entry.lastErrorAt;
      if (failure) {
        item.lastError = { code: failure.error.code, message: failure.error.message, failures: entry.failures, retryAt: failure.until, retryable: failure.error.retryable };
      }
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
    this.updateGauges();
  }

  private create(identity: CacheIdentity): Entry {
    const entry: Entry = {
      identity: {
        key: identity.key,
        roleArn: identity.roleArn,
        sessionName: identity.sessionName,
        ...(identity.externalId !== undefined ? { externalId: identity.externalId } : {}),
        ...(identity.tags && identity.tags.length > 0 ? { tags: identity.tags.map((t) => ({ key: t.key, value: t.value })) } : {}),
      },
      refs: 0,
      creds: undefined,
      floorMs: this.floorMs,
      inflight: undefined,
      failure: undefined,
      failures: 0,
      dueAt: undefined,
      timer: undefined,
      lastSuccessAt: undefined,
      lastErrorCode: undefined,
      lastErrorAt: undefined,
      loggedCode: undefined,
      staleLogged: false,
    };
    this.entries.set(identity.key, entry);
    return entry;
  }

  /** Credentials with at least the floor left. */
  private fresh(entry: Entry, now: number): CachedCredentials | undefined {
    const creds = entry.creds;
    return creds && creds.expiration - now >= entry.floorMs ? creds : undefined;
  }

  /** The latest STS outcome for this identity is a retryable failure: an outage, not a refusal. */
  private inOutage(entry: Entry): boolean {
    return entry.failure !== undefined && entry.failure.error.retryable;
  }

  private staleFloor(entry: Entry): number {
    return Math.min(STALE_FLOOR_MS, entry.floorMs);
  }

  /** Credentials below the floor that may still be served because STS is failing retryably. */
  private stale(entry: Entry, now: number): CachedCredentials | undefined {
    const creds = entry.creds;
    if (!creds || !this.inOutage(entry)) return undefined;
    const left = creds.expiration - now;
    return left < entry.floorMs && left >= this.staleFloor(entry) ? creds : undefined;
  }

  /** Count (as a hit, unless the request was already counted as a miss) and log once per outage. */
  private servedStale(entry: Entry, creds: CachedCredentials, now: number, hit = true): void {
    const { metrics, logger } = this.deps;
    if (hit) metrics.cacheHits.inc();
    metrics.staleServed.inc();
    if (entry.staleLogged) return;
    entry.staleLogged = true;
    const { identity, failure } = entry;
    logger.warn(
      {
        roleArn: identity.roleArn,
        sessionName: identity.sessionName,
        accessKeyId: creds.accessKeyId,
        expiration: iso(creds.expiration),
        servingUntil: iso(creds.expiration - this.staleFloor(entry)),
        minutesLeft: Math.floor((creds.expiration - now) / MINUTE),
        code: failure?.error.code,
        failures: entry.failures,
      },
      'STS is failing: serving credentials below the 30-minute floor until 5 minutes before they expire',
    );
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
          ...(identity.tags ? { tags: identity.tags } : {}),
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
    const recovered = entry.failures;
    entry.creds = creds;
    entry.floorMs = floorForLifetime(this.floorMs, lifetime);
    entry.failure = undefined;
    entry.failures = 0;
    entry.loggedCode = undefined;
    entry.staleLogged = false;
    entry.lastSuccessAt = now;
    const base = refreshDelayMs(lifetime, entry.floorMs);
    entry.dueAt = now + base - Math.floor(base * 0.05 * this.random());
    this.updateGauges();
    logger.info(
      {
        roleArn: identity.roleArn,
        sessionName: identity.sessionName,
        accessKeyId: creds.accessKeyId,
        expiration: iso(creds.expiration),
        reason,
        refreshAt: iso(entry.dueAt),
        ...(recovered > 0 ? { afterFailures: recovered } : {}),
      },
      recovered > 0 ? 'assumed role: STS answers again' : 'assumed role',
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
    entry.lastErrorCode = error.code;
    entry.lastErrorAt = now;
    // Counted from the call's start, so a slow failure (a timeout) does not stretch the time to recovery.
    const window = Math.round(backoffMs(entry.failures, error) * (1 + BACKOFF_JITTER * this.random()));
    const until = Math.max(now, started + window);
    entry.failure = { error, until };
    entry.dueAt = until;
    const kept = this.fresh(entry, now) ?? this.stale(entry, now);
    if (!kept && entry.creds) entry.creds = undefined;
    this.updateGauges();
    const details = {
      roleArn: identity.roleArn,
      sessionName: identity.sessionName,
      code: error.code,
      retryable: error.retryable,
      error: error.message,
      reason,
      failures: entry.failures,
      retryAt: iso(until),
      ...(kept ? { servingAccessKeyId: kept.accessKeyId, servingUntil: iso(kept.expiration - (this.inOutage(entry) ? this.staleFloor(entry) : entry.floorMs)) } : {}),
    };
    const message = kept ? 'credential refresh failed; serving the previous credentials' : 'assume role failed';
    if (entry.loggedCode === error.code) {
      logger.debug(details, message);
    } else {
      // Once per identity and error code in a streak, with what to do about it.
      entry.loggedCode = error.code;
      const fix = stsErrorFix(error.code);
      const withFix = fix ? { ...details, fix } : details;
      if (error.retryable) logger.warn(withFix, message);
      else logger.error(withFix, message);
    }
    this.arm(entry);
    return error;
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
    if (entry.creds) keepUntil = entry.creds.expiration - (this.inOutage(entry) ? this.staleFloor(entry) : entry.floorMs);
    // Remember the backoff a little beyond its window, so that the next failure backs off further.
    if (entry.failure) keepUntil = Math.max(keepUntil, entry.failure.until + REFUSED_WINDOW_MAX_MS);
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
    this.updateGauges();
    this.deps.logger.debug({ roleArn: entry.identity.roleArn, sessionName: entry.identity.sessionName, why }, 'identity dropped from the credential cache');
  }

  /** Identities holding credentials; identities whose last STS call failed, by kind. O(identities), off the request path. */
  private updateGauges(): void {
    let cached = 0;
    let retrying = 0;
    let refused = 0;
    for (const e of this.entries.values()) {
      if (e.creds) cached++;
      if (e.failure?.error.retryable) retrying++;
      else if (e.failure) refused++;
    }
    const { metrics } = this.deps;
    metrics.cachedIdentities.set(cached);
    metrics.stsFailingIdentities.set({ kind: 'retryable' }, retrying);
    metrics.stsFailingIdentities.set({ kind: 'non-retryable' }, refused);
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
