/**
 * Section 2, a new pod's first credentials: STS answers after 500 ms; each pod gets a real namespace (so its
 * requests come through the interception), is created in the API by its own client process, and runs the SDK flow
 * 1 s later — or immediately. Pods run in parallel batches, staggered so that their flows do not overlap. Once per
 * interception path: the agent started with `--intercept <path>`, as a DaemonSet would run it.
 *
 * With `token` (issue 10), then once more by token: the agent started with `--intercept none
 * --container-credentials` (every kiam interception removed first), and each pod's client, once its pod exists,
 * has a token issued for it and asks the container-credentials listener with it (bench/first-cred.ts): pod created
 * → token issued → (delay) → first 200 by token.
 */
import { Histogram } from './lib/histogram.ts';
import { usesEbpf, type InterceptPath } from './lib/intercept.ts';
import { isTokenPath, pathLabel, TOKEN_AUDIENCE, TOKEN_EXPIRATION_S, TOKEN_PATH, type BenchPath } from './lib/token-path.ts';
import type { FirstConfig, FirstResult } from './first-cred.ts';
import { NODE_NAME } from './node.ts';
import { NODE_PODS, roleName, type World } from './world.ts';

export interface FirstVariant {
  /** The agent's interception, or `token` (issue 10); absent in runs recorded before there was a choice: the DNAT. */
  path?: BenchPath;
  delay_ms: number;
  pods: number;
  ok: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  /** Per pod: flow ms (NaN when it failed) and the failure; token path: how long issuing its token took. */
  samples: { flow_ms: number; ok: boolean; steps: FirstResult['steps']; token_ms?: number; error?: string }[];
}

export interface FirstSection {
  sts_delay_ms: number;
  variants: FirstVariant[];
}

const STS_DELAY_MS = 500;

export async function firstSection(
  world: World,
  opts: { pods: number; batch: number; delays: number[]; paths: readonly InterceptPath[]; token?: boolean },
  log: (m: string) => void,
): Promise<FirstSection> {
  const { node } = world;
  await node.configureSts({ delayMs: STS_DELAY_MS });
  const variants: FirstVariant[] = [];
  const seq = { n: 0 };
  try {
    for (const path of opts.paths) {
      await node.startAgent({ intercept: path });
      try {
        // A node in its steady state: the agent's own start-up prefetch (110 pods, 8 at a time, 500 ms each) is over.
        await node.waitForMetric('kiam_credentials_cached_identities', (v) => v >= NODE_PODS, 60_000);
        for (const delay of opts.delays) variants.push(await variant(world, path, delay, opts, seq, log));
      } finally {
        await node.stopAgent();
      }
    }
    if (opts.token) {
      // The token path alone: no kiam rule or program left from the paths above.
      if (node.interception) await node.removeInterception();
      await node.startAgent({ intercept: 'none', extra: await node.tokenArgs() });
      try {
        await node.waitForMetric('kiam_credentials_cached_identities', (v) => v >= NODE_PODS, 60_000);
        for (const delay of opts.delays) variants.push(await variant(world, TOKEN_PATH, delay, opts, seq, log));
      } finally {
        await node.stopAgent();
      }
    }
  } finally {
    await node.configureSts({ delayMs: 0 });
  }
  return { sts_delay_ms: STS_DELAY_MS, variants };
}

async function variant(
  world: World,
  path: BenchPath,
  delay: number,
  opts: { pods: number; batch: number },
  seq: { n: number },
  log: (m: string) => void,
): Promise<FirstVariant> {
  const { node, sb } = world;
  const samples: FirstVariant['samples'] = [];
  const ebpf = !isTokenPath(path) && usesEbpf(path);
  const redirects0 = ebpf ? await node.ebpfRedirects() : 0;
  for (let done = 0; done < opts.pods; done += opts.batch) {
    const n = Math.min(opts.batch, opts.pods - done);
    const pods = await Promise.all(Array.from({ length: n }, () => sb.addPod({ name: `first-${++seq.n}` })));
    // Client processes need ~1 s to start (tsx; several at once on 2 busy cores: allow 5 s), then one pod every
    // 200 ms, so that no client's start-up or flow overlaps another's measured flow.
    const base = Date.now() + 5_000;
    const procs = pods.map((pod, i) => {
      const cfg: FirstConfig = {
        control: node.controlPath,
        pod: { namespace: 'first', name: pod.name, ip: pod.ip, node: NODE_NAME, role: roleName(seq.n * 7 + i) },
        delayMs: delay,
        startAt: base + i * 200,
        ...(isTokenPath(path) ? { token: { audience: TOKEN_AUDIENCE, expirationSeconds: TOKEN_EXPIRATION_S } } : {}),
      };
      return node.spawnInPod(pod, 'bench/first-cred.ts', [JSON.stringify(cfg)]);
    });
    try {
      const results = await Promise.all(procs.map(async (p) => (JSON.parse(await p.waitForLine(/^\{"result"/, 30_000)) as { result: FirstResult }).result));
      for (const r of results) {
        samples.push({ flow_ms: r.flowMs, ok: r.ok, steps: r.steps, ...(r.tokenMs === undefined ? {} : { token_ms: r.tokenMs }), ...(r.error ? { error: r.error } : {}) });
        if (r.lateMs > 50) log(`first: a client started ${r.lateMs} ms late`);
      }
    } finally {
      await Promise.all(pods.map((p) => sb.removePod(p)));
      await node.deletePods(pods.map((p) => ({ namespace: 'first', name: p.name })));
    }
  }
  if (ebpf) {
    // Three connections per flow (token, listing, document): each one must have been a rewritten connect.
    const redirects = (await node.ebpfRedirects()) - redirects0;
    const flows = samples.filter((s) => s.steps.length > 0).length;
    if (redirects < 3 * samples.filter((s) => s.ok).length) throw new Error(`first ${path}: the eBPF program rewrote ${redirects} connects for ${flows} flows`);
  }
  const h = new Histogram();
  for (const s of samples) if (s.ok) h.record(Math.round(s.flow_ms * 1000));
  const v: FirstVariant = {
    path,
    delay_ms: delay,
    pods: samples.length,
    ok: samples.filter((s) => s.ok).length,
    p50_ms: h.percentile(50) / 1000,
    p99_ms: h.percentile(99) / 1000,
    max_ms: h.max / 1000,
    samples,
  };
  log(`first credential (${pathLabel(path)}), request ${delay} ms after the pod appeared: ${v.ok}/${v.pods} ok, p50 ${v.p50_ms.toFixed(1)} ms, p99 ${v.p99_ms.toFixed(1)} ms`);
  return v;
}
