/**
 * Who is asking, from the token it sends rather than the address it sends from (the container-credentials path):
 *
 *   token ─▶ TokenReview (cached)  ─▶ the pod it is bound to (name, uid; the node when the API server says it)
 *         ─▶ that pod, a live pod of this node, with that uid (the resolver's index; hostNetwork pods included)
 *         ─▶ its role: the pod's iam.amazonaws.com/role, else its service account's ─▶ the namespace policy
 *
 * A token copied to another pod still names the pod it was issued to: the answer is always that pod's.
 *
 * TokenReviews are cached by the token's SHA-256: an authenticated one until 30 s before the token's own expiry
 * (read from its payload, unverified, only to bound the cache), 10 min at most (a token whose exp cannot be read:
 * 60 s); an unauthenticated one 10 s. One review per token at a time; at most reviewRate a second (burst
 * reviewBurst) reach the API server, beyond which a token not cached is answered "unavailable" (503, retried by
 * the SDKs) while cached ones are still served. Tokens whose unverified payload is already expired or names
 * none of our audiences are refused without asking: the API server could only say no.
 *
 * Never logs a token: only the first 8 hex digits of its SHA-256 (tokenId). Refusals are the caller's to count and
 * log (src/server/container-credentials.ts); the verdict carries the detail.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { raceAbort, type Clock } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import type { PodClaim, PodFind } from '../resolver/lookup.ts';
import type { PodInfo } from '../resolver/pod-index.ts';
import { roleFor, type ServiceAccountRole } from '../resolver/service-accounts.ts';
import type { Lookup } from '../resolver/types.ts';
import type { TokenReviewer, TokenReviewResult } from './token-review.ts';

/** Why an authenticated token gets nothing (403). */
export type TokenRefusal = 'other-node' | 'pod-not-found' | 'pod-not-live' | 'uid-mismatch' | 'no-pod-claim';
/** Why a token is not authenticated (401). */
export type UnauthenticatedCode = 'malformed' | 'expired' | 'wrong-audience' | 'invalid';
/** Why no answer can be given now (503). */
export type UnavailableCode = 'review-failed' | 'rate-limited' | 'pod-lookup-failed' | 'service-account-failed' | 'aborted';

export type TokenVerdict =
  /** lookup.kind may be 'role' | 'no-role' | 'denied' (the policy's answer). roleFrom: where the role came from. */
  | { kind: 'ok'; pod: PodInfo; lookup: Lookup; roleFrom: 'pod' | 'service-account' | 'none'; tokenId: string }
  | { kind: 'unauthenticated'; reason: string; code: UnauthenticatedCode; tokenId: string }
  | { kind: 'forbidden'; code: TokenRefusal; reason: string; tokenId: string }
  | { kind: 'unavailable'; reason: string; code: UnavailableCode; tokenId: string };

/** The resolver's part used here (src/resolver/lookup.ts, Resolver). */
export interface TokenPodResolver {
  findPod(claim: PodClaim, signal?: AbortSignal): Promise<PodFind>;
  /** findPod()'s answer when the index alone can give it (fresh, and the pod in it), else undefined. */
  peekPod?(claim: PodClaim): PodFind | undefined;
  namespaceAnnotations(name: string): Readonly<Record<string, string>> | undefined;
}

/** src/resolver/service-accounts.ts, ServiceAccountRoles. */
export interface ServiceAccountRoleSource {
  get(namespace: string, name: string, signal?: AbortSignal): Promise<ServiceAccountRole>;
  /** get()'s answer when it would come from the cache without asking, else undefined. */
  fresh?(namespace: string, name: string): ServiceAccountRole | undefined;
}

/** src/resolver/policy.ts, Policy. */
export interface TokenPolicy {
  evaluate(pod: PodInfo, namespaceAnnotations: Readonly<Record<string, string>> | undefined): Lookup;
}

export interface TokenIdentityOptions {
  reviewer: TokenReviewer;
  resolver: TokenPodResolver;
  serviceAccounts: ServiceAccountRoleSource;
  policy: TokenPolicy;
  /** spec.audiences of each TokenReview; the token must be valid for one of them. */
  audiences: string[];
  /** This node: the pod must be bound to it. */
  nodeName: string;
  clock: Clock;
  metrics: Pick<Metrics, 'tokenReviews' | 'tokenReviewCacheEntries'>;
  logger: Logger;
  /** TokenReviews a second at most (token bucket). Default 20. */
  reviewRate?: number;
  /** And as many at once. Default 40. */
  reviewBurst?: number;
  /** Cached reviews at most (least recently used forgotten first). Default 4096. */
  cacheSize?: number;
  /** An authenticated review is cached this long at most. Default 10 min. */
  maxCacheMs?: number;
  /** …and only until this long before the token expires. Default 30 s. */
  expiryMarginMs?: number;
  /** …or this long when the token's exp cannot be read. Default 60 s. */
  noExpiryCacheMs?: number;
  /** An unauthenticated review is cached this long. Default 10 s. */
  negativeCacheMs?: number;
}

/** For /debug/state and kiam doctor. */
export interface TokenIdentityState {
  audiences: string[];
  /** Reviews cached (positive and negative). */
  cacheEntries: number;
  /** identify() verdicts: ok, and the others by code. */
  validations: { ok: number; failed: Record<string, number> };
  /** TokenReview calls by result (limited: not sent, over the rate bound). */
  reviews: { ok: number; unauthenticated: number; error: number; limited: number };
  /** TokenReviews sent in the last 10 s, per second. */
  reviewsPerSecond: number;
  lastError?: { at: string; message: string };
}

type Auth = { kind: 'ok'; result: TokenReviewResult } | { kind: 'unauthenticated'; code: UnauthenticatedCode; reason: string } | { kind: 'unavailable'; code: UnavailableCode; reason: string };

interface CacheEntry {
  until: number;
  auth: Auth & { kind: 'ok' | 'unauthenticated' };
}

const RATE_WINDOW_MS = 10_000;
const SWEEP_EVERY_MS = 60_000;

/** The first 8 hex digits of the token's SHA-256: how a token is named in logs. */
export function tokenId(token: string): string {
  return sha256(token).slice(0, 8);
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The payload of a compact JWS, unverified (only to bound the cache and refuse early), or undefined. */
export function unverifiedClaims(token: string): { exp?: number; aud?: string[] } | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => p === '' || !/^[A-Za-z0-9_-]+$/.test(p))) return undefined;
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return undefined;
  const { exp, aud } = payload as { exp?: unknown; aud?: unknown };
  const out: { exp?: number; aud?: string[] } = {};
  if (typeof exp === 'number' && Number.isFinite(exp)) out.exp = exp;
  if (typeof aud === 'string') out.aud = [aud];
  else if (Array.isArray(aud)) out.aud = aud.filter((a): a is string => typeof a === 'string');
  return out;
}

function unauthenticatedCode(error: string | undefined): UnauthenticatedCode {
  if (error === undefined) return 'invalid';
  if (/expired/i.test(error)) return 'expired';
  if (/audience/i.test(error)) return 'wrong-audience';
  return 'invalid';
}

export class TokenIdentity {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<Auth>>();
  private readonly evaluated = new WeakMap<PodInfo, { role: string | undefined; externalId: string | undefined; namespace: Readonly<Record<string, string>> | undefined; lookup: Lookup }>();
  private readonly audiences: string[];
  private readonly reviewRate: number;
  private readonly reviewBurst: number;
  private readonly cacheSize: number;
  private readonly maxCacheMs: number;
  private readonly expiryMarginMs: number;
  private readonly noExpiryCacheMs: number;
  private readonly negativeCacheMs: number;
  private bucket: number;
  private bucketAt: number;
  private sweptAt: number;
  private readonly reviewTimes: number[] = [];
  private readonly reviewCounts = { ok: 0, unauthenticated: 0, error: 0, limited: 0 };
  private readonly verdicts = { ok: 0, failed: {} as Record<string, number> };
  private lastError: { at: number; message: string } | undefined;
  /** The review API's state as last logged: failures and limiting log at warn once per episode. */
  private reviewTrouble: 'failing' | 'limited' | undefined;

  constructor(private readonly opts: TokenIdentityOptions) {
    if (opts.audiences.length === 0) throw new Error('token identity: at least one audience is required');
    this.audiences = [...opts.audiences];
    this.reviewRate = opts.reviewRate ?? 20;
    this.reviewBurst = opts.reviewBurst ?? 40;
    this.cacheSize = opts.cacheSize ?? 4096;
    this.maxCacheMs = opts.maxCacheMs ?? 600_000;
    this.expiryMarginMs = opts.expiryMarginMs ?? 30_000;
    this.noExpiryCacheMs = opts.noExpiryCacheMs ?? 60_000;
    this.negativeCacheMs = opts.negativeCacheMs ?? 10_000;
    this.bucket = this.reviewBurst;
    this.bucketAt = opts.clock.now();
    this.sweptAt = this.bucketAt;
  }

  /** The pod token names and its role, or why not. Never rejects. */
  async identify(token: string, signal?: AbortSignal): Promise<TokenVerdict> {
    const hash = sha256(token);
    const id = hash.slice(0, 8);
    const verdict = await this.decide(token, hash, id, signal).catch(
      (err: unknown): TokenVerdict => ({ kind: 'unavailable', code: signal?.aborted ? 'aborted' : 'review-failed', reason: errorText(err), tokenId: id }),
    );
    if (verdict.kind === 'ok') this.verdicts.ok++;
    else {
      const code = verdict.code;
      this.verdicts.failed[code] = (this.verdicts.failed[code] ?? 0) + 1;
      this.opts.logger.debug({ token: id, verdict: verdict.kind, code, detail: verdict.reason }, 'token refused');
    }
    return verdict;
  }

  snapshot(): TokenIdentityState {
    const now = this.opts.clock.now();
    this.trimReviewTimes(now);
    const state: TokenIdentityState = {
      audiences: [...this.audiences],
      cacheEntries: this.cache.size,
      validations: { ok: this.verdicts.ok, failed: { ...this.verdicts.failed } },
      reviews: { ...this.reviewCounts },
      reviewsPerSecond: this.reviewTimes.length / (RATE_WINDOW_MS / 1000),
    };
    if (this.lastError) state.lastError = { at: new Date(this.lastError.at).toISOString(), message: this.lastError.message };
    return state;
  }

  /**
   * identify()'s answer when every input is at hand without waiting: the token's review cached, the pod in the fresh
   * index, its service account's role cached when it needs one. Only an 'ok' verdict is given; anything else
   * (undefined) goes through identify(), which also logs and counts refusals. For the listener's warm path.
   */
  peek(token: string): (TokenVerdict & { kind: 'ok' }) | undefined {
    const { resolver, serviceAccounts, clock } = this.opts;
    if (!resolver.peekPod) return undefined;
    const hash = sha256(token);
    const entry = this.cache.get(hash);
    if (!entry || entry.until <= clock.now() || entry.auth.kind !== 'ok') return undefined;
    const id = hash.slice(0, 8);
    const claimed = this.claimOf(entry.auth.result, id);
    if ('kind' in claimed) return undefined;
    const found = resolver.peekPod(claimed.claim);
    if (found === undefined || found.kind === 'unavailable') return undefined;
    const pod = this.checkFound(found, claimed, hash, id);
    if ('kind' in pod) return undefined;
    let sa: ServiceAccountRole | undefined;
    if (pod.role === undefined) {
      sa = serviceAccounts.fresh?.(pod.namespace, pod.serviceAccount);
      if (sa === undefined) return undefined;
    }
    const verdict = this.finish(pod, sa, id);
    this.verdicts.ok++;
    return verdict;
  }

  private async decide(token: string, hash: string, id: string, signal: AbortSignal | undefined): Promise<TokenVerdict> {
    const auth = await this.authenticate(token, hash, signal);
    if (auth.kind === 'unauthenticated') return { kind: 'unauthenticated', code: auth.code, reason: auth.reason, tokenId: id };
    if (auth.kind === 'unavailable') return { kind: 'unavailable', code: auth.code, reason: auth.reason, tokenId: id };
    const claimed = this.claimOf(auth.result, id);
    if ('kind' in claimed) return claimed;
    const found = await this.opts.resolver.findPod(claimed.claim, signal);
    if (found.kind === 'unavailable') return { kind: 'unavailable', code: signal?.aborted ? 'aborted' : 'pod-lookup-failed', reason: `${claimed.named}: ${found.reason}`, tokenId: id };
    const pod = this.checkFound(found, claimed, hash, id);
    if ('kind' in pod) return pod;
    let sa: ServiceAccountRole | undefined;
    if (pod.role === undefined) {
      try {
        sa = await this.opts.serviceAccounts.get(pod.namespace, pod.serviceAccount, signal);
      } catch (err) {
        return { kind: 'unavailable', code: signal?.aborted ? 'aborted' : 'service-account-failed', reason: `${claimed.named}: ${errorText(err)}`, tokenId: id };
      }
    }
    return this.finish(pod, sa, id);
  }

  /** The pod an authenticated token is bound to, or why there is none to serve (no pod claim, another node's). */
  private claimOf(r: TokenReviewResult, id: string): { claim: PodClaim; named: string } | TokenVerdict {
    const who = r.username ?? 'an unnamed user';
    if (r.namespace === undefined || r.podName === undefined || r.podUid === undefined) {
      return { kind: 'forbidden', code: 'no-pod-claim', reason: `token of ${who} is bound to no pod`, tokenId: id };
    }
    const claim: PodClaim = { uid: r.podUid, namespace: r.namespace, name: r.podName };
    const named = `pod ${claim.namespace}/${claim.name} (uid ${claim.uid})`;
    const { nodeName } = this.opts;
    if (r.nodeName !== undefined && r.nodeName !== nodeName) {
      return { kind: 'forbidden', code: 'other-node', reason: `token of ${named} is bound to node ${r.nodeName}, not ${nodeName}`, tokenId: id };
    }
    return { claim, named };
  }

  /** The found pod if it is the claimed one, of this node, not finished; else why not. */
  private checkFound(found: Exclude<PodFind, { kind: 'unavailable' }>, claimed: { claim: PodClaim; named: string }, hash: string, id: string): PodInfo | TokenVerdict {
    const { claim, named } = claimed;
    const { nodeName } = this.opts;
    if (found.kind === 'not-found') {
      // The pod is gone: the next request asks the API server again, which then refuses the token itself.
      this.forget(hash);
      return { kind: 'forbidden', code: 'pod-not-found', reason: `${named} of the token is no pod the API server or this node's watch knows`, tokenId: id };
    }
    const { pod } = found;
    if (pod.uid !== claim.uid || pod.namespace !== claim.namespace || pod.name !== claim.name) {
      this.forget(hash);
      return { kind: 'forbidden', code: 'uid-mismatch', reason: `${named} of the token is gone: ${pod.namespace}/${pod.name} is now uid ${pod.uid}`, tokenId: id };
    }
    if (found.nodeName !== undefined && found.nodeName !== nodeName) {
      return { kind: 'forbidden', code: 'other-node', reason: `${named} runs on node ${found.nodeName || '(none yet)'}, not ${nodeName}`, tokenId: id };
    }
    // Terminating pods keep their credentials until their phase is terminal (as on the metadata path).
    if (pod.phase === 'Succeeded' || pod.phase === 'Failed') {
      return { kind: 'forbidden', code: 'pod-not-live', reason: `${named} has finished (${pod.phase})`, tokenId: id };
    }
    return pod;
  }

  /** The verdict for a live pod of ours: its own role, else its service account's (sa, when it has no role). */
  private finish(pod: PodInfo, sa: ServiceAccountRole | undefined, id: string): TokenVerdict & { kind: 'ok' } {
    const { role, externalId, from } = roleFor(pod, sa);
    return { kind: 'ok', pod, lookup: this.evaluate(pod, role, externalId), roleFrom: from, tokenId: id };
  }

  /**
   * The policy's answer for pod with role and externalId filled in. The policy is pure: its last answer for the same
   * pod object (the watch replaces it on every change), role, external ID and namespace annotations object stands.
   */
  private evaluate(pod: PodInfo, role: string | undefined, externalId: string | undefined): Lookup {
    const namespace = this.opts.resolver.namespaceAnnotations(pod.namespace);
    const last = this.evaluated.get(pod);
    if (last && last.role === role && last.externalId === externalId && last.namespace === namespace) return last.lookup;
    const effective: PodInfo = role === pod.role && externalId === pod.externalId ? pod : withRole(pod, role, externalId);
    const lookup = this.opts.policy.evaluate(effective, namespace);
    this.evaluated.set(pod, { role, externalId, namespace, lookup });
    return lookup;
  }

  /** The TokenReview's answer for token: cached, shared with concurrent callers, or asked (within the rate bound). */
  private async authenticate(token: string, hash: string, signal: AbortSignal | undefined): Promise<Auth> {
    const now = this.opts.clock.now();
    const entry = this.cache.get(hash);
    if (entry) {
      if (entry.until > now) {
        this.cache.delete(hash);
        this.cache.set(hash, entry);
        return entry.auth;
      }
      this.forget(hash);
    }
    const claims = unverifiedClaims(token);
    if (!claims) return { kind: 'unauthenticated', code: 'malformed', reason: 'not a JWT' };
    if (claims.exp !== undefined && claims.exp * 1000 <= now) {
      return { kind: 'unauthenticated', code: 'expired', reason: `token expired at ${new Date(claims.exp * 1000).toISOString()} (unverified)` };
    }
    if (claims.aud !== undefined && !claims.aud.some((a) => this.audiences.includes(a))) {
      return { kind: 'unauthenticated', code: 'wrong-audience', reason: `token audiences ${JSON.stringify(claims.aud.slice(0, 5))} include none of ${JSON.stringify(this.audiences)} (unverified)` };
    }
    let pending = this.inflight.get(hash);
    if (!pending) {
      if (!this.takeReviewToken(now)) {
        this.count('limited');
        this.trouble('limited', `more than ${this.reviewRate} TokenReviews a second: new tokens are answered 503 until the rate falls`);
        return { kind: 'unavailable', code: 'rate-limited', reason: `TokenReview rate bound (${this.reviewRate}/s, burst ${this.reviewBurst}) reached` };
      }
      pending = this.review(token, hash, claims.exp).finally(() => this.inflight.delete(hash));
      this.inflight.set(hash, pending);
    }
    return signal ? raceAbort(pending, signal) : pending;
  }

  /** One TokenReview, detached from the callers (they share it); its answer cached. Never rejects. */
  private async review(token: string, hash: string, exp: number | undefined): Promise<Auth> {
    const { clock, reviewer, logger } = this.opts;
    const startedAt = clock.now();
    this.trimReviewTimes(startedAt);
    this.reviewTimes.push(startedAt);
    let result: TokenReviewResult;
    try {
      result = await reviewer.review(token, this.audiences);
    } catch (err) {
      const message = errorText(err);
      this.count('error');
      this.lastError = { at: clock.now(), message };
      this.trouble('failing', `TokenReview failed: ${message}`);
      return { kind: 'unavailable', code: 'review-failed', reason: `TokenReview failed: ${message}` };
    }
    if (this.reviewTrouble === 'failing') {
      this.reviewTrouble = undefined;
      logger.info('TokenReview answering again');
    }
    const now = clock.now();
    let auth: CacheEntry['auth'];
    let until: number;
    const granted = (result.audiences ?? []).filter((a) => this.audiences.includes(a));
    if (!result.authenticated) {
      auth = { kind: 'unauthenticated', code: unauthenticatedCode(result.error), reason: `TokenReview: ${result.error ?? 'not authenticated'}` };
      until = now + this.negativeCacheMs;
      this.count('unauthenticated');
    } else if (granted.length === 0) {
      // Authenticated for none of the audiences asked: the API server should not say so, but then it is not ours.
      auth = { kind: 'unauthenticated', code: 'wrong-audience', reason: `TokenReview: authenticated for ${JSON.stringify(result.audiences ?? [])}, none of ${JSON.stringify(this.audiences)}` };
      until = now + this.negativeCacheMs;
      this.count('unauthenticated');
    } else {
      auth = { kind: 'ok', result };
      until = exp === undefined ? startedAt + this.noExpiryCacheMs : Math.min(exp * 1000 - this.expiryMarginMs, startedAt + this.maxCacheMs);
      this.count('ok');
    }
    if (until > now) this.remember(hash, { until, auth });
    return auth;
  }

  private remember(hash: string, entry: CacheEntry): void {
    const now = this.opts.clock.now();
    if (now - this.sweptAt >= SWEEP_EVERY_MS) {
      this.sweptAt = now;
      for (const [k, e] of this.cache) if (e.until <= now) this.cache.delete(k);
    }
    this.cache.delete(hash);
    if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(hash, entry);
    this.opts.metrics.tokenReviewCacheEntries.set(this.cache.size);
  }

  private forget(hash: string): void {
    if (this.cache.delete(hash)) this.opts.metrics.tokenReviewCacheEntries.set(this.cache.size);
  }

  private takeReviewToken(now: number): boolean {
    this.bucket = Math.min(this.reviewBurst, this.bucket + ((now - this.bucketAt) * this.reviewRate) / 1000);
    this.bucketAt = now;
    if (this.bucket < 1) return false;
    this.bucket -= 1;
    return true;
  }

  private count(result: 'ok' | 'unauthenticated' | 'error' | 'limited'): void {
    this.reviewCounts[result]++;
    this.opts.metrics.tokenReviews.inc({ result });
    if (result === 'limited' || this.reviewTrouble !== 'limited') return;
    this.reviewTrouble = undefined;
  }

  /** Log a review-side problem at warn once per episode (then debug). */
  private trouble(kind: 'failing' | 'limited', message: string): void {
    if (this.reviewTrouble === kind) {
      this.opts.logger.debug(message);
      return;
    }
    this.reviewTrouble = kind;
    this.opts.logger.warn(message);
  }

  private trimReviewTimes(now: number): void {
    let drop = 0;
    while (drop < this.reviewTimes.length && now - this.reviewTimes[drop]! >= RATE_WINDOW_MS) drop++;
    if (drop > 0) this.reviewTimes.splice(0, drop);
  }
}

function withRole(pod: PodInfo, role: string | undefined, externalId: string | undefined): PodInfo {
  const { role: _role, externalId: _externalId, ...rest } = pod;
  return { ...rest, ...(role !== undefined ? { role } : {}), ...(externalId !== undefined ? { externalId } : {}) };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
