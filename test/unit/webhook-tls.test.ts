/**
 * The webhook's certificates and HTTPS serving: the self-managed CA and serving certificate (src/webhook/certs.ts)
 * checked by real TLS clients (node:https and curl, each verifying against the generated CA for
 * kiam-webhook.kiam.svc, the name the API server dials), the server's routes and limits, a certificate swapped
 * while serving, and the file mode's reload (src/webhook/tls.ts FileTls) driven by the fake clock.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { caBundle, createCa, createServing, parseBundle, RENEW_BEFORE_MS, renewalReason, type Pem } from '../../src/webhook/certs.ts';
import { createWebhookHandler, listenWebhook, MAX_BODY_BYTES, type WebhookServer } from '../../src/webhook/server.ts';
import { FileTls } from '../../src/webhook/tls.ts';
import { FakeClock } from '../fakes/clock.ts';

const DAY = 86_400_000;
const NAMES = ['kiam-webhook.kiam.svc', 'kiam-webhook.kiam', 'kiam-webhook'];
const SERVER_NAME = 'kiam-webhook.kiam.svc';
const silent = pino({ level: 'silent' });
const deploymentPod = readFileSync(new URL('fixtures/webhook/deployment-pod.json', import.meta.url), 'utf8');

interface Answer {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/** One HTTPS request to 127.0.0.1:port, verifying the server as SERVER_NAME against `ca`; a fresh connection each time. */
function httpsRequest(port: number, ca: string, path: string, options: { method?: string; body?: string | Buffer; servername?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: options.method ?? 'GET',
        ca,
        servername: options.servername ?? SERVER_NAME,
        agent: false,
        headers: options.body !== undefined ? { 'Content-Type': 'application/json' } : {},
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

describe('the self-managed CA and serving certificate', () => {
  const now = Date.parse('2026-12-07T04:00:00Z');
  let ca: Pem;
  let serving: Pem;
  before(async () => {
    ca = await createCa(now, 'kiam-webhook.kiam.svc CA');
    serving = await createServing(now, ca, NAMES);
  });

  test('the CA is a CA (basicConstraints), the serving certificate names the service and is signed by it', () => {
    const caCert = new X509Certificate(ca.cert);
    const cert = new X509Certificate(serving.cert);
    assert.equal(caCert.ca, true);
    assert.equal(cert.ca, false);
    assert.ok(cert.checkIssued(caCert) && cert.verify(caCert.publicKey));
    assert.equal(cert.subjectAltName, 'DNS:kiam-webhook.kiam.svc, DNS:kiam-webhook.kiam, DNS:kiam-webhook');
    assert.equal(cert.checkHost(SERVER_NAME), SERVER_NAME);
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'extKeyUsage serverAuth');
    assert.ok(cert.checkPrivateKey(createPrivateKey(serving.key)), 'the key is the certificate\'s');
    assert.ok(Date.parse(cert.validTo) - now > 364 * DAY && Date.parse(cert.validTo) - now <= 365 * DAY);
    assert.ok(Date.parse(caCert.validTo) - now > 9 * 365 * DAY);
    assert.ok(Date.parse(cert.validFrom) < now, 'backdated a little, for nodes whose clocks lag');
    // Positive serial numbers (RFC 5280 4.1.2.2; Go refuses negative ones).
    for (const c of [caCert, cert]) assert.ok(Number.parseInt(c.serialNumber.slice(0, 2), 16) < 0x80, c.serialNumber);
  });

  test('openssl agrees: the chain verifies for the purpose sslserver', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiam-webhook-certs-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), ca.cert);
      writeFileSync(join(dir, 'tls.pem'), serving.cert);
      const r = spawnSync('openssl', ['verify', '-purpose', 'sslserver', '-verify_hostname', SERVER_NAME, '-CAfile', join(dir, 'ca.pem'), join(dir, 'tls.pem')], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr + r.stdout);
      assert.match(r.stdout, /: OK/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('renewalReason: nothing to do for a fresh pair; the serving certificate within 30 days of expiry; the CA within 30 days', () => {
    assert.equal(renewalReason(now, ca, serving, NAMES), undefined);
    const servingExpiry = Date.parse(new X509Certificate(serving.cert).validTo);
    assert.equal(renewalReason(servingExpiry - RENEW_BEFORE_MS - 1000, ca, serving, NAMES), undefined, 'a second before the window');
    assert.deepEqual(renewalReason(servingExpiry - RENEW_BEFORE_MS + 1000, ca, serving, NAMES), { ca: false, reason: 'the serving certificate expires within 30 days' });
    const caExpiry = Date.parse(new X509Certificate(ca.cert).validTo);
    assert.deepEqual(renewalReason(caExpiry - RENEW_BEFORE_MS + 1000, ca, serving, NAMES), { ca: true, reason: 'the CA expires within 30 days' });
  });

  test('renewalReason: missing, mismatched or misnamed pieces', async () => {
    const other = await createCa(now, 'other');
    const otherServing = await createServing(now, other, NAMES);
    assert.deepEqual(renewalReason(now, undefined, serving, NAMES), { ca: true, reason: 'no CA' });
    assert.deepEqual(renewalReason(now, { cert: ca.cert, key: other.key }, serving, NAMES), { ca: true, reason: 'the CA key does not match its certificate' });
    assert.deepEqual(renewalReason(now, ca, undefined, NAMES), { ca: false, reason: 'no serving certificate' });
    assert.deepEqual(renewalReason(now, ca, { cert: serving.cert, key: otherServing.key }, NAMES), { ca: false, reason: 'the serving key does not match its certificate' });
    assert.deepEqual(renewalReason(now, ca, otherServing, NAMES), { ca: false, reason: 'the serving certificate is not signed by the CA' });
    assert.deepEqual(renewalReason(now, ca, serving, ['kiam-webhook.other.svc']), { ca: false, reason: 'the serving certificate does not name the service' });
  });

  test('a serving certificate never outlives its CA', async () => {
    const caExpiry = Date.parse(new X509Certificate(ca.cert).validTo);
    const late = await createServing(caExpiry - 100 * DAY, ca, NAMES);
    assert.equal(new X509Certificate(late.cert).validTo, new X509Certificate(ca.cert).validTo);
  });

  test('caBundle: the current CA first, then other CAs still valid, each once; expired ones and leaves dropped', async () => {
    const next = await createCa(now + 100 * DAY, 'next');
    const bundle = caBundle(now + 100 * DAY, next.cert, ca.cert + serving.cert);
    assert.deepEqual(
      parseBundle(bundle).map((c) => c.fingerprint256),
      [next.cert, ca.cert].map((p) => new X509Certificate(p).fingerprint256),
    );
    assert.equal(caBundle(now + 100 * DAY, bundle, ca.cert), bundle, 'the same CA twice is kept once');
    const caExpiry = Date.parse(new X509Certificate(ca.cert).validTo);
    assert.equal(parseBundle(caBundle(caExpiry + 1000, next.cert, bundle)).length, 1, 'the old CA goes once it has expired');
  });
});

describe('HTTPS serving, checked by real clients', () => {
  const now = Date.now();
  let ca: Pem;
  let server: WebhookServer;
  let lookups: string[];
  before(async () => {
    ca = await createCa(now, 'kiam-webhook.kiam.svc CA');
    const serving = await createServing(now, ca, NAMES);
    lookups = [];
    const handler = createWebhookHandler({
      logger: silent,
      mutation: { audience: 'kiam', ipv6: false },
      serviceAccountRole: async (namespace, name) => {
        lookups.push(`${namespace}/${name}`);
        if (name === 'broken') throw new Error('HTTP 503');
        return name === 'report-reader' ? 'reporting-reader' : undefined;
      },
    });
    server = await listenWebhook(handler, serving, 0, '127.0.0.1');
  });
  after(() => server.close());

  test('node:https, verifying against the CA as kiam-webhook.kiam.svc: /healthz and a pod admission with its patch', async () => {
    const health = await httpsRequest(server.port, ca.cert, '/healthz');
    assert.equal(health.status, 200);
    assert.equal(health.body, 'ok\n');
    const answer = await httpsRequest(server.port, ca.cert, '/mutate', { method: 'POST', body: deploymentPod });
    assert.equal(answer.status, 200);
    assert.equal(answer.headers['content-type'], 'application/json');
    const review = JSON.parse(answer.body);
    assert.equal(review.apiVersion, 'admission.k8s.io/v1');
    assert.equal(review.kind, 'AdmissionReview');
    assert.equal(review.response.uid, JSON.parse(deploymentPod).request.uid);
    assert.equal(review.response.allowed, true);
    assert.equal(review.response.patchType, 'JSONPatch');
    assert.equal(JSON.parse(Buffer.from(review.response.patch, 'base64').toString()).length, 6);
  });

  test('a client that trusts another CA, or dials another name, is refused (a control for the test above)', async () => {
    const other = await createCa(now, 'other');
    await assert.rejects(httpsRequest(server.port, other.cert, '/healthz'), /unable to verify|self.signed|certificate/i);
    await assert.rejects(httpsRequest(server.port, ca.cert, '/healthz', { servername: 'kiam-webhook.default.svc' }), /altnames|Hostname\/IP does not match/i);
  });

  test('curl (OpenSSL), with the CA file and the service name resolved to the server', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiam-webhook-curl-'));
    // Not spawnSync: the server answering curl runs in this process's event loop.
    const curl = (args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile('curl', args, { encoding: 'utf8' }, (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? -1) : 0, stdout, stderr }));
      });
    try {
      writeFileSync(join(dir, 'ca.pem'), ca.cert);
      writeFileSync(join(dir, 'review.json'), deploymentPod);
      const resolve = ['--resolve', `${SERVER_NAME}:${server.port}:127.0.0.1`];
      const base = ['--silent', '--show-error', '--max-time', '10', '--cacert', join(dir, 'ca.pem'), ...resolve];
      const health = await curl([...base, `https://${SERVER_NAME}:${server.port}/healthz`]);
      assert.equal(health.code, 0, health.stderr);
      assert.equal(health.stdout, 'ok\n');
      const mutate = await curl([...base, '--header', 'Content-Type: application/json', '--data-binary', `@${join(dir, 'review.json')}`, `https://${SERVER_NAME}:${server.port}/mutate`]);
      assert.equal(mutate.code, 0, mutate.stderr);
      assert.equal(JSON.parse(mutate.stdout).response.patchType, 'JSONPatch');
      const untrusted = await curl(['--silent', '--max-time', '10', ...resolve, `https://${SERVER_NAME}:${server.port}/healthz`]);
      assert.equal(untrusted.code, 60, 'without the CA: curl error 60, peer certificate cannot be authenticated');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the service account is looked up for a pod without its own role; an unreadable one admits the pod untouched', async () => {
    const review = JSON.parse(readFileSync(new URL('fixtures/webhook/kubectl-run-pod.json', import.meta.url), 'utf8'));
    review.request.object.spec.serviceAccountName = 'report-reader';
    const wired = JSON.parse((await httpsRequest(server.port, ca.cert, '/mutate', { method: 'POST', body: JSON.stringify(review) })).body);
    assert.equal(wired.response.patchType, 'JSONPatch');
    assert.equal(lookups.at(-1), 'reporting/report-reader');
    review.request.object.spec.serviceAccountName = 'broken';
    const answer = await httpsRequest(server.port, ca.cert, '/mutate', { method: 'POST', body: JSON.stringify(review) });
    assert.equal(answer.status, 200);
    const untouched = JSON.parse(answer.body);
    assert.equal(untouched.response.allowed, true);
    assert.equal(untouched.response.patch, undefined);
    assert.equal(untouched.response.warnings.length, 1);
  });

  test('refusals: not JSON or not an AdmissionReview v1 → 400; another path → 404; GET /mutate → 405; a body over 8 MiB → 413', async () => {
    assert.equal((await httpsRequest(server.port, ca.cert, '/mutate', { method: 'POST', body: '{not json' })).status, 400);
    const v1beta1 = JSON.stringify({ ...JSON.parse(deploymentPod), apiVersion: 'admission.k8s.io/v1beta1' });
    const refused = await httpsRequest(server.port, ca.cert, '/mutate', { method: 'POST', body: v1beta1 });
    assert.equal(refused.status, 400);
    assert.match(refused.body, /admission\.k8s\.io\/v1 AdmissionReview/);
    assert.equal((await httpsRequest(server.port, ca.cert, '/validate', { method: 'POST', body: deploymentPod })).status, 404);
    assert.equal((await httpsRequest(server.port, ca.cert, '/mutate')).status, 405);
    const big = Buffer.alloc(MAX_BODY_BYTES + 1, 0x20);
    assert.equal((await httpsRequest(server.port, ca.cert, '/mutate', { method: 'POST', body: big })).status, 413);
  });

  test('a certificate swapped while serving: new connections get it (a new CA verifies, the old one no longer does)', async () => {
    const nextCa = await createCa(now, 'next');
    server.setCertificate(await createServing(now, nextCa, NAMES));
    assert.equal((await httpsRequest(server.port, nextCa.cert, '/healthz')).status, 200);
    await assert.rejects(httpsRequest(server.port, ca.cert, '/healthz'), /verify|signature|certificate/i);
    ca = nextCa;
  });
});

describe('file mode: --tls-cert-file/--tls-key-file, re-read every 10 s', () => {
  let dir: string;
  let a: Pem;
  let b: Pem;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kiam-webhook-files-'));
    const ca = await createCa(Date.now(), 'files');
    a = await createServing(Date.now(), ca, NAMES);
    b = await createServing(Date.now(), ca, NAMES);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const files = () => ({ certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') });
  const write = (pem: Partial<Pem>) => {
    if (pem.cert) writeFileSync(files().certFile, pem.cert);
    if (pem.key) writeFileSync(files().keyFile, pem.key);
  };

  test('load: the pair, or an error naming both files when it does not load', () => {
    write(a);
    const clock = new FakeClock();
    assert.deepEqual(new FileTls({ ...files(), clock, logger: silent }).load(), a);
    write({ key: b.key });
    assert.throws(() => new FileTls({ ...files(), clock, logger: silent }).load(), /--tls-cert-file .*tls\.crt \/ --tls-key-file .*tls\.key/);
    assert.throws(() => new FileTls({ certFile: join(dir, 'missing.crt'), keyFile: files().keyFile, clock, logger: silent }).load(), /ENOENT/);
  });

  test('a renewed pair is picked up at the next poll; a half-written one (new certificate, old key) is not served', async () => {
    write(a);
    const clock = new FakeClock();
    const tls = new FileTls({ ...files(), clock, logger: silent });
    tls.load();
    const seen: Pem[] = [];
    tls.watch((pem) => seen.push(pem));
    await clock.advance(10_000);
    assert.deepEqual(seen, [], 'unchanged files: nothing');
    write({ cert: b.cert }); // cert-manager's Secret mid-update: the key still the old one
    await clock.advance(10_000);
    assert.deepEqual(seen, [], 'a pair that does not match is not served');
    write({ key: b.key });
    await clock.advance(9_999);
    assert.deepEqual(seen, [], 'not before the poll');
    await clock.advance(1);
    assert.deepEqual(seen, [b]);
    tls.stop();
    write(a);
    await clock.advance(60_000);
    assert.deepEqual(seen, [b], 'stopped: no more polls');
    assert.equal(clock.timers, 0);
  });
});
