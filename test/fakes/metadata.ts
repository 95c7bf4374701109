/**
 * A fake of the REAL instance metadata service, as the node sees it: IMDSv2 token rules, a handful of
 * meta-data paths, the NODE's own role and credentials (AccessKeyId starting `ASIANODE`, so tests can prove
 * they never reach a pod), user-data and identity credentials (which the agent's deny list must hold
 * back), and a log of every request it saw (method, path, headers).
 *
 * Library: `const fake = new FakeMetadataService(); const url = await fake.start(); … await fake.close()`.
 * Process: `node --import tsx test/fakes/metadata.ts --host 127.0.0.1 --port 0` prints one JSON line
 * {"url": "http://127.0.0.1:PORT", "urls": […]} once listening (`--host` may be repeated, e.g. 169.254.169.254 and
 * fd00:ec2::254: one service on the same port of each, `url` is the first); GET /_fake/requests returns the log,
 * POST /_fake/reset clears it; SIGTERM/SIGINT close it and exit 0.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { runStandalone } from './standalone.ts';

export interface SeenRequest {
  method: string;
  /** The request target exactly as received. */
  path: string;
  /** Header names lower-cased, as node delivers them. */
  headers: Record<string, string | string[] | undefined>;
  /** The peer's address: end-to-end tests prove no pod ever reached the real service. */
  remoteAddress: string;
}

/**
 * optional: tokens accepted, token-less GETs too (the default, like an instance with IMDSv2 optional);
 * required: token-less GETs → 401; v1-only: the token PUT → 404 (an old service or a hop limit in the way).
 */
export type TokenMode = 'optional' | 'required' | 'v1-only';

export interface FakeMetadataOptions {
  tokenMode?: TokenMode;
  region?: string;
  instanceId?: string;
  localIpv4?: string;
}

export const NODE_ROLE = 'node-role';
export const NODE_INSTANCE_PROFILE_ARN = 'arn:aws:iam::111122223333:instance-profile/node-role';
export const NODE_ACCESS_KEY_ID = 'ASIANODEAAAAAAAAAAAA';
export const NODE_IDENTITY_ACCESS_KEY_ID = 'ASIANODEIDENTITYAAAA';
export const USER_DATA = '#!/bin/bash\necho "node bootstrap secret: s3cr3t-user-data"\n';

const TOKEN_TTL_HEADER = 'x-aws-ec2-metadata-token-ttl-seconds';
const TOKEN_HEADER = 'x-aws-ec2-metadata-token';

export class FakeMetadataService {
  readonly requests: SeenRequest[] = [];
  tokenMode: TokenMode;
  /** Milliseconds to hold every answer (timeouts in tests). */
  delayMs = 0;
  private readonly tokens = new Map<string, number>();
  private readonly paths: Map<string, string>;
  /** One server per listening address, all answering from the same state. */
  private readonly servers: http.Server[] = [];
  private readonly sockets = new Set<import('node:net').Socket>();

  constructor(options: FakeMetadataOptions = {}) {
    this.tokenMode = options.tokenMode ?? 'optional';
    this.paths = buildPaths(options);
  }

  /**
   * Listen on one address, or on each of several (the port the first one got, when port is 0); resolves with the
   * first one's base URL (no trailing slash).
   */
  async start(host: string | readonly string[] = '127.0.0.1', port = 0): Promise<string> {
    for (const h of typeof host === 'string' ? [host] : host) {
      const server = http.createServer((req, res) => this.handle(req, res));
      server.on('connection', (socket) => {
        this.sockets.add(socket);
        socket.on('close', () => this.sockets.delete(socket));
      });
      this.servers.push(server);
      const p = this.servers.length > 1 ? (this.servers[0]!.address() as AddressInfo).port : port;
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(p, h, () => {
          server.off('error', reject);
          resolve();
        });
      });
    }
    return this.url;
  }

  get url(): string {
    return this.urls[0] ?? '';
  }

  /** The base URL of every address it listens on. */
  get urls(): string[] {
    return this.servers.map((server) => {
      const addr = server.address() as AddressInfo;
      const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
      return `http://${host}:${addr.port}`;
    });
  }

  /** Requests seen for a path (exact request target), or all but the fake's own control paths. */
  seen(path?: string): SeenRequest[] {
    return path === undefined ? this.requests : this.requests.filter((r) => r.path === path);
  }

  reset(): void {
    this.requests.length = 0;
  }

  /** Forget every token it issued (as a restarted service would): the next GET with one → 401. */
  revokeTokens(): void {
    this.tokens.clear();
  }

  async close(): Promise<void> {
    const closed = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const s of this.sockets) s.destroy();
    await Promise.all(closed);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const target = req.url ?? '/';
    if (target.startsWith('/_fake/')) {
      this.control(req, res, target);
      return;
    }
    this.requests.push({ method: req.method ?? '', path: target, headers: { ...req.headers }, remoteAddress: (req.socket.remoteAddress ?? '').replace(/^::ffff:/, '') });
    req.resume();
    const answer = () => this.answer(req, res, target);
    if (this.delayMs > 0) setTimeout(answer, this.delayMs).unref();
    else answer();
  }

  private control(req: http.IncomingMessage, res: http.ServerResponse, target: string): void {
    req.resume();
    if (target === '/_fake/requests' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.requests));
    } else if (target === '/_fake/reset' && req.method === 'POST') {
      this.reset();
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse, target: string): void {
    res.setHeader('server', 'EC2ws');
    const path = target.split('?')[0] ?? '/';
    if (path === '/latest/api/token') {
      this.token(req, res);
      return;
    }
    const method = req.method ?? '';
    if (method !== 'GET' && method !== 'HEAD') return error(res, 405);

    const token = req.headers[TOKEN_HEADER];
    if (token !== undefined) {
      const expires = typeof token === 'string' ? this.tokens.get(token) : undefined;
      if (expires === undefined || expires <= Date.now()) return error(res, 401);
    } else if (this.tokenMode === 'required') {
      return error(res, 401);
    }

    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(method === 'HEAD' ? undefined : '1.0\n2016-09-02\nlatest');
      return;
    }
    // Strip the version prefix: /latest/…, /2016-09-02/….
    const m = /^\/(?:latest|\d{4}-\d{2}-\d{2})(\/.*)?$/.exec(path);
    if (!m) return error(res, 404);
    const body = this.paths.get(m[1] ?? '');
    if (body === undefined) return error(res, 404);
    const type = m[1] === '/dynamic/instance-identity/document' ? 'application/json' : 'text/plain';
    res.writeHead(200, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
    res.end(method === 'HEAD' ? undefined : body);
  }

  private token(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method !== 'PUT') {
      res.setHeader('allow', 'OPTIONS, PUT');
      return error(res, 405);
    }
    if (this.tokenMode === 'v1-only') return error(res, 404);
    if (req.headers['x-forwarded-for'] !== undefined) return error(res, 403);
    const raw = req.headers[TOKEN_TTL_HEADER];
    const ttl = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : NaN;
    if (!(ttl >= 1 && ttl <= 21600)) return error(res, 400);
    const token = `AQAEA${randomBytes(36).toString('base64')}`;
    this.tokens.set(token, Date.now() + ttl * 1000);
    res.writeHead(200, { 'content-type': 'text/plain', [TOKEN_TTL_HEADER]: String(ttl) }).end(token);
  }
}

function error(res: http.ServerResponse, status: number): void {
  const title = `${status} - ${http.STATUS_CODES[status] ?? 'Error'}`;
  res.writeHead(status, { 'content-type': 'text/html' });
  res.end(`<?xml version="1.0" encoding="iso-8859-1"?>\n<html><head><title>${title}</title></head><body><h1>${title}</h1></body></html>\n`);
}

function credentialDocument(accessKeyId: string): string {
  const now = Date.now();
  const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
  return JSON.stringify(
    {
      Code: 'Success',
      LastUpdated: iso(now),
      Type: 'AWS-HMAC',
      AccessKeyId: accessKeyId,
      SecretAccessKey: 'node-secret-access-key-never-for-pods',
      Token: 'node-session-token-never-for-pods',
      Expiration: iso(now + 6 * 3600_000),
    },
    null,
    2,
  );
}

function buildPaths(options: FakeMetadataOptions): Map<string, string> {
  const region = options.region ?? 'eu-west-1';
  const instanceId = options.instanceId ?? 'i-0123456789abcdef0';
  const localIpv4 = options.localIpv4 ?? '10.0.0.10';
  return new Map<string, string>([
    ['', 'dynamic\nmeta-data\nuser-data'],
    ['/', 'dynamic\nmeta-data\nuser-data'],
    ['/meta-data/', 'ami-id\nhostname\niam/\nidentity-credentials/\ninstance-id\nlocal-ipv4\nplacement/'],
    ['/meta-data/ami-id', 'ami-0abcdef1234567890'],
    ['/meta-data/hostname', 'ip-10-0-0-10.eu-west-1.compute.internal'],
    ['/meta-data/instance-id', instanceId],
    ['/meta-data/local-ipv4', localIpv4],
    ['/meta-data/placement/', 'availability-zone\nregion'],
    ['/meta-data/placement/availability-zone', `${region}a`],
    ['/meta-data/placement/region', region],
    ['/meta-data/iam/', 'info\nsecurity-credentials/'],
    [
      '/meta-data/iam/info',
      JSON.stringify({ Code: 'Success', LastUpdated: '2026-11-28T06:00:00Z', InstanceProfileArn: NODE_INSTANCE_PROFILE_ARN, InstanceProfileId: 'AIPANODEPROFILE000001' }, null, 2),
    ],
    ['/meta-data/iam/security-credentials/', NODE_ROLE],
    ['/meta-data/iam/security-credentials', NODE_ROLE],
    [`/meta-data/iam/security-credentials/${NODE_ROLE}`, credentialDocument(NODE_ACCESS_KEY_ID)],
    ['/meta-data/identity-credentials/ec2/security-credentials/', 'ec2-instance'],
    ['/meta-data/identity-credentials/ec2/security-credentials/ec2-instance', credentialDocument(NODE_IDENTITY_ACCESS_KEY_ID)],
    ['/user-data', USER_DATA],
    [
      '/dynamic/instance-identity/document',
      JSON.stringify({ accountId: '111122223333', instanceId, region, privateIp: localIpv4, availabilityZone: `${region}a` }, null, 2),
    ],
  ]);
}

function parseArgs(argv: string[]): { hosts: string[]; port: number; tokenMode: TokenMode } {
  const out = { hosts: [] as string[], port: 0, tokenMode: 'optional' as TokenMode };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === '--host' && value !== undefined) out.hosts.push(value);
    else if (flag === '--port' && value !== undefined && /^\d+$/.test(value)) out.port = Number(value);
    else if (flag === '--token-mode' && (value === 'optional' || value === 'required' || value === 'v1-only')) out.tokenMode = value;
    else throw new Error(`usage: metadata.ts [--host ADDR]… [--port N] [--token-mode optional|required|v1-only] (bad argument ${flag})`);
    i++;
  }
  return out;
}

runStandalone('fake metadata service', import.meta.url, async (argv) => {
  const args = parseArgs(argv);
  const fake = new FakeMetadataService({ tokenMode: args.tokenMode });
  const url = await fake.start(args.hosts.length ? args.hosts : '127.0.0.1', args.port);
  return { announce: { url, urls: fake.urls }, close: () => fake.close() };
});
