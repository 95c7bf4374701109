/**
 * The webhook's HTTPS server (node:https): POST /mutate answers AdmissionReview v1 (src/webhook/patch.ts),
 * GET /healthz answers 200. The serving certificate can be swapped while it runs (setSecureContext).
 * An AdmissionReview carries the pod (and, for updates, its old version: ~3 MiB at the API's object limit),
 * so bodies are capped at 8 MiB; the API server gives up after the configuration's timeoutSeconds (5 s), so
 * a service account look-up gets 3 s.
 */
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { admit, AdmissionReviewError, parseAdmissionReview, serviceAccountToLookUp, type AdmissionResult, type MutationOptions, type ServiceAccountFacts } from './patch.ts';
import type { Pem } from './certs.ts';
import { listenServer } from '../server/listen.ts';

export const MAX_BODY_BYTES = 8 * 1024 * 1024;
export const LOOKUP_TIMEOUT_MS = 3_000;

/** The role annotation of a service account (undefined: none, or no such account); throws when it cannot be read. */
export type ServiceAccountRoleLookup = (namespace: string, name: string, signal: AbortSignal) => Promise<string | undefined>;

export interface WebhookHandlerDeps {
  logger: Logger;
  mutation: MutationOptions;
  serviceAccountRole: ServiceAccountRoleLookup;
  lookupTimeoutMs?: number;
  /** Called with each admission's result (metrics, tests). */
  onAdmission?: (result: AdmissionResult) => void;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, `body over ${MAX_BODY_BYTES} bytes`));
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** One AdmissionReview body → the result, looking the service account up when the pod's own annotations do not decide. */
export async function review(body: unknown, deps: WebhookHandlerDeps): Promise<AdmissionResult> {
  const request = parseAdmissionReview(body);
  const sa = serviceAccountToLookUp(request);
  let facts: ServiceAccountFacts | undefined;
  if (sa) {
    try {
      facts = { role: await deps.serviceAccountRole(sa.namespace, sa.name, AbortSignal.timeout(deps.lookupTimeoutMs ?? LOOKUP_TIMEOUT_MS)) };
    } catch (err) {
      facts = { error: err instanceof Error ? err.message : String(err) };
      deps.logger.warn({ serviceAccount: `${sa.namespace}/${sa.name}`, err: facts.error }, 'service account could not be read; pod admitted without container credentials');
    }
  }
  const result = admit(request, deps.mutation, facts);
  const pod = request.object as { metadata?: { name?: string; generateName?: string } } | undefined;
  const line = {
    uid: request.uid,
    namespace: request.namespace,
    pod: pod?.metadata?.name || (pod?.metadata?.generateName ? `${pod.metadata.generateName}*` : undefined),
    result: result.outcome,
    ...(result.roleSource ? { roleSource: result.roleSource } : {}),
    ...(request.dryRun ? { dryRun: true } : {}),
  };
  if (result.outcome === 'mutated') deps.logger.info({ ...line, operations: result.patch.length }, 'pod wired to container credentials');
  else if (result.outcome === 'volume-clash') deps.logger.warn(line, 'pod has a volume named kiam-token of its own; left alone');
  else deps.logger.debug(line, 'pod admitted unchanged');
  return result;
}

export function createWebhookHandler(deps: WebhookHandlerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n');
      return send(res, 200, 'ok\n');
    }
    if (path !== '/mutate') return send(res, 404, 'not found\n');
    if (req.method !== 'POST') return send(res, 405, 'method not allowed\n');
    void (async () => {
      try {
        const raw = await readBody(req);
        let body: unknown;
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch {
          throw new HttpError(400, 'body is not JSON');
        }
        const result = await review(body, deps);
        deps.onAdmission?.(result);
        send(res, 200, result.review);
      } catch (err) {
        const status = err instanceof HttpError ? err.status : err instanceof AdmissionReviewError ? 400 : 500;
        const message = err instanceof Error ? err.message : String(err);
        deps.logger[status === 500 ? 'error' : 'warn']({ status, err: message }, 'admission request refused');
        if (!res.headersSent) send(res, status, `${status === 500 ? 'internal error' : message}\n`);
      }
    })();
  };
}

export interface WebhookServer {
  server: https.Server;
  port: number;
  /** Serve `pem` to new connections from now on. */
  setCertificate(pem: Pem): void;
  /** Stop accepting, end idle keep-alive connections, and resolve once the open requests are answered. */
  close(): Promise<void>;
}

export async function listenWebhook(handler: (req: IncomingMessage, res: ServerResponse) => void, pem: Pem, port: number, host?: string): Promise<WebhookServer> {
  // TLS 1.2 and up (Node's default minimum); the API server speaks 1.2 and 1.3. Keep-alive: the API server
  // reuses its connections to webhooks; idle ones are closed after 60 s.
  const server = https.createServer({ cert: pem.cert, key: pem.key, keepAliveTimeout: 60_000, requestTimeout: 30_000 }, handler);
  await listenServer(server, host || undefined, port);
  return {
    server,
    port: (server.address() as AddressInfo).port,
    setCertificate: (next) => server.setSecureContext({ cert: next.cert, key: next.key }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
