import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';

/**
 * The operations endpoint on the metrics port (never reachable through the DNAT, not behind
 * under-pressure): GET /metrics (Prometheus text), /healthz (200 while the process runs), /readyz
 * (200 with the checks as JSON when ready, 503 with them otherwise), /debug/state (loopback clients only).
 */
export interface Readiness {
  ready: boolean;
  checks: Record<string, boolean>;
}

export interface OpsDeps {
  metrics: Pick<Metrics, 'registry'>;
  readiness: () => Readiness;
  logger: Logger;
  /**
   * GET /debug/state: the agent's view as JSON (src/doctor/state.ts builds it), for `kiam doctor`. Served to
   * loopback clients only (403 to anyone else): the metrics port binds 0.0.0.0 and pods can reach the node's
   * IP, but the role mapping of every pod on the node is not theirs to read. Absent: 404.
   */
  debugState?: () => unknown;
}

/** 127.0.0.0/8, ::1 and their IPv4-mapped forms: a client on this host (the node, or a hostNetwork pod). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4) || address === '::1';
}

export function buildOpsApp(deps: OpsDeps): FastifyInstance {
  const { metrics, readiness, logger } = deps;
  const app = Fastify({ logger: false, trustProxy: false });

  app.get('/metrics', async (_request, reply) => {
    const body = await metrics.registry.metrics();
    return reply.header('content-type', metrics.registry.contentType).send(body);
  });
  app.get('/healthz', async (_request, reply) => reply.header('content-type', 'text/plain').send('ok'));
  app.get('/readyz', async (_request, reply) => {
    let state: Readiness;
    try {
      state = readiness();
    } catch (err) {
      logger.error({ err: err instanceof Error ? err.message : String(err) }, 'readiness check failed');
      state = { ready: false, checks: {} };
    }
    return reply
      .code(state.ready ? 200 : 503)
      .header('content-type', 'application/json')
      .send(JSON.stringify({ ready: state.ready, checks: state.checks }));
  });
  app.register(
    async (debug) => {
      // The socket's peer, never a header (trustProxy is off): a pod cannot complete a TCP handshake from a
      // spoofed loopback source, because the answers would go to the node's own loopback.
      debug.addHook('onRequest', async (request, reply) => {
        if (isLoopback(request.socket.remoteAddress)) return;
        return reply.code(403).header('content-type', 'text/plain').send('forbidden\n');
      });
      debug.get('/state', async (_request, reply) => {
        if (!deps.debugState) return reply.code(404).header('content-type', 'text/plain').send('not found\n');
        const body = JSON.stringify(deps.debugState());
        return reply.header('content-type', 'application/json').header('cache-control', 'no-store').send(body);
      });
    },
    { prefix: '/debug' },
  );
  app.setErrorHandler((err: Error, _request, reply) => {
    logger.error({ err: err.message }, 'ops request failed');
    return reply.code(500).header('content-type', 'text/plain').send('error');
  });
  return app;
}
