/**
 * `kiam doctor`'s checks: each one a function over injected ports (command runner, HTTP, interface list,
 * Kubernetes GET, node facts, clock) that returns rows with a verdict and, for every verdict but OK, the fix in
 * words. None throws: whatever cannot be reached is a FAIL row.
 */
import { stsErrorFix } from '../cache/sts-errors.ts';
import { DEFAULTS, type InterceptMode, type IptablesBackendChoice } from '../config.ts';
import { detectBackend, EBPF_DATAPLANE_INTERFACES, type Backend } from '../netfilter/backend.ts';
import { readLive } from '../netfilter/ebpf/interceptor.ts';
import { CONFIG_MAP, HOOKS, layout, plan, PROG_PREFIX, wantedConfig, type AttachedProg, type LiveState, type MountInfo, type Support } from '../netfilter/ebpf/plan.ts';
import { DEFAULT_CGROUP_ROOT, resolveCgroupRoot } from '../netfilter/ebpf/support.ts';
import { runChecked, type CommandRunner } from '../netfilter/exec.ts';
import {
  backstopChain,
  canonicalIpv6,
  compare,
  compareBackstop,
  DEFAULT_CHAIN,
  desiredBackstop,
  desiredRules,
  familyState,
  formatArgs,
  metadataAddress,
  rulesAhead,
  type IpFamily,
  type JumpRule,
  type ResolvedRuleSpec,
  type RuleAhead,
} from '../netfilter/rules.ts';
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
const worst = (statuses: readonly Status[]): Status => (statuses.includes('fail') ? 'fail' : statuses.includes('warn') ? 'warn' : 'ok');

const CNI_HINT = 'Calico cali+, AWS VPC CNI eni+, flannel/bridge cni0, Weave weave, kindnet veth+, Cilium lxc+';
const KNOWN_PREFIXES: Array<[string, string]> = [
  ['cali', 'cali+ (Calico)'],
  ['eni', 'eni+ (AWS VPC CNI)'],
  ['cni0', 'cni0 (flannel/bridge)'],
  ['weave', 'weave (Weave)'],
  ['lxc', 'lxc+ (Cilium)'],
  ['veth', 'veth+ (kindnet)'],
];

// ---- 0. how the agent intercepts ------------------------------------------------------------------------

/** The running agent's interception, from its /debug/state; `mode` is undefined when the agent is unknown. */
export interface AgentInterception {
  mode: InterceptMode | undefined;
  hostIp?: string;
  hostIpv6?: string;
  port?: number;
  /** The agent runs the eBPF redirect (mode ebpf, or auto on a node that supports it). */
  ebpfActive: boolean;
  /** Why auto runs without it. */
  ebpfReason: string | null;
  /** The agent has reported its eBPF state (it does once its interception is installed). */
  ebpfReported: boolean;
  reconcileIntervalMs?: number;
}

const MODES: readonly string[] = ['auto', 'ebpf', 'iptables', 'none'];

export function agentInterception(agent: DebugState | undefined): AgentInterception {
  if (!agent) return { mode: undefined, ebpfActive: false, ebpfReason: null, ebpfReported: false };
  const c = agent.config;
  // Agents older than --intercept report only whether they run the iptables rules.
  const mode = (MODES.includes(c.intercept) ? c.intercept : c.iptables ? 'iptables' : 'none') as InterceptMode;
  const ebpf = agent.ebpf ?? null;
  return {
    mode,
    ...(c.hostIp ? { hostIp: c.hostIp } : {}),
    ...(c.hostIpv6 ? { hostIpv6: c.hostIpv6 } : {}),
    port: c.port,
    ebpfActive: mode === 'ebpf' || (mode === 'auto' && ebpf?.active === true),
    ebpfReason: ebpf?.reason ?? (mode === 'auto' && !ebpf ? 'the agent has not reported its eBPF state yet: is it still starting?' : null),
    ebpfReported: ebpf !== null,
    reconcileIntervalMs: c.reconcileIntervalMs,
  };
}

/** Whether the agent runs the eBPF redirect: unknown without the agent, or while an auto agent has not said yet. */
export function ebpfUse(ai: AgentInterception): 'used' | 'unused' | 'unknown' {
  if (ai.mode === undefined || (ai.mode === 'auto' && !ai.ebpfReported)) return 'unknown';
  return ai.ebpfActive ? 'used' : 'unused';
}

const usesIptables = (mode: InterceptMode | undefined): boolean => mode === undefined || mode === 'iptables' || mode === 'auto';

function repairsWithin(ai: AgentInterception): string {
  if (ai.mode === undefined) return 'the agent repairs it once it runs (see the agent row); ';
  return ai.reconcileIntervalMs ? `the agent repairs it on its next reconcile (within its --reconcile-interval, ${Math.round(ai.reconcileIntervalMs / 1000)}s); ` : 'the agent repairs it on its next reconcile; ';
}

// ---- 1. backend and dataplane ---------------------------------------------------------------------------

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
    const mode = agentInterception(agent).mode;
    if (!usesIptables(mode)) return { rows: [row('iptables.backend', 'iptables backend', 'ok', `not used (--intercept ${mode}): ${message(err)}`)] };
    return {
      rows: [
        row('iptables.backend', 'iptables backend', 'fail', message(err),
          'doctor reads the rules with iptables-nft-save / iptables-legacy-save: run it as root on the node, or inside the agent pod (kubectl exec … -- kiam doctor), where both are installed'),
      ],
    };
  }
}

/** Which dataplane forwards pod traffic, as far as its interfaces tell. */
export interface Dataplane {
  /** ebpf: pod traffic may bypass netfilter (and the DNAT); unknown: the interfaces could not be listed. */
  kind: 'netfilter' | 'ebpf' | 'unknown';
  /** `Cilium eBPF`, `Calico eBPF`, `netfilter` or `unknown`. */
  name: string;
  /** What it was told by. */
  evidence: string;
}

export function detectDataplane(listInterfaces: () => string[]): Dataplane {
  let names: Set<string>;
  try {
    names = new Set(listInterfaces());
  } catch (err) {
    return { kind: 'unknown', name: 'unknown', evidence: `cannot list the interfaces: ${message(err)}` };
  }
  const found = EBPF_DATAPLANE_INTERFACES.filter(([iface]) => names.has(iface));
  if (found.length === 0) return { kind: 'netfilter', name: 'netfilter', evidence: 'no cilium_host, bpfin.cali or bpfnatin interface' };
  return { kind: 'ebpf', name: [...new Set(found.map(([, n]) => n))].join(' and '), evidence: `${found.map(([i]) => i).join(', ')} found` };
}

const USE_AUTO =
  'run the agent with --intercept auto (the DaemonSet default): the eBPF socket redirect holds whatever the dataplane does, the iptables DNAT only where pod traffic passes through netfilter ' +
  '(on Cilium only with bpf.hostLegacyRouting=true)';

/** The dataplane, and whether the agent's mode holds on it (with the agent unknown: whether what is attached does). */
export function dataplaneRow(dp: Dataplane, ai: AgentInterception, ebpfAttached: boolean): CheckRow {
  const id = 'dataplane';
  const title = 'dataplane';
  const what = `${dp.name} (${dp.evidence})`;
  if (dp.kind === 'unknown') {
    return row(id, title, 'warn', `cannot tell: ${dp.evidence}`, 'doctor reads /sys/class/net: run it on the node, or inside the agent pod (host network)');
  }
  if (ai.mode === 'none') return row(id, title, 'ok', `${what}; the agent intercepts nothing itself (--intercept none): see the interception rows`);
  if (dp.kind === 'netfilter') return row(id, title, 'ok', `${what}: ${ai.mode ? `--intercept ${ai.mode} holds` : 'the eBPF redirect and the iptables DNAT both hold'} on it`);
  const bypass = `pod traffic may bypass netfilter and the metadata DNAT with it`;
  if (ai.mode === undefined) {
    return ebpfAttached
      ? row(id, title, 'ok', `${what}: ${bypass}; the eBPF redirect of ours attached holds on it`)
      : row(id, title, 'fail', `${what}: ${bypass}, and no eBPF redirect of ours is attached`, USE_AUTO);
  }
  if (ai.ebpfActive) return row(id, title, 'ok', `${what}: ${bypass}; --intercept ${ai.mode} runs the eBPF socket redirect, which holds on it`);
  if (ai.mode === 'iptables') return row(id, title, 'fail', `${what}: ${bypass}, so --intercept iptables does not hold on it`, USE_AUTO);
  return row(id, title, 'fail', `${what}: ${bypass}; --intercept auto fell back to iptables alone (${ai.ebpfReason ?? 'no eBPF support'}), which does not hold on it`,
    'make the eBPF socket redirect possible on this node (see the eBPF kernel support rows), then restart the agent: auto picks it up at start');
}

// ---- 2. iptables: chain, jump, backstop, rules ahead ----------------------------------------------------

/** What the agent would install, from its reported config; undefined when it runs without the iptables rules or is unknown. */
export function agentRuleSpec(agent: DebugState | undefined): ResolvedRuleSpec | undefined {
  const c = agent?.config;
  if (!c || !c.iptables || !c.hostIp || c.hostInterfaces.length === 0) return undefined;
  const spec: ResolvedRuleSpec = { hostIp: c.hostIp, port: c.port, hostInterfaces: c.hostInterfaces, chain: agent?.rules?.chain ?? DEFAULT_CHAIN };
  if (c.hostIpv6) spec.hostIpv6 = canonicalIpv6(c.hostIpv6) ?? c.hostIpv6;
  return spec;
}

/** One family's rules as doctor sees them. */
export interface RulesInspection {
  rows: CheckRow[];
  /** The DNAT is in place: the nat chain holds rules, PREROUTING jumps to it, nothing ahead handles the metadata address. */
  holds: boolean;
  /** Anything of ours is there (a chain or a jump, nat or filter). */
  present: boolean;
  /** The backstop holds rules and INPUT and FORWARD jump to it: traffic the DNAT misses is rejected, not leaked. */
  failsClosed: boolean;
}

function reinstallCommand(spec: ResolvedRuleSpec | undefined): string {
  if (!spec) return 'kiam intercept install --intercept iptables --host-ip <node IP> --host-interface <pattern>';
  return `kiam intercept install --intercept iptables --host-ip ${spec.hostIp}${spec.hostIpv6 ? ` --host-ipv6 ${spec.hostIpv6}` : ''} --port ${spec.port} ${spec.hostInterfaces.map((p) => `--host-interface '${p}'`).join(' ')}`;
}

/** The verdict on a hook chain's jumps to one of our chains. */
function jumpVerdict(jumps: readonly JumpRule[], hook: string, chain: string): { status: Status; text: string } {
  const mine = jumps.filter((j) => j.chain === hook);
  if (mine.length === 0) return { status: 'fail', text: `${hook} does not jump to ${chain}` };
  const odd = mine.find((j) => !j.plain);
  if (odd) return { status: 'fail', text: `the jump to ${chain} was modified: -A ${hook} ${odd.spec}` };
  if (mine.length > 1) return { status: 'warn', text: `${hook} jumps to ${chain} ${mine.length} times (positions ${mine.map((j) => j.position).join(', ')})` };
  return { status: 'ok', text: `${hook} position ${mine[0]!.position} jumps to ${chain}` };
}

/**
 * Compare one family's iptables-save output (every table: the DNAT is in nat, the backstop in filter) with what the
 * agent would install, or, without a spec, look for presence only.
 */
export function inspectFamily(saveOutput: string, spec: ResolvedRuleSpec | undefined, family: IpFamily = 'ipv4', reconcileIntervalMs?: number): RulesInspection {
  const chain = spec?.chain ?? DEFAULT_CHAIN;
  const backstop = backstopChain(chain);
  const live = familyState(saveOutput, chain);
  const v6 = family === 'ipv6';
  const prefix = v6 ? 'ip6tables' : 'iptables';
  const tool = v6 ? 'ip6tables ' : '';
  const address = metadataAddress(family);
  const repairs = reconcileIntervalMs ? `the agent repairs drift within its --reconcile-interval (${Math.round(reconcileIntervalMs / 1000)}s); ` : '';
  const persist = `${repairs}if it stays wrong, look for "interception rules" errors in the agent's log, or reinstall once with \`${reinstallCommand(spec)}\``;
  const rows: CheckRow[] = [];

  // The nat chain.
  if (!live.nat.chainPresent) {
    rows.push(row(`${prefix}.chain`, `${tool}chain ${chain}`, 'fail', `nat chain ${chain} is missing: pods reach the real metadata service (the node's role) or nothing`, persist));
  } else if (spec) {
    const wanted = desiredRules(spec, family).map((a) => `-A ${chain} ${formatArgs(a)}`);
    const chainDrift = compare(spec, { ...live.nat, jumps: [], hookRules: [] }, family).drift.filter((d) => d.startsWith('chain '));
    const target = v6 ? `[${spec.hostIpv6}]:${spec.port}` : `${spec.hostIp}:${spec.port}`;
    if (chainDrift.length === 0) rows.push(row(`${prefix}.chain`, `${tool}chain ${chain}`, 'ok', `${live.nat.rules.length} DNAT rule(s) to ${target} for ${spec.hostInterfaces.join(', ')}`));
    else rows.push(row(`${prefix}.chain`, `${tool}chain ${chain}`, 'fail', `${chainDrift.join('; ')}; found: ${live.nat.rules.join(' | ') || 'nothing'}; wanted: ${wanted.join(' | ')}`, persist));
  } else {
    rows.push(row(`${prefix}.chain`, `${tool}chain ${chain}`, live.nat.rules.length > 0 ? 'ok' : 'fail', `present with ${live.nat.rules.length} rule(s) (not compared: the agent's settings are unknown)`, persist));
  }

  // The PREROUTING jump.
  const jump = jumpVerdict(live.nat.jumps, 'PREROUTING', chain);
  const jumpText = jump.status === 'fail' && jump.text.startsWith('PREROUTING') ? `${jump.text}: metadata traffic is not intercepted` : jump.text;
  rows.push(row(`${prefix}.jump`, `${tool}PREROUTING jump`, jump.status, jumpText, persist));

  // The filter backstop: rejects metadata traffic from the pod interfaces that escaped the DNAT.
  const bs = live.backstop;
  if (!bs.chainPresent) {
    rows.push(row(`${prefix}.backstop`, `${tool}backstop chain`, 'fail',
      `filter chain ${backstop} is missing: should the DNAT go (a flushed nat table), pods would reach the real metadata service instead of failing closed`, persist));
  } else {
    const parts: Array<{ status: Status; text: string }> = [];
    if (spec) {
      const drift = compareBackstop(spec, { ...bs, jumps: [], hookRules: [] }, family).drift.filter((d) => d.startsWith('chain '));
      if (drift.length > 0) parts.push({ status: 'fail', text: `${drift.join('; ')}; found: ${bs.rules.join(' | ') || 'nothing'}; wanted: ${desiredBackstop(spec, family).map((a) => `-A ${backstop} ${formatArgs(a)}`).join(' | ')}` });
      else parts.push({ status: 'ok', text: `${bs.rules.length} REJECT rule(s) for ${spec.hostInterfaces.join(', ')}` });
    } else {
      parts.push({ status: bs.rules.length > 0 ? 'ok' : 'fail', text: `present with ${bs.rules.length} rule(s) (not compared: the agent's settings are unknown)` });
    }
    for (const hook of ['INPUT', 'FORWARD']) parts.push(jumpVerdict(bs.jumps, hook, backstop));
    rows.push(row(`${prefix}.backstop`, `${tool}backstop chain`, worst(parts.map((p) => p.status)), parts.map((p) => p.text).join('; '), persist));
  }

  // Rules ahead of our jumps: those handling the metadata address take its traffic first (kube2iam, an older kiam).
  const ahead: RuleAhead[] = [...rulesAhead(live.nat, address), ...rulesAhead(bs, address)];
  const listed = (rules: RuleAhead[]) => rules.map((r) => `${r.chain} #${r.position}: ${r.spec}`).join(' | ');
  const shadowing = ahead.filter((r) => r.shadows);
  const others = ahead.filter((r) => !r.shadows);
  if (shadowing.length > 0) {
    rows.push(
      row(`${prefix}.competing`, `${tool}other interceptor`, 'fail', `rule(s) ahead of our jump handle ${address} and take that traffic first: ${listed(shadowing)}`,
        `another metadata proxy (kube2iam, an older kiam) still intercepts first: uninstall it and delete its rule (${v6 ? 'ip6tables' : 'iptables'} -t nat -D PREROUTING <its rule>, -t filter for INPUT and FORWARD); ` +
          'the agent moves its jumps back to position 1 on its next reconcile, until the other proxy inserts its own again'),
    );
  }
  if (others.length > 0) {
    rows.push(
      // OK, not WARN: Calico and kube-proxy put their own jumps first on every healthy node, and the agent leaves them.
      row(`${prefix}.ahead`, `${tool}rules ahead of ours`, 'ok', `rule(s) ahead of our jump, none naming ${address} (left in place): ${listed(others)}`),
    );
  }

  const natShadowed = shadowing.some((r) => r.chain === 'PREROUTING');
  const anyJump = (jumps: readonly JumpRule[]) => jumps.length > 0;
  return {
    rows,
    holds: live.nat.chainPresent && live.nat.rules.length > 0 && live.nat.jumps.some((j) => j.chain === 'PREROUTING') && !natShadowed,
    present: live.nat.chainPresent || anyJump(live.nat.jumps) || bs.chainPresent || anyJump(bs.jumps),
    failsClosed: bs.chainPresent && bs.rules.length > 0 && ['INPUT', 'FORWARD'].every((hook) => bs.jumps.some((j) => j.chain === hook)),
  };
}

/** The rows of inspectFamily (IPv4 by default). */
export function inspectRules(saveOutput: string, spec: ResolvedRuleSpec | undefined, reconcileIntervalMs?: number, family: IpFamily = 'ipv4'): CheckRow[] {
  return inspectFamily(saveOutput, spec, family, reconcileIntervalMs).rows;
}

export interface IptablesCheck {
  rows: CheckRow[];
  /** undefined: not read. */
  ipv4?: RulesInspection;
  ipv6?: RulesInspection;
}

const SAVE_TIMEOUT_MS = 15_000;

/**
 * Read and inspect the rules: iptables always, ip6tables when the agent has an IPv6 host address (or is unknown).
 * With a mode that does not use the rules, only their presence is reported.
 */
export async function checkIptables(runner: CommandRunner, backend: Backend | undefined, agent: DebugState | undefined): Promise<IptablesCheck> {
  const ai = agentInterception(agent);
  const used = usesIptables(ai.mode);
  if (!backend) return { rows: used ? [row('iptables.rules', 'interception rules', 'fail', 'not checked: no iptables backend', 'see the iptables backend row')] : [] };
  let save: string;
  try {
    save = (await runChecked(runner, [backend.save], { timeoutMs: SAVE_TIMEOUT_MS })).stdout;
  } catch (err) {
    return {
      rows: [
        used
          ? row('iptables.rules', 'interception rules', 'fail', `cannot read the iptables rules: ${message(err)}`, 'run doctor as root on the node, or inside the agent pod')
          : row('iptables.rules', 'interception rules', 'ok', `not used (--intercept ${ai.mode}); cannot read them: ${message(err)}`),
      ],
    };
  }
  if (!used) {
    const ipv4 = inspectFamily(save, undefined, 'ipv4');
    const where = ipv4.present ? 'present (installed by kiam init, kiam intercept install or an earlier mode)' : 'absent';
    return { rows: [row('iptables.rules', 'interception rules', 'ok', `not used (--intercept ${ai.mode}); our chains are ${where}`)], ipv4 };
  }
  const spec = agentRuleSpec(agent);
  const ipv4 = inspectFamily(save, spec, 'ipv4', ai.reconcileIntervalMs);
  const result: IptablesCheck = { rows: [...ipv4.rows], ipv4 };
  if (!spec?.hostIpv6 && agent) return result;
  const saved6 = await runner.run([backend.save6], { timeoutMs: SAVE_TIMEOUT_MS });
  if (saved6.code !== 0) {
    if (spec?.hostIpv6) {
      result.rows.push(
        row('ip6tables.rules', 'ip6tables rules', 'fail', `cannot read the ip6tables rules: ${backend.save6} exited ${saved6.code}: ${saved6.stderr.trim().split('\n')[0] || 'no output'}`,
          `the agent intercepts fd00:ec2::254 with ip6tables since it runs with --host-ipv6: install ip6tables (the ${backend.name} backend) and run doctor as root on the node or inside the agent pod`),
      );
    }
    return result;
  }
  const ipv6 = inspectFamily(saved6.stdout, spec, 'ipv6', ai.reconcileIntervalMs);
  result.ipv6 = ipv6;
  // Without the agent, IPv6 rows only when something of ours is there.
  if (spec?.hostIpv6 || ipv6.present) result.rows.push(...ipv6.rows);
  return result;
}

/** The rows of checkIptables. */
export async function checkRules(runner: CommandRunner, backend: Backend | undefined, agent: DebugState | undefined): Promise<CheckRow[]> {
  return (await checkIptables(runner, backend, agent)).rows;
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

// ---- 4. eBPF: kernel support, what is attached to the cgroup, the config map -----------------------------

/** Where doctor reads the eBPF programs and pins. */
export interface EbpfPaths {
  cgroupRoot: string;
  bpffs: string;
  /** Where they come from, for the report. */
  source: string;
}

/** --cgroup-root and --bpffs when given, else the running agent's, else the agent's defaults. */
export function ebpfPaths(flags: { cgroupRoot?: string; bpffs?: string }, agent: DebugState | undefined, mounts: () => MountInfo[]): EbpfPaths {
  const fromAgent = agent?.ebpf ?? undefined;
  let cgroupRoot = flags.cgroupRoot ?? fromAgent?.cgroupRoot;
  if (cgroupRoot === undefined) {
    try {
      cgroupRoot = resolveCgroupRoot(agent?.config.cgroupRoot ?? undefined, mounts());
    } catch {
      cgroupRoot = agent?.config.cgroupRoot ?? DEFAULT_CGROUP_ROOT;
    }
  }
  const bpffs = flags.bpffs ?? fromAgent?.bpffs ?? agent?.config.bpffs ?? DEFAULTS.bpffs;
  const given = [flags.cgroupRoot !== undefined ? '--cgroup-root' : '', flags.bpffs !== undefined ? '--bpffs' : ''].filter(Boolean);
  const source = given.length > 0 ? `from ${given.join(' and ')}` : fromAgent ? 'as the agent runs' : agent ? "the agent's defaults" : 'the defaults';
  return { cgroupRoot, bpffs, source };
}

/** How much the node needs the eBPF redirect: required → FAIL when it cannot run, fallback/unknown → WARN, unused → OK. */
export interface EbpfNeed {
  level: 'required' | 'fallback' | 'unknown' | 'unused';
  why: string;
}

export function ebpfNeed(ai: AgentInterception, dp: Dataplane): EbpfNeed {
  if (ai.mode === 'ebpf') return { level: 'required', why: '--intercept ebpf needs it' };
  if (dp.kind === 'ebpf' && ai.mode !== 'none') return { level: 'required', why: `only the eBPF redirect holds on ${dp.name}` };
  if (ai.mode === 'auto') return { level: 'fallback', why: '--intercept auto falls back to iptables alone' };
  if (ai.mode === undefined) return { level: 'unknown', why: "the agent's mode is unknown" };
  return { level: 'unused', why: `--intercept ${ai.mode} does not use it` };
}

const NO_FIX_SUPPORT =
  "the eBPF socket redirect needs Linux 5.8 or later built with CONFIG_CGROUP_BPF: upgrade the node's kernel; until then use --intercept iptables on a netfilter dataplane, " +
  "or Cilium's LocalRedirectPolicy (the cilium-lrp overlay)";

/** checkSupport's verdict as rows: one per missing piece, each with its fix. */
export function supportRows(support: Support, need: EbpfNeed, paths: EbpfPaths): CheckRow[] {
  const title = 'eBPF kernel support';
  if (support.ok) {
    return [row('ebpf.support', title, 'ok', `kernel ${support.kernel}: ≥ 5.8 (getpeername hooks), bpftool runs with CAP_SYS_ADMIN; cgroup2 at ${paths.cgroupRoot}, bpffs at ${paths.bpffs}`)];
  }
  const status: Status = need.level === 'required' ? 'fail' : need.level === 'unused' ? 'ok' : 'warn';
  return support.missing.map((missing, i) => {
    // checkSupport words each entry as "what is missing; how to fix it" (the kernel's own gaps carry no fix).
    const cut = missing.indexOf('; ');
    const problem = cut < 0 ? missing : missing.slice(0, cut);
    const fix = cut < 0 ? NO_FIX_SUPPORT : missing.slice(cut + 2);
    return row(i === 0 ? 'ebpf.support' : `ebpf.support-${i}`, title, status, `${problem} (${need.level === 'unused' ? 'not needed: ' : ''}${need.why})`, fix);
  });
}

export interface EbpfContext {
  paths: EbpfPaths;
  /** used: the agent runs the redirect; unused: its mode does not; unknown: the agent could not be read. */
  use: 'used' | 'unused' | 'unknown';
  ai: AgentInterception;
}

/** What is attached and configured, as doctor sees it. */
export interface EbpfInspection {
  rows: CheckRow[];
  /** A program of ours on connect4, with interception on in the map. */
  ipv4: boolean;
  /** Where connect6 sends fd00:ec2::254: the host's IPv6 address, the v4-mapped host IP, or nowhere (not attached). */
  ipv6: 'host' | 'mapped' | null;
  /** Any program of ours is attached to the cgroup. */
  attached: boolean;
}

function ownerOf(prog: AttachedProg): string {
  if (prog.name.startsWith('cil_')) return "Cilium's";
  if (prog.name.startsWith('calico') || prog.name.startsWith('cali_')) return "Calico's";
  return 'foreign';
}

const describeProg = (p: AttachedProg): string => `${p.name || '(no name)'} id ${p.id}${p.flags ? ` (${p.flags})` : ''}`;

function installCommand(ctx: EbpfContext): string {
  const { ai, paths } = ctx;
  const v6 = ai.hostIpv6 ? ` --host-ipv6 ${ai.hostIpv6}` : '';
  return `kiam intercept install --intercept ebpf --host-ip ${ai.hostIp ?? '<node IP>'}${v6} --port ${ai.port ?? Number(DEFAULTS.port)} --cgroup-root ${paths.cgroupRoot} --bpffs ${paths.bpffs}`;
}

/** The verdict on the live eBPF state (readLive's), or on the error that kept it from being read. */
export function inspectEbpf(live: LiveState | Error, ctx: EbpfContext): EbpfInspection {
  const { paths, use, ai } = ctx;
  const pins = layout(paths.bpffs).dir;
  const repair = `${repairsWithin(ai)}if it persists, reinstall once with \`${installCommand(ctx)}\``;
  const none: EbpfInspection = { rows: [], ipv4: false, ipv6: null, attached: false };
  const cgroupTitle = 'eBPF cgroup';

  if (live instanceof Error) {
    const detail = `cannot read the programs attached to ${paths.cgroupRoot} (${paths.source}): ${live.message}`;
    const fix =
      `doctor reads them with bpftool as root (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN): run it on the node or inside the agent pod; ${paths.cgroupRoot} must be the cgroup v2 directory ` +
      'the programs are attached to (see the eBPF kernel support row; pass doctor --cgroup-root to read another)';
    if (use === 'unused') return { ...none, rows: [row('ebpf.cgroup', cgroupTitle, 'ok', `not used (--intercept ${ai.mode}); ${detail}`)] };
    return { ...none, rows: [row('ebpf.cgroup', cgroupTitle, use === 'used' ? 'fail' : 'warn', detail, fix)] };
  }

  const ours = live.attached.filter((a) => a.name.startsWith(PROG_PREFIX));
  const foreign = live.attached.filter((a) => !a.name.startsWith(PROG_PREFIX));
  const foreignText = foreign.length > 0 ? `; not ours: ${foreign.map((p) => `${p.hook} ${describeProg(p)} (${ownerOf(p)})`).join(', ')}` : '';
  const config = live.config;
  const on = config === null || config.hostIp4 !== null;
  const result: EbpfInspection = {
    rows: [],
    // A pinned map that cannot be read says nothing of the map the attached programs use: count them as intercepting.
    ipv4: on && ours.some((a) => a.hook === 'connect4'),
    ipv6: on && ours.some((a) => a.hook === 'connect6') ? (config?.hostIp6 ? 'host' : 'mapped') : null,
    attached: ours.length > 0,
  };

  if (ours.length === 0 && use !== 'used') {
    result.rows.push(
      use === 'unused'
        ? row('ebpf.cgroup', cgroupTitle, 'ok', `not used (--intercept ${ai.mode}); nothing of ours attached to ${paths.cgroupRoot}${foreignText}`)
        : row('ebpf.cgroup', cgroupTitle, 'warn', `no program of ours attached to ${paths.cgroupRoot} (${paths.source})${foreignText}`,
            'an agent running with --intercept auto or ebpf attaches them when it starts (see the agent row); without them this node relies on the iptables rules alone'),
    );
    return result;
  }
  if (use === 'unused') {
    result.rows.push(
      row('ebpf.cgroup', cgroupTitle, 'warn',
        `programs of ours are attached to ${paths.cgroupRoot} although the agent runs --intercept ${ai.mode}: ${ours.map((p) => `${p.hook} ${describeProg(p)}`).join(', ')}${foreignText}; ` +
          'they keep redirecting with their last configuration, which nothing keeps up to date',
        `remove them with \`kiam intercept remove --intercept ebpf --cgroup-root ${paths.cgroupRoot} --bpffs ${paths.bpffs}\`, or run the agent with --intercept auto so that it manages them`),
    );
    return result;
  }

  result.rows.push(row('ebpf.cgroup', cgroupTitle, 'ok', `cgroup ${paths.cgroupRoot}: ${ours.length} program(s) of ours, ${foreign.length} not ours; pins under ${pins} (${paths.source})`));

  // Each hook: our program (the pinned one), duplicates, programs of others beside it.
  for (const h of HOOKS) {
    const mine = ours.filter((a) => a.hook === h.hook);
    const others = foreign.filter((a) => a.hook === h.hook);
    const besides = others.length > 0 ? `; beside it: ${others.map((p) => `${describeProg(p)} (${ownerOf(p)})`).join(', ')}` : '';
    const pinnedId = live.pinned[h.hook]?.id;
    const id = `ebpf.${h.hook}`;
    const title = `eBPF ${h.hook}`;
    if (mine.length === 0) {
      const pinned = pinnedId !== undefined ? ` (${h.prog} id ${pinnedId} is pinned but not attached)` : '';
      const what = h.hook.startsWith('connect')
        ? `${h.hook === 'connect4' ? '169.254.169.254' : 'fd00:ec2::254 and ::ffff:169.254.169.254'} is not redirected in pods`
        : 'redirected pods see the agent\'s address as their peer';
      result.rows.push(row(id, title, 'fail', `no program of ours on ${h.hook} of ${paths.cgroupRoot}${pinned}: ${what}${besides}`, repair));
    } else if (mine.length > 1) {
      result.rows.push(
        row(id, title, 'warn', `${mine.length} programs of ours on ${h.hook}: ${mine.map(describeProg).join(', ')}${pinnedId !== undefined ? ` (the pinned one is id ${pinnedId})` : ''}${besides}`,
          `a duplicate from an earlier load: ${repair.replace('repairs it', 'detaches the ones that are not pinned')}`),
      );
    } else if (pinnedId !== undefined && mine[0]!.id !== pinnedId) {
      result.rows.push(row(id, title, 'warn', `${describeProg(mine[0]!)} is attached, but the pinned ${h.prog} is id ${pinnedId}: an older load${besides}`, repair));
    } else {
      result.rows.push(row(id, title, 'ok', `${describeProg(mine[0]!)} on ${paths.cgroupRoot}${besides}`));
    }
  }

  // The config map: the agent's addresses, and the node's network namespace learned.
  const configTitle = 'eBPF config map';
  if (!config) {
    result.rows.push(row('ebpf.config', configTitle, 'fail', `cannot read ${CONFIG_MAP} under ${pins}: ${live.error ?? 'not pinned'}`, repair));
    return result;
  }
  const problems: string[] = [];
  if (config.hostIp4 === null) problems.push('interception is off (host IP 0): connects to the metadata service pass untouched');
  if (ai.hostIp) {
    const want = wantedConfig({ hostIp: ai.hostIp, ...(ai.hostIpv6 ? { hostIpv6: ai.hostIpv6 } : {}), port: ai.port ?? Number(DEFAULTS.port), cgroupRoot: paths.cgroupRoot, bpffs: paths.bpffs }, config.hostNetnsCookie);
    if (config.hostIp4 !== null && config.hostIp4 !== want.hostIp4) problems.push(`host IP ${config.hostIp4}, the agent's is ${want.hostIp4}`);
    if (config.port !== want.port) problems.push(`port ${config.port}, the agent's is ${want.port}`);
    if (config.hostIp6 !== want.hostIp6) problems.push(`host IPv6 ${config.hostIp6 ?? 'none'}, the agent's is ${want.hostIp6 ?? 'none'}`);
    const p = plan(live, want);
    if (p.load) problems.push(...p.drift);
  }
  const v6 = config.hostIp6 ? `[${config.hostIp6}]:${config.port}` : `[::ffff:${config.hostIp4 ?? '0.0.0.0'}]:${config.port} (v4-mapped)`;
  const s = live.stats;
  const stats = s ? `; redirected ${s.redirect4} IPv4, ${s.redirect6} IPv6, ${s.redirect6Mapped} v4-mapped, ${s.hostSkipped} node socket(s) skipped` : '';
  const sends = `169.254.169.254 → ${config.hostIp4 ?? 'nowhere'}:${config.port}, fd00:ec2::254 → ${v6}, node netns cookie ${config.hostNetnsCookie}`;
  if (problems.length > 0) {
    result.rows.push(row('ebpf.config', configTitle, 'fail', `${CONFIG_MAP} differs from the agent's: ${problems.join('; ')} (map: ${sends})`, repair));
  } else if (config.hostNetnsCookie === 0n) {
    result.rows.push(
      row('ebpf.config', configTitle, 'warn', `${sends}: the node's network namespace cookie was not learned (0: the node is taken to be the initial network namespace)${stats}`,
        "harmless on a node that is the initial network namespace; on a nested node (kind) the node's own sockets (the agent's pass-through, hostNetwork pods) get redirected too: " +
          `the agent learns the cookie at start with a probe connect, which its programs see only when it runs inside ${paths.cgroupRoot}; look for "could not learn this network namespace's cookie" in its log, then restart it`),
    );
  } else {
    result.rows.push(row('ebpf.config', configTitle, 'ok', `${sends}${stats}`));
  }
  return result;
}

export async function checkEbpf(runner: CommandRunner, ctx: EbpfContext): Promise<EbpfInspection> {
  let live: LiveState | Error;
  try {
    live = await readLive(runner, ctx.paths);
  } catch (err) {
    live = err instanceof Error ? err : new Error(String(err));
  }
  return inspectEbpf(live, ctx);
}

// ---- 5. the interception per family ---------------------------------------------------------------------

/**
 * One row per family: what intercepts it (the eBPF redirect, the iptables DNAT), and FAIL when a family the node
 * uses is not intercepted in a way that holds on its dataplane. The node uses IPv6 when the agent has --host-ipv6.
 */
export function interceptionRows(ai: AgentInterception, dp: Dataplane, ebpf: EbpfInspection | undefined, rules: IptablesCheck | undefined): CheckRow[] {
  const bypassed = dp.kind === 'ebpf';
  const chain = DEFAULT_CHAIN;
  const ebpfExpected = ai.ebpfActive;
  const noneFix =
    "without interception pods reach the real metadata service and get the node's role, unless something else sends their traffic to the agent " +
    '(a CiliumLocalRedirectPolicy: the cilium-lrp overlay); otherwise run the agent with --intercept auto';
  const failFix = (family: IpFamily): string => {
    if (bypassed && !ai.ebpfActive && (ai.mode === 'iptables' || ai.mode === undefined)) return USE_AUTO;
    if (bypassed && ai.mode === 'auto' && !ai.ebpfActive) {
      return `--intercept auto could not run the eBPF redirect here (${ai.ebpfReason ?? 'see the eBPF kernel support rows'}): fix what the eBPF kernel support rows say and restart the agent; on ${dp.name} iptables alone does not hold`;
    }
    if (ebpfExpected) return `see the eBPF rows: ${repairsWithin(ai)}if it persists, run \`kiam intercept install\` with the agent's flags`;
    return `see the ${family === 'ipv6' ? 'ip6tables' : 'iptables'} chain and jump rows: ${repairsWithin(ai)}if it persists, run \`kiam intercept install\` with the agent's flags`;
  };

  const families: Array<{ family: IpFamily; used: boolean | undefined; ebpf: string | null; rules: RulesInspection | undefined }> = [
    { family: 'ipv4', used: true, ebpf: ebpf?.ipv4 ? 'eBPF socket redirect (connect4)' : null, rules: rules?.ipv4 },
    {
      family: 'ipv6',
      used: ai.mode === undefined ? undefined : ai.hostIpv6 !== undefined,
      ebpf: ebpf?.ipv6 === 'host' ? "eBPF redirect to the node's IPv6 address (connect6)" : ebpf?.ipv6 === 'mapped' ? 'eBPF redirect to the v4-mapped host IP (connect6; IPv6-only sockets fail closed)' : null,
      rules: rules?.ipv6,
    },
  ];
  return families.map(({ family, used, ebpf: viaEbpf, rules: r }) => {
    const id = `intercept.${family}`;
    const title = family === 'ipv6' ? 'IPv6 interception' : 'IPv4 interception';
    const tool = family === 'ipv6' ? 'ip6tables' : 'iptables';
    const closed = r?.failsClosed && !bypassed ? " (the backstop rejects pods' metadata traffic: they fail closed)" : '';
    const viaRules = r?.holds ? `${tool} DNAT (${chain})${bypassed ? `, which ${dp.name} bypasses` : ''}` : r?.present ? `${tool} rules of ours, incomplete${closed}` : null;
    const holds = viaEbpf !== null || (r?.holds === true && !bypassed);
    const what = [viaEbpf, viaRules].filter(Boolean).join(' + ');
    if (used === false) return row(id, title, 'ok', `not used by the node (the agent has no --host-ipv6)${what ? `; ${what}` : ''}`);
    if (holds) return row(id, title, 'ok', what);
    if (ai.mode === 'none') return row(id, title, 'warn', `not intercepted: the agent runs with --intercept none${what ? ` (found: ${what})` : ''}`, noneFix);
    if (used === undefined) {
      return row(id, title, 'warn', `no IPv6 interception found${what ? ` (found: ${what})` : ''}; whether the node uses IPv6 is unknown (the agent could not be read)`,
        'see the agent row; a node whose pods have IPv6 needs the agent to run with --host-ipv6, or --intercept auto (the eBPF redirect covers fd00:ec2::254)');
    }
    return row(id, title, 'fail', `not intercepted in a way that holds${bypassed ? ` on ${dp.name}` : ''}: ${what || 'neither the eBPF redirect nor the DNAT is in place'}`, failFix(family));
  });
}

// ---- 6. metadata endpoint ---------------------------------------------------------------------------------

/**
 * The node's metadata service, as the agent (host network) reaches it: a token PUT, then a GET with the token; then a
 * GET without one, to learn whether the instance requires tokens (HttpTokens=required answers it 401). agentImdsv2 is
 * the running agent's --imdsv2 (undefined: no agent read; an agent older than the flag reports nothing and answers
 * token-less GETs): a node that requires tokens and an agent that does not is a WARN, since pods then keep IMDSv1.
 *
 * Hop limit (HttpPutResponseHopLimit): pods never need more than 1 with kiam. Their requests, the token PUT included,
 * are answered by the agent and never reach the real service; the agent's own requests leave from the node's network
 * namespace, which 1 covers. A limit of 1 also keeps a pod the interception missed from getting a token of the real
 * service (its answer would need a second hop): it gets nothing rather than the node's role. Only a doctor run from a
 * container without the host network needs 2.
 */
export async function checkMetadata(http: HttpPort, endpoint: string, timeoutMs: number, agentImdsv2?: string): Promise<CheckRow[]> {
  const id = 'metadata';
  const title = 'metadata endpoint';
  const fixUnreachable =
    `the agent needs ${endpoint} for pass-through paths, region detection and --role-base-arn-autodetect: run doctor on an EC2 node ` +
    '(or inside the agent pod, which uses the host network: kubectl -n kiam exec ds/kiam -- kiam doctor); check the instance metadata options (HttpEndpoint enabled; ' +
    'HttpPutResponseHopLimit 1 is enough for the agent, which uses the host network) and that no NetworkPolicy/firewall drops 169.254.169.254';
  let token: string | undefined;
  let tokenProblem = '';
  try {
    const put = await http.request(`${endpoint}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' }, timeoutMs });
    if (put.status === 200 && put.body.trim() !== '') token = put.body.trim();
    else tokenProblem = `token PUT answered ${put.status}`;
  } catch (err) {
    return [row(id, title, 'fail', `${endpoint}: token PUT failed: ${message(err)}`, fixUnreachable)];
  }
  let entries: number;
  try {
    const get = await http.request(`${endpoint}/latest/meta-data/`, { headers: token ? { 'x-aws-ec2-metadata-token': token } : {}, timeoutMs });
    if (get.status !== 200) {
      return [row(id, title, 'fail', `${endpoint}: GET /latest/meta-data/ answered ${get.status}${tokenProblem ? ` (${tokenProblem})` : ''}`, fixUnreachable)];
    }
    entries = get.body.split('\n').filter(Boolean).length;
  } catch (err) {
    return [row(id, title, 'fail', `${endpoint}: GET /latest/meta-data/ failed: ${message(err)}`, fixUnreachable)];
  }
  if (!token) {
    return [row(id, title, 'warn', `${endpoint} answers IMDSv1 only (${tokenProblem})`,
      'the token PUT was refused: from a container without the host network its answer needs HttpPutResponseHopLimit 2, so run doctor in the agent pod ' +
      '(kubectl -n kiam exec ds/kiam -- kiam doctor), where 1 is enough and is what pods should have; otherwise the metadata service is too old for IMDSv2')];
  }
  // Whether the node requires tokens: a token-less GET answers 401 there. An error here says nothing either way.
  let required: boolean | undefined;
  try {
    const bare = await http.request(`${endpoint}/latest/meta-data/`, { timeoutMs });
    required = bare.status === 401 ? true : bare.status === 200 ? false : undefined;
  } catch {
    required = undefined;
  }
  const tokens = required === true ? ', tokens required' : required === false ? ', tokens optional' : '';
  const rows = [row(id, title, 'ok', `${endpoint} answers (IMDSv2 token, ${entries} meta-data entries${tokens})`)];
  if (required && agentImdsv2 !== undefined && agentImdsv2 !== 'required') {
    rows.push(row('metadata.imdsv2', 'IMDSv2 for pods', 'warn',
      `this node's metadata service requires IMDSv2 tokens (HttpTokens=required), but the agent answers pods' GETs without one (--imdsv2 ${agentImdsv2})`,
      'run the agent with --imdsv2 required (add it to the DaemonSet args), so pods are held to the node\'s rule'));
  }
  return rows;
}

// ---- 7. API server --------------------------------------------------------------------------------------

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

// ---- 8. what the running agent sees --------------------------------------------------------------------

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
  rules: 'the interception is not in place: see the interception, eBPF, chain and jump rows and the agent\'s log',
  podIndex: 'the pod index is not known fresh: see the pod index row',
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
  const stsFix = err ? (stsErrorFix(err.code) ?? `STS answered ${err.code}: see the agent's log ("assume role failed") for the full error`) : '';
  const servable = identity.servableUntil ? Date.parse(identity.servableUntil) : undefined;
  // Not retryable: a refusal (trust policy, session duration…) that only a change on the AWS side mends.
  const refused = err?.retryable === false ? '; not retryable: fix it, the agent tries again every 30 s to 2 min' : '';
  if (err && !identity.accessKeyId) {
    return row(id, title, 'fail', `${what}: no credentials; STS ${err.code}: ${err.message} (${err.failures} failure(s), next try ${inMinutes(Date.parse(err.retryAt) - now)})${refused}`, `pods using it get 503; ${stsFix}`);
  }
  if (err && identity.stale) {
    return row(id, title, 'warn',
      `${what}: STS failing (${err.code}: ${err.message}, ${err.failures} in a row); serving ${identity.accessKeyId} below the 30-minute floor until ${identity.staleUntil} (5 min before it expires)`,
      stsFix);
  }
  if (err) {
    // Retryable: served below the floor once it is reached, down to staleUntil (5 min before expiry).
    const until = identity.staleUntil ? `${identity.servableUntil}, then below the 30-minute floor until ${identity.staleUntil}` : identity.servableUntil;
    return row(id, title, 'warn', `${what}: refresh failing (${err.code}: ${err.message}); serving ${identity.accessKeyId} until ${until}`, stsFix);
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
  const index = podIndexRow(state);
  if (index) rows.push(index);
  if (state.identities === null) {
    rows.push(row('agent.identities', 'credential cache', 'warn', 'the agent has not created its credential cache yet', 'wait for the agent to finish starting, then run doctor again'));
  } else {
    const sts = stsRow(state, now);
    if (sts) rows.push(sts);
    for (const identity of state.identities) rows.push(identityRow(identity, now));
  }
  return rows;
}

/**
 * The pod index's freshness (agents older than it report nothing). Not fresh: every request waits for a live GET of
 * its pod (or, with the API server unreachable, is answered from the index as it was); a warning for the first
 * two minutes (one watch error is healed by the next bookmark, within 30 s), a failure after.
 */
export function podIndexRow(state: DebugState): CheckRow | undefined {
  const index = state.podIndex;
  if (!index) return undefined;
  const age = index.stalenessSeconds === null ? 'never synced' : `last in sync ${index.stalenessSeconds} s ago`;
  if (index.fresh) return row('agent.podIndex', 'pod index', 'ok', `fresh (${age})`);
  const long = index.stalenessSeconds === null || index.stalenessSeconds > 120;
  return row('agent.podIndex', 'pod index', long ? 'fail' : 'warn',
    `not known fresh (${age}): ${index.reason ?? 'unknown reason'}; each request waits for a live GET of its pod`,
    'see the API server row and the agent\'s log ("watch out of sync"): the agent\'s RBAC must allow watch on pods; a watch answered 403 or 429 while GETs work points at RBAC or API priority and fairness for the agent\'s service account');
}

/** STS health over every identity, when some identity's last call failed (each identity's row says which). */
export function stsRow(state: DebugState, now: number): CheckRow | undefined {
  const identities = state.identities ?? [];
  const failing = identities.filter((i) => i.lastError);
  if (failing.length === 0) return undefined;
  const refused = failing.filter((i) => i.lastError?.retryable === false).length;
  const stale = identities.filter((i) => i.stale).length;
  const successes = identities.map((i) => (i.lastSuccess ? Date.parse(i.lastSuccess) : NaN)).filter((t) => Number.isFinite(t));
  const last = successes.length > 0 ? `last success ${inMinutes(Math.max(...successes) - now)}` : 'no success yet';
  const region = state.sts ? ` (region ${state.sts.region}, from ${state.sts.regionSource})` : '';
  const codes = [...new Set(failing.map((i) => i.lastError!.code))].join(', ');
  return row('agent.sts', 'STS', 'warn',
    `${failing.length} of ${identities.length} identit${identities.length === 1 ? 'y' : 'ies'} failing${region}: ${codes}` +
      `${refused > 0 ? `; ${refused} not retryable` : ''}${stale > 0 ? `; ${stale} served below the 30-minute floor` : ''}; ${last}`,
    refused > 0
      ? 'a not-retryable error needs a fix on the AWS side (trust policy, session duration, region): see the credential rows for each role'
      : 'STS is failing for this node: the agent retries every 5-12 s and serves cached credentials down to 5 min before expiry (kiam_sts_failing_identities, kiam_credentials_stale_served_total)');
}
