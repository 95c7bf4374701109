/**
 * THE Kubernetes adapter: the only file that imports @kubernetes/client-node.
 *
 * - A node-scoped ListWatch of pods (`spec.nodeName=NODE` on the list AND the watch, bookmarks on) and a
 *   cluster-wide ListWatch of namespaces, each restarted with exponential backoff whenever client-node's
 *   informer stops on an error (it does on a failed list or on a watch answered other than 200 or 410).
 * - Objects are slimmed to the few fields we use before client-node caches them (memory on every node).
 * - Lists and the live look-up by IP are plain HTTPS GETs authenticated by the KubeConfig: no generated API
 *   client, no model deserialisation.
 * - Each reflector knows when its objects were last known to be in sync (syncState): a list applied, or a watch
 *   event or bookmark received; and since when they are known not to be (a failed or expired watch, a silent
 *   one). Every watch asks `timeoutSeconds` of WATCH_TIMEOUT_SECONDS (jittered down by up to 5 s): the API
 *   server's watch cache sends a bookmark 2 s before a watch's deadline, besides one about every minute
 *   (kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go, nextBookmarkTime),
 *   so a healthy quiet watch proves itself at least every 30 s. A watch that delivers no event or bookmark for
 *   silentWatchMs is aborted and resumed from its resourceVersion.
 */
import http from 'node:http';
import https from 'node:https';
import { KubeConfig, ListWatch, Watch, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { systemClock, type Clock, type Timer } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import type { NamespaceSource, PodSource, SourceEvents, SyncState } from './lookup.ts';
import { canonicalIp, EXTERNAL_ID_ANNOTATION, isLive, ROLE_ANNOTATION, toPodInfo, type PodInfo } from './pod-index.ts';
import type { ServiceAccountFetch } from './service-accounts.ts';
import type { NamespaceInfo } from './types.ts';

/** Load a kubeconfig file, or the in-cluster service account when path is undefined. Throws a clear error. */
export function loadKubeConfig(path?: string): KubeConfig {
  const kc = new KubeConfig();
  if (path !== undefined && path !== '') {
    try {
      kc.loadFromFile(path);
    } catch (err) {
      throw new Error(`--kubeconfig ${path}: cannot load: ${err instanceof Error ? err.message : String(err)}`);
    }
  } else {
    if (!process.env.KUBERNETES_SERVICE_HOST || !process.env.KUBERNETES_SERVICE_PORT) {
      throw new Error('not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig');
    }
    kc.loadFromCluster();
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error(`kubeconfig${path ? ` ${path}` : ''}: no current context/cluster`);
  if (!/^https?:\/\//.test(cluster.server)) throw new Error(`kubeconfig${path ? ` ${path}` : ''}: cluster server "${cluster.server}" is not an http(s) URL`);
  return kc;
}

export interface BackoffOptions {
  /** First restart delay. Default 1000 ms. */
  initialMs?: number;
  /** Cap. Default 30000 ms. */
  maxMs?: number;
  /** Relative jitter, ±. Default 0.2. */
  jitter?: number;
}

/**
 * Each watch asks the API server to end it after this many seconds (minus up to 5 s of jitter, so that agents
 * restarted together do not re-watch in step); the server sends a bookmark 2 s before (see the header).
 */
export const WATCH_TIMEOUT_SECONDS = 30;
/** A watch that delivers no event or bookmark for this long is aborted and resumed from its resourceVersion. */
export const SILENT_WATCH_MS = 40_000;

export interface KubeSourceOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  metrics: Metrics;
  logger: Logger;
  /** Timers for the restart backoff and watch reconnect delays. Default: the system clock. */
  clock?: Clock;
  backoff?: BackoffOptions;
  /** Timeout of each informer list. Default 30000 ms. */
  listTimeoutMs?: number;
  /**
   * The live look-up's LIST of all this node's pods (for an IP the status.podIP selector cannot find) runs at
   * most once per this many ms; look-ups in between share its answer. Default 1000 ms.
   */
  nodeListIntervalMs?: number;
  /** A watch silent (no event, no bookmark) for this long is aborted and resumed. Default SILENT_WATCH_MS. */
  silentWatchMs?: number;
  /** timeoutSeconds asked of each watch (jittered down by up to 5 s, never below 1). Default WATCH_TIMEOUT_SECONDS. */
  watchTimeoutSeconds?: number;
}

export class KubeHttpError extends Error {
  override name = 'KubeHttpError';
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** Escape a value for a field selector (`\`, `,` and `=` are special). */
export function fieldValue(value: string): string {
  return value.replace(/[\\,=]/g, (c) => `\\${c}`);
}

/** GET path on the current cluster; resolves the parsed JSON body of a 200, rejects otherwise. */
export function kubeGetJson(kc: KubeConfig, path: string, signal?: AbortSignal): Promise<unknown> {
  return kubeRequestJson(kc, { method: 'GET', path, signal });
}

export interface KubeRequest {
  method: 'GET' | 'POST';
  path: string;
  /** JSON text (POST). */
  body?: string;
  signal?: AbortSignal;
  /** A connection pool for https (applyToHTTPSOptions makes a new agent for every call); not used behind a proxy. */
  agent?: https.Agent;
}

/**
 * One request on the current cluster with the kubeconfig's credentials; resolves the parsed JSON body of a 200 (or
 * 201), rejects with KubeHttpError for another status, or with the transport's error.
 */
export async function kubeRequestJson(kc: KubeConfig, request: KubeRequest): Promise<unknown> {
  const { method, path, body, signal, agent } = request;
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error('kubeconfig has no current cluster');
  const url = new URL(cluster.server.replace(/\/+$/, '') + path);
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) Object.assign(headers, { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)) });
  const options: https.RequestOptions = { method, headers };
  await kc.applyToHTTPSOptions(options);
  if (agent && !cluster.proxyUrl && url.protocol === 'https:') options.agent = agent;
  if (signal) options.signal = signal;
  const transport = url.protocol === 'http:' ? http : https;
  return new Promise((resolve, reject) => {
    const req = transport.request(url, options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200 && res.statusCode !== 201) {
          let message = text.slice(0, 200);
          try {
            message = (JSON.parse(text) as { message?: string }).message ?? message;
          } catch {
            // keep the raw text
          }
          reject(new KubeHttpError(res.statusCode ?? 0, `${method} ${url.pathname}: HTTP ${res.statusCode}: ${message}`));
          return;
        }
        try {
          resolve(JSON.parse(text));
        } catch (err) {
          reject(new Error(`${method} ${url.pathname}: invalid JSON: ${err instanceof Error ? err.message : String(err)}`));
        }
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

// ---- slim objects: what client-node's cache keeps ----

interface SlimMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  annotations?: Record<string, string>;
  deletionTimestamp?: Date;
}

interface SlimPod extends KubernetesObject {
  metadata: SlimMeta;
  spec?: { serviceAccountName?: string; hostNetwork?: boolean };
  status?: { phase?: string; podIP?: string; podIPs?: Array<{ ip: string }> };
}

interface SlimNamespace extends KubernetesObject {
  metadata: SlimMeta;
}

type Raw = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function pick(annotations: unknown, keep: (key: string) => boolean): Record<string, string> | undefined {
  if (!annotations || typeof annotations !== 'object') return undefined;
  let out: Record<string, string> | undefined;
  for (const [k, v] of Object.entries(annotations as Record<string, unknown>)) {
    if (typeof v === 'string' && keep(k)) (out ??= {})[k] = v;
  }
  return out;
}

function slimMeta(m: Raw | undefined, keepAnnotation: (key: string) => boolean): SlimMeta {
  const meta: SlimMeta = {};
  if (!m) return meta;
  if (typeof m.name === 'string') meta.name = m.name;
  if (typeof m.namespace === 'string') meta.namespace = m.namespace;
  if (typeof m.uid === 'string') meta.uid = m.uid;
  if (typeof m.resourceVersion === 'string') meta.resourceVersion = m.resourceVersion;
  const annotations = pick(m.annotations, keepAnnotation);
  if (annotations) meta.annotations = annotations;
  if (m.deletionTimestamp) meta.deletionTimestamp = m.deletionTimestamp instanceof Date ? m.deletionTimestamp : new Date(String(m.deletionTimestamp));
  return meta;
}

const podAnnotation = (k: string) => k === ROLE_ANNOTATION || k === EXTERNAL_ID_ANNOTATION;
const nsAnnotation = (k: string) => k.startsWith('iam.amazonaws.com/');

export function slimPod(raw: Raw): SlimPod {
  const pod: SlimPod = { metadata: slimMeta(raw.metadata, podAnnotation) };
  const spec: SlimPod['spec'] = {};
  if (typeof raw.spec?.serviceAccountName === 'string') spec.serviceAccountName = raw.spec.serviceAccountName;
  if (raw.spec?.hostNetwork === true) spec.hostNetwork = true;
  pod.spec = spec;
  const status: SlimPod['status'] = {};
  if (typeof raw.status?.phase === 'string') status.phase = raw.status.phase;
  if (typeof raw.status?.podIP === 'string') status.podIP = raw.status.podIP;
  if (Array.isArray(raw.status?.podIPs)) {
    const ips = (raw.status.podIPs as unknown[]).flatMap((e) => (e && typeof (e as Raw).ip === 'string' ? [{ ip: (e as Raw).ip as string }] : []));
    if (ips.length > 0) status.podIPs = ips;
  }
  pod.status = status;
  return pod;
}

export function slimNamespace(raw: Raw): SlimNamespace {
  return { metadata: slimMeta(raw.metadata, nsAnnotation) };
}

function toNamespaceInfo(ns: SlimNamespace): NamespaceInfo {
  return { name: ns.metadata.name ?? '', annotations: ns.metadata.annotations ?? {} };
}

/** What a SlimWatch reports to its reflector. */
interface WatchHooks {
  clock: Clock;
  silentMs: number;
  timeoutSeconds(): number;
  /** A watch request is about to be made. */
  started(): void;
  /** A line of the stream (ADDED, MODIFIED, DELETED, BOOKMARK or ERROR). */
  event(type: string, obj: Raw | undefined): void;
  /** The stream ended: err as reported to ListWatch; silent: the watchdog ended it. Not called once closed. */
  ended(err: unknown, silent: boolean): void;
}

function timeoutError(message: string): Error {
  return new DOMException(message, 'TimeoutError');
}

/**
 * A Watch that slims each object before ListWatch sees (and caches) it, that asks timeoutSeconds, that aborts a
 * stream silent for hooks.silentMs (reported to ListWatch as a TimeoutError, on which it resumes at once from its
 * resourceVersion), and that can be shut.
 */
class SlimWatch extends Watch {
  private readonly controllers = new Set<AbortController>();
  closed = false;

  constructor(
    kc: KubeConfig,
    private readonly slim: (raw: Raw) => KubernetesObject,
    private readonly hooks: WatchHooks,
  ) {
    super(kc);
    // client-node's own inactivity timeout (30 s of real time, kubernetes-client/javascript#3022; a private field in
    // its types) stays as a backstop behind ours, which runs on the clock.
    (this as unknown as { requestTimeoutMs: number }).requestTimeoutMs = hooks.silentMs + 5000;
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: any, watchObj?: any) => void, // eslint-disable-line @typescript-eslint/no-explicit-any
    done: (err: any) => void, // eslint-disable-line @typescript-eslint/no-explicit-any
  ): Promise<AbortController> {
    const { clock, silentMs } = this.hooks;
    let controller: AbortController | undefined;
    let silent = false;
    let ended = false;
    let watchdog: Timer | undefined;
    const reason = () => timeoutError(`no event or bookmark for ${silentMs} ms`);
    const arm = () => {
      watchdog?.cancel();
      watchdog = clock.setTimeout(() => {
        watchdog = undefined;
        silent = true;
        controller?.abort(reason());
      }, silentMs);
    };
    const slimCallback = (phase: string, obj: Raw) => {
      if (ended) return;
      arm();
      this.hooks.event(phase, obj && typeof obj === 'object' ? obj : undefined);
      if ((phase === 'ADDED' || phase === 'MODIFIED' || phase === 'DELETED') && obj && typeof obj === 'object') callback(phase, this.slim(obj));
      else callback(phase, obj);
    };
    const wrappedDone = (err: unknown) => {
      if (ended) return;
      ended = true;
      watchdog?.cancel();
      if (controller) this.controllers.delete(controller);
      const reported = silent ? reason() : err;
      if (!this.closed) this.hooks.ended(reported, silent);
      done(reported);
    };
    this.hooks.started();
    arm();
    const timeoutSeconds = this.hooks.timeoutSeconds();
    try {
      controller = await super.watch(path, { ...queryParams, timeoutSeconds }, slimCallback, wrappedDone);
    } catch (err) {
      // Thrown before any request was made (no current cluster, credentials): nothing will call done.
      ended = true;
      watchdog?.cancel();
      throw err;
    }
    if (this.closed) controller.abort();
    else if (!ended) {
      this.controllers.add(controller);
      if (silent) controller.abort(reason()); // the watchdog fired while the request was being answered
    }
    return controller;
  }

  close(): void {
    this.closed = true;
    for (const c of this.controllers) c.abort();
    this.controllers.clear();
  }
}

interface ReflectorOptions<T extends KubernetesObject, I> {
  resource: 'pods' | 'namespaces';
  path: string;
  fieldSelector?: string;
  slim: (raw: Raw) => T;
  convert: (obj: T) => I;
}

const never = <T>() => new Promise<T>(() => {});

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** An HTTP 410 from the watch request itself (client-node puts the status on the error). */
function isGone(err: unknown): boolean {
  return typeof err === 'object' && err !== null && ((err as { statusCode?: unknown }).statusCode === 410 || (err as { code?: unknown }).code === 410);
}

/**
 * One resource's ListWatch with restart-on-error. client-node's ListWatch has races on stop (a list or a
 * reconnect delay in flight starts a new watch afterwards): its list, delay and watch are all ours and
 * go quiet once stopped.
 *
 * Two changes to ListWatch's pacing. A list is followed by its watch at once: ListWatch waits its reconnect delay
 * between the two, which during a run of 410s (each watch expired at once, each relist followed by a growing
 * delay) left the index as old as that delay, up to 30 s. The backoff of such a run goes before the relist
 * instead: the first relist after a watch that delivered something is immediate, the next ones wait 1, 2, 4 … s
 * (the backoff options), so the index is never older than its last list while it lasts, and the resolver knows it
 * is not in sync (syncState) from the 410 to the next list.
 */
class Reflector<T extends KubernetesObject, I> {
  private informer: ListWatch<T> | undefined;
  private watch: SlimWatch | undefined;
  private events: SourceEvents<I> | undefined;
  private stopped = false;
  private synced = false;
  private attempt = 0;
  private restartTimer: Timer | undefined;
  private readonly stopController = new AbortController();
  private readonly delayTimers = new Set<Timer>();
  private readonly clock: Clock;
  /** Lists since a watch last delivered an event or a bookmark (paces relists after 410s). */
  private relists = 0;
  /** The watch expired (410): the next list is a relist. */
  private expired = false;
  /** A list has completed since the last watch request: its watch must start without delay. */
  private listedSinceWatch = false;
  /** Read by the resolver on every request: mutated in place, never replaced. */
  readonly state: SyncState = { syncedAt: undefined, lost: 'not listed yet' };

  constructor(
    private readonly common: KubeSourceOptions,
    private readonly opts: ReflectorOptions<T, I>,
  ) {
    this.clock = common.clock ?? systemClock;
  }

  start(events: SourceEvents<I>): void {
    if (this.informer || this.stopped) return;
    this.events = events;
    const { kubeConfig } = this.common;
    const { path, fieldSelector, convert } = this.opts;
    const timeout = Math.max(1, Math.round(this.common.watchTimeoutSeconds ?? WATCH_TIMEOUT_SECONDS));
    this.watch = new SlimWatch(kubeConfig, this.opts.slim, {
      clock: this.clock,
      silentMs: this.common.silentWatchMs ?? SILENT_WATCH_MS,
      timeoutSeconds: () => Math.max(1, timeout - Math.floor(Math.random() * Math.min(6, timeout))),
      started: () => {
        this.listedSinceWatch = false;
      },
      event: (type, obj) => this.onWatchEvent(type, obj),
      ended: (err, silent) => this.onWatchEnded(err, silent),
    });
    const informer = new ListWatch<T>(`${path}?allowWatchBookmarks=true`, this.watch, () => this.list(), false, undefined, fieldSelector, {
      delayFn: (ms) => this.delay(ms),
    });
    informer.on('add', (obj) => {
      this.attempt = 0;
      events.upsert(convert(obj));
    });
    informer.on('update', (obj) => {
      this.attempt = 0;
      events.upsert(convert(obj));
    });
    informer.on('delete', (obj) => {
      this.attempt = 0;
      events.remove(convert(obj));
    });
    informer.on('error', (err) => this.onError(err));
    this.informer = informer;
    this.run();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.restartTimer?.cancel();
    for (const t of this.delayTimers) t.cancel();
    this.delayTimers.clear();
    this.stopController.abort(new Error('stopped'));
    this.watch?.close();
    await this.informer?.stop();
  }

  private run(): void {
    this.informer?.start().catch((err: unknown) => this.onError(err));
  }

  private async list(): Promise<KubernetesListObject<T>> {
    const { path, fieldSelector, slim } = this.opts;
    if (this.expired) {
      this.expired = false;
      if (this.relists > 0) await this.wait(this.backoffMs(this.relists - 1));
    }
    const query = fieldSelector ? `?fieldSelector=${encodeURIComponent(fieldSelector)}` : '';
    const signal = AbortSignal.any([this.stopController.signal, AbortSignal.timeout(this.common.listTimeoutMs ?? 30_000)]);
    const body = (await kubeGetJson(this.common.kubeConfig, path + query, signal)) as Raw;
    if (this.stopped) return never();
    if (!body || !Array.isArray(body.items)) throw new Error(`GET ${path}: not a list`);
    const items = (body.items as Raw[]).map(slim);
    this.attempt = 0;
    this.relists++;
    this.listedSinceWatch = true;
    // ListWatch applies the list synchronously once this promise resolves: nothing can read the index in between.
    this.markSynced();
    if (!this.synced) {
      // Report synced after ListWatch has applied the list.
      setImmediate(() => {
        if (this.stopped || this.synced) return;
        this.synced = true;
        this.common.logger.info({ resource: this.opts.resource, count: items.length }, 'watch synced');
        this.events?.synced();
      });
    }
    return { metadata: { resourceVersion: String(body.metadata?.resourceVersion ?? '') }, items };
  }

  /** ListWatch's reconnect delay: none between a list and its watch; never resolves once stopped. */
  private delay(ms: number): Promise<void> {
    if (this.listedSinceWatch && !this.stopped) return Promise.resolve();
    return this.wait(ms);
  }

  /** Resolves after ms on the clock; never once stopped (so no list or watch starts after stop). */
  private wait(ms: number): Promise<void> {
    if (this.stopped) return never();
    return new Promise((resolve) => {
      const t = this.clock.setTimeout(() => {
        this.delayTimers.delete(t);
        if (!this.stopped) resolve();
      }, ms);
      this.delayTimers.add(t);
    });
  }

  private backoffMs(attempt: number): number {
    const { initialMs = 1000, maxMs = 30_000, jitter = 0.2 } = this.common.backoff ?? {};
    const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
    return Math.max(0, Math.round(Math.min(maxMs, base * (1 + jitter * (Math.random() * 2 - 1)))));
  }

  private onWatchEvent(type: string, obj: Raw | undefined): void {
    if (this.stopped) return;
    if (type === 'ERROR') {
      const code = typeof obj?.code === 'number' ? obj.code : undefined;
      if (code === 410) this.expired = true;
      this.markLost(`watch error${code ? ` ${code}` : ''}: ${String(obj?.message ?? obj?.reason ?? 'no message').slice(0, 200)}`);
      return;
    }
    if (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED' || type === 'BOOKMARK') {
      this.relists = 0;
      this.markSynced();
    }
  }

  private onWatchEnded(err: unknown, silent: boolean): void {
    if (this.stopped) return;
    if (silent) this.markLost(`watch silent: no event or bookmark for ${this.common.silentWatchMs ?? SILENT_WATCH_MS} ms; resuming it`);
    else if (isGone(err)) {
      this.expired = true;
      this.markLost('watch answered 410 Gone; relisting');
    } else if (err) this.markLost(`watch failed: ${errorText(err)}`);
    // A watch the server ended cleanly (its timeoutSeconds) is resumed at once from its resourceVersion: nothing lost.
  }

  private markSynced(): void {
    const { state } = this;
    const now = this.clock.now();
    if (state.lost !== undefined && state.syncedAt !== undefined) {
      this.common.logger.info({ resource: this.opts.resource, outOfSyncMs: now - state.syncedAt }, 'watch in sync again');
    }
    state.syncedAt = now;
    state.lost = undefined;
  }

  private markLost(reason: string): void {
    if (this.state.lost === undefined) this.common.logger.warn({ resource: this.opts.resource, reason }, 'watch out of sync');
    this.state.lost = reason;
  }

  private onError(err: unknown): void {
    if (this.stopped) return; // stop() aborts the watch, which client-node reports as an error
    this.markLost(errorText(err));
    const delay = this.backoffMs(this.attempt);
    this.attempt++;
    this.common.logger.warn({ resource: this.opts.resource, err: errorText(err), retryInMs: delay }, 'watch stopped; restarting');
    this.restartTimer?.cancel();
    this.restartTimer = this.clock.setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopped) return;
      this.common.metrics.watchRestarts.inc({ resource: this.opts.resource });
      this.run();
    }, delay);
  }
}

/** This node's pods: ListWatch scoped by spec.nodeName, and the live look-up by IP. */
export class KubePodSource implements PodSource {
  private readonly reflector: Reflector<SlimPod, PodInfo>;
  private readonly clock: Clock;
  /** The last LIST of this node's pods: when it started, its answer, and whether that has come. */
  private nodeList: { startedAt: number; pods: Promise<PodInfo[]>; settled: boolean } | undefined;

  constructor(private readonly options: KubeSourceOptions) {
    if (!options.nodeName) throw new Error('node name is required for the pod watch');
    this.clock = options.clock ?? systemClock;
    this.reflector = new Reflector(options, {
      resource: 'pods',
      path: '/api/v1/pods',
      fieldSelector: `spec.nodeName=${fieldValue(options.nodeName)}`,
      slim: slimPod,
      convert: toPodInfo,
    });
  }

  start(events: SourceEvents<PodInfo>): void {
    this.reflector.start(events);
  }

  stop(): Promise<void> {
    return this.reflector.stop();
  }

  syncState(): SyncState {
    return this.reflector.state;
  }

  /** This node's pods by one LIST, within timeoutMs; shared as listByIp's fallback is (at most one per nodeListIntervalMs). */
  listNode(timeoutMs: number): Promise<PodInfo[]> {
    return this.sharedNodeList(AbortSignal.timeout(Math.max(1, timeoutMs)));
  }

  /**
   * This node's pods holding ip, within timeoutMs for everything. First one GET with the field selector
   * `spec.nodeName=NODE,status.podIP=IP`. A field selector cannot find a pod by a secondary IP: the only
   * selectable pod IP field is status.podIP, the first entry of status.podIPs (field selectors:
   * https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/, the selectable fields:
   * kubernetes/kubernetes pkg/registry/core/pod/strategy.go, ToSelectableFields). So the IPv6 address of a pod
   * whose primary is IPv4 (or the other way round) is never found that way: when the selector finds no live pod,
   * one LIST of this node's pods (`spec.nodeName=NODE`) is scanned for ip in their podIPs. That LIST is heavier
   * than the selector GET (every pod of the node), so it is bounded beyond the resolver's per-IP hold-off: at
   * most one runs at a time and one starts per nodeListIntervalMs; look-ups in between share its answer (or
   * its error). A pod that got its IP after that LIST started is then left to the watch, as a held-off IP is.
   */
  async listByIp(rawIp: string, timeoutMs: number): Promise<PodInfo[]> {
    const ip = canonicalIp(rawIp);
    const signal = AbortSignal.timeout(Math.max(1, timeoutMs));
    const selector = `spec.nodeName=${fieldValue(this.options.nodeName)},status.podIP=${fieldValue(ip)}`;
    const byPrimary = await this.listPods(selector, signal);
    if (byPrimary.some((p) => isLive(p) && p.ips.includes(ip))) return byPrimary;
    const all = await this.sharedNodeList(signal);
    return all.filter((p) => p.ips.includes(ip));
  }

  /**
   * One GET of namespace/name (any node, any phase), within timeoutMs: the pod and the node it is bound to
   * ('' while unscheduled), or undefined when there is no such pod (404). Rejects as listByIp.
   */
  async getPod(namespace: string, name: string, timeoutMs: number): Promise<{ pod: PodInfo; nodeName: string } | undefined> {
    let raw: Raw;
    try {
      raw = (await kubeGetJson(this.options.kubeConfig, `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`, AbortSignal.timeout(Math.max(1, timeoutMs)))) as Raw;
    } catch (err) {
      if (err instanceof KubeHttpError && err.statusCode === 404) return undefined;
      throw err;
    }
    if (!raw || typeof raw !== 'object' || !raw.metadata) throw new Error(`GET pod ${namespace}/${name}: not a pod`);
    return { pod: toPodInfo(slimPod(raw)), nodeName: typeof raw.spec?.nodeName === 'string' ? raw.spec.nodeName : '' };
  }

  private sharedNodeList(signal: AbortSignal): Promise<PodInfo[]> {
    const now = this.clock.now();
    const last = this.nodeList;
    if (last && (!last.settled || now - last.startedAt < (this.options.nodeListIntervalMs ?? 1000))) return last.pods;
    const entry = { startedAt: now, pods: this.listPods(`spec.nodeName=${fieldValue(this.options.nodeName)}`, signal), settled: false };
    const settle = () => {
      entry.settled = true;
    };
    entry.pods.then(settle, settle);
    this.nodeList = entry;
    return entry.pods;
  }

  private async listPods(selector: string, signal: AbortSignal): Promise<PodInfo[]> {
    const body = (await kubeGetJson(this.options.kubeConfig, `/api/v1/pods?fieldSelector=${encodeURIComponent(selector)}`, signal)) as Raw;
    if (!body || !Array.isArray(body.items)) throw new Error('GET /api/v1/pods: not a list');
    return (body.items as Raw[]).map((p) => toPodInfo(slimPod(p)));
  }
}

/** All namespaces (only their iam.amazonaws.com/* annotations are kept). */
export class KubeNamespaceSource implements NamespaceSource {
  private readonly reflector: Reflector<SlimNamespace, NamespaceInfo>;

  constructor(options: KubeSourceOptions) {
    this.reflector = new Reflector(options, {
      resource: 'namespaces',
      path: '/api/v1/namespaces',
      slim: slimNamespace,
      convert: toNamespaceInfo,
    });
  }

  start(events: SourceEvents<NamespaceInfo>): void {
    this.reflector.start(events);
  }

  stop(): Promise<void> {
    return this.reflector.stop();
  }

  syncState(): SyncState {
    return this.reflector.state;
  }
}

/**
 * GET namespaces/NS/serviceaccounts/NAME for ServiceAccountRoles (src/resolver/service-accounts.ts): undefined on
 * 404, only the iam.amazonaws.com/* annotations kept.
 */
export function kubeServiceAccountFetch(kubeConfig: KubeConfig): ServiceAccountFetch {
  return async (namespace, name, signal) => {
    let raw: Raw;
    try {
      raw = (await kubeGetJson(kubeConfig, `/api/v1/namespaces/${encodeURIComponent(namespace)}/serviceaccounts/${encodeURIComponent(name)}`, signal)) as Raw;
    } catch (err) {
      if (err instanceof KubeHttpError && err.statusCode === 404) return undefined;
      throw err;
    }
    const annotations = pick(raw?.metadata?.annotations, nsAnnotation);
    return { metadata: annotations ? { annotations } : {} };
  };
}

export function createKubeSources(options: KubeSourceOptions): { pods: KubePodSource; namespaces: KubeNamespaceSource } {
  return { pods: new KubePodSource(options), namespaces: new KubeNamespaceSource(options) };
}
