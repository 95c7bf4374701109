import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { parseTtl, type TokenService } from '../tokens.ts';
import { sendError } from './respond.ts';

/**
 * /latest/api/token, as real IMDS: PUT with X-aws-ec2-metadata-token-ttl-seconds 1..21600 → 200, the token,
 * the TTL echoed (Go needs it); TTL missing or out of range → 400; a PUT with X-Forwarded-For → 403
 * (proxied token requests are refused); OPTIONS → 200; anything else → 405 with `Allow: OPTIONS, PUT`.
 * Only a pod of this node gets here (app.ts refuses other sources first): the token binds to the source IP and
 * to the uid of the pod found there.
 */
export interface TokenRouteContext {
  tokens: TokenService;
  logger: Logger;
}

const ALLOW = 'OPTIONS, PUT';
const TTL_HEADER = 'x-aws-ec2-metadata-token-ttl-seconds';

export function createTokenHandler(ctx: TokenRouteContext) {
  return function handleToken(request: FastifyRequest, reply: FastifyReply, ip: string, podUid: string): FastifyReply {
    request.kiamHandler = 'token';
    if (request.method === 'OPTIONS') return reply.code(200).header('allow', ALLOW).send();
    if (request.method !== 'PUT') return sendError(reply.header('allow', ALLOW), 405);
    if (request.headers['x-forwarded-for'] !== undefined) {
      ctx.logger.debug({ ip }, 'token PUT with X-Forwarded-For refused');
      return sendError(reply, 403);
    }
    const ttl = parseTtl(request.headers[TTL_HEADER]);
    if (ttl === undefined) {
      ctx.logger.debug({ ip }, 'token PUT with a missing or invalid TTL');
      return sendError(reply, 400);
    }
    const token = ctx.tokens.mint(ip, podUid, ttl);
    return reply.code(200).header('content-type', 'text/plain').header(TTL_HEADER, String(ttl)).send(token);
  };
}
