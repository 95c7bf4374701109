/**
 * The benchmark's load generator, run inside a pod network namespace (one process per namespace, two at once).
 * Raw sockets and hand-written HTTP/1.1 bytes — far cheaper per request than node's http client, so the
 * generator is not what limits the server. Closed loop: every slot keeps exactly one request in flight.
 *
 *   node --import tsx bench/loadgen.ts '<GenConfig JSON>'    → prints one line {"result": GenResult}
 *   node --import tsx bench/loadgen.ts --fetch '<FetchConfig JSON>' → prints {"status","head","body"(base64)}
 *
 *   node --import tsx bench/loadgen.ts --prime '<PrimeConfig JSON>' → prints {"primed": [status, …]}
 *
 * Slot kinds: `ka` GETs the role's credential document over one keep-alive connection; `new` opens a new
 * connection per request (`Connection: close`); `token` does the IMDSv2 pair over keep-alive (PUT the token, then
 * GET the document with it). Each slot binds its connections to one source IP of this namespace, i.e. one pod, and
 * asks for that pod's role. With `protocol: 'container-credentials'` (issue 10's token path), `ka` and `new` GET
 * /v1/credentials with the source pod's service-account token in the Authorization header instead (the pod is named
 * by its token; the source IP only spreads the connections as before). Only responses completed inside
 * [measureFrom, measureTo] (epoch ms) are counted; the time before is warm-up. Non-200 answers and socket errors
 * are counted as errors by status / error code.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { Histogram, type HistogramJson } from './lib/histogram.ts';
import { ProtocolError, ResponseParser, type Response } from './lib/http-response.ts';
import { authorization, CONTAINER_CREDENTIALS } from './lib/token-path.ts';

export type SlotKind = 'ka' | 'new' | 'token';

/** What the slots ask: the instance metadata document of the role (default), or the container-credentials one by token. */
export type Protocol = 'imds' | 'container-credentials';

export interface GenConfig {
  host: string;
  port: number;
  protocol?: Protocol;
  /** token: the source pod's service-account token (container-credentials only). */
  sources: { ip: string; role: string; token?: string }[];
  slots: { kind: SlotKind; source: number; pauseMs?: number }[];
  measureFrom: number;
  measureTo: number;
}

export interface GenResult {
  requests: number;
  /** Completed (any status) per slot kind, inside the window. */
  byKind: Partial<Record<SlotKind, number>>;
  ok: number;
  errors: { status: Record<string, number>; net: Record<string, number>; protocol: number };
  latencyUs: HistogramJson;
  /** CPU of this process inside the window, µs. */
  cpuUs: { user: number; system: number };
  windowMs: number;
  /** How late this process began relative to measureFrom (negative = in time, with warm-up). */
  lateMs: number;
  connections: number;
}

export interface FetchConfig {
  host: string;
  port: number;
  ip: string;
  method?: string;
  path: string;
  headers?: Record<string, string>;
  /** The Host header; default 169.254.169.254. */
  hostHeader?: string;
}

/**
 * Requests made one after the other until each is answered something else than 503 (the agent's answer while a
 * TokenReview is rate-bounded or the listener is not up yet: wait retryMs and ask again), or deadlineMs passed.
 * Used to have the agent review every token before a measured run.
 */
export interface PrimeConfig {
  requests: FetchConfig[];
  retryMs?: number;
  deadlineMs?: number;
}

const DOC_PATH = '/latest/meta-data/iam/security-credentials/';
const IMDS_HOST = '169.254.169.254';

function request(method: string, path: string, headers: Record<string, string>, close: boolean, host = IMDS_HOST): Buffer {
  let text = `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: kiam-bench/1\r\nAccept: */*\r\n`;
  for (const [k, v] of Object.entries(headers)) text += `${k}: ${v}\r\n`;
  if (close) text += 'Connection: close\r\n';
  if (method === 'PUT') text += 'Content-Length: 0\r\n';
  return Buffer.from(`${text}\r\n`, 'latin1');
}

class Run {
  readonly hist = new Histogram();
  requests = 0;
  ok = 0;
  protocol = 0;
  connections = 0;
  readonly byKind: Partial<Record<SlotKind, number>> = {};
  readonly statusErrors: Record<string, number> = {};
  readonly netErrors: Record<string, number> = {};
  stopped = false;
  readonly sockets = new Set<net.Socket>();
  constructor(readonly cfg: GenConfig) {}

  inWindow(): boolean {
    const now = Date.now();
    return now >= this.cfg.measureFrom && now <= this.cfg.measureTo;
  }

  done(kind: SlotKind, r: Response, startedAt: number): void {
    if (!this.inWindow()) return;
    this.hist.record(Math.round((performance.now() - startedAt) * 1000));
    this.requests++;
    this.byKind[kind] = (this.byKind[kind] ?? 0) + 1;
    if (r.status === 200) this.ok++;
    else this.statusErrors[r.status] = (this.statusErrors[r.status] ?? 0) + 1;
  }

  netError(err: Error): void {
    if (!this.inWindow()) return;
    if (err instanceof ProtocolError) this.protocol++;
    else {
      const code = (err as NodeJS.ErrnoException).code ?? err.message;
      this.netErrors[code] = (this.netErrors[code] ?? 0) + 1;
    }
  }

  connect(ip: string): net.Socket {
    const s = net.connect({ host: this.cfg.host, port: this.cfg.port, localAddress: ip, noDelay: true });
    this.connections++;
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    return s;
  }

  stop(): void {
    this.stopped = true;
    for (const s of this.sockets) s.destroy();
  }
}

/** The document request of a slot's source: the role's IMDS document, or the container-credentials one by token. */
function documentRequest(cfg: GenConfig, src: GenConfig['sources'][number], close: boolean, headers: Record<string, string> = {}): Buffer {
  if (cfg.protocol === 'container-credentials') {
    if (!src.token) throw new Error(`source ${src.ip}: container-credentials requests need a token`);
    return request('GET', CONTAINER_CREDENTIALS.path, { ...authorization(src.token), ...headers }, close, CONTAINER_CREDENTIALS.host);
  }
  return request('GET', DOC_PATH + src.role, headers, close);
}

/** Keep-alive loop: one connection, one request in flight; reconnects after an error. `token`: PUT then GET. */
function keepAliveSlot(run: Run, kind: 'ka' | 'token', src: GenConfig['sources'][number], pauseMs: number): void {
  const { ip } = src;
  const get = documentRequest(run.cfg, src, false);
  const put = request('PUT', '/latest/api/token', { 'X-aws-ec2-metadata-token-ttl-seconds': '21600' }, false);
  const start = () => {
    if (run.stopped) return;
    const sock = run.connect(ip);
    const parser = new ResponseParser(kind === 'token');
    let current = kind === 'token' ? put : get;
    let startedAt = 0;
    let failed = false;
    const send = () => {
      if (run.stopped || sock.destroyed) return;
      startedAt = performance.now();
      sock.write(current);
    };
    sock.on('connect', send);
    sock.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk, (r) => {
          run.done(kind, r, startedAt);
          if (kind === 'token') {
            if (current === put) {
              const token = r.status === 200 && r.body ? r.body.toString('latin1') : '';
              current = documentRequest(run.cfg, src, false, token ? { 'X-aws-ec2-metadata-token': token } : {});
            } else current = put;
          }
          if (r.close) sock.end();
          else if (pauseMs > 0) setTimeout(send, pauseMs);
          else send();
        });
      } catch (err) {
        failed = true;
        run.netError(err as Error);
        sock.destroy();
      }
    });
    sock.on('error', (err) => {
      failed = true;
      run.netError(err);
    });
    sock.on('close', () => {
      if (!run.stopped) setTimeout(start, failed ? 10 : 0);
    });
  };
  start();
}

/**
 * New-connection loop: connect, one request with `Connection: close`, read the answer, then wait for the server's
 * FIN before the next connection. The server closes first, so TIME_WAIT stays on its side: a client that closed
 * first would pile up TIME_WAIT sockets on its one source address, and every later bind() to that address would
 * have to search past them for a free port (the load generator, not the server, would become the bound).
 */
function newConnectionSlot(run: Run, src: GenConfig['sources'][number], pauseMs: number): void {
  const { ip } = src;
  const get = documentRequest(run.cfg, src, true);
  const once = () => {
    if (run.stopped) return;
    const startedAt = performance.now();
    const sock = run.connect(ip);
    const parser = new ResponseParser(false);
    let answered = false;
    let linger: NodeJS.Timeout | undefined;
    sock.on('connect', () => sock.write(get));
    sock.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk, (r) => {
          answered = true;
          run.done('new', r, startedAt);
          // A server that keeps the connection open despite `Connection: close` gets a client close after 1 s.
          if (r.close) linger = setTimeout(() => sock.destroy(), 1_000);
          else sock.destroy();
        });
      } catch (err) {
        run.netError(err as Error);
        sock.destroy();
      }
    });
    sock.on('error', (err) => run.netError(err));
    sock.on('close', () => {
      clearTimeout(linger);
      if (run.stopped) return;
      if (!answered) setTimeout(once, 10);
      else if (pauseMs > 0) setTimeout(once, pauseMs);
      else setImmediate(once);
    });
  };
  once();
}

export async function generate(cfg: GenConfig): Promise<GenResult> {
  const run = new Run(cfg);
  const lateMs = Date.now() - cfg.measureFrom;
  for (const slot of cfg.slots) {
    const src = cfg.sources[slot.source];
    if (!src) throw new Error(`slot source ${slot.source} out of range`);
    if (slot.kind === 'token' && cfg.protocol === 'container-credentials') throw new Error('the IMDSv2 `token` slot kind has no container-credentials form');
    if (slot.kind === 'new') newConnectionSlot(run, src, slot.pauseMs ?? 0);
    else keepAliveSlot(run, slot.kind, src, slot.pauseMs ?? 0);
  }
  await new Promise((r) => setTimeout(r, Math.max(0, cfg.measureFrom - Date.now())));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, Math.max(0, cfg.measureTo - Date.now())));
  const cpu = process.cpuUsage(cpu0);
  const windowMs = performance.now() - t0;
  run.stop();
  return {
    requests: run.requests,
    byKind: run.byKind,
    ok: run.ok,
    errors: { status: run.statusErrors, net: run.netErrors, protocol: run.protocol },
    latencyUs: run.hist.toJSON(),
    cpuUs: { user: cpu.user, system: cpu.system },
    windowMs,
    lateMs,
    connections: run.connections,
  };
}

/** One request, the raw answer (to copy the agent's exact document bytes and headers for the baseline). */
export function fetchOnce(cfg: FetchConfig): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: cfg.host, port: cfg.port, localAddress: cfg.ip, noDelay: true });
    const parser = new ResponseParser(true);
    sock.setTimeout(5_000, () => sock.destroy(new Error('timed out')));
    sock.on('connect', () => sock.write(request(cfg.method ?? 'GET', cfg.path, cfg.headers ?? {}, true, cfg.hostHeader)));
    sock.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk, (r) => {
          sock.destroy();
          resolve({ status: r.status, head: r.head ?? '', body: (r.body ?? Buffer.alloc(0)).toString('base64') });
        });
      } catch (err) {
        sock.destroy();
        reject(err as Error);
      }
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new Error('connection closed before a complete response')));
  });
}

/** PrimeConfig's requests in turn; the last status of each (0: no answer before the deadline). */
export async function prime(cfg: PrimeConfig): Promise<number[]> {
  const deadline = Date.now() + (cfg.deadlineMs ?? 30_000);
  const out: number[] = [];
  for (const req of cfg.requests) {
    let status = 0;
    for (;;) {
      try {
        status = (await fetchOnce(req)).status;
      } catch {
        status = 0; // refused or reset: the listener is not up yet
      }
      if ((status !== 503 && status !== 0) || Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, cfg.retryMs ?? 1_000));
    }
    out.push(status);
  }
  return out;
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--fetch') {
    process.stdout.write(`${JSON.stringify(await fetchOnce(JSON.parse(argv[1] ?? '') as FetchConfig))}\n`);
    return;
  }
  if (argv[0] === '--prime') {
    process.stdout.write(`${JSON.stringify({ primed: await prime(JSON.parse(argv[1] ?? '') as PrimeConfig) })}\n`);
    return;
  }
  const cfg = JSON.parse(argv[0] ?? '') as GenConfig;
  const result = await generate(cfg);
  process.stdout.write(`${JSON.stringify({ result })}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    () => {
      process.exitCode = 0;
    },
    (err: unknown) => {
      process.stderr.write(`loadgen: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(2);
    },
  );
}
