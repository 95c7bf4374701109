import { createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Clock } from '../../clock.ts';
import type { Metrics } from '../../metrics.ts';
import type { CredentialProvider, Credentials, IdentityLookup, Lookup, RoleIdentity } from '../ports.ts';
import { OnceSet, isoSeconds, sendError, sendText } from './respond.ts';

/**
 * Everything under meta-data/iam/, answered by the agent for the pod at the source IP:
 *
 *   iam/                                    `info\nsecurity-credentials/`
 *   iam/info                                {Code, LastUpdated, InstanceProfileArn, InstanceProfileId}
 *   iam/security-credentials/               the role name, bare
 *   iam/security-credentials/<role>         the credential document; another role name → 404
 *   iam/security-credentials-extended/…     404 (SDKs that try it first fall back on 404)
 *   anything else under iam/                404
 *
 * Pod without a role, unknown or ambiguous IP → 404; a role the namespace does not permit → 403 (the
 * reason is logged, never sent). Credentials that cannot be had → 503: every SDK treats a 5xx as a
 * failed fetch (botocore, Go and the JS SDK retry or report it; none falls back to anything else on the
 * metadata service), so a pod is told "try again" without being handed anything, and a 404 would wrongly
 * suggest the role is gone.
 */
export interface IamContext {
  lookup: IdentityLookup;
  credentials: CredentialProvider;
  metrics: Metrics;
  logger: Logger;
  clock: Clock;
}

type IamHandler = 'iam' | 'info' | 'listing' | 'credentials';

export function createIamHandler(ctx: IamContext) {
  const served = new OnceSet();
  const warned = new OnceSet(1000);

  function refuse(reply: FastifyReply, found: Exclude<Lookup, { kind: 'role' }>, ip: string, handler: IamHandler): FastifyReply {
    switch (found.kind) {
      case 'denied':
        // The resolver counts and logs policy denials (with their reason); the pod only sees the status.
        ctx.logger.debug({ ip, pod: found.pod.name, namespace: found.pod.namespace, handler }, 'role denied to pod');
        return sendError(reply, 403);
      case 'no-role':
        ctx.metrics.denials.inc({ reason: 'no-role' });
        ctx.logger.debug({ ip, pod: found.pod.name, namespace: found.pod.namespace, handler }, 'pod has no role');
        return sendError(reply, 404);
      case 'unknown':
      case 'ambiguous':
        // Counted by the resolver (kiam_pod_ip_unknown_total, kiam_pod_ip_ambiguous_total).
        ctx.logger.debug({ ip, handler, lookup: found.kind }, 'no pod for source IP');
        return sendError(reply, 404);
    }
  }

  return async function handleIam(request: FastifyRequest, reply: FastifyReply, ip: string, rest: string[]): Promise<FastifyReply> {
    const first = rest[0]?.toLowerCase();
    let handler: IamHandler;
    if (rest.length === 0) handler = 'iam';
    else if (rest.length === 1 && first === 'info') handler = 'info';
    else if (rest.length === 1 && first === 'security-credentials') handler = 'listing';
    else if (rest.length === 2 && first === 'security-credentials') handler = 'credentials';
    else {
      request.kiamHandler = first === 'security-credentials-extended' ? 'extended' : 'iam-other';
      return sendError(reply, 404);
    }
    request.kiamHandler = handler;

    const found = await ctx.lookup.lookup(ip);
    if (found.kind !== 'role') return refuse(reply, found, ip, handler);
    const { pod, identity } = found;

    switch (handler) {
      case 'iam':
        return sendText(reply, 'info\nsecurity-credentials/');
      case 'listing':
        ctx.logger.debug({ ip, pod: pod.name, namespace: pod.namespace, role: identity.roleArn }, 'role listing');
        return sendText(reply, identity.roleName);
      case 'info': {
        const doc = infoDocument(identity, ctx.clock.now());
        if (doc === undefined) {
          ctx.logger.error({ role: identity.roleArn }, 'role ARN is not an IAM role ARN: cannot describe it');
          return sendError(reply, 404);
        }
        return sendText(reply, doc);
      }
      case 'credentials': {
        if (rest[1] !== identity.roleName) {
          ctx.metrics.denials.inc({ reason: 'wrong-role' });
          ctx.logger.debug({ ip, pod: pod.name, namespace: pod.namespace, role: identity.roleArn }, 'credentials asked for another role');
          return sendError(reply, 404);
        }
        let creds: Credentials;
        try {
          creds = await ctx.credentials.get(identity);
          if (!(creds.expiration > ctx.clock.now())) throw new Error('credential provider returned expired credentials');
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err);
          const fields = { ip, pod: pod.name, namespace: pod.namespace, role: identity.roleArn, err: message };
          if (warned.first(`${identity.key}\0${message}`)) ctx.logger.warn(fields, 'no credentials for pod');
          else ctx.logger.debug(fields, 'no credentials for pod');
          return sendError(reply, 503);
        }
        const fields = { ip, pod: pod.name, namespace: pod.namespace, role: identity.roleArn, accessKeyId: creds.accessKeyId };
        if (served.first(`${pod.uid}\0${creds.accessKeyId}`)) ctx.logger.info(fields, 'credentials served');
        else ctx.logger.debug(fields, 'credentials served');
        return sendText(reply, credentialDocument(creds));
      }
    }
  };
}

function document(fields: [string, string][]): string {
  return `{\n${fields.map(([k, v]) => `  ${JSON.stringify(k)} : ${JSON.stringify(v)}`).join(',\n')}\n}`;
}

/** The credential document, field for field as real IMDS writes it. */
export function credentialDocument(creds: Credentials): string {
  return document([
    ['Code', 'Success'],
    ['LastUpdated', isoSeconds(creds.lastUpdated)],
    ['Type', 'AWS-HMAC'],
    ['AccessKeyId', creds.accessKeyId],
    ['SecretAccessKey', creds.secretAccessKey],
    ['Token', creds.sessionToken],
    ['Expiration', isoSeconds(creds.expiration)],
  ]);
}

const ROLE_ARN = /^arn:([a-z-]+):iam::(\d{12}):role\/(?:.+\/)?([^/]+)$/;
const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** iam/info for a role: an instance profile named after the role in the role's account; undefined if the ARN is not a role's. */
export function infoDocument(identity: RoleIdentity, now: number): string | undefined {
  const m = ROLE_ARN.exec(identity.roleArn);
  if (!m) return undefined;
  const digest = createHash('sha256').update(identity.roleArn).digest();
  let id = 'AIPA';
  for (let i = 0; i < 17; i++) id += ID_ALPHABET[(digest[i] as number) & 31];
  return document([
    ['Code', 'Success'],
    ['LastUpdated', isoSeconds(now)],
    ['InstanceProfileArn', `arn:${m[1]}:iam::${m[2]}:instance-profile/${identity.roleName}`],
    ['InstanceProfileId', id],
  ]);
}
