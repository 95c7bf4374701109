import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { routeAllowed } from '../paths.ts';
import { UpstreamError, type UpstreamClient } from '../upstream.ts';
import { OnceSet, sendError } from './respond.ts';

/**
 * Other metadata paths, proxied to the real service through the agent's own session when the allow/deny
 * lists let them through (denied → 404, logged). The upstream's status, body and content type pass
 * through; an upstream that cannot be reached → 502, one that does not answer in time → 504, and an
 * upstream 401 that survived the client's retry with a fresh token → 502 (the pod's token is not at fault).
 */
export interface PassthroughContext {
  upstream: UpstreamClient;
  allowRoutes: readonly RegExp[];
  denyRoutes: readonly RegExp[];
  logger: Logger;
}

export function createPassthroughHandler(ctx: PassthroughContext) {
  const deniedSeen = new OnceSet(1000);

  return async function handlePassthrough(
    request: FastifyRequest,
    reply: FastifyReply,
    method: 'GET' | 'HEAD',
    path: string,
    ip: string,
  ): Promise<FastifyReply> {
    request.kiamHandler = 'passthrough';
    if (!routeAllowed(path, ctx.allowRoutes, ctx.denyRoutes)) {
      request.kiamHandler = 'passthrough-denied';
      if (deniedSeen.first(`${ip}\0${path}`)) ctx.logger.info({ ip, path }, 'metadata path denied');
      else ctx.logger.debug({ ip, path }, 'metadata path denied');
      return sendError(reply, 404);
    }
    let res;
    try {
      res = await ctx.upstream.request(method, `/${path}`);
    } catch (err) {
      const timeout = err instanceof UpstreamError && err.kind === 'timeout';
      ctx.logger.warn({ ip, path, err: err instanceof Error ? err.message : String(err) }, 'upstream metadata request failed');
      return sendError(reply, timeout ? 504 : 502);
    }
    if (res.status === 401) {
      ctx.logger.warn({ ip, path }, 'upstream metadata refused the agent token');
      return sendError(reply, 502);
    }
    ctx.logger.debug({ ip, path, status: res.status }, 'passthrough');
    reply.code(res.status).header('content-type', res.contentType ?? 'text/plain');
    if (method === 'HEAD' && res.contentLength !== undefined) {
      reply.header('content-length', res.contentLength);
      return reply.send();
    }
    return reply.send(res.body);
  };
}
