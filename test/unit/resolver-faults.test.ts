/**
 * The resolver on a bad day, with the real kube adapter (client-node's ListWatch) against the fake API server over
 * HTTPS, time on the fake clock: a 410 storm while a pod's IP passes to a new pod, a silent watch, a watch refused
 * with 403 while GETs work, and a full API outage. Plus how the freshness shows in /debug/state and doctor.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { podIndexRow } from '../../src/doctor/checks.ts';
import { debugPodIndex, type DebugState } from '../../src/doctor/state.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { createKubeSources, loadKubeConfig, SILENT_WATCH_MS } from '../../src/resolver/kube.ts';
import { FRESH_FOR_MS, Resolver } from '../../src/resolver/lookup.ts';
import { Policy } from '../../src/resolver/policy.ts';
import type { Lookup } from '../../src/resolver/types.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';

const BASE = 'arn:aws:iam::123456789012:role/';

function podBody(name: string, ip: string, role: string) {
  return {
    metadata: { name, namespace: 'apps', annotations: { 'iam.amazonaws.com/role': role } },
    spec: { nodeName: 'node-a', serviceAccountName: 'sa', containers: [{ name: 'c', image: 'busybox' }] },
    status: { phase: 'Running', podIP: ip },
  };
}

const roleOf = (l: Lookup | undefined) => (l?.kind === 'role' ? l.identity.roleName : l?.kind);

/** Wait for a condition that real I/O makes true (bounded; polls, as the resolver's state has no event of its own). */
async function until(pred: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('resolver faults: the real adapter against the fake API server', () => {
  /** Advance the fake clock in steps, letting real I/O run between them, until pred holds. */
  async function advanceUntil(pred: () => boolean, what: string, stepMs = 1000, maxMs = 120_000): Promise<void> {
    for (let t = 0; !pred(); t += stepMs) {
      if (t > maxMs) throw new Error(`not ${what} after ${maxMs} ms of fake time`);
      await clock.advance(stepMs);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  let kube: FakeKubeApiServer;
  let dir: string;
  let clock: FakeClock;
  let metrics: Metrics;
  let logs: Array<Record<string, unknown>>;
  let resolver: Resolver;
  let n = 0;

  before(async () => {
    kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0 });
    dir = await mkdtemp(join(tmpdir(), 'kiam-faults-'));
    await kube.writeKubeconfig(join(dir, 'kubeconfig'));
    kube.createNamespace('apps', { 'iam.amazonaws.com/permitted': '.*' });
  });

  after(async () => {
    await kube.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A pod already running on ip when the agent starts, then the agent, synced. */
  async function start(first: { name: string; ip: string; role: string }): Promise<void> {
    kube.createPod(podBody(first.name, first.ip, first.role));
    clock = new FakeClock();
    metrics = createMetrics();
    logs = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    const sources = createKubeSources({ kubeConfig: loadKubeConfig(join(dir, 'kubeconfig')), nodeName: 'node-a', metrics, logger, clock, backoff: { jitter: 0 } });
    resolver = new Resolver({
      ...sources,
      policy: new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-a' }),
      clock,
      metrics,
      logger,
      // Real I/O under a fake clock: the GETs get real time.
      confirmTimeoutMs: 2000,
    });
    resolver.start();
    await resolver.whenReady();
    await kube.waitForWatches(2);
    assert.equal(roleOf(await resolver.lookup(first.ip)), first.role);
    assert.equal(resolver.freshness().fresh, true);
  }

  beforeEach(() => {
    n++;
  });

  afterEach(async () => {
    kube.setWatchFault(undefined);
    kube.setOutage(false);
    await resolver.stop();
    await kube.waitForWatches(0);
    for (const p of kube.listPods()) kube.deletePod(p.metadata.namespace, p.metadata.name);
  });

  it('410 storm: the next pod on a deleted pod\'s IP never gets its role, and is served at once, during the storm and after', async () => {
    const ip = `10.20.${n}.1`;
    await start({ name: 'old', ip, role: 'old-role' });
    kube.setWatchFault('gone');
    kube.closeWatches();
    await until(() => !resolver.freshness().fresh, 'the index known not fresh');
    kube.deletePod('apps', 'old');
    kube.createPod(podBody('new', ip, 'new-role'));
    const seen: Array<string | undefined> = [];
    // 20 s of storm, five requests a second.
    for (let i = 0; i < 100; i++) {
      seen.push(roleOf(await resolver.lookup(ip)));
      await clock.advance(200);
    }
    assert.deepEqual([...new Set(seen)], ['new-role'], 'every answer is the new pod\'s');
    assert.ok((await metrics.confirmations.get()).values.some((v) => v.labels.result === 'differs' && v.value > 0));
    kube.setWatchFault(undefined);
    const answeringAgain = clock.now();
    // Within 2 s of the API answering again, and until the index is back in sync, the new pod is served.
    for (let i = 0; i < 10; i++) {
      assert.equal(roleOf(await resolver.lookup(ip)), 'new-role');
      await clock.advance(200);
    }
    assert.ok(clock.now() - answeringAgain <= 2000);
    // The relist backoff of the storm runs out; the index is in sync again and holds the new pod only.
    await advanceUntil(() => resolver.freshness().fresh, 'fresh after the storm');
    assert.equal(roleOf(resolver.peek(ip)), 'new-role');
    assert.deepEqual([...resolver.currentIdentities().values()].map(roleOf), ['new-role']);
  });

  it('a silent watch (open, nothing delivered): after FRESH_FOR_MS every request is confirmed live, and the watch is restarted', async () => {
    const ip = `10.20.${n}.1`;
    await start({ name: 'old', ip, role: 'old-role' });
    assert.equal(FRESH_FOR_MS, SILENT_WATCH_MS);
    kube.setWatchFault('silent');
    kube.deletePod('apps', 'old');
    kube.createPod(podBody('new', ip, 'new-role'));
    const podWatches = () => kube.requests.filter((r) => r.path === '/api/v1/pods' && r.watch).length;
    const before = podWatches();
    // The index is trusted for FRESH_FOR_MS after its last list, event or bookmark: the bound of a silent watch.
    await clock.advance(FRESH_FOR_MS + 1);
    assert.equal(resolver.freshness().fresh, false);
    for (let i = 0; i < 10; i++) {
      assert.equal(roleOf(await resolver.lookup(ip)), 'new-role');
      await clock.advance(500);
    }
    await until(() => podWatches() > before, 'the silent watch restarted');
    assert.match(String(resolver.freshness().reason), /silent/);
    // The restarted watch is stuck too: still confirmed live, still not fresh.
    assert.equal(resolver.freshness().fresh, false);
    kube.setWatchFault(undefined);
    await advanceUntil(() => resolver.freshness().fresh, 'in sync: the next watch replays what was missed');
    assert.equal(roleOf(resolver.peek(ip)), 'new-role');
  });

  it('a watch refused with 403 while GETs work: each request is confirmed live; the new pod gets its role', async () => {
    const ip = `10.20.${n}.1`;
    await start({ name: 'old', ip, role: 'old-role' });
    kube.setWatchFault({ status: 403 });
    kube.closeWatches();
    await until(() => !resolver.freshness().fresh, 'the 403 noticed');
    assert.match(String(resolver.freshness().reason), /Forbidden|403/);
    kube.deletePod('apps', 'old');
    kube.createPod(podBody('new', ip, 'new-role'));
    for (let i = 0; i < 10; i++) {
      assert.equal(roleOf(await resolver.lookup(ip)), 'new-role');
      await clock.advance(1000);
    }
    assert.equal(roleOf(await resolver.lookup(`10.20.${n}.99`)), 'unknown');
  });

  it('a full API outage: known pods keep being served (static stability), unknown sources get nothing; in sync again after', async () => {
    const ip = `10.20.${n}.1`;
    await start({ name: 'steady', ip, role: 'steady-role' });
    kube.setOutage(true);
    await until(() => !resolver.freshness().fresh, 'the outage noticed');
    for (let i = 0; i < 10; i++) {
      assert.equal(roleOf(await resolver.lookup(ip)), 'steady-role');
      await clock.advance(1000);
    }
    assert.equal(roleOf(await resolver.lookup(`10.20.${n}.99`)), 'unknown');
    assert.ok((await metrics.confirmations.get()).values.some((v) => v.labels.result === 'unavailable' && v.value >= 10));
    assert.ok(logs.some((l) => l.msg === 'API server unreachable while the pod index is not fresh: answering from the index'));
    kube.setOutage(false);
    await advanceUntil(() => kube.watchCount === 2, 'both watches back');
    assert.equal(resolver.freshness().fresh, false, 'a watch that answers is not yet proof');
    kube.sendBookmarks();
    await until(() => resolver.freshness().fresh, 'in sync at the first bookmark');
  });

  it('the freshness in the metrics, /debug/state and doctor', async () => {
    const ip = `10.20.${n}.1`;
    await start({ name: 'shown', ip, role: 'shown-role' });
    const state = () => ({ podIndex: debugPodIndex({ ...resolver.freshness(), namespaces: resolver.namespaceSync() }, clock.now()) }) as DebugState;
    assert.equal(podIndexRow(state())?.status, 'ok');
    assert.equal((await metrics.podIndexFresh.get()).values[0]?.value, 1);
    kube.setWatchFault({ status: 403 });
    kube.closeWatches();
    await until(() => !resolver.freshness().fresh, 'the 403 noticed');
    const warn = podIndexRow(state());
    assert.equal(warn?.status, 'warn');
    assert.match(warn!.detail, /not known fresh.*Forbidden|403/);
    assert.equal((await metrics.podIndexFresh.get()).values[0]?.value, 0);
    await clock.advance(121_000);
    assert.equal(podIndexRow(state())?.status, 'fail', 'two minutes out of sync');
    assert.equal((await metrics.podIndexStaleness.get()).values[0]?.value! >= 121, true);
    assert.equal(state().podIndex?.fresh, false);
    assert.ok(state().podIndex?.namespaces, 'the namespace watch is reported beside it');
  });
});
