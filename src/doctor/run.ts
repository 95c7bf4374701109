/**
 * `kiam doctor`: run every check over injected ports and report. main.ts wires the real ports (spawnRunner,
 * fetch, /sys/class/net, /proc/self/mountinfo, the kubeconfig); tests inject fakes.
 *
 * Order: the agent's /debug/state first (its settings are the defaults of the other checks), then the checks that
 * need commands (iptables backend, the iptables and ip6tables rules, the kernel's eBPF support, one bpftool batch for
 * what is attached), then the HTTP ones. The report opens with the verdicts that need all of it (the interception per
 * family, the dataplane), then iptables, host interfaces, eBPF, metadata endpoint, API server, the agent's view.
 */
import type { NodeFacts } from '../netfilter/ebpf/support.ts';
import { probeSupport } from '../netfilter/ebpf/support.ts';
import type { CommandRunner } from '../netfilter/exec.ts';
import {
  agentInterception,
  agentRows,
  checkApiServer,
  checkBackend,
  checkEbpf,
  checkIptables,
  checkInterfaces,
  checkMetadata,
  dataplaneRow,
  detectDataplane,
  ebpfNeed,
  ebpfPaths,
  ebpfUse,
  fetchAgentState,
  interceptionRows,
  supportRows,
  type CheckRow,
  type EbpfInspection,
  type HttpPort,
  type IptablesCheck,
  type KubePort,
} from './checks.ts';
import { containerCredentialsRows } from './container-credentials.ts';
import type { DoctorOptions } from './options.ts';
import type { DebugState } from './state.ts';

export interface DoctorPorts {
  runner: CommandRunner;
  http: HttpPort;
  /** This node's network interfaces (e.g. readdir /sys/class/net). */
  listInterfaces(): string[];
  /** A Kubernetes GET port for this kubeconfig (undefined: in-cluster); throws when it cannot be loaded. */
  kube(kubeconfig: string | undefined): KubePort;
  /** What is mounted where and the kernel's release, for the eBPF checks (realNodeFacts: /proc/self/mountinfo, uname). */
  facts: NodeFacts;
  now(): number;
}

export interface DoctorReport {
  /** No FAIL row (warnings allowed). */
  ok: boolean;
  summary: { ok: number; warn: number; fail: number };
  checks: CheckRow[];
  /** The running agent's /debug/state, or null when it could not be read. */
  agent: DebugState | null;
}

export const EXIT_OK = 0;
export const EXIT_PROBLEM = 1;

/** Never throws: a check that blows up becomes a FAIL row of its own. */
async function guarded(id: string, title: string, fn: () => Promise<CheckRow[]> | CheckRow[]): Promise<CheckRow[]> {
  try {
    return await fn();
  } catch (err) {
    return [{ id, title, status: 'fail', detail: `check failed: ${err instanceof Error ? err.message : String(err)}`, fix: 'this is a doctor bug or an unexpected environment: please report it with this output' }];
  }
}

export async function runDoctor(options: DoctorOptions, ports: DoctorPorts): Promise<DoctorReport> {
  const fetched = await fetchAgentState(ports.http, options.metricsPort, options.timeoutMs).catch((err: unknown) => ({
    rows: [{ id: 'agent', title: 'agent', status: 'fail' as const, detail: String(err), fix: 'see the agent row' }],
    state: undefined,
  }));
  const agent = fetched.state;
  const ai = agentInterception(agent);
  const dataplane = detectDataplane(() => ports.listInterfaces());

  const iptablesRows: CheckRow[] = [];
  let backend: Awaited<ReturnType<typeof checkBackend>>['backend'];
  iptablesRows.push(
    ...(await guarded('iptables.backend', 'iptables backend', async () => {
      const result = await checkBackend(ports.runner, options.iptablesBackend, agent);
      backend = result.backend;
      return result.rows;
    })),
  );
  let iptables: IptablesCheck | undefined;
  iptablesRows.push(
    ...(await guarded('iptables.rules', 'interception rules', async () => {
      iptables = await checkIptables(ports.runner, backend, agent);
      return iptables.rows;
    })),
  );
  iptablesRows.push(
    ...(await guarded('interfaces', 'host interfaces', () => {
      const fromFlags = options.hostInterfaces !== undefined;
      const patterns = options.hostInterfaces ?? agent?.config.hostInterfaces;
      if (!fromFlags && ai.mode !== undefined && ai.mode !== 'iptables' && ai.mode !== 'auto') {
        return [{ id: 'interfaces', title: 'host interfaces', status: 'ok' as const, detail: `not used (--intercept ${ai.mode}: only the iptables rules match interfaces)` }];
      }
      return checkInterfaces(patterns, ports.listInterfaces(), agent?.pods?.length, fromFlags ? 'from --host-interface' : 'as the agent runs');
    })),
  );

  const ebpfRows: CheckRow[] = [];
  const paths = ebpfPaths(options, agent, () => ports.facts.mounts());
  ebpfRows.push(...(await guarded('ebpf.support', 'eBPF kernel support', async () => supportRows(await probeSupport(ports.runner, ports.facts, paths, { features: false }), ebpfNeed(ai, dataplane), paths))));
  let ebpf: EbpfInspection | undefined;
  ebpfRows.push(
    ...(await guarded('ebpf.cgroup', 'eBPF cgroup', async () => {
      ebpf = await checkEbpf(ports.runner, { paths, ai, use: ebpfUse(ai) });
      return ebpf.rows;
    })),
  );

  const rows: CheckRow[] = [
    ...(await guarded('intercept', 'interception', () => [...interceptionRows(ai, dataplane, ebpf, iptables), dataplaneRow(dataplane, ai, ebpf?.attached ?? false)])),
    ...iptablesRows,
    ...ebpfRows,
  ];
  rows.push(...(await guarded('metadata', 'metadata endpoint', () => checkMetadata(ports.http, options.metadataEndpoint, options.timeoutMs, agent ? (agent.config.imdsv2 ?? 'optional') : undefined))));
  const kubeconfig = options.kubeconfig ?? agent?.config.kubeconfig ?? undefined;
  rows.push(...(await guarded('apiserver', 'API server', () => checkApiServer(() => ports.kube(kubeconfig), agent?.config.nodeName || undefined, options.timeoutMs, options.kubeconfig !== undefined))));
  rows.push(...fetched.rows);
  if (agent) rows.push(...(await guarded('agent', 'agent', () => agentRows(agent, ports.now()))));
  if (agent) rows.push(...(await guarded('containerCredentials', 'container credentials', () => containerCredentialsRows(ports.runner, ports.http, agent, options.timeoutMs, ports.now()))));

  const summary = { ok: 0, warn: 0, fail: 0 };
  for (const r of rows) summary[r.status]++;
  return { ok: summary.fail === 0, summary, checks: rows, agent: agent ?? null };
}

export function exitCode(report: DoctorReport): number {
  return report.ok ? EXIT_OK : EXIT_PROBLEM;
}

const LABEL = { ok: 'OK', warn: 'WARN', fail: 'FAIL' } as const;

/** The human-readable report: a table with a `fix:` line under every row that is not OK, then what the agent sees. */
export function renderText(report: DoctorReport): string {
  const width = Math.min(32, Math.max(5, ...report.checks.map((r) => r.title.length)));
  const lines = [`${'STATUS'.padEnd(6)}  ${'CHECK'.padEnd(width)}  DETAIL`];
  for (const r of report.checks) {
    lines.push(`${LABEL[r.status].padEnd(6)}  ${r.title.padEnd(width)}  ${r.detail}`);
    if (r.fix) lines.push(`${''.padEnd(6)}  ${''.padEnd(width)}  fix: ${r.fix}`);
  }
  const agent = report.agent;
  if (agent?.pods && agent.pods.length > 0) {
    lines.push('', `pods indexed (${agent.pods.length}):`);
    const name = Math.max(...agent.pods.map((p) => p.namespace.length + p.name.length + 1));
    for (const p of agent.pods) {
      const what = p.answer === 'role' ? p.roleArn : p.answer === 'denied' ? `denied (${p.denialCode})${p.requestedRole ? ` ${p.requestedRole}` : ''}` : 'no role';
      lines.push(`  ${`${p.namespace}/${p.name}`.padEnd(name)}  ${p.ip.padEnd(15)}  ${what}`);
    }
  }
  if (agent?.identities && agent.identities.length > 0) {
    lines.push('', `credential cache (${agent.identities.length}):`);
    for (const i of agent.identities) {
      const state = i.accessKeyId ? `${i.accessKeyId} expires ${i.expiration}${i.refreshAt ? ` refresh ${i.refreshAt}` : ''}` : i.fetching ? 'fetching' : 'none';
      lines.push(`  ${i.roleArn}  session ${i.sessionName}${i.externalId ? ' (external ID)' : ''}  ${state}${i.lastError ? `  last error ${i.lastError.code}` : ''}`);
    }
  }
  const { ok, warn, fail } = report.summary;
  lines.push('', `${ok} ok, ${warn} warning(s), ${fail} failure(s)`);
  return `${lines.join('\n')}\n`;
}

/** `fetch` as an HttpPort (Node ≥ 18): rejects on network errors and after timeoutMs. */
export const fetchHttp: HttpPort = {
  async request(url, init) {
    try {
      const res = await fetch(url, { method: init.method ?? 'GET', headers: init.headers ?? {}, signal: AbortSignal.timeout(init.timeoutMs), redirect: 'manual' });
      return { status: res.status, body: await res.text() };
    } catch (err) {
      // undici says "fetch failed" and keeps the reason (ECONNREFUSED …) in the cause.
      const e = err as Error & { cause?: { code?: string; message?: string } };
      if (e.name === 'TimeoutError') throw new Error(`no answer within ${init.timeoutMs} ms`);
      throw new Error(e.cause?.code ?? e.cause?.message ?? e.message);
    }
  },
};
