/**
 * Section 4, footprint of the production process (`node bin/kiam.mjs agent … --iptables`, the bundle): RSS and
 * idle CPU with 110 pods, then a long mixed load — keep-alive GETs, new connections (paced, to stay far from the
 * conntrack limit), IMDSv2 token PUT + GET pairs — while pods come and go in the API, and RSS after it.
 */
import type { GenConfig } from './loadgen.ts';
import { cpuSeconds, memory } from './lib/procfs.ts';
import type { BenchPod } from './lib/pods.ts';
import { NODE_NAME, sleep } from './node.ts';
import { NODE_PODS, roleName, runGenerators, type LoadResult, type World } from './world.ts';

export interface FootprintSection {
  rss_mb_idle: number;
  idle_cpu_pct: number;
  idle_children_cpu_pct: number;
  idle_seconds: number;
  load_seconds: number;
  load: Omit<LoadResult, 'histogram'>;
  churn: { created: number; deleted: number };
  rss_mb_during_load_max: number;
  rss_mb_after_load: number;
  rss_mb_after_load_settled: number;
  peak_rss_mb: number;
  cpu_pct_during_load: number;
}

const MB = 1024 * 1024;

export async function footprintSection(world: World, opts: { idleMs: number; loadMs: number }, log: (m: string) => void): Promise<FootprintSection> {
  const { node } = world;
  const agent = await node.startAgent();
  const churned: BenchPod[] = [];
  try {
    await node.waitForMetric('kiam_pods_indexed', (v) => v >= NODE_PODS);
    await node.waitForMetric('kiam_credentials_cached_identities', (v) => v >= NODE_PODS);
    await sleep(3_000);
    const rssIdle = memory(agent.pid).rss;
    const c0 = cpuSeconds(agent.pid);
    const t0 = performance.now();
    await sleep(opts.idleMs);
    const c1 = cpuSeconds(agent.pid);
    const idleS = (performance.now() - t0) / 1000;
    const idleCpu = ((c1.self - c0.self) / idleS) * 100;
    const idleChildren = ((c1.children - c0.children) / idleS) * 100;
    log(`footprint idle: RSS ${(rssIdle / MB).toFixed(1)} MB, CPU ${idleCpu.toFixed(2)} % of a core over ${idleS.toFixed(0)} s (+${idleChildren.toFixed(2)} % in iptables children)`);

    // Per generator: 4 keep-alive, 2 paced new-connection loops, 2 token+GET loops, each on its own pod.
    const mixed: GenConfig['slots'] = [
      ...[0, 1, 2, 3].map((source) => ({ kind: 'ka' as const, source })),
      ...[4, 5].map((source) => ({ kind: 'new' as const, source, pauseMs: 5 })),
      ...[6, 7].map((source) => ({ kind: 'token' as const, source })),
    ];
    let rssMax = 0;
    let churnSeq = 0;
    let deleted = 0;
    let stop = false;
    let cpuA = 0;
    let cpuB = 0;
    const sampler = (async () => {
      while (!stop) {
        rssMax = Math.max(rssMax, memory(agent.pid).rss);
        // Pod churn: two pods leave, two new ones (new IPs, roles of the set) arrive, every 5 s.
        const gone = churned.splice(0, churned.length >= 4 ? 2 : 0);
        await node.deletePods(gone);
        deleted += gone.length;
        const fresh = [0, 1].map(() => {
          const i = ++churnSeq;
          return { namespace: 'churn', name: `churn-${i}`, ip: `10.82.${Math.floor(i / 250) % 250}.${(i % 250) + 1}`, node: NODE_NAME, role: roleName(i) };
        });
        await node.createPods(fresh);
        churned.push(...fresh);
        for (let waited = 0; waited < 5_000 && !stop; waited += 250) await sleep(250);
      }
    })();
    let load: LoadResult;
    try {
      load = await runGenerators(world, [mixed, mixed], { warmupMs: 1_000, durationMs: opts.loadMs, timeoutMs: 60_000 }, {
        atStart: () => (cpuA = cpuSeconds(agent.pid).self),
        atEnd: () => (cpuB = cpuSeconds(agent.pid).self),
      });
    } finally {
      stop = true;
      await sampler;
    }
    const mem = memory(agent.pid);
    await sleep(5_000);
    const settled = memory(agent.pid).rss;
    const { histogram: _h, ...loadSummary } = load;
    const out: FootprintSection = {
      rss_mb_idle: rssIdle / MB,
      idle_cpu_pct: idleCpu,
      idle_children_cpu_pct: idleChildren,
      idle_seconds: idleS,
      load_seconds: load.windowS,
      load: loadSummary,
      churn: { created: churnSeq, deleted },
      rss_mb_during_load_max: Math.max(rssMax, mem.rss) / MB,
      rss_mb_after_load: mem.rss / MB,
      rss_mb_after_load_settled: settled / MB,
      peak_rss_mb: mem.hwm / MB,
      cpu_pct_during_load: ((cpuB - cpuA) / load.windowS) * 100,
    };
    log(
      `footprint after ${out.load_seconds.toFixed(0)} s mixed load (${load.requests} requests, ${load.rps.toFixed(0)} req/s, ${load.errors} errors, ${churnSeq} pods created / ${deleted} deleted): ` +
        `RSS ${out.rss_mb_after_load.toFixed(1)} MB (peak ${out.peak_rss_mb.toFixed(1)} MB, ${out.rss_mb_after_load_settled.toFixed(1)} MB 5 s later)`,
    );
    return out;
  } finally {
    await node.stopAgent();
    await node.deletePods(churned).catch(() => {});
  }
}
