import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric the agent exports, on a registry of its own (never prom-client's global one), created
 * by createMetrics() so that tests get a fresh set each time. All names carry the `kiam_` prefix.
 */
export interface Metrics {
  readonly registry: Registry;
  /** Metadata requests by handler (token, credentials, listing, info, passthrough, …) and status code. */
  readonly requestDuration: Histogram<'handler' | 'code'>;
  readonly cacheHits: Counter;
  readonly cacheMisses: Counter;
  /** STS AssumeRole latency by result (success, error). */
  readonly stsDuration: Histogram<'result'>;
  /** STS errors by AWS error code (AccessDenied, Throttling, timeout, invalid-response…). */
  readonly stsErrors: Counter<'code'>;
  /** Identities whose credentials the cache currently holds. */
  readonly cachedIdentities: Gauge;
  /** Credential requests answered below the serving floor because STS was failing (down to 5 min before expiry). */
  readonly staleServed: Counter;
  /** Identities whose last STS call failed, by kind (retryable: an outage; non-retryable: a refusal to fix). */
  readonly stsFailingIdentities: Gauge<'kind'>;
  /** Live pods in the index (this node, not hostNetwork, not finished). */
  readonly podsIndexed: Gauge;
  readonly ambiguousIps: Counter;
  /** Requests from IPs that matched no pod even after the wait and the live lookup. */
  readonly unknownIps: Counter;
  /** Pod look-ups answered by the live GET fallback rather than the watch (by IP; by-name-* results: the pod a token names). */
  readonly liveLookups: Counter<'result'>;
  /**
   * Live GETs that confirmed a source while the pod index was not known fresh, by result: same (the index agreed),
   * differs (another pod, or none), unavailable (API unreachable: the index served), refused (API said no: nothing served).
   */
  readonly confirmations: Counter<'result'>;
  /** Seconds since the pod index was last known in sync (list, watch event or bookmark); read at scrape time. */
  readonly podIndexStaleness: Gauge;
  /** 1 while the pod index is known fresh (answers come from it), 0 while each request is confirmed live; at scrape time. */
  readonly podIndexFresh: Gauge;
  /** Where the two gauges above read from; the resolver sets it. */
  podIndexSource: (() => { fresh: boolean; stalenessSeconds: number | undefined }) | undefined;
  /** Watch (re)starts by resource (pods, namespaces) and reason. */
  readonly watchRestarts: Counter<'resource'>;
  /** Denied credential requests by reason. */
  readonly denials: Counter<'reason'>;
  /** Metadata requests refused (403) because their source is no pod of this node (unknown) or more than one (ambiguous). */
  readonly foreignSources: Counter<'reason'>;
  /** Connections and requests refused by the per-source limits, by reason (connections, rate, header-size, header-timeout). */
  readonly clientLimits: Counter<'reason'>;
  /** Rule checks by outcome: in-sync, repaired (drift found and re-applied), error. */
  readonly ruleReconciles: Counter<'result'>;
  /** 1 while the interception rules are in place, 0 otherwise. */
  readonly rulesPresent: Gauge;
  /** eBPF socket redirect checks by outcome: in-sync, repaired, error. */
  readonly ebpfReconciles: Counter<'result'>;
  /** 1 while the eBPF socket redirect is attached and configured, 0 otherwise. */
  readonly ebpfPresent: Gauge;
  /** Connections the eBPF programs redirected since they were loaded, by family (ipv4, ipv6, ipv4-mapped). */
  readonly ebpfRedirects: Gauge<'family'>;
  /** Container-credentials requests answered (--container-credentials), by status code. */
  readonly containerCredentialsRequests: Counter<'code'>;
  /** TokenReviews of pods' tokens, by result: ok, unauthenticated, error (API unavailable), limited (rate bound hit, not sent). */
  readonly tokenReviews: Counter<'result'>;
  /** Token reviews held in the token cache (positive and negative). */
  readonly tokenReviewCacheEntries: Gauge;
  /**
   * Container-credentials requests refused, by reason: no-token, malformed-token (400); malformed, expired,
   * wrong-audience, invalid (401); other-node, pod-not-found, pod-not-live, uid-mismatch, no-pod-claim, no-role, the
   * policy's denial codes (403); review-failed, rate-limited, pod-lookup-failed, service-account-failed, no-credentials (503).
   */
  readonly tokenRefusals: Counter<'reason'>;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  // Event-loop lag sampled once a second, not every 10 ms (prom-client's default wakes an idle agent 100 times a second).
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry, prefix: 'kiam_', eventLoopMonitoringPrecision: 1000 });
  const registers = [registry];
  const metrics: Metrics = {
    registry,
    requestDuration: new Histogram({
      name: 'kiam_metadata_request_duration_seconds',
      help: 'Metadata requests answered, by handler and status code',
      labelNames: ['handler', 'code'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    cacheHits: new Counter({ name: 'kiam_credentials_cache_hits_total', help: 'Credential requests answered from the cache', registers }),
    cacheMisses: new Counter({ name: 'kiam_credentials_cache_misses_total', help: 'Credential requests that had to wait for STS', registers }),
    stsDuration: new Histogram({
      name: 'kiam_sts_assumerole_duration_seconds',
      help: 'STS AssumeRole calls, by result',
      labelNames: ['result'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    stsErrors: new Counter({ name: 'kiam_sts_errors_total', help: 'Failed STS AssumeRole calls, by error code', labelNames: ['code'], registers }),
    cachedIdentities: new Gauge({ name: 'kiam_credentials_cached_identities', help: 'Identities (role, external ID, session name) held in the cache', registers }),
    staleServed: new Counter({
      name: 'kiam_credentials_stale_served_total',
      help: 'Credential requests answered below the 30-minute floor (down to 5 min before expiry) because STS was failing',
      registers,
    }),
    stsFailingIdentities: new Gauge({
      name: 'kiam_sts_failing_identities',
      help: 'Identities whose last STS call failed, by kind (retryable, non-retryable)',
      labelNames: ['kind'],
      registers,
    }),
    podsIndexed: new Gauge({ name: 'kiam_pods_indexed', help: 'Live pods of this node in the IP index', registers }),
    ambiguousIps: new Counter({ name: 'kiam_pod_ip_ambiguous_total', help: 'Requests refused because two live pods share the source IP', registers }),
    unknownIps: new Counter({ name: 'kiam_pod_ip_unknown_total', help: 'Requests from an IP that matched no pod of this node', registers }),
    liveLookups: new Counter({ name: 'kiam_pod_live_lookups_total', help: 'Live API look-ups of a pod after the watch had not seen it, by result (by IP; by-name-* for the pod a token names)', labelNames: ['result'], registers }),
    confirmations: new Counter({
      name: 'kiam_pod_index_confirmations_total',
      help: 'Live GETs confirming a source while the pod index was not known fresh, by result (same, differs, unavailable, refused)',
      labelNames: ['result'],
      registers,
    }),
    podIndexStaleness: new Gauge({
      name: 'kiam_pod_index_staleness_seconds',
      help: 'Seconds since the pod index was last known in sync (a list, a watch event or a bookmark)',
      registers,
      collect() {
        const s = metrics.podIndexSource?.().stalenessSeconds;
        if (s !== undefined) this.set(s);
      },
    }),
    podIndexFresh: new Gauge({
      name: 'kiam_pod_index_fresh',
      help: '1 while the pod index is known fresh; 0 while each request is confirmed by a live GET',
      registers,
      collect() {
        const f = metrics.podIndexSource?.();
        if (f) this.set(f.fresh ? 1 : 0);
      },
    }),
    podIndexSource: undefined,
    watchRestarts: new Counter({ name: 'kiam_watch_restarts_total', help: 'Watches restarted after they stopped, by resource', labelNames: ['resource'], registers }),
    denials: new Counter({ name: 'kiam_credential_denials_total', help: 'Credential requests refused, by reason', labelNames: ['reason'], registers }),
    foreignSources: new Counter({
      name: 'kiam_foreign_source_requests_total',
      help: 'Metadata requests refused because the source is not a pod of this node, by reason (unknown, ambiguous)',
      labelNames: ['reason'],
      registers,
    }),
    clientLimits: new Counter({
      name: 'kiam_client_limits_total',
      help: 'Connections and requests refused by the per-source limits, by reason (connections, rate, header-size, header-timeout)',
      labelNames: ['reason'],
      registers,
    }),
    ruleReconciles: new Counter({ name: 'kiam_iptables_reconciles_total', help: 'Interception rule checks, by result (in-sync, repaired, error)', labelNames: ['result'], registers }),
    rulesPresent: new Gauge({ name: 'kiam_iptables_rules_present', help: '1 while the interception rules are in place', registers }),
    ebpfReconciles: new Counter({ name: 'kiam_ebpf_reconciles_total', help: 'eBPF socket redirect checks, by result (in-sync, repaired, error)', labelNames: ['result'], registers }),
    ebpfPresent: new Gauge({ name: 'kiam_ebpf_redirect_present', help: '1 while the eBPF socket redirect is attached and configured', registers }),
    ebpfRedirects: new Gauge({
      name: 'kiam_ebpf_redirected_connections',
      help: 'Connections the eBPF programs sent to the agent since they were loaded (kernel counter), by family',
      labelNames: ['family'],
      registers,
    }),
    containerCredentialsRequests: new Counter({
      name: 'kiam_container_credentials_requests_total',
      help: 'Container-credentials requests answered, by status code',
      labelNames: ['code'],
      registers,
    }),
    tokenReviews: new Counter({
      name: 'kiam_token_reviews_total',
      help: "TokenReviews of pods' service-account tokens, by result (ok, unauthenticated, error, limited)",
      labelNames: ['result'],
      registers,
    }),
    tokenReviewCacheEntries: new Gauge({ name: 'kiam_token_review_cache_entries', help: 'Token reviews held in the cache (positive and negative)', registers }),
    tokenRefusals: new Counter({
      name: 'kiam_token_refusals_total',
      help: 'Container-credentials requests refused, by reason',
      labelNames: ['reason'],
      registers,
    }),
  };
  return metrics;
}
