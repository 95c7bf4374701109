import { createHash } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import { DEFAULT_CLIENT_LIMITS, SourceLimits, peerAddress, type ClientLimits, type RefusalStyle } from './fairness.ts';
import type { CredentialProvider, Credentials, Lookup, RoleIdentity } from './ports.ts';
import { listenServer } from './listen.ts';
import { OnceSet, isoSeconds, reasonPhrase } from './routes/respond.ts';

/**
 * The container-credentials endpoint (--container-credentials): what the AWS SDKs ask when a pod has
 * AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE set, as EKS Pod Identity's agent
 * answers it (https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html):
 *
 *   GET /v1/credentials
 *   Authorization: <the pod's projected service-account token>          ("Bearer <token>" accepted too)
 *
 *   200 {"AccessKeyId","SecretAccessKey","Token","AccountId","Expiration"}        application/json
 *
 * The pod is the one the token names (TokenReview: src/identity/), never the one at the peer address: a token
 * copied to another pod still names the pod it was issued to, and gets that pod's role. Statuses (errors are
 * `{"message": "<terse>"}`; the detail goes to the log, once at warn per pod or source and reason, and the reason
 * (TokenIdentity's code, no-token, malformed-token, no-role, a denial code, no-credentials) to
 * kiam_token_refusals_total):
 *
 *   400  no Authorization header, or one that is not a JWT          404  another path     405  not a GET
 *   401  the TokenReview does not authenticate the token (forged, expired, wrong audience, its pod gone)
 *   403  authenticated, but its pod is no live pod of this node, has no role, or the namespace's policy denies it
 *   429  over the per-source limits of fairness.ts (the socket's peer address; Retry-After)
 *   503  (Retry-After: 1) the TokenReview API or STS unavailable, no credentials yet, the event loop saturated
 *
 * The Go SDK v2 (credentials/endpointcreds) reads an error body's `code` and `message` and its standard retryer
 * retries 5xx, not 4xx; botocore and the JS SDK v3 retry any failure, 4xx included, a few times a second apart
 * (botocore.utils.ContainerMetadataFetcher, @aws-sdk/credential-provider-http's retryWrapper), then give up.
 * Credentials come from the same CredentialCache as the metadata path, for the same identities: a pod served
 * both ways shares one STS session.
 *
 * Plain node:http rather than fastify: one route, and the per-source limits, header limits and timeouts of
 * fairness.ts in front of it as for the metadata server.
 */
export const CONTAINER_CREDENTIALS_PATH = '/v1/credentials';

/**
 * What TokenIdentity.identify() answers (src/identity/token-identity.ts, TokenVerdict), as this server reads it:
 * the pod and the policy's answer for it, or why not.
 */
export type TokenAnswer = (
  | { kind: 'ok'; pod: { uid: string; name: string; namespace: string }; lookup: Lookup }
  /** code: malformed, expired, wrong-audience, invalid (a metric label). */
  | { kind: 'unauthenticated'; reason: string; code?: string }
  /** code: other-node, pod-not-found, pod-not-live, uid-mismatch, no-pod-claim. */
  | { kind: 'forbidden'; code: string; reason: string }
  /** code: review-failed, rate-limited, pod-lookup-failed, service-account-failed, aborted. */
  | { kind: 'unavailable'; reason: string; code?: string }
) & { /** How the token is named in logs (tokenId()), when the identity already computed it. */ tokenId?: string };

export interface TokenIdentityPort {
  /** Never throws for a bad token (a verdict says so); may throw on a bug, which is answered 503. */
  identify(token: string, signal?: AbortSignal): Promise<TokenAnswer>;
  /** identify()'s 'ok' answer when it needs no waiting (everything cached), else undefined: the warm path. */
  peek?(token: string): (TokenAnswer & { kind: 'ok' }) | undefined;
}

export interface ContainerCredentialsDeps {
  identity: TokenIdentityPort;
  credentials: CredentialProvider;
  metrics: Metrics;
  logger: Logger;
  clock: Clock;
  /** Per-source connection and request caps, idle and header timeouts; default DEFAULT_CLIENT_LIMITS. */
  limits?: ClientLimits;
  /** The event loop is saturated (the metadata app's under-pressure verdict): 503 with Retry-After: 1. */
  underPressure?: () => boolean;
}

export interface ContainerCredentialsServer {
  /** Listen on every host (IP literals) at port; with port 0, every host gets the port the first was given. */
  listen(hosts: readonly string[], port: number): Promise<void>;
  /** Where it listens ([] before listen() and after close()). */
  addresses(): Array<{ host: string; port: number }>;
  /** Stop accepting, drop idle keep-alive connections, let requests in flight finish. Idempotent. */
  close(): Promise<void>;
}

/** Bearer is what RFC 6750 clients send; the SDKs send the token bare. */
const BEARER = /^bearer\s+/i;
/** A compact JWS (RFC 7515 §7.1): three base64url parts. A projected service-account token is one. */
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const JSON_TYPE = 'application/json';

/** The error body: `{"message": …}` (the Go SDK v2 reads `message`; botocore and the JS SDK show the text). */
export function errorBody(status: number, message = reasonPhrase(status).toLowerCase()): string {
  return JSON.stringify({ message });
}

const REFUSALS: RefusalStyle = Object.freeze({ contentType: JSON_TYPE, body: (status: number) => errorBody(status) });

/** The account of a role ARN (arn:partition:iam::ACCOUNT:role/…), '' when it has none. */
export function accountOf(roleArn: string): string {
  return /^arn:[a-z-]+:iam::(\d{12}):/.exec(roleArn)?.[1] ?? '';
}

/** The 200 body, field for field as the SDKs read it. */
export function credentialsBody(creds: Credentials, identity: RoleIdentity): string {
  return JSON.stringify({
    AccessKeyId: creds.accessKeyId,
    SecretAccessKey: creds.secretAccessKey,
    Token: creds.sessionToken,
    AccountId: accountOf(identity.roleArn),
    Expiration: isoSeconds(creds.expiration),
  });
}

/** How a token is named in logs: the first 8 hex digits of its SHA-256, never the token. */
export function tokenId(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 8);
}

interface Rendered {
  readonly body: string;
  readonly headers: readonly string[];
  /** Pods it was logged as served to. */
  readonly servedTo: Set<string>;
}

export function createContainerCredentialsServer(deps: ContainerCredentialsDeps): ContainerCredentialsServer {
  const { identity, credentials, metrics, logger, clock } = deps;
  const requests = metrics.containerCredentialsRequests;
  const limits = new SourceLimits(deps.limits ?? DEFAULT_CLIENT_LIMITS, {
    clock,
    metrics,
    logger,
    refusals: REFUSALS,
    onRateLimited: () => requests.inc({ code: '429' }),
  });
  const warned = new OnceSet(1000);
  const noCredsWarned = new OnceSet(1000);
  /** Credentials object → its body, rendered when first served (one identity per credentials object). */
  const rendered = new WeakMap<Credentials, Rendered>();
  const servers = new Set<http.Server>();
  const bound: Array<{ host: string; port: number }> = [];
  let closing = false;
  let closed: Promise<void> | undefined;

  function send(res: ServerResponse, status: number, body: string, extra: readonly string[] = []): void {
    res.writeHead(status, ['content-type', JSON_TYPE, 'content-length', String(Buffer.byteLength(body)), ...extra]);
    res.end(body);
    requests.inc({ code: String(status) });
  }

  /**
   * A refusal that is about the pod's identity: counted by reason, logged (at warn the first time per key and
   * reason, then at debug), answered tersely.
   */
  function refuse(res: ServerResponse, status: number, reason: string, key: string, fields: Record<string, unknown>, message?: string): void {
    metrics.tokenRefusals.inc({ reason });
    const line = { status, reason, ...fields };
    if (warned.first(`${reason}\0${key}`)) logger.warn(line, 'container credentials refused');
    else logger.debug(line, 'container credentials refused');
    send(res, status, errorBody(status, message), status === 503 ? ['retry-after', '1'] : []);
  }

  function documentFor(creds: Credentials, role: RoleIdentity): Rendered {
    let doc = rendered.get(creds);
    if (doc === undefined) {
      const body = credentialsBody(creds, role);
      doc = { body, headers: ['content-type', JSON_TYPE, 'content-length', String(Buffer.byteLength(body))], servedTo: new Set() };
      rendered.set(creds, doc);
    }
    return doc;
  }

  async function answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ip = peerAddress(req.socket.remoteAddress);
    if (closing || deps.underPressure?.()) {
      send(res, 503, errorBody(503), ['retry-after', '1', ...(closing ? ['connection', 'close'] : [])]);
      return;
    }
    const url = req.url ?? '';
    const query = url.indexOf('?');
    if ((query < 0 ? url : url.slice(0, query)) !== CONTAINER_CREDENTIALS_PATH) {
      logger.debug({ ip, url: url.slice(0, 200) }, 'container credentials: not found');
      send(res, 404, errorBody(404));
      return;
    }
    if (req.method !== 'GET') {
      send(res, 405, errorBody(405), ['allow', 'GET']);
      return;
    }
    const header = req.headers.authorization;
    if (header === undefined || header.trim() === '') {
      refuse(res, 400, 'no-token', ip, { ip }, 'missing Authorization header');
      return;
    }
    const token = tokenOf(header);
    if (token === undefined) {
      refuse(res, 400, 'malformed-token', ip, { ip, length: header.length }, 'malformed Authorization header');
      return;
    }

    const ac = new AbortController();
    const onClose = () => {
      if (!res.writableEnded) ac.abort(new Error('client went away'));
    };
    res.once('close', onClose);
    let verdict: TokenAnswer;
    try {
      verdict = await identity.identify(token, ac.signal);
    } catch (err) {
      verdict = { kind: 'unavailable', code: 'identity-failed', reason: `token identity failed: ${err instanceof Error ? err.message : String(err)}` };
    } finally {
      res.off('close', onClose);
    }
    if (res.destroyed) return;
    // TokenIdentity names the token already (the hash it keys its cache by); hashing again costs a few µs a request.
    const id = verdict.tokenId ?? tokenId(token);

    switch (verdict.kind) {
      case 'unauthenticated':
        return refuse(res, 401, verdict.code ?? 'unauthenticated', `${ip}\0${id}`, { ip, token: id, detail: verdict.reason });
      case 'forbidden':
        return refuse(res, 403, verdict.code, `${ip}\0${id}`, { ip, token: id, detail: verdict.reason });
      case 'unavailable':
        return refuse(res, 503, verdict.code ?? 'unavailable', ip, { ip, token: id, detail: verdict.reason });
      case 'ok':
        break;
    }
    const { pod, lookup } = verdict;
    const who = { ip, pod: pod.name, namespace: pod.namespace, token: id };
    if (lookup.kind === 'no-role') return refuse(res, 403, 'no-role', pod.uid, who);
    if (lookup.kind === 'denied') return refuse(res, 403, lookup.code, pod.uid, { ...who, role: lookup.role, detail: lookup.reason });
    if (lookup.kind !== 'role') return refuse(res, 403, 'pod-not-found', pod.uid, { ...who, detail: `lookup answered ${lookup.kind}` });

    const role = lookup.identity;
    let creds = credentials.peek?.(role);
    if (creds === undefined) {
      try {
        creds = await credentials.get(role);
        if (!(creds.expiration > clock.now())) throw new Error('credential provider returned expired credentials');
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        metrics.tokenRefusals.inc({ reason: 'no-credentials' });
        const line = { status: 503, reason: 'no-credentials', ...who, role: role.roleArn, detail: message };
        if (noCredsWarned.first(`${role.key}\0${message}`)) logger.warn(line, 'container credentials refused');
        else logger.debug(line, 'container credentials refused');
        if (!res.destroyed) send(res, 503, errorBody(503), ['retry-after', '1']);
        return;
      }
      if (res.destroyed) return;
    }
    serve(res, creds, role, pod.uid, who);
  }

  /** The 200: the document of creds, rendered once per credentials object; logged the first time per pod. */
  function serve(res: ServerResponse, creds: Credentials, role: RoleIdentity, podUid: string, who: Record<string, string>): void {
    const doc = documentFor(creds, role);
    res.writeHead(200, doc.headers as string[]);
    res.end(doc.body);
    requests.inc({ code: '200' });
    const first = !doc.servedTo.has(podUid);
    if (first) doc.servedTo.add(podUid);
    if (first || logger.isLevelEnabled('debug')) {
      const fields = { ...who, role: role.roleArn, accessKeyId: creds.accessKeyId };
      if (first) logger.info(fields, 'credentials served by token');
      else logger.debug(fields, 'credentials served by token');
    }
  }

  /** The token of a request's Authorization header (bare, or after "Bearer "), undefined when it is no JWT. */
  function tokenOf(header: string): string | undefined {
    const token = header.trim().replace(BEARER, '');
    return JWT.test(token) ? token : undefined;
  }

  /**
   * The warm path, before any promise: a GET of exactly the path whose token, pod and credentials are all known
   * already (TokenIdentity.peek, the cache's peek) is answered at once. Anything else, or any doubt (closing, under
   * pressure), goes to answer(), which decides in full. Returns whether it answered.
   */
  function warm(req: IncomingMessage, res: ServerResponse): boolean {
    if (closing || req.method !== 'GET' || req.url !== CONTAINER_CREDENTIALS_PATH || !identity.peek || !credentials.peek) return false;
    const header = req.headers.authorization;
    const token = header === undefined ? undefined : tokenOf(header);
    if (token === undefined || deps.underPressure?.()) return false;
    const verdict = identity.peek(token);
    if (verdict?.kind !== 'ok' || verdict.lookup.kind !== 'role') return false;
    const role = verdict.lookup.identity;
    const creds = credentials.peek(role);
    if (creds === undefined) return false;
    const { pod } = verdict;
    serve(res, creds, role, pod.uid, { ip: peerAddress(req.socket.remoteAddress), pod: pod.name, namespace: pod.namespace, token: verdict.tokenId ?? '' });
    return true;
  }

  /** Something threw: logged; a 500 when nothing was sent yet, else the connection goes. */
  function failed(err: unknown, req: IncomingMessage, res: ServerResponse): void {
    logger.error({ err: err instanceof Error ? err.message : String(err), url: req.url?.slice(0, 200), ip: peerAddress(req.socket.remoteAddress) }, 'container credentials request failed');
    try {
      if (res.writableEnded) return;
      if (!res.headersSent) {
        send(res, 500, errorBody(500, 'internal error'));
        return;
      }
    } catch {
      // fall through: the connection goes
    }
    res.destroy();
  }

  function listener(req: IncomingMessage, res: ServerResponse): void {
    try {
      if (!limits.admit(req, res) || warm(req, res)) return;
      answer(req, res).catch((err: unknown) => failed(err, req, res));
    } catch (err) {
      failed(err, req, res);
    }
  }

  /** Malformed HTTP, headers too large (431) or too slow (408): fairness.ts answers on the socket (JSON) and closes it. */
  function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    const status = limits.clientError(err, socket);
    if (status !== undefined) requests.inc({ code: String(status) });
  }

  function makeServer(): http.Server {
    const server = http.createServer(limits.serverOptions(), listener);
    limits.attach(server);
    server.on('clientError', onClientError);
    return server;
  }

  async function listen(hosts: readonly string[], port: number): Promise<void> {
    if (hosts.length === 0) throw new Error('container credentials: no address to listen on');
    let at = port;
    try {
      for (const raw of hosts) {
        const host = raw.startsWith('[') && raw.endsWith(']') ? raw.slice(1, -1) : raw;
        const server = makeServer();
        await listenServer(server, host, at).catch((err: unknown) => {
          throw listenError(host, at, err);
        });
        servers.add(server);
        at = (server.address() as AddressInfo).port;
        bound.push({ host, port: at });
      }
    } catch (err) {
      await close();
      throw err;
    }
  }

  function close(): Promise<void> {
    if (closed) return closed;
    closing = true;
    const all = [...servers].map(
      (server) =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
        }),
    );
    servers.clear();
    bound.length = 0;
    closed = Promise.all(all).then(() => undefined);
    return closed;
  }

  return { listen, addresses: () => bound.map((b) => ({ ...b })), close };
}

function listenError(host: string, port: number, err: unknown): Error {
  const where = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  const hint =
    code === 'EADDRNOTAVAIL'
      ? ': the address is on no link of this network namespace (--container-credentials-link puts it on one; with none, something else must)'
      : code === 'EACCES'
        ? ': a port below 1024 needs the NET_BIND_SERVICE capability'
        : '';
  return new Error(`container credentials server cannot listen on ${where}: ${err instanceof Error ? err.message : String(err)}${hint}`, { cause: err });
}
