/**
 * A fake AWS STS speaking the Query protocol over HTTP, for unit, end-to-end tests and the demo.
 *
 * In process:   const sts = new FakeSts({ config: { delayMs: 50 } }); const url = await sts.start(); … await sts.stop();
 * Standalone:   node --import tsx test/fakes/sts.ts --host 127.0.0.1 --port 0 [--delay-ms N]
 *                 [--expect-access-key-id AKID --expect-secret-access-key SECRET] [--max-duration-seconds N]
 *               prints one JSON line {"url":"http://127.0.0.1:PORT"} once listening; exits 0 on SIGTERM/SIGINT.
 *
 * `POST /` with a form body `Action=AssumeRole&Version=2011-06-15&RoleArn=…&RoleSessionName=…&DurationSeconds=…
 * [&ExternalId=…][&Tags.member.N.Key=…&Tags.member.N.Value=…]` answers AssumeRoleResponse XML as real STS does (tags
 * checked against STS's limits); errors are ErrorResponse XML with 400/403.
 * Credentials are distinguishable per call: AccessKeyId `ASIAFAKE` + a 12-digit counter (never reset), the
 * secret and token derived from the same counter (nothing secret in them). Expiration = now + DurationSeconds
 * (capped by maxDurationSeconds), whole seconds, `Z`.
 *
 * Control API on the same server (JSON):
 *   GET  /_fake/calls            → FakeStsCall[] (every AssumeRole request, failed ones included)
 *   GET  /_fake/config           → the current FakeStsConfig
 *   POST /_fake/config {…}       → merge into the config (see FakeStsConfig), answers the result
 *   POST /_fake/reset            → calls cleared, config back to what the server started with
 *
 * Also exported: ScriptedSts, an in-process StsGateway whose answers a unit test scripts (no HTTP).
 */
import { createHash, createHmac, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { SignatureV4 } from '@smithy/signature-v4';
import { runStandalone } from './standalone.ts';
import type { AssumeRoleRequest, StsCredentials, StsGateway } from '../../src/cache/sts.ts';

export type MalformedKind = 'empty' | 'garbage' | 'no-credentials' | 'no-token' | 'bad-expiration';

export interface FakeStsConfig {
  /** Delay before every answer, ms. */
  delayMs: number;
  /** Delay per role ARN (overrides delayMs for that role). */
  roleDelayMs: Record<string, number>;
  /** The next N AssumeRole calls fail with failCode. */
  failNext: number;
  /** Error code for failNext (default Throttling). Known codes get their real status and type. */
  failCode: string;
  /** Role ARNs answered with AccessDenied. */
  denyRoles: string[];
  /** Roles whose ARN contains `forbidden` are answered with AccessDenied. */
  denyForbidden: boolean;
  /** Role ARNs whose trust policy lacks sts:TagSession: a call passing session tags gets AccessDenied. */
  denyTagSession: string[];
  /** The next N calls get a malformed 200 answer of this kind. */
  malformedNext: number;
  malformedKind: MalformedKind;
  /** Cap on the lifetime granted (STS may answer with less than asked). */
  maxDurationSeconds?: number;
  /** When set, every request must carry a valid SigV4 signature made with these keys. */
  expectedCredentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

export interface FakeStsCall {
  roleArn: string;
  sessionName: string;
  externalId?: string;
  durationSeconds: number;
  /** Session tags passed (Tags.member.N.Key/Value), in order; absent when none. */
  tags?: Array<{ key: string; value: string }>;
  /** TransitiveTagKeys.member.N, when any. */
  transitiveTagKeys?: string[];
  /** Epoch ms when the request arrived. */
  time: number;
  /** 'ok' or the error code / 'malformed:<kind>' answered. */
  result: string;
  /** Set on success. */
  accessKeyId?: string;
  /** Epoch ms, set on success. */
  expiration?: number;
}

export interface FakeStsOptions {
  host?: string;
  port?: number;
  config?: Partial<FakeStsConfig>;
  /** Time source for Expiration and the call log (default Date.now). */
  now?: () => number;
}

const DEFAULT_CONFIG: FakeStsConfig = {
  delayMs: 0,
  roleDelayMs: {},
  failNext: 0,
  failCode: 'Throttling',
  denyRoles: [],
  denyForbidden: true,
  denyTagSession: [],
  malformedNext: 0,
  malformedKind: 'empty',
};

const ERRORS: Record<string, { status: number; type: 'Sender' | 'Receiver'; message: string }> = {
  Throttling: { status: 400, type: 'Sender', message: 'Rate exceeded' },
  AccessDenied: { status: 403, type: 'Sender', message: 'not authorized to perform: sts:AssumeRole' },
  SignatureDoesNotMatch: {
    status: 403,
    type: 'Sender',
    message: 'The request signature we calculated does not match the signature you provided.',
  },
  InvalidClientTokenId: { status: 403, type: 'Sender', message: 'The security token included in the request is invalid.' },
  MissingAuthenticationToken: { status: 403, type: 'Sender', message: 'Request is missing Authentication Token' },
  ExpiredToken: { status: 400, type: 'Sender', message: 'The security token included in the request is expired' },
  ValidationError: { status: 400, type: 'Sender', message: 'Validation error' },
  InvalidAction: { status: 400, type: 'Sender', message: 'Could not find operation' },
  RegionDisabledException: { status: 403, type: 'Sender', message: 'STS is not activated in this region' },
  InternalFailure: { status: 500, type: 'Receiver', message: 'Internal failure' },
  ServiceUnavailable: { status: 503, type: 'Receiver', message: 'Service unavailable' },
};

const ACCOUNT = '123456789012';
const SESSION_NAME = /^[\w+=,.@-]{2,64}$/;

export class FakeSts {
  private server: Server | undefined;
  private readonly host: string;
  private readonly port: number;
  private readonly initial: FakeStsConfig;
  private cfg: FakeStsConfig;
  private readonly now: () => number;
  private counter = 0;
  private readonly log: FakeStsCall[] = [];
  private readonly delays = new Set<NodeJS.Timeout>();
  private address = '';

  constructor(options: FakeStsOptions = {}) {
    this.host = options.host ?? '127.0.0.1';
    this.port = options.port ?? 0;
    this.initial = mergeConfig(structuredClone(DEFAULT_CONFIG), options.config ?? {});
    this.cfg = structuredClone(this.initial);
    this.now = options.now ?? Date.now;
  }

  /** Start listening; resolves with the base URL (http://host:port). */
  async start(): Promise<string> {
    if (this.server) return this.url;
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) send(res, 500, 'text/plain', `fake sts: ${String(err)}`);
        else res.destroy();
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    this.address = `http://${host}:${addr.port}`;
    return this.address;
  }

  get url(): string {
    if (!this.address) throw new Error('FakeSts: not started');
    return this.address;
  }

  /** Every AssumeRole call so far (a copy). */
  get calls(): FakeStsCall[] {
    return this.log.map((c) => ({ ...c }));
  }

  get config(): FakeStsConfig {
    return structuredClone(this.cfg);
  }

  /** Merge settings into the current config. Throws on a bad value. */
  configure(patch: Partial<FakeStsConfig>): FakeStsConfig {
    this.cfg = mergeConfig(this.cfg, patch);
    return this.config;
  }

  /** Clear the call log and return to the starting config. The credential counter keeps counting. */
  reset(): void {
    this.log.length = 0;
    this.cfg = structuredClone(this.initial);
  }

  async stop(): Promise<void> {
    for (const t of this.delays) clearTimeout(t);
    this.delays.clear();
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path.startsWith('/_fake/')) return this.control(req.method ?? '', path, body, res);
    if (req.method !== 'POST' || path !== '/') return send(res, 404, 'text/plain', 'not found');
    const params = new URLSearchParams(body);
    const time = this.now();
    const requestId = randomUUID();

    if (this.cfg.expectedCredentials) {
      const bad = await verifySigV4(req, body, this.cfg.expectedCredentials);
      if (bad) return this.fail(res, requestId, bad, undefined, this.callFrom(params, time, bad));
    }
    const action = params.get('Action');
    if (action !== 'AssumeRole') {
      return this.fail(res, requestId, 'InvalidAction', `Could not find operation ${action ?? ''} for version`);
    }
    const call = this.callFrom(params, time, 'ok');
    this.log.push(call);
    const invalid = validateParams(params);
    if (invalid) {
      call.result = 'ValidationError';
      return this.fail(res, requestId, 'ValidationError', invalid);
    }

    const delay = this.cfg.roleDelayMs[call.roleArn] ?? this.cfg.delayMs;
    if (delay > 0) {
      const alive = await this.wait(delay, res);
      if (!alive) return;
    }

    if (this.cfg.failNext > 0) {
      this.cfg.failNext--;
      call.result = this.cfg.failCode;
      return this.fail(res, requestId, this.cfg.failCode);
    }
    if (call.tags && this.cfg.denyTagSession.includes(call.roleArn)) {
      call.result = 'AccessDenied';
      return this.fail(
        res,
        requestId,
        'AccessDenied',
        `User: arn:aws:iam::${ACCOUNT}:user/kiam-agent is not authorized to perform: sts:TagSession on resource: ${call.roleArn}`,
      );
    }
    if (this.cfg.denyRoles.includes(call.roleArn) || (this.cfg.denyForbidden && call.roleArn.includes('forbidden'))) {
      call.result = 'AccessDenied';
      return this.fail(
        res,
        requestId,
        'AccessDenied',
        `User: arn:aws:iam::${ACCOUNT}:user/kiam-agent is not authorized to perform: sts:AssumeRole on resource: ${call.roleArn}`,
      );
    }
    if (this.cfg.malformedNext > 0) {
      this.cfg.malformedNext--;
      call.result = `malformed:${this.cfg.malformedKind}`;
      return send(res, 200, 'text/xml', malformedBody(this.cfg.malformedKind, requestId), requestId);
    }

    const n = ++this.counter;
    const granted = Math.min(call.durationSeconds, this.cfg.maxDurationSeconds ?? Infinity);
    const expiration = Math.floor(this.now() / 1000) * 1000 + granted * 1000;
    const accessKeyId = `ASIAFAKE${String(n).padStart(12, '0')}`;
    call.accessKeyId = accessKeyId;
    call.expiration = expiration;
    const roleName = call.roleArn.split('/').pop() ?? 'role';
    const xml =
      `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n` +
      `  <AssumeRoleResult>\n` +
      `    <AssumedRoleUser>\n` +
      `      <AssumedRoleId>AROAFAKE${String(n).padStart(12, '0')}:${esc(call.sessionName)}</AssumedRoleId>\n` +
      `      <Arn>arn:aws:sts::${ACCOUNT}:assumed-role/${esc(roleName)}/${esc(call.sessionName)}</Arn>\n` +
      `    </AssumedRoleUser>\n` +
      `    <Credentials>\n` +
      `      <AccessKeyId>${accessKeyId}</AccessKeyId>\n` +
      `      <SecretAccessKey>fakeSecretAccessKey${String(n).padStart(12, '0')}</SecretAccessKey>\n` +
      `      <SessionToken>fakeSessionToken/${n}/${Buffer.from(`${call.roleArn}|${call.sessionName}`).toString('base64')}</SessionToken>\n` +
      `      <Expiration>${isoSeconds(expiration)}</Expiration>\n` +
      `    </Credentials>\n` +
      `  </AssumeRoleResult>\n` +
      `  <ResponseMetadata>\n` +
      `    <RequestId>${requestId}</RequestId>\n` +
      `  </ResponseMetadata>\n` +
      `</AssumeRoleResponse>\n`;
    send(res, 200, 'text/xml', xml, requestId);
  }

  private callFrom(params: URLSearchParams, time: number, result: string): FakeStsCall {
    const call: FakeStsCall = {
      roleArn: params.get('RoleArn') ?? '',
      sessionName: params.get('RoleSessionName') ?? '',
      durationSeconds: Number(params.get('DurationSeconds') ?? 3600),
      time,
      result,
    };
    const ext = params.get('ExternalId');
    if (ext !== null) call.externalId = ext;
    const tags: Array<{ key: string; value: string }> = [];
    for (let n = 1; params.has(`Tags.member.${n}.Key`); n++) tags.push({ key: params.get(`Tags.member.${n}.Key`)!, value: params.get(`Tags.member.${n}.Value`) ?? '' });
    if (tags.length > 0) call.tags = tags;
    const transitive: string[] = [];
    for (let n = 1; params.has(`TransitiveTagKeys.member.${n}`); n++) transitive.push(params.get(`TransitiveTagKeys.member.${n}`)!);
    if (transitive.length > 0) call.transitiveTagKeys = transitive;
    return call;
  }

  private fail(res: ServerResponse, requestId: string, code: string, message?: string, call?: FakeStsCall): void {
    if (call) this.log.push(call);
    const known = ERRORS[code] ?? { status: 400, type: 'Sender' as const, message: code };
    const xml =
      `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n` +
      `  <Error>\n` +
      `    <Type>${known.type}</Type>\n` +
      `    <Code>${esc(code)}</Code>\n` +
      `    <Message>${esc(message ?? known.message)}</Message>\n` +
      `  </Error>\n` +
      `  <RequestId>${requestId}</RequestId>\n` +
      `</ErrorResponse>\n`;
    send(res, known.status, 'text/xml', xml, requestId);
  }

  /** Wait ms; false if the client went away or the server stopped meanwhile. */
  private wait(ms: number, res: ServerResponse): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.delays.delete(t);
        res.off('close', onClose);
        resolve(!res.destroyed);
      }, ms);
      const onClose = () => {
        if (res.writableEnded) return;
        clearTimeout(t);
        this.delays.delete(t);
        resolve(false);
      };
      res.on('close', onClose);
      this.delays.add(t);
    });
  }

  private control(method: string, path: string, body: string, res: ServerResponse): void {
    const json = (status: number, value: unknown) => send(res, status, 'application/json', JSON.stringify(value));
    if (method === 'GET' && path === '/_fake/calls') return json(200, this.log);
    if (method === 'GET' && path === '/_fake/config') return json(200, this.cfg);
    if (method === 'POST' && path === '/_fake/reset') {
      this.reset();
      return json(200, { ok: true });
    }
    if (method === 'POST' && path === '/_fake/config') {
      let patch: unknown;
      try {
        patch = body ? JSON.parse(body) : {};
      } catch {
        return json(400, { error: 'body is not JSON' });
      }
      if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return json(400, { error: 'body must be an object' });
      try {
        return json(200, this.configure(patch as Partial<FakeStsConfig>));
      } catch (err) {
        return json(400, { error: (err as Error).message });
      }
    }
    json(404, { error: `no such control endpoint: ${method} ${path}` });
  }
}

function mergeConfig(base: FakeStsConfig, patch: Partial<FakeStsConfig>): FakeStsConfig {
  const next: FakeStsConfig = { ...base, ...patch };
  const nonNegative = (name: keyof FakeStsConfig) => {
    const v = next[name];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new Error(`${name} must be a number ≥ 0`);
  };
  nonNegative('delayMs');
  nonNegative('failNext');
  nonNegative('malformedNext');
  if (next.maxDurationSeconds !== undefined && next.maxDurationSeconds !== null) nonNegative('maxDurationSeconds');
  if (next.maxDurationSeconds === null) delete next.maxDurationSeconds;
  if (typeof next.failCode !== 'string' || !next.failCode) throw new Error('failCode must be a non-empty string');
  if (!Array.isArray(next.denyRoles) || !next.denyRoles.every((r) => typeof r === 'string')) {
    throw new Error('denyRoles must be an array of strings');
  }
  if (!Array.isArray(next.denyTagSession) || !next.denyTagSession.every((r) => typeof r === 'string')) {
    throw new Error('denyTagSession must be an array of strings');
  }
  if (typeof next.roleDelayMs !== 'object' || next.roleDelayMs === null) throw new Error('roleDelayMs must be an object');
  for (const [k, v] of Object.entries(next.roleDelayMs)) {
    if (typeof v !== 'number' || !(v >= 0)) throw new Error(`roleDelayMs[${k}] must be a number ≥ 0`);
  }
  if (!['empty', 'garbage', 'no-credentials', 'no-token', 'bad-expiration'].includes(next.malformedKind)) {
    throw new Error('malformedKind must be one of empty, garbage, no-credentials, no-token, bad-expiration');
  }
  return next;
}

function validateParams(p: URLSearchParams): string | undefined {
  const arn = p.get('RoleArn') ?? '';
  if (arn.length < 20 || !arn.startsWith('arn:')) return `1 validation error detected: Value '${arn}' at 'roleArn' failed to satisfy constraint`;
  const name = p.get('RoleSessionName') ?? '';
  if (!SESSION_NAME.test(name)) return `1 validation error detected: Value '${name}' at 'roleSessionName' failed to satisfy constraint`;
  const d = Number(p.get('DurationSeconds') ?? 3600);
  if (!Number.isInteger(d) || d < 900 || d > 43200) return `1 validation error detected: Value '${d}' at 'durationSeconds' failed to satisfy constraint`;
  const ext = p.get('ExternalId');
  if (ext !== null && (ext.length < 2 || ext.length > 1224)) return `1 validation error detected: Value at 'externalId' failed to satisfy constraint`;
  // Session tags as https://docs.aws.amazon.com/STS/latest/APIReference/API_Tag.html constrains them.
  const keys = new Set<string>();
  for (let n = 1; p.has(`Tags.member.${n}.Key`); n++) {
    if (n > 50) return '1 validation error detected: Value at \'tags\' failed to satisfy constraint: Member must have length less than or equal to 50';
    const key = p.get(`Tags.member.${n}.Key`)!;
    const value = p.get(`Tags.member.${n}.Value`);
    if (!/^[\p{L}\p{Z}\p{N}_.:/=+\-@]{1,128}$/u.test(key)) return `1 validation error detected: Value '${key}' at 'tags.${n}.member.key' failed to satisfy constraint`;
    if (value === null || !/^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$/u.test(value)) return `1 validation error detected: Value at 'tags.${n}.member.value' failed to satisfy constraint`;
    if (keys.has(key.toLowerCase())) return `Duplicate tag keys found. Please note that Tag keys are case insensitive.`;
    keys.add(key.toLowerCase());
  }
  return undefined;
}

function malformedBody(kind: MalformedKind, requestId: string): string {
  const wrap = (creds: string) =>
    `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>${creds}</AssumeRoleResult>` +
    `<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></AssumeRoleResponse>`;
  const exp = isoSeconds(Date.now() + 3600_000);
  switch (kind) {
    case 'empty':
      return '';
    case 'garbage':
      return 'this is not xml <<<';
    case 'no-credentials':
      return wrap('');
    case 'no-token':
      return wrap(
        `<Credentials><AccessKeyId>ASIAFAKEMALFORMED0</AccessKeyId><SecretAccessKey>x</SecretAccessKey><Expiration>${exp}</Expiration></Credentials>`,
      );
    case 'bad-expiration':
      return wrap(
        `<Credentials><AccessKeyId>ASIAFAKEMALFORMED0</AccessKeyId><SecretAccessKey>x</SecretAccessKey><SessionToken>t</SessionToken><Expiration>soon</Expiration></Credentials>`,
      );
  }
}

/** Check the request's SigV4 signature by signing the same request again; returns an error code or undefined. */
async function verifySigV4(
  req: IncomingMessage,
  body: string,
  expected: { accessKeyId: string; secretAccessKey: string; sessionToken?: string },
): Promise<string | undefined> {
  const auth = req.headers.authorization;
  if (!auth) return 'MissingAuthenticationToken';
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)$/.exec(auth);
  if (!m) return 'IncompleteSignature';
  const [, keyId, , region, service, signedHeaders] = m as unknown as [string, string, string, string, string, string, string];
  if (keyId !== expected.accessKeyId) return 'InvalidClientTokenId';
  const amzDate = req.headers['x-amz-date'];
  if (typeof amzDate !== 'string' || !/^\d{8}T\d{6}Z$/.test(amzDate)) return 'IncompleteSignature';
  const signingDate = new Date(
    `${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`,
  );
  const names = signedHeaders.split(';');
  const headers: Record<string, string> = {};
  for (const name of names) {
    const v = req.headers[name];
    if (v === undefined) return 'SignatureDoesNotMatch';
    headers[name] = Array.isArray(v) ? v.join(',') : v;
  }
  const url = new URL(req.url ?? '/', 'http://placeholder');
  const query: Record<string, string> = {};
  url.searchParams.forEach((v, k) => (query[k] = v));
  const signer = new SignatureV4({
    credentials: expected,
    region,
    service,
    sha256: NodeSha256,
    applyChecksum: names.includes('x-amz-content-sha256'),
  });
  const [hostname, port] = (headers.host ?? '').split(':');
  const signed = await signer.sign(
    {
      method: req.method ?? 'POST',
      protocol: 'http:',
      hostname: hostname ?? '',
      ...(port ? { port: Number(port) } : {}),
      path: url.pathname,
      query,
      headers,
      body,
    },
    { signingDate, signingRegion: region, signingService: service },
  );
  return signed.headers.authorization === auth ? undefined : 'SignatureDoesNotMatch';
}

/** SHA-256 / HMAC-SHA-256 over node:crypto in the shape @smithy/signature-v4 wants. */
class NodeSha256 {
  private readonly secret: Uint8Array | undefined;
  private hash: ReturnType<typeof createHash> | ReturnType<typeof createHmac>;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.secret = secret === undefined ? undefined : toBytes(secret);
    this.hash = this.fresh();
  }
  update(data: string | ArrayBuffer | ArrayBufferView): void {
    this.hash.update(toBytes(data));
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.hash.digest());
  }
  reset(): void {
    this.hash = this.fresh();
  }
  private fresh() {
    return this.secret ? createHmac('sha256', this.secret) : createHash('sha256');
  }
}

function toBytes(data: string | ArrayBuffer | ArrayBufferView): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > 1 << 20) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, type: string, body: string, requestId?: string): void {
  if (res.destroyed) return;
  res.writeHead(status, {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    ...(requestId ? { 'x-amzn-requestid': requestId } : {}),
  });
  res.end(body);
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function isoSeconds(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

runStandalone('fake sts', import.meta.url, async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      'delay-ms': { type: 'string', default: '0' },
      'max-duration-seconds': { type: 'string' },
      'expect-access-key-id': { type: 'string' },
      'expect-secret-access-key': { type: 'string' },
    },
    strict: true,
  });
  const num = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${flag} must be a whole number ≥ 0, got ${JSON.stringify(v)}`);
    return n;
  };
  const config: Partial<FakeStsConfig> = { delayMs: num('delay-ms', values['delay-ms']) ?? 0 };
  const maxDuration = num('max-duration-seconds', values['max-duration-seconds']);
  if (maxDuration !== undefined) config.maxDurationSeconds = maxDuration;
  const akid = values['expect-access-key-id'];
  const secret = values['expect-secret-access-key'];
  if ((akid === undefined) !== (secret === undefined)) {
    throw new Error('--expect-access-key-id and --expect-secret-access-key go together');
  }
  if (akid !== undefined && secret !== undefined) config.expectedCredentials = { accessKeyId: akid, secretAccessKey: secret };

  const sts = new FakeSts({ host: values.host, port: num('port', values.port) ?? 0, config });
  const url = await sts.start();
  return { announce: { url }, close: () => sts.stop() };
});

/** One call seen by ScriptedSts. */
export interface ScriptedCall {
  req: AssumeRoleRequest;
  signal: AbortSignal;
  /** Settled yet (by the script, resolve/reject, or the signal). */
  settled: boolean;
  resolve(creds: StsCredentials): void;
  reject(err: unknown): void;
}

/**
 * An in-process StsGateway for unit tests. With a `respond` script each call is answered on the next
 * microtask (credentials, or a thrown error); a script returning 'hang' (or no script) leaves the call pending
 * for the test to settle through `calls[i].resolve/reject`. Pending calls reject when their signal aborts.
 */
export class ScriptedSts implements StsGateway {
  readonly calls: ScriptedCall[] = [];
  respond: ((req: AssumeRoleRequest, n: number) => StsCredentials | Error | 'hang') | undefined;

  constructor(respond?: ScriptedSts['respond']) {
    this.respond = respond;
  }

  /** Calls not settled yet. */
  get inFlight(): number {
    return this.calls.filter((c) => !c.settled).length;
  }

  assumeRole(req: AssumeRoleRequest, signal: AbortSignal): Promise<StsCredentials> {
    return new Promise<StsCredentials>((resolve, reject) => {
      const call: ScriptedCall = {
        req,
        signal,
        settled: false,
        resolve: (c) => {
          if (call.settled) return;
          call.settled = true;
          resolve(c);
        },
        reject: (e) => {
          if (call.settled) return;
          call.settled = true;
          reject(e);
        },
      };
      this.calls.push(call);
      signal.addEventListener('abort', () => call.reject(signal.reason), { once: true });
      const answer = this.respond?.(req, this.calls.length);
      if (answer === undefined || answer === 'hang') return;
      queueMicrotask(() => (answer instanceof Error ? call.reject(answer) : call.resolve(answer)));
    });
  }
}
