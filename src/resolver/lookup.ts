/**
 * The Resolver: source IP → pod of this node → role, answered from the watch-fed index. An IP not yet
 * known waits for the watch (event driven, bounded by podWaitMs), then one live GET (peers.md pain 1).
 * Structurally implements IdentityLookup of src/server/ports.ts; main.ts wires it.
 */
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
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

export interface PodSource {
  start(events: SourceEvents<PodInfo>): void;
  stop(): Promise<void>;
  /**
   * A live look-up of this node's pods holding ip, as their primary or any other IP (any liveness), within
   * timeoutMs. Rejects on error or timeout.
   */
  listByIp(ip: string, timeoutMs: number): Promise<PodInfo[]>;
}

export interface NamespaceSource {
  start(events: SourceEvents<NamespaceInfo>): void;
  stop(): Promise<void>;
}

export type IdentityListener = (podUid: string, lookup: Lookup | undefined) => void;

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
}

/** At most this many IPs are remembered as recently not found (oldest forgotten first). */
const MAX_RECENT_MISSES = 1024;

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

  constructor(private readonly opts: ResolverOptions) {
    this.podWaitMs = opts.podWaitMs ?? 800;
    this.liveLookupTimeoutMs = opts.liveLookupTimeoutMs ?? 150;
    this.liveLookupHoldoffMs = opts.liveLookupHoldoffMs ?? 5000;
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
   * for an IP it does not (lookup() then waits and looks it up). Synchronous: the server's warm path.
   */
  peek(ip: string): Lookup | undefined {
    return this.fromIndex(ip);
  }

  /**
   * Who is asking: the pod of this node at ip (any spelling: canonicalIp), with its role or why it has none,
   * or unknown / ambiguous (counted here). Policy denials are the caller's to count: it knows whether the
   * request asked for credentials.
   */
  async lookup(rawIp: string): Promise<Lookup> {
    const ip = canonicalIp(rawIp);
    try {
      const fast = this.fromIndex(ip);
      if (fast) return this.account(fast);
      let pending = this.inflight.get(ip);
      if (!pending) {
        pending = this.slowLookup(ip).finally(() => this.inflight.delete(ip));
        this.inflight.set(ip, pending);
      }
      return this.account(await pending);
    } catch (err) {
      this.opts.logger.error({ err, ip }, 'pod lookup failed');
      this.opts.metrics.unknownIps.inc();
      return UNKNOWN;
    }
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
