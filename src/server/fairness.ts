import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import { OnceSet, errorPage, reasonPhrase } from './routes/respond.ts';

/**
 * Fairness between pods: one pod must not be able to starve the others of the agent. Per source IP (the socket's
 * peer address, IPv4-mapped IPv6 counted as its IPv4 address):
 *
 * - at most `maxConnectionsPerIp` open connections. One over the cap is never handed to the HTTP parser: it gets a
 *   canned 429 with `Retry-After: 1` and `Connection: close` the moment it is accepted and is closed as soon as
 *   that is written, so a pod holding thousands of connections costs the agent one accept and one write each, and
 *   no file descriptor for longer than that;
 * - at most `maxRequestsPerSecond` requests a second, from a token bucket holding BURST_SECONDS of them (a pod
 *   starting many SDK clients at once asks for token, listing and document in each); beyond it, 429 with
 *   `Retry-After` (the whole seconds until a token is back), the connection kept.
 *
 * And for every connection (node:http's own limits, set explicitly): request headers (request line included) of
 * at most MAX_HEADER_BYTES, else 431; the headers of a request must arrive within `idleTimeoutMs` of its first
 * byte (a new connection: of its accept), else 408 and close, which cuts off a pod dribbling its headers byte by
 * byte; a keep-alive connection idle for `idleTimeoutMs` between requests is closed.
 *
 * Each refusal is counted in kiam_client_limits_total{reason} (connections, rate, header-size, header-timeout)
 * and logged at warn once per source and reason (at debug afterwards). 429 and 431: RFC 6585 §4 and §5;
 * Retry-After: RFC 9110 §10.2.3; answering before the request is read, then closing: RFC 9112 §9.6.
 */
export interface ClientLimits {
  /** Open connections per source IP; 0: no cap. */
  maxConnectionsPerIp: number;
  /** Sustained requests a second per source IP; 0: no cap. */
  maxRequestsPerSecond: number;
  /** Idle time allowed between requests on a connection, and for a request's headers to arrive. */
  idleTimeoutMs: number;
}

export const DEFAULT_CLIENT_LIMITS: Readonly<ClientLimits> = Object.freeze({ maxConnectionsPerIp: 128, maxRequestsPerSecond: 100, idleTimeoutMs: 5_000 });
/** The request bucket holds this many seconds of the sustained rate (300 requests at the default 100/s). */
export const BURST_SECONDS = 3;
/** Request line and headers, in bytes. Node's default is 16 KiB; an SDK's metadata request is well under 1 KiB. */
export const MAX_HEADER_BYTES = 8 * 1024;

export type LimitReason = 'connections' | 'rate' | 'header-size' | 'header-timeout';

/**
 * The canonical form of a socket's peer address: IPv4-mapped IPv6 (`::ffff:10.0.0.1`, the peer of an IPv4 client on
 * a dual-stack socket) reduced to IPv4 (RFC 4291 §2.5.5.2); anything else as the socket reports it.
 */
export function peerAddress(addr: string | undefined): string {
  if (addr === undefined) return '';
  return addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
}

/** What a refusal looks like: by default the metadata service's small text/html page (IMDS_REFUSALS). */
export interface RefusalStyle {
  /** The Server header, if any. */
  server?: string;
  contentType: string;
  body(status: number): string;
}

export const IMDS_REFUSALS: RefusalStyle = Object.freeze({ server: 'EC2ws', contentType: 'text/html', body: errorPage });

/** A whole error response written straight to a socket (no parser involved), terse as the real service's. */
export function rawErrorResponse(status: number, extraHeaders = '', style: RefusalStyle = IMDS_REFUSALS): string {
  const body = style.body(status);
  const server = style.server ? `Server: ${style.server}\r\n` : '';
  return `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\n${server}Content-Type: ${style.contentType}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extraHeaders}Connection: close\r\n\r\n${body}`;
}

/**
 * A counted connection's source, kept on the socket itself rather than in a WeakMap: a WeakMap entry per
 * connection is an ephemeron the garbage collector must trace, which measured ~10k instructions per new connection
 * (bench/connection-cost.ts under callgrind; BENCHMARKS.md, issue 9).
 */
const SOURCE = Symbol('kiam.source');
type CountedSocket = Socket & { [SOURCE]?: Source };

/** The 'close' listener of every counted socket: one function for all of them, no closure per connection. */
function release(this: CountedSocket): void {
  const source = this[SOURCE];
  if (source !== undefined) source.connections--;
}

interface Source {
  readonly ip: string;
  connections: number;
  /** Requests left in the bucket at `at` (ms, the clock's). */
  tokens: number;
  at: number;
}

export interface SourceLimitsDeps {
  clock: Clock;
  metrics: Metrics;
  logger: Logger;
  /** How the 429s look; default IMDS_REFUSALS (the container-credentials server answers JSON). */
  refusals?: RefusalStyle;
  /** Counts a request refused over the rate; default: the metadata request histogram, handler `limited`, code 429. */
  onRateLimited?: () => void;
}

export class SourceLimits {
  private readonly sources = new Map<string, Source>();
  private readonly warned = new OnceSet(1000);
  private readonly burst: number;
  private readonly style: RefusalStyle;
  private readonly tooManyConnections: string;
  private readonly page: string;
  private readonly pageHeaders: string[];
  private readonly rateLimited: () => void;
  /** Forget idle sources (no connection, full bucket) once the map grows past this; doubled after each sweep. */
  private sweepAt = 1024;

  constructor(
    readonly limits: Readonly<ClientLimits>,
    private readonly deps: SourceLimitsDeps,
  ) {
    for (const [name, value] of Object.entries(limits)) {
      if (!Number.isFinite(value) || value < 0) throw new Error(`client limits: ${name} must be a number ≥ 0, got ${value}`);
    }
    if (limits.idleTimeoutMs <= 0) throw new Error('client limits: idleTimeoutMs must be > 0');
    this.burst = Math.max(1, limits.maxRequestsPerSecond * BURST_SECONDS);
    const style = deps.refusals ?? IMDS_REFUSALS;
    this.style = style;
    this.tooManyConnections = rawErrorResponse(429, 'Retry-After: 1\r\n', style);
    this.page = style.body(429);
    this.pageHeaders = [...(style.server ? ['server', style.server] : []), 'content-type', style.contentType, 'content-length', String(Buffer.byteLength(this.page))];
    if (deps.onRateLimited) {
      this.rateLimited = deps.onRateLimited;
    } else {
      const timer = deps.metrics.requestDuration.labels({ handler: 'limited', code: '429' });
      this.rateLimited = () => timer.observe(0);
    }
  }

  /** Options for http.createServer: header size and timeouts. keepAliveTimeout is set by attach(). */
  serverOptions(): http.ServerOptions {
    const idle = this.limits.idleTimeoutMs;
    return {
      maxHeaderSize: MAX_HEADER_BYTES,
      headersTimeout: idle,
      // Bodies are at most a few KiB (fastify's bodyLimit); the whole request gets twice the headers' time.
      requestTimeout: 2 * idle,
      // How often node checks those two (its default, 30 s, would let a dribbling connection live that long).
      connectionsCheckingInterval: Math.min(1_000, Math.max(10, Math.floor(idle / 4))),
    };
  }

  /**
   * Puts a server under these limits: its keep-alive timeout, and the per-source connection cap in front of
   * node:http's own connection handling (which only then sets up a parser for the socket).
   */
  attach(server: http.Server): void {
    server.keepAliveTimeout = this.limits.idleTimeoutMs;
    if (this.limits.maxConnectionsPerIp === 0 && this.limits.maxRequestsPerSecond === 0) return;
    const own = server.listeners('connection');
    // http.Server registers exactly one connection listener when it is constructed (Node.js lib/_http_server.js).
    if (own.length !== 1) throw new Error(`client limits: expected node:http's one connection listener, found ${own.length}`);
    const httpConnection = own[0] as (this: http.Server, socket: Socket) => void;
    server.removeListener('connection', httpConnection);
    server.on('connection', (socket: Socket) => {
      if (this.accept(socket)) httpConnection.call(server, socket);
    });
  }

  /** Open connections from ip (canonical form), for tests and debugging. */
  connections(ip: string): number {
    return this.sources.get(ip)?.connections ?? 0;
  }

  /**
   * At the start of every request: true to go on, false when it has been answered 429 (over the request rate).
   * Never throws.
   */
  admit(req: IncomingMessage, res: ServerResponse): boolean {
    const rate = this.limits.maxRequestsPerSecond;
    if (rate === 0) return true;
    const source = (req.socket as CountedSocket)[SOURCE];
    if (source === undefined) return true;
    const now = this.deps.clock.now();
    const tokens = Math.min(this.burst, source.tokens + (Math.max(0, now - source.at) * rate) / 1000);
    source.at = now;
    if (tokens >= 1) {
      source.tokens = tokens - 1;
      return true;
    }
    source.tokens = tokens;
    const retryAfter = Math.max(1, Math.ceil((1 - tokens) / rate));
    this.refused('rate', source.ip, { retryAfter });
    res.writeHead(429, [...this.pageHeaders, 'retry-after', String(retryAfter)]);
    res.end(this.page);
    this.rateLimited();
    return false;
  }

  /**
   * node:http's clientError: malformed HTTP (400), headers too large (431) or too slow (408) get a terse answer
   * straight on the socket, which is then closed once written, whatever the client does (a half-open socket would
   * let it dribble on). Returns the status answered, undefined when the socket was only destroyed.
   */
  clientError(err: NodeJS.ErrnoException, socket: Socket): number | undefined {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy(err);
      return undefined;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    if (status !== 400) this.refused(status === 431 ? 'header-size' : 'header-timeout', peerAddress(socket.remoteAddress));
    socket.end(rawErrorResponse(status, '', this.style));
    socket.destroySoon();
    return status;
  }

  /** Count and log a refusal (also called for the header limits, which node:http detects). */
  refused(reason: LimitReason, ip: string, fields: Record<string, unknown> = {}): void {
    this.deps.metrics.clientLimits.inc({ reason });
    const { logger } = this.deps;
    if (this.warned.first(`${reason}\0${ip}`)) logger.warn({ ip, reason, ...fields }, 'client over a per-source limit refused');
    else if (logger.isLevelEnabled('debug')) logger.debug({ ip, reason, ...fields }, 'client over a per-source limit refused');
  }

  private accept(socket: Socket): boolean {
    const ip = peerAddress(socket.remoteAddress);
    if (ip === '') {
      // Reset before it was accepted: nothing to answer.
      socket.destroy();
      return false;
    }
    let source = this.sources.get(ip);
    if (source === undefined) {
      source = { ip, connections: 0, tokens: this.burst, at: this.deps.clock.now() };
      this.sources.set(ip, source);
      if (this.sources.size > this.sweepAt) this.sweep();
    }
    const max = this.limits.maxConnectionsPerIp;
    if (max > 0 && source.connections >= max) {
      this.refused('connections', ip, { connections: source.connections });
      // Never parsed: the answer goes out at once (before the request, which an HTTP/1.1 client reads as the
      // response to it), and the socket is closed as soon as it is written.
      socket.on('error', () => {});
      socket.end(this.tooManyConnections);
      socket.destroySoon();
      return false;
    }
    source.connections++;
    (socket as CountedSocket)[SOURCE] = source;
    socket.on('close', release);
    return true;
  }

  /** Drop sources with no connection whose bucket has refilled: they are exactly as a new source would be. */
  private sweep(): void {
    const now = this.deps.clock.now();
    const rate = this.limits.maxRequestsPerSecond;
    for (const [ip, s] of this.sources) {
      if (s.connections === 0 && (rate === 0 || s.tokens + ((now - s.at) * rate) / 1000 >= this.burst)) this.sources.delete(ip);
    }
    this.sweepAt = Math.max(1024, 2 * this.sources.size);
  }
}
