/**
 * Section 5, API load: a cluster of 20,000 pods (200 namespaces, 200 nodes) of which 110 are on this node. What
 * the agent receives (its node-scoped pod list + watch, and its namespace list + watch) against what a
 * cluster-wide informer receives (all pods, all namespaces), counted the same way by the fake API server per
 * client; then churn: 1,000 pod updates elsewhere and 10 on this node. Bookmarks (every 10 s per watch) count
 * as objects, for both.
 */
import { memory } from './lib/procfs.ts';
import type { BenchPod } from './lib/pods.ts';
import { sleep } from './node.ts';
import type { ClientCounts } from './cluster.ts';
import { NODE_PODS, type World } from './world.ts';

export interface ApiSide {
  pods: { objects: number; bytes: number };
  namespaces: { objects: number; bytes: number };
}

export interface ApiSection {
  cluster_pods: number;
  node_pods: number;
  namespaces: number;
  initial: { agent: ApiSide; cluster_wide: ApiSide };
  churn: { updates_elsewhere: number; updates_on_node: number; agent: ApiSide; cluster_wide: ApiSide };
  agent_requests: number;
  agent_rss_mb: number;
}

const CLUSTER = 20_000;
const NAMESPACES = 200;

export async function apiSection(world: World, opts: { clusterPods?: number }, log: (m: string) => void): Promise<ApiSection> {
  const { node } = world;
  const total = opts.clusterPods ?? CLUSTER;
  const elsewhere: BenchPod[] = [];
  const nsNames = Array.from({ length: NAMESPACES }, (_, i) => `team-${String(i).padStart(3, '0')}`);
  for (let i = 0; elsewhere.length < total - NODE_PODS; i++) {
    elsewhere.push({
      namespace: nsNames[i % NAMESPACES]!,
      name: `svc-${i}-x${(i % 97).toString(36)}`,
      ip: `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`,
      node: `node-${2 + (i % 199)}`,
      ...(i % 3 === 0 ? { role: `role-${String(i % 50).padStart(2, '0')}` } : {}),
    });
  }
  log(`api: creating ${elsewhere.length} pods on 199 other nodes`);
  await node.createNamespaces(nsNames);
  await node.createPods(elsewhere);

  const agentClient = 'agent-api';
  const agent = await node.startAgent({ client: agentClient });
  try {
    await node.waitForMetric('kiam_pods_indexed', (v) => v >= NODE_PODS);
    await node.control('POST', '/cluster-watch', { name: 'cluster-wide' });
    const side = (s: Awaited<ReturnType<typeof node.stats>>, client: string): ApiSide => {
      const pick = (c: ClientCounts | undefined) => ({ objects: c?.objects ?? 0, bytes: c?.bytes ?? 0 });
      return { pods: pick(s[client]?.pods), namespaces: pick(s[client]?.namespaces) };
    };
    const s0 = await node.stats();
    const initial = { agent: side(s0, agentClient), cluster_wide: side(s0, 'cluster-wide') };

    const elsewhereUpdates = 1_000;
    const onNode = 10;
    const step = Math.floor(elsewhere.length / elsewhereUpdates);
    await node.patchPods([
      ...Array.from({ length: elsewhereUpdates }, (_, k) => elsewhere[k * step]!).map((p) => ({ namespace: p.namespace, name: p.name, patch: { metadata: { labels: { 'bench-churn': '1' } } } })),
      ...world.nodePods.slice(-onNode).map((p) => ({ namespace: p.namespace, name: p.name, patch: { metadata: { labels: { 'bench-churn': '1' } } } })),
    ]);
    await sleep(2_000);
    const s1 = await node.stats();
    const diff = (a: ApiSide, b: ApiSide): ApiSide => ({
      pods: { objects: b.pods.objects - a.pods.objects, bytes: b.pods.bytes - a.pods.bytes },
      namespaces: { objects: b.namespaces.objects - a.namespaces.objects, bytes: b.namespaces.bytes - a.namespaces.bytes },
    });
    const out: ApiSection = {
      cluster_pods: elsewhere.length + NODE_PODS,
      node_pods: NODE_PODS,
      namespaces: NAMESPACES + 6,
      initial,
      churn: {
        updates_elsewhere: elsewhereUpdates,
        updates_on_node: onNode,
        agent: diff(initial.agent, side(s1, agentClient)),
        cluster_wide: diff(initial.cluster_wide, side(s1, 'cluster-wide')),
      },
      agent_requests: Object.values(s1[agentClient] ?? {}).reduce((a, c) => a + c.requests, 0),
      agent_rss_mb: memory(agent.pid).rss / (1024 * 1024),
    };
    log(
      `api: initial pods ${initial.agent.pods.objects} objects / ${(initial.agent.pods.bytes / 1024).toFixed(0)} KiB (agent) vs ${initial.cluster_wide.pods.objects} / ${(initial.cluster_wide.pods.bytes / 1024).toFixed(0)} KiB (cluster-wide); ` +
        `churn ${out.churn.agent.pods.objects} vs ${out.churn.cluster_wide.pods.objects} objects`,
    );
    return out;
  } finally {
    await node.stopAgent();
  }
}
