/**
 * The summary (bench/last-run.json: the headline fields the issue asks for, then everything measured) and the
 * markdown tables, with each target of the issue beside its figure.
 */
import type { ApiSection } from './api.ts';
import type { FirstSection } from './first.ts';
import type { FootprintSection } from './footprint.ts';
import { type InterceptPath } from './lib/intercept.ts';
import { BENCH_PATHS, CONTAINER_CREDENTIALS, isTokenPath, pathLabel, type BenchPath } from './lib/token-path.ts';
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

/** A run's path (an interception path or the token path): runs recorded before there was a choice went through the DNAT. */
export const pathOf = (x: { path?: BenchPath | undefined }): BenchPath => x.path ?? 'iptables';

const runKey = (r: WarmRun) => `${pathOf(r)}/${r.server}/${r.mode}/${r.connections}`;

/**
 * One run per variant (path, server, mode, connections), in the order they first ran: with several rounds, the
 * round with the median req/s (the lower one of an even count), so that its p99 and CPU figures come from the same
 * run as its throughput.
 */
export function medianRuns(runs: readonly WarmRun[]): WarmRun[] {
  const groups = new Map<string, WarmRun[]>();
  for (const r of runs) {
    const g = groups.get(runKey(r));
    if (g) g.push(r);
    else groups.set(runKey(r), [r]);
  }
  return [...groups.values()].map((g) => [...g].sort((a, b) => a.rps - b.rps)[Math.floor((g.length - 1) / 2)]!);
}

/** req/s of every round of the run's variant, lowest first. */
function roundsOf(w: WarmSection, r: WarmRun): number[] {
  return w.runs.filter((x) => runKey(x) === runKey(r)).map((x) => x.rps).sort((a, b) => a - b);
}

function warmPick(w: WarmSection, server: WarmRun['server'], mode: WarmRun['mode'], connections: number, path: BenchPath = 'iptables'): WarmRun | undefined {
  return medianRuns(w.runs.filter((r) => r.server === server && r.mode === mode && r.connections === connections && pathOf(r) === path))[0];
}

/** The paths present, in the canonical order (DNAT first, the token path last). */
function pathsIn(items: readonly { path?: BenchPath | undefined }[]): BenchPath[] {
  const present = new Set(items.map(pathOf));
  return BENCH_PATHS.filter((p) => present.has(p));
}

/** The generators' CPU per request, µs: the client's side of every request, its network stack included. */
export function generatorCpuUsPerReq(r: Pick<WarmRun, 'generators' | 'windowS' | 'requests'>): number {
  const us = r.generators.reduce((n, g) => n + (g.cpu_pct / 100) * r.windowS * 1e6, 0);
  return r.requests > 0 ? us / r.requests : NaN;
}

export interface PathComparison {
  mode: WarmRun['mode'];
  connections: number;
  server: WarmRun['server'];
  /** The DNAT run and the other path's run of the same variant. */
  dnat: WarmRun;
  other: WarmRun;
  rps_ratio: number;
  p99_ratio: number;
  server_cpu_ratio: number;
  generator_cpu_ratio: number;
}

/** Each variant of another path (eBPF, auto, token) against the DNAT's run of the same variant in the same run. */
export function comparePaths(w: WarmSection, path: BenchPath): PathComparison[] {
  const out: PathComparison[] = [];
  for (const other of medianRuns(w.runs).filter((r) => pathOf(r) === path)) {
    const dnat = warmPick(w, other.server, other.mode, other.connections, 'iptables');
    if (!dnat || path === 'iptables') continue;
    out.push({
      mode: other.mode,
      connections: other.connections,
      server: other.server,
      dnat,
      other,
      rps_ratio: other.rps / dnat.rps,
      p99_ratio: other.p99_ms / dnat.p99_ms,
      server_cpu_ratio: other.server_cpu_us_per_req / dnat.server_cpu_us_per_req,
      generator_cpu_ratio: generatorCpuUsPerReq(other) / generatorCpuUsPerReq(dnat),
    });
  }
  return out;
}

function warmHeadline(w: WarmSection, path: BenchPath): Record<string, unknown> | undefined {
  const a = warmPick(w, 'agent', 'keep-alive', 64, path);
  const b = warmPick(w, 'baseline', 'keep-alive', 64, path);
  const a1 = warmPick(w, 'agent', 'keep-alive', 1, path);
  if (!a || !b) return undefined;
  return {
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

/**
 * The headline figures, shaped as issue 4 asks (64-connection keep-alive figures for `warm`, through the DNAT);
 * the same for the other paths as `warm_ebpf` / `warm_auto` / `warm_token` and `first_credential_ebpf` /
 * `first_credential_auto` / `first_credential_token` (the token path also with `token_reviews`: the TokenReviews
 * its warm runs caused, 0 when every answer came from the cache).
 */
export function headline(s: Sections): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (s.warm) {
    for (const path of pathsIn(s.warm.runs)) {
      const h = warmHeadline(s.warm, path);
      if (h && isTokenPath(path)) h.token_reviews = tokenReviews(s.warm);
      if (h) out[path === 'iptables' ? 'warm' : `warm_${path}`] = h;
    }
  }
  for (const path of pathsIn(s.first?.variants ?? [])) {
    const after1s = s.first?.variants.find((v) => v.delay_ms === 1000 && pathOf(v) === path);
    if (after1s) out[path === 'iptables' ? 'first_credential' : `first_credential_${path}`] = { p50_ms: after1s.p50_ms, p99_ms: after1s.p99_ms, ok: after1s.ok, pods: after1s.pods };
  }
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

/** TokenReviews during the token path's warm runs of the agent (null: none recorded). */
export function tokenReviews(w: WarmSection): number | null {
  const counted = w.runs.filter((r) => isTokenPath(pathOf(r)) && r.token_reviews !== undefined);
  return counted.length ? counted.reduce((n, r) => n + (r.token_reviews ?? 0), 0) : null;
}

export function targets(s: Sections): Target[] {
  const t: Target[] = [];
  const w = s.warm;
  if (w) {
    for (const path of pathsIn(w.runs)) {
      const via = pathLabel(path);
      const a = warmPick(w, 'agent', 'keep-alive', 64, path);
      const b = warmPick(w, 'baseline', 'keep-alive', 64, path);
      if (a && b) {
        t.push({ what: `warm req/s vs baseline, 64 conn keep-alive, ${via}`, value: `${f(a.rps / b.rps, 2)}× (${f(a.rps, 0)} / ${f(b.rps, 0)})`, target: '≥ 0.75×', pass: a.rps / b.rps >= 0.75 });
        t.push({ what: `warm p99 vs baseline p99, 64 conn keep-alive, ${via}`, value: `${f(a.p99_ms / b.p99_ms, 2)}× (${f(a.p99_ms, 3)} / ${f(b.p99_ms, 3)} ms)`, target: '≤ 1.5×', pass: a.p99_ms / b.p99_ms <= 1.5 });
        const cr = a.server_cpu_us_per_req / b.server_cpu_us_per_req;
        t.push({ what: `server CPU per request vs baseline, 64 conn keep-alive, ${via}`, value: `${f(cr, 2)}× (${f(a.server_cpu_us_per_req)} / ${f(b.server_cpu_us_per_req)} µs)`, target: '≤ 1.5×', pass: cr <= 1.5 });
      }
      const a1 = warmPick(w, 'agent', 'keep-alive', 1, path);
      if (a1) t.push({ what: `warm p99, 1 connection keep-alive, ${via}`, value: `${f(a1.p99_ms, 3)} ms`, target: '≤ 0.5 ms', pass: a1.p99_ms <= 0.5 });
    }
    const errors = w.runs.filter((r) => r.server === 'agent').reduce((n, r) => n + r.errors, 0);
    t.push({ what: 'warm: non-200 answers and socket errors (agent, all runs)', value: String(errors), target: '0', pass: errors === 0 });
    const reviews = tokenReviews(w);
    if (reviews !== null) t.push({ what: 'warm, token: TokenReviews during the runs (every token reviewed once before)', value: String(reviews), target: '0 (cached)', pass: reviews === 0 });
  }
  for (const path of pathsIn(s.first?.variants ?? [])) {
    const after1s = s.first?.variants.find((v) => v.delay_ms === 1000 && pathOf(v) === path);
    if (after1s) {
      t.push({
        what: `new pod's first credential, request after 1 s, p99, ${pathLabel(path)}`,
        value: `${f(after1s.p99_ms)} ms (${after1s.ok}/${after1s.pods} ok)`,
        target: '≤ 20 ms, all ok',
        pass: after1s.p99_ms <= 20 && after1s.ok === after1s.pods,
      });
    }
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
  const m = meta as { date: string; quick: boolean; intercept?: InterceptPath[]; token?: boolean; token_link?: string; pinned?: { agent?: string; load?: string }; machine: { cpus: number; cpu_model: string; node: string; kernel: string; commit: string; dirty_files: number; loadavg_start: number[]; loadavg_end?: number[] }; agent_log_level: string; command: string; agent_node?: string; agent_command?: string };
  L.push(`# kiam benchmark${m.quick ? ' (quick run: short durations, not for BENCHMARKS.md)' : ''}`, '');
  L.push(`${m.date} · \`${m.command}\` · ${m.machine.cpus} × ${m.machine.cpu_model} · bench on Node ${m.machine.node} · Linux ${m.machine.kernel} · commit ${m.machine.commit}${m.machine.dirty_files ? ` (+${m.machine.dirty_files} uncommitted files)` : ''} · load average at start ${m.machine.loadavg_start.map((x) => x.toFixed(2)).join(' ')}${m.machine.loadavg_end ? `, at end ${m.machine.loadavg_end.map((x) => x.toFixed(2)).join(' ')}` : ''} · agent on Node ${m.agent_node ?? m.machine.node}: production bundle (\`${(m.agent_command ?? 'node bin/kiam.mjs agent').split(' agent ')[0]} agent …\`), log level ${m.agent_log_level}${m.intercept ? ` · interception paths: ${m.intercept.map((p) => pathLabel(p)).join(', ')} (sts, footprint and api: DNAT)` : ''}${m.token ? ` · token path: ${CONTAINER_CREDENTIALS.host}:${CONTAINER_CREDENTIALS.port} by service-account token (warm and first${m.token_link ? `; link ${m.token_link}` : ''})` : ''}${m.pinned && (m.pinned.agent || m.pinned.load) ? ` · pinned: agent and baselines on CPUs ${m.pinned.agent ?? 'any'}, load generators on CPUs ${m.pinned.load ?? 'any'}` : ''}`, '');
  const tg = targets(s);
  if (tg.length) {
    L.push('## Targets', '', '| figure | measured | target | |', '|---|---|---|---|');
    for (const t of tg) L.push(`| ${t.what} | ${t.value} | ${t.target} | ${t.pass === null ? '' : t.pass ? 'pass' : '**miss**'} |`);
    L.push('');
  }
  if (s.warm) {
    const paths = pathsIn(s.warm.runs);
    const rounds = Math.max(1, ...s.warm.runs.map((r) => r.round ?? 1));
    L.push(`## 1. Warm credential requests (through the ${paths.map((p) => pathLabel(p)).join(' / ')}, 64 source pods of 110 indexed, 50 roles)`, '');
    L.push(
      `Document: ${s.warm.document_bytes} bytes. Baseline: bare \`node:http\` serving the agent's own bytes and headers on the same host IP, behind the same interception (each row's ×baseline is against the baseline of its own path). ` +
        'Two generator processes in two pod namespaces split the connections; their CPU (% of one core) shows whether they were the bound, and their CPU per request includes their side of the network stack (with the DNAT: conntrack and NAT for the packets they send).' +
        (paths.some(isTokenPath)
          ? ` Token path: GET ${CONTAINER_CREDENTIALS.path} on ${CONTAINER_CREDENTIALS.host}:${CONTAINER_CREDENTIALS.port} with each source pod's service-account token in the Authorization header, no interception; its document: ${s.warm.token_document_bytes ?? '—'} bytes; its baseline serves those bytes on the same address (another port); every token reviewed once before its run, so the rows measure the TokenReview cache (TokenReviews during the runs: ${tokenReviews(s.warm) ?? '—'}).`
          : '') +
        (rounds > 1 ? ` Every variant ran in ${rounds} rounds (all variants once per round); each row is the round with the median req/s, and the range gives every round's.` : ''),
      '',
    );
    L.push(
      `| mode | conn | path | server | req/s |${rounds > 1 ? ' req/s range |' : ''} ×baseline | p50 ms | p99 ms | p99 ×baseline | p99.9 ms | server CPU µs/req | CPU ×baseline | errors | generator CPU | generator CPU µs/req |`,
      `|---|---:|---|---|---:|${rounds > 1 ? '---:|' : ''}---:|---:|---:|---:|---:|---:|---:|---:|---|---:|`,
    );
    for (const r of medianRuns(s.warm.runs)) {
      const b = warmPick(s.warm, 'baseline', r.mode, r.connections, pathOf(r));
      const vs = (x: number, y: number) => (r.server === 'agent' && b ? f(x / y, 2) : '');
      const range = roundsOf(s.warm, r);
      L.push(
        `| ${r.mode} | ${r.connections} | ${pathLabel(pathOf(r))} | ${r.server} | ${f(r.rps, 0)} |${rounds > 1 ? ` ${f(range[0], 0)}–${f(range.at(-1), 0)} |` : ''} ${vs(r.rps, b?.rps ?? NaN)} | ${f(r.p50_ms, 3)} | ${f(r.p99_ms, 3)} | ${vs(r.p99_ms, b?.p99_ms ?? NaN)} | ${f(r.p999_ms, 3)} | ` +
          `${f(r.server_cpu_us_per_req)} | ${vs(r.server_cpu_us_per_req, b?.server_cpu_us_per_req ?? NaN)} | ${r.errors} | ${r.generators.map((g) => `${f(g.cpu_pct, 0)} %`).join(' + ')} | ${f(generatorCpuUsPerReq(r))} |`,
      );
    }
    L.push('');
    for (const path of paths.filter((p) => p !== 'iptables')) {
      const rows = comparePaths(s.warm, path);
      if (rows.length === 0) continue;
      const via = pathLabel(path);
      L.push(
        `### ${isTokenPath(path) ? 'The token path' : via} against the DNAT (same run, same variant; × = ${via} / DNAT)`,
        '',
        isTokenPath(path)
          ? "The same connections and source pods asking the container-credentials listener by token instead of the metadata address through the DNAT (agent rows: the agent's cost of each; baseline rows: the two routes' cost with a bare server). Node conntrack entries: with no kiam rule in the node during the token path's runs, conntrack tracks nothing."
          : "Node conntrack entries: what the node namespace's conntrack table held right after the run, emptied before it (warm-up included): one per connection the DNAT rewrote (a reused source port reuses its entry); on the eBPF path, with no NAT rule left on this node, conntrack tracks nothing.",
        '',
      );
      L.push(
        `| mode | conn | server | req/s DNAT → ${via} | × | p99 ms DNAT → ${via} | × | server CPU µs/req | × | generator CPU µs/req | × | node conntrack entries |`,
        '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
      );
      for (const c of rows) {
        L.push(
          `| ${c.mode} | ${c.connections} | ${c.server} | ${f(c.dnat.rps, 0)} → ${f(c.other.rps, 0)} | ${f(c.rps_ratio, 2)} | ${f(c.dnat.p99_ms, 3)} → ${f(c.other.p99_ms, 3)} | ${f(c.p99_ratio, 2)} | ` +
            `${f(c.dnat.server_cpu_us_per_req)} → ${f(c.other.server_cpu_us_per_req)} | ${f(c.server_cpu_ratio, 2)} | ${f(generatorCpuUsPerReq(c.dnat))} → ${f(generatorCpuUsPerReq(c.other))} | ${f(c.generator_cpu_ratio, 2)} | ${c.dnat.conntrack_entries ?? '—'} → ${c.other.conntrack_entries ?? '—'} |`,
        );
      }
      L.push('');
    }
  }
  if (s.first) {
    const byToken = s.first.variants.some((v) => isTokenPath(pathOf(v)));
    L.push(
      `## 2. A new pod's first credentials (STS answers after ${s.first.sts_delay_ms} ms; token PUT + listing + document, new connection each${byToken ? `; token path: the pod created, a token issued for it, then GET ${CONTAINER_CREDENTIALS.path} with it on a new connection until the first 200` : ''})`,
      '',
    );
    L.push('| path | first request | pods | ok | p50 ms | p99 ms | max ms |', '|---|---|---:|---:|---:|---:|---:|');
    for (const v of s.first.variants) {
      L.push(`| ${pathLabel(pathOf(v))} | ${v.delay_ms ? `${v.delay_ms} ms after the pod appeared` : 'immediately'} | ${v.pods} | ${v.ok} | ${f(v.p50_ms)} | ${f(v.p99_ms)} | ${f(v.max_ms)} |`);
    }
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
