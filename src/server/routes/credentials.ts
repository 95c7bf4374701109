import { createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Clock } from '../../clock.ts';
import type { Metrics } from '../../metrics.ts';
import type { CredentialProvider, Credentials, Lookup, PodLookup, PodRef, RoleIdentity } from '../ports.ts';
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
 * Pod without a role → 404; a role the namespace does not permit → 403 (the reason is logged at warn once per
 * pod and reason, and counted in kiam_credential_denials_total{reason}; never sent). Sources that are no pod of
 * this node never get here (app.ts answers them 403). Credentials that cannot be had → 503: every SDK treats a 5xx as a
 * failed fetch (botocore, Go and the JS SDK retry or report it; none falls back to anything else on the
 * metadata service), so a pod is told "try again" without being handed anything, and a 404 would wrongly
 * suggest the role is gone.
 */
export interface IamContext {
  credentials: CredentialProvider;
  metrics: Metrics;
  logger: Logger;
  clock: Clock;
}

type IamHandler = 'iam' | 'info' | 'listing' | 'credentials';

/**
 * A response rendered once and sent as it is: the body and its headers (flat name/value list for writeHead).
 * The body stays a string: node writes a string body together with the head in one write, a Buffer in two.
 */
export interface Rendered {
  readonly body: string;
  readonly headers: readonly string[];
}

/** A credential document rendered once per credentials object, with the pods it was logged as served to. */
interface RenderedDocument extends Rendered {
  readonly servedTo: Set<string>;
}

/** The path prefix of the warm path: exactly this spelling, everything else goes through classify(). */
export const CREDENTIALS_PATH = '/latest/meta-data/iam/security-credentials/';
/** Role names the warm path may match verbatim (IAM's own alphabet: nothing normalisation would change). */
const VERBATIM_ROLE = /^[\w+=,.@-]+$/;

function rendered(body: string): Rendered {
  return { body, headers: ['server', 'EC2ws', 'content-type', 'text/plain', 'content-length', String(Buffer.byteLength(body))] };
}

export interface IamHandlers {
  /**
   * Everything under <version>/meta-data/iam/ (rest: the segments after `iam`), through fastify, for the pod the
   * caller found at ip.
   */
  handle(request: FastifyRequest, reply: FastifyReply, ip: string, rest: string[], found: PodLookup): Promise<FastifyReply>;
  /**
   * The warm path, for a raw GET whose target is exactly CREDENTIALS_PATH or CREDENTIALS_PATH + the pod's role:
   * the finished response when the pod is already indexed with a role (token already checked by the caller) and,
   * for the document, its credentials are cached; undefined otherwise, and then handle() decides. Answers,
   * counts and logs exactly as handle() would.
   */
  cached(url: string, ip: string, found: Extract<Lookup, { kind: 'role' }>): Rendered | undefined;
}

export function createIamHandler(ctx: IamContext): IamHandlers {
  const warned = new OnceSet(1000);
  const deniedLogged = new OnceSet(1000);
  /** Credentials object → its document: rendered when first served, dropped with the credentials. */
  const documents = new WeakMap<Credentials, RenderedDocument>();
  /** Role identity → its listing body. */
  const listings = new WeakMap<RoleIdentity, Rendered>();

  function documentFor(creds: Credentials): RenderedDocument {
    let doc = documents.get(creds);
    if (doc === undefined) {
      doc = { ...rendered(credentialDocument(creds)), servedTo: new Set() };
      documents.set(creds, doc);
    }
    return doc;
  }

  function listingFor(identity: RoleIdentity): Rendered {
    let listing = listings.get(identity);
    if (listing === undefined) {
      listing = rendered(identity.roleName);
      listings.set(identity, listing);
    }
    return listing;
  }

  /** Log at info the first time these credentials go to this pod, at debug afterwards. */
  function logServed(doc: RenderedDocument, ip: string, pod: PodRef, identity: RoleIdentity, creds: Credentials): void {
    const first = !doc.servedTo.has(pod.uid);
    if (!first && !ctx.logger.isLevelEnabled('debug')) return;
    if (first) doc.servedTo.add(pod.uid);
    const fields = { ip, pod: pod.name, namespace: pod.namespace, role: identity.roleArn, accessKeyId: creds.accessKeyId };
    if (first) ctx.logger.info(fields, 'credentials served');
    else ctx.logger.debug(fields, 'credentials served');
  }

  function logListing(ip: string, pod: PodRef, identity: RoleIdentity): void {
    if (ctx.logger.isLevelEnabled('debug')) ctx.logger.debug({ ip, pod: pod.name, namespace: pod.namespace, role: identity.roleArn }, 'role listing');
  }

  function refuse(reply: FastifyReply, found: Exclude<PodLookup, { kind: 'role' }>, ip: string, handler: IamHandler): FastifyReply {
    const { pod } = found;
    if (found.kind === 'denied') {
      // The reason goes to the log (at warn once per pod and reason) and the metric; the pod only sees the status.
      ctx.metrics.denials.inc({ reason: found.code });
      const fields = { ip, pod: pod.name, namespace: pod.namespace, role: found.role, reason: found.reason, code: found.code, handler };
      if (deniedLogged.first(`${pod.uid}\0${found.code}\0${found.reason}`)) ctx.logger.warn(fields, 'credentials denied');
      else ctx.logger.debug(fields, 'credentials denied');
      return sendError(reply, 403);
    }
    ctx.metrics.denials.inc({ reason: 'no-role' });
    ctx.logger.debug({ ip, pod: pod.name, namespace: pod.namespace, handler }, 'pod has no role');
    return sendError(reply, 404);
  }

  function cached(url: string, ip: string, found: Extract<Lookup, { kind: 'role' }>): Rendered | undefined {
    const { pod, identity } = found;
    if (url.length === CREDENTIALS_PATH.length) {
      logListing(ip, pod, identity);
      return listingFor(identity);
    }
    const role = identity.roleName;
    if (url.length !== CREDENTIALS_PATH.length + role.length || !url.endsWith(role) || !VERBATIM_ROLE.test(role)) return undefined;
    const creds = ctx.credentials.peek?.(identity);
    if (creds === undefined) return undefined;
    const doc = documentFor(creds);
    logServed(doc, ip, pod, identity, creds);
    return doc;
  }

  async function handle(request: FastifyRequest, reply: FastifyReply, ip: string, rest: string[], found: PodLookup): Promise<FastifyReply> {
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

    if (found.kind !== 'role') return refuse(reply, found, ip, handler);
    const { pod, identity } = found;

    switch (handler) {
      case 'iam':
        return sendText(reply, 'info\nsecurity-credentials/');
      case 'listing':
        logListing(ip, pod, identity);
        return sendText(reply, listingFor(identity).body);
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
        const doc = documentFor(creds);
        logServed(doc, ip, pod, identity, creds);
        return sendText(reply, doc.body);
      }
    }
  }

  return { handle, cached };
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
