/**
 * Section 3, STS calls: 200 pods with one role appear at once (one create burst in the API), and the AssumeRole
 * calls that reach the fake STS are counted against the identities (role, session name, external ID) they need;
 * then one background refresh cycle.
 *
 * Refresh timing (src/cache/credentials.ts): a retained identity refreshes at issue + max(1 min, min(L/2,
 * L − floor − 5 min)), up to 5 % earlier, where L is the lifetime STS actually granted and the floor is
 * min(30 min, session/2) — or L/2 when L < floor + 5 min. The fake STS caps granted lifetimes at 180 s
 * (maxDurationSeconds, as a role's maximum session would), so L = 3 min, floor = 90 s and the refresh comes
 * 57–60 s after issue: one cycle inside a 75 s window after the burst, the next not before ~114 s. STS answers
 * after 500 ms, so concurrent requests for one identity have a call in flight to share.
 */
import { BASE_ARN } from '../test/e2e/harness.ts';
import type { BenchPod } from './lib/pods.ts';
import { NODE_NAME, sleep } from './node.ts';
import type { World } from './world.ts';

const BURST = 200;
const ROLE = 'burst-role';
const GRANTED_S = 180;
const REFRESH_WINDOW_MS = 75_000;

export interface StsVariant {
  session_name: string;
  pods: number;
  identities: number;
  burst_calls: number;
  /** Burst calls per identity (1 = the target). */
  burst_calls_per_identity: number;
  refresh_calls: number | null;
  refresh_identities: number | null;
  refresh_max_calls_per_identity: number | null;
  burst_duration_ms: number;
}

export async function stsSection(world: World, opts: { refresh: boolean }, log: (m: string) => void): Promise<{ granted_lifetime_s: number; sts_delay_ms: number; variants: StsVariant[] }> {
  const { node } = world;
  const roleArn = `${BASE_ARN}${ROLE}`;
  const variants: StsVariant[] = [];
  const pods: BenchPod[] = Array.from({ length: BURST }, (_, i) => ({ namespace: 'burst', name: `burst-${i}`, ip: `10.81.${Math.floor(i / 250)}.${(i % 250) + 1}`, node: NODE_NAME, role: ROLE }));
  try {
    for (const v of [
      // Identities of the node's 110 pods before the burst: one per pod, or one per role (50) when shared.
      { session_name: '{namespace}.{pod} (default)', extra: [] as string[], before: world.nodePods.length },
      { session_name: 'kiam-{namespace}', extra: ['--session-name', 'kiam-{namespace}'], before: new Set(world.nodePods.map((p) => p.role)).size },
    ]) {
      await node.configureSts({ delayMs: 500, maxDurationSeconds: GRANTED_S });
      await node.startAgent({ extra: v.extra });
      try {
        await node.waitForMetric('kiam_pods_indexed', (n) => n >= world.nodePods.length);
        // The start-up prefetch (8 at a time, 500 ms each) is over before the burst comes.
        await node.waitForMetric('kiam_credentials_cached_identities', (n) => n >= v.before, 60_000);
        const t0 = Date.now();
        await node.createPods(pods);
        // The burst is over once no new call for the role came for 3 s.
        let last = -1;
        let stableSince = Date.now();
        let burst: Awaited<ReturnType<typeof node.stsCalls>> = [];
        while (Date.now() - stableSince < 3_000 && Date.now() - t0 < 40_000) {
          await sleep(500);
          burst = (await node.stsCalls()).filter((c) => c.roleArn === roleArn && c.time >= t0);
          if (burst.length !== last) {
            last = burst.length;
            stableSince = Date.now();
          }
        }
        const idOf = (c: { sessionName: string; externalId?: string }) => `${c.sessionName}|${c.externalId ?? ''}`;
        const identities = new Set(burst.map(idOf)).size;
        const firstCall = Math.min(...burst.map((c) => c.time));
        const lastCall = Math.max(...burst.map((c) => c.time));
        const variant: StsVariant = {
          session_name: v.session_name,
          pods: BURST,
          identities,
          burst_calls: burst.length,
          burst_calls_per_identity: burst.length / Math.max(1, identities),
          refresh_calls: null,
          refresh_identities: null,
          refresh_max_calls_per_identity: null,
          burst_duration_ms: lastCall - firstCall,
        };
        log(`sts ${v.session_name}: ${BURST} pods → ${burst.length} AssumeRole calls for ${identities} identities`);
        if (opts.refresh) {
          const windowEnd = lastCall + REFRESH_WINDOW_MS;
          log(`sts ${v.session_name}: waiting ${((windowEnd - Date.now()) / 1000).toFixed(0)} s for one refresh cycle`);
          await sleep(Math.max(0, windowEnd - Date.now()));
          const refresh = (await node.stsCalls()).filter((c) => c.roleArn === roleArn && c.time > lastCall + 1_000 && c.time <= windowEnd);
          const per = new Map<string, number>();
          for (const c of refresh) per.set(idOf(c), (per.get(idOf(c)) ?? 0) + 1);
          variant.refresh_calls = refresh.length;
          variant.refresh_identities = per.size;
          variant.refresh_max_calls_per_identity = Math.max(0, ...per.values());
          log(`sts ${v.session_name}: refresh cycle → ${refresh.length} calls for ${per.size} identities`);
        }
        variants.push(variant);
      } finally {
        await node.stopAgent();
        await node.deletePods(pods);
      }
    }
  } finally {
    await node.configureSts({ delayMs: 0, maxDurationSeconds: null });
  }
  return { granted_lifetime_s: GRANTED_S, sts_delay_ms: 500, variants };
}
