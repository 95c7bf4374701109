/**
 * The Resolver: source IP → pod of this node → role, answered from the watch-fed index. An IP not yet
 * known waits for the watch (event driven, bounded by podWaitMs), then one live GET.
 * Structurally implements IdentityLookup of src/server/ports.ts; main.ts wires it.
 *
 * The index is trusted only while it is known fresh: the pod source reported it in sync (a list applied, a watch
 * event or a bookmark) within freshForMs, and nothing since says it is not (a failed, expired or silent watch).
 * Otherwise every answer comes from a confirmation: one live GET of the source IP (CONFIRM_TTL_MS per IP, at most
 * CONFIRM_RATE a second across IPs; beyond that one shared LIST of this node's pods), which is what the pod gets.
 * When that GET cannot reach the API server at all (a network error, a timeout, a 5xx), the API is taken to be down
 * for everyone: no pod can be created and no IP handed over, so the pod the index knows on that IP keeps being
 * served (static stability). When the API answers but refuses (401, 403, 429), it is up for others: nothing is
 * served from the index.
 */
import type { Logger } from 'pino';
import { raceAbort, type Clock } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import { canonicalIp, matchLive, PodIndex, type PodInfo } from './pod-index.ts';
import type { Policy } from './policy.ts';
import type { Lookup, NamespaceInfo } from './types.ts';

/** Callbacks a watch-backed source feeds. */
export interface SourceEvents<T> {
  /** Added or changed (also for every item of a (re)list). */
  upsert(obj: T): void;
  /** Gone (deleted, or vanished across a relist). */
  remove(obj: T): void;
  /** The first list has been applied. */
  synced(): void;
}

/** How current a watch-fed source is. The source mutates one object in place; readers must not. */
export interface SyncState {
  /** When its objects were last known to be in sync (a list applied, a watch event or bookmark), clock ms. */
  syncedAt: number | undefined;
  /** Why they are known not to be since then (a failed, expired or silent watch); undefined when nothing is known. */
  lost: string | undefined;
}

export interface PodSource {
  start(events: SourceEvents<PodInfo>): void;
  stop(): Promise<void>;
  /**
   * A live look-up of this node's pods holding ip, as their primary or any other IP (any liveness), within
   * timeoutMs. Rejects on error or timeout; an error the API server answered carries its HTTP `statusCode`.
   */
  listByIp(ip: string, timeoutMs: number): Promise<PodInfo[]>;
  /** All of this node's pods by one LIST, shared between callers (rejects as listByIp). Optional. */
  listNode?(timeoutMs: number): Promise<PodInfo[]>;
  /**
   * One GET of the pod namespace/name, any node and phase: it and the node it is bound to, undefined when there is
   * no such pod (rejects as listByIp). Optional: without it findPod() answers from the index and listNode only.
   */
  getPod?(namespace: string, name: string, timeoutMs: number): Promise<{ pod: PodInfo; nodeName: string } | undefined>;
  /** Optional: without it the index counts as fresh from its first sync on. */
  syncState?(): SyncState;
}

export interface NamespaceSource {
  start(events: SourceEvents<NamespaceInfo>): void;
  stop(): Promise<void>;
  syncState?(): SyncState;
}

/** The pod index's freshness, for /readyz, /debug/state, doctor and the metrics. */
export interface IndexFreshness {
  /** Known in sync within freshForMs and nothing known against it: answers come from the index. */
  fresh: boolean;
  /** When it was last known in sync (clock ms), undefined before the first list. */
  syncedAt: number | undefined;
  /** Why it is not known fresh, when it is not. */
  reason: string | undefined;
}

export type IdentityListener = (podUid: string, lookup: Lookup | undefined) => void;

/** Which pod findPod() looks for: what a service-account token is bound to. */
export interface PodClaim {
  uid: string;
  namespace: string;
  name: string;
}

/**
 * What findPod() found. pod: the pod of that uid, or (uid differs) the one that now holds its namespace/name; any
 * phase, hostNetwork included. nodeName: where a live GET found it bound; absent when it comes from this node's
 * watch or LIST (so it is this node's).
 */
export type PodFind =
  | { kind: 'pod'; pod: PodInfo; from: 'index' | 'live'; nodeName?: string }
  /** No pod of that uid or name (on this node, when only the node's LIST could be asked). */
  | { kind: 'not-found' }
  /** The API server could not say (and the index does not know the pod). */
  | { kind: 'unavailable'; reason: string };

export interface ResolverOptions {
  pods: PodSource;
  namespaces: NamespaceSource;
  policy: Policy;
  clock: Clock;
  metrics: Metrics;
  logger: Logger;
  /** How long a request from an unknown IP waits for the watch. Default 800 ms. */
  podWaitMs?: number;
  /** Time budget of the live GET that follows the wait. Default 150 ms. */
  liveLookupTimeoutMs?: number;
  /**
   * After a live GET found no pod for an IP, further requests from it within this window skip the GET (they
   * still wait for the watch). Keeps a client on an unknown IP from turning every request into an API call.
   * Default 5000 ms.
   */
  liveLookupHoldoffMs?: number;
  /** The index is trusted this long after it was last known in sync. Default FRESH_FOR_MS. */
  freshForMs?: number;
  /** Time budget of a confirmation's live GET. Default 500 ms. */
  confirmTimeoutMs?: number;
}

/** At most this many IPs are remembered as recently not found (oldest forgotten first). */
const MAX_RECENT_MISSES = 1024;

/**
 * The index is trusted for this long after its last list, event or bookmark. A healthy watch proves itself at least
 * every 30 s (kube.ts asks timeoutSeconds ≤ 30 and the API server sends a bookmark 2 s before it); 10 s of slack.
 */
export const FRESH_FOR_MS = 40_000;
/** A confirmation (or its failure) answers the requests of its IP for this long. */
export const CONFIRM_TTL_MS = 1000;
/** Confirmations by one GET per IP: at most this many a second (a burst of as many), then the shared LIST. */
export const CONFIRM_RATE = 10;
/** At most this many IPs' confirmations are remembered (oldest forgotten first). */
const MAX_CONFIRMATIONS = 1024;

/** What a live GET said about an IP while the index was not fresh. */
type Confirmation =
  | { kind: 'answer'; answer: Lookup }
  /** The API server could not be reached: serve the index (static stability). */
  | { kind: 'unavailable' }
  /** The API server answered with a refusal: serve nothing. */
  | { kind: 'refused' };

const UNKNOWN: Lookup = { kind: 'unknown' };
const AMBIGUOUS: Lookup = { kind: 'ambiguous' };

function signature(l: Lookup): string {
  switch (l.kind) {
    case 'role':
      return `role ${l.pod.ip} ${l.identity.key}`;
    case 'no-role':
      return `none ${l.pod.ip}`;
    case 'denied':
      return `denied ${l.pod.ip} ${l.code} ${l.reason}`;
    default:
      return l.kind;
  }
}

export class Resolver {
  private readonly index = new PodIndex();
  /** Every pod of this node the watch reports, live or not, by uid (PodInfo is small). */
  private readonly pods = new Map<string, PodInfo>();
  /** namespace/name → uid: a pod recreated under the same name across a relist replaces the old uid. */
  private readonly byName = new Map<string, string>();
  private readonly namespaces = new Map<string, Readonly<Record<string, string>>>();
  /** The current answer for each live pod. */
  private readonly answers = new Map<string, Lookup>();
  private readonly answerSigs = new Map<string, string>();
  private readonly listeners = new Set<IdentityListener>();
  private readonly inflight = new Map<string, Promise<Lookup>>();
  private readonly podWaitMs: number;
  private readonly liveLookupTimeoutMs: number;
  private readonly liveLookupHoldoffMs: number;
  /** IP → when a live GET last found no pod there. */
  private readonly recentMisses = new Map<string, number>();
  private podsSynced = false;
  private namespacesSynced = false;
  private started = false;
  private stopped = false;
  private readyWaiters: Array<() => void> = [];
  private readonly freshForMs: number;
  private readonly confirmTimeoutMs: number;
  /** IP → the last confirmation and when it was made. */
  private readonly confirmations = new Map<string, { at: number; result: Confirmation }>();
  private readonly confirming = new Map<string, Promise<Lookup>>();
  /** Token bucket of the per-IP confirmation GETs. */
  private confirmTokens = CONFIRM_RATE;
  private confirmTokensAt = 0;
  private wasFresh = true;
  /** What confirmations have logged at info/warn since the index was last fresh (once each; then debug). */
  private readonly confirmLogged = new Set<string>();
  /** uid → wakers of findPod() calls waiting for the watch to report that pod. */
  private readonly uidWaiters = new Map<string, Set<() => void>>();
  /** findPod() in flight per uid, and its live answers (CONFIRM_TTL_MS) and recent misses (liveLookupHoldoffMs). */
  private readonly findingPods = new Map<string, Promise<PodFind>>();
  private readonly podFinds = new Map<string, { at: number; found: PodFind }>();

  constructor(private readonly opts: ResolverOptions) {
    this.podWaitMs = opts.podWaitMs ?? 800;
    this.liveLookupTimeoutMs = opts.liveLookupTimeoutMs ?? 150;
    this.liveLookupHoldoffMs = opts.liveLookupHoldoffMs ?? 5000;
    this.freshForMs = opts.freshForMs ?? FRESH_FOR_MS;
    this.confirmTimeoutMs = opts.confirmTimeoutMs ?? 500;
    this.confirmTokensAt = opts.clock.now();
    opts.metrics.podIndexSource = () => {
      const { fresh, syncedAt } = this.freshness();
      return { fresh, stalenessSeconds: syncedAt === undefined ? undefined : Math.max(0, opts.clock.now() - syncedAt) / 1000 };
    };
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.opts.namespaces.start({
      upsert: (ns) => this.guard('namespace upsert', () => this.upsertNamespace(ns)),
      remove: (ns) => this.guard('namespace remove', () => this.removeNamespace(ns.name)),
      synced: () => {
        this.namespacesSynced = true;
        this.checkReady();
      },
    });
    this.opts.pods.start({
      upsert: (pod) => this.guard('pod upsert', () => this.upsertPod(pod)),
      remove: (pod) => this.guard('pod remove', () => this.removePod(pod)),
      synced: () => {
        this.podsSynced = true;
        this.checkReady();
      },
    });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.allSettled([this.opts.pods.stop(), this.opts.namespaces.stop()]);
  }

  /** Both watches have applied their first list. */
  ready(): boolean {
    return this.podsSynced && this.namespacesSynced;
  }

  /** Whether answers come from the index now, since when it is in sync, and why not. */
  freshness(): IndexFreshness {
    const state = this.opts.pods.syncState?.();
    const fresh = this.isFresh();
    if (!state) return { fresh, syncedAt: undefined, reason: undefined };
    let reason: string | undefined;
    if (!fresh) reason = state.lost ?? (state.syncedAt === undefined ? 'not synced yet' : `no list, event or bookmark for ${this.freshForMs / 1000} s`);
    return { fresh, syncedAt: state.syncedAt, reason };
  }

  /** The namespace watch's state (reported, never gating: a namespace's policy is re-read on its next event). */
  namespaceSync(): SyncState | undefined {
    return this.opts.namespaces.syncState?.();
  }

  /** On every request: cheap (no allocation). */
  private isFresh(): boolean {
    const state = this.opts.pods.syncState?.();
    if (!state) return true;
    const fresh = state.lost === undefined && state.syncedAt !== undefined && this.opts.clock.now() - state.syncedAt <= this.freshForMs;
    if (fresh !== this.wasFresh) {
      this.wasFresh = fresh;
      this.confirmLogged.clear();
      if (fresh) this.opts.logger.info('pod index fresh again: answering from it');
      else this.opts.logger.warn({ reason: state.lost ?? 'no list, event or bookmark lately' }, 'pod index not known fresh: each pod is confirmed by a live GET before it is answered');
    }
    return fresh;
  }

  /** Resolves once ready(), or rejects with the signal's reason. */
  whenReady(signal?: AbortSignal): Promise<void> {
    if (this.ready()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        this.readyWaiters = this.readyWaiters.filter((w) => w !== done);
        reject(signal?.reason);
      };
      const done = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.readyWaiters.push(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Live pods in the index. */
  get podsIndexed(): number {
    return this.index.size;
  }

  /**
   * Called with (podUid, answer) when a live pod appears or its answer changes (annotations, IP, its
   * namespace's policy), and with (podUid, undefined) when it stops being live or goes away.
   * Returns an unsubscribe function. Listener errors are logged, never propagated.
   */
  onIdentity(listener: IdentityListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The current answer of every live pod (e.g. for a prefetcher subscribing late). */
  currentIdentities(): Map<string, Lookup> {
    return new Map(this.answers);
  }

  peekUid(ip: string): string | undefined {
    const m = this.index.byIp(ip);
    return m.kind === 'pod' ? m.pod.uid : undefined;
  }

  /**
   * What lookup() answers at once for an IP the index holds (without waiting, counting or logging); undefined
   * for an IP it does not (lookup() then waits and looks it up). Synchronous: the server's warm path. While the
   * index is not fresh, only a confirmation still valid answers here.
   */
  peek(ip: string): Lookup | undefined {
    if (this.isFresh()) return this.fromIndex(ip);
    return this.fromConfirmation(canonicalIp(ip));
  }

  /**
   * Who is asking: the pod of this node at ip (any spelling: canonicalIp), with its role or why it has none,
   * or unknown / ambiguous (counted here). Policy denials are the caller's to count: it knows whether the
   * request asked for credentials.
   */
  async lookup(rawIp: string): Promise<Lookup> {
    const ip = canonicalIp(rawIp);
    try {
      if (!this.isFresh()) {
        const confirmed = this.fromConfirmation(ip);
        return this.account(confirmed ?? (await shared(this.confirming, ip, () => this.confirm(ip))));
      }
      const fast = this.fromIndex(ip);
      return this.account(fast ?? (await shared(this.inflight, ip, () => this.slowLookup(ip))));
    } catch (err) {
      this.opts.logger.error({ err, ip }, 'pod lookup failed');
      this.opts.metrics.unknownIps.inc();
      return UNKNOWN;
    }
  }

  /** This node's pod of uid as the watch last reported it: any phase, hostNetwork pods included. */
  podByUid(uid: string): PodInfo | undefined {
    return this.pods.get(uid);
  }

  /** A namespace's iam.amazonaws.com/* annotations, undefined when the namespace is not known (yet). */
  namespaceAnnotations(name: string): Readonly<Record<string, string>> | undefined {
    return this.namespaces.get(name);
  }

  /**
   * The pod a service-account token is bound to (the token path; the IP path is lookup()). While the index is
   * fresh: the watch's pod of that uid (or the pod now holding its namespace/name, whose uid then differs), else a
   * wait for the watch (podWaitMs), else one live GET of namespace/name (the pod may be another node's). While the
   * index is not fresh: that GET first (within the confirmations' rate bound, beyond it the shared LIST of this
   * node's pods), with the index as the answer when the API server cannot be reached (static stability, as
   * confirm()). A live answer is reused for CONFIRM_TTL_MS, a miss for liveLookupHoldoffMs; one look-up per uid
   * at a time. Never rejects.
   */
  /** findPod()'s answer when the fresh index has the pod (no waiting, no API call), else undefined. */
  peekPod(claim: PodClaim): PodFind | undefined {
    return this.isFresh() ? this.fromIndexByClaim(claim) : undefined;
  }

  async findPod(claim: PodClaim, signal?: AbortSignal): Promise<PodFind> {
    const fresh = this.isFresh();
    if (fresh) {
      const hit = this.fromIndexByClaim(claim);
      if (hit) return hit;
    }
    const recent = this.podFinds.get(claim.uid);
    if (recent) {
      const ttl = recent.found.kind === 'not-found' ? this.liveLookupHoldoffMs : CONFIRM_TTL_MS;
      if (this.opts.clock.now() - recent.at < ttl) return recent.found;
    }
    try {
      const pending = shared(this.findingPods, claim.uid, () => this.findLive(claim, fresh));
      return await (signal ? raceAbort(pending, signal) : pending);
    } catch (err) {
      return { kind: 'unavailable', reason: errorMessage(err) };
    }
  }

  /** The index's pod of claim.uid, else its pod of claim's namespace/name. */
  private fromIndexByClaim(claim: PodClaim): PodFind | undefined {
    const pod = this.pods.get(claim.uid) ?? this.pods.get(this.byName.get(`${claim.namespace}/${claim.name}`) ?? '');
    return pod ? { kind: 'pod', pod, from: 'index' } : undefined;
  }

  private async findLive(claim: PodClaim, fresh: boolean): Promise<PodFind> {
    const { clock, pods, metrics, logger } = this.opts;
    if (fresh && !this.stopped && this.podWaitMs > 0 && (await this.waitForUid(claim.uid, this.podWaitMs))) {
      const hit = this.fromIndexByClaim(claim);
      if (hit) return hit;
    }
    const startedAt = clock.now();
    let found: PodFind;
    try {
      if (pods.getPod && this.takeConfirmToken()) {
        const got = await pods.getPod(claim.namespace, claim.name, fresh ? this.liveLookupTimeoutMs : this.confirmTimeoutMs);
        found = got ? { kind: 'pod', pod: got.pod, from: 'live', nodeName: got.nodeName } : { kind: 'not-found' };
      } else if (pods.listNode) {
        const all = await pods.listNode(this.confirmTimeoutMs);
        const pod = all.find((p) => p.uid === claim.uid) ?? all.find((p) => p.namespace === claim.namespace && p.name === claim.name);
        found = pod ? { kind: 'pod', pod, from: 'live' } : { kind: 'not-found' };
      } else found = { kind: 'not-found' };
      metrics.liveLookups.inc({ result: found.kind === 'pod' ? 'by-name-found' : 'by-name-not-found' });
    } catch (err) {
      metrics.liveLookups.inc({ result: 'by-name-error' });
      const status = (err as { statusCode?: unknown } | null)?.statusCode;
      const refused = typeof status === 'number' && status < 500;
      logger.warn({ err: errorMessage(err), pod: `${claim.namespace}/${claim.name}`, podUid: claim.uid }, 'live pod look-up by name failed');
      found = { kind: 'unavailable', reason: `live GET of pod ${claim.namespace}/${claim.name}: ${errorMessage(err)}` };
      // The API server unreachable: the pod the index knows stands (static stability); a refusal gives nothing.
      if (!refused) {
        const known = this.fromIndexByClaim(claim);
        if (known) found = known;
      }
    }
    if (!this.stopped) {
      this.podFinds.delete(claim.uid);
      if (this.podFinds.size >= MAX_CONFIRMATIONS) this.podFinds.delete(this.podFinds.keys().next().value!);
      this.podFinds.set(claim.uid, { at: startedAt, found });
    }
    // The watch may have caught up meanwhile: while fresh it is the authority.
    return (fresh && this.fromIndexByClaim(claim)) || found;
  }

  /** Resolves true once the watch reports a pod of uid (at once if it has), false after ms. Never rejects. */
  private waitForUid(uid: string, ms: number): Promise<boolean> {
    if (this.pods.has(uid)) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      let set = this.uidWaiters.get(uid);
      if (!set) this.uidWaiters.set(uid, (set = new Set()));
      const waiters = set;
      const done = (seen: boolean) => {
        timer.cancel();
        waiters.delete(wake);
        if (waiters.size === 0 && this.uidWaiters.get(uid) === waiters) this.uidWaiters.delete(uid);
        resolve(seen);
      };
      const wake = () => done(true);
      const timer = this.opts.clock.setTimeout(() => done(false), ms);
      waiters.add(wake);
    });
  }

  /** The answer from the index, or undefined when no live pod holds ip. */
  private fromIndex(ip: string): Lookup | undefined {
    const m = this.index.byIp(ip);
    if (m.kind === 'none') return undefined;
    if (m.kind === 'ambiguous') return AMBIGUOUS;
    return this.answers.get(m.pod.uid) ?? this.evaluate(m.pod);
  }

  private async slowLookup(ip: string): Promise<Lookup> {
    const { clock, pods, metrics, logger } = this.opts;
    if (!this.stopped && this.podWaitMs > 0) {
      const ac = new AbortController();
      const timer = clock.setTimeout(() => ac.abort(), this.podWaitMs);
      const seen = await this.index.waitForIp(ip, ac.signal);
      timer.cancel();
      if (seen) return this.fromIndex(ip) ?? UNKNOWN;
    }
    const missedAt = this.recentMisses.get(ip);
    if (missedAt !== undefined && clock.now() - missedAt < this.liveLookupHoldoffMs) {
      metrics.liveLookups.inc({ result: 'held-off' });
      return UNKNOWN;
    }
    let candidates: PodInfo[];
    try {
      candidates = await pods.listByIp(ip, this.liveLookupTimeoutMs);
    } catch (err) {
      metrics.liveLookups.inc({ result: 'error' });
      logger.warn({ err: errorMessage(err), ip }, 'live pod look-up failed');
      return this.fromIndex(ip) ?? UNKNOWN;
    }
    // The watch may have caught up while the GET ran: it is the authority.
    const late = this.fromIndex(ip);
    if (late) {
      metrics.liveLookups.inc({ result: 'watch-caught-up' });
      return late;
    }
    const m = matchLive(candidates, ip);
    metrics.liveLookups.inc({ result: m.kind === 'pod' ? 'found' : m.kind === 'ambiguous' ? 'ambiguous' : 'not-found' });
    if (m.kind === 'ambiguous') return AMBIGUOUS;
    if (m.kind === 'none') {
      this.recentMisses.delete(ip);
      if (this.recentMisses.size >= MAX_RECENT_MISSES) this.recentMisses.delete(this.recentMisses.keys().next().value!);
      this.recentMisses.set(ip, clock.now());
      return UNKNOWN;
    }
    logger.info({ pod: m.pod.name, namespace: m.pod.namespace, ip }, 'pod found by live look-up before the watch reported it');
    return this.evaluate(m.pod);
  }

  /** The answer of a confirmation of ip still valid, or undefined. */
  private fromConfirmation(ip: string): Lookup | undefined {
    const entry = this.confirmations.get(ip);
    if (!entry || this.opts.clock.now() - entry.at >= CONFIRM_TTL_MS) return undefined;
    switch (entry.result.kind) {
      case 'answer':
        return entry.result.answer;
      case 'unavailable':
        return this.fromIndex(ip) ?? UNKNOWN;
      case 'refused':
        return UNKNOWN;
    }
  }

  /** One live look-up of ip while the index is not fresh: what it says is the answer (see the header). */
  private async confirm(ip: string): Promise<Lookup> {
    const { clock, pods, metrics, logger } = this.opts;
    const indexed = this.index.byIp(ip);
    const startedAt = clock.now();
    let result: Confirmation;
    try {
      const candidates = this.takeConfirmToken() || !pods.listNode ? await pods.listByIp(ip, this.confirmTimeoutMs) : (await pods.listNode(this.confirmTimeoutMs)).filter((p) => p.ips.includes(ip));
      const m = matchLive(candidates, ip);
      if (m.kind === 'pod') {
        const same = indexed.kind === 'pod' && indexed.pod.uid === m.pod.uid && indexed.pod.role === m.pod.role && indexed.pod.externalId === m.pod.externalId;
        result = { kind: 'answer', answer: same ? (this.answers.get(m.pod.uid) ?? this.evaluate(m.pod)) : this.evaluate(m.pod) };
        metrics.confirmations.inc({ result: same ? 'same' : 'differs' });
        if (!same) {
          const fields = { ip, pod: m.pod.name, namespace: m.pod.namespace, indexed: indexed.kind === 'pod' ? `${indexed.pod.namespace}/${indexed.pod.name}` : indexed.kind };
          if (this.logOnce(`differs ${ip} ${m.pod.uid}`)) logger.info(fields, 'live GET found another pod than the stale index: answering for it');
          else logger.debug(fields, 'live GET found another pod than the stale index: answering for it');
        }
      } else {
        result = { kind: 'answer', answer: m.kind === 'ambiguous' ? AMBIGUOUS : UNKNOWN };
        metrics.confirmations.inc({ result: indexed.kind === m.kind ? 'same' : 'differs' });
      }
    } catch (err) {
      const status = (err as { statusCode?: unknown } | null)?.statusCode;
      const refused = typeof status === 'number' && status < 500;
      result = refused ? { kind: 'refused' } : { kind: 'unavailable' };
      metrics.confirmations.inc({ result: refused ? 'refused' : 'unavailable' });
      const fields = { err: errorMessage(err), ip, served: refused ? 'nothing' : indexed.kind === 'pod' ? `${indexed.pod.namespace}/${indexed.pod.name}` : 'nothing (not indexed)' };
      const msg = refused ? 'live GET refused while the pod index is not fresh: not answering from the index' : 'API server unreachable while the pod index is not fresh: answering from the index';
      if (this.logOnce(result.kind)) logger.warn(fields, msg);
      else logger.debug(fields, msg);
    }
    if (!this.stopped) {
      this.confirmations.delete(ip);
      if (this.confirmations.size >= MAX_CONFIRMATIONS) this.confirmations.delete(this.confirmations.keys().next().value!);
      // The TTL runs from before the GET: the answer is no older than that.
      this.confirmations.set(ip, { at: startedAt, result });
    }
    return this.fromConfirmation(ip) ?? (result.kind === 'answer' ? result.answer : result.kind === 'unavailable' ? (this.fromIndex(ip) ?? UNKNOWN) : UNKNOWN);
  }

  /** True the first time key is seen since the index was last fresh (bounded). */
  private logOnce(key: string): boolean {
    if (this.confirmLogged.has(key)) return false;
    if (this.confirmLogged.size >= MAX_CONFIRMATIONS) this.confirmLogged.clear();
    this.confirmLogged.add(key);
    return true;
  }

  /** A token of the per-IP GETs' bucket (CONFIRM_RATE a second, as many at once), or false: use the shared LIST. */
  private takeConfirmToken(): boolean {
    const now = this.opts.clock.now();
    this.confirmTokens = Math.min(CONFIRM_RATE, this.confirmTokens + ((now - this.confirmTokensAt) * CONFIRM_RATE) / 1000);
    this.confirmTokensAt = now;
    if (this.confirmTokens < 1) return false;
    this.confirmTokens -= 1;
    return true;
  }

  /** Count a source that is no pod of this node (or more than one). */
  private account(answer: Lookup): Lookup {
    if (answer.kind === 'unknown') this.opts.metrics.unknownIps.inc();
    else if (answer.kind === 'ambiguous') this.opts.metrics.ambiguousIps.inc();
    return answer;
  }

  private evaluate(pod: PodInfo): Lookup {
    return this.opts.policy.evaluate(pod, this.namespaces.get(pod.namespace));
  }

  private upsertPod(pod: PodInfo): void {
    if (!pod.uid) return;
    const nameKey = `${pod.namespace}/${pod.name}`;
    const previousUid = this.byName.get(nameKey);
    if (previousUid !== undefined && previousUid !== pod.uid) this.forget(previousUid);
    this.byName.set(nameKey, pod.uid);
    this.pods.set(pod.uid, pod);
    const waiting = this.uidWaiters.get(pod.uid);
    if (waiting) for (const wake of [...waiting]) wake();
    if (this.index.upsert(pod)) this.refresh(pod);
    else this.retire(pod.uid);
    this.opts.metrics.podsIndexed.set(this.index.size);
  }

  private removePod(pod: PodInfo): void {
    // Relists can report an object by name only; fall back to the name → uid map.
    const uid = pod.uid || this.byName.get(`${pod.namespace}/${pod.name}`);
    if (uid === undefined) return;
    const known = this.pods.get(uid);
    if (known && this.byName.get(`${known.namespace}/${known.name}`) === uid) this.byName.delete(`${known.namespace}/${known.name}`);
    this.forget(uid);
    this.opts.metrics.podsIndexed.set(this.index.size);
  }

  private forget(uid: string): void {
    this.pods.delete(uid);
    this.index.remove(uid);
    this.retire(uid);
  }

  /** Recompute a live pod's answer; notify when it changed. */
  private refresh(pod: PodInfo): void {
    const answer = this.evaluate(pod);
    const sig = signature(answer);
    if (this.answerSigs.get(pod.uid) === sig) return;
    this.answers.set(pod.uid, answer);
    this.answerSigs.set(pod.uid, sig);
    this.opts.logger.debug(
      { pod: pod.name, namespace: pod.namespace, podUid: pod.uid, ips: pod.ips, answer: answer.kind, role: answer.kind === 'role' ? answer.identity.roleArn : undefined },
      'pod indexed',
    );
    this.emit(pod.uid, answer);
  }

  /** A pod stopped being live or went away. */
  private retire(uid: string): void {
    if (!this.answers.delete(uid)) return;
    this.answerSigs.delete(uid);
    this.opts.logger.debug({ podUid: uid }, 'pod left the index');
    this.emit(uid, undefined);
  }

  private upsertNamespace(ns: NamespaceInfo): void {
    const old = this.namespaces.get(ns.name);
    this.namespaces.set(ns.name, ns.annotations);
    if (old && sameRecord(old, ns.annotations)) return;
    this.reevaluateNamespace(ns.name);
  }

  private removeNamespace(name: string): void {
    if (!this.namespaces.delete(name)) return;
    this.reevaluateNamespace(name);
  }

  private reevaluateNamespace(name: string): void {
    for (const pod of this.index.values()) if (pod.namespace === name) this.refresh(pod);
  }

  private emit(uid: string, answer: Lookup | undefined): void {
    for (const listener of this.listeners) {
      try {
        listener(uid, answer);
      } catch (err) {
        this.opts.logger.error({ err, podUid: uid }, 'identity listener failed');
      }
    }
  }

  private guard(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.opts.logger.error({ err }, `resolver: ${what} failed`);
    }
  }

  private checkReady(): void {
    if (!this.ready()) return;
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w();
  }
}

function sameRecord(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => a[k] === b[k]);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The call in flight for key, or a new one from start(): concurrent requests from one IP share one look-up. */
function shared<T>(inflight: Map<string, Promise<T>>, key: string, start: () => Promise<T>): Promise<T> {
  let pending = inflight.get(key);
  if (!pending) {
    pending = start().finally(() => inflight.delete(key));
    inflight.set(key, pending);
  }
  return pending;
}
