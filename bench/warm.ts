/**
 * Section 1, warm credential requests: the agent against a bare node:http server serving the agent's own
 * document bytes, both on the host IP behind the same DNAT rule (`kiam iptables install --port …` points the rule
 * at one or the other), keep-alive and new-connection, 1 / 16 / 64 connections, runs interleaved (agent, then
 * baseline, per variant) so that a noisy neighbour hurts both alike. Server CPU per request from /proc.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { headerPairs } from './lib/http-response.ts';
import { cpuSeconds } from './lib/procfs.ts';
import type { SlotKind } from './loadgen.ts';
import { AGENT_PORT, BASELINE_PORT } from './node.ts';
import { runtime } from './runtime.ts';
import { NODE_PODS, runGenerators, splitSlots, type LoadResult, type World } from './world.ts';

export interface WarmRun extends Omit<LoadResult, 'histogram'> {
  server: 'agent' | 'baseline';
  mode: 'keep-alive' | 'new-connection';
  connections: number;
  server_cpu_us_per_req: number;
}

export interface WarmSection {
  document_bytes: number;
  document_headers: [string, string][];
  runs: WarmRun[];
}

export async function warmSection(world: World, opts: { warmupMs: number; durationMs: number; connections: number[] }, log: (m: string) => void): Promise<WarmSection> {
  const { node, sb, gens } = world;
  // No --iptables here: the rule is installed by `kiam iptables install` and switched between the two servers.
  const agent = await node.startAgent({ iptables: false });
  await node.waitForMetric('kiam_pods_indexed', (v) => v >= NODE_PODS);
  await node.waitForMetric('kiam_credentials_cached_identities', (v) => v >= NODE_PODS);
  await node.dnatTo(AGENT_PORT);

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
  const runs: WarmRun[] = [];
  try {
    for (const mode of ['keep-alive', 'new-connection'] as const) {
      const kind: SlotKind = mode === 'keep-alive' ? 'ka' : 'new';
      for (const connections of opts.connections) {
        for (const s of servers) {
          await node.dnatTo(s.port);
          let cpu0 = 0;
          let cpu1 = 0;
          const r = await runGenerators(world, splitSlots(connections, kind), opts, {
            atStart: () => (cpu0 = cpuSeconds(s.pid).self),
            atEnd: () => (cpu1 = cpuSeconds(s.pid).self),
          });
          const { histogram: _h, ...rest } = r;
          const run: WarmRun = { server: s.server, mode, connections, ...rest, server_cpu_us_per_req: ((cpu1 - cpu0) * 1e6) / Math.max(1, r.requests) };
          runs.push(run);
          const late = r.generators.filter((g) => g.late_ms > 0);
          if (late.length) log(`warm: a generator started ${Math.max(...late.map((g) => g.late_ms))} ms after the window opened (no warm-up for it)`);
          log(
            `warm ${s.server.padEnd(8)} ${mode.padEnd(14)} ${String(connections).padStart(2)} conn: ${r.rps.toFixed(0)} req/s, p50 ${r.p50_ms.toFixed(3)} p99 ${r.p99_ms.toFixed(3)} p99.9 ${r.p999_ms.toFixed(3)} ms, ` +
              `${run.server_cpu_us_per_req.toFixed(1)} µs CPU/req, errors ${r.errors}, generators ${r.generators.map((g) => `${g.cpu_pct.toFixed(0)}%`).join('+')}`,
          );
        }
      }
    }
  } finally {
    await baseline.stop(3_000);
    await node.stopAgent();
    await node.dnatTo(AGENT_PORT);
  }
  return { document_bytes: Buffer.from(captured.body, 'base64').length, document_headers: headers, runs };
}
