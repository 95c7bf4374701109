/**
 * Composition of the interception for main.ts (nothing else imports this): which interceptors the --intercept mode
 * gets on this node, and the one-shot commands `kiam intercept install|remove|status` (`kiam iptables …`) and
 * `kiam init`. auto = the eBPF socket redirect where the node supports it, plus the iptables rules; the two never
 * fight, because a connect the eBPF program rewrote no longer targets the metadata address the DNAT matches.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Clock } from './clock.ts';
import type { Config } from './config.ts';
import type { Metrics } from './metrics.ts';
import { detectBackend, netfilterBypassWarnings, type Backend } from './netfilter/backend.ts';
import { EbpfInterceptor, readEbpfStatus, removeEbpf, type EbpfStatus, type NetnsProbe } from './netfilter/ebpf/interceptor.ts';
import { fsTypeAt, type EbpfSpec, type Support } from './netfilter/ebpf/plan.ts';
import { ensureMount, probeSupport, resolveCgroupRoot, type MountResult, type NodeFacts } from './netfilter/ebpf/support.ts';
import type { CommandRunner } from './netfilter/exec.ts';
import type { Interceptor } from './netfilter/interceptor.ts';
import { readStatus, removeChain, RuleReconciler, type FamilyStatus, type RuleStatus } from './netfilter/reconciler.ts';
import { assertValidRuleSpec, DEFAULT_CHAIN } from './netfilter/rules.ts';

/** dist/kiam.bpf.o beside the bundle, or the build's output seen from the sources; KIAM_BPF_OBJECT overrides. */
export function bpfObjectPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KIAM_BPF_OBJECT) return env.KIAM_BPF_OBJECT;
  const candidates = [new URL('./kiam.bpf.o', import.meta.url), new URL('../dist/kiam.bpf.o', import.meta.url)].map((u) => fileURLToPath(u));
  return candidates.find((c) => existsSync(c)) ?? candidates[candidates.length - 1]!;
}

export interface InterceptDeps {
  runner: CommandRunner;
  clock: Clock;
  metrics: Metrics;
  logger: Logger;
  facts: NodeFacts;
  probe?: NetnsProbe;
  object?: string;
}

export interface EbpfPlan {
  /** The redirect will be installed. */
  active: boolean;
  spec: EbpfSpec;
  support: Support | null;
  /** Why it is not active (auto on a node without support), for logs, /debug/state and doctor. */
  reason: string | null;
}

/** The interception as the agent runs it: the interceptors in install order, and what was decided. */
export interface Interception {
  interceptors: Interceptor[];
  ebpf: EbpfPlan | null;
  ebpfInterceptor: EbpfInterceptor | null;
  iptables: RuleReconciler | null;
  backend: Backend | null;
}

function ebpfSpec(config: Config, facts: NodeFacts): EbpfSpec {
  return {
    hostIp: config.hostIp ?? '',
    ...(config.hostIpv6 ? { hostIpv6: config.hostIpv6 } : {}),
    port: config.port,
    cgroupRoot: resolveCgroupRoot(config.cgroupRoot, facts.mounts()),
    bpffs: config.bpffs,
  };
}

/**
 * Decide whether the eBPF half runs. `ebpf` on a node without support is an error (the caller asked for it);
 * `auto` logs what is missing and goes on with iptables alone. `features`: run bpftool's kernel feature probe (only
 * `kiam init` has the capabilities it needs); without it, loading the object is the rest of the test.
 */
export async function planEbpf(
  config: Config,
  deps: Pick<InterceptDeps, 'runner' | 'facts' | 'logger'>,
  options: { features?: boolean } = {},
): Promise<EbpfPlan | null> {
  if (!config.ebpf) return null;
  const spec = ebpfSpec(config, deps.facts);
  const support = await probeSupport(deps.runner, deps.facts, spec, { features: options.features ?? false });
  if (support.ok) return { active: true, spec, support, reason: null };
  const reason = `the eBPF socket redirect cannot run on this node: ${support.missing.join('; ')}`;
  if (config.intercept === 'ebpf') throw new Error(reason);
  deps.logger.warn({ missing: support.missing }, `${reason}; intercepting with iptables alone, which eBPF dataplanes (Cilium eBPF host routing, Calico eBPF) bypass`);
  return { active: false, spec, support, reason };
}

/** Build (not install) the interceptors for the agent. */
export async function buildInterception(config: Config, deps: InterceptDeps): Promise<Interception> {
  const result: Interception = { interceptors: [], ebpf: null, ebpfInterceptor: null, iptables: null, backend: null };
  if (config.intercept === 'none') return result;
  result.ebpf = await planEbpf(config, deps);
  if (result.ebpf?.active) {
    result.ebpfInterceptor = new EbpfInterceptor({
      runner: deps.runner,
      clock: deps.clock,
      metrics: deps.metrics,
      logger: deps.logger,
      spec: result.ebpf.spec,
      object: deps.object ?? bpfObjectPath(),
      intervalMs: config.reconcileIntervalMs,
      ...(deps.probe ? { probe: deps.probe } : {}),
    });
    result.interceptors.push(result.ebpfInterceptor);
  }
  if (config.iptables) {
    const backend = await detectBackend(deps.runner, config.iptablesBackend);
    deps.logger.info({ backend: backend.name, reason: backend.reason }, 'iptables backend');
    if (backend.warning) deps.logger.warn(backend.warning);
    if (!result.ebpfInterceptor) for (const warning of netfilterBypassWarnings()) deps.logger.warn(warning);
    result.backend = backend;
    result.iptables = new RuleReconciler({
      runner: deps.runner,
      clock: deps.clock,
      metrics: deps.metrics,
      logger: deps.logger,
      spec: ruleSpec(config),
      backend,
      intervalMs: config.reconcileIntervalMs,
    });
    result.interceptors.push(result.iptables);
  }
  return result;
}

function ruleSpec(config: Config) {
  return { hostIp: config.hostIp!, ...(config.hostIpv6 ? { hostIpv6: config.hostIpv6 } : {}), port: config.port, hostInterfaces: config.hostInterfaces };
}

/**
 * Install the interceptors in order (eBPF first: on an eBPF dataplane it is the one that holds) and start their
 * timers. With `auto`, an eBPF install that fails (a kernel that passed the cheap checks can still refuse the object:
 * the verifier is the real test) is logged and dropped, and the rules alone go on; any other failure is thrown.
 */
export async function installInterception(interception: Interception, mode: Config['intercept'], logger: Logger, signal?: AbortSignal): Promise<void> {
  const { interceptors, ebpf } = interception;
  for (const interceptor of [...interceptors]) {
    signal?.throwIfAborted();
    try {
      await interceptor.install();
    } catch (err) {
      if (interceptor.kind !== 'ebpf' || mode !== 'auto' || !ebpf) throw err;
      ebpf.active = false;
      ebpf.reason = `the eBPF socket redirect could not be installed: ${(err as Error).message}`;
      logger.warn({ err }, `${ebpf.reason}; intercepting with iptables alone, which eBPF dataplanes (Cilium eBPF host routing, Calico eBPF) bypass`);
      interceptors.splice(interceptors.indexOf(interceptor), 1);
      interception.ebpfInterceptor = null;
      continue;
    }
    interceptor.start();
  }
}

// ---------------------------------------------------------------------------------------------------
// One-shot commands

export interface InterceptReport {
  mode: Config['intercept'];
  iptables: RuleStatus | null;
  ebpf: (EbpfStatus & { active: true }) | { active: false; reason: string | null } | null;
  /** Mounts `kiam init` made (or found). */
  mounts?: MountResult[];
  inSync: boolean;
}

/**
 * `kiam intercept install|remove|status` and `kiam init`. Returns the report and the exit code: install 0 when
 * everything asked for is in place; remove 0 when nothing of ours is left; status 1 when what is there differs from
 * the flags given.
 */
export async function runInterceptCommand(
  action: 'install' | 'remove' | 'status' | 'init',
  config: Config,
  deps: InterceptDeps,
): Promise<{ report: InterceptReport; code: number }> {
  const mounts: MountResult[] = [];
  if (action === 'init' && config.ebpf) {
    mounts.push(await ensureMount(deps.runner, deps.facts, config.bpffs, 'bpf'));
    const cgroupRoot = resolveCgroupRoot(config.cgroupRoot, deps.facts.mounts());
    mounts.push(await ensureMount(deps.runner, deps.facts, cgroupRoot, 'cgroup2'));
    for (const m of mounts) if (m.mounted) deps.logger.info({ path: m.path, fsType: m.fsType }, 'mounted');
  }
  const installing = action === 'install' || action === 'init';
  const full = Boolean(config.hostIp) && (!config.iptables || config.hostInterfaces.length > 0);
  const report: InterceptReport = { mode: config.intercept, iptables: null, ebpf: null, inSync: true, ...(action === 'init' ? { mounts } : {}) };

  if (config.ebpf) {
    const spec = ebpfSpec(config, deps.facts);
    if (installing) {
      const p = await planEbpf(config, deps, { features: action === 'init' });
      if (p?.active) {
        const interceptor = new EbpfInterceptor({ ...deps, metrics: deps.metrics, spec, object: deps.object ?? bpfObjectPath(), intervalMs: 1000, ...(deps.probe ? { probe: deps.probe } : {}) });
        await interceptor.install();
      } else report.ebpf = { active: false, reason: p?.reason ?? null };
    } else if (action === 'remove') {
      // Nothing can be attached to a directory that is not cgroup2 (a hybrid node where `kiam init` never mounted
      // one): no bpftool error there may keep the iptables half from being removed.
      if (fsTypeAt(deps.facts.mounts(), spec.cgroupRoot) === 'cgroup2') await removeEbpf(deps.runner, spec, deps.logger);
      else report.ebpf = { active: false, reason: `${spec.cgroupRoot} is not a cgroup v2 mount: no eBPF programs of ours can be attached there` };
    }
    if (!report.ebpf) {
      try {
        report.ebpf = { active: true, ...(await readEbpfStatus(deps.runner, full ? spec : { cgroupRoot: spec.cgroupRoot, bpffs: spec.bpffs })) };
      } catch (err) {
        if (action !== 'status' && action !== 'remove') throw err;
        report.ebpf = { active: false, reason: (err as Error).message };
      }
    }
  }
  if (config.iptables) {
    const backend = await detectBackend(deps.runner, config.iptablesBackend);
    const spec = full && config.hostInterfaces.length > 0 ? assertValidRuleSpec(ruleSpec(config)) : { chain: DEFAULT_CHAIN };
    if (installing) {
      if (!('hostIp' in spec)) throw new Error('install needs --host-ip and --host-interface');
      await new RuleReconciler({ runner: deps.runner, clock: deps.clock, metrics: deps.metrics, logger: deps.logger, spec, backend, intervalMs: 1000 }).install();
    } else if (action === 'remove') {
      await removeChain(deps.runner, backend, spec.chain, deps.logger);
    }
    report.iptables = await readStatus(deps.runner, backend, spec);
  }

  const ebpfThere = report.ebpf?.active === true && report.ebpf.attached.some((a) => a.name.startsWith('kiam_'));
  const anyRules = (f: Pick<RuleStatus, 'chainPresent' | 'jumpPresent' | 'backstop'> | undefined) =>
    f !== undefined && (f.chainPresent || f.jumpPresent || f.backstop.chainPresent || f.backstop.jumpPositions.INPUT.length + f.backstop.jumpPositions.FORWARD.length > 0);
  const rulesThere = report.iptables !== null && (anyRules(report.iptables) || anyRules(report.iptables.ipv6));
  if (action === 'remove') {
    report.inSync = !ebpfThere && !rulesThere;
    return { report, code: report.inSync ? 0 : 1 };
  }
  const ebpfOk = report.ebpf === null || (report.ebpf.active ? report.ebpf.inSync : config.intercept === 'auto');
  const rulesOk = report.iptables === null || (action === 'status' && !full) || report.iptables.inSync;
  report.inSync = ebpfOk && rulesOk;
  return { report, code: report.inSync ? 0 : 1 };
}

/** The human form of the report. */
export function renderInterceptReport(report: InterceptReport): string {
  const lines = [`mode:      ${report.mode}`];
  for (const m of report.mounts ?? []) lines.push(`mount:     ${m.fsType} at ${m.path} (${m.mounted ? 'mounted now' : 'already there'})`);
  const e = report.ebpf;
  if (e && !e.active) lines.push(`ebpf:      not active${e.reason ? `: ${e.reason}` : ''}`);
  else if (e && e.active) {
    lines.push(`ebpf:      cgroup ${e.cgroupRoot}, pins ${e.pinDir}`);
    for (const a of e.attached) lines.push(`attached:  ${a.hook} ${a.name || '(no name)'} id ${a.id} ${a.flags}${a.name.startsWith('kiam_') ? '' : ' (not ours)'}`);
    if (e.config) lines.push(`config:    ${e.config.hostIp ?? 'off'}:${e.config.port}${e.config.hostIpv6 ? ` [${e.config.hostIpv6}]:${e.config.port}` : ''}, node netns cookie ${e.config.hostNetnsCookie}`);
    if (e.stats) lines.push(`redirects: ipv4 ${e.stats.redirect4}, ipv6 ${e.stats.redirect6}, ipv4-mapped ${e.stats.redirect6Mapped}`);
    if (e.drift.length) lines.push(`drift:     ${e.drift.join('; ')}`);
  }
  const s = report.iptables;
  if (s) {
    lines.push(`backend:   ${s.backend} (${s.backendReason})`);
    const family = (tag: string, f: FamilyStatus) => {
      const unwanted = tag === '6' && s.rulesWanted.length > 0 && f.rulesWanted.length === 0;
      lines.push(
        `chain${tag}:   ${s.chain} ${f.chainPresent ? 'present' : 'absent'}${unwanted ? ' (not wanted without --host-ipv6: the backstop alone)' : ''}`,
        `jump${tag}:    ${f.jumpPresent ? `PREROUTING position ${f.jumpPositions.join(', ')}` : 'absent'}`,
        ...f.rulesFound.map((r) => `rule${tag}:    ${r}`),
        `backstop${tag}: ${f.backstop.chain} ${f.backstop.chainPresent ? 'present' : 'absent'}, jumps INPUT ${f.backstop.jumpPositions.INPUT.join(', ') || 'none'}, FORWARD ${f.backstop.jumpPositions.FORWARD.join(', ') || 'none'}`,
        ...f.rulesAhead.map((r) => `ahead${tag}:   ${r}`),
      );
    };
    family('', s);
    // Without --host-ipv6 (but with the other flags) ip6tables is wanted with the backstop alone: shown too.
    if (s.ipv6 && (s.ipv6.hostIpv6 || s.ipv6.backstop.rulesWanted.length || s.ipv6.chainPresent || s.ipv6.backstop.chainPresent)) family('6', s.ipv6);
    if (s.ipv6?.error) lines.push(`ipv6:      ${s.ipv6.error}`);
    if (s.rulesWanted.length) lines.push(`in sync:   ${s.inSync ? 'yes' : `no (${s.drift.join('; ')})`}`);
  }
  return `${lines.join('\n')}\n`;
}
