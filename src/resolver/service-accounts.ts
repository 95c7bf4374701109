/**
 * The role a service account names: its `iam.amazonaws.com/role` annotation (and `iam.amazonaws.com/external-id`),
 * the same keys as on a pod, so that a team sets the role once per workload identity. Read with one GET of the
 * service account (`get serviceaccounts`), remembered for ttlMs, one GET at a time per service account. A service
 * account that does not exist names no role. When the GET fails, an answer up to staleMs old still serves (the API
 * server being down changes no annotation); without one the caller is told (it answers "try again").
 *
 * No I/O here: the fetch function is kube.ts's (kubeServiceAccountFetch).
 */
import { raceAbort, type Clock } from '../clock.ts';
import { EXTERNAL_ID_ANNOTATION, ROLE_ANNOTATION } from './pod-index.ts';

export interface ServiceAccountRole {
  /** Annotation iam.amazonaws.com/role, trimmed; undefined when absent or blank (or no such service account). */
  role?: string;
  /** Annotation iam.amazonaws.com/external-id, trimmed; undefined when absent or blank. */
  externalId?: string;
}

/**
 * The role a pod asks for on the token path: its own annotation, else its service account's (sa, when known). The
 * service account's external ID goes with the service account's role only: an external ID is the secret of one
 * role's trust policy, not to be sent along with another role's AssumeRole; the pod's own one always wins.
 */
export function roleFor(
  pod: { readonly role?: string; readonly externalId?: string },
  sa: ServiceAccountRole | undefined,
): { role?: string; externalId?: string; from: 'pod' | 'service-account' | 'none' } {
  if (pod.role !== undefined) return { role: pod.role, ...(pod.externalId !== undefined ? { externalId: pod.externalId } : {}), from: 'pod' };
  if (sa?.role === undefined) return { ...(pod.externalId !== undefined ? { externalId: pod.externalId } : {}), from: 'none' };
  const externalId = pod.externalId ?? sa.externalId;
  return { role: sa.role, ...(externalId !== undefined ? { externalId } : {}), from: 'service-account' };
}

/** The shape of a V1ServiceAccount this module reads. */
export interface ServiceAccountLike {
  metadata?: { annotations?: Record<string, string> | null } | null;
}

/** GET one service account: undefined when it does not exist (404); rejects on any other failure. */
export type ServiceAccountFetch = (namespace: string, name: string, signal: AbortSignal) => Promise<ServiceAccountLike | undefined>;

export interface ServiceAccountRolesOptions {
  fetch: ServiceAccountFetch;
  clock: Clock;
  /** An answer is reused this long. Default 30 s. */
  ttlMs?: number;
  /** When a GET fails, an answer this old at most still serves. Default 10 min. */
  staleMs?: number;
  /** Budget of one GET. Default 1000 ms. */
  timeoutMs?: number;
  /** Service accounts remembered (least recently used forgotten first). Default 4096. */
  maxEntries?: number;
}

export class ServiceAccountLookupError extends Error {
  override name = 'ServiceAccountLookupError';
}

interface Entry {
  at: number;
  value: ServiceAccountRole;
}

function annotation(annotations: Record<string, string> | null | undefined, key: string): string | undefined {
  const value = annotations?.[key];
  if (typeof value !== 'string') return undefined;
  const trimmed = value.trim();
  return trimmed === '' ? undefined : trimmed;
}

/** The role and external ID a service account's annotations name. */
export function serviceAccountRole(sa: ServiceAccountLike | undefined): ServiceAccountRole {
  const annotations = sa?.metadata?.annotations;
  const out: ServiceAccountRole = {};
  const role = annotation(annotations, ROLE_ANNOTATION);
  if (role !== undefined) out.role = role;
  const externalId = annotation(annotations, EXTERNAL_ID_ANNOTATION);
  if (externalId !== undefined) out.externalId = externalId;
  return out;
}

export class ServiceAccountRoles {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<ServiceAccountRole>>();
  private readonly ttlMs: number;
  private readonly staleMs: number;
  private readonly timeoutMs: number;
  private readonly maxEntries: number;
  private fetches = 0;
  private failures = 0;

  constructor(private readonly opts: ServiceAccountRolesOptions) {
    this.ttlMs = opts.ttlMs ?? 30_000;
    this.staleMs = Math.max(this.ttlMs, opts.staleMs ?? 600_000);
    this.timeoutMs = opts.timeoutMs ?? 1000;
    this.maxEntries = opts.maxEntries ?? 4096;
  }

  /**
   * The role namespace/name names. Rejects with ServiceAccountLookupError when the GET fails and no answer of the
   * last staleMs is known, or when signal aborts (the GET, shared with other callers, goes on).
   */
  get(namespace: string, name: string, signal?: AbortSignal): Promise<ServiceAccountRole> {
    const cached = this.fresh(namespace, name);
    if (cached !== undefined) return Promise.resolve(cached);
    const key = `${namespace}/${name}`;
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.fetch(key, namespace, name).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return signal ? raceAbort(pending, signal) : pending;
  }

  /** get()'s answer when it comes from the cache (an answer younger than ttlMs), else undefined. */
  fresh(namespace: string, name: string): ServiceAccountRole | undefined {
    const key = `${namespace}/${name}`;
    const entry = this.entries.get(key);
    if (!entry || this.opts.clock.now() - entry.at >= this.ttlMs) return undefined;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.value;
  }

  /** What is known of namespace/name without asking (fresh or not), or undefined. */
  peek(namespace: string, name: string): ServiceAccountRole | undefined {
    return this.entries.get(`${namespace}/${name}`)?.value;
  }

  /** Forget namespace/name (e.g. a watch saw it change). */
  invalidate(namespace: string, name: string): void {
    this.entries.delete(`${namespace}/${name}`);
  }

  /** For /debug/state and tests. */
  snapshot(): { entries: number; fetches: number; failures: number } {
    return { entries: this.entries.size, fetches: this.fetches, failures: this.failures };
  }

  private async fetch(key: string, namespace: string, name: string): Promise<ServiceAccountRole> {
    const { clock } = this.opts;
    const startedAt = clock.now();
    this.fetches++;
    let value: ServiceAccountRole;
    try {
      value = serviceAccountRole(await this.opts.fetch(namespace, name, AbortSignal.timeout(Math.max(1, this.timeoutMs))));
    } catch (err) {
      this.failures++;
      const stale = this.entries.get(key);
      if (stale && clock.now() - stale.at < this.staleMs) return stale.value;
      const message = err instanceof Error ? err.message : String(err);
      throw new ServiceAccountLookupError(`service account ${key}: ${message}`);
    }
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    // The answer is no older than the GET's start.
    this.entries.set(key, { at: startedAt, value });
    return value;
  }
}
