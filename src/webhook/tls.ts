/**
 * Where the webhook's serving certificate comes from, in one of two modes:
 *  - files (--tls-cert-file/--tls-key-file, e.g. cert-manager's Secret mounted in the pod): read at start and
 *    re-read every 10 s; a changed pair that loads is served from then on (the kubelet updates a Secret volume
 *    by swapping a symlink, which polling sees whatever the filesystem; a half-written pair is retried).
 *  - self-managed: a CA and a serving certificate for <service>.<namespace>.svc kept in one Secret (type
 *    kubernetes.io/tls: tls.crt, tls.key, plus ca.crt and ca.key), created when missing and replaced within 30
 *    days of expiry; the CA bundle is written into the MutatingWebhookConfiguration's clientConfig.caBundle.
 *    Replicas coordinate through the API server alone: a create that finds the Secret there (409 AlreadyExists)
 *    or an update that finds it changed (409 Conflict, resourceVersion) reads it again and takes what the other
 *    replica wrote. A replaced CA stays in ca.crt (and so in caBundle) until it expires, so a replica still
 *    serving a certificate of the old CA is trusted until it has read the new one (every minute).
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { Clock, Timer } from '../clock.ts';
import { caBundle, createCa, createServing, parseBundle, renewalReason, type Pem } from './certs.ts';
import { statusMessage, type KubeJson } from './kube.ts';

export type { Pem } from './certs.ts';

/** Throws when the pair does not load as node:tls would serve it (a key that is not the certificate's included). */
export function checkPair(pem: Pem): void {
  createSecureContext({ cert: pem.cert, key: pem.key });
}

export const FILE_POLL_MS = 10_000;

/** --tls-cert-file/--tls-key-file, polled. */
export class FileTls {
  private current: Pem | undefined;
  private timer: Timer | undefined;
  private stopped = false;

  constructor(
    private readonly opts: { certFile: string; keyFile: string; clock: Clock; logger: Logger; pollMs?: number },
  ) {}

  /** Read and check the pair now; throws with the file names when it does not load. */
  load(): Pem {
    const { certFile, keyFile } = this.opts;
    let pem: Pem;
    try {
      pem = { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
      checkPair(pem);
    } catch (err) {
      throw new Error(`--tls-cert-file ${certFile} / --tls-key-file ${keyFile}: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.current = pem;
    return pem;
  }

  /** Poll the files; `onChange` gets each new pair that loads. load() must have succeeded first. */
  watch(onChange: (pem: Pem) => void): void {
    const tick = () => {
      if (this.stopped) return;
      try {
        const { certFile, keyFile } = this.opts;
        const cert = readFileSync(certFile, 'utf8');
        const key = readFileSync(keyFile, 'utf8');
        if (cert !== this.current?.cert || key !== this.current?.key) {
          const pem = { cert, key };
          checkPair(pem);
          this.current = pem;
          this.opts.logger.info({ certFile, expires: parseBundle(cert)[0]?.validTo }, 'serving certificate reloaded');
          onChange(pem);
        }
      } catch (err) {
        // Mid-update (the certificate new, the key not yet) or gone: keep serving the last good pair.
        this.opts.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'serving certificate files do not load; keeping the current pair');
      }
      this.timer = this.opts.clock.setTimeout(tick, this.opts.pollMs ?? FILE_POLL_MS);
    };
    this.timer = this.opts.clock.setTimeout(tick, this.opts.pollMs ?? FILE_POLL_MS);
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}

export interface SelfManagedOptions {
  kube: KubeJson;
  clock: Clock;
  logger: Logger;
  /** The webhook's namespace: the Secret's and the Service's. */
  namespace: string;
  secretName: string;
  serviceName: string;
  /** The MutatingWebhookConfiguration whose webhooks get the CA bundle. */
  webhookConfigName: string;
  /** How often the Secret and the caBundle are checked. Default RESYNC_MS. */
  resyncMs?: number;
}

/** Every minute: another replica's renewal is picked up, and a re-created webhook configuration gets its caBundle back. */
export const RESYNC_MS = 60_000;
/** The first sync is retried this often until it succeeds (the server cannot listen without a certificate). */
export const RETRY_MS = 5_000;

interface SecretView {
  metadata?: { resourceVersion?: string };
  data?: Record<string, string>;
}
interface WebhookConfigView {
  webhooks?: Array<{ name?: string; clientConfig?: { caBundle?: string } }>;
}

const b64 = (s: string) => Buffer.from(s).toString('base64');
const unb64 = (s: string | undefined) => (s === undefined ? undefined : Buffer.from(s, 'base64').toString('utf8'));

/** The Secret's pair and CA, kept in the order Kubernetes' own tooling uses (tls.crt/tls.key, ca.crt). */
export function secretPems(secret: SecretView | undefined): { ca?: Pem; caBundle?: string; serving?: Pem } {
  const d = secret?.data ?? {};
  const caCert = unb64(d['ca.crt']);
  const caKey = unb64(d['ca.key']);
  const cert = unb64(d['tls.crt']);
  const key = unb64(d['tls.key']);
  return {
    ...(caCert && caKey ? { ca: { cert: caCert, key: caKey }, caBundle: caCert } : {}),
    ...(cert && key ? { serving: { cert, key } } : {}),
  };
}

export class SelfManagedTls {
  private timer: Timer | undefined;
  private stopped = false;
  private served: Pem | undefined;
  private missingConfigLogged = false;

  constructor(private readonly opts: SelfManagedOptions) {}

  /** The names the serving certificate carries; the API server calls <service>.<namespace>.svc. */
  get dnsNames(): string[] {
    const { serviceName: s, namespace: n } = this.opts;
    return [`${s}.${n}.svc`, `${s}.${n}`, s];
  }

  private get secretPath(): string {
    return `/api/v1/namespaces/${encodeURIComponent(this.opts.namespace)}/secrets/${encodeURIComponent(this.opts.secretName)}`;
  }

  /**
   * One pass: read the Secret; create or renew it when needed (taking another replica's write on a 409);
   * patch the caBundle. Returns the pair to serve and the CA bundle. Throws on API errors.
   */
  async sync(signal?: AbortSignal): Promise<{ serving: Pem; caBundle: string }> {
    const { kube, clock, logger, namespace, secretName } = this.opts;
    for (let attempt = 0; ; attempt++) {
      const got = await kube.request('GET', this.secretPath, { signal });
      if (got.status !== 200 && got.status !== 404) throw new Error(`GET secret ${namespace}/${secretName}: ${statusMessage(got)}`);
      const secret = got.status === 200 ? (got.body as SecretView) : undefined;
      const stored = secretPems(secret);
      const now = clock.now();
      const renew = renewalReason(now, stored.ca, stored.serving, this.dnsNames);
      if (!renew) {
        const bundle = caBundle(now, stored.caBundle!);
        await this.patchCaBundle(bundle, signal);
        return { serving: stored.serving!, caBundle: bundle };
      }
      if (attempt >= 3) throw new Error(`secret ${namespace}/${secretName}: still to be renewed after ${attempt} conflicts (${renew.reason})`);
      // The CA that signs: a new one, or the first certificate of the stored bundle with its key.
      const ca = renew.ca ? await createCa(now, `${this.opts.serviceName}.${namespace}.svc CA`) : { cert: parseBundle(stored.ca!.cert)[0]!.toString(), key: stored.ca!.key };
      const bundle = caBundle(now, ca.cert, stored.caBundle ?? '');
      const serving = await createServing(now, ca, this.dnsNames);
      const body = {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: secretName, namespace, labels: { 'app.kubernetes.io/name': 'kiam', 'app.kubernetes.io/component': 'webhook' }, ...(secret ? { resourceVersion: secret.metadata?.resourceVersion } : {}) },
        type: 'kubernetes.io/tls',
        data: { 'tls.crt': b64(serving.cert), 'tls.key': b64(serving.key), 'ca.crt': b64(bundle), 'ca.key': b64(ca.key) },
      };
      const wrote = secret
        ? await kube.request('PUT', this.secretPath, { body, signal })
        : await kube.request('POST', `/api/v1/namespaces/${encodeURIComponent(namespace)}/secrets`, { body, signal });
      if (wrote.status === 409) {
        logger.info({ secret: `${namespace}/${secretName}` }, 'another replica wrote the webhook certificate first; reading it');
        continue;
      }
      if (wrote.status !== 200 && wrote.status !== 201) throw new Error(`${secret ? 'PUT' : 'POST'} secret ${namespace}/${secretName}: ${statusMessage(wrote)}`);
      logger.info(
        { secret: `${namespace}/${secretName}`, reason: renew.reason, newCa: renew.ca, expires: parseBundle(serving.cert)[0]?.validTo },
        secret ? 'webhook certificate renewed' : 'webhook certificate created',
      );
      await this.patchCaBundle(bundle, signal);
      return { serving, caBundle: bundle };
    }
  }

  /** Write `bundle` into every webhook of the configuration whose caBundle differs (JSON patch, each op guarded by a test of the webhook's name). */
  private async patchCaBundle(bundle: string, signal?: AbortSignal): Promise<void> {
    const { kube, logger, webhookConfigName } = this.opts;
    const path = `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${encodeURIComponent(webhookConfigName)}`;
    const got = await kube.request('GET', path, { signal });
    if (got.status === 404) {
      if (!this.missingConfigLogged) logger.warn({ webhookConfiguration: webhookConfigName }, 'MutatingWebhookConfiguration not found: the API server cannot call the webhook until it exists (deploy/webhook)');
      this.missingConfigLogged = true;
      return;
    }
    if (got.status !== 200) throw new Error(`GET mutatingwebhookconfiguration ${webhookConfigName}: ${statusMessage(got)}`);
    this.missingConfigLogged = false;
    const wanted = b64(bundle);
    const ops: object[] = [];
    ((got.body as WebhookConfigView).webhooks ?? []).forEach((w, i) => {
      if (w.clientConfig?.caBundle === wanted) return;
      ops.push({ op: 'test', path: `/webhooks/${i}/name`, value: w.name });
      ops.push({ op: 'add', path: `/webhooks/${i}/clientConfig/caBundle`, value: wanted });
    });
    if (ops.length === 0) return;
    const patched = await kube.request('PATCH', path, { body: ops, contentType: 'application/json-patch+json', signal });
    if (patched.status !== 200) throw new Error(`PATCH mutatingwebhookconfiguration ${webhookConfigName}: ${statusMessage(patched)}`);
    logger.info({ webhookConfiguration: webhookConfigName, webhooks: ops.length / 2 }, 'caBundle written to the webhook configuration');
  }

  /**
   * The first sync, retried every RETRY_MS until it succeeds or `signal` aborts; then a sync every resyncMs,
   * `onChange` getting each pair that differs from the one served. Resolves with the first pair.
   */
  async start(onChange: (pem: Pem) => void, signal?: AbortSignal): Promise<Pem> {
    const { clock, logger } = this.opts;
    for (;;) {
      try {
        this.served = (await this.sync(signal)).serving;
        break;
      } catch (err) {
        if (signal?.aborted) throw err;
        logger.warn({ err: err instanceof Error ? err.message : String(err) }, `webhook certificate not ready; retrying in ${RETRY_MS / 1000} s`);
        await clock.sleep(RETRY_MS, signal);
      }
    }
    const tick = async () => {
      if (this.stopped) return;
      try {
        const { serving } = await this.sync();
        if (!this.stopped && (serving.cert !== this.served?.cert || serving.key !== this.served?.key)) {
          checkPair(serving);
          this.served = serving;
          onChange(serving);
        }
      } catch (err) {
        logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'webhook certificate check failed; serving the current one');
      }
      if (!this.stopped) this.timer = clock.setTimeout(() => void tick(), this.opts.resyncMs ?? RESYNC_MS);
    };
    this.timer = clock.setTimeout(() => void tick(), this.opts.resyncMs ?? RESYNC_MS);
    return this.served;
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}
