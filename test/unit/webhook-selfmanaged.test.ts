/**
 * The self-managed CA (src/webhook/tls.ts SelfManagedTls) against the fake API server (test/fakes/kube-apiserver.ts):
 * the Secret created when missing, taken as it is by another replica, renewed within 30 days of expiry (the CA
 * too, the old one kept in the bundle), a create or update that loses the race to another replica (409), the
 * caBundle written into the MutatingWebhookConfiguration the manifests ship (and again after a re-apply), and every
 * API call the webhook makes allowed by its RBAC in deploy/webhook. Then `kiam webhook` itself (runWebhook) serving
 * a pod admission to a client that trusts only the caBundle it wrote.
 */
import { test, describe, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import https from 'node:https';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { createCa, createServing, parseBundle, RENEW_BEFORE_MS } from '../../src/webhook/certs.ts';
import { kubeJsonClient, type KubeJson } from '../../src/webhook/kube.ts';
import { parseWebhookOptions } from '../../src/webhook/options.ts';
import { runWebhook } from '../../src/webhook/run.ts';
import { RESYNC_MS, RETRY_MS, SelfManagedTls, type Pem } from '../../src/webhook/tls.ts';
import { FakeClock } from '../fakes/clock.ts';
import { FakeKubeApiServer } from '../fakes/kube-apiserver.ts';
import { kustomize, parseYamlObjects, requireKubectl, ROOT, type K8sObject } from './deploy-support.ts';

const DAY = 86_400_000;
const silent = pino({ level: 'silent' });
const SECRET = '/api/v1/namespaces/kiam/secrets/kiam-webhook-tls';
const CONFIG = '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kiam-webhook';
/** The webhook configuration as deploy/webhook ships it. */
const shippedConfig = () => parseYamlObjects(readFileSync(join(ROOT, 'deploy/webhook/base/webhook.yaml'), 'utf8'), 'webhook.yaml')[0]!;

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

let fake: FakeKubeApiServer | undefined;
let kc: KubeConfig;
let kube: KubeJson;

after(() => fake?.close());

async function get(path: string): Promise<Obj | undefined> {
  const r = await kube.request('GET', path);
  return r.status === 200 ? (r.body as Obj) : undefined;
}
/** A fresh fake API server (namespaces kiam and reporting), with the shipped webhook configuration unless told not to. */
async function reset(withConfig = true): Promise<FakeKubeApiServer> {
  await fake?.close();
  fake = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0, namespaces: ['default', 'kiam', 'reporting'] });
  kc = new KubeConfig();
  kc.loadFromString(fake.kubeconfig());
  kube = kubeJsonClient(kc);
  if (withConfig) {
    const created = await kube.request('POST', '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations', { body: shippedConfig() });
    assert.equal(created.status, 201, JSON.stringify(created.body));
  }
  fake.clearLog();
  return fake;
}
const replica = (clock: FakeClock) =>
  new SelfManagedTls({ kube, clock, logger: silent, namespace: 'kiam', secretName: 'kiam-webhook-tls', serviceName: 'kiam-webhook', webhookConfigName: 'kiam-webhook' });
const secretData = async () => {
  const s = (await get(SECRET))!;
  return { type: s.type as string, data: Object.fromEntries(Object.entries(s.data as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()])) };
};
const caBundleOf = async (): Promise<string> => Buffer.from((await get(CONFIG))!.webhooks[0].clientConfig.caBundle as string, 'base64').toString();
/** Wait for something the code under test does on its own (real I/O against the fake); fails after 5 s. */
async function until(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
}
const writes = () => fake!.requests.filter((r) => r.method !== 'GET');

describe('the Secret and the caBundle', () => {
  beforeEach(async () => void (await reset()));

  test('created when missing: a kubernetes.io/tls Secret with the CA, its bundle written into the shipped configuration', async () => {
    const clock = new FakeClock(Date.now());
    const { serving, caBundle } = await replica(clock).sync();
    const secret = await secretData();
    assert.equal(secret.type, 'kubernetes.io/tls');
    assert.deepEqual(Object.keys(secret.data).sort(), ['ca.crt', 'ca.key', 'tls.crt', 'tls.key']);
    assert.equal(secret.data['tls.crt'], serving.cert);
    assert.equal(secret.data['tls.key'], serving.key);
    assert.equal(secret.data['ca.crt'], caBundle);
    assert.equal(await caBundleOf(), caBundle);
    const cert = new X509Certificate(serving.cert);
    assert.ok(cert.verify(parseBundle(caBundle)[0]!.publicKey));
    assert.equal(cert.checkHost('kiam-webhook.kiam.svc'), 'kiam-webhook.kiam.svc');
    assert.deepEqual(
      writes().map((r) => `${r.method} ${r.path} ${r.status}`),
      [`POST /api/v1/namespaces/kiam/secrets 201`, `PATCH ${CONFIG} 200`],
    );
  });

  test('another replica takes the Secret as it is: no write at all', async () => {
    const clock = new FakeClock(Date.now());
    const first = await replica(clock).sync();
    fake!.clearLog();
    const second = await replica(clock).sync();
    assert.deepEqual(second, first);
    assert.deepEqual(writes(), []);
  });

  test('two replicas starting together: one creates, the other gets 409 and takes what it wrote', async () => {
    const clock = new FakeClock(Date.now());
    const [a, b] = await Promise.all([replica(clock).sync(), replica(clock).sync()]);
    assert.deepEqual(a.serving, b.serving);
    const creates = fake!.requests.filter((r) => r.method === 'POST' && r.path === '/api/v1/namespaces/kiam/secrets').map((r) => r.status).sort();
    assert.deepEqual(creates, [201, 409]);
    assert.equal((await secretData()).data['tls.crt'], a.serving.cert);
  });

  test('within 30 days of expiry the serving certificate is replaced under the same CA; the caBundle stays', async () => {
    const now = Date.now();
    const first = await replica(new FakeClock(now)).sync();
    const expiry = Date.parse(new X509Certificate(first.serving.cert).validTo);
    fake!.clearLog();
    const early = await replica(new FakeClock(expiry - RENEW_BEFORE_MS - 60_000)).sync();
    assert.deepEqual(early, first, 'a minute before the window: kept');
    assert.deepEqual(writes(), []);
    const late = await replica(new FakeClock(expiry - RENEW_BEFORE_MS + 60_000)).sync();
    assert.notEqual(late.serving.cert, first.serving.cert);
    assert.equal(late.caBundle, first.caBundle, 'the same CA');
    assert.ok(Date.parse(new X509Certificate(late.serving.cert).validTo) > expiry);
    assert.deepEqual(writes().map((r) => `${r.method} ${r.path} ${r.status}`), [`PUT ${SECRET} 200`], 'the caBundle needs no patch');
  });

  test('two replicas renewing together: the update of the slower one gets 409 (resourceVersion), and it takes the other’s', async () => {
    const first = await replica(new FakeClock(Date.now())).sync();
    const late = Date.parse(new X509Certificate(first.serving.cert).validTo) - RENEW_BEFORE_MS + DAY;
    fake!.clearLog();
    const [a, b] = await Promise.all([replica(new FakeClock(late)).sync(), replica(new FakeClock(late)).sync()]);
    assert.deepEqual(a.serving, b.serving);
    assert.deepEqual(fake!.requests.filter((r) => r.method === 'PUT').map((r) => r.status).sort(), [200, 409]);
  });

  test('within 30 days of the CA’s expiry: a new CA, the old one kept in the bundle while it is valid', async () => {
    const first = await replica(new FakeClock(Date.now())).sync();
    const oldCa = parseBundle(first.caBundle)[0]!;
    const late = Date.parse(oldCa.validTo) - RENEW_BEFORE_MS + DAY;
    const renewed = await replica(new FakeClock(late)).sync();
    const bundle = parseBundle(renewed.caBundle);
    assert.equal(bundle.length, 2);
    assert.notEqual(bundle[0]!.fingerprint256, oldCa.fingerprint256, 'the new CA first: it signs');
    assert.equal(bundle[1]!.fingerprint256, oldCa.fingerprint256, 'the old one still trusted');
    assert.ok(new X509Certificate(renewed.serving.cert).verify(bundle[0]!.publicKey));
    assert.equal(await caBundleOf(), renewed.caBundle);
    // Once the old CA has expired, the next write leaves it out.
    const after = await replica(new FakeClock(Date.parse(oldCa.validTo) + 1000)).sync();
    assert.equal(parseBundle(after.caBundle).length, 1);
    assert.equal(await caBundleOf(), after.caBundle);
  });

  test('a Secret that does not hold a valid pair (edited, truncated) is replaced', async () => {
    await replica(new FakeClock(Date.now())).sync();
    const patched = await kube.request('PATCH', SECRET, { body: { data: { 'tls.key': Buffer.from('garbage').toString('base64') } }, contentType: 'application/merge-patch+json' });
    assert.equal(patched.status, 200);
    fake!.clearLog();
    const fixed = await replica(new FakeClock(Date.now())).sync();
    assert.notEqual(fixed.serving.key, 'garbage');
    assert.deepEqual(writes().map((r) => `${r.method} ${r.status}`), ['PUT 200']);
  });
});

describe('running: start, resync, a re-applied configuration', () => {
  test('the first sync waits for the API server (retried every 5 s); then another replica’s renewal is served at the next resync', async () => {
    await reset();
    const clock = new FakeClock(Date.now());
    const tls = replica(clock);
    fake!.setOutage(true);
    let first = undefined as Pem | undefined;
    const changes: Pem[] = [];
    const started = tls.start((pem) => changes.push(pem)).then((pem) => (first = pem));
    await until(() => clock.timers === 1); // the first attempt failed; the retry is waiting
    await clock.advance(RETRY_MS);
    await until(() => clock.timers === 1); // so did the second
    assert.equal(first, undefined, 'still waiting');
    fake!.setOutage(false);
    await clock.advance(RETRY_MS);
    const served = await started;
    assert.ok(served.cert.startsWith('-----BEGIN CERTIFICATE-----'));
    // Another replica renews (its clock 340 days on); this one serves the new pair from its next resync on.
    const expiry = Date.parse(new X509Certificate(served.cert).validTo);
    const other = await replica(new FakeClock(expiry - RENEW_BEFORE_MS + DAY)).sync();
    await clock.advance(RESYNC_MS);
    await until(() => changes.length > 0);
    assert.deepEqual(changes, [other.serving]);
    tls.stop();
    assert.equal(clock.timers, 0, 'stopped: no resync left');
  });

  test('no webhook configuration yet: the Secret is made anyway; the caBundle is written at the first resync after it appears, and again after a re-apply', async () => {
    await reset(false);
    const clock = new FakeClock(Date.now());
    const tls = replica(clock);
    await tls.start(() => undefined);
    assert.ok(await get(SECRET));
    const created = await kube.request('POST', '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations', { body: shippedConfig() });
    assert.equal(created.status, 201);
    const bundle = (await secretData()).data['ca.crt'];
    const patches = () => fake!.requests.filter((r) => r.method === 'PATCH' && r.status === 200).length;
    await clock.advance(RESYNC_MS);
    await until(() => patches() === 1);
    assert.equal(await caBundleOf(), bundle);
    // `kubectl replace` of the shipped file (no caBundle): written again at the next resync.
    const current = (await get(CONFIG))!;
    const replaced = await kube.request('PUT', CONFIG, { body: { ...shippedConfig(), metadata: { ...shippedConfig().metadata, resourceVersion: current.metadata.resourceVersion } } });
    assert.equal(replaced.status, 200);
    assert.equal((await get(CONFIG))!.webhooks[0].clientConfig.caBundle, undefined);
    await clock.advance(RESYNC_MS);
    await until(() => patches() === 2);
    assert.equal(await caBundleOf(), bundle);
    tls.stop();
  });
});

describe('RBAC', () => {
  test('every call the webhook made in these tests is allowed by deploy/webhook’s rules for its service account', async () => {
    requireKubectl();
    await reset();
    const clock = new FakeClock(Date.now());
    await replica(clock).sync();
    const late = Date.parse(new X509Certificate((await secretData()).data['tls.crt']!).validTo) - RENEW_BEFORE_MS + DAY;
    await replica(new FakeClock(late)).sync();
    const calls = fake!.requests.map((r) => ({ method: r.method, path: r.path }));
    calls.push({ method: 'GET', path: '/api/v1/namespaces/reporting/serviceaccounts/report-writer' }); // what a pod admission reads

    const objects = kustomize('deploy/webhook');
    const bound = (kind: string) =>
      objects.filter((o) => o.kind === kind && (o as Obj).subjects.some((s: Obj) => s.kind === 'ServiceAccount' && s.name === 'kiam-webhook' && s.namespace === 'kiam'));
    const rules: Array<{ namespace?: string; rule: Obj }> = [];
    for (const b of bound('ClusterRoleBinding')) for (const rule of (objects.find((o) => o.kind === 'ClusterRole' && o.metadata.name === (b as Obj).roleRef.name) as Obj).rules) rules.push({ rule });
    for (const b of bound('RoleBinding')) {
      const role = objects.find((o) => o.kind === 'Role' && o.metadata.name === (b as Obj).roleRef.name && o.metadata.namespace === b.metadata.namespace) as K8sObject & { rules: Obj[] };
      for (const rule of role.rules) rules.push({ namespace: b.metadata.namespace!, rule });
    }
    const verbs: Record<string, string> = { GET: 'get', POST: 'create', PUT: 'update', PATCH: 'patch' };
    for (const call of calls.filter((c) => c.method !== 'DELETE')) {
      const m = /^\/(?:api\/v1|apis\/([^/]+)\/v1)(?:\/namespaces\/([^/]+))?\/([^/]+)(?:\/([^/]+))?$/.exec(call.path);
      assert.ok(m, call.path);
      const [, group = '', namespace, resource, name] = m;
      const verb = verbs[call.method]!;
      const allowed = rules.some(
        ({ namespace: ns, rule }) =>
          (ns === undefined || ns === namespace) &&
          rule.apiGroups.includes(group) &&
          rule.resources.includes(resource) &&
          rule.verbs.includes(verb) &&
          (rule.resourceNames === undefined || (name !== undefined && rule.resourceNames.includes(name))),
      );
      assert.ok(allowed, `${verb} ${group || 'core'}/${resource}${name ? `/${name}` : ''}${namespace ? ` in ${namespace}` : ''}`);
    }
  });
});

describe('kiam webhook (runWebhook) against the fake API server', () => {
  test('self-managed: it writes its CA into the configuration, and a client trusting only that bundle gets a pod wired by its service account’s role', async () => {
    await reset();
    const sa = await kube.request('POST', '/api/v1/namespaces/reporting/serviceaccounts', {
      body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'report-reader', namespace: 'reporting', annotations: { 'iam.amazonaws.com/role': 'reporting-reader' } } },
    });
    assert.ok(sa.status === 201 || sa.status === 409, JSON.stringify(sa.body));
    const options = { ...parseWebhookOptions({}, { POD_NAMESPACE: 'kiam' }), port: 0 };
    let stop!: (signal: string) => void;
    let listening!: (port: number) => void;
    const port = new Promise<number>((resolve) => (listening = resolve));
    const done = runWebhook(options, { logger: silent, kubeConfig: kc, stopSignal: new Promise((resolve) => (stop = resolve)), shutdownDelayMs: 0, onListening: listening });
    const p = await port;
    const ca = await caBundleOf();
    const review = JSON.parse(readFileSync(new URL('fixtures/webhook/kubectl-run-pod.json', import.meta.url), 'utf8'));
    review.request.object.spec.serviceAccountName = 'report-reader';
    const admit = () =>
      new Promise<string>((resolve, reject) => {
        const req = https.request({ host: '127.0.0.1', port: p, path: '/mutate', method: 'POST', ca, servername: 'kiam-webhook.kiam.svc', agent: false, headers: { 'Content-Type': 'application/json' } }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.end(JSON.stringify(review));
      });
    const body = await admit();
    assert.equal(await admit(), body, 'the same answer for the same request');
    const reads = fake!.requests.filter((r) => r.path === '/api/v1/namespaces/reporting/serviceaccounts/report-reader');
    assert.equal(reads.length, 1, 'the service account is read once for both (remembered 30 s)');
    const response = JSON.parse(body).response;
    assert.equal(response.patchType, 'JSONPatch');
    const ops = JSON.parse(Buffer.from(response.patch, 'base64').toString());
    assert.deepEqual(ops.at(-1), { op: 'add', path: '/spec/volumes/-', value: { name: 'kiam-token', projected: { sources: [{ serviceAccountToken: { audience: 'kiam', expirationSeconds: 86400, path: 'token' } }] } } });
    assert.ok(fake!.requests.some((r) => r.method === 'GET' && r.path === '/api/v1/namespaces/reporting/serviceaccounts/report-reader'));
    stop('SIGTERM');
    assert.equal(await done, 0);
  });

  test('file mode (the cert-manager overlay): serves the files, re-reads them every 10 s, and never touches the Secret or the configuration', async () => {
    await reset();
    const dir = mkdtempSync(join(tmpdir(), 'kiam-webhook-run-'));
    try {
      const ca = await createCa(Date.now(), 'cert-manager CA');
      const write = (pem: Pem) => {
        writeFileSync(join(dir, 'tls.crt'), pem.cert);
        writeFileSync(join(dir, 'tls.key'), pem.key);
      };
      write(await createServing(Date.now(), ca, ['kiam-webhook.kiam.svc']));
      const clock = new FakeClock(Date.now());
      const options = { ...parseWebhookOptions({ tlsCertFile: join(dir, 'tls.crt'), tlsKeyFile: join(dir, 'tls.key') }, {}), port: 0 };
      let stop!: (signal: string) => void;
      let listening!: (port: number) => void;
      const port = new Promise<number>((resolve) => (listening = resolve));
      const done = runWebhook(options, { logger: silent, kubeConfig: kc, clock, stopSignal: new Promise((resolve) => (stop = resolve)), shutdownDelayMs: 0, onListening: listening });
      const p = await port;
      const serial = () =>
        new Promise<string>((resolve, reject) => {
          const req = https.request({ host: '127.0.0.1', port: p, path: '/healthz', ca: ca.cert, servername: 'kiam-webhook.kiam.svc', agent: false }, (res) => {
            res.resume();
            resolve((res.socket as import('node:tls').TLSSocket).getPeerX509Certificate()!.serialNumber);
          });
          req.on('error', reject);
          req.end();
        });
      const before = await serial();
      const renewed = await createServing(Date.now(), ca, ['kiam-webhook.kiam.svc']);
      write(renewed);
      await clock.advance(10_000);
      assert.equal(await serial(), new X509Certificate(renewed.cert).serialNumber);
      assert.notEqual(before, new X509Certificate(renewed.cert).serialNumber);
      stop('SIGTERM');
      await until(() => clock.timers === 2); // the file poll, and the shutdown delay (0 here)
      await clock.advance(0);
      assert.equal(await done, 0);
      assert.deepEqual(fake!.requests.map((r) => r.path), [], 'no API call at all (no pod was admitted)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
