/**
 * Section 1, warm credential requests: the agent against a bare node:http server serving the agent's own
 * document bytes, both on the host IP behind the same interception (`kiam intercept install --port …` points the
 * DNAT rule or the eBPF program's config at one or the other), keep-alive and new-connection, 1 / 16 / 64
 * connections, for each interception path (bench/lib/intercept.ts), runs interleaved (per variant: each path, the
 * agent then the baseline) so that a noisy neighbour hurts all alike; with `rounds`, the whole sequence again, so
 * that the report can take each variant's median. Server CPU per request from /proc. On an
 * eBPF path, the program's own counters must show at least one rewritten connect per connection opened.
 *
 * With `token` (issue 10), the token path runs beside them as one more path of each variant, with the same
 * connection counts: the generators GET /v1/credentials from the agent's container-credentials listener
 * (169.254.170.23:80) with each source pod's service-account token, every kiam interception removed first. Each
 * token-path run of the agent gets fresh tokens (one per source pod it uses), and the agent reviews each of them
 * once before the run starts (bench/loadgen.ts --prime), so that the run measures the cached path; the API server's
 * TokenReview count over the run (warm-up included) must stay 0. Its baseline: a bare node:http server serving the
 * agent's own container-credentials bytes on 169.254.170.23 (another port), dialled directly as well. The agent then
 * runs with `--container-credentials` for the whole section; its listener sits idle during the other paths' runs.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { headerPairs } from './lib/http-response.ts';
import { usesEbpf, type InterceptPath } from './lib/intercept.ts';
import { cpuSeconds } from './lib/procfs.ts';
import { authorization, CONTAINER_CREDENTIALS, isTokenPath, pathLabel, TOKEN_PATH, type BenchPath } from './lib/token-path.ts';
import type { FetchConfig, PrimeConfig } from './loadgen.ts';
import { AGENT_PORT, BASELINE_PORT, pin } from './node.ts';
import { runtime } from './runtime.ts';
import type { TrackedProcess } from '../test/e2e/sandbox.ts';
import { NAMESPACE, NODE_PODS, runGenerators, splitSlots, usedSources, type LoadResult, type LoadTarget, type Source, type World } from './world.ts';

/** The token path's baseline server: on the listener's address, beside the agent's port 80. */
export const TOKEN_BASELINE_PORT = 8183;

export interface WarmRun extends Omit<LoadResult, 'histogram'> {
  /**
   * The interception the requests went through, or `token`: the container-credentials listener by token (issue
   * 10); absent in runs recorded before there was a choice: the DNAT.
   */
  path?: BenchPath;
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
  /** Token path: TokenReviews the API server answered during the run, warm-up included (the cache's misses). */
  token_reviews?: number;
}

export interface WarmSection {
  document_bytes: number;
  document_headers: [string, string][];
  /** The token path's container-credentials document (when it ran). */
  token_document_bytes?: number;
  token_document_headers?: [string, string][];
  runs: WarmRun[];
}

/** The token path's tokens and requests (issue 10): one token per source pod, fresh for each agent run. */
class TokenRuns {
  /** Source pod name → the token the current variant sends. */
  private tokens = new Map<string, string>();

  constructor(private readonly world: World) {}

  /** One request to the container-credentials listener (or its baseline's port) from `ip` with `token`. */
  request(ip: string, token: string, port: number = CONTAINER_CREDENTIALS.port): FetchConfig {
    return { host: CONTAINER_CREDENTIALS.host, port, ip, path: CONTAINER_CREDENTIALS.path, headers: authorization(token), hostHeader: CONTAINER_CREDENTIALS.host };
  }

  tokenOf(name: string): string {
    const t = this.tokens.get(name);
    if (t === undefined) throw new Error(`warm token: no token for ${name}`);
    return t;
  }

  /** Where the generators send: the listener (or the baseline) with the current tokens. */
  target(port: number): LoadTarget {
    return { host: CONTAINER_CREDENTIALS.host, port, protocol: 'container-credentials', tokens: this.tokens };
  }

  /**
   * Fresh tokens for these source pods, each reviewed once by the agent before anything is measured (from the
   * generator namespace that holds the pod's IP; a 503 while the agent's TokenReview rate bound is spent is asked
   * again), so that a run starts with every token in the cache, and none of its entries expires during the run.
   */
  async fresh(sources: readonly Source[]): Promise<void> {
    const { node, gens } = this.world;
    const issued = await node.issueTokens(sources.map((x) => ({ namespace: NAMESPACE, name: x.name })));
    const next = new Map(sources.map((x, i) => [x.name, issued[i]!]));
    await Promise.all(
      gens.map(async (g) => {
        const mine = sources.filter((x) => g.sources.some((y) => y.name === x.name));
        if (mine.length === 0) return;
        const cfg: PrimeConfig = { requests: mine.map((x) => this.request(x.ip, next.get(x.name)!)), retryMs: 500, deadlineMs: 30_000 };
        const p = node.spawnInPod(g.pod, 'bench/loadgen.ts', ['--prime', JSON.stringify(cfg)]);
        const { primed } = JSON.parse(await p.waitForLine(/^\{"primed"/, 45_000)) as { primed: number[] };
        const bad = primed.flatMap((status, i) => (status === 200 ? [] : [`${status} for ${mine[i]!.name}`]));
        if (bad.length) throw new Error(`warm token: the agent answered ${bad.join(', ')} to fresh tokens`);
      }),
    );
    this.tokens = next;
  }
}

export async function warmSection(
  world: World,
  opts: { warmupMs: number; durationMs: number; connections: number[]; paths: readonly InterceptPath[]; rounds?: number; token?: boolean },
  log: (m: string) => void,
): Promise<WarmSection> {
  const { node, sb, gens } = world;
  const [first] = opts.paths;
  if (!first) throw new Error('warm: no interception path');
  // No interception of the agent's own: `kiam intercept install` installs it and switches it between the servers.
  const agent = await node.startAgent({ intercept: 'none', ...(opts.token ? { extra: await node.tokenArgs() } : {}) });
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
  const baseline = sb.spawn(sb.nodeNs, pin(process.env.KIAM_BENCH_AGENT_CPUS, [runtime.node, '--import', 'tsx', 'bench/baseline-server.ts', '--host', sb.hostIp, '--port', String(BASELINE_PORT), '--document', docFile]), { cwd: process.cwd() });
  await baseline.waitForLine(/^\{"url"/, 20_000);

  const token = opts.token ? new TokenRuns(world) : undefined;
  let tokenBaseline: TrackedProcess | undefined;
  let tokenDoc: { status: number; head: string; body: string } | undefined;
  const runs: WarmRun[] = [];
  try {
    if (token) {
      // The token path's document for the same source pod, by its token; its baseline serves those bytes on the
      // listener's address.
      await token.fresh([src]);
      const fetchDoc = node.spawnInPod(gens[0].pod, 'bench/loadgen.ts', ['--fetch', JSON.stringify(token.request(src.ip, token.tokenOf(src.name)))]);
      tokenDoc = JSON.parse(await fetchDoc.waitForLine(/^\{"status"/, 20_000)) as { status: number; head: string; body: string };
      if (tokenDoc.status !== 200) throw new Error(`warm token: the agent answered ${tokenDoc.status} to the token of ${src.name}`);
      const tokenDocFile = join(sb.tmpDir, 'token-document.json');
      writeFileSync(tokenDocFile, JSON.stringify({ status: 200, headers: headerPairs(tokenDoc.head), body: tokenDoc.body }));
      tokenBaseline = sb.spawn(
        sb.nodeNs,
        pin(process.env.KIAM_BENCH_AGENT_CPUS, [runtime.node, '--import', 'tsx', 'bench/baseline-server.ts', '--host', CONTAINER_CREDENTIALS.host, '--port', String(TOKEN_BASELINE_PORT), '--document', tokenDocFile]),
        { cwd: process.cwd() },
      );
      await tokenBaseline.waitForLine(/^\{"url"/, 20_000);
    }

    const servers = [
      { server: 'agent' as const, port: AGENT_PORT, pid: agent.pid },
      { server: 'baseline' as const, port: BASELINE_PORT, pid: baseline.pid },
    ];
    const tokenServers = tokenBaseline
      ? [
          { server: 'agent' as const, port: CONTAINER_CREDENTIALS.port, pid: agent.pid },
          { server: 'baseline' as const, port: TOKEN_BASELINE_PORT, pid: tokenBaseline.pid },
        ]
      : [];
    const rounds = opts.rounds ?? 1;
    // Per variant: each interception path (agent, baseline), then the token path (agent, baseline).
    const variants = (['keep-alive', 'new-connection'] as const).flatMap((mode) =>
      opts.connections.flatMap((connections) => [
        ...opts.paths.flatMap((path) => servers.map((s) => ({ mode, connections, path: path as BenchPath, s }))),
        ...tokenServers.map((s) => ({ mode, connections, path: TOKEN_PATH as BenchPath, s })),
      ]),
    );
    for (let round = 1; round <= rounds; round++) {
      for (const { mode, connections, path, s } of variants) {
        const slots = splitSlots(connections, mode === 'keep-alive' ? 'ka' : 'new');
        let target: LoadTarget | undefined;
        if (isTokenPath(path)) {
          // Nothing of kiam's interception under the token path (no kiam rule: conntrack has nothing to track).
          if (node.interception) await node.removeInterception();
          // The agent's run gets fresh tokens, reviewed before it starts; its baseline's run sends the same ones.
          if (s.server === 'agent') await token!.fresh(usedSources(world, slots));
          target = token!.target(s.port);
        } else await node.redirect(path, s.port);
        const redirects0 = !isTokenPath(path) && usesEbpf(path) ? await node.ebpfRedirects() : 0;
        const flushed = await node.flushConntrack();
        const countReviews = isTokenPath(path) && s.server === 'agent';
        const reviews0 = countReviews ? await node.tokenReviews() : 0;
        let cpu0 = 0;
        let cpu1 = 0;
        const r = await runGenerators(
          world,
          slots,
          opts,
          {
            atStart: () => (cpu0 = cpuSeconds(s.pid).self),
            atEnd: () => (cpu1 = cpuSeconds(s.pid).self),
          },
          target,
        );
        const { histogram: _h, ...rest } = r;
        const run: WarmRun = { path, ...(rounds > 1 ? { round } : {}), server: s.server, mode, connections, ...rest, server_cpu_us_per_req: ((cpu1 - cpu0) * 1e6) / Math.max(1, r.requests) };
        if (flushed) run.conntrack_entries = await node.conntrackCount();
        if (countReviews) run.token_reviews = (await node.tokenReviews()) - reviews0;
        if (!isTokenPath(path) && usesEbpf(path)) {
          run.ebpf_redirects = (await node.ebpfRedirects()) - redirects0;
          const opened = r.generators.reduce((n, g) => n + g.connections, 0);
          if (run.ebpf_redirects < opened) throw new Error(`warm ${path}: the eBPF program rewrote ${run.ebpf_redirects} connects, the generators opened ${opened} connections`);
        }
        runs.push(run);
        const late = r.generators.filter((g) => g.late_ms > 0);
        if (late.length) log(`warm: a generator started ${Math.max(...late.map((g) => g.late_ms))} ms after the window opened (no warm-up for it)`);
        log(
          `warm ${rounds > 1 ? `round ${round}/${rounds} ` : ''}${pathLabel(path).padEnd(5)} ${s.server.padEnd(8)} ${mode.padEnd(14)} ${String(connections).padStart(2)} conn: ${r.rps.toFixed(0)} req/s, p50 ${r.p50_ms.toFixed(3)} p99 ${r.p99_ms.toFixed(3)} p99.9 ${r.p999_ms.toFixed(3)} ms, ` +
            `${run.server_cpu_us_per_req.toFixed(1)} µs CPU/req, errors ${r.errors},${run.conntrack_entries === undefined ? '' : ` conntrack ${run.conntrack_entries},`}${run.token_reviews === undefined ? '' : ` TokenReviews ${run.token_reviews},`} generators ${r.generators.map((g) => `${g.cpu_pct.toFixed(0)}%`).join('+')}`,
        );
      }
    }
  } finally {
    await baseline.stop(3_000);
    await tokenBaseline?.stop(3_000);
    await node.stopAgent();
    await node.removeInterception();
  }
  return {
    document_bytes: Buffer.from(captured.body, 'base64').length,
    document_headers: headers,
    ...(tokenDoc ? { token_document_bytes: Buffer.from(tokenDoc.body, 'base64').length, token_document_headers: headerPairs(tokenDoc.head) } : {}),
    runs,
  };
}
