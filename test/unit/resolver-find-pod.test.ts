/**
 * Resolver.findPod: the pod a service-account token is bound to, by uid (then namespace/name), from the watch's
 * pods of this node (hostNetwork and finished ones included), else a wait for the watch, else a live GET.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import type { Counter } from 'prom-client';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { KubePodSource, loadKubeConfig } from '../../src/resolver/kube.ts';
import { CONFIRM_RATE, CONFIRM_TTL_MS, FRESH_FOR_MS, Resolver, type NamespaceSource, type PodSource, type SourceEvents, type SyncState } from '../../src/resolver/lookup.ts';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import { Policy } from '../../src/resolver/policy.ts';
import type { NamespaceInfo } from '../../src/resolver/types.ts';
import { FakeClock, settle } from '../fakes/clock.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';

class FakePods implements PodSource {
  events: SourceEvents<PodInfo> | undefined;
  state: SyncState = { syncedAt: undefined, lost: 'not listed yet' };
  gets: Array<[string, string]> = [];
  nodeLists = 0;
  /** What the next GETs by name answer (or throw). */
  get: (ns: string, name: string) => Promise<{ pod: PodInfo; nodeName: string } | undefined> = async () => undefined;
  node: () => Promise<PodInfo[]> = async () => [];
  start(events: SourceEvents<PodInfo>): void {
    this.events = events;
  }
  async stop(): Promise<void> {}
  async listByIp(): Promise<PodInfo[]> {
    return [];
  }
  listNode(): Promise<PodInfo[]> {
    this.nodeLists++;
    return this.node();
  }
  getPod(namespace: string, name: string): Promise<{ pod: PodInfo; nodeName: string } | undefined> {
    this.gets.push([namespace, name]);
    return this.get(namespace, name);
  }
  syncState(): SyncState {
    return this.state;
  }
}

class FakeNamespaces implements NamespaceSource {
  events: SourceEvents<NamespaceInfo> | undefined;
  start(events: SourceEvents<NamespaceInfo>): void {
    this.events = events;
  }
  async stop(): Promise<void> {}
}

let n = 0;
function pod(overrides: Partial<PodInfo> = {}): PodInfo {
  n++;
  const ip = overrides.ip ?? `10.3.0.${n}`;
  return { uid: `uid-${n}`, name: `pod-${n}`, namespace: 'dev', serviceAccount: 'sa', phase: 'Running', hostNetwork: false, deleting: false, ...overrides, ip, ips: overrides.ips ?? (ip ? [ip] : []) };
}

const claimOf = (p: PodInfo) => ({ uid: p.uid, namespace: p.namespace, name: p.name });

async function value(counter: Counter<string>, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((s, v) => s + v.value, 0);
}

describe('Resolver.findPod', () => {
  let clock: FakeClock;
  let pods: FakePods;
  let metrics: Metrics;
  let resolver: Resolver;

  beforeEach(() => {
    clock = new FakeClock();
    pods = new FakePods();
    metrics = createMetrics();
    resolver = new Resolver({
      pods,
      namespaces: new FakeNamespaces(),
      policy: new Policy({ namespaceRestriction: false, sessionNameTemplate: '{pod}', nodeName: 'node-a' }),
      clock,
      metrics,
      logger: pino({ level: 'silent' }),
      podWaitMs: 800,
    });
    resolver.start();
    pods.events!.synced();
    pods.state.syncedAt = clock.now();
    pods.state.lost = undefined;
  });

  afterEach(async () => {
    await resolver.stop();
    assert.equal(clock.timers, 0, 'no timer left behind');
  });

  it('answers from the watch: hostNetwork and finished pods too, which the IP index leaves out', async () => {
    const host = pod({ hostNetwork: true, ip: '192.168.0.10' });
    const done = pod({ phase: 'Succeeded' });
    pods.events!.upsert(host);
    pods.events!.upsert(done);
    assert.deepEqual(await resolver.findPod(claimOf(host)), { kind: 'pod', pod: host, from: 'index' });
    assert.deepEqual(await resolver.findPod(claimOf(done)), { kind: 'pod', pod: done, from: 'index' });
    assert.equal(resolver.podByUid(host.uid), host);
    assert.equal(resolver.peek(host.ip), undefined, 'the IP path still ignores it');
    assert.deepEqual(pods.gets, []);
  });

  it('a claim whose uid the watch does not know, but whose name it does, gets the pod holding the name now', async () => {
    const now = pod({ name: 'web' });
    pods.events!.upsert(now);
    const found = await resolver.findPod({ uid: 'old-uid', namespace: 'dev', name: 'web' });
    assert.equal(found.kind === 'pod' && found.pod.uid, now.uid);
    assert.deepEqual(pods.gets, []);
  });

  it('waits for the watch (event driven) before any GET', async () => {
    const late = pod();
    const pending = resolver.findPod(claimOf(late));
    await clock.advance(300);
    pods.events!.upsert(late);
    assert.deepEqual(await pending, { kind: 'pod', pod: late, from: 'index' });
    assert.deepEqual(pods.gets, []);
  });

  it('after the wait, one live GET: a pod of another node comes with its node; concurrent claims share it', async () => {
    const other = pod();
    pods.get = async () => ({ pod: other, nodeName: 'node-b' });
    const a = resolver.findPod(claimOf(other));
    const b = resolver.findPod(claimOf(other));
    await clock.advance(800);
    const expected = { kind: 'pod', pod: other, from: 'live', nodeName: 'node-b' };
    assert.deepEqual(await a, expected);
    assert.deepEqual(await b, expected);
    assert.deepEqual(pods.gets, [['dev', other.name]]);
    assert.deepEqual(await resolver.findPod(claimOf(other)), expected, 'reused within CONFIRM_TTL_MS');
    assert.equal(pods.gets.length, 1);
    await clock.advance(CONFIRM_TTL_MS);
    const again = resolver.findPod(claimOf(other));
    await clock.advance(800);
    assert.deepEqual(await again, expected);
    assert.equal(pods.gets.length, 2);
    assert.equal(await value(metrics.liveLookups, { result: 'by-name-found' }), 2);
  });

  it('a pod no GET finds is not-found, and not asked again for the hold-off', async () => {
    const gone = pod();
    const first = resolver.findPod(claimOf(gone));
    await clock.advance(800);
    assert.deepEqual(await first, { kind: 'not-found' });
    assert.deepEqual(await resolver.findPod(claimOf(gone)), { kind: 'not-found' });
    assert.equal(pods.gets.length, 1);
    await clock.advance(5000);
    const later = resolver.findPod(claimOf(gone));
    await clock.advance(800);
    assert.deepEqual(await later, { kind: 'not-found' });
    assert.equal(pods.gets.length, 2);
  });

  it('a failed GET is unavailable, unless the index knows the pod (static stability)', async () => {
    pods.get = async () => {
      throw Object.assign(new Error('connect ECONNREFUSED'), {});
    };
    const unknown = pod();
    const pending = resolver.findPod(claimOf(unknown));
    await clock.advance(800);
    const found = await pending;
    assert.equal(found.kind, 'unavailable');
    assert.match(found.kind === 'unavailable' ? found.reason : '', /ECONNREFUSED/);
    assert.equal(await value(metrics.liveLookups, { result: 'by-name-error' }), 1);

    // Not fresh: the GET comes first; the API unreachable, the index's pod stands; refused (403), nothing.
    const known = pod();
    pods.events!.upsert(known);
    pods.state.lost = 'watch failed';
    assert.deepEqual(await resolver.findPod(claimOf(known)), { kind: 'pod', pod: known, from: 'index' });
    assert.deepEqual(pods.gets.at(-1), ['dev', known.name], 'asked before answering');
    await clock.advance(CONFIRM_TTL_MS);
    pods.get = async () => {
      throw Object.assign(new Error('HTTP 403'), { statusCode: 403 });
    };
    const refused = await resolver.findPod(claimOf(known));
    assert.equal(refused.kind, 'unavailable');
  });

  it('while the index is not fresh, the GET answers even when the index disagrees (no wait)', async () => {
    const indexed = pod({ name: 'web' });
    pods.events!.upsert(indexed);
    await clock.advance(FRESH_FOR_MS + 1);
    const replaced = { ...indexed, uid: 'new-uid' };
    pods.get = async () => ({ pod: replaced, nodeName: 'node-a' });
    assert.deepEqual(await resolver.findPod(claimOf(indexed)), { kind: 'pod', pod: replaced, from: 'live', nodeName: 'node-a' });
  });

  it('GETs share the confirmations’ rate bound; beyond it, the shared LIST of this node’s pods', async () => {
    pods.state.lost = 'watch failed';
    const mine = Array.from({ length: CONFIRM_RATE + 2 }, () => pod());
    pods.get = async (_ns, name) => ({ pod: mine.find((p) => p.name === name)!, nodeName: 'node-a' });
    pods.node = async () => mine;
    for (const p of mine) {
      const found = await resolver.findPod(claimOf(p));
      assert.equal(found.kind === 'pod' && found.pod.uid, p.uid);
    }
    assert.equal(pods.gets.length, CONFIRM_RATE);
    assert.equal(pods.nodeLists, 2);
    const last = await resolver.findPod({ uid: 'nobody', namespace: 'dev', name: 'nobody' });
    assert.deepEqual(last, { kind: 'not-found' }, 'a pod the node LIST does not hold');
  });

  it('a caller that gives up gets unavailable; the look-up goes on for the others', async () => {
    const late = pod();
    const ac = new AbortController();
    const first = resolver.findPod(claimOf(late), ac.signal);
    const second = resolver.findPod(claimOf(late));
    ac.abort(new Error('client went away'));
    assert.equal((await first).kind, 'unavailable');
    pods.events!.upsert(late);
    await settle();
    assert.deepEqual(await second, { kind: 'pod', pod: late, from: 'index' });
  });

  it('namespaceAnnotations reads the namespace watch', () => {
    assert.equal(resolver.namespaceAnnotations('dev'), undefined);
  });
});

describe('KubePodSource.getPod against the fake API server', () => {
  it('GETs a pod by name whatever its node: the pod (hostNetwork kept) and its node; 404 → undefined; errors reject', async () => {
    const kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['dev'] });
    const dir = await mkdtemp(join(tmpdir(), 'kiam-get-pod-'));
    try {
      await kube.writeKubeconfig(join(dir, 'kubeconfig'));
      const source = new KubePodSource({ kubeConfig: loadKubeConfig(join(dir, 'kubeconfig')), nodeName: 'node-a', metrics: createMetrics(), logger: pino({ level: 'silent' }) });
      const uid = kube.createPod({
        metadata: { name: 'host', namespace: 'dev', annotations: { 'iam.amazonaws.com/role': 'r' } },
        spec: { nodeName: 'node-b', hostNetwork: true, serviceAccountName: 'app' },
        status: { phase: 'Running', podIP: '192.168.0.2' },
      }).metadata.uid;
      const got = await source.getPod('dev', 'host', 2000);
      assert.equal(got?.nodeName, 'node-b');
      assert.equal(got?.pod.uid, uid);
      assert.equal(got?.pod.hostNetwork, true);
      assert.equal(got?.pod.role, 'r');
      assert.equal(got?.pod.serviceAccount, 'app');
      assert.equal(await source.getPod('dev', 'nope', 2000), undefined);
      kube.createPod({ metadata: { name: 'pending', namespace: 'dev' } });
      assert.equal((await source.getPod('dev', 'pending', 2000))?.nodeName, '', 'not scheduled yet');
      kube.setOutage(true);
      await assert.rejects(source.getPod('dev', 'host', 2000));
    } finally {
      kube.setOutage(false);
      await kube.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
