/**
 * Section 1, warm credential requests: the agent against a bare node:http server serving the agent's own
 * document bytes, both on the host IP behind the same interception (`kiam intercept install --port …` points the
 * DNAT rule or the eBPF program's config at one or the other), keep-alive and new-connection, 1 / 16 / 64
 * connections, for each interception path (bench/lib/intercept.ts), runs interleaved (per variant: each path, the
 * agent then the baseline) so that a noisy neighbour hurts all alike; with `rounds`, the whole sequence again, so
 * that the report can take each variant's median. Server CPU per request from /proc. On an
 * eBPF path, the program's own counters must show at least one rewritten connect per connection opened.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { headerPairs } from './lib/http-response.ts';
import { PATH_LABEL, usesEbpf, type InterceptPath } from './lib/intercept.ts';
import { cpuSeconds } from './lib/procfs.ts';
import { AGENT_PORT, BASELINE_PORT } from './node.ts';
import { runtime } from './runtime.ts';
import { NODE_PODS, runGenerators, splitSlots, type LoadResult, type World } from './world.ts';

export interface WarmRun extends Omit<LoadResult, 'histogram'> {
  /** The interception the requests went through; absent in runs recorded before there was a choice: the DNAT. */
  path?: InterceptPath;
  /** Which round (1-based) of `--rounds`; absent in runs recorded before rounds existed. */
  round?: number;
  server: 'agent' | 'baseline';
  mode: 'keep-alive' | 'new-connection';
  connections: number;
  server_cpu_us_per_req: number;
  /** eBPF paths: connects the program rewrote during the run (warm-up included). */
  ebpf_redirects?: number;
  /**
   * Connections the node namespace's conntrack held right after the run, its table flushed before (warm-up
   * included; TIME_WAIT entries outlive the run). Absent without conntrack-tools.
   */
  conntrack_entries?: number;
}

export interface WarmSection {
  document_bytes: number;
  document_headers: [string, string][];
  runs: WarmRun[];
}

export async function warmSection(
  world: World,
  opts: { warmupMs: number; durationMs: number; connections: number[]; paths: readonly InterceptPath[]; rounds?: number },
  log: (m: string) => void,
): Promise<WarmSection> {
  const { node, sb, gens } = world;
  const [first] = opts.paths;
  if (!first) throw new Error('warm: no interception path');
  // No interception of the agent's own: `kiam intercept install` installs it and switches it between the servers.
  const agent = await node.startAgent({ intercept: 'none' });
  await node.waitForMetric('kiam_pods_indexed', (v) => v >= NODE_PODS);
  await node.waitForMetric('kiam_credentials_cached_identities', (v) => v >= NODE_PODS);
  await node.redirect(first, AGENT_PORT);

  const src = gens[0].sources[0]!;
  const fetch = node.spawnInPod(gens[0].pod, 'bench/loadgen.ts', ['--fetch', JSON.stringify({ host: '169.254.169.254', port: 80, ip: src.ip, path: `/latest/meta-data/iam/security-credentials/${src.role}` })]);
  const captured = JSON.parse(await fetch.waitForLine(/^\{"status"/, 20_000)) as { status: number; head: string; body: string };
  if (captured.status !== 200) throw new Error(`warm: the agent answered ${captured.status} to ${src.ip} asking for ${src.role}`);
  const headers = headerPairs(captured.head);
  const docFile = join(sb.tmpDir, 'document.json');
  writeFileSync(docFile, JSON.stringify({ status: 200, headers, body: captured.body }));
  const baseline = sb.spawn(sb.nodeNs, [runtime.node, '--import', 'tsx', 'bench/baseline-server.ts', '--host', sb.hostIp, '--port', String(BASELINE_PORT), '--document', docFile], { cwd: process.cwd() });
  await baseline.waitForLine(/^\{"url"/, 20_000);

  const servers = [
    { server: 'agent' as const, port: AGENT_PORT, pid: agent.pid },
    { server: 'baseline' as const, port: BASELINE_PORT, pid: baseline.pid },
  ];
  const rounds = opts.rounds ?? 1;
  const variants = (['keep-alive', 'new-connection'] as const).flatMap((mode) =>
    opts.connections.flatMap((connections) => opts.paths.flatMap((path) => servers.map((s) => ({ mode, connections, path, s })))),
  );
  const runs: WarmRun[] = [];
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const { mode, connections, path, s } of variants) {
        await node.redirect(path, s.port);
        const redirects0 = usesEbpf(path) ? await node.ebpfRedirects() : 0;
        const flushed = await node.flushConntrack();
        let cpu0 = 0;
        let cpu1 = 0;
        const r = await runGenerators(world, splitSlots(connections, mode === 'keep-alive' ? 'ka' : 'new'), opts, {
          atStart: () => (cpu0 = cpuSeconds(s.pid).self),
          atEnd: () => (cpu1 = cpuSeconds(s.pid).self),
        });
        const { histogram: _h, ...rest } = r;
        const run: WarmRun = { path, ...(rounds > 1 ? { round } : {}), server: s.server, mode, connections, ...rest, server_cpu_us_per_req: ((cpu1 - cpu0) * 1e6) / Math.max(1, r.requests) };
        if (flushed) run.conntrack_entries = await node.conntrackCount();
        if (usesEbpf(path)) {
          run.ebpf_redirects = (await node.ebpfRedirects()) - redirects0;
          const opened = r.generators.reduce((n, g) => n + g.connections, 0);
          if (run.ebpf_redirects < opened) throw new Error(`warm ${path}: the eBPF program rewrote ${run.ebpf_redirects} connects, the generators opened ${opened} connections`);
        }
        runs.push(run);
        const late = r.generators.filter((g) => g.late_ms > 0);
        if (late.length) log(`warm: a generator started ${Math.max(...late.map((g) => g.late_ms))} ms after the window opened (no warm-up for it)`);
        log(
          `warm ${rounds > 1 ? `round ${round}/${rounds} ` : ''}${PATH_LABEL[path].padEnd(4)} ${s.server.padEnd(8)} ${mode.padEnd(14)} ${String(connections).padStart(2)} conn: ${r.rps.toFixed(0)} req/s, p50 ${r.p50_ms.toFixed(3)} p99 ${r.p99_ms.toFixed(3)} p99.9 ${r.p999_ms.toFixed(3)} ms, ` +
            `${run.server_cpu_us_per_req.toFixed(1)} µs CPU/req, errors ${r.errors},${run.conntrack_entries === undefined ? '' : ` conntrack ${run.conntrack_entries},`} generators ${r.generators.map((g) => `${g.cpu_pct.toFixed(0)}%`).join('+')}`,
        );
      }
    }
  } finally {
    await baseline.stop(3_000);
    await node.stopAgent();
    await node.removeInterception();
  }
  return { document_bytes: Buffer.from(captured.body, 'base64').length, document_headers: headers, runs };
}
