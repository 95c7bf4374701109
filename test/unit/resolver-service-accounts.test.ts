/**
 * ServiceAccountRoles (the role a service account names) with a scripted fetch and the fake clock, and its
 * kube.ts fetch against the fake API server.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { kubeServiceAccountFetch, loadKubeConfig } from '../../src/resolver/kube.ts';
import { ServiceAccountLookupError, ServiceAccountRoles, serviceAccountRole, type ServiceAccountLike } from '../../src/resolver/service-accounts.ts';
import { FakeClock, settle } from '../fakes/clock.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';

describe('ServiceAccountRoles', () => {
  let clock: FakeClock;
  let calls: string[];
  let answer: (ns: string, name: string) => Promise<ServiceAccountLike | undefined>;
  let roles: ServiceAccountRoles;

  beforeEach(() => {
    clock = new FakeClock();
    calls = [];
    answer = async () => ({ metadata: { annotations: { 'iam.amazonaws.com/role': ' reader ', 'iam.amazonaws.com/external-id': 'ext' } } });
    roles = new ServiceAccountRoles({
      clock,
      maxEntries: 3,
      fetch: (ns, name) => {
        calls.push(`${ns}/${name}`);
        return answer(ns, name);
      },
    });
  });

  it('reads the role and external ID annotations (trimmed), and caches them 30 s', async () => {
    assert.deepEqual(await roles.get('dev', 'app'), { role: 'reader', externalId: 'ext' });
    await clock.advance(29_999);
    assert.deepEqual(await roles.get('dev', 'app'), { role: 'reader', externalId: 'ext' });
    assert.deepEqual(calls, ['dev/app']);
    await clock.advance(1);
    answer = async () => ({ metadata: { annotations: { 'iam.amazonaws.com/role': 'writer' } } });
    assert.deepEqual(await roles.get('dev', 'app'), { role: 'writer' });
    assert.deepEqual(calls, ['dev/app', 'dev/app']);
  });

  it('a missing service account, or one without the annotations (or blank ones), names no role', async () => {
    answer = async () => undefined;
    assert.deepEqual(await roles.get('dev', 'ghost'), {});
    assert.deepEqual(serviceAccountRole({ metadata: { annotations: { 'iam.amazonaws.com/role': '  ' } } }), {});
    assert.deepEqual(serviceAccountRole({ metadata: null }), {});
  });

  it('one GET per service account at a time', async () => {
    let release!: () => void;
    answer = () => new Promise((resolve) => (release = () => resolve({ metadata: { annotations: { 'iam.amazonaws.com/role': 'r' } } })));
    const a = roles.get('dev', 'app');
    const b = roles.get('dev', 'app');
    await settle();
    release();
    assert.deepEqual(await a, { role: 'r' });
    assert.deepEqual(await b, { role: 'r' });
    assert.deepEqual(calls, ['dev/app']);
  });

  it('a failed GET: the last answer (up to 10 min old) serves; without one, the caller is told', async () => {
    await roles.get('dev', 'app');
    await clock.advance(60_000);
    answer = async () => {
      throw new Error('HTTP 503');
    };
    assert.deepEqual(await roles.get('dev', 'app'), { role: 'reader', externalId: 'ext' }, 'stale but known');
    await assert.rejects(roles.get('dev', 'other'), (err: unknown) => err instanceof ServiceAccountLookupError && /dev\/other: HTTP 503/.test(err.message));
    await clock.advance(600_000);
    await assert.rejects(roles.get('dev', 'app'), ServiceAccountLookupError, 'too old to serve');
  });

  it('a caller that gives up is told at once; the GET goes on for the others', async () => {
    let release!: () => void;
    answer = () => new Promise((resolve) => (release = () => resolve(undefined)));
    const ac = new AbortController();
    const a = roles.get('dev', 'app', ac.signal);
    const b = roles.get('dev', 'app');
    ac.abort(new Error('gone'));
    await assert.rejects(a, /gone/);
    release();
    assert.deepEqual(await b, {});
  });

  it('keeps at most maxEntries, forgetting the least recently used', async () => {
    for (const name of ['a', 'b', 'c']) await roles.get('dev', name);
    await roles.get('dev', 'a');
    await roles.get('dev', 'd');
    assert.equal(roles.peek('dev', 'b'), undefined, 'b was the least recently used');
    assert.ok(roles.peek('dev', 'a'));
    assert.equal(roles.snapshot().entries, 3);
    roles.invalidate('dev', 'a');
    assert.equal(roles.peek('dev', 'a'), undefined);
  });
});

describe('kubeServiceAccountFetch against the fake API server', () => {
  let kube: FakeKubeApiServer;
  let dir: string;

  before(async () => {
    kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['dev'] });
    dir = await mkdtemp(join(tmpdir(), 'kiam-sa-'));
    await kube.writeKubeconfig(join(dir, 'kubeconfig'));
  });
  after(async () => {
    await kube.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('GETs the service account, keeps only iam.amazonaws.com/* annotations, 404 → undefined, other errors reject', async () => {
    kube.createServiceAccount('dev', 'app', { 'iam.amazonaws.com/role': 'reader', other: 'x'.repeat(100) });
    const fetch = kubeServiceAccountFetch(loadKubeConfig(join(dir, 'kubeconfig')));
    assert.deepEqual(await fetch('dev', 'app', AbortSignal.timeout(5000)), { metadata: { annotations: { 'iam.amazonaws.com/role': 'reader' } } });
    assert.equal(await fetch('dev', 'nope', AbortSignal.timeout(5000)), undefined);
    kube.setOutage(true);
    try {
      await assert.rejects(fetch('dev', 'app', AbortSignal.timeout(5000)));
    } finally {
      kube.setOutage(false);
    }
    const roles = new ServiceAccountRoles({ fetch, clock: new FakeClock() });
    assert.deepEqual(await roles.get('dev', 'app'), { role: 'reader' });
  });
});
