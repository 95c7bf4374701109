/**
 * The scene every section starts from: a sandbox (fixed prefix `kiambench`, swept first), the bench node, and
 * 110 pods of this node in namespace `bench` with 50 roles (role-00 … role-49, round robin). 64 of them are real
 * sources: two pod namespaces (gen-a, gen-b) with 32 addresses each, one pod per address; the other 46 exist only
 * in the API. Plus the load generator runner shared by the warm and footprint sections.
 */
import { Sandbox, type Pod } from '../test/e2e/sandbox.ts';
import { Histogram, type HistogramJson } from './lib/histogram.ts';
import type { GenConfig, GenResult, SlotKind } from './loadgen.ts';
import { BenchNode, NODE_NAME } from './node.ts';
import type { BenchPod } from './lib/pods.ts';

export const PREFIX = 'kiambench';
export const NAMESPACE = 'bench';
export const NODE_PODS = 110;
export const ROLES = 50;
export const IPS_PER_GENERATOR = 32;

export interface Source {
  ip: string;
  role: string;
  /** The pod's name in namespace `bench` (what a token for it is bound to). */
  name: string;
}

export interface Generator {
  pod: Pod;
  sources: Source[];
}

export interface World {
  sb: Sandbox;
  node: BenchNode;
  gens: [Generator, Generator];
  /** The 110 pods of this node, as created in the API. */
  nodePods: BenchPod[];
}

export const roleName = (i: number) => `role-${String(i % ROLES).padStart(2, '0')}`;

/**
 * `cgroup`: the sandbox gets a private cgroup2 mount with a child cgroup holding every process it starts (the
 * generators, the pods, the agent) and a private bpffs: where the eBPF path attaches its programs.
 */
export async function createWorld(log: (msg: string) => void, opts: { cgroup?: boolean } = {}): Promise<World> {
  const sb = await Sandbox.create({ prefix: PREFIX, sweep: true, cgroup: opts.cgroup ?? false });
  try {
    log('starting the fakes (metadata, STS, API server)');
    const node = await BenchNode.start(sb);
    const [podA, podB] = await Promise.all([sb.addPod({ name: 'gen-a', ip: '10.79.1.1' }), sb.addPod({ name: 'gen-b', ip: '10.79.2.1' })]);
    const nodePods: BenchPod[] = [];
    const gens = [podA, podB].map((pod, g) => {
      const ips = Array.from({ length: IPS_PER_GENERATOR }, (_, i) => `10.79.${g + 1}.${i + 1}`);
      const sources = ips.map((ip) => {
        const i = nodePods.length;
        nodePods.push({ namespace: NAMESPACE, name: `app-${i}`, ip, node: NODE_NAME, role: roleName(i) });
        return { ip, role: roleName(i), name: `app-${i}` };
      });
      return { pod, sources, extra: ips.slice(1) };
    });
    await Promise.all(gens.map((g) => node.addSourceIps(g.pod, g.extra)));
    // TCP timestamps without a random offset per destination (ip-sysctl.rst, tcp_timestamps = 2). The generators
    // reuse source ports within the server's TIME_WAIT period, and the server sees the same 4-tuple whether the
    // pod dialled 169.254.169.254 (DNAT) or the host IP (eBPF rewrite): with offsets that differ per destination,
    // a SYN whose port last served the other path fails the TIME_WAIT PAWS check (RFC 7323, 5.) and waits for a
    // SYN retransmission, which would be charged to whichever path runs second.
    await Promise.all(gens.map((g) => sb.execOrThrow(g.pod.ns, ['sysctl', '-q', '-w', 'net.ipv4.tcp_timestamps=2'])));
    for (let i = nodePods.length, k = 1; i < NODE_PODS; i++, k++) {
      nodePods.push({ namespace: NAMESPACE, name: `app-${i}`, ip: `10.80.0.${k}`, node: NODE_NAME, role: roleName(i) });
    }
    await node.createNamespaces([NAMESPACE, 'first', 'burst', 'churn']);
    await node.createPods(nodePods);
    return { sb, node, gens: [{ pod: podA, sources: gens[0]!.sources }, { pod: podB, sources: gens[1]!.sources }], nodePods };
  } catch (err) {
    await sb.destroy().catch(() => {});
    throw err;
  }
}

export interface LoadResult {
  requests: number;
  ok: number;
  errors: number;
  errorDetail: { status: Record<string, number>; net: Record<string, number>; protocol: number };
  rps: number;
  p50_ms: number;
  p99_ms: number;
  p999_ms: number;
  mean_ms: number;
  max_ms: number;
  byKind: Partial<Record<SlotKind, number>>;
  windowS: number;
  /** Per generator process: slots, requests, CPU % of one core inside the window, lateness. */
  generators: { slots: number; requests: number; cpu_pct: number; late_ms: number; connections: number }[];
  histogram: HistogramJson;
}

/**
 * Where the generators send their requests: by default the metadata address (the interception takes it to a
 * server); for the token path, a container-credentials listener, each source with its pod's token.
 */
export interface LoadTarget {
  host: string;
  port: number;
  protocol: NonNullable<GenConfig['protocol']>;
  /** Source pod name → its token (container-credentials). */
  tokens?: ReadonlyMap<string, string>;
}

const IMDS_TARGET: LoadTarget = { host: '169.254.169.254', port: 80, protocol: 'imds' };

/** The sources a generator's config carries for a target: {ip, role}, plus the pod's token on the token path. */
export function targetSources(sources: readonly Source[], target: LoadTarget): GenConfig['sources'] {
  return sources.map(({ ip, role, name }) => {
    const token = target.tokens?.get(name);
    return token === undefined ? { ip, role } : { ip, role, token };
  });
}

/**
 * Runs the two generators at once, each with its slots (a slot = one connection loop bound to one source IP),
 * warm-up then a measured window; merges their histograms. `during` runs in the bench process over the window
 * (server CPU sampling).
 */
export async function runGenerators(
  world: World,
  slots: [GenConfig['slots'], GenConfig['slots']],
  opts: { warmupMs: number; durationMs: number; startupMs?: number; timeoutMs?: number },
  during?: { atStart?: () => void; atEnd?: () => void },
  target: LoadTarget = IMDS_TARGET,
): Promise<LoadResult> {
  const measureFrom = Date.now() + (opts.startupMs ?? 2_500) + opts.warmupMs;
  const measureTo = measureFrom + opts.durationMs;
  const procs = world.gens.flatMap((g, i) => {
    const s = slots[i as 0 | 1];
    if (s.length === 0) return [];
    const cfg: GenConfig = {
      host: target.host,
      port: target.port,
      ...(target.protocol === 'imds' ? {} : { protocol: target.protocol }),
      sources: targetSources(g.sources, target),
      slots: s,
      measureFrom,
      measureTo,
    };
    return [{ slots: s.length, proc: world.node.spawnInPod(g.pod, 'bench/loadgen.ts', [JSON.stringify(cfg)]) }];
  });
  const timers: NodeJS.Timeout[] = [];
  if (during?.atStart) timers.push(setTimeout(during.atStart, measureFrom - Date.now()));
  if (during?.atEnd) timers.push(setTimeout(during.atEnd, measureTo - Date.now()));
  try {
    const results = await Promise.all(
      procs.map(async ({ slots: n, proc }) => {
        const line = await proc.waitForLine(/^\{"result"/, measureTo - Date.now() + (opts.timeoutMs ?? 30_000));
        await proc.exited;
        return { n, r: (JSON.parse(line) as { result: GenResult }).result };
      }),
    );
    const hist = new Histogram();
    const errorDetail = { status: {} as Record<string, number>, net: {} as Record<string, number>, protocol: 0 };
    const byKind: Partial<Record<SlotKind, number>> = {};
    let requests = 0;
    let ok = 0;
    let windowMs = 0;
    for (const { r } of results) {
      hist.merge(Histogram.fromJSON(r.latencyUs));
      requests += r.requests;
      ok += r.ok;
      windowMs = Math.max(windowMs, r.windowMs);
      for (const [k, v] of Object.entries(r.errors.status)) errorDetail.status[k] = (errorDetail.status[k] ?? 0) + v;
      for (const [k, v] of Object.entries(r.errors.net)) errorDetail.net[k] = (errorDetail.net[k] ?? 0) + v;
      errorDetail.protocol += r.errors.protocol;
      for (const [k, v] of Object.entries(r.byKind)) byKind[k as SlotKind] = (byKind[k as SlotKind] ?? 0) + (v ?? 0);
    }
    const netErrors = Object.values(errorDetail.net).reduce((a, b) => a + b, 0);
    const ms = (us: number) => us / 1000;
    return {
      requests,
      ok,
      errors: requests - ok + netErrors + errorDetail.protocol,
      errorDetail,
      rps: requests / (windowMs / 1000),
      p50_ms: ms(hist.percentile(50)),
      p99_ms: ms(hist.percentile(99)),
      p999_ms: ms(hist.percentile(99.9)),
      mean_ms: ms(hist.mean),
      max_ms: ms(hist.max),
      byKind,
      windowS: windowMs / 1000,
      generators: results.map(({ n, r }) => ({
        slots: n,
        requests: r.requests,
        cpu_pct: ((r.cpuUs.user + r.cpuUs.system) / 1000 / r.windowMs) * 100,
        late_ms: r.lateMs,
        connections: r.connections,
      })),
      histogram: hist.toJSON(),
    };
  } finally {
    for (const t of timers) clearTimeout(t);
    await Promise.all(procs.map(({ proc }) => proc.stop(2_000)));
  }
}

/** The sources each generator's slots use (by index into its sources), e.g. to give only those a token. */
export function usedSources(world: Pick<World, 'gens'>, slots: [GenConfig['slots'], GenConfig['slots']]): Source[] {
  return world.gens.flatMap((g, i) => [...new Set(slots[i as 0 | 1].map((s) => s.source))].sort((a, b) => a - b).map((k) => g.sources[k]!));
}

/** Splits n connection loops over the two generators (1 → one process), each on its own source IP. */
export function splitSlots(n: number, kind: SlotKind): [GenConfig['slots'], GenConfig['slots']] {
  const a = Math.ceil(n / 2);
  const mk = (count: number) => Array.from({ length: count }, (_, i) => ({ kind, source: i % IPS_PER_GENERATOR }));
  return [mk(a), mk(n - a)];
}
