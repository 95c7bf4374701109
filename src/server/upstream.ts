import http from 'node:http';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';

/**
 * The client for the real metadata service (`--metadata-endpoint`), used for pass-through and for the
 * agent's own look-ups. It holds the agent's OWN IMDSv2 session: a token PUT with TTL 21600 s, renewed
 * before expiry, shared by concurrent requests; a 403/404/405 on the PUT means IMDSv1 (token-less GETs)
 * until a GET answers 401. A 401 is retried once with a fresh token. Only the method and the path are
 * forwarded: never a pod's token, X-Forwarded-For or any other header of the pod.
 */
export interface UpstreamResponse {
  status: number;
  contentType: string | undefined;
  /** The upstream's Content-Length header (meaningful for HEAD, whose body is empty). */
  contentLength: number | undefined;
  body: Buffer;
}

export type UpstreamErrorKind = 'timeout' | 'network' | 'status' | 'too-large' | 'invalid';

export class UpstreamError extends Error {
  constructor(
    readonly kind: UpstreamErrorKind,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

export interface UpstreamClient {
  /** Forward one GET/HEAD. Resolves with whatever status the upstream answered; rejects with UpstreamError. */
  request(method: 'GET' | 'HEAD', path: string): Promise<UpstreamResponse>;
  /** GET a path and return its body; rejects unless the status is 200. */
  getText(path: string): Promise<string>;
  /** GET a path and parse its body as JSON; rejects unless 200 and valid JSON. */
  getJson(path: string): Promise<unknown>;
  /** Drop idle keep-alive sockets. */
  close(): void;
}

export interface UpstreamOptions {
  /** Base URL, e.g. http://169.254.169.254 (http only, as the real service). */
  endpoint: string;
  clock: Clock;
  logger: Logger;
  /** Per-request deadline (connect + response), default 2000 ms. */
  timeoutMs?: number;
  /** TTL asked for the agent's own token, default 21600 s. */
  tokenTtlSeconds?: number;
  /** Larger bodies fail with 'too-large', default 1 MiB. */
  maxBodyBytes?: number;
}

const TOKEN_PATH = '/latest/api/token';
const V1_STATUSES = new Set([403, 404, 405]);

interface Session {
  /** undefined: IMDSv1 (the PUT was refused). */
  token: string | undefined;
  /** Renew at this instant (epoch ms). */
  renewAt: number;
}

export function createUpstream(options: UpstreamOptions): UpstreamClient {
  const base = new URL(options.endpoint);
  if (base.protocol !== 'http:') throw new Error(`metadata endpoint must be an http:// URL, got ${options.endpoint}`);
  const prefix = base.pathname.replace(/\/+$/, '');
  const { clock, logger } = options;
  const timeoutMs = options.timeoutMs ?? 2000;
  const ttl = options.tokenTtlSeconds ?? 21600;
  const maxBody = options.maxBodyBytes ?? 1024 * 1024;
  // Renew with 5 minutes (or half the TTL, if shorter) to spare.
  const renewMarginMs = Math.min(300_000, (ttl * 1000) / 2);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32, maxFreeSockets: 8, timeout: 30_000 });

  let session: Session | undefined;
  let pending: Promise<Session> | undefined;

  function send(method: string, path: string, headers: Record<string, string>): Promise<UpstreamResponse> {
    const url = new URL(base.origin);
    url.pathname = prefix + (path.startsWith('/') ? path : `/${path}`);
    return new Promise((resolve, reject) => {
      const signal = AbortSignal.timeout(timeoutMs);
      const req = http.request(url, { method, headers, agent, signal }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxBody) {
            res.destroy();
            reject(new UpstreamError('too-large', `upstream body over ${maxBody} bytes for ${path}`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          const len = res.headers['content-length'];
          resolve({
            status: res.statusCode ?? 502,
            contentType: res.headers['content-type'],
            contentLength: len !== undefined && /^\d+$/.test(len) ? Number(len) : undefined,
            body: Buffer.concat(chunks),
          });
        });
        res.on('error', (err) => reject(toUpstreamError(err, signal, path)));
      });
      req.on('error', (err) => reject(toUpstreamError(err, signal, path)));
      req.end();
    });
  }

  async function putToken(): Promise<Session> {
    const res = await send('PUT', TOKEN_PATH, { 'x-aws-ec2-metadata-token-ttl-seconds': String(ttl) });
    const now = clock.now();
    if (res.status === 200) {
      const token = res.body.toString('utf8').trim();
      if (!token || /[\r\n]/.test(token)) throw new UpstreamError('invalid', 'upstream token PUT returned an empty token');
      return { token, renewAt: now + ttl * 1000 - renewMarginMs };
    }
    if (V1_STATUSES.has(res.status)) {
      logger.info({ status: res.status }, 'upstream metadata refused the token PUT: using IMDSv1');
      // Stay on v1 until a GET answers 401.
      return { token: undefined, renewAt: Number.POSITIVE_INFINITY };
    }
    throw new UpstreamError('status', `upstream token PUT answered ${res.status}`, res.status);
  }

  /** The current session; a fresh one when none, due for renewal, or `stale` is the one that just failed. */
  function currentSession(stale?: Session): Promise<Session> {
    if (session && session !== stale && clock.now() < session.renewAt) return Promise.resolve(session);
    if (!pending) {
      pending = putToken()
        .then((s) => {
          session = s;
          return s;
        })
        .finally(() => {
          pending = undefined;
        });
    }
    return pending;
  }

  async function request(method: 'GET' | 'HEAD', path: string): Promise<UpstreamResponse> {
    let s = await currentSession();
    let res = await send(method, path, s.token ? { 'x-aws-ec2-metadata-token': s.token } : {});
    if (res.status === 401) {
      s = await currentSession(s);
      res = await send(method, path, s.token ? { 'x-aws-ec2-metadata-token': s.token } : {});
    }
    return res;
  }

  async function getText(path: string): Promise<string> {
    const res = await request('GET', path);
    if (res.status !== 200) throw new UpstreamError('status', `upstream ${path} answered ${res.status}`, res.status);
    return res.body.toString('utf8');
  }

  return {
    request,
    getText,
    async getJson(path) {
      const text = await getText(path);
      try {
        return JSON.parse(text) as unknown;
      } catch {
        throw new UpstreamError('invalid', `upstream ${path} did not return JSON`);
      }
    },
    close() {
      agent.destroy();
    },
  };
}

function toUpstreamError(err: Error, signal: AbortSignal, path: string): UpstreamError {
  if (err instanceof UpstreamError) return err;
  if (signal.aborted) return new UpstreamError('timeout', `upstream ${path} timed out`);
  return new UpstreamError('network', `upstream ${path}: ${err.message}`);
}

const INSTANCE_PROFILE_ARN = /^arn:(aws[a-z-]*):iam::(\d{12}):instance-profile\/.+$/;

/**
 * `--role-base-arn-autodetect`: the node's instance profile ARN from meta-data/iam/info, turned into the
 * base for role names, e.g. `arn:aws:iam::111122223333:role/`. Rejects with a clear message otherwise.
 */
export async function autodetectRoleBaseArn(upstream: Pick<UpstreamClient, 'getJson'>): Promise<string> {
  const info = await upstream.getJson('/latest/meta-data/iam/info');
  const arn = typeof info === 'object' && info !== null ? (info as Record<string, unknown>).InstanceProfileArn : undefined;
  if (typeof arn !== 'string') throw new Error('meta-data/iam/info has no InstanceProfileArn: does the node have an instance profile?');
  const m = INSTANCE_PROFILE_ARN.exec(arn);
  if (!m) throw new Error(`cannot derive a role base ARN from instance profile ARN ${JSON.stringify(arn)}`);
  return `arn:${m[1]}:iam::${m[2]}:role/`;
}
