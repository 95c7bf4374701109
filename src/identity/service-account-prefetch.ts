/**
 * Prefetching for the token path (--container-credentials): the metadata path's prefetcher warms the role of each
 * pod's own annotation (the resolver's answer); a pod whose role comes from its service account's annotation
 * instead has that role warmed and kept refreshed too, so its first credential request by token is answered from
 * the cache. Sits between Resolver.onIdentity and Prefetcher.podIdentity (main.ts wires it):
 *
 *   pod annotated (or gone, or not live)       → the resolver's answer, unchanged
 *   no pod annotation, service account names one → the policy's answer for the pod with that role (and the service
 *                                                account's external ID unless the pod has one), as TokenIdentity
 *                                                evaluates it; a denial warms nothing
 *   no annotation on either                    → the resolver's answer (the default role, if any, or nothing)
 *
 * The service account is read through ServiceAccountRoles (cached, one GET at a time per account); an answer that
 * arrives after a newer event for the same pod is dropped. A failed read falls back to the resolver's answer and
 * is logged at debug (the token path asks again when the pod does). hostNetwork pods are not in the resolver's IP
 * index and so are not prefetched: their first credential waits for STS.
 */
import type { Logger } from 'pino';
import type { PodInfo } from '../resolver/pod-index.ts';
import { roleFor, type ServiceAccountRole } from '../resolver/service-accounts.ts';
import type { Lookup, RoleIdentity } from '../resolver/types.ts';

export interface ServiceAccountPrefetchDeps {
  /** The resolver's part used (src/resolver/lookup.ts, Resolver). */
  resolver: {
    podByUid(uid: string): PodInfo | undefined;
    namespaceAnnotations(name: string): Readonly<Record<string, string>> | undefined;
  };
  serviceAccounts: { get(namespace: string, name: string, signal?: AbortSignal): Promise<ServiceAccountRole> };
  policy: { evaluate(pod: PodInfo, namespaceAnnotations: Readonly<Record<string, string>> | undefined): Lookup };
  /** Prefetcher.podIdentity. */
  target: (podUid: string, identity: RoleIdentity | undefined) => void;
  logger: Logger;
}

export class ServiceAccountPrefetch {
  /** podUid → the number of its latest event: an older service-account answer is dropped. */
  private readonly latest = new Map<string, number>();
  private seq = 0;

  constructor(private readonly deps: ServiceAccountPrefetchDeps) {}

  /** Resolver.onIdentity's listener. */
  podIdentity(podUid: string, lookup: Lookup | undefined): void {
    const n = ++this.seq;
    const own = lookup?.kind === 'role' ? lookup.identity : undefined;
    const pod = lookup === undefined ? undefined : this.deps.resolver.podByUid(podUid);
    if (lookup === undefined || pod === undefined || pod.role !== undefined) {
      this.latest.delete(podUid);
      this.deps.target(podUid, own);
      return;
    }
    this.latest.set(podUid, n);
    this.deps.serviceAccounts.get(pod.namespace, pod.serviceAccount).then(
      (sa) => {
        if (this.latest.get(podUid) !== n) return;
        this.latest.delete(podUid);
        const { role, externalId, from } = roleFor(pod, sa);
        if (from !== 'service-account') return this.deps.target(podUid, own);
        const effective: PodInfo = { ...pod, role, ...(externalId !== undefined ? { externalId } : {}) };
        const answer = this.deps.policy.evaluate(effective, this.deps.resolver.namespaceAnnotations(pod.namespace));
        this.deps.target(podUid, answer.kind === 'role' ? answer.identity : undefined);
      },
      (err: unknown) => {
        if (this.latest.get(podUid) !== n) return;
        this.latest.delete(podUid);
        this.deps.logger.debug({ pod: pod.name, namespace: pod.namespace, serviceAccount: pod.serviceAccount, err: err instanceof Error ? err.message : String(err) }, 'service account not read for prefetching');
        this.deps.target(podUid, own);
      },
    );
  }
}
