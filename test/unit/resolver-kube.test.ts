/**
 * kube.ts (the client-node adapter) against the fake API server over real HTTPS.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { systemClock, type Clock } from '../../src/clock.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { createKubeSources, fieldValue, KubePodSource, loadKubeConfig, slimPod, WATCH_TIMEOUT_SECONDS, type KubeSourceOptions } from '../../src/resolver/kube.ts';
import { Resolver, type SourceEvents } from '../../src/resolver/lookup.ts';
import { Policy } from '../../src/resolver/policy.ts';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import type { Lookup, NamespaceInfo } from '../../src/resolver/types.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';
import { Wakers } from '../fakes/wakers.ts';

/** Records source events; until() waits for them (event driven, with a failure bound). */
class Recorder<T> implements SourceEvents<T> {
  events: Array<['upsert' | 'remove', T]> = [];
  syncs = 0;
  private readonly wakers = new Wakers();
  upsert(obj: T): void {
    this.events.push(['upsert', obj]);
    this.wake();
  }
  remove(obj: T): void {
    this.events.push(['remove', obj]);
    this.wake();
  }
  synced(): void {
    this.syncs++;
    this.wake();
  }
  wake(): void {
    this.wakers.wake();
  }
  until(pred: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
    return this.wakers.until(pred, what, timeoutMs, () => `; events: ${JSON.stringify(this.events)}`);
  }
}

/** A real clock that runs every delay 100× faster and remembers the delays asked for. */
function fastClock(delays: number[]): Clock {
  return {
    now: () => Date.now(),
    setTimeout(fn, ms) {
      delays.push(ms);
      return systemClock.setTimeout(fn, ms / 100);
    },
    sleep: (ms, signal) => systemClock.sleep(ms / 100, signal),
  };
}

function podBody(name: string, opts: { ns?: string; node?: string; ip?: string; ips?: string[]; role?: string; phase?: string; hostNetwork?: boolean } = {}) {
  return {
    metadata: { name, namespace: opts.ns ?? 'dev', annotations: opts.role ? { 'iam.amazonaws.com/role': opts.role } : {} },
    spec: { nodeName: opts.node ?? 'node-a', serviceAccountName: 'sa', hostNetwork: opts.hostNetwork ?? false, containers: [{ name: 'c', image: 'busybox' }] },
    status: {
      phase: opts.phase ?? 'Running',
      ...(opts.ip ? { podIP: opts.ip } : {}),
      ...(opts.ips ? { podIPs: opts.ips.map((ip) => ({ ip })) } : {}),
    },
  };
}

const names = (r: Recorder<PodInfo>) => r.events.map(([kind, p]) => `${kind}:${p.name}`);

/** Wait for a condition that real I/O makes true (bounded; polls, as the state has no event of its own). */
async function until(pred: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('kube adapter against the fake API server', () => {
  let kube: FakeKubeApiServer;
  let dir: string;
  let kubeconfigPath: string;

  before(async () => {
    kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0 });
    dir = await mkdtemp(join(tmpdir(), 'kiam-kube-test-'));
    kubeconfigPath = join(dir, 'kubeconfig');
    await kube.writeKubeconfig(kubeconfigPath);
    kube.createNamespace('dev', { 'iam.amazonaws.com/permitted': '.*', unrelated: 'dropped' });
  });

  after(async () => {
    await kube.close();
    await rm(dir, { recursive: true, force: true });
  });

  let metrics: Metrics;
  let delays: number[];
  let logs: Array<Record<string, unknown>>;
  let stoppers: Array<() => Promise<void>>;
  let created: Array<[string, string]>;

  function options(overrides: Partial<KubeSourceOptions> = {}): KubeSourceOptions {
    return {
      kubeConfig: loadKubeConfig(kubeconfigPath),
      nodeName: 'node-a',
      metrics,
      logger: pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }),
      clock: fastClock(delays),
      // Tests that are not about the watchdog keep it out of the way (fastClock runs it 100× faster).
      silentWatchMs: 3_600_000,
      ...overrides,
    };
  }

  function startPods(opts = options()): { source: KubePodSource; rec: Recorder<PodInfo> } {
    const source = new KubePodSource(opts);
    const rec = new Recorder<PodInfo>();
    source.start(rec);
    stoppers.push(() => source.stop());
    return { source, rec };
  }

  function create(name: string, opts: Parameters<typeof podBody>[1] = {}) {
    created.push([opts.ns ?? 'dev', name]);
    return kube.createPod(podBody(name, opts));
  }

  beforeEach(() => {
    metrics = createMetrics();
    delays = [];
    logs = [];
    stoppers = [];
    created = [];
    kube.clearLog();
  });

  afterEach(async () => {
    kube.setWatchFault(undefined);
    kube.setOutage(false);
    for (const stop of stoppers) await stop();
    await kube.waitForWatches(0);
    for (const [ns, name] of created) if (kube.getPod(ns, name)) kube.deletePod(ns, name);
  });

  it('syncs the pods of this node only (field selector on list and watch), slimmed to PodInfo', async () => {
    create('mine', { ip: '10.0.0.1', role: 'reader' });
    create('theirs', { node: 'node-b', ip: '10.0.0.2' });
    const { rec } = startPods();
    await rec.until(() => rec.syncs === 1, 'sync');
    assert.deepEqual(names(rec), ['upsert:mine']);
    const info = rec.events[0]![1];
    assert.equal(info.ip, '10.0.0.1');
    assert.equal(info.role, 'reader');
    assert.equal(info.serviceAccount, 'sa');
    const list = kube.requests.find((r) => r.path === '/api/v1/pods' && !r.watch);
    assert.match(decodeURIComponent(list!.query), /fieldSelector=spec\.nodeName=node-a/);
    await kube.waitForWatches(1);
    const watch = kube.requests.find((r) => r.watch);
    assert.match(decodeURIComponent(watch!.query), /fieldSelector=spec\.nodeName=node-a/);
    assert.match(watch!.query, /allowWatchBookmarks=true/);
  });

  it('delivers add, modify and delete; pods of other nodes are never seen', async () => {
    const { rec } = startPods();
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    create('p1', { ip: '10.0.1.1' });
    create('other', { node: 'node-b', ip: '10.0.1.2' });
    await rec.until(() => rec.events.length === 1, 'add');
    kube.patchPod('dev', 'p1', { metadata: { annotations: { 'iam.amazonaws.com/role': 'writer' } } });
    kube.patchPod('dev', 'other', { metadata: { annotations: { 'iam.amazonaws.com/role': 'writer' } } });
    await rec.until(() => rec.events.length === 2, 'modify');
    assert.equal(rec.events[1]![1].role, 'writer');
    kube.markDeleting('dev', 'p1');
    await rec.until(() => rec.events.length === 3, 'deleting');
    assert.equal(rec.events[2]![1].deleting, true);
    kube.deletePod('dev', 'p1');
    kube.deletePod('dev', 'other');
    await rec.until(() => rec.events.length === 4, 'delete');
    assert.deepEqual(names(rec), ['upsert:p1', 'upsert:p1', 'upsert:p1', 'remove:p1']);
    assert.equal(kube.stats().admin!.objects >= 4, true);
  });

  it('a pod moved onto this node appears (the watch turns it into ADDED)', async () => {
    create('mover', { node: 'node-b', ip: '10.0.2.1' });
    const { rec } = startPods();
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    kube.patchPod('dev', 'mover', { spec: { nodeName: 'node-a' } });
    await rec.until(() => rec.events.length === 1, 'moved in');
    assert.deepEqual(names(rec), ['upsert:mover']);
  });

  it('a watch closed by the server resumes from its resourceVersion without a relist', async () => {
    const { rec } = startPods();
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    assert.equal(kube.closeWatches(), 1);
    create('after-close', { ip: '10.0.3.1' });
    await rec.until(() => rec.events.length === 1, 'event after resume');
    const lists = kube.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch).length;
    const watches = kube.requests.filter((r) => r.path === '/api/v1/pods' && r.watch);
    assert.equal(lists, 1, 'no relist');
    assert.equal(watches.length, 2);
    assert.match(watches[1]!.query, /resourceVersion=\d+/);
    assert.equal(await metricValue(metrics, 'watchRestarts'), 0, 'a resume is not a restart');
  });

  it('410 Gone after compaction relists, and reports what vanished meanwhile as removed', async () => {
    create('stays', { ip: '10.0.4.1' });
    create('goes', { ip: '10.0.4.2' });
    const { rec } = startPods();
    await rec.until(() => rec.syncs === 1 && rec.events.length === 2, 'sync');
    await kube.waitForWatches(1);
    // Make the client's resourceVersion too old, then drop the stream: the resume gets 410.
    kube.closeWatches();
    kube.deletePod('dev', 'goes');
    create('new', { ip: '10.0.4.3' });
    kube.compact();
    await rec.until(() => names(rec).includes('remove:goes') && names(rec).includes('upsert:new'), 'relist');
    const lists = kube.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch).length;
    assert.equal(lists >= 2, true, 'relisted');
    assert.equal(rec.syncs, 1, 'synced reported once');
  });

  it('a failing list stops the informer; it is restarted with exponential backoff and jitter, and counted', async () => {
    kube.failNextList({ status: 500, times: 2, resource: 'pods' });
    const { rec } = startPods(options({ backoff: { initialMs: 1000, maxMs: 30_000, jitter: 0.2 } }));
    await rec.until(() => rec.syncs === 1, 'sync after restarts');
    const restarts = logs.filter((l) => l.msg === 'watch stopped; restarting');
    assert.equal(restarts.length, 2);
    const [first, second] = restarts.map((l) => Number(l.retryInMs));
    assert.ok(first! >= 800 && first! <= 1200, `first delay ${first}`);
    assert.ok(second! >= 1600 && second! <= 2400, `second delay ${second}`);
    assert.ok(delays.includes(first!) && delays.includes(second!), 'delays went through the injected clock');
    assert.equal(await metricValue(metrics, 'watchRestarts', { resource: 'pods' }), 2);
  });

  it('the backoff is capped at maxMs', async () => {
    kube.failNextList({ status: 500, times: 3, resource: 'pods' });
    const { rec } = startPods(options({ backoff: { initialMs: 1000, maxMs: 1500, jitter: 0 } }));
    await rec.until(() => rec.syncs === 1, 'sync after restarts');
    const got = logs.filter((l) => l.msg === 'watch stopped; restarting').map((l) => Number(l.retryInMs));
    assert.deepEqual(got, [1000, 1500, 1500]);
  });

  it('stop() during a stalled list leaves nothing running', async () => {
    kube.stallNextList({ resource: 'pods' });
    const { source, rec } = startPods();
    await kube.waitForRequest((r) => r.status === -1);
    await source.stop();
    await kube.waitForWatches(0);
    assert.equal(rec.syncs, 0);
    assert.equal(logs.filter((l) => l.msg === 'watch stopped; restarting').length, 0, 'the abort of stop() is not an error');
  });

  it(`each watch asks bookmarks and a timeoutSeconds of ${WATCH_TIMEOUT_SECONDS - 5} to ${WATCH_TIMEOUT_SECONDS}`, async () => {
    const { rec } = startPods();
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    const q = new URLSearchParams(kube.requests.find((r) => r.watch)!.query);
    assert.equal(q.get('allowWatchBookmarks'), 'true');
    const timeout = Number(q.get('timeoutSeconds'));
    assert.ok(timeout >= WATCH_TIMEOUT_SECONDS - 5 && timeout <= WATCH_TIMEOUT_SECONDS, `timeoutSeconds=${timeout}`);
  });

  it('syncState: lost until the first list; a list, an event and a bookmark each mark it in sync', async () => {
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock }));
    assert.deepEqual(source.syncState(), { syncedAt: undefined, lost: 'not listed yet' });
    const rec = new Recorder<PodInfo>();
    source.start(rec);
    stoppers.push(() => source.stop());
    await rec.until(() => rec.syncs === 1, 'sync');
    assert.deepEqual(source.syncState(), { syncedAt: clock.now(), lost: undefined });
    await kube.waitForWatches(1);
    await clock.advance(10_000);
    create('ev', { ip: '10.0.13.1' });
    await rec.until(() => rec.events.length === 1, 'event');
    assert.equal(source.syncState().syncedAt, clock.now(), 'an event');
    await clock.advance(10_000);
    const before = kube.requests.find((r) => r.watch)!.objects;
    kube.sendBookmarks();
    await until(() => kube.requests.find((r) => r.watch)!.objects > before && source.syncState().syncedAt === clock.now(), 'bookmark applied');
  });

  it('a watch silent for silentWatchMs is aborted and resumed from its resourceVersion, and reported out of sync', async () => {
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock, silentWatchMs: 40_000 }));
    const rec = new Recorder<PodInfo>();
    source.start(rec);
    stoppers.push(() => source.stop());
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    kube.setWatchFault('silent');
    create('unseen', { ip: '10.0.12.1' });
    const podWatches = () => kube.requests.filter((r) => r.path === '/api/v1/pods' && r.watch);
    await clock.advance(39_999);
    assert.equal(rec.events.length, 0, 'the stuck stream delivers nothing');
    assert.equal(podWatches().length, 1);
    kube.setWatchFault(undefined);
    await clock.advance(1);
    await rec.until(() => names(rec).includes('upsert:unseen'), 'the resumed watch replays what was missed');
    assert.equal(podWatches().length, 2);
    assert.match(podWatches()[1]!.query, /resourceVersion=\d+/, 'resumed, not relisted');
    assert.equal(kube.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch).length, 1);
    assert.ok(logs.some((l) => l.msg === 'watch out of sync' && /silent/.test(String(l.reason))), 'reported');
    assert.equal(source.syncState().lost, undefined, 'in sync again with the replayed event');
  });

  it('a run of 410s: each relist is followed by its watch at once, relists back off 1, 2 … s, and the state is lost in between', async () => {
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock, backoff: { initialMs: 1000, maxMs: 30_000, jitter: 0 } }));
    const rec = new Recorder<PodInfo>();
    source.start(rec);
    stoppers.push(() => source.stop());
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    create('storm', { ip: '10.0.14.1' });
    await rec.until(() => rec.events.length === 1, 'an event: the watch works');
    const lists = () => kube.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch && r.status === 200).length;
    const watches = () => kube.requests.filter((r) => r.path === '/api/v1/pods' && r.watch).length;
    kube.setWatchFault('gone');
    kube.closeWatches();
    // Resumed → 410 → relist at once (the watch had delivered) → its watch at once → 410 again.
    await until(() => lists() === 2 && watches() === 3 && source.syncState().lost !== undefined, 'first relist and its watch, with no time passing');
    assert.match(String(source.syncState().lost), /410/);
    await clock.advance(999);
    assert.equal(lists(), 2, 'the next relist waits 1 s');
    await clock.advance(1);
    await until(() => lists() === 3 && watches() === 4, 'second relist and its watch at once');
    await clock.advance(1999);
    assert.equal(lists(), 3, 'then 2 s');
    kube.setWatchFault(undefined);
    await clock.advance(1);
    await until(() => lists() === 4 && watches() === 5 && source.syncState().lost === undefined, 'in sync after the storm');
    assert.equal(source.syncState().syncedAt, clock.now());
    await clock.advance(10_000);
    assert.equal(watches(), 5, 'the watch holds');
    assert.equal(await metricValue(metrics, 'watchRestarts'), 0, 'relists are not restarts');
  });

  it('a watch answered 403 is out of sync until the watch is back and delivers', async () => {
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock, backoff: { initialMs: 1000, maxMs: 30_000, jitter: 0 } }));
    const rec = new Recorder<PodInfo>();
    source.start(rec);
    stoppers.push(() => source.stop());
    await rec.until(() => rec.syncs === 1, 'sync');
    await kube.waitForWatches(1);
    kube.setWatchFault({ status: 403 });
    kube.closeWatches();
    await until(() => /403|Forbidden/.test(String(source.syncState().lost)), 'lost on the 403');
    kube.setWatchFault(undefined);
    await clock.advance(1000);
    await kube.waitForWatches(1);
    assert.match(String(source.syncState().lost), /403|Forbidden/, 'a watch that answers is not yet proof');
    kube.sendBookmarks();
    await until(() => source.syncState().lost === undefined, 'a bookmark is');
  });

  it('namespaces: cluster-wide, only iam.amazonaws.com/* annotations kept, changes delivered', async () => {
    const { namespaces } = createKubeSources(options());
    stoppers.push(() => namespaces.stop());
    const rec = new Recorder<NamespaceInfo>();
    namespaces.start(rec);
    await rec.until(() => rec.syncs === 1, 'namespace sync');
    const dev = rec.events.find(([, ns]) => ns.name === 'dev');
    assert.deepEqual(dev?.[1].annotations, { 'iam.amazonaws.com/permitted': '.*' });
    assert.ok(rec.events.some(([, ns]) => ns.name === 'default'));
    await kube.waitForWatches(1);
    kube.createNamespace('later');
    kube.patchNamespace('later', { metadata: { annotations: { 'iam.amazonaws.com/permitted': 'x' } } });
    kube.deleteNamespace('later');
    await rec.until(() => rec.events.filter(([, ns]) => ns.name === 'later').length === 3, 'namespace events');
    assert.deepEqual(
      rec.events.filter(([, ns]) => ns.name === 'later').map(([k, ns]) => `${k}:${JSON.stringify(ns.annotations)}`),
      ['upsert:{}', 'upsert:{"iam.amazonaws.com/permitted":"x"}', 'remove:{"iam.amazonaws.com/permitted":"x"}'],
    );
  });

  it('live GET by IP: scoped to this node and the IP, any liveness', async () => {
    create('live-a', { ip: '10.0.5.1', role: 'r' });
    create('old-a', { ip: '10.0.5.1', phase: 'Succeeded' });
    create('live-b', { node: 'node-b', ip: '10.0.5.1' });
    const source = new KubePodSource(options());
    const found = await source.listByIp('10.0.5.1', 2000);
    assert.deepEqual(found.map((p) => p.name).sort(), ['live-a', 'old-a']);
    const selectors = () => kube.requests.filter((r) => r.path === '/api/v1/pods').map((r) => new URLSearchParams(r.query).get('fieldSelector'));
    assert.deepEqual(selectors(), ['spec.nodeName=node-a,status.podIP=10.0.5.1'], 'a live pod found by the selector: nothing more');
    assert.deepEqual(await source.listByIp('10.0.5.99', 2000), []);
    assert.deepEqual(selectors().slice(1), ['spec.nodeName=node-a,status.podIP=10.0.5.99', 'spec.nodeName=node-a'], 'not found by podIP: one LIST of the node');
  });

  it('live look-up of a secondary IP: the selector cannot find it, the LIST of this node does', async () => {
    create('dual-a', { ip: '10.0.8.1', ips: ['10.0.8.1', 'fd00:10:8::1'], role: 'r' });
    create('dual-other-node', { node: 'node-b', ip: '10.0.8.2', ips: ['10.0.8.2', 'fd00:10:8::2'] });
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock }));
    const selectors = () => kube.requests.filter((r) => r.path === '/api/v1/pods').map((r) => new URLSearchParams(r.query).get('fieldSelector'));

    const found = await source.listByIp('FD00:10:8:0::1', 2000);
    assert.deepEqual(found.map((p) => [p.name, p.ip, p.ips]), [['dual-a', '10.0.8.1', ['10.0.8.1', 'fd00:10:8::1']]]);
    assert.deepEqual(selectors(), ['spec.nodeName=node-a,status.podIP=fd00:10:8::1', 'spec.nodeName=node-a'], 'canonical spelling in the selector');
    assert.deepEqual(await source.listByIp('fd00:10:8::2', 2000), [], 'a pod of another node, whatever its IPs');
    // The primary of a dual-stack pod is found by the selector alone.
    kube.clearLog();
    assert.deepEqual((await source.listByIp('10.0.8.1', 2000)).map((p) => p.name), ['dual-a']);
    assert.equal(selectors().length, 1);
  });

  it('the LIST of this node runs at most once per interval; concurrent and later look-ups share it', async () => {
    create('dual-b', { ip: '10.0.9.1', ips: ['10.0.9.1', 'fd00:10:9::1'] });
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock, nodeListIntervalMs: 1000 }));
    const nodeLists = () => kube.requests.filter((r) => r.path === '/api/v1/pods' && new URLSearchParams(r.query).get('fieldSelector') === 'spec.nodeName=node-a').length;
    const answers = await Promise.all(['fd00:10:9::1', 'fd00:10:9::77', 'fd00:10:9::78'].map((ip) => source.listByIp(ip, 2000)));
    assert.deepEqual(answers.map((a) => a.map((p) => p.name)), [['dual-b'], [], []]);
    assert.equal(nodeLists(), 1, 'concurrent look-ups share one LIST');
    await clock.advance(999);
    // A pod created meanwhile is not seen until the interval is over: the watch is the authority for it.
    create('dual-c', { ip: '10.0.9.2', ips: ['10.0.9.2', 'fd00:10:9::2'] });
    assert.deepEqual(await source.listByIp('fd00:10:9::2', 2000), []);
    assert.equal(nodeLists(), 1);
    await clock.advance(1);
    assert.deepEqual((await source.listByIp('fd00:10:9::2', 2000)).map((p) => p.name), ['dual-c']);
    assert.equal(nodeLists(), 2);
  });

  it('a failed LIST of this node is shared for the interval too', async () => {
    const clock = new FakeClock();
    const source = new KubePodSource(options({ clock, nodeListIntervalMs: 1000 }));
    const nodeLists = () => kube.requests.filter((r) => r.path === '/api/v1/pods' && new URLSearchParams(r.query).get('fieldSelector') === 'spec.nodeName=node-a').length;
    kube.failNextList({ resource: 'pods', fieldSelector: 'spec.nodeName=node-a', status: 500 });
    await assert.rejects(source.listByIp('fd00:10:9::90', 2000), /HTTP 500/);
    await assert.rejects(source.listByIp('fd00:10:9::91', 2000), /HTTP 500/);
    assert.equal(nodeLists(), 1, 'the failure is reused, not retried at once');
    await clock.advance(1000);
    assert.deepEqual(await source.listByIp('fd00:10:9::91', 2000), []);
    assert.equal(nodeLists(), 2);
  });

  it('live GET times out', async () => {
    kube.stallNextList({ resource: 'pods' });
    const source = new KubePodSource(options());
    await assert.rejects(source.listByIp('10.0.6.1', 100), /abort|timeout/i);
  });

  it('live GET with a bad token fails clearly', async () => {
    const badPath = join(dir, 'bad-kubeconfig');
    await kube.writeKubeconfig(badPath, 'wrong-token');
    const kc = loadKubeConfig(badPath);
    const source = new KubePodSource(options({ kubeConfig: kc }));
    await assert.rejects(source.listByIp('10.0.6.2', 2000), /HTTP 401/);
  });
});

describe('Resolver wired to the kube adapter and the fake API server', () => {
  let kube: FakeKubeApiServer;
  let dir: string;
  let resolver: Resolver;
  let metrics: Metrics;

  before(async () => {
    kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0 });
    dir = await mkdtemp(join(tmpdir(), 'kiam-resolver-kube-'));
    await kube.writeKubeconfig(join(dir, 'kubeconfig'));
    kube.createNamespace('apps', { 'iam.amazonaws.com/permitted': '.*/app-.*' });
    kube.createPod(podBody('early', { ns: 'apps', ip: '10.8.0.1', role: 'app-early' }));
    metrics = createMetrics();
    const logger = pino({ level: 'silent' });
    const sources = createKubeSources({ kubeConfig: loadKubeConfig(join(dir, 'kubeconfig')), nodeName: 'node-a', metrics, logger });
    resolver = new Resolver({
      ...sources,
      policy: new Policy({ roleBaseArn: 'arn:aws:iam::123456789012:role/', namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-a' }),
      clock: systemClock,
      metrics,
      logger,
      podWaitMs: 2000,
      liveLookupTimeoutMs: 2000,
    });
    resolver.start();
    await resolver.whenReady();
  });

  after(async () => {
    await resolver.stop();
    await kube.waitForWatches(0);
    await kube.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('answers a pod known at start', async () => {
    const l = await resolver.lookup('10.8.0.1');
    assert.equal(l.kind === 'role' && l.identity.roleArn, 'arn:aws:iam::123456789012:role/app-early');
  });

  it('a dual-stack pod is answered on each of its IPs, in any spelling, and on the IPv4-mapped form', async () => {
    await kube.waitForWatches(2);
    const pending = resolver.lookup('FD00:10:8::0005');
    kube.createPod(podBody('dual', { ns: 'apps', ip: '10.8.0.5', ips: ['10.8.0.5', 'fd00:10:8::5'], role: 'app-dual' }));
    for (const l of [await pending, await resolver.lookup('10.8.0.5'), await resolver.lookup('::ffff:10.8.0.5'), await resolver.lookup('fd00:10:8::5')]) {
      assert.equal(l.kind === 'role' && l.identity.sessionName, 'apps.dual');
    }
    assert.equal(resolver.peek('fd00:10:8::5')?.kind, 'role');
  });

  it('a request that comes before the watch has seen its pod waits and gets the right role', async () => {
    await kube.waitForWatches(2);
    const pending = resolver.lookup('10.8.0.2');
    kube.createPod(podBody('late', { ns: 'apps', ip: '10.8.0.2', role: 'app-late' }));
    const l = await pending;
    assert.equal(l.kind === 'role' && l.identity.sessionName, 'apps.late');
  });

  it('a namespace policy change re-evaluates its pods and notifies', async () => {
    const seen = new Promise<Lookup | undefined>((resolve) => {
      const off = resolver.onIdentity((_uid, l) => {
        off();
        resolve(l);
      });
    });
    kube.patchNamespace('apps', { metadata: { annotations: { 'iam.amazonaws.com/permitted': 'nothing' } } });
    const l = await seen;
    assert.equal(l?.kind === 'denied' && l.code, 'not-permitted');
    kube.patchNamespace('apps', { metadata: { annotations: { 'iam.amazonaws.com/permitted': '.*/app-.*' } } });
  });
});

describe('kube adapter helpers', () => {
  it('loadKubeConfig names the problem', () => {
    assert.throws(() => loadKubeConfig('/nonexistent/kubeconfig'), /--kubeconfig \/nonexistent\/kubeconfig: cannot load/);
    const saved = process.env.KUBERNETES_SERVICE_HOST;
    delete process.env.KUBERNETES_SERVICE_HOST;
    try {
      assert.throws(() => loadKubeConfig(), /not running in a cluster/);
    } finally {
      if (saved !== undefined) process.env.KUBERNETES_SERVICE_HOST = saved;
    }
  });

  it('slimPod keeps only what the agent needs', () => {
    const slim = slimPod({
      metadata: { name: 'p', namespace: 'n', uid: 'u', resourceVersion: '7', labels: { a: 'b' }, managedFields: [{}], annotations: { 'iam.amazonaws.com/role': 'r', big: 'x'.repeat(10_000) } },
      spec: { nodeName: 'node-a', containers: [{ name: 'c', env: [] }], serviceAccountName: 'sa' },
      status: { phase: 'Running', podIP: '10.0.0.1', podIPs: [{ ip: '10.0.0.1', extra: 1 }, { ip: 'fd00::1' }, { nope: true }], conditions: [{}] },
    });
    assert.deepEqual(slim, {
      metadata: { name: 'p', namespace: 'n', uid: 'u', resourceVersion: '7', annotations: { 'iam.amazonaws.com/role': 'r' } },
      spec: { serviceAccountName: 'sa' },
      status: { phase: 'Running', podIP: '10.0.0.1', podIPs: [{ ip: '10.0.0.1' }, { ip: 'fd00::1' }] },
    });
  });

  it('fieldValue escapes selector metacharacters', () => {
    assert.equal(fieldValue('a,b=c\\d'), 'a\\,b\\=c\\\\d');
  });
});

async function metricValue(metrics: Metrics, name: 'watchRestarts', labels: Record<string, string> = {}): Promise<number> {
  const { values } = await metrics[name].get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k as 'resource'] === val)).reduce((s, v) => s + v.value, 0);
}
