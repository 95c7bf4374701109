/**
 * The summary (bench/last-run.json: the headline fields the issue asks for, then everything measured) and the
 * markdown tables, with each target of the issue beside its figure.
 */
import type { ApiSection } from './api.ts';
import type { FirstSection } from './first.ts';
import type { FootprintSection } from './footprint.ts';
import type { StsVariant } from './sts.ts';
import type { WarmRun, WarmSection } from './warm.ts';

export interface Sections {
  warm?: WarmSection;
  first?: FirstSection;
  sts?: { granted_lifetime_s: number; sts_delay_ms: number; variants: StsVariant[] };
  footprint?: FootprintSection;
  api?: ApiSection;
}

export interface Target {
  what: string;
  value: string;
  target: string;
  pass: boolean | null;
}

const f = (n: number | null | undefined, d = 1) => (n === null || n === undefined || Number.isNaN(n) ? '—' : n.toFixed(d));
const kib = (b: number) => `${(b / 1024).toFixed(0)} KiB`;

function warmPick(w: WarmSection, server: WarmRun['server'], mode: WarmRun['mode'], connections: number): WarmRun | undefined {
  return w.runs.find((r) => r.server === server && r.mode === mode && r.connections === connections);
}

/** The headline figures, shaped as issue 4 asks (64-connection keep-alive figures for `warm`). */
export function headline(s: Sections): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (s.warm) {
    const a = warmPick(s.warm, 'agent', 'keep-alive', 64);
    const b = warmPick(s.warm, 'baseline', 'keep-alive', 64);
    const a1 = warmPick(s.warm, 'agent', 'keep-alive', 1);
    if (a && b) {
      out.warm = {
        agent_rps: a.rps,
        baseline_rps: b.rps,
        ratio: a.rps / b.rps,
        p99_ms: a.p99_ms,
        baseline_p99_ms: b.p99_ms,
        p99_ratio: a.p99_ms / b.p99_ms,
        cpu_us_per_req: a.server_cpu_us_per_req,
        baseline_cpu_us_per_req: b.server_cpu_us_per_req,
        cpu_ratio: a.server_cpu_us_per_req / b.server_cpu_us_per_req,
        p99_ms_1_connection: a1?.p99_ms ?? null,
      };
    }
  }
  const after1s = s.first?.variants.find((v) => v.delay_ms === 1000);
  if (after1s) out.first_credential = { p50_ms: after1s.p50_ms, p99_ms: after1s.p99_ms, ok: after1s.ok, pods: after1s.pods };
  if (s.sts) {
    out.sts_calls_burst = s.sts.variants[0]?.burst_calls ?? null;
    out.sts_identities_burst = s.sts.variants[0]?.identities ?? null;
  }
  if (s.footprint) {
    out.rss_mb_after_load = s.footprint.rss_mb_after_load;
    out.idle_cpu_pct = s.footprint.idle_cpu_pct;
  }
  return out;
}

export function targets(s: Sections): Target[] {
  const t: Target[] = [];
  const w = s.warm;
  if (w) {
    const a = warmPick(w, 'agent', 'keep-alive', 64);
    const b = warmPick(w, 'baseline', 'keep-alive', 64);
    if (a && b) {
      t.push({ what: 'warm req/s vs baseline, 64 conn keep-alive', value: `${f(a.rps / b.rps, 2)}× (${f(a.rps, 0)} / ${f(b.rps, 0)})`, target: '≥ 0.75×', pass: a.rps / b.rps >= 0.75 });
      t.push({ what: 'warm p99 vs baseline p99, 64 conn keep-alive', value: `${f(a.p99_ms / b.p99_ms, 2)}× (${f(a.p99_ms, 3)} / ${f(b.p99_ms, 3)} ms)`, target: '≤ 1.5×', pass: a.p99_ms / b.p99_ms <= 1.5 });
      const cr = a.server_cpu_us_per_req / b.server_cpu_us_per_req;
      t.push({ what: 'server CPU per request vs baseline, 64 conn keep-alive', value: `${f(cr, 2)}× (${f(a.server_cpu_us_per_req)} / ${f(b.server_cpu_us_per_req)} µs)`, target: '≤ 1.5×', pass: cr <= 1.5 });
    }
    const a1 = warmPick(w, 'agent', 'keep-alive', 1);
    if (a1) t.push({ what: 'warm p99, 1 connection keep-alive', value: `${f(a1.p99_ms, 3)} ms`, target: '≤ 0.5 ms', pass: a1.p99_ms <= 0.5 });
    const errors = w.runs.filter((r) => r.server === 'agent').reduce((n, r) => n + r.errors, 0);
    t.push({ what: 'warm: non-200 answers and socket errors (agent, all runs)', value: String(errors), target: '0', pass: errors === 0 });
  }
  const after1s = s.first?.variants.find((v) => v.delay_ms === 1000);
  if (after1s) {
    t.push({ what: "new pod's first credential, request after 1 s, p99", value: `${f(after1s.p99_ms)} ms (${after1s.ok}/${after1s.pods} ok)`, target: '≤ 20 ms, all ok', pass: after1s.p99_ms <= 20 && after1s.ok === after1s.pods });
  }
  for (const v of s.sts?.variants ?? []) {
    t.push({ what: `AssumeRole per identity, burst of ${v.pods} pods, session ${v.session_name}`, value: `${v.burst_calls} calls / ${v.identities} identities`, target: '1 per identity', pass: v.burst_calls === v.identities && v.identities > 0 });
    if (v.refresh_calls !== null) {
      t.push({
        what: `AssumeRole per identity, one refresh cycle, session ${v.session_name}`,
        value: `${v.refresh_calls} calls / ${v.refresh_identities} identities (max ${v.refresh_max_calls_per_identity} per identity)`,
        target: '1 per identity',
        pass: v.refresh_calls === v.identities && v.refresh_max_calls_per_identity === 1,
      });
    }
  }
  const fp = s.footprint;
  if (fp) {
    t.push({ what: `RSS after ${f(fp.load_seconds / 60, 1)} min of mixed load`, value: `${f(fp.rss_mb_after_load)} MB (peak ${f(fp.peak_rss_mb)} MB)`, target: '≤ 80 MB', pass: fp.rss_mb_after_load <= 80 });
    t.push({ what: `idle CPU, ${fp.idle_seconds.toFixed(0)} s, 110 pods`, value: `${f(fp.idle_cpu_pct, 2)} % of a core`, target: '≤ 1 %', pass: fp.idle_cpu_pct <= 1 });
  }
  const api = s.api;
  if (api) {
    const init = api.initial.agent.pods.objects;
    const churn = api.churn.agent.pods.objects;
    // Bookmarks (one per watch per 10 s) ride along; allow a handful.
    t.push({
      what: `API pod objects received ∝ pods on this node (${api.node_pods} of ${api.cluster_pods}; churn ${api.churn.updates_on_node} here + ${api.churn.updates_elsewhere} elsewhere)`,
      value: `initial ${init} (cluster-wide ${api.initial.cluster_wide.pods.objects}); churn ${churn} (cluster-wide ${api.churn.cluster_wide.pods.objects})`,
      target: `≤ ${api.node_pods} + 5 and ≤ ${api.churn.updates_on_node} + 5`,
      pass: init <= api.node_pods + 5 && churn <= api.churn.updates_on_node + 5,
    });
  }
  return t;
}

export function markdown(s: Sections, meta: Record<string, unknown>): string {
  const L: string[] = [];
  const m = meta as { date: string; quick: boolean; machine: { cpus: number; cpu_model: string; node: string; kernel: string; commit: string; dirty_files: number; loadavg_start: number[]; loadavg_end?: number[] }; agent_log_level: string; command: string; agent_node?: string; agent_command?: string };
  L.push(`# kiam benchmark${m.quick ? ' (quick run: short durations, not for BENCHMARKS.md)' : ''}`, '');
  L.push(`${m.date} · \`${m.command}\` · ${m.machine.cpus} × ${m.machine.cpu_model} · bench on Node ${m.machine.node} · Linux ${m.machine.kernel} · commit ${m.machine.commit}${m.machine.dirty_files ? ` (+${m.machine.dirty_files} uncommitted files)` : ''} · load average at start ${m.machine.loadavg_start.map((x) => x.toFixed(2)).join(' ')}${m.machine.loadavg_end ? `, at end ${m.machine.loadavg_end.map((x) => x.toFixed(2)).join(' ')}` : ''} · agent on Node ${m.agent_node ?? m.machine.node}: production bundle (\`${(m.agent_command ?? 'node bin/kiam.mjs agent').split(' agent ')[0]} agent …\`), log level ${m.agent_log_level}`, '');
  const tg = targets(s);
  if (tg.length) {
    L.push('## Targets', '', '| figure | measured | target | |', '|---|---|---|---|');
    for (const t of tg) L.push(`| ${t.what} | ${t.value} | ${t.target} | ${t.pass === null ? '' : t.pass ? 'pass' : '**miss**'} |`);
    L.push('');
  }
  if (s.warm) {
    L.push('## 1. Warm credential requests (through the DNAT, 64 source pods of 110 indexed, 50 roles)', '');
    L.push(`Document: ${s.warm.document_bytes} bytes. Baseline: bare \`node:http\` serving the agent's own bytes and headers on the same host IP, same DNAT rule. Two generator processes in two pod namespaces split the connections; their CPU (% of one core) shows whether they were the bound.`, '');
    L.push('| mode | conn | server | req/s | ×baseline | p50 ms | p99 ms | p99 ×baseline | p99.9 ms | server CPU µs/req | CPU ×baseline | errors | generator CPU |', '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
    for (const r of s.warm.runs) {
      const b = warmPick(s.warm, 'baseline', r.mode, r.connections);
      const vs = (x: number, y: number) => (r.server === 'agent' && b ? f(x / y, 2) : '');
      L.push(
        `| ${r.mode} | ${r.connections} | ${r.server} | ${f(r.rps, 0)} | ${vs(r.rps, b?.rps ?? NaN)} | ${f(r.p50_ms, 3)} | ${f(r.p99_ms, 3)} | ${vs(r.p99_ms, b?.p99_ms ?? NaN)} | ${f(r.p999_ms, 3)} | ` +
          `${f(r.server_cpu_us_per_req)} | ${vs(r.server_cpu_us_per_req, b?.server_cpu_us_per_req ?? NaN)} | ${r.errors} | ${r.generators.map((g) => `${f(g.cpu_pct, 0)} %`).join(' + ')} |`,
      );
    }
    L.push('');
  }
  if (s.first) {
    L.push(`## 2. A new pod's first credentials (STS answers after ${s.first.sts_delay_ms} ms; token PUT + listing + document, new connection each)`, '');
    L.push('| first request | pods | ok | p50 ms | p99 ms | max ms |', '|---|---:|---:|---:|---:|---:|');
    for (const v of s.first.variants) L.push(`| ${v.delay_ms ? `${v.delay_ms} ms after the pod appeared` : 'immediately'} | ${v.pods} | ${v.ok} | ${f(v.p50_ms)} | ${f(v.p99_ms)} | ${f(v.max_ms)} |`);
    L.push('');
  }
  if (s.sts) {
    L.push(`## 3. STS calls (200 pods, one role, created at once; STS answers after ${s.sts.sts_delay_ms} ms and grants ${s.sts.granted_lifetime_s} s, so one refresh cycle comes ~1 min later)`, '');
    L.push('| session name | identities | burst calls | refresh calls | refreshed identities |', '|---|---:|---:|---:|---:|');
    for (const v of s.sts.variants) L.push(`| \`${v.session_name}\` | ${v.identities} | ${v.burst_calls} | ${v.refresh_calls ?? '—'} | ${v.refresh_identities ?? '—'} |`);
    L.push('');
  }
  if (s.footprint) {
    const fp = s.footprint;
    L.push('## 4. Footprint (production bundle, 110 pods)', '');
    L.push('| figure | value |', '|---|---:|');
    L.push(`| RSS idle | ${f(fp.rss_mb_idle)} MB |`);
    L.push(`| CPU idle (${f(fp.idle_seconds, 0)} s) | ${f(fp.idle_cpu_pct, 2)} % of a core (+${f(fp.idle_children_cpu_pct, 2)} % in iptables child processes) |`);
    L.push(`| mixed load | ${f(fp.load_seconds, 0)} s, ${fp.load.requests} requests (${f(fp.load.rps, 0)} req/s: ${Object.entries(fp.load.byKind).map(([k, v]) => `${k} ${v}`).join(', ')}), ${fp.load.errors} errors, ${fp.churn.created} pods created / ${fp.churn.deleted} deleted |`);
    L.push(`| agent CPU during load | ${f(fp.cpu_pct_during_load, 0)} % of a core |`);
    L.push(`| RSS right after load | ${f(fp.rss_mb_after_load)} MB (5 s later ${f(fp.rss_mb_after_load_settled)} MB) |`);
    L.push(`| RSS peak (VmHWM) | ${f(fp.peak_rss_mb)} MB |`, '');
  }
  if (s.api) {
    const a = s.api;
    L.push(`## 5. API load (${a.cluster_pods} pods in ${a.namespaces} namespaces, ${a.node_pods} on this node)`, '');
    L.push('| | agent (node-scoped) | cluster-wide informer | agent / cluster-wide |', '|---|---:|---:|---:|');
    const row = (what: string, x: { objects: number; bytes: number }, y: { objects: number; bytes: number }) =>
      L.push(`| ${what} | ${x.objects} objects, ${kib(x.bytes)} | ${y.objects} objects, ${kib(y.bytes)} | ${y.bytes ? `${((x.bytes / y.bytes) * 100).toFixed(2)} % of bytes` : '—'} |`);
    row('pods: list + watch at start', a.initial.agent.pods, a.initial.cluster_wide.pods);
    row('namespaces: list + watch at start', a.initial.agent.namespaces, a.initial.cluster_wide.namespaces);
    row(`pods: churn (${a.churn.updates_elsewhere} updates elsewhere + ${a.churn.updates_on_node} here)`, a.churn.agent.pods, a.churn.cluster_wide.pods);
    L.push('', `Agent RSS with the 20,000-pod cluster: ${f(a.agent_rss_mb)} MB; API requests by the agent: ${a.agent_requests}.`, '');
  }
  return L.join('\n');
}
