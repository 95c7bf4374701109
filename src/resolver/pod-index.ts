/**
 * Pure IP → pod index of this node's live pods. No I/O: the kube adapter feeds it PodInfo.
 *
 * Only live pods are indexed (peers.md pain 2): a pod that has finished (Succeeded/Failed), is being
 * deleted, runs in the host network, or has no IP yet cannot be the one asking. Two live pods on one IP
 * is ambiguous: callers fail closed.
 */

export const ROLE_ANNOTATION = 'iam.amazonaws.com/role';
export const EXTERNAL_ID_ANNOTATION = 'iam.amazonaws.com/external-id';

/** The few fields of a pod the agent uses; everything else of the API object is dropped (memory per node). */
export interface PodInfo {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  /** status.podIP, '' while the pod has none. */
  readonly ip: string;
  readonly serviceAccount: string;
  /** Annotation iam.amazonaws.com/role, trimmed; undefined when absent or blank. */
  readonly role?: string;
  /** Annotation iam.amazonaws.com/external-id, trimmed; undefined when absent or blank. */
  readonly externalId?: string;
  readonly phase: string;
  readonly hostNetwork: boolean;
  /** metadata.deletionTimestamp is set. */
  readonly deleting: boolean;
}

/** The shape of a V1Pod this module reads (raw JSON or client-node's model object). */
export interface PodLike {
  metadata?: {
    uid?: string;
    name?: string;
    namespace?: string;
    annotations?: Record<string, string> | null;
    deletionTimestamp?: unknown;
  } | null;
  spec?: { serviceAccountName?: string; hostNetwork?: boolean | null } | null;
  status?: { phase?: string; podIP?: string | null } | null;
}

function annotation(annotations: Record<string, string> | null | undefined, key: string): string | undefined {
  const value = annotations?.[key];
  if (typeof value !== 'string') return undefined;
  const trimmed = value.trim();
  return trimmed === '' ? undefined : trimmed;
}

/** Extract the compact PodInfo from a V1Pod-shaped object. Missing fields become empty values. */
export function toPodInfo(pod: PodLike): PodInfo {
  const meta = pod.metadata ?? {};
  const info: {
    -readonly [K in keyof PodInfo]: PodInfo[K];
  } = {
    uid: meta.uid ?? '',
    name: meta.name ?? '',
    namespace: meta.namespace ?? '',
    ip: pod.status?.podIP ?? '',
    serviceAccount: pod.spec?.serviceAccountName ?? 'default',
    phase: pod.status?.phase ?? 'Unknown',
    hostNetwork: pod.spec?.hostNetwork === true,
    deleting: meta.deletionTimestamp !== undefined && meta.deletionTimestamp !== null && meta.deletionTimestamp !== '',
  };
  const role = annotation(meta.annotations, ROLE_ANNOTATION);
  if (role !== undefined) info.role = role;
  const externalId = annotation(meta.annotations, EXTERNAL_ID_ANNOTATION);
  if (externalId !== undefined) info.externalId = externalId;
  return info;
}

/** A pod that may be the one sending from its IP right now. */
export function isLive(pod: PodInfo): boolean {
  return pod.phase !== 'Succeeded' && pod.phase !== 'Failed' && !pod.deleting && !pod.hostNetwork && pod.ip !== '';
}

export type IpMatch = { kind: 'pod'; pod: PodInfo } | { kind: 'none' } | { kind: 'ambiguous' };

const NONE: IpMatch = { kind: 'none' };
const AMBIGUOUS: IpMatch = { kind: 'ambiguous' };

/** Classify the live pods among candidates (e.g. the answer of a live GET by IP). */
export function matchLive(candidates: readonly PodInfo[]): IpMatch {
  let found: PodInfo | undefined;
  for (const pod of candidates) {
    if (!isLive(pod)) continue;
    if (found && found.uid !== pod.uid) return AMBIGUOUS;
    found = pod;
  }
  return found ? { kind: 'pod', pod: found } : NONE;
}

export class PodIndex {
  private readonly byUid = new Map<string, PodInfo>();
  /** ip → live pods holding it (almost always exactly one). */
  private readonly byIpMap = new Map<string, PodInfo[]>();
  private readonly waiters = new Map<string, Set<() => void>>();

  /** Live pods indexed. */
  get size(): number {
    return this.byUid.size;
  }

  /** Add or replace a pod by uid; a pod that is not live leaves the index. Returns whether it is indexed. */
  upsert(pod: PodInfo): boolean {
    if (!isLive(pod)) {
      this.remove(pod.uid);
      return false;
    }
    const old = this.byUid.get(pod.uid);
    if (old) this.unlinkIp(old);
    this.byUid.set(pod.uid, pod);
    const list = this.byIpMap.get(pod.ip);
    if (list) list.push(pod);
    else this.byIpMap.set(pod.ip, [pod]);
    if (!old || old.ip !== pod.ip) this.wake(pod.ip);
    return true;
  }

  /** Remove a pod by uid; returns whether it was indexed. */
  remove(uid: string): boolean {
    const old = this.byUid.get(uid);
    if (!old) return false;
    this.byUid.delete(uid);
    this.unlinkIp(old);
    return true;
  }

  get(uid: string): PodInfo | undefined {
    return this.byUid.get(uid);
  }

  byIp(ip: string): IpMatch {
    const list = this.byIpMap.get(ip);
    if (!list || list.length === 0) return NONE;
    if (list.length > 1) return AMBIGUOUS;
    return { kind: 'pod', pod: list[0]! };
  }

  /** All live pods (for re-evaluation when a namespace changes). */
  values(): IterableIterator<PodInfo> {
    return this.byUid.values();
  }

  /**
   * Resolve true as soon as a live pod holds ip (at once if one does already), false when signal aborts.
   * Event driven: upsert() wakes the waiters of the IP it adds. Never rejects.
   */
  waitForIp(ip: string, signal: AbortSignal): Promise<boolean> {
    if (this.byIpMap.has(ip)) return Promise.resolve(true);
    if (signal.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      let set = this.waiters.get(ip);
      if (!set) {
        set = new Set();
        this.waiters.set(ip, set);
      }
      const waiters = set;
      const onAbort = () => {
        done();
        resolve(false);
      };
      const wake = () => {
        signal.removeEventListener('abort', onAbort);
        resolve(true);
      };
      const done = () => {
        waiters.delete(wake);
        if (waiters.size === 0 && this.waiters.get(ip) === waiters) this.waiters.delete(ip);
      };
      waiters.add(wake);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Waiters currently registered (for tests and leak checks). */
  get pendingWaits(): number {
    let n = 0;
    for (const set of this.waiters.values()) n += set.size;
    return n;
  }

  private unlinkIp(pod: PodInfo): void {
    const list = this.byIpMap.get(pod.ip);
    if (!list) return;
    const i = list.findIndex((p) => p.uid === pod.uid);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byIpMap.delete(pod.ip);
  }

  private wake(ip: string): void {
    const set = this.waiters.get(ip);
    if (!set) return;
    this.waiters.delete(ip);
    for (const fn of set) fn();
  }
}
