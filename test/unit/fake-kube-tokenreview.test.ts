/**
 * The fake API server's service accounts, secrets, mutating webhook configurations, service-account tokens and
 * TokenReview, driven by the real clients: @kubernetes/client-node's generated APIs and kubectl.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AdmissionregistrationV1Api, ApiException, AuthenticationV1Api, CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { FAKE_ISSUER, FakeKubeApiServer, jsonPatch } from '../fakes/kube-apiserver.ts';

const run = promisify(execFile);
const hasKubectl = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0;
const skipKubectl = !hasKubectl && process.env.CI !== 'true' ? 'kubectl is not installed' : false;

/** The HTTP status of a client-node ApiException (or undefined when the call succeeded). */
async function statusOf(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    if (err instanceof ApiException) return err.code;
    throw err;
  }
}

function claims(token: string): Record<string, any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));
}

/** POST a control of the fake over HTTPS. */
function control(fake: FakeKubeApiServer, path: string, body?: unknown): Promise<{ status: number; body: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  return new Promise((resolve, reject) => {
    const req = https.request(`${fake.url}${path}`, { method: 'POST', ca: fake.caPem, headers: { Authorization: `Bearer ${fake.token}`, 'Content-Type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

describe('fake kube-apiserver: service accounts, secrets, webhook configurations (client-node)', () => {
  let fake: FakeKubeApiServer;
  let core: CoreV1Api;
  let admission: AdmissionregistrationV1Api;

  before(async () => {
    fake = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['default', 'team'] });
    const kc = new KubeConfig();
    kc.loadFromString(fake.kubeconfig());
    core = kc.makeApiClient(CoreV1Api);
    admission = kc.makeApiClient(AdmissionregistrationV1Api);
  });
  after(() => fake.close());

  it('service accounts: create, read, list, merge-patch, delete; 404 when missing', async () => {
    const created = await core.createNamespacedServiceAccount({ namespace: 'team', body: { metadata: { name: 'app', annotations: { 'iam.amazonaws.com/role': 'reader' } } } });
    assert.equal(created.kind, 'ServiceAccount');
    assert.equal(created.apiVersion, 'v1');
    assert.ok(created.metadata?.uid);
    const read = await core.readNamespacedServiceAccount({ namespace: 'team', name: 'app' });
    assert.equal(read.metadata?.annotations?.['iam.amazonaws.com/role'], 'reader');
    const list = await core.listNamespacedServiceAccount({ namespace: 'team' });
    assert.deepEqual(list.items.map((s) => s.metadata?.name), ['app']);
    const patched = await core.patchNamespacedServiceAccount(
      { namespace: 'team', name: 'app', body: { metadata: { annotations: { 'iam.amazonaws.com/role': 'writer' } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    assert.equal(patched.metadata?.annotations?.['iam.amazonaws.com/role'], 'writer');
    assert.equal(patched.metadata?.uid, created.metadata?.uid, 'the uid is immutable');
    assert.equal(await statusOf(core.readNamespacedServiceAccount({ namespace: 'team', name: 'nope' })), 404);
    assert.equal(await statusOf(core.readNamespacedServiceAccount({ namespace: 'default', name: 'app' })), 404, 'namespaced');
    assert.equal(await statusOf(core.createNamespacedServiceAccount({ namespace: 'team', body: { metadata: { name: 'app' } } })), 409);
    await core.deleteNamespacedServiceAccount({ namespace: 'team', name: 'app' });
    assert.equal(fake.getObject('serviceaccounts', 'team', 'app'), undefined);
  });

  it('secrets: stringData lands in data (base64), type defaults to Opaque; replace, JSON patch, delete', async () => {
    const created = await core.createNamespacedSecret({ namespace: 'team', body: { metadata: { name: 'tls' }, stringData: { 'ca.crt': 'CA' } } });
    assert.equal(created.type, 'Opaque');
    assert.deepEqual(created.data, { 'ca.crt': Buffer.from('CA').toString('base64') });
    assert.equal((created as { stringData?: unknown }).stringData, undefined);
    const replaced = await core.replaceNamespacedSecret({
      namespace: 'team',
      name: 'tls',
      body: { metadata: { name: 'tls', resourceVersion: created.metadata!.resourceVersion! }, type: 'kubernetes.io/tls', data: { 'tls.crt': 'Y2VydA==', 'tls.key': 'a2V5' } },
    });
    assert.equal(replaced.type, 'kubernetes.io/tls');
    assert.equal(
      await statusOf(core.replaceNamespacedSecret({ namespace: 'team', name: 'tls', body: { metadata: { name: 'tls', resourceVersion: created.metadata!.resourceVersion! } } })),
      409,
      'a stale resourceVersion conflicts',
    );
    // client-node's default patch type is an RFC 6902 JSON patch.
    const patched = await core.patchNamespacedSecret({ namespace: 'team', name: 'tls', body: [{ op: 'replace', path: '/data/tls.key', value: 'bmV3' }, { op: 'add', path: '/metadata/labels', value: { a: 'b' } }] });
    assert.equal(patched.data?.['tls.key'], 'bmV3');
    assert.deepEqual(patched.metadata?.labels, { a: 'b' });
    assert.equal(await statusOf(core.patchNamespacedSecret({ namespace: 'team', name: 'tls', body: [{ op: 'test', path: '/type', value: 'Opaque' }] })), 422, 'a failed test op');
    assert.equal(fake.getObject('secrets', 'team', 'tls')?.type, 'kubernetes.io/tls', 'a failed JSON patch changes nothing');
    const list = await core.listNamespacedSecret({ namespace: 'team' });
    assert.deepEqual(list.items.map((s) => s.metadata?.name), ['tls']);
    await core.deleteNamespacedSecret({ namespace: 'team', name: 'tls' });
    assert.equal(await statusOf(core.readNamespacedSecret({ namespace: 'team', name: 'tls' })), 404);
  });

  it('deleting a namespace deletes its service accounts and secrets too', async () => {
    fake.createNamespace('gone');
    fake.createServiceAccount('gone', 'sa');
    fake.createObject('secrets', { metadata: { name: 's', namespace: 'gone' } });
    assert.equal(await statusOf(core.createNamespacedSecret({ namespace: 'missing', body: { metadata: { name: 's' } } })), 404, 'no such namespace');
    fake.deleteNamespace('gone');
    assert.equal(fake.getObject('serviceaccounts', 'gone', 'sa'), undefined);
    assert.equal(fake.getObject('secrets', 'gone', 's'), undefined);
  });

  it('mutatingwebhookconfigurations: cluster-scoped create, read, JSON patch of the CA bundle, merge patch, list, delete', async () => {
    const body = {
      metadata: { name: 'kiam-webhook' },
      webhooks: [
        {
          name: 'pods.kiam.io',
          admissionReviewVersions: ['v1'],
          sideEffects: 'None',
          failurePolicy: 'Ignore',
          clientConfig: { service: { namespace: 'kiam', name: 'kiam-webhook', path: '/mutate' } },
          rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'] }],
        },
      ],
    };
    const created = await admission.createMutatingWebhookConfiguration({ body });
    assert.equal(created.kind, 'MutatingWebhookConfiguration');
    assert.equal(created.apiVersion, 'admissionregistration.k8s.io/v1');
    assert.equal(created.metadata?.namespace, undefined);
    const ca = Buffer.from('PEM').toString('base64');
    const patched = await admission.patchMutatingWebhookConfiguration({
      name: 'kiam-webhook',
      body: [
        { op: 'test', path: '/webhooks/0/name', value: 'pods.kiam.io' },
        { op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: ca },
      ],
    });
    // client-node decodes caBundle (a byte field) from base64? It keeps the string: compare what the fake stored.
    assert.equal(fake.getObject('mutatingwebhookconfigurations', undefined, 'kiam-webhook')?.webhooks[0].clientConfig.caBundle, ca);
    assert.equal(patched.webhooks?.[0]?.failurePolicy, 'Ignore');
    await admission.patchMutatingWebhookConfiguration({ name: 'kiam-webhook', body: { metadata: { labels: { app: 'kiam' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    const read = await admission.readMutatingWebhookConfiguration({ name: 'kiam-webhook' });
    assert.deepEqual(read.metadata?.labels, { app: 'kiam' });
    assert.equal(read.webhooks?.[0]?.clientConfig.service?.path, '/mutate', 'a merge patch keeps the rest');
    assert.deepEqual((await admission.listMutatingWebhookConfiguration()).items.map((m) => m.metadata?.name), ['kiam-webhook']);
    assert.equal(await statusOf(admission.readMutatingWebhookConfiguration({ name: 'other' })), 404);
    await admission.deleteMutatingWebhookConfiguration({ name: 'kiam-webhook' });
    assert.equal(fake.listObjects('mutatingwebhookconfigurations').length, 0);
  });

  it('jsonPatch follows RFC 6902 (its appendix A examples)', () => {
    assert.deepEqual(jsonPatch({ foo: 'bar' }, [{ op: 'add', path: '/baz', value: 'qux' }]), { foo: 'bar', baz: 'qux' });
    assert.deepEqual(jsonPatch({ foo: ['bar', 'baz'] }, [{ op: 'add', path: '/foo/1', value: 'qux' }]), { foo: ['bar', 'qux', 'baz'] });
    assert.deepEqual(jsonPatch({ baz: 'qux', foo: 'bar' }, [{ op: 'remove', path: '/baz' }]), { foo: 'bar' });
    assert.deepEqual(jsonPatch({ foo: ['bar', 'qux', 'baz'] }, [{ op: 'remove', path: '/foo/1' }]), { foo: ['bar', 'baz'] });
    assert.deepEqual(jsonPatch({ baz: 'qux', foo: 'bar' }, [{ op: 'replace', path: '/baz', value: 'boo' }]), { baz: 'boo', foo: 'bar' });
    assert.deepEqual(
      jsonPatch({ foo: { bar: 'baz', waldo: 'fred' }, qux: { corge: 'grault' } }, [{ op: 'move', from: '/foo/waldo', path: '/qux/thud' }]),
      { foo: { bar: 'baz' }, qux: { corge: 'grault', thud: 'fred' } },
    );
    assert.deepEqual(jsonPatch({ foo: ['all', 'grass', 'cows', 'eat'] }, [{ op: 'move', from: '/foo/1', path: '/foo/3' }]), { foo: ['all', 'cows', 'eat', 'grass'] });
    assert.deepEqual(jsonPatch({ foo: ['bar'] }, [{ op: 'add', path: '/foo/-', value: ['abc', 'def'] }]), { foo: ['bar', ['abc', 'def']] });
    assert.deepEqual(jsonPatch({ '/': 1, '~': 2 }, [{ op: 'copy', from: '/~1', path: '/~0x' }]), { '/': 1, '~': 2, '~x': 1 });
    assert.throws(() => jsonPatch({ baz: 'qux' }, [{ op: 'test', path: '/baz', value: 'bar' }]), /differs/);
    assert.throws(() => jsonPatch({ foo: 'bar' }, [{ op: 'add', path: '/baz/bat', value: 'qux' }]), /does not exist/);
    assert.throws(() => jsonPatch({ a: 1 }, [{ op: 'remove', path: '/b' }]), /does not exist/);
    const doc = { a: { b: 1 } };
    jsonPatch(doc, [{ op: 'replace', path: '/a/b', value: 2 }]);
    assert.deepEqual(doc, { a: { b: 1 } }, 'the input is not modified');
  });
});

describe('fake kube-apiserver: service-account tokens and TokenReview (client-node)', () => {
  let fake: FakeKubeApiServer;
  let auth: AuthenticationV1Api;
  let core: CoreV1Api;
  let podUid: string;

  const review = async (token: string, audiences?: string[]) =>
    (await auth.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, ...(audiences ? { audiences } : {}) } } })).status!;

  before(async () => {
    fake = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['default', 'team'] });
    const kc = new KubeConfig();
    kc.loadFromString(fake.kubeconfig());
    auth = kc.makeApiClient(AuthenticationV1Api);
    core = kc.makeApiClient(CoreV1Api);
    fake.createServiceAccount('team', 'app');
    podUid = fake.createPod({ metadata: { name: 'web', namespace: 'team' }, spec: { nodeName: 'node-a', serviceAccountName: 'app' }, status: { phase: 'Running', podIP: '10.1.0.1' } }).metadata.uid;
  });
  after(() => fake.close());

  it('issues tokens with the claims of a projected token', () => {
    const token = fake.issueToken({ namespace: 'team', pod: 'web', audience: 'kiam', expirationSeconds: 600 });
    const c = claims(token);
    assert.deepEqual(c.aud, ['kiam']);
    assert.equal(c.iss, FAKE_ISSUER);
    assert.equal(c.sub, 'system:serviceaccount:team:app');
    assert.equal(c.exp - c.iat, 600);
    assert.equal(c.nbf, c.iat);
    assert.equal(typeof c.jti, 'string');
    assert.equal(c['kubernetes.io'].namespace, 'team');
    assert.deepEqual(c['kubernetes.io'].pod, { name: 'web', uid: podUid });
    assert.equal(c['kubernetes.io'].serviceaccount.name, 'app');
    assert.equal(c['kubernetes.io'].serviceaccount.uid, fake.getObject('serviceaccounts', 'team', 'app')?.metadata.uid);
    assert.equal(c['kubernetes.io'].node.name, 'node-a');
    assert.equal(claims(fake.issueToken({ namespace: 'team', pod: 'web', bindNode: false }))['kubernetes.io'].node, undefined);
    assert.throws(() => fake.issueToken({ namespace: 'team', pod: 'nope' }), /not found/);
    assert.throws(() => fake.issueToken({ namespace: 'team', pod: 'web', serviceAccount: 'other' }), /runs as service account app/);
  });

  it('a TokenReview authenticates a token it issued: user, pod and node extras, the audiences granted', async () => {
    const token = fake.issueToken({ namespace: 'team', pod: 'web', audience: ['kiam', 'other'] });
    const status = await review(token, ['kiam', 'sts.amazonaws.com']);
    assert.equal(status.authenticated, true);
    assert.equal(status.error, undefined);
    assert.deepEqual(status.audiences, ['kiam']);
    assert.equal(status.user?.username, 'system:serviceaccount:team:app');
    assert.deepEqual(status.user?.groups, ['system:serviceaccounts', 'system:serviceaccounts:team', 'system:authenticated']);
    const extra = status.user?.extra ?? {};
    assert.deepEqual(extra['authentication.kubernetes.io/pod-name'], ['web']);
    assert.deepEqual(extra['authentication.kubernetes.io/pod-uid'], [podUid]);
    assert.deepEqual(extra['authentication.kubernetes.io/node-name'], ['node-a']);
    assert.deepEqual(extra['authentication.kubernetes.io/credential-id'], [`JTI=${claims(token).jti}`]);
  });

  it('without spec.audiences the API server’s own audience is asked', async () => {
    const mine = await review(fake.issueToken({ namespace: 'team', pod: 'web' }));
    assert.equal(mine.authenticated, true);
    assert.deepEqual(mine.audiences, [FAKE_ISSUER]);
    const other = await review(fake.issueToken({ namespace: 'team', pod: 'web', audience: 'kiam' }));
    assert.notEqual(other.authenticated, true);
  });

  it('refuses a wrong audience, an expired token, a forged one and garbage, saying why', async () => {
    const wrongAud = await review(fake.issueToken({ namespace: 'team', pod: 'web', audience: 'vault' }), ['kiam']);
    assert.notEqual(wrongAud.authenticated, true);
    assert.match(wrongAud.error ?? '', /audiences \["vault"\] is invalid for the target audiences \["kiam"\]/);

    const now = Math.floor(Date.now() / 1000);
    const expired = await review(fake.issueToken({ namespace: 'team', pod: 'web', audience: 'kiam', issuedAt: now - 7200, expirationSeconds: 3600 }), ['kiam']);
    assert.match(expired.error ?? '', /expired/);
    assert.notEqual(expired.authenticated, true);
    const withinLeeway = await review(fake.issueToken({ namespace: 'team', pod: 'web', audience: 'kiam', issuedAt: now - 630, expirationSeconds: 600 }), ['kiam']);
    assert.equal(withinLeeway.authenticated, true, 'the API server allows 60 s of clock skew');

    const good = fake.issueToken({ namespace: 'team', pod: 'web', audience: 'kiam' });
    const [h, p, sig] = good.split('.') as [string, string, string];
    const payload = claims(good);
    payload['kubernetes.io'].pod.name = 'admin';
    const forged = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${sig}`;
    assert.match((await review(forged, ['kiam'])).error ?? '', /signature is invalid/);
    const other = await FakeKubeApiServer.start();
    try {
      const foreign = other.issueToken({ namespace: 'default', audience: 'kiam' });
      assert.match((await review(foreign, ['kiam'])).error ?? '', /signature is invalid/, 'signed by another key');
    } finally {
      await other.close();
    }
    assert.match((await review('not-a-token', ['kiam'])).error ?? '', /not a JWT/);
    assert.equal((await review(`${h}.${p}.${sig}`, ['kiam'])).authenticated, true, 'the untampered token still works');
  });

  it('a bound token dies with its pod (deleted, or recreated under the same name) and with its service account', async () => {
    fake.createPod({ metadata: { name: 'short', namespace: 'team' }, spec: { nodeName: 'node-a', serviceAccountName: 'app' } });
    const token = fake.issueToken({ namespace: 'team', pod: 'short', audience: 'kiam' });
    assert.equal((await review(token, ['kiam'])).authenticated, true);
    fake.deletePod('team', 'short');
    assert.match((await review(token, ['kiam'])).error ?? '', /invalidated/);
    fake.createPod({ metadata: { name: 'short', namespace: 'team' }, spec: { nodeName: 'node-a', serviceAccountName: 'app' } });
    assert.match((await review(token, ['kiam'])).error ?? '', /invalidated/, 'same name, another uid');

    fake.createServiceAccount('team', 'temp');
    fake.createPod({ metadata: { name: 'temp-pod', namespace: 'team' }, spec: { nodeName: 'node-a', serviceAccountName: 'temp' } });
    const saToken = fake.issueToken({ namespace: 'team', pod: 'temp-pod', audience: 'kiam' });
    assert.equal((await review(saToken, ['kiam'])).authenticated, true);
    fake.deleteObject('serviceaccounts', 'team', 'temp');
    assert.match((await review(saToken, ['kiam'])).error ?? '', /invalidated/);
  });

  it('a token bound to no pod authenticates without pod extras', async () => {
    const status = await review(fake.issueToken({ namespace: 'team', serviceAccount: 'app', audience: 'kiam' }), ['kiam']);
    assert.equal(status.authenticated, true);
    assert.equal(status.user?.extra?.['authentication.kubernetes.io/pod-name'], undefined);
  });

  it('the TokenRequest subresource (as the kubelet asks) issues a reviewable token bound to the pod', async () => {
    const tr = await core.createNamespacedServiceAccountToken({
      namespace: 'team',
      name: 'app',
      body: { spec: { audiences: ['kiam'], expirationSeconds: 86400, boundObjectRef: { kind: 'Pod', apiVersion: 'v1', name: 'web', uid: podUid } } },
    });
    assert.ok(tr.status?.token);
    assert.ok(tr.status?.expirationTimestamp instanceof Date);
    const status = await review(tr.status.token, ['kiam']);
    assert.equal(status.authenticated, true);
    assert.deepEqual(status.user?.extra?.['authentication.kubernetes.io/pod-uid'], [podUid]);
    assert.equal(await statusOf(core.createNamespacedServiceAccountToken({ namespace: 'team', name: 'nope', body: { spec: { audiences: ['kiam'] } } })), 404);
    assert.equal(
      await statusOf(core.createNamespacedServiceAccountToken({ namespace: 'team', name: 'app', body: { spec: { audiences: ['kiam'], boundObjectRef: { kind: 'Pod', name: 'web', uid: 'stale' } } } })),
      409,
    );
  });

  it('controls over HTTP: POST /_fake/tokens issues, /_fake/tokenreview-fault fails every review until cleared', async () => {
    const issued = await control(fake, '/_fake/tokens', { namespace: 'team', pod: 'web', audience: 'kiam', expirationSeconds: 3600 });
    assert.equal(issued.status, 200);
    assert.equal((await review(issued.body.token, ['kiam'])).authenticated, true);
    assert.equal((await control(fake, '/_fake/tokens', { namespace: 'team', pod: 'nope' })).status, 404);

    const before = fake.tokenReviews;
    assert.equal((await control(fake, '/_fake/tokenreview-fault?status=503')).status, 200);
    assert.equal(await statusOf(review(issued.body.token, ['kiam'])), 503);
    assert.equal((await control(fake, '/_fake/tokenreview-fault?status=none')).status, 200);
    assert.equal((await review(issued.body.token, ['kiam'])).authenticated, true);
    assert.equal(fake.tokenReviews, before + 2, 'every TokenReview is counted');
    assert.equal((await control(fake, '/_fake/tokenreview-fault?status=200')).status, 400);
  });

  it('a stalled TokenReview (fault 0) is never answered', async () => {
    fake.setTokenReviewFault(0);
    try {
      let answered = false;
      const req = https.request(`${fake.url}/apis/authentication.k8s.io/v1/tokenreviews`, { method: 'POST', ca: fake.caPem, headers: { Authorization: `Bearer ${fake.token}` } }, () => {
        answered = true;
      });
      const closed = new Promise((resolve) => req.on('error', resolve));
      req.end(JSON.stringify({ spec: { token: 'x' } }));
      await fake.waitForRequest((r) => r.path.endsWith('/tokenreviews') && r.status === -1);
      req.destroy();
      await closed;
      assert.equal(answered, false);
    } finally {
      fake.setTokenReviewFault(undefined);
    }
  });
});

describe('fake kube-apiserver: kubectl with the new resources', { skip: skipKubectl }, () => {
  let fake: FakeKubeApiServer;
  let dir: string;
  let kubeconfig: string;
  const kubectl = (...args: string[]) => run('kubectl', ['--kubeconfig', kubeconfig, ...args], { env: { ...process.env, HOME: dir } });

  before(async () => {
    fake = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['default', 'team'] });
    dir = await mkdtemp(join(tmpdir(), 'fake-kube-tokens-'));
    kubeconfig = join(dir, 'kubeconfig');
    await fake.writeKubeconfig(kubeconfig);
  });
  after(async () => {
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('discovers the resources', async () => {
    const out = (await kubectl('api-resources', '--no-headers')).stdout;
    assert.match(out, /^serviceaccounts\s+sa\s+v1\s+true\s+ServiceAccount$/m);
    assert.match(out, /^secrets\s+v1\s+true\s+Secret$/m);
    assert.match(out, /^tokenreviews\s+authentication\.k8s\.io\/v1\s+false\s+TokenReview$/m);
    assert.match(out, /^mutatingwebhookconfigurations\s+admissionregistration\.k8s\.io\/v1\s+false\s+MutatingWebhookConfiguration$/m);
  });

  it('creates and annotates a service account, creates a TokenReview, patches a webhook configuration', async () => {
    assert.match((await kubectl('create', 'serviceaccount', '-n', 'team', 'app')).stdout, /serviceaccount\/app created/);
    await kubectl('annotate', 'sa', '-n', 'team', 'app', 'iam.amazonaws.com/role=reader');
    assert.equal((await kubectl('get', 'sa', '-n', 'team', 'app', '-o', 'jsonpath={.metadata.annotations.iam\\.amazonaws\\.com/role}')).stdout, 'reader');
    assert.match((await kubectl('get', 'sa', '-n', 'team')).stdout, /^app\s+/m);

    fake.createPod({ metadata: { name: 'web', namespace: 'team' }, spec: { nodeName: 'node-a', serviceAccountName: 'app' } });
    const manifest = join(dir, 'review.json');
    const token = fake.issueToken({ namespace: 'team', pod: 'web', audience: 'kiam' });
    await writeFile(manifest, JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: ['kiam'] } }));
    const reviewed = JSON.parse((await kubectl('create', '-f', manifest, '-o', 'json')).stdout);
    assert.equal(reviewed.status.authenticated, true);
    assert.deepEqual(reviewed.status.user.extra['authentication.kubernetes.io/pod-name'], ['web']);

    fake.createObject('mutatingwebhookconfigurations', { metadata: { name: 'kiam-webhook' }, webhooks: [{ name: 'pods.kiam.io', clientConfig: {} }] });
    await kubectl('patch', 'mutatingwebhookconfiguration', 'kiam-webhook', '--type=json', '-p', '[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"Q0E="}]');
    assert.equal(fake.getObject('mutatingwebhookconfigurations', undefined, 'kiam-webhook')?.webhooks[0].clientConfig.caBundle, 'Q0E=');
    assert.match((await kubectl('create', 'secret', 'generic', '-n', 'team', 'tls', '--from-literal=ca.crt=CA')).stdout, /secret\/tls created/);
    assert.match((await kubectl('get', 'secrets', '-n', 'team')).stdout, /^tls\s+Opaque\s+1\s+/m);
  });
});
