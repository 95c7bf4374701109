/**
 * `kiam doctor`'s checks: each one a function over injected ports (command runner, HTTP, interface list,
 * Kubernetes GET, clock) that returns rows with a verdict and, for every verdict but OK, the fix in words.
 * None throws: whatever cannot be reached is a FAIL row.
 */
import type { IptablesBackendChoice } from '../config.ts';
import { detectBackend, netfilterBypassWarnings, type Backend } from '../netfilter/backend.ts';
import { runChecked, type CommandRunner } from '../netfilter/exec.ts';
import { chainState, compare, DEFAULT_CHAIN, desiredRules, formatArgs, METADATA_IP, parseSave, type RuleSpec } from '../netfilter/rules.ts';
import { DEBUG_STATE_PATH, type DebugIdentity, type DebugPod, type DebugState } from './state.ts';

export type Status = 'ok' | 'warn' | 'fail';

export interface CheckRow {
  /** Stable, for scripts: e.g. `iptables.jump`, `interfaces.cali+`, `identity.team-a.a1`. */
  id: string;
  title: string;
  status: Status;
  detail: string;
  /** What to do, in words; present on every row that is not OK. */
  fix?: string;
}

export interface HttpResponse {
  status: number;
  body: string;
}

export interface HttpPort {
  /** One HTTP request; rejects on a network error or when timeoutMs passes. */
  request(url: string, init: { method?: string; headers?: Record<string, string>; timeoutMs: number }): Promise<HttpResponse>;
}

export interface KubePort {
  /** The API server's URL, for the report. */
  server: string;
  /** GET path → parsed JSON of a 200; rejects otherwise (the message says why). */
  get(path: string, timeoutMs: number): Promise<unknown>;
}

const row = (id: string, title: string, status: Status, detail: string, fix?: string): CheckRow => (fix && status !== 'ok' ? { id, title, status, detail, fix } : { id, title, status, detail });
const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

const CNI_HINT = 'Calico cali+, AWS VPC CNI eni+, flannel/bridge cni0, Weave weave, kindnet veth+, Cilium lxc+';
const KNOWN_PREFIXES: Array<[string, string]> = [
  ['cali', 'cali+ (Calico)'],
  ['eni', 'eni+ (AWS VPC CNI)'],
  ['cni0', 'cni0 (flannel/bridge)'],
  ['weave', 'weave (Weave)'],
  ['lxc', 'lxc+ (Cilium)'],
  ['veth', 'veth+ (kindnet)'],
];

// ---- 1. backend and eBPF bypass -------------------------------------------------------------------------

export interface BackendCheck {
  rows: CheckRow[];
  backend?: Backend;
}

/**
 * The iptables backend doctor reads: the flag when given, else the one the running agent writes to, else
 * auto-detection as the agent does it.
 */
export async function checkBackend(runner: CommandRunner, flag: IptablesBackendChoice | undefined, agent: DebugState | undefined): Promise<BackendCheck> {
  const agentBackend = agent?.rules?.backend;
  const choice: IptablesBackendChoice = flag ?? (agentBackend === 'nft' || agentBackend === 'legacy' ? agentBackend : 'auto');
  try {
    const backend = await detectBackend(runner, choice);
    const why = flag === undefined && choice !== 'auto' ? `the one the agent uses: ${agent?.rules?.backendReason ?? 'reported by the agent'}` : backend.reason;
    const rows = [row('iptables.backend', 'iptables backend', 'ok', `${backend.name} (${why})`)];
    if (flag !== undefined && flag !== 'auto' && agentBackend && agentBackend !== flag) {
      rows.push(
        row('iptables.backend-agent', 'agent backend', 'warn', `the agent writes its rules with ${agentBackend}, doctor was told to read ${flag}`,
          `drop --iptables-backend (doctor then reads what the agent writes), or start the agent with --iptables-backend ${flag} if that is the node's real backend`),
      );
    }
    return { rows, backend };
  } catch (err) {
    return {
      rows: [
        row('iptables.backend', 'iptables backend', 'fail', message(err),
          'doctor reads the rules with iptables-nft-save / iptables-legacy-save: run it as root on the node, or inside the agent pod (kubectl exec … -- kiam doctor), where both are installed'),
      ],
    };
  }
}

export function checkBypass(listInterfaces: () => string[]): CheckRow[] {
  const warnings = netfilterBypassWarnings(listInterfaces);
  if (warnings.length === 0) return [row('iptables.bypass', 'netfilter bypass', 'ok', 'no eBPF dataplane interface (cilium_host, bpfin.cali, bpfnatin) found')];
  return warnings.map((w, i) =>
    row(`iptables.bypass${i ? `-${i}` : ''}`, 'netfilter bypass', 'warn', w,
      'check that pods really reach the agent: from a pod, `curl -s http://169.254.169.254/latest/meta-data/iam/security-credentials/` must answer with its role (or 404), never with the node role'),
  );
}

// ---- 2. chain and jump ----------------------------------------------------------------------------------

/** What the agent would install, from its reported config; undefined when it runs without --iptables or is unknown. */
export function agentRuleSpec(agent: DebugState | undefined): Required<RuleSpec> | undefined {
  const c = agent?.config;
  if (!c || !c.iptables || !c.hostIp || c.hostInterfaces.length === 0) return undefined;
  return { hostIp: c.hostIp, port: c.port, hostInterfaces: c.hostInterfaces, chain: agent?.rules?.chain ?? DEFAULT_CHAIN };
}

/** Compare an `iptables-save -t nat` output with what the agent would install (or, without a spec, look for presence only). */
export function inspectRules(saveOutput: string, spec: Required<RuleSpec> | undefined, reconcileIntervalMs?: number): CheckRow[] {
  const chain = spec?.chain ?? DEFAULT_CHAIN;
  const live = chainState(saveOutput, chain);
  const repairs = reconcileIntervalMs ? `the agent repairs drift within its --reconcile-interval (${Math.round(reconcileIntervalMs / 1000)}s); ` : '';
  const reinstall = spec
    ? `kiam iptables install --host-ip ${spec.hostIp} --port ${spec.port} ${spec.hostInterfaces.map((p) => `--host-interface '${p}'`).join(' ')}`
    : 'kiam iptables install --host-ip <node IP> --host-interface <pattern>';
  const persist = `${repairs}if it stays wrong, look for "interception rules" errors in the agent's log, or reinstall once with \`${reinstall}\``;
  const rows: CheckRow[] = [];

  // The chain.
  if (!live.chainPresent) {
    rows.push(row('iptables.chain', `chain ${chain}`, 'fail', `nat chain ${chain} is missing: pods reach the real metadata service (the node's role) or nothing`, persist));
  } else if (spec) {
    const wanted = desiredRules(spec).map((a) => `-A ${chain} ${formatArgs(a)}`);
    const { drift } = compare(spec, { ...live, jumps: [] });
    const chainDrift = drift.filter((d) => !d.startsWith('PREROUTING'));
    if (chainDrift.length === 0) rows.push(row('iptables.chain', `chain ${chain}`, 'ok', `${live.rules.length} DNAT rule(s) to ${spec.hostIp}:${spec.port} for ${spec.hostInterfaces.join(', ')}`));
    else rows.push(row('iptables.chain', `chain ${chain}`, 'fail', `${chainDrift.join('; ')}; found: ${live.rules.join(' | ') || 'nothing'}; wanted: ${wanted.join(' | ')}`, persist));
  } else {
    rows.push(row('iptables.chain', `chain ${chain}`, live.rules.length > 0 ? 'ok' : 'fail', `present with ${live.rules.length} rule(s) (not compared: the agent's settings are unknown)`, persist));
  }

  // The jump.
  const jumps = live.jumps.filter((j) => j.chain === 'PREROUTING');
  if (jumps.length === 0) {
    rows.push(row('iptables.jump', 'PREROUTING jump', 'fail', `PREROUTING does not jump to ${chain}: metadata traffic is not intercepted`, persist));
  } else if (jumps.some((j) => !j.plain)) {
    const odd = jumps.find((j) => !j.plain)!;
    rows.push(row('iptables.jump', 'PREROUTING jump', 'fail', `the jump to ${chain} was modified: -A PREROUTING ${odd.spec}`, persist));
  } else if (jumps.length > 1) {
    rows.push(row('iptables.jump', 'PREROUTING jump', 'warn', `PREROUTING jumps to ${chain} ${jumps.length} times (positions ${jumps.map((j) => j.position).join(', ')})`, persist));
  } else {
    rows.push(row('iptables.jump', 'PREROUTING jump', 'ok', `PREROUTING position ${jumps[0]!.position} jumps to ${chain}`));
  }

  // Another interceptor ahead of ours (kube2iam, an older kiam) takes the traffic first.
  const first = jumps[0]?.position ?? Infinity;
  const prerouting = parseSave(saveOutput).get('nat')?.rules.filter((r) => r.chain === 'PREROUTING') ?? [];
  const ahead = prerouting
    .map((r, i) => ({ position: i + 1, spec: r.spec }))
    .filter((r) => r.position < first && r.spec.includes(METADATA_IP));
  if (ahead.length > 0) {
    rows.push(
      row('iptables.competing', 'other interceptor', 'warn',
        `PREROUTING rule(s) ahead of ${chain} handle ${METADATA_IP}: ${ahead.map((r) => `#${r.position} ${r.spec}`).join(' | ')}`,
        'another metadata proxy (kube2iam, an older kiam) still intercepts first: uninstall it and delete its rule (iptables -t nat -D PREROUTING <its rule>)'),
    );
  }
  return rows;
}

export async function checkRules(runner: CommandRunner, backend: Backend | undefined, agent: DebugState | undefined): Promise<CheckRow[]> {
  if (!backend) return [row('iptables.rules', 'interception rules', 'fail', 'not checked: no iptables backend', 'see the iptables backend row')];
  const notManaged = agent && !agent.config.iptables;
  let save: string;
  try {
    save = (await runChecked(runner, [backend.save, '-t', 'nat'], { timeoutMs: 15_000 })).stdout;
  } catch (err) {
    return [row('iptables.rules', 'interception rules', 'fail', `cannot read the nat table: ${message(err)}`, 'run doctor as root on the node, or inside the agent pod')];
  }
  if (notManaged) {
    const live = chainState(save, agent.rules?.chain ?? DEFAULT_CHAIN);
    const present = live.chainPresent && live.jumps.some((j) => j.chain === 'PREROUTING');
    return [
      row('iptables.rules', 'interception rules', 'warn', `the agent runs without --iptables; its chain is ${present ? 'present (installed by something else)' : 'absent'}`,
        'without --iptables nothing sends pod metadata traffic to the agent: start it with --iptables --host-ip $HOST_IP --host-interface <pattern>, or install the rules with `kiam iptables install`'),
    ];
  }
  return inspectRules(save, agentRuleSpec(agent), agent?.config.reconcileIntervalMs);
}

// ---- 3. host interfaces ---------------------------------------------------------------------------------

/** iptables `-i` semantics: `name` exactly, `pre+` any name starting with `pre` (`+` alone: any), `!` negates. */
export function interfaceMatches(pattern: string, name: string): boolean {
  const negated = pattern.startsWith('!');
  const body = negated ? pattern.slice(1) : pattern;
  const hit = body.endsWith('+') ? name.startsWith(body.slice(0, -1)) : name === body;
  return negated ? !hit : hit;
}

/** Suggest patterns from the interfaces present (known CNI prefixes). */
export function suggestPatterns(names: readonly string[]): string[] {
  return KNOWN_PREFIXES.filter(([prefix]) => names.some((n) => (prefix === 'cni0' || prefix === 'weave' ? n === prefix : n.startsWith(prefix)))).map(([, s]) => s);
}

/**
 * Each pattern against the interfaces present. A positive pattern matching nothing is a WARN (a node with no
 * pods yet has no pod interfaces), and a FAIL when the agent indexes pods yet none of the patterns matches
 * anything: their traffic cannot be intercepted.
 */
export function checkInterfaces(patterns: readonly string[] | undefined, names: readonly string[], podsIndexed: number | undefined, source: string): CheckRow[] {
  if (!patterns || patterns.length === 0) {
    return [row('interfaces', 'host interfaces', 'warn', 'no --host-interface patterns to check (none given, none reported by the agent)', 'pass --host-interface <pattern> (repeatable) or run doctor where the agent is reachable')];
  }
  const sorted = [...names].sort();
  const suggestions = suggestPatterns(sorted);
  const hint = `${suggestions.length ? `interfaces here suggest ${suggestions.join(' or ')}; ` : ''}common patterns: ${CNI_HINT}`;
  const positives = patterns.filter((p) => !p.startsWith('!'));
  const anyPositiveMatch = positives.some((p) => sorted.some((n) => interfaceMatches(p, n)));
  const blind = positives.length > 0 && !anyPositiveMatch && (podsIndexed ?? 0) > 0;
  return patterns.map((pattern) => {
    const id = `interfaces.${pattern}`;
    const title = `--host-interface ${pattern}`;
    const matched = sorted.filter((n) => interfaceMatches(pattern, n));
    if (pattern.startsWith('!')) {
      const excluded = sorted.filter((n) => !interfaceMatches(pattern, n));
      if (excluded.length === 0) {
        return row(id, title, 'warn', `excludes no interface here (${source}); it matches all of: ${sorted.join(', ') || 'none'}`,
          `'${pattern}' should name the node's own uplink (e.g. !eth0, !ens5); interfaces here: ${sorted.join(', ')}`);
      }
      return row(id, title, 'ok', `matches every interface but ${excluded.join(', ')} (${source})`);
    }
    if (matched.length > 0) return row(id, title, 'ok', `matches ${matched.join(', ')} (${source})`);
    const what = `matches no interface on this node (${source}); interfaces here: ${sorted.join(', ') || 'none'}`;
    if (blind) {
      return row(id, title, 'fail', `${what}; the agent indexes ${podsIndexed} pod(s), so their metadata traffic is not intercepted`,
        `set --host-interface on the agent to the prefix of the pod-side interfaces of your CNI (${hint})`);
    }
    return row(id, title, 'warn', what, `if pods run on this node, their interfaces should match: ${hint}`);
  });
}

// ---- 4. metadata endpoint ---------------------------------------------------------------------------------

export async function checkMetadata(http: HttpPort, endpoint: string, timeoutMs: number): Promise<CheckRow[]> {
  const id = 'metadata';
  const title = 'metadata endpoint';
  const fixUnreachable =
    `the agent needs ${endpoint} for pass-through paths, region detection and --role-base-arn-autodetect: run doctor on an EC2 node ` +
    '(or inside the agent pod, which uses the host network); check the instance metadata options (HttpEndpoint enabled, HttpPutResponseHopLimit ≥ 2 for containers) and that no NetworkPolicy/firewall drops 169.254.169.254';
  let token: string | undefined;
  let tokenProblem = '';
  try {
    const put = await http.request(`${endpoint}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' }, timeoutMs });
    if (put.status === 200 && put.body.trim() !== '') token = put.body.trim();
    else tokenProblem = `token PUT answered ${put.status}`;
  } catch (err) {
    return [row(id, title, 'fail', `${endpoint}: token PUT failed: ${message(err)}`, fixUnreachable)];
  }
  try {
    const get = await http.request(`${endpoint}/latest/meta-data/`, { headers: token ? { 'x-aws-ec2-metadata-token': token } : {}, timeoutMs });
    if (get.status !== 200) {
      return [row(id, title, 'fail', `${endpoint}: GET /latest/meta-data/ answered ${get.status}${tokenProblem ? ` (${tokenProblem})` : ''}`, fixUnreachable)];
    }
    if (!token) {
      return [row(id, title, 'warn', `${endpoint} answers IMDSv1 only (${tokenProblem})`, 'IMDSv2 tokens are refused: raise the instance\'s HttpPutResponseHopLimit to 2 (the token PUT crosses one extra hop from a container) or enable IMDSv2')];
    }
    return [row(id, title, 'ok', `${endpoint} answers (IMDSv2 token, ${get.body.split('\n').filter(Boolean).length} meta-data entries)`)];
  } catch (err) {
    return [row(id, title, 'fail', `${endpoint}: GET /latest/meta-data/ failed: ${message(err)}`, fixUnreachable)];
  }
}

// ---- 5. API server --------------------------------------------------------------------------------------

/**
 * GET /version, then a one-item list of this node's pods (what the agent's watch needs). A kubeconfig that
 * cannot be loaded is a FAIL when given with --kubeconfig, a WARN (not checked) when it was only a default.
 */
export async function checkApiServer(kube: () => KubePort, nodeName: string | undefined, timeoutMs: number, explicit = false): Promise<CheckRow[]> {
  const id = 'apiserver';
  const title = 'API server';
  let port: KubePort;
  try {
    port = kube();
  } catch (err) {
    return [
      explicit
        ? row(id, title, 'fail', message(err), 'give --kubeconfig a readable kubeconfig file with a current context')
        : row(id, title, 'warn', `not checked: ${message(err)}`, 'pass --kubeconfig (e.g. /etc/kubernetes/kubelet.conf on the node), or run doctor inside the agent pod (in-cluster credentials)'),
    ];
  }
  const fixNet = `the agent watches pods through ${port.server}: check the node reaches it (DNS, routes, security groups) and that the kubeconfig's credentials are valid`;
  let version: string;
  try {
    const v = (await port.get('/version', timeoutMs)) as { gitVersion?: unknown } | null;
    version = typeof v?.gitVersion === 'string' ? v.gitVersion : 'unknown version';
  } catch (err) {
    return [row(id, title, 'fail', `${port.server}: GET /version failed: ${message(err)}`, fixNet)];
  }
  if (!nodeName) return [row(id, title, 'ok', `${port.server} answers (${version}); pod list not tried: the node name is unknown (agent not reachable)`)];
  const path = `/api/v1/pods?fieldSelector=${encodeURIComponent(`spec.nodeName=${nodeName}`)}&limit=1`;
  try {
    await port.get(path, timeoutMs);
    return [row(id, title, 'ok', `${port.server} answers (${version}); pods of node ${nodeName} can be listed`)];
  } catch (err) {
    return [
      row(id, title, 'fail', `${port.server} (${version}): listing the pods of node ${nodeName} failed: ${message(err)}`,
        "the agent's ServiceAccount needs get/list/watch on pods and namespaces (deploy/rbac.yaml); check `kubectl auth can-i list pods --as system:serviceaccount:<namespace>:<serviceaccount>`"),
    ];
  }
}

// ---- 6. what the running agent sees --------------------------------------------------------------------

export interface AgentFetch {
  rows: CheckRow[];
  state?: DebugState;
}

export async function fetchAgentState(http: HttpPort, metricsPort: number, timeoutMs: number): Promise<AgentFetch> {
  const url = `http://127.0.0.1:${metricsPort}${DEBUG_STATE_PATH}`;
  const fail = (detail: string, fix: string): AgentFetch => ({ rows: [row('agent', 'agent', 'fail', detail, fix)] });
  let res: HttpResponse;
  try {
    res = await http.request(url, { timeoutMs });
  } catch (err) {
    return fail(`${url}: ${message(err)}`,
      `is the agent running on this node with --metrics-port ${metricsPort}? (kubectl get pods -A -o wide -l app.kubernetes.io/name=kiam --field-selector spec.nodeName=<this node>); pass doctor --metrics-port if it uses another port`);
  }
  if (res.status === 403) return fail(`${url} answered 403`, '/debug/state answers loopback clients only: run doctor on the node itself or inside the agent pod');
  if (res.status !== 200) return fail(`${url} answered ${res.status}`, 'an agent older than doctor has no /debug/state: upgrade it, or check that this port is the agent\'s');
  try {
    const state = JSON.parse(res.body) as DebugState;
    if (typeof state !== 'object' || state === null || typeof state.config !== 'object' || typeof state.readiness !== 'object') throw new Error('not a debug state');
    return { rows: [], state };
  } catch (err) {
    return fail(`${url}: unreadable answer: ${message(err)}`, 'check that this port is the kiam agent\'s metrics port');
  }
}

const READINESS_FIX: Record<string, string> = {
  watch: 'the pod and namespace watches have not synced: see the API server row, and the agent\'s RBAC (get/list/watch pods and namespaces)',
  serving: 'the metadata server is not listening: the agent is still starting or shutting down (see its log)',
  rules: 'the interception rules are not in place: see the chain and jump rows and the agent\'s log',
};

const DENIAL_FIX: Record<string, (p: DebugPod) => string> = {
  'not-permitted': (p) => `let namespace ${p.namespace} allow it: kubectl annotate namespace ${p.namespace} iam.amazonaws.com/permitted='<regex matching the full role ARN>' --overwrite (anchored at both ends), or change the pod's role`,
  'namespace-no-policy': (p) => `namespace ${p.namespace} permits no role: kubectl annotate namespace ${p.namespace} iam.amazonaws.com/permitted='${p.requestedRole ? p.requestedRole.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') : '<regex>'}' (a regex matched against the full role ARN), or run the agent with --no-namespace-restriction`,
  'namespace-invalid-policy': (p) => `fix the regular expression in namespace ${p.namespace}'s iam.amazonaws.com/permitted annotation`,
  'namespace-unknown': (p) => `the agent has not seen namespace ${p.namespace}: check its namespace watch (RBAC list/watch namespaces) and its log`,
  'invalid-role': () => 'fix the pod\'s iam.amazonaws.com/role annotation: a role name or a full ARN (arn:aws:iam::<account>:role/[path/]name)',
  'no-base-arn': () => 'use a full role ARN in the annotation, or start the agent with --role-base-arn arn:aws:iam::<account>:role/',
  'invalid-external-id': () => 'fix the pod\'s iam.amazonaws.com/external-id annotation: 2-1224 characters of [\\w+=,.@:/-]',
};

const STS_FIX: Record<string, string> = {
  AccessDenied: "the agent's own identity may not assume this role: the role's trust policy must trust the agent's role (sts:AssumeRole), and the agent's policy must allow sts:AssumeRole on it",
  Throttling: "STS throttles the agent: share sessions (--session-name 'kiam-{namespace}'), or ask AWS for a higher quota",
  timeout: 'STS did not answer in time: check egress from the node to STS (or the VPC endpoint given with --sts-endpoint)',
  network: 'STS is unreachable: check egress from the node to STS (or the VPC endpoint given with --sts-endpoint) and --region',
  'no-credentials': "the agent has no AWS identity of its own: give it one (IRSA, the node's instance profile, or environment variables)",
};

const MINUTE = 60_000;
/** An identity whose credentials stop being served within this is close to expiry. */
export const CLOSE_TO_EXPIRY_MS = 5 * MINUTE;

function inMinutes(ms: number): string {
  const m = Math.round(ms / MINUTE);
  return m >= 0 ? `in ${m} min` : `${-m} min ago`;
}

export function identityRow(identity: DebugIdentity, now: number): CheckRow {
  const id = `identity.${identity.sessionName}.${identity.roleArn}`;
  const title = `credentials ${identity.sessionName}`;
  const what = `${identity.roleArn}${identity.externalId ? ' (external ID)' : ''}`;
  const err = identity.lastError;
  const stsFix = err ? (STS_FIX[err.code] ?? `STS answered ${err.code}: see the agent's log ("assume role failed") for the full error`) : '';
  const servable = identity.servableUntil ? Date.parse(identity.servableUntil) : undefined;
  if (err && !identity.accessKeyId) {
    return row(id, title, 'fail', `${what}: no credentials; STS ${err.code}: ${err.message} (${err.failures} failure(s), next try ${inMinutes(Date.parse(err.retryAt) - now)})`, `pods using it get 503; ${stsFix}`);
  }
  if (err) {
    return row(id, title, 'warn', `${what}: refresh failing (${err.code}: ${err.message}); serving ${identity.accessKeyId} until ${identity.servableUntil}`, stsFix);
  }
  if (!identity.accessKeyId) {
    if (identity.fetching) return row(id, title, 'ok', `${what}: being fetched from STS`);
    return row(id, title, 'warn', `${what}: no credentials yet`, 'the agent fetches them when a pod asks or appears: ask once from the pod, then look for "assume role" in the agent\'s log');
  }
  const expiry = `${identity.accessKeyId} expires ${identity.expiration} (${inMinutes(Date.parse(identity.expiration ?? '') - now)})`;
  if (servable !== undefined && servable - now < CLOSE_TO_EXPIRY_MS && !identity.fetching) {
    return row(id, title, 'warn', `${what}: ${expiry}; served only until ${identity.servableUntil}`,
      'the refresh is late: look for "credential refresh failed" or STS errors in the agent\'s log (kiam_sts_errors_total)');
  }
  const refresh = identity.refreshAt ? Date.parse(identity.refreshAt) : undefined;
  if (refresh !== undefined && identity.users > 0 && !identity.fetching && refresh < now - MINUTE) {
    return row(id, title, 'warn', `${what}: ${expiry}; refresh was due ${inMinutes(refresh - now)}`, "the refresh timer is behind: check the agent's CPU limits and its log");
  }
  return row(id, title, 'ok', `${what}: ${expiry}${identity.refreshAt ? `, refresh ${inMinutes((refresh ?? now) - now)}` : ''}, ${identity.users} pod(s)`);
}

/** Verdicts on the agent's own view: readiness, pods, denials, credentials per identity. */
export function agentRows(state: DebugState, now: number): CheckRow[] {
  const rows: CheckRow[] = [];
  const { readiness, config } = state;
  const failing = Object.entries(readiness.checks).filter(([, ok]) => !ok).map(([name]) => name);
  rows.push(
    readiness.ready
      ? row('agent', 'agent', 'ok', `kiam ${state.version} on node ${config.nodeName} is ready (${Object.keys(readiness.checks).join(', ')})`)
      : row('agent', 'agent', 'fail', `kiam ${state.version} on node ${config.nodeName} is not ready: ${failing.join(', ') || 'no checks reported'} failing`,
          failing.map((f) => READINESS_FIX[f] ?? `${f} is failing: see the agent's log`).join('; ') || "see the agent's log"),
  );
  if (state.pods === null) {
    rows.push(row('agent.pods', 'pods indexed', 'warn', 'the agent has not started its pod watch yet', 'wait for the agent to finish starting, then run doctor again'));
  } else {
    const count = (a: DebugPod['answer']) => state.pods!.filter((p) => p.answer === a).length;
    const roles = new Set(state.pods.filter((p) => p.roleArn).map((p) => p.roleArn));
    rows.push(row('agent.pods', 'pods indexed', 'ok', `${state.pods.length} live pod(s): ${count('role')} with a role (${roles.size} role(s)), ${count('no-role')} without, ${count('denied')} denied`));
    for (const pod of state.pods.filter((p) => p.answer === 'denied')) {
      const fix = DENIAL_FIX[pod.denialCode ?? '']?.(pod) ?? "see the agent's log (\"credentials denied\")";
      rows.push(row(`pod.${pod.namespace}.${pod.name}`, `pod ${pod.namespace}/${pod.name}`, 'warn', `denied (${pod.denialCode}): ${pod.denialReason}`, fix));
    }
  }
  if (state.identities === null) {
    rows.push(row('agent.identities', 'credential cache', 'warn', 'the agent has not created its credential cache yet', 'wait for the agent to finish starting, then run doctor again'));
  } else {
    for (const identity of state.identities) rows.push(identityRow(identity, now));
  }
  return rows;
}
