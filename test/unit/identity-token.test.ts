/**
 * TokenIdentity end to end over real HTTPS: tokens the fake API server issues, its TokenReview, the Resolver fed by
 * the kube adapter's node-scoped watch, service accounts read by GET, the namespace policy. Time that matters to
 * TokenIdentity (its cache, its rate bound) runs on the fake clock.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { pino, type Logger } from 'pino';
import type { Counter } from 'prom-client';
import { systemClock } from '../../src/clock.ts';
import { TokenIdentity, tokenId, unverifiedClaims, type TokenIdentityOptions, type TokenVerdict } from '../../src/identity/token-identity.ts';
import { KubeTokenReviewer, type TokenReviewer } from '../../src/identity/token-review.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { createKubeSources, kubeServiceAccountFetch, loadKubeConfig } from '../../src/resolver/kube.ts';
import { Resolver, type PodSource, type SourceEvents } from '../../src/resolver/lookup.ts';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import { Policy } from '../../src/resolver/policy.ts';
import { ServiceAccountRoles } from '../../src/resolver/service-accounts.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';
import { Wakers } from '../fakes/wakers.ts';

const BASE = 'arn:aws:iam::123456789012:role/';
const NODE = 'node-a';

/** Forwards a PodSource and lets a test wait for the watch to have reported something (event driven). */
class TappedPods implements PodSource {
  private readonly wakers = new Wakers();
  readonly seen = new Map<string, PodInfo>();
  constructor(private readonly inner: PodSource & Required<Pick<PodSource, 'getPod' | 'listNode' | 'syncState'>>) {}
  start(events: SourceEvents<PodInfo>): void {
    this.inner.start({
      upsert: (p) => {
        events.upsert(p);
        this.seen.set(p.uid, p);
        this.wake();
      },
      remove: (p) => {
        events.remove(p);
        this.seen.delete(p.uid);
        this.wake();
      },
      synced: () => events.synced(),
    });
  }
  stop = () => this.inner.stop();
  listByIp = (ip: string, t: number) => this.inner.listByIp(ip, t);
  listNode = (t: number) => this.inner.listNode(t);
  getPod = (ns: string, name: string, t: number) => this.inner.getPod(ns, name, t);
  syncState = () => this.inner.syncState();
  private wake(): void {
    this.wakers.wake();
  }
  /** Resolves once pred holds after a watch event (or at once). */
  until(pred: () => boolean, what: string): Promise<void> {
    return this.wakers.until(pred, `the watch: ${what}`);
  }
}

async function value(counter: Counter<string>, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((s, v) => s + v.value, 0);
}

function expectKind<K extends TokenVerdict['kind']>(v: TokenVerdict, kind: K): Extract<TokenVerdict, { kind: K }> {
  assert.equal(v.kind, kind, `verdict: ${JSON.stringify(v)}`);
  return v as Extract<TokenVerdict, { kind: K }>;
}

function roleOf(v: TokenVerdict): string | undefined {
  const ok = expectKind(v, 'ok');
  return ok.lookup.kind === 'role' ? ok.lookup.identity.roleArn : undefined;
}

describe('TokenIdentity with the fake API server', () => {
  let kube: FakeKubeApiServer;
  let dir: string;
  let resolver: Resolver;
  let pods: TappedPods;
  let reviewer: KubeTokenReviewer;
  let policy: Policy;
  let logs: string[];
  let logger: Logger;
  let metrics: Metrics;
  let clock: FakeClock;
  let created: Array<[string, string]>;
  let kc: ReturnType<typeof loadKubeConfig>;

  before(async () => {
    kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0 });
    dir = await mkdtemp(join(tmpdir(), 'kiam-token-identity-'));
    await kube.writeKubeconfig(join(dir, 'kubeconfig'));
    kube.createNamespace('apps', { 'iam.amazonaws.com/permitted': '.*/app-.*' });
    kc = loadKubeConfig(join(dir, 'kubeconfig'));
    logs = [];
    logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(line) });
    metrics = createMetrics();
    const sources = createKubeSources({ kubeConfig: kc, nodeName: NODE, metrics, logger });
    pods = new TappedPods(sources.pods);
    policy = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: NODE });
    resolver = new Resolver({ pods, namespaces: sources.namespaces, policy, clock: systemClock, metrics, logger, podWaitMs: 100, liveLookupTimeoutMs: 2000 });
    resolver.start();
    await resolver.whenReady();
    reviewer = new KubeTokenReviewer({ kubeConfig: kc, timeoutMs: 2000 });
  });

  after(async () => {
    reviewer.close();
    await resolver.stop();
    await kube.waitForWatches(0);
    await kube.close();
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    // Whole seconds, as the tokens' iat and exp are.
    clock = new FakeClock(Math.floor(Date.now() / 1000) * 1000);
    metrics = createMetrics();
    created = [];
  });

  afterEach(() => {
    kube.setTokenReviewFault(undefined);
    for (const [ns, name] of created) if (kube.getPod(ns, name)) kube.deletePod(ns, name);
  });

  function identity(overrides: Partial<TokenIdentityOptions> = {}): TokenIdentity {
    return new TokenIdentity({
      reviewer,
      resolver,
      serviceAccounts: new ServiceAccountRoles({ fetch: kubeServiceAccountFetch(kc), clock }),
      policy,
      audiences: ['kiam'],
      nodeName: NODE,
      clock,
      metrics,
      logger,
      ...overrides,
    });
  }

  /** Create a pod and wait until this node's watch has reported it (pods of other nodes: not waited for). */
  async function createPod(name: string, opts: { ns?: string; node?: string; role?: string; sa?: string; hostNetwork?: boolean; phase?: string; ip?: string } = {}): Promise<string> {
    const ns = opts.ns ?? 'apps';
    created.push([ns, name]);
    const uid = kube.createPod({
      metadata: { name, namespace: ns, annotations: opts.role ? { 'iam.amazonaws.com/role': opts.role } : {} },
      spec: { nodeName: opts.node ?? NODE, serviceAccountName: opts.sa ?? 'default', hostNetwork: opts.hostNetwork ?? false, containers: [{ name: 'c', image: 'busybox' }] },
      status: { phase: opts.phase ?? 'Running', podIP: opts.ip ?? `10.20.0.${created.length + 10}` },
    }).metadata.uid as string;
    if ((opts.node ?? NODE) === NODE) await pods.until(() => pods.seen.has(uid), `pod ${name}`);
    return uid;
  }

  const token = (pod: string, extra: Partial<Parameters<FakeKubeApiServer['issueToken']>[0]> = {}) => kube.issueToken({ namespace: 'apps', pod, audience: 'kiam', ...extra });

  it('a token of a live pod of this node gets that pod and its role; a second request is answered from the cache', async () => {
    const uid = await createPod('web', { role: 'app-web' });
    const id = identity();
    const t = token('web');
    const reviews = kube.tokenReviews;
    const v = expectKind(await id.identify(t), 'ok');
    assert.equal(v.pod.uid, uid);
    assert.equal(v.roleFrom, 'pod');
    assert.equal(roleOf(v), `${BASE}app-web`);
    assert.equal(v.tokenId, tokenId(t));
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-web`);
    assert.equal(kube.tokenReviews, reviews + 1, 'one TokenReview for two requests');
    assert.equal(await value(metrics.tokenReviews, { result: 'ok' }), 1);
    assert.equal((await metrics.tokenReviewCacheEntries.get()).values[0]?.value, 1);
    const state = id.snapshot();
    assert.equal(state.cacheEntries, 1);
    assert.equal(state.validations.ok, 2);
    assert.deepEqual(state.reviews, { ok: 1, unauthenticated: 0, error: 0, limited: 0 });
    assert.equal(state.reviewsPerSecond, 0.1);
  });

  it('peek() gives the cached verdict without waiting, and only while every input is at hand', async () => {
    await createPod('quick', { role: 'app-quick' });
    await createPod('via-sa', { sa: 'reporter' });
    kube.createServiceAccount('apps', 'reporter', { 'iam.amazonaws.com/role': 'app-reporter' });
    const id = identity();
    const t = token('quick', { expirationSeconds: 3600, issuedAt: clock.now() / 1000 });
    assert.equal(id.peek(t), undefined, 'nothing reviewed yet');
    const asked = expectKind(await id.identify(t), 'ok');
    const peeked = id.peek(t);
    assert.ok(peeked, 'reviewed, pod in the fresh index');
    assert.equal(peeked.pod, asked.pod);
    assert.deepEqual(peeked.lookup, asked.lookup);
    assert.equal(id.snapshot().validations.ok, 2, 'peek counts as a validation');
    assert.equal(id.peek(token('quick')), undefined, 'another token of the same pod: not reviewed yet');

    // The service account's role is used only while its cached answer is fresh (30 s).
    const s = token('via-sa', { expirationSeconds: 3600, issuedAt: clock.now() / 1000 });
    assert.equal(roleOf(await id.identify(s)), `${BASE}app-reporter`);
    assert.equal(roleOf(id.peek(s)!), `${BASE}app-reporter`);
    await clock.advance(30_000);
    assert.equal(id.peek(s), undefined, 'the service account answer is stale: identify() asks again');
    assert.equal(roleOf(await id.identify(s)), `${BASE}app-reporter`);
    assert.ok(id.peek(s));

    // Past the review's cache lifetime (exp - 30 s), nothing is peeked.
    await clock.advance(3600_000 - 30_000 - 30_000);
    assert.equal(id.peek(t), undefined, 'the review is no longer cached');

    // A pod that is gone is never peeked, even with its review cached (a new identity: the API server's clock is real).
    const now = identity({ clock: new FakeClock(Math.floor(Date.now() / 1000) * 1000) });
    const g = token('quick');
    expectKind(await now.identify(g), 'ok');
    assert.ok(now.peek(g));
    kube.deletePod('apps', 'quick');
    await pods.until(() => ![...pods.seen.values()].some((p) => p.name === 'quick'), 'quick deleted');
    assert.equal(now.peek(g), undefined);
  });

  it('concurrent requests with one token share one TokenReview', async () => {
    await createPod('shared', { role: 'app-shared' });
    const id = identity();
    const t = token('shared');
    const reviews = kube.tokenReviews;
    const all = await Promise.all([id.identify(t), id.identify(t), id.identify(t)]);
    for (const v of all) assert.equal(roleOf(v), `${BASE}app-shared`);
    assert.equal(kube.tokenReviews, reviews + 1);
  });

  it('the cache holds until 30 s before the token expires, and 10 min at most', async () => {
    await createPod('short', { role: 'app-short' });
    const id = identity();
    const shortLived = token('short', { expirationSeconds: 90, issuedAt: clock.now() / 1000 });
    const reviews = kube.tokenReviews;
    await id.identify(shortLived);
    await clock.advance(59_000);
    await id.identify(shortLived);
    assert.equal(kube.tokenReviews, reviews + 1, 'cached until exp - 30 s');
    await clock.advance(2_000);
    assert.equal(roleOf(await id.identify(shortLived)), `${BASE}app-short`, 'the API server still accepts it');
    assert.equal(kube.tokenReviews, reviews + 2, 'past exp - 30 s: asked again');

    const longLived = token('short', { expirationSeconds: 86_400 });
    await id.identify(longLived);
    await clock.advance(599_000);
    await id.identify(longLived);
    assert.equal(kube.tokenReviews, reviews + 3);
    await clock.advance(2_000);
    await id.identify(longLived);
    assert.equal(kube.tokenReviews, reviews + 4, 'asked again after 10 min');
  });

  it('a forged token is unauthenticated, and the refusal is cached 10 s', async () => {
    await createPod('victim', { role: 'app-victim' });
    await createPod('mallory', { role: 'app-mallory' });
    const id = identity();
    const good = token('mallory');
    const [h, p, sig] = good.split('.') as [string, string, string];
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
    payload['kubernetes.io'].pod = { name: 'victim', uid: kube.getPod('apps', 'victim')!.metadata.uid };
    const forged = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${sig}`;
    const reviews = kube.tokenReviews;
    const v = expectKind(await id.identify(forged), 'unauthenticated');
    assert.equal(v.code, 'invalid');
    assert.match(v.reason, /signature/);
    expectKind(await id.identify(forged), 'unauthenticated');
    assert.equal(kube.tokenReviews, reviews + 1, 'the refusal is cached');
    await clock.advance(10_000);
    expectKind(await id.identify(forged), 'unauthenticated');
    assert.equal(kube.tokenReviews, reviews + 2, 'and asked again after 10 s');
    assert.equal(await value(metrics.tokenReviews, { result: 'unauthenticated' }), 2);
  });

  it('an expired token is refused without asking; one the API server finds expired is unauthenticated too', async () => {
    await createPod('old', { role: 'app-old' });
    const now = Math.floor(Date.now() / 1000);
    const expired = token('old', { issuedAt: now - 7200, expirationSeconds: 3600 });
    const reviews = kube.tokenReviews;
    const v = expectKind(await identity().identify(expired), 'unauthenticated');
    assert.equal(v.code, 'expired');
    assert.equal(kube.tokenReviews, reviews, 'no TokenReview for a token whose exp has passed');
    // Our clock behind the API server's: the token looks valid here, the API server says it has expired.
    const lagging = identity({ clock: new FakeClock(Date.now() - 3 * 3600_000) });
    const w = expectKind(await lagging.identify(expired), 'unauthenticated');
    assert.equal(w.code, 'expired');
    assert.match(w.reason, /TokenReview: .*expired/);
    assert.equal(kube.tokenReviews, reviews + 1);
  });

  it('a token for another audience is refused without asking; an answer for none of ours is unauthenticated', async () => {
    await createPod('aud', { role: 'app-aud' });
    const reviews = kube.tokenReviews;
    const v = expectKind(await identity().identify(token('aud', { audience: 'vault' })), 'unauthenticated');
    assert.equal(v.code, 'wrong-audience');
    assert.equal(kube.tokenReviews, reviews);
    // The API server's own verdict on the audience: tokens whose aud includes ours but the server grants another.
    const lying: TokenReviewer = { review: async () => ({ authenticated: true, namespace: 'apps', podName: 'aud', podUid: 'x', audiences: ['other'] }) };
    const w = expectKind(await identity({ reviewer: lying }).identify(token('aud')), 'unauthenticated');
    assert.equal(w.code, 'wrong-audience');
    const both = expectKind(await identity({ audiences: ['other', 'kiam'] }).identify(token('aud', { audience: 'vault' })), 'unauthenticated');
    assert.equal(both.code, 'wrong-audience');
    assert.equal(roleOf(await identity({ audiences: ['other', 'kiam'] }).identify(token('aud'))), `${BASE}app-aud`, 'any of our audiences will do');
  });

  it('garbage is unauthenticated without asking', async () => {
    const reviews = kube.tokenReviews;
    for (const bad of ['', 'abc', 'a.b', 'a.b.c.d', `x.${Buffer.from('[]').toString('base64url')}.y`, 'a.!!.c']) {
      assert.equal(expectKind(await identity().identify(bad), 'unauthenticated').code, 'malformed', bad);
    }
    assert.equal(kube.tokenReviews, reviews);
  });

  it("a token of another node's pod gets nothing: by the node claim, or (without one) by the pod's spec.nodeName", async () => {
    await createPod('elsewhere', { role: 'app-elsewhere', node: 'node-b' });
    const id = identity();
    const v = expectKind(await id.identify(token('elsewhere')), 'forbidden');
    assert.equal(v.code, 'other-node');
    assert.match(v.reason, /bound to node node-b, not node-a/);
    // Before Kubernetes 1.30 the TokenReview names no node: the pod is looked up live.
    const w = expectKind(await id.identify(token('elsewhere', { bindNode: false })), 'forbidden');
    assert.equal(w.code, 'other-node');
    assert.match(w.reason, /runs on node node-b/);
  });

  it('a pod of this node that the token names but the watch has not reported yet is found by a live GET', async () => {
    kube.setWatchFault('silent');
    try {
      // No watch delivers: the index never sees the pod; findPod waits podWaitMs, then GETs it.
      created.push(['apps', 'unseen']);
      kube.createPod({ metadata: { name: 'unseen', namespace: 'apps', annotations: { 'iam.amazonaws.com/role': 'app-unseen' } }, spec: { nodeName: NODE }, status: { phase: 'Running', podIP: '10.20.9.9' } });
      const v = await identity().identify(token('unseen', { bindNode: false }));
      assert.equal(roleOf(v), `${BASE}app-unseen`);
    } finally {
      kube.setWatchFault(undefined);
      kube.closeWatches();
    }
  });

  it('the pod gone after its token was reviewed: 403 pod-not-found, then the API server refuses the token (401)', async () => {
    await createPod('gone', { role: 'app-gone' });
    const id = identity();
    const t = token('gone');
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-gone`);
    const uid = kube.getPod('apps', 'gone')!.metadata.uid;
    kube.deletePod('apps', 'gone');
    await pods.until(() => !pods.seen.has(uid), 'pod gone');
    const v = expectKind(await id.identify(t), 'forbidden');
    assert.equal(v.code, 'pod-not-found');
    const w = expectKind(await id.identify(t), 'unauthenticated');
    assert.match(w.reason, /invalidated/);
  });

  it('a pod recreated under the same name: the old token is a uid mismatch, then refused by the API server', async () => {
    const oldUid = await createPod('again', { role: 'app-again' });
    const id = identity();
    const t = token('again');
    assert.equal(expectKind(await id.identify(t), 'ok').pod.uid, oldUid);
    kube.deletePod('apps', 'again');
    const newUid = await createPod('again', { role: 'app-again' });
    const v = expectKind(await id.identify(t), 'forbidden');
    assert.equal(v.code, 'uid-mismatch');
    assert.ok(v.reason.includes(newUid));
    expectKind(await id.identify(t), 'unauthenticated');
    assert.equal(expectKind(await id.identify(token('again')), 'ok').pod.uid, newUid, 'the new pod’s token works');
  });

  it('a token copied to another pod still names the pod it was issued to', async () => {
    const aUid = await createPod('owner', { role: 'app-owner' });
    await createPod('thief', { role: 'app-thief' });
    const stolen = token('owner');
    // Whoever presents it (the thief's container, say), the answer is the owner's pod and role.
    const v = expectKind(await identity().identify(stolen), 'ok');
    assert.equal(v.pod.uid, aUid);
    assert.equal(v.pod.name, 'owner');
    assert.equal(roleOf(v), `${BASE}app-owner`);
  });

  it('a hostNetwork pod gets its own role (the IP path never answers it)', async () => {
    const uid = await createPod('host', { role: 'app-host', hostNetwork: true, ip: '192.168.50.1' });
    kube.clearLog();
    const v = expectKind(await identity().identify(token('host')), 'ok');
    assert.deepEqual(
      kube.requests.filter((r) => r.method === 'GET').map((r) => r.path),
      [],
      'answered from the watch: no live GET of the pod',
    );
    assert.equal(v.pod.uid, uid);
    assert.equal(v.pod.hostNetwork, true);
    assert.equal(roleOf(v), `${BASE}app-host`);
    assert.equal((await resolver.lookup('192.168.50.1')).kind, 'unknown', 'the IP path still ignores hostNetwork pods');
  });

  it('a finished pod gets nothing; a terminating one keeps its credentials', async () => {
    await createPod('done', { role: 'app-done' });
    await createPod('leaving', { role: 'app-leaving' });
    const id = identity();
    const t = token('done');
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-done`);
    const uid = kube.getPod('apps', 'done')!.metadata.uid;
    kube.patchPod('apps', 'done', { status: { phase: 'Succeeded' } });
    await pods.until(() => pods.seen.get(uid)?.phase === 'Succeeded', 'pod done');
    assert.equal(expectKind(await id.identify(t), 'forbidden').code, 'pod-not-live');

    const leavingUid = kube.getPod('apps', 'leaving')!.metadata.uid;
    kube.markDeleting('apps', 'leaving');
    await pods.until(() => pods.seen.get(leavingUid)?.deleting === true, 'pod terminating');
    assert.equal(roleOf(await id.identify(token('leaving'))), `${BASE}app-leaving`);
  });

  it("the service account's role when the pod names none; the pod's annotation wins; the SA's external ID goes with the SA's role only", async () => {
    kube.createServiceAccount('apps', 'team', { 'iam.amazonaws.com/role': 'app-team', 'iam.amazonaws.com/external-id': 'team-ext' });
    try {
      await createPod('by-sa', { sa: 'team' });
      await createPod('own-role', { sa: 'team', role: 'app-own' });
      await createPod('no-role', { sa: 'default' });
      const id = identity();
      const bySa = expectKind(await id.identify(token('by-sa')), 'ok');
      assert.equal(bySa.roleFrom, 'service-account');
      assert.equal(bySa.lookup.kind === 'role' && bySa.lookup.identity.roleArn, `${BASE}app-team`);
      assert.equal(bySa.lookup.kind === 'role' && bySa.lookup.identity.externalId, 'team-ext');
      assert.equal(bySa.pod.role, undefined, 'the pod is reported as it is');
      const own = expectKind(await id.identify(token('own-role')), 'ok');
      assert.equal(own.roleFrom, 'pod');
      assert.equal(own.lookup.kind === 'role' && own.lookup.identity.roleArn, `${BASE}app-own`);
      assert.equal(own.lookup.kind === 'role' && own.lookup.identity.externalId, undefined);
      const none = expectKind(await id.identify(token('no-role')), 'ok');
      assert.equal(none.roleFrom, 'none');
      assert.equal(none.lookup.kind, 'no-role', 'no such service account: no role');
    } finally {
      kube.deleteObject('serviceaccounts', 'apps', 'team');
    }
  });

  it('the service account cannot be read: unavailable (only when the pod names no role itself)', async () => {
    await createPod('sa-down', { sa: 'team' });
    await createPod('sa-down-own', { sa: 'team', role: 'app-own' });
    const failing = { get: async () => Promise.reject(new Error('service account apps/team: HTTP 503')) };
    const id = identity({ serviceAccounts: failing });
    const v = expectKind(await id.identify(token('sa-down')), 'unavailable');
    assert.equal(v.code, 'service-account-failed');
    assert.match(v.reason, /HTTP 503/);
    assert.equal(roleOf(await id.identify(token('sa-down-own'))), `${BASE}app-own`, 'the pod annotation needs no service account');
  });

  it('the namespace policy applies to the service account’s role as to the pod’s', async () => {
    kube.createServiceAccount('apps', 'outsider', { 'iam.amazonaws.com/role': 'admin' });
    try {
      await createPod('sneaky', { sa: 'outsider' });
      const v = expectKind(await identity().identify(token('sneaky')), 'ok');
      assert.equal(v.lookup.kind, 'denied');
      assert.equal(v.lookup.kind === 'denied' && v.lookup.code, 'not-permitted');
      await createPod('sneaky-pod', { role: 'admin' });
      const w = expectKind(await identity().identify(token('sneaky-pod')), 'ok');
      assert.equal(w.lookup.kind === 'denied' && w.lookup.code, 'not-permitted');
    } finally {
      kube.deleteObject('serviceaccounts', 'apps', 'outsider');
    }
  });

  it('a change of the namespace policy applies at once to a token already reviewed', async () => {
    await createPod('policed', { role: 'app-policed' });
    const id = identity();
    const t = token('policed');
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-policed`);
    const changed = (permitted: string) =>
      new Promise<void>((resolve) => {
        const off = resolver.onIdentity(() => {
          if (resolver.namespaceAnnotations('apps')?.['iam.amazonaws.com/permitted'] !== permitted) return;
          off();
          resolve();
        });
        kube.patchNamespace('apps', { metadata: { annotations: { 'iam.amazonaws.com/permitted': permitted } } });
      });
    await changed('nothing');
    try {
      const v = expectKind(await id.identify(t), 'ok');
      assert.equal(v.lookup.kind === 'denied' && v.lookup.code, 'not-permitted');
    } finally {
      await changed('.*/app-.*');
    }
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-policed`);
  });

  it('a token bound to no pod is forbidden', async () => {
    const v = expectKind(await identity().identify(kube.issueToken({ namespace: 'apps', serviceAccount: 'default', audience: 'kiam' })), 'forbidden');
    assert.equal(v.code, 'no-pod-claim');
  });

  it('TokenReview API down: unavailable (not cached), and served again once it is back', async () => {
    await createPod('flaky', { role: 'app-flaky' });
    const id = identity();
    const t = token('flaky');
    kube.setTokenReviewFault(503);
    const v = expectKind(await id.identify(t), 'unavailable');
    assert.equal(v.code, 'review-failed');
    assert.match(v.reason, /HTTP 503/);
    assert.equal(await value(metrics.tokenReviews, { result: 'error' }), 1);
    assert.match(id.snapshot().lastError?.message ?? '', /503/);
    kube.setTokenReviewFault(undefined);
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-flaky`);
  });

  it('a TokenReview that never answers times out: unavailable', async () => {
    await createPod('stalled', { role: 'app-stalled' });
    kube.setTokenReviewFault(0);
    const id = identity({ reviewer: new KubeTokenReviewer({ kubeConfig: kc, timeoutMs: 200 }) });
    const v = expectKind(await id.identify(token('stalled')), 'unavailable');
    assert.match(v.reason, /timed out/);
  });

  it('cached tokens keep being served while the API is down', async () => {
    await createPod('steady', { role: 'app-steady' });
    const id = identity();
    const t = token('steady');
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-steady`);
    kube.setTokenReviewFault(503);
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-steady`);
  });

  it('beyond the rate bound, new tokens are unavailable and cached ones still served', async () => {
    await createPod('busy', { role: 'app-busy' });
    const id = identity({ reviewRate: 1, reviewBurst: 2 });
    const [a, b, c] = [token('busy'), token('busy'), token('busy')];
    assert.equal(roleOf(await id.identify(a)), `${BASE}app-busy`);
    assert.equal(roleOf(await id.identify(b)), `${BASE}app-busy`);
    const reviews = kube.tokenReviews;
    const v = expectKind(await id.identify(c), 'unavailable');
    assert.equal(v.code, 'rate-limited');
    assert.equal(kube.tokenReviews, reviews, 'not sent');
    assert.equal(await value(metrics.tokenReviews, { result: 'limited' }), 1);
    assert.equal(roleOf(await id.identify(a)), `${BASE}app-busy`, 'a cached token is still served');
    await clock.advance(1000);
    assert.equal(roleOf(await id.identify(c)), `${BASE}app-busy`, 'a second later there is room again');
  });

  it('a caller that gives up gets unavailable at once; the review goes on for the others', async () => {
    await createPod('impatient', { role: 'app-impatient' });
    kube.setTokenReviewFault(0);
    const id = identity({ reviewer: new KubeTokenReviewer({ kubeConfig: kc, timeoutMs: 300 }) });
    const ac = new AbortController();
    const t = token('impatient');
    const first = id.identify(t, ac.signal);
    const second = id.identify(t);
    await kube.waitForRequest((r) => r.path.endsWith('/tokenreviews') && r.status === -1);
    ac.abort(new Error('client went away'));
    assert.equal(expectKind(await first, 'unavailable').code, 'aborted');
    assert.equal(expectKind(await second, 'unavailable').code, 'review-failed', 'the other caller waits for the review, which times out');
  });

  it('never logs a token, nor puts one in a verdict', async () => {
    logs.length = 0;
    await createPod('secret', { role: 'app-secret' });
    const id = identity();
    const tokens = [token('secret'), token('secret', { audience: 'vault' }), token('secret', { issuedAt: 1, expirationSeconds: 10 })];
    const verdicts: TokenVerdict[] = [];
    for (const t of tokens) verdicts.push(await id.identify(t));
    kube.setTokenReviewFault(503);
    verdicts.push(await id.identify(token('secret')));
    kube.setTokenReviewFault(undefined);
    const [h, p] = tokens[0]!.split('.') as [string, string];
    verdicts.push(await id.identify(`${h}.${p}.AAAA`));
    assert.ok(logs.some((l) => l.includes('token refused')), 'refusals are logged (at debug)');
    const everything = logs.join('\n') + JSON.stringify(verdicts);
    for (const t of [...tokens, `${h}.${p}.AAAA`]) {
      for (const part of t.split('.')) if (part.length >= 16) assert.ok(!everything.includes(part), 'no part of a token is logged or returned');
    }
    assert.ok(logs.some((l) => l.includes(tokenId(tokens[1]!))), 'the token is named by its hash');
  });
});

describe('unverifiedClaims', () => {
  it('reads exp and aud from the payload, undefined for what is no JWT', () => {
    const jwt = (payload: unknown) => `e30.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`;
    assert.deepEqual(unverifiedClaims(jwt({ exp: 5, aud: 'kiam' })), { exp: 5, aud: ['kiam'] });
    assert.deepEqual(unverifiedClaims(jwt({ aud: ['a', 1, 'b'] })), { aud: ['a', 'b'] });
    assert.deepEqual(unverifiedClaims(jwt({ exp: 'soon' })), {});
    assert.equal(unverifiedClaims(jwt([1])), undefined);
    assert.equal(unverifiedClaims('e30.bm90IGpzb24.c2ln'), undefined);
    assert.equal(unverifiedClaims('a.b'), undefined);
  });
});

describe('TokenIdentity cache bounds (stubbed review and pods)', () => {
  const pod: PodInfo = { uid: 'u1', name: 'web', namespace: 'apps', ip: '10.0.0.1', ips: ['10.0.0.1'], serviceAccount: 'default', phase: 'Running', hostNetwork: false, deleting: false, role: 'app-web' };
  const jwt = (payload: Record<string, unknown>) => `e30.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`;

  function setup(overrides: Partial<TokenIdentityOptions> = {}) {
    const clock = new FakeClock();
    let reviews = 0;
    const id = new TokenIdentity({
      reviewer: {
        review: async () => {
          reviews++;
          return { authenticated: true, namespace: 'apps', serviceAccount: 'default', podName: 'web', podUid: 'u1', audiences: ['kiam'] };
        },
      },
      resolver: { findPod: async () => ({ kind: 'pod', pod, from: 'index' }), namespaceAnnotations: () => ({ 'iam.amazonaws.com/permitted': '.*' }) },
      serviceAccounts: { get: async () => ({}) },
      policy: new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{pod}', nodeName: NODE }),
      audiences: ['kiam'],
      nodeName: NODE,
      clock,
      metrics: createMetrics(),
      logger: pino({ level: 'silent' }),
      ...overrides,
    });
    return { id, clock, reviews: () => reviews };
  }

  it('keeps at most cacheSize reviews, forgetting the least recently used', async () => {
    const { id, reviews } = setup({ cacheSize: 2 });
    const [a, b, c] = ['a', 'b', 'c'].map((jti) => jwt({ jti, aud: ['kiam'] }));
    await id.identify(a!);
    await id.identify(b!);
    await id.identify(a!);
    await id.identify(c!);
    assert.equal(reviews(), 3);
    assert.equal(id.snapshot().cacheEntries, 2);
    await id.identify(a!);
    assert.equal(reviews(), 3, 'a was used last: kept');
    await id.identify(b!);
    assert.equal(reviews(), 4, 'b was the least recently used: forgotten');
  });

  it('a token whose exp cannot be read is cached 60 s', async () => {
    const { id, clock, reviews } = setup();
    const t = jwt({ aud: 'kiam' });
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-web`);
    await clock.advance(59_999);
    await id.identify(t);
    assert.equal(reviews(), 1);
    await clock.advance(1);
    await id.identify(t);
    assert.equal(reviews(), 2);
  });

  it('a token that expires within 30 s is answered but not cached', async () => {
    const { id, clock, reviews } = setup();
    const t = jwt({ aud: 'kiam', exp: clock.now() / 1000 + 20 });
    assert.equal(roleOf(await id.identify(t)), `${BASE}app-web`);
    await id.identify(t);
    assert.equal(reviews(), 2);
    assert.equal(id.snapshot().cacheEntries, 0);
  });
});
