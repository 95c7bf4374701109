import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.ts';

/**
 * The operations endpoint on the metrics port (never reachable through the DNAT, not behind
 * under-pressure): GET /metrics (Prometheus text), /healthz (200 while the process runs), /readyz
 * (200 with the checks as JSON when ready, 503 with them otherwise).
 */
export interface Readiness {
  ready: boolean;
  checks: Record<string, boolean>;
}

export interface OpsDeps {
  metrics: Pick<Metrics, 'registry'>;
  readiness: () => Readiness;
  logger: Logger;
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
  app.setErrorHandler((err: Error, _request, reply) => {
    logger.error({ err: err.message }, 'ops request failed');
    return reply.code(500).header('content-type', 'text/plain').send('error');
  });
  return app;
}
