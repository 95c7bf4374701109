import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { pino } from 'pino';
import type { Counter } from 'prom-client';
import { Prefetcher, type PrefetchIdentity, type PrefetchTarget } from '../../src/cache/prefetch.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { CONFIRM_RATE, CONFIRM_TTL_MS, FRESH_FOR_MS, Resolver, type NamespaceSource, type PodSource, type SourceEvents, type SyncState } from '../../src/resolver/lookup.ts';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import { Policy } from '../../src/resolver/policy.ts';
import type { Lookup, NamespaceInfo } from '../../src/resolver/types.ts';
import type { IdentityLookup } from '../../src/server/ports.ts';
import { FakeClock, settle } from '../fakes/clock.ts';

class FakePods implements PodSource {
  events: SourceEvents<PodInfo> | undefined;
  stopped = false;
  liveCalls: Array<{ ip: string; timeoutMs: number }> = [];
  /** What the next live GETs answer (or throw). */
  live: (ip: string) => Promise<PodInfo[]> = async () => [];
  start(events: SourceEvents<PodInfo>): void {
    this.events = events;
  }
  async stop(): Promise<void> {
    this.stopped = true;
  }
  listByIp(ip: string, timeoutMs: number): Promise<PodInfo[]> {
    this.liveCalls.push({ ip, timeoutMs });
    return this.live(ip);
  }
}

class FakeNamespaces implements NamespaceSource {
  events: SourceEvents<NamespaceInfo> | undefined;
  start(events: SourceEvents<NamespaceInfo>): void {
    this.events = events;
  }
  async stop(): Promise<void> {}
}

const BASE = 'arn:aws:iam::123456789012:role/';
const PERMIT_ALL = { 'iam.amazonaws.com/permitted': '.*' };

let n = 0;
function pod(overrides: Partial<PodInfo> = {}): PodInfo {
  n++;
  const ip = overrides.ip ?? overrides.ips?.[0] ?? `10.1.0.${n}`;
  return { uid: `uid-${n}`, name: `pod-${n}`, namespace: 'dev', serviceAccount: 'sa', phase: 'Running', hostNetwork: false, deleting: false, ...overrides, ip, ips: overrides.ips ?? (ip ? [ip] : []) };
}

async function value(counter: Counter<string>, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((s, v) => s + v.value, 0);
}

/** A Resolver over the fakes, logging (parsed) into logs, with the namespace restriction and the base ARN. */
function newResolver(pods: FakePods, namespaces: FakeNamespaces, clock: FakeClock, metrics: Metrics, logs: Array<Record<string, unknown>>): Resolver {
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  return new Resolver({
    pods,
    namespaces,
    policy: new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-a' }),
    clock,
    metrics,
    logger,
  });
}

describe('Resolver', () => {
  let clock: FakeClock;
  let pods: FakePods;
  let namespaces: FakeNamespaces;
  let metrics: Metrics;
  let logs: Array<Record<string, unknown>>;
  let resolver: Resolver;

  beforeEach(() => {
    clock = new FakeClock();
    pods = new FakePods();
    namespaces = new FakeNamespaces();
    metrics = createMetrics();
    logs = [];
    resolver = newResolver(pods, namespaces, clock, metrics, logs);
    resolver.start();
    namespaces.events!.upsert({ name: 'dev', annotations: PERMIT_ALL });
  });

  afterEach(async () => {
    await resolver.stop();
    assert.equal(clock.timers, 0, 'no timer left behind');
  });

  it('structurally implements the server port IdentityLookup', () => {
    const port: IdentityLookup = resolver;
    assert.equal(typeof port.lookup, 'function');
  });

  it('is ready once both watches have synced', async () => {
    assert.equal(resolver.ready(), false);
    const ready = resolver.whenReady();
    pods.events!.synced();
    assert.equal(resolver.ready(), false);
    namespaces.events!.synced();
    assert.equal(resolver.ready(), true);
    await ready;
    await resolver.whenReady();
  });

  it('whenReady rejects when its signal aborts', async () => {
    const ac = new AbortController();
    const waiting = resolver.whenReady(ac.signal);
    ac.abort(new Error('gave up'));
    await assert.rejects(waiting, /gave up/);
  });

  it('answers a known IP from the index at once, and peekUid', async () => {
    const p = pod({ role: 'reader' });
    pods.events!.upsert(p);
    const l = await resolver.lookup(p.ip);
    assert.equal(l.kind, 'role');
    assert.equal((l as Extract<Lookup, { kind: 'role' }>).identity.roleArn, `${BASE}reader`);
    assert.deepEqual((l as Extract<Lookup, { kind: 'role' }>).pod, { uid: p.uid, namespace: 'dev', name: p.name, ip: p.ip });
    assert.equal(resolver.peekUid(p.ip), p.uid);
    assert.equal(resolver.peekUid('10.9.9.9'), undefined);
    assert.equal(resolver.peekUid(`::ffff:${p.ip}`), p.uid, 'IPv4-mapped IPv6 peer address');
    assert.equal((await resolver.lookup(`::ffff:${p.ip}`)).kind, 'role');
    assert.equal(resolver.podsIndexed, 1);
    assert.equal((await metrics.podsIndexed.get()).values[0]?.value, 1);
    assert.equal(pods.liveCalls.length, 0);
  });

  it('peek answers an indexed IP like lookup, synchronously, and nothing else', async () => {
    const p = pod({ role: 'reader' });
    pods.events!.upsert(p);
    const peeked = resolver.peek(p.ip);
    assert.deepEqual(peeked, await resolver.lookup(p.ip));
    assert.equal(resolver.peek(`::ffff:${p.ip}`), peeked, 'IPv4-mapped IPv6 peer address');
    assert.equal(resolver.peek('10.9.9.9'), undefined, 'unknown: lookup() waits for it instead');
    assert.equal(pods.liveCalls.length, 0);
    pods.events!.upsert({ ...p, phase: 'Succeeded' });
    assert.equal(resolver.peek(p.ip), undefined, 'a finished pod is not indexed');
  });

  it('an unknown IP waits for the watch and is answered when the pod arrives', async () => {
    const p = pod({ role: 'reader' });
    const answer = resolver.lookup(p.ip);
    await clock.advance(300);
    pods.events!.upsert(p);
    const l = await answer;
    assert.equal(l.kind, 'role');
    assert.equal(pods.liveCalls.length, 0, 'no live GET needed');
  });

  it('after the wait, one live GET finds the pod', async () => {
    const p = pod({ role: 'reader' });
    pods.live = async () => [p];
    const answer = resolver.lookup(p.ip);
    await clock.advance(799);
    assert.equal(pods.liveCalls.length, 0, 'still waiting for the watch');
    await clock.advance(1);
    const l = await answer;
    assert.equal(l.kind, 'role');
    assert.deepEqual(pods.liveCalls, [{ ip: p.ip, timeoutMs: 150 }]);
    assert.equal(await value(metrics.liveLookups, { result: 'found' }), 1);
    assert.ok(logs.some((e) => e.msg === 'pod found by live look-up before the watch reported it'));
  });

  it('concurrent requests from one unknown IP share one wait and one live GET', async () => {
    pods.live = async () => [];
    const answers = Promise.all([resolver.lookup('10.2.0.1'), resolver.lookup('10.2.0.1'), resolver.lookup('10.2.0.1')]);
    await clock.advance(800);
    assert.deepEqual(await answers, [{ kind: 'unknown' }, { kind: 'unknown' }, { kind: 'unknown' }]);
    assert.equal(pods.liveCalls.length, 1);
    assert.equal(await value(metrics.unknownIps), 3);
    assert.equal(await value(metrics.liveLookups, { result: 'not-found' }), 1);
  });

  it('an IP the live GET found empty is not looked up again within the hold-off, but the watch still answers it', async () => {
    pods.live = async () => [];
    const first = resolver.lookup('10.2.0.9');
    await clock.advance(800);
    assert.deepEqual(await first, { kind: 'unknown' });
    const again = resolver.lookup('10.2.0.9');
    await clock.advance(800);
    assert.deepEqual(await again, { kind: 'unknown' });
    assert.equal(pods.liveCalls.length, 1, 'held off');
    assert.equal(await value(metrics.liveLookups, { result: 'held-off' }), 1);
    // Within the hold-off a pod the watch reports is still found.
    const waiting = resolver.lookup('10.2.0.9');
    const p = pod({ ip: '10.2.0.9', role: 'reader' });
    pods.events!.upsert(p);
    assert.equal(((await waiting) as { kind: string }).kind, 'role');
    pods.events!.remove(p);
    // After the hold-off, the live GET runs again.
    await clock.advance(5000);
    const later = resolver.lookup('10.2.0.9');
    await clock.advance(800);
    assert.deepEqual(await later, { kind: 'unknown' });
    assert.equal(pods.liveCalls.length, 2);
  });

  it('a dual-stack pod is answered on each IP, any spelling, and on the IPv4-mapped form; peek too', async () => {
    const p = pod({ ips: ['10.5.0.1', 'fd00:5::1'], role: 'reader' });
    pods.events!.upsert(p);
    for (const ip of ['10.5.0.1', 'fd00:5::1', 'FD00:5:0:0::1', '::ffff:10.5.0.1']) {
      const l = await resolver.lookup(ip);
      assert.equal(l.kind === 'role' && l.pod.uid, p.uid, ip);
      assert.equal(resolver.peek(ip)?.kind, 'role', ip);
      assert.equal(resolver.peekUid(ip), p.uid, ip);
    }
    assert.equal(pods.liveCalls.length, 0);
  });

  it('an unknown IPv6 is looked up live in its canonical spelling; only a pod holding it counts', async () => {
    const p = pod({ ips: ['10.5.0.2', 'fd00:5::2'], role: 'reader' });
    const stranger = pod({ ips: ['10.5.0.3', 'fd00:5::3'], role: 'reader' });
    pods.live = async () => [stranger, p];
    const answer = resolver.lookup('FD00:5::0002');
    await clock.advance(800);
    const l = await answer;
    assert.equal(l.kind === 'role' && l.pod.uid, p.uid);
    assert.deepEqual(pods.liveCalls, [{ ip: 'fd00:5::2', timeoutMs: 150 }]);
  });

  it('the live GET applies the liveness rules: a finished pod there is unknown', async () => {
    pods.live = async (ip) => [pod({ ip, phase: 'Succeeded', role: 'reader' })];
    const answer = resolver.lookup('10.2.0.2');
    await clock.advance(800);
    assert.deepEqual(await answer, { kind: 'unknown' });
  });

  it('a failing live GET answers unknown and is counted', async () => {
    pods.live = async () => {
      throw new Error('connection refused');
    };
    const answer = resolver.lookup('10.2.0.3');
    await clock.advance(800);
    assert.deepEqual(await answer, { kind: 'unknown' });
    assert.equal(await value(metrics.liveLookups, { result: 'error' }), 1);
    assert.equal(await value(metrics.unknownIps), 1);
  });

  it('two live pods on one IP: ambiguous from the index and from the live GET, counted', async () => {
    pods.events!.upsert(pod({ ip: '10.3.0.1', role: 'a' }));
    pods.events!.upsert(pod({ ip: '10.3.0.1', role: 'b' }));
    assert.deepEqual(await resolver.lookup('10.3.0.1'), { kind: 'ambiguous' });
    assert.equal(resolver.peekUid('10.3.0.1'), undefined);

    pods.live = async (ip) => [pod({ ip }), pod({ ip })];
    const answer = resolver.lookup('10.3.0.2');
    await clock.advance(800);
    assert.deepEqual(await answer, { kind: 'ambiguous' });
    assert.equal(await value(metrics.ambiguousIps), 2);
  });

  it('IP reuse: a new pod on an IP whose old pod finished gets its own role', async () => {
    const old = pod({ ip: '10.4.0.1', role: 'old-role' });
    pods.events!.upsert(old);
    pods.events!.upsert({ ...old, phase: 'Succeeded' });
    pods.events!.upsert(pod({ ip: '10.4.0.1', role: 'new-role' }));
    const l = await resolver.lookup('10.4.0.1');
    assert.equal((l as Extract<Lookup, { kind: 'role' }>).identity.roleName, 'new-role');
  });

  it('a pod recreated under the same name (new uid, seen in a relist) replaces the old one', async () => {
    const old = pod({ ip: '10.4.0.2', role: 'r' });
    pods.events!.upsert(old);
    pods.events!.upsert({ ...old, uid: 'uid-new', ip: '10.4.0.3', ips: ['10.4.0.3'] });
    assert.equal(resolver.peekUid('10.4.0.2'), undefined);
    assert.equal(resolver.peekUid('10.4.0.3'), 'uid-new');
    assert.equal(resolver.podsIndexed, 1);
  });

  it('a denial carries its fixed code and reason; counting and logging it is the server\'s (it knows what was asked)', async () => {
    namespaces.events!.upsert({ name: 'locked', annotations: { 'iam.amazonaws.com/permitted': '.*/allowed' } });
    const p = pod({ namespace: 'locked', role: 'admin' });
    pods.events!.upsert(p);
    for (let i = 0; i < 3; i++) {
      const l = await resolver.lookup(p.ip);
      assert.equal(l.kind, 'denied');
      const denied = l as Extract<Lookup, { kind: 'denied' }>;
      assert.equal(denied.code, 'not-permitted');
      assert.equal(denied.role, `${BASE}admin`);
      assert.match(denied.reason, /does not match/);
    }
    assert.equal(await value(metrics.denials), 0);
    assert.equal(logs.filter((e) => e.msg === 'credentials denied').length, 0);
  });

  it('no-role for an unannotated pod is not a denial', async () => {
    const p = pod();
    pods.events!.upsert(p);
    assert.equal((await resolver.lookup(p.ip)).kind, 'no-role');
    assert.equal(await value(metrics.denials), 0);
  });

  it('identity events: add, annotation change, namespace policy change, no-op update, and leaving', () => {
    const events: Array<[string, string]> = [];
    const off = resolver.onIdentity((uid, l) => events.push([uid, l ? (l.kind === 'role' ? `role:${l.identity.roleName}` : l.kind) : 'gone']));
    namespaces.events!.upsert({ name: 'team', annotations: {} });
    const p = pod({ namespace: 'team', role: 'r1' });
    pods.events!.upsert(p);
    pods.events!.upsert({ ...p }); // same answer: no event
    namespaces.events!.upsert({ name: 'team', annotations: PERMIT_ALL });
    namespaces.events!.upsert({ name: 'team', annotations: PERMIT_ALL }); // unchanged: no event
    pods.events!.upsert({ ...p, role: 'r2' });
    const q = pod({ namespace: 'team' });
    pods.events!.upsert(q);
    pods.events!.upsert({ ...q, ip: '10.5.5.5' }); // IP change: new answer
    pods.events!.upsert({ ...p, role: 'r2', phase: 'Succeeded' });
    pods.events!.remove({ ...q, ip: '10.5.5.5' });
    pods.events!.remove(q); // already gone: no event
    off();
    pods.events!.upsert(pod({ namespace: 'team' }));
    assert.deepEqual(events, [
      [p.uid, 'denied'],
      [p.uid, 'role:r1'],
      [p.uid, 'role:r2'],
      [q.uid, 'no-role'],
      [q.uid, 'no-role'],
      [p.uid, 'gone'],
      [q.uid, 'gone'],
    ]);
  });

  it('a namespace that disappears turns its pods to denied (restriction on)', () => {
    const events: string[] = [];
    resolver.onIdentity((_uid, l) => events.push(l ? (l.kind === 'denied' ? `denied:${l.code}` : l.kind) : 'gone'));
    pods.events!.upsert(pod({ role: 'r' }));
    namespaces.events!.remove({ name: 'dev', annotations: PERMIT_ALL });
    assert.deepEqual(events, ['role', 'denied:namespace-unknown']);
    assert.equal(resolver.currentIdentities().size, 1);
  });

  it('a throwing identity listener is logged and does not break the feed', async () => {
    resolver.onIdentity(() => {
      throw new Error('listener bug');
    });
    const p = pod({ role: 'r' });
    pods.events!.upsert(p);
    assert.equal((await resolver.lookup(p.ip)).kind, 'role');
    assert.ok(logs.some((e) => e.msg === 'identity listener failed'));
  });

  it('stop() stops both sources; a later unknown IP does not wait', async () => {
    await resolver.stop();
    assert.equal(pods.stopped, true);
    const answer = resolver.lookup('10.6.0.1');
    await settle();
    assert.deepEqual(await answer, { kind: 'unknown' });
    assert.equal(pods.liveCalls.length, 1);
  });
});

/** A pod source that reports how current it is, as the kube adapter does, and answers the shared LIST. */
class SyncedPods extends FakePods {
  state: SyncState = { syncedAt: undefined, lost: 'not listed yet' };
  nodeCalls = 0;
  node: () => Promise<PodInfo[]> = async () => [];
  syncState(): SyncState {
    return this.state;
  }
  listNode(): Promise<PodInfo[]> {
    this.nodeCalls++;
    return this.node();
  }
}

class RecordingTarget implements PrefetchTarget {
  log: string[] = [];
  retain(identity: PrefetchIdentity): void {
    this.log.push(`retain ${identity.sessionName}`);
  }
  release(key: string): void {
    this.log.push(`release ${(JSON.parse(key) as string[])[2]}`);
  }
  async prefetch(): Promise<void> {}
}

describe('Resolver: freshness of the pod index, confirmations, static stability', () => {
  let clock: FakeClock;
  let pods: SyncedPods;
  let namespaces: FakeNamespaces;
  let metrics: Metrics;
  let logs: Array<Record<string, unknown>>;
  let resolver: Resolver;

  const roleOf = (l: Lookup | undefined) => (l?.kind === 'role' ? l.identity.roleName : l?.kind);
  const gauge = async (g: Metrics['podIndexFresh']) => (await g.get()).values[0]?.value;

  beforeEach(() => {
    clock = new FakeClock();
    pods = new SyncedPods();
    namespaces = new FakeNamespaces();
    metrics = createMetrics();
    logs = [];
    resolver = newResolver(pods, namespaces, clock, metrics, logs);
    resolver.start();
    namespaces.events!.upsert({ name: 'dev', annotations: PERMIT_ALL });
    namespaces.events!.synced();
    pods.state.syncedAt = clock.now();
    pods.state.lost = undefined;
    pods.events!.synced();
  });

  afterEach(async () => {
    await resolver.stop();
    assert.equal(clock.timers, 0, 'no timer left behind');
  });

  it('fresh for FRESH_FOR_MS after the last list, event or bookmark: answers from the index, no GET; gauges say so', async () => {
    const a = pod({ role: 'a' });
    pods.events!.upsert(a);
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'a');
    assert.equal(await gauge(metrics.podIndexFresh), 1);
    assert.equal(await gauge(metrics.podIndexStaleness), 0);
    await clock.advance(FRESH_FOR_MS);
    assert.equal(resolver.freshness().fresh, true);
    assert.equal(roleOf(resolver.peek(a.ip)), 'a');
    await clock.advance(1);
    assert.deepEqual(resolver.freshness(), { fresh: false, syncedAt: clock.now() - FRESH_FOR_MS - 1, reason: 'no list, event or bookmark for 40 s' });
    assert.equal(await gauge(metrics.podIndexFresh), 0);
    assert.equal(await gauge(metrics.podIndexStaleness), (FRESH_FOR_MS + 1) / 1000);
    assert.equal(resolver.peek(a.ip), undefined, 'the warm path no longer answers from the index');
    assert.equal(pods.liveCalls.length, 0);
    assert.ok(logs.some((e) => e.msg === 'pod index not known fresh: each pod is confirmed by a live GET before it is answered'));
  });

  it('not fresh: the live GET decides; a new pod on a reused IP gets its own role, never the indexed one', async () => {
    const old = pod({ ip: '10.7.0.1', role: 'old-role' });
    pods.events!.upsert(old);
    pods.state.lost = 'watch failed: HTTP 403';
    const reused = pod({ ip: '10.7.0.1', role: 'new-role' });
    pods.live = async () => [reused];
    assert.equal(resolver.peek('10.7.0.1'), undefined, 'nothing at once: the request must be confirmed');
    const answers = await Promise.all([resolver.lookup('10.7.0.1'), resolver.lookup('10.7.0.1')]);
    assert.deepEqual(answers.map(roleOf), ['new-role', 'new-role']);
    assert.deepEqual(pods.liveCalls, [{ ip: '10.7.0.1', timeoutMs: 500 }], 'one GET for concurrent requests');
    assert.equal(roleOf(resolver.peek('10.7.0.1')), 'new-role', 'the confirmation answers the warm path while valid');
    await clock.advance(CONFIRM_TTL_MS - 1);
    assert.equal(roleOf(await resolver.lookup('10.7.0.1')), 'new-role');
    assert.equal(pods.liveCalls.length, 1, 'reused within its TTL');
    await clock.advance(1);
    assert.equal(resolver.peek('10.7.0.1'), undefined, 'expired');
    pods.live = async () => [];
    assert.equal(roleOf(await resolver.lookup('10.7.0.1')), 'unknown', 'nobody there now: nothing');
    assert.equal(pods.liveCalls.length, 2);
    assert.equal(await value(metrics.confirmations, { result: 'differs' }), 2);
    assert.ok(logs.some((e) => e.msg === 'live GET found another pod than the stale index: answering for it' && e.pod === reused.name));
  });

  it('a confirmation that agrees with the index serves the index\'s answer, counted as same', async () => {
    const a = pod({ role: 'a' });
    pods.events!.upsert(a);
    const fromIndex = await resolver.lookup(a.ip);
    pods.state.lost = 'watch silent';
    pods.live = async () => [{ ...a }];
    assert.equal(await resolver.lookup(a.ip), fromIndex, 'the same answer object: the warm path\'s cache keeps working');
    assert.equal(await value(metrics.confirmations, { result: 'same' }), 1);
    pods.live = async () => [{ ...a, role: 'changed' }];
    await clock.advance(CONFIRM_TTL_MS);
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'changed', 'the API\'s annotations, not the stale index\'s');
  });

  it('API unreachable (network error, timeout, 5xx): the indexed pod keeps being served (static stability); others get nothing', async () => {
    const a = pod({ role: 'a' });
    pods.events!.upsert(a);
    pods.state.lost = 'watch failed: fetch failed';
    pods.live = async () => {
      throw Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
    };
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'a');
    assert.equal(roleOf(resolver.peek(a.ip)), 'a');
    assert.equal(roleOf(await resolver.lookup('10.7.9.9')), 'unknown', 'an IP the index does not hold');
    await clock.advance(CONFIRM_TTL_MS);
    pods.live = async () => {
      throw Object.assign(new Error('GET /api/v1/pods: HTTP 503'), { statusCode: 503 });
    };
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'a');
    await clock.advance(CONFIRM_TTL_MS);
    pods.live = async () => {
      throw new DOMException('The operation was aborted due to timeout', 'TimeoutError');
    };
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'a');
    assert.equal(await value(metrics.confirmations, { result: 'unavailable' }), 4);
    assert.equal(logs.filter((e) => e.msg === 'API server unreachable while the pod index is not fresh: answering from the index' && e.level === 40).length, 1, 'warned once');
  });

  it('API answering but refusing (401, 403, 429): nothing is served from the index', async () => {
    const a = pod({ role: 'a' });
    pods.events!.upsert(a);
    pods.state.lost = 'watch failed: HTTP 403';
    for (const statusCode of [403, 429, 401]) {
      pods.live = async () => {
        throw Object.assign(new Error(`HTTP ${statusCode}`), { statusCode });
      };
      assert.equal(roleOf(await resolver.lookup(a.ip)), 'unknown', String(statusCode));
      assert.equal(roleOf(resolver.peek(a.ip)), 'unknown');
      await clock.advance(CONFIRM_TTL_MS);
    }
    assert.equal(await value(metrics.confirmations, { result: 'refused' }), 3);
  });

  it(`at most ${CONFIRM_RATE} GETs a second across IPs; beyond that the shared LIST of this node answers`, async () => {
    pods.state.lost = 'watch answered 410 Gone; relisting';
    const listed = Array.from({ length: CONFIRM_RATE + 5 }, (_, i) => pod({ ip: `10.8.0.${i + 1}`, role: `r${i}` }));
    pods.live = async (ip) => listed.filter((p) => p.ip === ip);
    pods.node = async () => listed;
    const answers = await Promise.all(listed.map((p) => resolver.lookup(p.ip)));
    assert.deepEqual(answers.map(roleOf), listed.map((p) => p.role));
    assert.equal(pods.liveCalls.length, CONFIRM_RATE);
    assert.equal(pods.nodeCalls, 5);
    await clock.advance(1000);
    await Promise.all(listed.map((p) => resolver.lookup(p.ip)));
    assert.equal(pods.liveCalls.length, 2 * CONFIRM_RATE, 'the bucket refills at the rate');
  });

  it('in sync again (a list, an event, a bookmark): answers from the index at once', async () => {
    const a = pod({ role: 'a' });
    pods.events!.upsert(a);
    pods.state.lost = 'watch answered 410 Gone; relisting';
    pods.live = async () => [a];
    await resolver.lookup(a.ip);
    pods.state.lost = undefined;
    pods.state.syncedAt = clock.now();
    assert.equal(roleOf(resolver.peek(a.ip)), 'a');
    await clock.advance(CONFIRM_TTL_MS);
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'a');
    assert.equal(pods.liveCalls.length, 1);
    assert.ok(logs.some((e) => e.msg === 'pod index fresh again: answering from it'));
  });

  it('a terminating pod keeps its role and its identity stays retained until its phase is terminal or it is gone', async () => {
    const target = new RecordingTarget();
    const prefetcher = new Prefetcher({ cache: target, logger: pino({ level: 'silent' }) });
    resolver.onIdentity((uid, l) => prefetcher.podIdentity(uid, l?.kind === 'role' ? l.identity : undefined));
    const a = pod({ ip: '10.9.0.1', role: 'drainer' });
    pods.events!.upsert(a);
    pods.events!.upsert({ ...a, deleting: true });
    assert.equal(roleOf(await resolver.lookup(a.ip)), 'drainer', 'preStop hooks and graceful drains still get credentials');
    assert.deepEqual(target.log, [`retain dev.${a.name}`], 'the identity stays retained (so refreshed)');
    // The kubelet reports the terminal phase once every container has stopped.
    pods.events!.upsert({ ...a, deleting: true, phase: 'Succeeded' });
    assert.equal(resolver.peek(a.ip), undefined, 'out of the index');
    assert.deepEqual(target.log, [`retain dev.${a.name}`, `release dev.${a.name}`]);

    const b = pod({ ip: '10.9.0.2', role: 'drainer-b' });
    pods.events!.upsert({ ...b, deleting: true });
    const c = pod({ ip: '10.9.0.2', role: 'newcomer' });
    pods.events!.upsert(c);
    assert.equal(roleOf(await resolver.lookup('10.9.0.2')), 'ambiguous', 'two live pods on one IP: nothing');
    pods.events!.remove(b);
    assert.equal(roleOf(await resolver.lookup('10.9.0.2')), 'newcomer');
    prefetcher.stop();
  });
});
