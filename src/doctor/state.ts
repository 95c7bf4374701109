/**
 * The debug state: what the running agent reports on GET /debug/state (metrics port, loopback clients only)
 * and what `kiam doctor` reads. Both sides of that wire contract live here. Never a secret key, a session
 * token or an external ID's value; times are ISO 8601 strings.
 *
 * collectDebugState() is pure over small sources that main.ts fills in as the agent starts: a source not
 * there yet (the agent is still starting) is reported as null.
 */
import type { IdentitySnapshot } from '../cache/credentials.ts';
import type { Config } from '../config.ts';
import type { TokenIdentityState } from '../identity/token-identity.ts';
import type { Lookup } from '../resolver/types.ts';

export const DEBUG_STATE_PATH = '/debug/state';
/** Bumped when a field changes meaning or goes away (adding fields does not bump it). */
export const DEBUG_STATE_SCHEMA = 1;

export interface DebugConfig {
  nodeName: string;
  hostIp: string | null;
  port: number;
  metricsPort: number;
  /** The kubeconfig path, or null for in-cluster. */
  kubeconfig: string | null;
  /** --intercept: auto, ebpf, iptables or none (agents older than the eBPF redirect leave it out: iptables decides). */
  intercept: string;
  /** --host-ipv6, or null. */
  hostIpv6: string | null;
  /** The iptables rules are part of the interception (modes iptables and auto). */
  iptables: boolean;
  /** --cgroup-root as given; null: the default (/sys/fs/cgroup when it is cgroup2, else /run/kiam/cgroupv2). */
  cgroupRoot: string | null;
  /** --bpffs */
  bpffs: string;
  hostInterfaces: string[];
  iptablesBackend: string;
  removeRulesOnExit: boolean;
  reconcileIntervalMs: number;
  metadataEndpoint: string;
  /** --imdsv2: optional or required (agents older than the flag leave it out: they answer token-less GETs). */
  imdsv2?: string;
  roleBaseArn: string | null;
  defaultRole: string | null;
  namespaceRestriction: boolean;
  sessionNameTemplate: string;
  sessionDurationSec: number;
  /** The region the agent uses for STS (as given; detected from the node's metadata at start when empty). */
  region: string | null;
  stsEndpoint: string | null;
  /** --session-tags (agents older than the flag leave it out: no tags). */
  sessionTags?: boolean;
  /** --cluster-name, or null. */
  clusterName?: string | null;
  podWaitMs: number;
  /** --container-credentials and its settings (agents older than it leave them out: off). */
  containerCredentials?: boolean;
  containerCredentialsAddresses?: string[];
  containerCredentialsPort?: number;
  /** --container-credentials-link, or null for none (the addresses are managed elsewhere). */
  containerCredentialsLink?: string | null;
  tokenAudience?: string;
}

/** The container-credentials listener (--container-credentials) as the agent runs it. */
export interface DebugContainerCredentials {
  enabled: boolean;
  /** Where it listens, `169.254.170.23:80` or `[fd00:ec2::23]:80`; [] until it does. */
  addresses: string[];
  /** Default addresses left out, and why (the IPv6 one on a node without IPv6). */
  skipped: Array<{ address: string; reason: string }>;
  /** The dummy link the agent keeps the addresses on; null with --container-credentials-link none. */
  link: { name: string; present: boolean; error: string | null } | null;
  audience: string;
  /** TokenIdentity.snapshot(): the token cache, the validations and the TokenReviews; null when off. */
  identity: TokenIdentityState | null;
}

export interface DebugRules {
  /** --iptables */
  enabled: boolean;
  /** nft or legacy, once detected. */
  backend: string | null;
  backendReason: string | null;
  chain: string;
  /** The reconciler's last install or check found the rules in place. */
  present: boolean;
}

export interface DebugEbpf {
  /** --intercept ebpf or auto */
  enabled: boolean;
  /** Installed and reconciled by the agent (false: auto on a node without support; see reason). */
  active: boolean;
  reason: string | null;
  cgroupRoot: string;
  bpffs: string;
  /** The last install or check found the programs attached and configured. */
  present: boolean;
}

export interface DebugPod {
  namespace: string;
  name: string;
  ip: string;
  /** role: gets roleArn; no-role: no annotation and no default role; denied: see reason; */
  answer: 'role' | 'no-role' | 'denied';
  roleArn?: string;
  sessionName?: string;
  externalId?: boolean;
  /** denied: the role asked for (as resolved, or the raw annotation when it is malformed). */
  requestedRole?: string;
  denialCode?: string;
  denialReason?: string;
}

export interface DebugIdentity {
  roleArn: string;
  sessionName: string;
  externalId: boolean;
  /** Live pods retaining it. */
  users: number;
  fetching: boolean;
  accessKeyId: string | null;
  expiration: string | null;
  lastUpdated: string | null;
  /** Credentials are served until then; a refresh must land before. */
  servableUntil: string | null;
  refreshAt: string | null;
  /** retryable is absent from agents older than it. */
  lastError: { code: string; message: string; failures: number; retryAt: string; retryable?: boolean } | null;
  /** STS health (absent from older agents): the last success, failures in a row, the most recent error even if a success followed. */
  lastSuccess?: string | null;
  consecutiveFailures?: number;
  lastErrorCode?: string | null;
  lastErrorAt?: string | null;
  /** Served below the floor right now because STS fails retryably; until staleUntil (5 min before expiry). */
  stale?: boolean;
  staleUntil?: string | null;
  /** --session-tags sent with it. */
  tags?: Array<{ key: string; value: string }>;
}

/** How current the agent's pod index is (absent from older agents). */
export interface DebugPodIndex {
  /** Answers come from the index; false: each request is confirmed by a live GET first. */
  fresh: boolean;
  /** When the pod watch was last known in sync (a list, a watch event or a bookmark). */
  syncedAt: string | null;
  stalenessSeconds: number | null;
  /** Why it is not fresh, when it is not. */
  reason: string | null;
  /** The namespace watch, reported only (it does not gate answers). */
  namespaces: { syncedAt: string | null; lost: string | null } | null;
}

/** The agent's STS client (absent from older agents). */
export interface DebugSts {
  region: string;
  /** configured, metadata, identity-document, partition or default (src/cache/region.ts). */
  regionSource: string;
}

export interface DebugState {
  schema: number;
  version: string;
  time: string;
  startedAt: string;
  config: DebugConfig;
  readiness: { ready: boolean; checks: Record<string, boolean> };
  rules: DebugRules | null;
  ebpf: DebugEbpf | null;
  /** Live pods of this node the resolver indexes; null until the watches have started. */
  pods: DebugPod[] | null;
  /** Identities in the credential cache; null until the cache exists. */
  identities: DebugIdentity[] | null;
  /** null until the agent has chosen its STS region (absent from older agents). */
  sts?: DebugSts | null;
  /** null until the watches have started (absent from older agents). */
  podIndex?: DebugPodIndex | null;
  /** The container-credentials listener; { enabled: false, … } when off (absent from older agents). */
  containerCredentials?: DebugContainerCredentials | null;
}

export interface DebugSources {
  version: string;
  startedAt: number;
  now: () => number;
  config: Config;
  readiness: () => { ready: boolean; checks: Record<string, boolean> };
  rules?: () => DebugRules;
  ebpf?: () => DebugEbpf;
  /** The resolver's current answer per live pod (Resolver.currentIdentities()). */
  pods?: () => Iterable<Lookup>;
  identities?: () => IdentitySnapshot[];
  sts?: () => DebugSts;
  podIndex?: () => { fresh: boolean; syncedAt: number | undefined; reason: string | undefined; namespaces: { syncedAt: number | undefined; lost: string | undefined } | undefined };
  containerCredentials?: () => DebugContainerCredentials;
}

const iso = (ms: number | undefined): string | null => (ms === undefined || !Number.isFinite(ms) ? null : new Date(ms).toISOString());

export function debugConfig(config: Config): DebugConfig {
  return {
    nodeName: config.nodeName,
    hostIp: config.hostIp ?? null,
    port: config.port,
    metricsPort: config.metricsPort,
    kubeconfig: config.kubeconfig ?? null,
    intercept: config.intercept,
    hostIpv6: config.hostIpv6 ?? null,
    iptables: config.iptables,
    cgroupRoot: config.cgroupRoot ?? null,
    bpffs: config.bpffs,
    hostInterfaces: [...config.hostInterfaces],
    iptablesBackend: config.iptablesBackend,
    removeRulesOnExit: config.removeRulesOnExit,
    reconcileIntervalMs: config.reconcileIntervalMs,
    metadataEndpoint: config.metadataEndpoint,
    imdsv2: config.imdsv2,
    roleBaseArn: config.roleBaseArn ?? null,
    defaultRole: config.defaultRole ?? null,
    namespaceRestriction: config.namespaceRestriction,
    sessionNameTemplate: config.sessionNameTemplate,
    sessionDurationSec: config.sessionDurationSec,
    region: config.region || null,
    stsEndpoint: config.stsEndpoint ?? null,
    sessionTags: config.sessionTags,
    clusterName: config.clusterName ?? null,
    podWaitMs: config.podWaitMs,
    containerCredentials: config.containerCredentials,
    containerCredentialsAddresses: [...config.containerCredentialsAddresses],
    containerCredentialsPort: config.containerCredentialsPort,
    containerCredentialsLink: config.containerCredentialsLink ?? null,
    tokenAudience: config.tokenAudience,
  };
}

export function debugPod(lookup: Lookup): DebugPod | undefined {
  switch (lookup.kind) {
    case 'role': {
      const { pod, identity } = lookup;
      return { namespace: pod.namespace, name: pod.name, ip: pod.ip, answer: 'role', roleArn: identity.roleArn, sessionName: identity.sessionName, externalId: identity.externalId !== undefined };
    }
    case 'no-role':
      return { namespace: lookup.pod.namespace, name: lookup.pod.name, ip: lookup.pod.ip, answer: 'no-role' };
    case 'denied': {
      const { pod } = lookup;
      return {
        namespace: pod.namespace,
        name: pod.name,
        ip: pod.ip,
        answer: 'denied',
        ...(lookup.role !== undefined ? { requestedRole: lookup.role } : {}),
        denialCode: lookup.code,
        denialReason: lookup.reason,
      };
    }
    default:
      return undefined;
  }
}

export function debugIdentity(s: IdentitySnapshot): DebugIdentity {
  return {
    roleArn: s.roleArn,
    sessionName: s.sessionName,
    externalId: s.externalId,
    users: s.users,
    fetching: s.fetching,
    accessKeyId: s.accessKeyId ?? null,
    expiration: iso(s.expiration),
    lastUpdated: iso(s.lastUpdated),
    servableUntil: iso(s.servableUntil),
    refreshAt: iso(s.refreshAt),
    lastError: s.lastError
      ? { code: s.lastError.code, message: s.lastError.message, failures: s.lastError.failures, retryAt: iso(s.lastError.retryAt)!, retryable: s.lastError.retryable }
      : null,
    lastSuccess: iso(s.lastSuccessAt),
    consecutiveFailures: s.consecutiveFailures,
    lastErrorCode: s.lastErrorCode ?? null,
    lastErrorAt: iso(s.lastErrorAt),
    stale: s.stale,
    staleUntil: iso(s.staleUntil),
    ...(s.tags ? { tags: s.tags.map((t) => ({ key: t.key, value: t.value })) } : {}),
  };
}

const byName = (a: DebugPod, b: DebugPod) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name);

/** The JSON /debug/state answers with. */
export function collectDebugState(src: DebugSources): DebugState {
  let pods: DebugPod[] | null = null;
  if (src.pods) {
    pods = [];
    for (const lookup of src.pods()) {
      const pod = debugPod(lookup);
      if (pod) pods.push(pod);
    }
    pods.sort(byName);
  }
  const identities = src.identities ? src.identities().map(debugIdentity) : null;
  identities?.sort((a, b) => a.roleArn.localeCompare(b.roleArn) || a.sessionName.localeCompare(b.sessionName));
  return {
    schema: DEBUG_STATE_SCHEMA,
    version: src.version,
    time: iso(src.now())!,
    startedAt: iso(src.startedAt)!,
    config: debugConfig(src.config),
    readiness: src.readiness(),
    rules: src.rules ? src.rules() : null,
    ebpf: src.ebpf ? src.ebpf() : null,
    pods,
    identities,
    sts: src.sts ? src.sts() : null,
    podIndex: src.podIndex ? debugPodIndex(src.podIndex(), src.now()) : null,
    containerCredentials: src.containerCredentials ? src.containerCredentials() : null,
  };
}

export function debugPodIndex(p: NonNullable<ReturnType<NonNullable<DebugSources['podIndex']>>>, now: number): DebugPodIndex {
  return {
    fresh: p.fresh,
    syncedAt: iso(p.syncedAt),
    stalenessSeconds: p.syncedAt === undefined ? null : Math.max(0, Math.round((now - p.syncedAt) / 100) / 10),
    reason: p.reason ?? null,
    namespaces: p.namespaces ? { syncedAt: iso(p.namespaces.syncedAt), lost: p.namespaces.lost ?? null } : null,
  };
}
