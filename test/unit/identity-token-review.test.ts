/**
 * KubeTokenReviewer (the TokenReview adapter) against the fake API server over HTTPS, and parseTokenReviewStatus.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { KubeTokenReviewer, parseTokenReviewStatus, TokenReviewError } from '../../src/identity/token-review.ts';
import { loadKubeConfig } from '../../src/resolver/kube.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';

describe('parseTokenReviewStatus', () => {
  it('reads the service account, the pod, the node and the audiences', () => {
    assert.deepEqual(
      parseTokenReviewStatus({
        authenticated: true,
        user: {
          username: 'system:serviceaccount:dev:app',
          uid: 'sa-uid',
          groups: ['system:serviceaccounts'],
          extra: {
            'authentication.kubernetes.io/pod-name': ['web'],
            'authentication.kubernetes.io/pod-uid': ['pod-uid'],
            'authentication.kubernetes.io/node-name': ['node-a'],
          },
        },
        audiences: ['kiam', 7],
      }),
      { authenticated: true, username: 'system:serviceaccount:dev:app', namespace: 'dev', serviceAccount: 'app', podName: 'web', podUid: 'pod-uid', nodeName: 'node-a', audiences: ['kiam'] },
    );
  });

  it('leaves out what is missing or not a service account, and keeps the error', () => {
    assert.deepEqual(parseTokenReviewStatus({ user: {}, error: '[invalid bearer token]' }), { authenticated: false, error: '[invalid bearer token]' });
    assert.deepEqual(parseTokenReviewStatus({ authenticated: true, user: { username: 'alice', extra: { 'authentication.kubernetes.io/pod-name': [] } } }), { authenticated: true, username: 'alice' });
    assert.deepEqual(parseTokenReviewStatus(undefined), { authenticated: false });
    assert.deepEqual(parseTokenReviewStatus({ authenticated: 'yes' }), { authenticated: false });
  });
});

describe('KubeTokenReviewer against the fake API server', () => {
  let kube: FakeKubeApiServer;
  let dir: string;
  let reviewer: KubeTokenReviewer;

  before(async () => {
    kube = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['dev'] });
    dir = await mkdtemp(join(tmpdir(), 'kiam-token-review-'));
    await kube.writeKubeconfig(join(dir, 'kubeconfig'));
    reviewer = new KubeTokenReviewer({ kubeConfig: loadKubeConfig(join(dir, 'kubeconfig')), timeoutMs: 2000 });
    kube.createPod({ metadata: { name: 'web', namespace: 'dev' }, spec: { nodeName: 'node-a', serviceAccountName: 'app' } });
  });
  afterEach(() => kube.setTokenReviewFault(undefined));
  after(async () => {
    reviewer.close();
    await kube.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('asks with our audiences and reads the answer', async () => {
    const token = kube.issueToken({ namespace: 'dev', pod: 'web', audience: 'kiam' });
    const r = await reviewer.review(token, ['kiam']);
    assert.equal(r.authenticated, true);
    assert.equal(r.namespace, 'dev');
    assert.equal(r.serviceAccount, 'app');
    assert.equal(r.podName, 'web');
    assert.equal(r.podUid, kube.getPod('dev', 'web')!.metadata.uid);
    assert.equal(r.nodeName, 'node-a');
    assert.deepEqual(r.audiences, ['kiam']);
    const refused = await reviewer.review(token, ['other']);
    assert.equal(refused.authenticated, false);
    assert.match(refused.error ?? '', /audiences/);
  });

  it('reuses one keep-alive connection across reviews', async () => {
    const token = kube.issueToken({ namespace: 'dev', pod: 'web', audience: 'kiam' });
    const fresh = new KubeTokenReviewer({ kubeConfig: loadKubeConfig(join(dir, 'kubeconfig')) });
    const before = kube.connections;
    for (let i = 0; i < 3; i++) assert.equal((await fresh.review(token, ['kiam'])).authenticated, true);
    assert.equal(kube.connections - before, 1, 'one TLS connection for three reviews');
    fresh.close();
  });

  it('an API error rejects with its status; a review never answered times out; the caller can abort', async () => {
    const token = kube.issueToken({ namespace: 'dev', pod: 'web', audience: 'kiam' });
    kube.setTokenReviewFault(403);
    await assert.rejects(reviewer.review(token, ['kiam']), (err: unknown) => err instanceof TokenReviewError && err.statusCode === 403 && /HTTP 403/.test(err.message));
    kube.setTokenReviewFault(0);
    const quick = new KubeTokenReviewer({ kubeConfig: loadKubeConfig(join(dir, 'kubeconfig')), timeoutMs: 100 });
    await assert.rejects(quick.review(token, ['kiam']), /timed out/);
    const ac = new AbortController();
    const pending = reviewer.review(token, ['kiam'], ac.signal);
    ac.abort(new Error('client went away'));
    await assert.rejects(pending, /client went away/);
    quick.close();
  });
});
