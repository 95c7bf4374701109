import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import underPressure, { type FastifyUnderPressureOptions } from '@fastify/under-pressure';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import { DEFAULT_CLIENT_LIMITS, SourceLimits, peerAddress, type ClientLimits } from './fairness.ts';
import { listenServer } from './listen.ts';
import { classify } from './paths.ts';
import type { CredentialProvider, IdentityLookup } from './ports.ts';
import { CREDENTIALS_PATH, createIamHandler } from './routes/credentials.ts';
import { createPassthroughHandler } from './routes/passthrough.ts';
import { OnceSet, errorPage, sendError } from './routes/respond.ts';
import { createTokenHandler } from './routes/token.ts';
import type { TokenService } from './tokens.ts';
import type { UpstreamClient } from './upstream.ts';

/**
 * The metadata endpoint pods reach through the DNAT. One catch-all route: the raw request target is
 * normalised and classified (paths.ts), so that no spelling of meta-data/iam can reach the upstream.
 *
 *   /latest/api/token          IMDSv2 tokens the agent mints (routes/token.ts)
 *   <version>/meta-data/iam/…  the pod's role (routes/credentials.ts)
 *   <version>/…                pass-through to the real service, allow/deny lists (routes/passthrough.ts)
 *
 * Only pods of this node are answered: every request (token, credentials, pass-through, anything) first looks
 * its source up (the resolver's wait, then one live look-up), and a source that is no pod of this node (another
 * node, the VPC, the host itself, a hostNetwork pod on the node's IP) or more than one gets 403, counted in
 * kiam_foreign_source_requests_total{reason} and never proxied. Every GET may carry a token (IMDSv2) or none
 * (IMDSv1; with --imdsv2 required none → 401, pass-through included); a token that does not verify for this source
 * IP and the pod now holding it → 401. Source IP from
 * the socket only; trustProxy off; only GET and HEAD for metadata (405 otherwise). Responses carry
 * `Server: EC2ws`; documents are text/plain, errors small text/html pages without reasons. Under event-loop
 * pressure → 503 with Retry-After (before anything else but the per-source limits of fairness.ts: 429 over a
 * source's connection or request cap, 431 for headers over 8 KiB, 408 for headers that do not arrive in time).
 */
export type UnderPressureSettings = Omit<FastifyUnderPressureOptions, 'pressureHandler' | 'exposeStatusRoute' | 'customError' | 'healthCheck' | 'healthCheckInterval'> &
  Pick<FastifyUnderPressureOptions, 'healthCheck' | 'healthCheckInterval'>;

export interface AppDeps {
  lookup: IdentityLookup;
  credentials: CredentialProvider;
  upstream: UpstreamClient;
  tokens: TokenService;
  metrics: Metrics;
  logger: Logger;
  clock: Clock;
  /** Pass-through paths must match one of these (empty: all)… */
  allowRoutes: readonly RegExp[];
  /** …and none of these. */
  denyRoutes: readonly RegExp[];
  /** @fastify/under-pressure thresholds; default DEFAULT_UNDER_PRESSURE. */
  underPressure?: UnderPressureSettings;
  /** Per-source connection and request caps, idle and header timeouts (fairness.ts); default DEFAULT_CLIENT_LIMITS. */
  limits?: ClientLimits;
  /** --imdsv2: 'required' answers a GET without a token 401, as the real service does with HttpTokens=required. Default 'optional'. */
  imdsv2?: 'optional' | 'required';
}

export const DEFAULT_UNDER_PRESSURE: UnderPressureSettings = { maxEventLoopDelay: 1000, retryAfter: 1 };

const TOKEN_HEADER = 'x-aws-ec2-metadata-token';
const PRESSURE_CODE = 'FST_UNDER_PRESSURE';

/**
 * The client's address from the socket, with IPv4-mapped IPv6 (`::ffff:10.0.0.1`, the peer of an IPv4 client on
 * a dual-stack socket) reduced to IPv4. An IPv6 peer is as the socket reports it: compressed, lower case.
 */
export function sourceIp(request: Pick<FastifyRequest, 'socket'>): string {
  return peerAddress(request.socket.remoteAddress);
}

/** What listenOn needs of an app buildApp made: its request listener and how to set up another server like it. */
interface Binding {
  extraServer(): http.Server;
  /** Servers listening beside app.server, closed with the app. */
  readonly extras: Set<http.Server>;
}

const bindings = new WeakMap<FastifyInstance, Binding>();

/** What serverFactory receives from fastify: its options with the defaults applied. */
type ServerFactoryOptions = Pick<FastifyServerOptions, 'connectionTimeout' | 'maxRequestsPerSocket'>;

export function buildApp(deps: AppDeps): FastifyInstance {
  const { lookup, tokens, metrics, logger } = deps;
  const pressure = deps.underPressure ?? DEFAULT_UNDER_PRESSURE;
  const retryAfter = String(pressure.retryAfter ?? 10);
  const limits = new SourceLimits(deps.limits ?? DEFAULT_CLIENT_LIMITS, { clock: deps.clock, metrics, logger });

  /**
   * The warm path, before fastify: a plain GET of exactly CREDENTIALS_PATH or CREDENTIALS_PATH + role from a pod
   * already indexed with a role, with a valid token or none, and (for the document) cached credentials gets
   * the response rendered once for those credentials, counted, timed and logged as fastify's path would.
   * Anything else, or any doubt (closing, under pressure, an error), goes to fastify, which answers it in full.
   */
  let closing = false;
  const tokenRequired = deps.imdsv2 === 'required';
  const listingTimer = metrics.requestDuration.labels({ handler: 'listing', code: '200' });
  const documentTimer = metrics.requestDuration.labels({ handler: 'credentials', code: '200' });
  const peek = lookup.peek?.bind(lookup);
  function warm(req: IncomingMessage, res: ServerResponse): boolean {
    const url = req.url;
    if (peek === undefined || closing || req.method !== 'GET' || url === undefined || !url.startsWith(CREDENTIALS_PATH)) return false;
    const start = performance.now();
    try {
      // under-pressure's own verdict (decorated once it is registered; the server only listens after that).
      if (app.isUnderPressure()) return false;
      const ip = sourceIp(req);
      const found = peek(ip);
      if (found?.kind !== 'role') return false;
      const token = req.headers[TOKEN_HEADER];
      if (token === undefined ? tokenRequired : tokens.verify(String(token), ip, found.pod.uid) !== 'ok') return false;
      const answer = iam.cached(url, ip, found);
      if (answer === undefined) return false;
      res.writeHead(200, answer.headers as string[]);
      res.end(answer.body);
      (url.length === CREDENTIALS_PATH.length ? listingTimer : documentTimer).observe((performance.now() - start) / 1000);
      return true;
    } catch (err) {
      if (res.headersSent) throw err;
      logger.debug({ err: err instanceof Error ? err.message : String(err) }, 'warm path failed; answering through fastify');
      return false;
    }
  }

  let makeServer: (() => http.Server) | undefined;
  const app = Fastify({
    serverFactory: (handler, options: ServerFactoryOptions) => {
      // As fastify builds its own HTTP/1 server, with the per-source limits and the warm path in front of its
      // handler; listenOn's extra servers are made the same way and share the listener. Nothing thrown while
      // answering escapes as an uncaught exception (which would stop the agent): see failed().
      const listener = (req: IncomingMessage, res: ServerResponse) => {
        try {
          if (limits.admit(req, res) && !warm(req, res)) handler(req, res);
        } catch (err) {
          failed(err, req, res);
        }
      };
      makeServer = () => {
        // Header size and timeouts from the limits (fastify's keepAliveTimeout and requestTimeout are not used).
        const server = http.createServer(limits.serverOptions(), listener);
        limits.attach(server);
        if (options.connectionTimeout !== undefined) server.setTimeout(options.connectionTimeout);
        if (options.maxRequestsPerSocket) server.maxRequestsPerSocket = options.maxRequestsPerSocket;
        return server;
      };
      return makeServer();
    },
    logger: false,
    trustProxy: false,
    exposeHeadRoutes: false,
    bodyLimit: 4096,
    return503OnClosing: true,
    // Malformed percent-encoding and the like, rejected by the router before any handler.
    // Only a pod of this node learns even that (the source is looked up first, as for every request).
    frameworkErrors: (_err, request, reply) => {
      reply.header('server', 'EC2ws');
      const ip = sourceIp(request);
      (ip ? lookup.lookup(ip) : Promise.resolve(undefined))
        .then((found) => {
          if (found === undefined || found.kind === 'unknown' || found.kind === 'ambiguous') return refuseForeign(request, reply, ip, found?.kind ?? 'unknown');
          request.kiamHandler = 'bad';
          return sendError(reply, 400);
        })
        .catch((err: unknown) => logger.error({ err: err instanceof Error ? err.message : String(err), ip }, 'malformed metadata request: answer failed'));
    },
    clientErrorHandler: onClientError,
  });

  const extras = new Set<http.Server>();
  bindings.set(app, {
    extras,
    extraServer() {
      if (!makeServer) throw new Error('the metadata app has no server');
      const server = makeServer();
      server.on('clientError', onClientError);
      return server;
    },
  });

  app.decorateRequest('kiamHandler', 'other');
  // Bodies are never used: accept any (bounded by bodyLimit) and ignore it, never fail on a content type.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, _body, done) => done(null, undefined));

  app.addHook('onRequest', (_request, reply, done) => {
    reply.header('server', 'EC2ws');
    done();
  });
  app.addHook('onResponse', (request, reply, done) => {
    metrics.requestDuration.observe({ handler: request.kiamHandler, code: String(reply.statusCode) }, reply.elapsedTime / 1000);
    done();
  });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, request, reply) => {
    if (err.code === PRESSURE_CODE) {
      request.kiamHandler = 'pressure';
      logger.debug({ ip: sourceIp(request) }, 'under pressure: 503');
      return sendError(reply.header('retry-after', retryAfter), 503);
    }
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) logger.error({ err: err.message, url: request.url }, 'metadata request failed');
    return sendError(reply, status);
  });
  app.setNotFoundHandler((request, reply) => sendError(reply, request.method === 'GET' || request.method === 'HEAD' ? 404 : 405));

  const handleToken = createTokenHandler({ tokens, logger });
  const iam = createIamHandler(deps);
  const handlePassthrough = createPassthroughHandler(deps);
  const closed: Array<Promise<void>> = [];
  app.addHook('preClose', (done) => {
    closing = true;
    // listenOn's extra servers stop accepting with the main one and drop their idle keep-alive connections
    // (as fastify does for its own server); requests in flight finish.
    for (const server of extras) {
      closed.push(new Promise((resolve) => server.close(() => resolve())));
      server.closeIdleConnections();
    }
    extras.clear();
    done();
  });
  app.addHook('onClose', async () => {
    await Promise.all(closed.splice(0));
  });

  /**
   * Something threw while a request was being answered outside fastify (the warm path after it began to answer, or
   * fastify's own handler): logged; the client gets a 500 when nothing was sent yet, else its connection is closed
   * (a response cut short must not pass for a whole one); once the response is complete, nothing more is done.
   */
  function failed(err: unknown, req: IncomingMessage, res: ServerResponse): void {
    logger.error({ err: err instanceof Error ? err.message : String(err), url: req.url?.slice(0, 200), ip: sourceIp(req) }, 'metadata request failed outside fastify');
    try {
      if (res.writableEnded) return;
      if (!res.headersSent) {
        const body = errorPage(500);
        res.writeHead(500, ['server', 'EC2ws', 'content-type', 'text/html', 'content-length', String(Buffer.byteLength(body))]);
        res.end(body);
        return;
      }
    } catch {
      // fall through: the connection goes
    }
    res.destroy();
  }

  /** Malformed HTTP, headers too large (431) or too slow (408): fairness.ts answers on the socket and closes it. */
  function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    limits.clientError(err, socket);
  }

  const foreignSeen = new OnceSet(1000);
  /** 403 to a source that is no pod of this node: counted, logged at warn once per address and reason. */
  function refuseForeign(request: FastifyRequest, reply: FastifyReply, ip: string, reason: 'unknown' | 'ambiguous'): FastifyReply {
    request.kiamHandler = 'foreign';
    metrics.foreignSources.inc({ reason });
    const fields = { ip, reason, method: request.method, url: request.url.slice(0, 200) };
    if (foreignSeen.first(`${reason}\0${ip}`)) logger.warn(fields, 'request from a source that is not a pod of this node refused');
    else logger.debug(fields, 'request from a source that is not a pod of this node refused');
    return sendError(reply, 403);
  }

  async function handle(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const ip = sourceIp(request);
    const found = ip ? await lookup.lookup(ip) : undefined;
    if (found === undefined || found.kind === 'unknown' || found.kind === 'ambiguous') return refuseForeign(request, reply, ip, found?.kind ?? 'unknown');

    const route = classify(request.url);
    if (route.kind === 'bad') {
      request.kiamHandler = 'bad';
      return sendError(reply, 400);
    }
    if (route.kind === 'token') return handleToken(request, reply, ip, found.pod.uid);

    request.kiamHandler = route.kind;
    const method = request.method;
    if (method !== 'GET' && method !== 'HEAD') return sendError(reply.header('allow', 'GET, HEAD'), 405);
    const token = request.headers[TOKEN_HEADER];
    // The real service asks for the token before it looks at the path: every token-less GET gets 401.
    if (token === undefined && tokenRequired) {
      logger.debug({ ip, url: request.url.slice(0, 200) }, 'GET without a token refused (--imdsv2 required)');
      return sendError(reply, 401);
    }
    if (route.kind === 'refused') return sendError(reply, 404);

    if (token !== undefined) {
      const check = tokens.verify(String(token), ip, found.pod.uid);
      if (check !== 'ok') {
        logger.debug({ ip, check }, 'metadata token rejected');
        return sendError(reply, 401);
      }
    }

    if (route.kind === 'iam') return iam.handle(request, reply, ip, route.rest, found);
    return handlePassthrough(request, reply, method, route.path, ip);
  }

  void app.register(underPressure, pressure);
  void app.register(async (scope) => {
    scope.all('*', handle);
  });
  return app;
}

/**
 * Listen on every host at port: the first through app.listen(), each other one with a server of its own that
 * shares the app's request listener (the warm path, then fastify), timeouts and malformed-request answer, so a
 * request is answered the same whichever address it came to. Fastify listens once per instance (it binds more
 * than one address only for `localhost`), hence the extra servers. hosts are IP literals (an IPv6 one with or
 * without brackets), e.g. ['10.0.0.10', 'fd00::10']; with port 0 every host gets the port the first was given.
 * Resolves once all listen; if one cannot, what did is closed and the error names the host. The returned
 * function closes the app with every server (so does app.close()). Only for an app made by buildApp.
 */
export async function listenOn(app: FastifyInstance, hosts: readonly string[], port: number): Promise<() => Promise<void>> {
  const binding = bindings.get(app);
  if (!binding) throw new Error('listenOn: not a metadata app made by buildApp');
  const unique = [...new Set(hosts.map((h) => (h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h)))];
  const [first, ...rest] = unique;
  if (first === undefined) throw new Error('listenOn: no address to listen on');
  const close = () => app.close();
  try {
    await app.listen({ host: first, port });
  } catch (err) {
    throw listenError(first, port, err);
  }
  const bound = (app.server.address() as AddressInfo).port;
  try {
    for (const host of rest) {
      const server = binding.extraServer();
      await listenServer(server, host, bound).catch((err: unknown) => {
        throw listenError(host, bound, err);
      });
      binding.extras.add(server);
    }
  } catch (err) {
    await close();
    throw err;
  }
  return close;
}

function listenError(host: string, port: number, err: unknown): Error {
  const where = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return new Error(`metadata server cannot listen on ${where}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
