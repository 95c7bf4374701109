/**
 * ServiceAccountPrefetch (src/identity/service-account-prefetch.ts): with --container-credentials, a pod whose role
 * comes from its service account is prefetched too; the resolver's answer stands for everything else.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { ServiceAccountPrefetch } from '../../src/identity/service-account-prefetch.ts';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import { Policy } from '../../src/resolver/policy.ts';
import type { ServiceAccountRole } from '../../src/resolver/service-accounts.ts';
import type { Lookup, RoleIdentity } from '../../src/resolver/types.ts';
import { settle } from '../fakes/clock.ts';

const BASE = 'arn:aws:iam::123456789012:role/';
const NS = { 'iam.amazonaws.com/permitted': `${BASE}.*` };

function pod(over: Partial<PodInfo> = {}): PodInfo {
  return { uid: 'u1', name: 'app-1', namespace: 'team-a', ip: '10.0.0.9', ips: ['10.0.0.9'], serviceAccount: 'app', phase: 'Running', hostNetwork: false, deleting: false, ...over };
}

class Deferred<T> {
  resolve!: (v: T) => void;
  reject!: (e: unknown) => void;
  readonly promise = new Promise<T>((res, rej) => {
    this.resolve = res;
    this.reject = rej;
  });
}

function harness(pods: PodInfo[], namespaces: Record<string, Record<string, string>> = { 'team-a': NS }) {
  const policy = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-1' });
  const calls: Array<[string, string | undefined]> = [];
  const asked: string[] = [];
  const pending = new Map<string, Deferred<ServiceAccountRole>>();
  const byUid = new Map(pods.map((p) => [p.uid, p]));
  const sap = new ServiceAccountPrefetch({
    resolver: { podByUid: (uid) => byUid.get(uid), namespaceAnnotations: (name) => namespaces[name] },
    serviceAccounts: {
      get(namespace, name) {
        asked.push(`${namespace}/${name}`);
        const d = new Deferred<ServiceAccountRole>();
        pending.set(`${namespace}/${name}#${asked.length}`, d);
        return d.promise;
      },
    },
    policy,
    target: (uid: string, identity: RoleIdentity | undefined) => calls.push([uid, identity?.roleArn]),
    logger: pino({ level: 'silent' }),
  });
  const lookupOf = (p: PodInfo): Lookup => policy.evaluate(p, namespaces[p.namespace]);
  /** The nth service-account read's answer. */
  const answer = (n: number, value: ServiceAccountRole | Error) => {
    const d = [...pending.entries()].find(([k]) => k.endsWith(`#${n}`))![1];
    if (value instanceof Error) d.reject(value);
    else d.resolve(value);
  };
  return { sap, calls, asked, lookupOf, answer, byUid };
}

describe('ServiceAccountPrefetch', () => {
  it("a pod with its own role annotation: the resolver's answer at once, no service-account read", () => {
    const p = pod({ role: 'pod-role' });
    const h = harness([p]);
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    assert.deepEqual(h.calls, [['u1', `${BASE}pod-role`]]);
    assert.deepEqual(h.asked, []);
  });

  it("no pod annotation, the service account names a role: that role is prefetched (the namespace's policy applied)", async () => {
    const p = pod();
    const h = harness([p]);
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    assert.deepEqual(h.asked, ['team-a/app']);
    assert.deepEqual(h.calls, [], 'nothing until the service account is read');
    h.answer(1, { role: 'sa-role', externalId: 'ext-1' });
    await settle();
    assert.deepEqual(h.calls, [['u1', `${BASE}sa-role`]]);
  });

  it('a service-account role the namespace does not permit warms nothing', async () => {
    const p = pod({ namespace: 'locked' });
    const h = harness([p], { locked: { 'iam.amazonaws.com/permitted': `${BASE}only-this` } });
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    h.answer(1, { role: 'sa-role' });
    await settle();
    assert.deepEqual(h.calls, [['u1', undefined]]);
  });

  it("no annotation on either, or the read failing: the resolver's answer (nothing, or the default role)", async () => {
    const p = pod();
    const h = harness([p]);
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    h.answer(1, {});
    await settle();
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    h.answer(2, new Error('HTTP 403'));
    await settle();
    assert.deepEqual(h.calls, [['u1', undefined], ['u1', undefined]]);
  });

  it('a pod gone: released at once, and a service-account answer still on its way is dropped', async () => {
    const p = pod();
    const h = harness([p]);
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    h.sap.podIdentity(p.uid, undefined);
    assert.deepEqual(h.calls, [['u1', undefined]]);
    h.answer(1, { role: 'sa-role' });
    await settle();
    assert.deepEqual(h.calls, [['u1', undefined]], 'the late answer does not bring the pod back');
  });

  it('only the newest event of a pod counts: answers arriving out of order', async () => {
    const p = pod();
    const h = harness([p]);
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    h.sap.podIdentity(p.uid, h.lookupOf(p));
    h.answer(2, { role: 'newer' });
    await settle();
    h.answer(1, { role: 'older' });
    await settle();
    assert.deepEqual(h.calls, [['u1', `${BASE}newer`]]);
  });
});
