/**
 * Pure IP → pod index of this node's live pods. No I/O: the kube adapter feeds it PodInfo.
 *
 * Only live pods are indexed: a pod that has finished (Succeeded/Failed), runs in the host network, or has no IP
 * yet cannot be the one asking. A terminating pod (deletionTimestamp set) is still live until its phase is terminal
 * or it is gone: its containers run their preStop hooks and drain during the grace period, and its IP cannot pass
 * to another pod before its sandbox is torn down, which comes after (the kubelet stops the sandbox, releasing the
 * IP through the CNI's DEL, once every container has stopped: https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination).
 * Two live pods on one IP is ambiguous: callers fail closed.
 *
 * A dual-stack pod has two IPs (`status.podIPs`, one IPv4 and one IPv6; `status.podIP` is the first of them,
 * https://kubernetes.io/docs/concepts/services-networking/dual-stack/): every one of them maps to the pod, and
 * the rules above hold per IP. Addresses are kept in one canonical spelling (canonicalIp) on both sides.
 */
import { SocketAddress, isIP } from 'node:net';

export const ROLE_ANNOTATION = 'iam.amazonaws.com/role';
export const EXTERNAL_ID_ANNOTATION = 'iam.amazonaws.com/external-id';

/** The few fields of a pod the agent uses; everything else of the API object is dropped (memory per node). */
export interface PodInfo {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  /** The primary IP (status.podIP, canonical), '' while the pod has none. Always ips[0] ?? ''. */
  readonly ip: string;
  /** Every IP of the pod (status.podIPs, else status.podIP), canonical, primary first, no duplicates. */
  readonly ips: readonly string[];
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
  status?: { phase?: string; podIP?: string | null; podIPs?: ReadonlyArray<{ ip?: string | null } | null> | null } | null;
}

/**
 * One spelling per address, as the server's sockets report them: IPv4 dotted quad as it is; IPv6 in the
 * compressed lower-case form of RFC 5952 (what libuv's inet_ntop writes, so a socket's peer address is already
 * canonical); an IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, the peer of an IPv4 client on a dual-stack socket,
 * RFC 4291 §2.5.5.2) as the IPv4 address. The zone of a scoped address is dropped. Anything that is not an IP
 * address is returned as it is (it matches nothing).
 */
export function canonicalIp(ip: string): string {
  if (!ip.includes(':')) return ip;
  if (ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4) return ip.slice(7);
  let address: string;
  try {
    address = new SocketAddress({ address: ip, family: 'ipv6' }).address;
  } catch {
    return ip;
  }
  // SocketAddress writes a mapped address dotted whatever the input spelling (`::ffff:a00:5` → `::ffff:10.0.0.5`).
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

/** The pod's IPs: podIP first (the API keeps it equal to podIPs[0]), then the rest of podIPs; invalid ones dropped. */
function podIps(status: PodLike['status']): string[] {
  const out: string[] = [];
  const add = (raw: unknown) => {
    if (typeof raw !== 'string' || isIP(raw.trim()) === 0) return;
    const ip = canonicalIp(raw.trim());
    if (!out.includes(ip)) out.push(ip);
  };
  add(status?.podIP);
  for (const entry of status?.podIPs ?? []) add(entry?.ip);
  return out;
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
  const ips = podIps(pod.status);
  const info: {
    -readonly [K in keyof PodInfo]: PodInfo[K];
  } = {
    uid: meta.uid ?? '',
    name: meta.name ?? '',
    namespace: meta.namespace ?? '',
    ip: ips[0] ?? '',
    ips,
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

/** A pod that may be the one sending from its IP right now (a terminating one included: see the header). */
export function isLive(pod: PodInfo): boolean {
  return pod.phase !== 'Succeeded' && pod.phase !== 'Failed' && !pod.hostNetwork && pod.ips.length > 0;
}

export type IpMatch = { kind: 'pod'; pod: PodInfo } | { kind: 'none' } | { kind: 'ambiguous' };

const NONE: IpMatch = { kind: 'none' };
const AMBIGUOUS: IpMatch = { kind: 'ambiguous' };

/** Classify the live pods among candidates (e.g. the answer of a live GET by IP); with ip, only those holding it. */
export function matchLive(candidates: readonly PodInfo[], ip?: string): IpMatch {
  const wanted = ip === undefined ? undefined : canonicalIp(ip);
  let found: PodInfo | undefined;
  for (const pod of candidates) {
    if (!isLive(pod) || (wanted !== undefined && !pod.ips.includes(wanted))) continue;
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
    if (old) this.unlink(old);
    this.byUid.set(pod.uid, pod);
    for (const ip of pod.ips) {
      const list = this.byIpMap.get(ip);
      if (list) list.push(pod);
      else this.byIpMap.set(ip, [pod]);
    }
    for (const ip of pod.ips) if (!old || !old.ips.includes(ip)) this.wake(ip);
    return true;
  }

  /** Remove a pod by uid; returns whether it was indexed. */
  remove(uid: string): boolean {
    const old = this.byUid.get(uid);
    if (!old) return false;
    this.byUid.delete(uid);
    this.unlink(old);
    return true;
  }

  get(uid: string): PodInfo | undefined {
    return this.byUid.get(uid);
  }

  /** The live pod holding ip (in any spelling: the canonical one is tried when the given one is not known). */
  byIp(ip: string): IpMatch {
    let list = this.byIpMap.get(ip);
    if (list === undefined) {
      const canonical = canonicalIp(ip);
      if (canonical !== ip) list = this.byIpMap.get(canonical);
    }
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
  waitForIp(rawIp: string, signal: AbortSignal): Promise<boolean> {
    const ip = canonicalIp(rawIp);
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

  private unlink(pod: PodInfo): void {
    for (const ip of pod.ips) {
      const list = this.byIpMap.get(ip);
      if (!list) continue;
      const i = list.findIndex((p) => p.uid === pod.uid);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.byIpMap.delete(ip);
    }
  }

  private wake(ip: string): void {
    const set = this.waiters.get(ip);
    if (!set) return;
    this.waiters.delete(ip);
    for (const fn of set) fn();
  }
}
