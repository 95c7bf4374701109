/**
 * The agent's configuration: one frozen, validated object built from flags and environment.
 * Parsing lives in cli.ts (commander); validation here reports every problem at once, naming the flag.
 */
import { isIP } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { tagValueProblem } from './cache/session-tags.ts';
export type LogFormat = 'json' | 'pretty';
export type IptablesBackendChoice = 'auto' | 'nft' | 'legacy';
/** auto: the eBPF socket redirect where the node supports it, plus the iptables rules; none: no interception. */
export type InterceptMode = 'auto' | 'ebpf' | 'iptables' | 'none';
export const INTERCEPT_MODES: readonly InterceptMode[] = ['auto', 'ebpf', 'iptables', 'none'];
/** optional: pods may GET without a token (IMDSv1); required: a token-less GET gets 401, as from an instance with HttpTokens=required. */
export type Imdsv2Mode = 'optional' | 'required';
export const IMDSV2_MODES: readonly Imdsv2Mode[] = ['optional', 'required'];

export interface InterceptionConfig {
  /** Address the DNAT rules send metadata traffic to, and the metadata server binds to. */
  hostIp: string;
  port: number;
  /** iptables -i patterns: `cali+`, `eni+`, `cni0`, or a negation `!eth0`. */
  hostInterfaces: string[];
  iptablesBackend: IptablesBackendChoice;
}

export interface Config {
  nodeName: string;
  /** Undefined only without interception; then the metadata server binds to 127.0.0.1. */
  hostIp?: string;
  /** The node's IPv6 address: the server listens there too, and fd00:ec2::254 is sent there. */
  hostIpv6?: string;
  port: number;
  metricsPort: number;
  /** Path to a kubeconfig; undefined means in-cluster. */
  kubeconfig?: string;

  intercept: InterceptMode;
  /** The iptables rules are part of the interception (modes iptables and auto). */
  iptables: boolean;
  /** The eBPF socket redirect is part of the interception (modes ebpf and auto; auto falls back when unsupported). */
  ebpf: boolean;
  /** cgroup v2 directory the eBPF programs attach to; undefined: /sys/fs/cgroup when that is cgroup2, else /run/kiam/cgroupv2. */
  cgroupRoot?: string;
  /** bpffs mount the programs and maps are pinned in. */
  bpffs: string;
  hostInterfaces: string[];
  iptablesBackend: IptablesBackendChoice;
  removeRulesOnExit: boolean;
  reconcileIntervalMs: number;

  /** Base URL of the real metadata service (pass-through and the agent's own IMDSv2 session). */
  metadataEndpoint: string;
  /** Pass-through paths (relative to /, e.g. `latest/meta-data/instance-id`) must match one of these… */
  allowRoutes: RegExp[];
  /** …and none of these: the default list (unless --no-default-deny), then --deny-route-regexp's. */
  denyRoutes: RegExp[];
  /** --imdsv2: whether pods must present a token on GETs. */
  imdsv2: Imdsv2Mode;

  /** e.g. arn:aws:iam::123456789012:role/ — a role name in an annotation is appended to it. */
  roleBaseArn?: string;
  roleBaseArnAutodetect: boolean;
  defaultRole?: string;
  sessionDurationSec: number;
  /** Template with {namespace}, {pod}, {serviceAccount}, {node}, {role} placeholders. */
  sessionNameTemplate: string;
  region: string;
  stsEndpoint?: string;
  /** --session-tags: STS session tags naming the pod (src/cache/session-tags.ts). */
  sessionTags: boolean;
  /** --cluster-name (env CLUSTER_NAME): the kubernetes-cluster-name session tag; absent: no such tag. */
  clusterName?: string;
  namespaceRestriction: boolean;
  /** How the entries of kube2iam's namespace annotation iam.amazonaws.com/allowed-roles match (--namespace-restriction-format). */
  allowedRolesFormat: 'glob' | 'regexp';
  /** How long a request from an unknown IP waits for the watch before the live look-up. */
  podWaitMs: number;
  /** Open connections to the metadata server per source IP (src/server/fairness.ts); 0: no cap. */
  maxConnectionsPerIp: number;
  /** Sustained metadata requests a second per source IP, bursts of 3 s' worth; 0: no cap. */
  maxRequestsPerSecond: number;
  /** A metadata connection idle this long between requests is closed; a request's headers must arrive within it. */
  idleTimeoutMs: number;

  /** --container-credentials: serve the container-credentials protocol (src/server/container-credentials.ts). */
  containerCredentials: boolean;
  /** Where it listens (canonical IP literals): --container-credentials-address, else both defaults (CONTAINER_CREDENTIALS_IPS). */
  containerCredentialsAddresses: string[];
  /** The addresses were given: every one is used. Not given: the IPv6 default only on a node with IPv6 enabled. */
  containerCredentialsAddressesGiven: boolean;
  containerCredentialsPort: number;
  /** The dummy link the agent creates and puts the addresses on; undefined (`none`): they are managed elsewhere. */
  containerCredentialsLink?: string;
  /** --token-audience: the audience the pods' projected service-account tokens must be issued for. */
  tokenAudience: string;

  logLevel: string;
  logFormat: LogFormat;
}

/** Thrown with every problem found at once; each line names the flag it is about. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
  }
}

/** Raw option values as the command line parser hands them over (strings, booleans, string lists). */
export interface RawOptions {
  nodeName?: string;
  hostIp?: string;
  hostIpv6?: string;
  port?: string;
  metricsPort?: string;
  kubeconfig?: string;
  iptables?: boolean;
  intercept?: string;
  cgroupRoot?: string;
  bpffs?: string;
  hostInterface?: string[];
  iptablesBackend?: string;
  removeRulesOnExit?: boolean;
  reconcileInterval?: string;
  metadataEndpoint?: string;
  allowRouteRegexp?: string[];
  /** uswitch/kiam's allow list: matched against the path with its leading slash. */
  whitelistRouteRegexp?: string[];
  denyRouteRegexp?: string[];
  /** false with --no-default-deny: the default deny list is dropped. */
  defaultDeny?: boolean;
  imdsv2?: string;
  roleBaseArn?: string;
  roleBaseArnAutodetect?: boolean;
  defaultRole?: string;
  sessionDuration?: string;
  sessionName?: string;
  region?: string;
  stsEndpoint?: string;
  sessionTags?: boolean;
  clusterName?: string;
  namespaceRestriction?: boolean;
  namespaceRestrictionFormat?: string;
  podWaitTimeout?: string;
  maxConnectionsPerIp?: string;
  maxRequestsPerSecond?: string;
  idleTimeout?: string;
  containerCredentials?: boolean;
  containerCredentialsAddress?: string[];
  containerCredentialsPort?: string;
  containerCredentialsLink?: string;
  tokenAudience?: string;
  logLevel?: string;
  logFormat?: string;
}

export const DEFAULTS = {
  port: '8181',
  metricsPort: '9620',
  iptablesBackend: 'auto',
  bpffs: '/sys/fs/bpf',
  reconcileInterval: '10s',
  metadataEndpoint: 'http://169.254.169.254',
  /** Pass-through paths refused unless the operator says otherwise: user data and the instance's own identity keys. */
  denyRouteRegexp: ['^[^/]+/user-data(/|$)', '^[^/]+/meta-data/identity-credentials(/|$)'],
  imdsv2: 'optional',
  sessionDuration: '1h',
  sessionName: '{namespace}.{pod}',
  podWaitTimeout: '800ms',
  maxConnectionsPerIp: '128',
  maxRequestsPerSecond: '100',
  idleTimeout: '5s',
  containerCredentialsPort: '80',
  containerCredentialsLink: 'kiam-link0',
  tokenAudience: 'kiam',
  namespaceRestrictionFormat: 'glob',
  logLevel: 'info',
  logFormat: 'json',
} as const;

const MIN_SESSION_S = 15 * 60;
const MAX_SESSION_S = 12 * 60 * 60;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Parse `800ms`, `10s`, `15m`, `1h`, `1h30m` (or bare seconds) into milliseconds; NaN when malformed. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  for (const match of trimmed.matchAll(re)) {
    total += Number(match[1]) * unit[match[2]!]!;
    consumed += match[0].length;
  }
  return consumed === trimmed.length && consumed > 0 ? total : Number.NaN;
}

/**
 * Regular expressions written by someone else than this code's authors (a namespace's `permitted` and `allowed-roles`
 * annotations, the route flags) run on V8's linear-time engine, the RegExp `l` flag
 * (https://v8.dev/blog/non-backtracking-regexp): the time a match takes grows with the input, never exponentially,
 * whatever the pattern, so `(a+)+$` cannot stall the agent's event loop. The engine sits behind the V8 flag
 * --enable-experimental-regexp-engine: the image's ENTRYPOINT passes it, and it is set here otherwise, before the
 * first such pattern is compiled (Node 20 and 22 allow that). It refuses, as a SyntaxError, what it cannot run in
 * linear time: backreferences, lookahead, lookbehind before Node 22, and counted repetition whose bounds multiply
 * past 16 (`{1,64}`, `(x{4}){5}`; V8 unrolls them); no V8 flag raises that limit.
 */
let linearEngine: boolean | undefined;

/** Whether the `l` flag is available, enabling the engine on first use; false when this Node.js lacks it. */
export function linearEngineAvailable(): boolean {
  if (linearEngine === undefined) {
    const probe = () => {
      try {
        new RegExp('', 'l');
        return true;
      } catch {
        return false;
      }
    };
    if (!probe()) setFlagsFromString('--enable-experimental-regexp-engine');
    linearEngine = probe();
  }
  return linearEngine;
}

/** A pattern on the linear-time engine; throws a SyntaxError (with a plain reason) for what it cannot compile. */
export function linearRegExp(source: string, flags = ''): RegExp {
  if (!linearEngineAvailable()) throw new Error('this Node.js has no linear-time RegExp engine (V8 flag --enable-experimental-regexp-engine)');
  try {
    return new RegExp(source, `${flags}l`);
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    throw new SyntaxError(/linear time/.test(text) ? 'the linear-time engine cannot run it: no backreferences, no lookarounds, no counted repetition above 16 (such as {1,64})' : text);
  }
}

/** `--role-base-arn`: a role ARN prefix ending in `/` (a path may follow `role/`). */
export const ROLE_BASE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/([\w+=,.@-]+\/)*$/;
/** The placeholders a `--session-name` template may use. */
export const SESSION_NAME_PLACEHOLDERS: ReadonlySet<string> = new Set(['namespace', 'pod', 'serviceAccount', 'node', 'role']);

/** An AWS region name such as eu-west-1 or us-gov-west-1. */
export function isRegionName(text: string): boolean {
  return /^[a-z]{2}(-[a-z]+)+-\d+$/.test(text);
}

/** The instance metadata address the agent intercepts. */
export const METADATA_IP = '169.254.169.254';
/** Its IPv6 form on Nitro instances with HttpProtocolIpv6 enabled. */
export const METADATA_IPV6 = 'fd00:ec2::254';
/**
 * The addresses EKS Pod Identity serves the container-credentials protocol on, which the SDKs accept over plain
 * HTTP (AWS_CONTAINER_CREDENTIALS_FULL_URI; https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html).
 */
export const CONTAINER_CREDENTIALS_IP = '169.254.170.23';
export const CONTAINER_CREDENTIALS_IPV6 = 'fd00:ec2::23';
/** --container-credentials-link's value for "the addresses are managed elsewhere". */
export const NO_LINK = 'none';
/** After an optional leading `!`: [A-Za-z0-9_.@:+-], not starting with `-`, `+` (wildcard) only at the end. */
const INTERFACE_RE = /^(?!-)[A-Za-z0-9_.@:-]*\+?$/;
/** IFNAMSIZ - 1. */
const MAX_INTERFACE_LENGTH = 15;

/** Why this cannot be the node's host IP (the DNAT target and bind address), or undefined when it can. */
export function hostIpProblem(ip: unknown): string | undefined {
  const shown = JSON.stringify(ip);
  if (typeof ip !== 'string' || !/^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/.test(ip)) {
    return `host IP ${shown} must be an IPv4 address in dotted-quad form (e.g. 10.0.1.23)`;
  }
  const octets = ip.split('.').map(Number);
  if (octets.some((o) => o > 255)) return `host IP ${shown} has an octet above 255`;
  const first = octets[0] ?? 0;
  if (ip === '0.0.0.0') return `host IP ${shown} is the unspecified address; give the node's own address`;
  if (first === 127) return `host IP ${shown} is a loopback address: DNAT from PREROUTING to loopback is dropped; give the node's own address`;
  if (ip === METADATA_IP) return `host IP ${shown} is the metadata address itself`;
  if (first >= 224) return `host IP ${shown} is a multicast or reserved address`;
  return undefined;
}

/**
 * Why this cannot be the node's IPv6 address (the ip6tables DNAT target), or undefined when it can: it must be a
 * unicast address other than loopback, link-local (fe80::/10), IPv4-mapped or -compatible (RFC 4291 §2.5), and
 * not the IPv6 metadata address fd00:ec2::254 itself. Zone IDs (`%eth0`) are refused.
 */
export function hostIpv6Problem(ip: unknown): string | undefined {
  const shown = JSON.stringify(ip);
  const invalid = `host IPv6 ${shown} must be an IPv6 address (e.g. 2001:db8::23)`;
  if (typeof ip !== 'string' || !ip.includes(':') || !/^[0-9A-Fa-f:.]+$/.test(ip)) return invalid;
  let compressed: string;
  try {
    // The WHATWG URL parser validates IPv6 and serialises it compressed and lowercase (RFC 5952).
    compressed = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return invalid;
  }
  const [head = '', tail] = compressed.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right].map((g) => parseInt(g, 16));
  const [first = 0] = groups;
  const zeroPrefix = groups.slice(0, 5).every((g) => g === 0);
  if (groups.every((g) => g === 0)) return `host IPv6 ${shown} is the unspecified address; give the node's own address`;
  if (compressed === '::1') return `host IPv6 ${shown} is the loopback address: DNAT from PREROUTING to loopback is dropped; give the node's own address`;
  if (compressed === 'fd00:ec2::254') return `host IPv6 ${shown} is the metadata address itself`;
  if ((first & 0xffc0) === 0xfe80) return `host IPv6 ${shown} is a link-local address; give the node's global (or unique local) address`;
  if ((first & 0xff00) === 0xff00) return `host IPv6 ${shown} is a multicast address`;
  if (zeroPrefix && (groups[5] === 0xffff || groups[5] === 0)) {
    return `host IPv6 ${shown} is an IPv4-mapped or IPv4-compatible address; give the node's IPv6 address (its IPv4 address goes in --host-ip)`;
  }
  return undefined;
}

/** The first IPv6 entry of a comma-separated address list (the downward API's status.hostIPs), if any. */
export function ipv6FromList(list: string | undefined): string | undefined {
  return list?.split(',').map((s) => s.trim()).find((s) => s.includes(':'));
}

/** Why this path cannot be given to bpftool (its batch mode splits on blanks; libbpf turns '.' into '_' in pin paths). */
export function pathProblem(flag: string, path: string, allowDots: boolean): string | undefined {
  if (!path.startsWith('/')) return `${flag}: "${path}" must be an absolute path`;
  const re = allowDots ? /^[A-Za-z0-9/_.:@+-]+$/ : /^[A-Za-z0-9/_:@+-]+$/;
  if (!re.test(path)) return `${flag}: "${path}" may hold only letters, digits and /_:@+-${allowDots ? '.' : ' (no dots: libbpf turns them into _ in pin paths)'}`;
  if (path.split('/').includes('..')) return `${flag}: "${path}" must not contain '..'`;
  return undefined;
}

/** Why this is not an iptables `-i` pattern (`cali+`, `eni+`, `!eth0`), or undefined when it is one. */
export function interfacePatternProblem(pattern: unknown): string | undefined {
  const shown = JSON.stringify(pattern);
  if (typeof pattern !== 'string' || pattern === '' || pattern === '!') {
    return `host interface ${shown} is empty`;
  }
  if (pattern === '!+') return `host interface ${shown} matches no interface at all`;
  const name = pattern.startsWith('!') ? pattern.slice(1) : pattern;
  if (name.length > MAX_INTERFACE_LENGTH) {
    return `host interface ${shown} is longer than ${MAX_INTERFACE_LENGTH} characters`;
  }
  if (!INTERFACE_RE.test(name)) {
    return `host interface ${shown} is not an iptables interface pattern: characters [A-Za-z0-9_.@:+-], an optional leading '!', no leading '-', and '+' only at the end`;
  }
  return undefined;
}

/**
 * An address for the container-credentials listener in canonical form (IPv6 compressed, lower case: RFC 5952), or
 * the problem with it: an IP literal that is not unspecified, multicast, IPv4-mapped, or a metadata address.
 */
export function containerAddress(ip: string): { address: string } | { problem: string } {
  const shown = JSON.stringify(ip);
  if (isIP(ip) === 4) {
    const first = Number(ip.split('.')[0]);
    if (ip === '0.0.0.0') return { problem: `${shown} is the unspecified address: give the address pods are told to use` };
    if (first >= 224) return { problem: `${shown} is a multicast or reserved address` };
    if (ip === METADATA_IP) return { problem: `${shown} is the instance metadata address` };
    return { address: ip };
  }
  const invalid = { problem: `${shown} is not an IPv4 or IPv6 address (e.g. ${CONTAINER_CREDENTIALS_IP}, ${CONTAINER_CREDENTIALS_IPV6})` };
  // isIP accepts a zone (`fe80::1%eth0`); the WHATWG URL parser does not, and serialises IPv6 compressed and lower case.
  if (isIP(ip) !== 6) return invalid;
  let address: string;
  try {
    address = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return invalid;
  }
  if (address === '::') return { problem: `${shown} is the unspecified address: give the address pods are told to use` };
  if (address.startsWith('ff')) return { problem: `${shown} is a multicast address` };
  if (address.startsWith('::ffff:')) return { problem: `${shown} is an IPv4-mapped address: give the IPv4 address itself` };
  if (address === METADATA_IPV6) return { problem: `${shown} is the instance metadata address` };
  return { address };
}

/** Loopback addresses (127/8, ::1): a client on this host only; they cannot go on another link. */
export function isLoopbackAddress(address: string): boolean {
  return address === '::1' || /^127\./.test(address);
}

/** Why this cannot be --container-credentials-link (a link name, IFNAMSIZ - 1 at most, or `none`), or undefined. */
export function linkNameProblem(name: string): string | undefined {
  const shown = JSON.stringify(name);
  if (name === NO_LINK) return undefined;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name) || name.startsWith('-') || name === '.' || name === '..') {
    return `${shown} is not a link name: 1 to ${MAX_INTERFACE_LENGTH} characters of [A-Za-z0-9_.-], not starting with '-' (or ${NO_LINK})`;
  }
  if (name === 'lo') return `${shown} is the loopback link: the agent manages a dummy link of its own (give ${NO_LINK} when the addresses are put in place by something else)`;
  return undefined;
}

/**
 * Validate the raw options against the environment and return one frozen Config, or throw a ConfigError
 * listing every problem. `mode` says which flags are required: the agent needs a node name; the interception
 * commands need the interception flags.
 */
export function buildConfig(raw: RawOptions, env: NodeJS.ProcessEnv, mode: 'agent' | 'iptables' | 'intercept' = 'agent'): Config {
  const problems: string[] = [];
  const opt = { ...DEFAULTS, ...stripUndefined(raw) };

  const nodeName = raw.nodeName ?? env.NODE_NAME;
  if (mode === 'agent' && !nodeName) problems.push('--node-name (or env NODE_NAME) is required');
  const hostIp = raw.hostIp ?? (env.HOST_IP || undefined);
  const ipProblem = hostIp === undefined ? undefined : hostIpProblem(hostIp);
  if (ipProblem) problems.push(`--host-ip: ${ipProblem}`);
  // The downward API gives status.hostIPs as one comma-separated value and cannot pick the IPv6 entry itself.
  const hostIpv6 = raw.hostIpv6 ?? (env.HOST_IPV6 || undefined) ?? ipv6FromList(env.HOST_IPS);
  const ip6Problem = hostIpv6 === undefined ? undefined : hostIpv6Problem(hostIpv6);
  if (ip6Problem) problems.push(`--host-ipv6: ${ip6Problem}`);

  // --iptables is the old spelling of --intercept iptables; `kiam iptables …` means the iptables half alone.
  // `kiam intercept …` and `kiam init` default to auto.
  let intercept: InterceptMode = raw.iptables ? 'iptables' : mode === 'intercept' ? 'auto' : 'none';
  if (mode === 'iptables') intercept = 'iptables';
  if (raw.intercept !== undefined) {
    if (!(INTERCEPT_MODES as readonly string[]).includes(raw.intercept)) problems.push(`--intercept: "${raw.intercept}" is not one of ${INTERCEPT_MODES.join(', ')}`);
    else if (raw.iptables && raw.intercept !== 'iptables') problems.push(`--iptables means --intercept iptables; it contradicts --intercept ${raw.intercept}`);
    else intercept = raw.intercept as InterceptMode;
  }
  const iptables = intercept === 'iptables' || intercept === 'auto';
  const ebpf = intercept === 'ebpf' || intercept === 'auto';
  if (intercept !== 'none' && mode === 'agent' && !hostIp) problems.push(`--host-ip (or env HOST_IP) is required with --intercept ${intercept}`);
  const bpffs = opt.bpffs;
  const bpffsProblem = pathProblem('--bpffs', bpffs, false);
  if (bpffsProblem) problems.push(bpffsProblem);
  const cgroupProblem = raw.cgroupRoot === undefined ? undefined : pathProblem('--cgroup-root', raw.cgroupRoot, true);
  if (cgroupProblem) problems.push(cgroupProblem);

  const port = parsePort('--port', opt.port, problems);
  const metricsPort = parsePort('--metrics-port', opt.metricsPort, problems);
  if (port > 0 && port === metricsPort) problems.push('--metrics-port must differ from --port');

  const hostInterfaces = raw.hostInterface ?? [];
  for (const pattern of hostInterfaces) {
    const problem = interfacePatternProblem(pattern);
    if (problem) problems.push(`--host-interface: ${problem}`);
  }
  if (iptables && mode === 'agent' && hostInterfaces.length === 0) {
    problems.push(`--host-interface is required with --intercept ${intercept} (e.g. cali+ for Calico, eni+ for the AWS VPC CNI, cni0 for bridge)`);
  }
  const backend = opt.iptablesBackend;
  if (backend !== 'auto' && backend !== 'nft' && backend !== 'legacy') problems.push(`--iptables-backend: "${backend}" is not one of auto, nft, legacy`);

  const reconcileIntervalMs = parseDuration(opt.reconcileInterval);
  if (!(reconcileIntervalMs >= 1000)) problems.push(`--reconcile-interval: "${opt.reconcileInterval}" must be a duration of at least 1s`);

  let metadataEndpoint = opt.metadataEndpoint.replace(/\/+$/, '');
  try {
    const url = new URL(metadataEndpoint);
    if (url.protocol !== 'http:' || url.pathname !== '/' || url.search) throw new Error('not a plain http base URL');
    metadataEndpoint = url.origin;
  } catch {
    problems.push(`--metadata-endpoint: "${opt.metadataEndpoint}" must be an http:// base URL such as http://169.254.169.254`);
  }
  // Pods choose the paths these are matched against: linear-time patterns only (linearRegExp).
  const allowRoutes = compileAll('--allow-route-regexp', opt.allowRouteRegexp ?? [], problems);
  for (const p of raw.whitelistRouteRegexp ?? []) {
    try {
      allowRoutes.push(LeadingSlashRegExp.of(p));
    } catch (err) {
      problems.push(`--whitelist-route-regexp: "${p}" is not a valid regular expression (${(err as Error).message})`);
    }
  }
  // --deny-route-regexp adds to the default list (user-data, identity credentials); --no-default-deny drops it.
  const denySources = [...new Set([...(raw.defaultDeny === false ? [] : DEFAULTS.denyRouteRegexp), ...(raw.denyRouteRegexp ?? [])])];
  const denyRoutes = compileAll('--deny-route-regexp', denySources, problems);
  const imdsv2 = opt.imdsv2;
  if (!(IMDSV2_MODES as readonly string[]).includes(imdsv2)) problems.push(`--imdsv2: "${imdsv2}" is not one of ${IMDSV2_MODES.join(', ')}`);

  const roleBaseArn = raw.roleBaseArn;
  if (roleBaseArn !== undefined && !ROLE_BASE_ARN.test(roleBaseArn)) {
    problems.push(`--role-base-arn: "${roleBaseArn}" must look like arn:aws:iam::123456789012:role/ (ending in /)`);
  }
  if (roleBaseArn && raw.roleBaseArnAutodetect) problems.push('--role-base-arn and --role-base-arn-autodetect are mutually exclusive');
  if (raw.defaultRole !== undefined && !/^[\w+=,.@/:-]+$/.test(raw.defaultRole)) {
    problems.push(`--default-role: "${raw.defaultRole}" is not a role name or ARN`);
  }

  const sessionMs = parseDuration(opt.sessionDuration);
  const sessionDurationSec = Math.floor(sessionMs / 1000);
  if (!(sessionDurationSec >= MIN_SESSION_S && sessionDurationSec <= MAX_SESSION_S)) {
    problems.push(`--session-duration: "${opt.sessionDuration}" must be between 15m and 12h`);
  }
  const sessionNameTemplate = opt.sessionName;
  const unknownPlaceholder = [...sessionNameTemplate.matchAll(/\{([^}]*)\}/g)].find(
    (m) => !SESSION_NAME_PLACEHOLDERS.has(m[1]!),
  );
  if (unknownPlaceholder) {
    problems.push(`--session-name: unknown placeholder ${unknownPlaceholder[0]} (use {namespace} {pod} {serviceAccount} {node} {role})`);
  }
  if (sessionNameTemplate.trim() === '') problems.push('--session-name must not be empty');

  const region = raw.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? '';
  if (region && !isRegionName(region)) problems.push(`--region: "${region}" is not an AWS region name`);
  if (raw.stsEndpoint !== undefined) {
    try {
      const u = new URL(raw.stsEndpoint);
      if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('scheme');
    } catch {
      problems.push(`--sts-endpoint: "${raw.stsEndpoint}" is not an http(s) URL`);
    }
  }
  const clusterName = raw.clusterName ?? (env.CLUSTER_NAME || undefined);
  const clusterProblem = clusterName === undefined ? undefined : tagValueProblem(clusterName);
  if (clusterProblem) problems.push(`--cluster-name: "${clusterName}" ${clusterProblem}`);
  if (clusterName === '') problems.push('--cluster-name must not be empty');
  const allowedRolesFormat = opt.namespaceRestrictionFormat;
  if (allowedRolesFormat !== 'glob' && allowedRolesFormat !== 'regexp') {
    problems.push(`--namespace-restriction-format: "${allowedRolesFormat}" is not one of glob, regexp`);
  }
  const podWaitMs = parseDuration(opt.podWaitTimeout);
  if (!(podWaitMs >= 0 && podWaitMs <= 10_000)) problems.push(`--pod-wait-timeout: "${opt.podWaitTimeout}" must be a duration between 0 and 10s`);
  const maxConnectionsPerIp = parseCap('--max-connections-per-ip', opt.maxConnectionsPerIp, problems);
  const maxRequestsPerSecond = parseCap('--max-requests-per-second', opt.maxRequestsPerSecond, problems);
  const idleTimeoutMs = parseDuration(opt.idleTimeout);
  if (!(idleTimeoutMs >= 1000 && idleTimeoutMs <= 300_000)) problems.push(`--idle-timeout: "${opt.idleTimeout}" must be a duration between 1s and 5m`);

  // The container-credentials listener (checked whether or not --container-credentials is on: a typo in a flag
  // meant for it is still a typo).
  const containerCredentialsAddressesGiven = (raw.containerCredentialsAddress ?? []).length > 0;
  const containerCredentialsAddresses: string[] = [];
  for (const ip of containerCredentialsAddressesGiven ? raw.containerCredentialsAddress! : [CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6]) {
    const checked = containerAddress(ip.trim());
    if ('problem' in checked) problems.push(`--container-credentials-address: ${checked.problem}`);
    else if (!containerCredentialsAddresses.includes(checked.address)) containerCredentialsAddresses.push(checked.address);
  }
  const containerCredentialsPort = parsePort('--container-credentials-port', opt.containerCredentialsPort, problems);
  if (containerCredentialsPort > 0 && containerCredentialsPort === metricsPort) {
    problems.push('--container-credentials-port must differ from --metrics-port (which listens on every address)');
  }
  const metadataHosts = [hostIp ?? '127.0.0.1', ...(hostIpv6 ? [containerAddressOrSelf(hostIpv6)] : [])];
  const clash = containerCredentialsAddresses.find((a) => metadataHosts.includes(a));
  if (clash !== undefined && containerCredentialsPort === port) {
    problems.push(`--container-credentials-port: the metadata server already listens on ${clash.includes(':') ? `[${clash}]` : clash}:${port}; give another port or address`);
  }
  const linkText = opt.containerCredentialsLink;
  const linkProblem = linkNameProblem(linkText);
  if (linkProblem) problems.push(`--container-credentials-link: ${linkProblem}`);
  const containerCredentialsLink = linkText === NO_LINK ? undefined : linkText;
  const loopback = containerCredentialsAddresses.find(isLoopbackAddress);
  if (loopback !== undefined && containerCredentialsLink !== undefined && !linkProblem) {
    problems.push(`--container-credentials-address: ${loopback} is a loopback address, which cannot go on link ${containerCredentialsLink}: give --container-credentials-link ${NO_LINK} with it`);
  }
  const tokenAudience = opt.tokenAudience;
  // An audience is any string (RFC 7519 §4.1.3); one without blanks or control characters is all we ever need.
  if (!/^[\x21-\x7e]{1,256}$/.test(tokenAudience)) problems.push(`--token-audience: ${JSON.stringify(tokenAudience)} must be 1 to 256 printable characters without blanks`);

  if (!LOG_LEVELS.includes(opt.logLevel)) problems.push(`--log-level: "${opt.logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  if (opt.logFormat !== 'json' && opt.logFormat !== 'pretty') problems.push(`--log-format: "${opt.logFormat}" is not one of json, pretty`);

  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    nodeName: nodeName ?? '',
    hostIp,
    hostIpv6,
    port,
    metricsPort,
    kubeconfig: raw.kubeconfig,
    intercept,
    iptables,
    ebpf,
    cgroupRoot: raw.cgroupRoot,
    bpffs,
    // Copies, frozen too: the lists were validated, so nobody may add to them (or alias the caller's arrays).
    hostInterfaces: Object.freeze([...hostInterfaces]) as string[],
    iptablesBackend: backend as IptablesBackendChoice,
    removeRulesOnExit: Boolean(raw.removeRulesOnExit),
    reconcileIntervalMs,
    metadataEndpoint,
    allowRoutes: Object.freeze(allowRoutes) as RegExp[],
    denyRoutes: Object.freeze(denyRoutes) as RegExp[],
    imdsv2: imdsv2 as Imdsv2Mode,
    roleBaseArn,
    roleBaseArnAutodetect: Boolean(raw.roleBaseArnAutodetect),
    defaultRole: raw.defaultRole,
    sessionDurationSec,
    sessionNameTemplate,
    region,
    stsEndpoint: raw.stsEndpoint,
    sessionTags: Boolean(raw.sessionTags),
    clusterName,
    namespaceRestriction: raw.namespaceRestriction !== false,
    allowedRolesFormat: allowedRolesFormat as 'glob' | 'regexp',
    podWaitMs,
    maxConnectionsPerIp,
    maxRequestsPerSecond,
    idleTimeoutMs,
    containerCredentials: Boolean(raw.containerCredentials),
    containerCredentialsAddresses: Object.freeze(containerCredentialsAddresses) as string[],
    containerCredentialsAddressesGiven,
    containerCredentialsPort,
    containerCredentialsLink,
    tokenAudience,
    logLevel: opt.logLevel,
    logFormat: opt.logFormat as LogFormat,
  });
}

/**
 * A pattern from uswitch/kiam's --whitelist-route-regexp. kiam matched it against the request path with its
 * leading slash (`/latest/meta-data/instance-id`); ours are matched without it, so this one sees the slash again.
 * `source` stays the pattern as given.
 */
export class LeadingSlashRegExp extends RegExp {
  /**
   * The pattern on the linear-time engine, as every route pattern (linearRegExp). With the engine enabled at run time
   * rather than on the command line, a subclass's `flags` reads without the `l`; it still runs on that engine.
   */
  static of(source: string): LeadingSlashRegExp {
    linearRegExp(source);
    return new LeadingSlashRegExp(source, 'l');
  }

  override exec(text: string): RegExpExecArray | null {
    return super.exec(`/${text}`);
  }
}

/** An IPv6 address in the spelling containerAddress() gives, for comparisons; anything else as it is. */
function containerAddressOrSelf(ip: string): string {
  const checked = containerAddress(ip);
  return 'address' in checked ? checked.address : ip;
}

/** A per-source cap: a whole number, 0 meaning none. */
function parseCap(flag: string, text: string, problems: string[]): number {
  const n = Number(text);
  if (!/^\d{1,7}$/.test(text)) {
    problems.push(`${flag}: "${text}" must be a whole number (0 for no cap)`);
    return 0;
  }
  return n;
}

function parsePort(flag: string, text: string, problems: string[]): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 65535) {
    problems.push(`${flag}: "${text}" is not a port number (1-65535)`);
    return -1;
  }
  return n;
}

function compileAll(flag: string, patterns: readonly string[], problems: string[]): RegExp[] {
  const out: RegExp[] = [];
  for (const p of patterns) {
    try {
      out.push(linearRegExp(p));
    } catch (err) {
      problems.push(`${flag}: "${p}" is not a valid regular expression (${(err as Error).message})`);
    }
  }
  return out;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
