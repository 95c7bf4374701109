/**
 * TokenReview: the API server says whether a token is one it issued, for which audiences, and whom it names
 * (https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/). For a projected
 * service-account token bound to a pod the answer names the service account (`system:serviceaccount:NS:SA`) and, in
 * user.extra, the pod's name and uid and (Kubernetes ≥ 1.30) the node it runs on
 * (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens).
 * The API server checks the signature, expiry, audiences, and that the bound pod still exists with that uid.
 *
 * The adapter POSTs the TokenReview itself over node:https with the KubeConfig's credentials (as kube.ts does its
 * GETs) rather than through client-node's generated AuthenticationV1Api: that client builds a new connection pool
 * for every request (a TCP and TLS handshake per review), and a cold pod's first credential waits on this call.
 * Here one keep-alive agent carries every review.
 */
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { KubeHttpError, kubeRequestJson } from '../resolver/kube.ts';

/** What a TokenReview said. */
export interface TokenReviewResult {
  authenticated: boolean;
  /** status.error */
  error?: string;
  /** system:serviceaccount:<ns>:<sa> */
  username?: string;
  /** Parsed from username. */
  namespace?: string;
  serviceAccount?: string;
  /** user.extra["authentication.kubernetes.io/pod-name"], ["…/pod-uid"] */
  podName?: string;
  podUid?: string;
  /** user.extra["authentication.kubernetes.io/node-name"] (Kubernetes ≥ 1.30); may be absent. */
  nodeName?: string;
  /** status.audiences: those of the asked audiences the token is valid for. */
  audiences?: string[];
}

export interface TokenReviewer {
  /** Throws on transport and API errors (an HTTP status other than 200/201 carries `statusCode`). */
  review(token: string, audiences: string[], signal?: AbortSignal): Promise<TokenReviewResult>;
}

export const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
export const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';

const SERVICE_ACCOUNT_USER = /^system:serviceaccount:([^:]+):([^:]+)$/;
export const TOKEN_REVIEW_PATH = '/apis/authentication.k8s.io/v1/tokenreviews';

export class TokenReviewError extends Error {
  override name = 'TokenReviewError';
  constructor(
    message: string,
    readonly statusCode?: number,
  ) {
    super(message);
  }
}

type Raw = Record<string, unknown>;

function isObject(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function firstString(v: unknown): string | undefined {
  const first = Array.isArray(v) ? v[0] : v;
  return typeof first === 'string' && first !== '' ? first : undefined;
}

/** A TokenReview's status → TokenReviewResult (anything missing or of the wrong type is left out). */
export function parseTokenReviewStatus(status: unknown): TokenReviewResult {
  const s = isObject(status) ? status : {};
  const out: TokenReviewResult = { authenticated: s.authenticated === true };
  if (typeof s.error === 'string' && s.error !== '') out.error = s.error;
  const user = isObject(s.user) ? s.user : {};
  if (typeof user.username === 'string' && user.username !== '') {
    out.username = user.username;
    const m = SERVICE_ACCOUNT_USER.exec(user.username);
    if (m) {
      out.namespace = m[1]!;
      out.serviceAccount = m[2]!;
    }
  }
  const extra = isObject(user.extra) ? user.extra : {};
  const podName = firstString(extra[POD_NAME_EXTRA]);
  const podUid = firstString(extra[POD_UID_EXTRA]);
  const nodeName = firstString(extra[NODE_NAME_EXTRA]);
  if (podName !== undefined) out.podName = podName;
  if (podUid !== undefined) out.podUid = podUid;
  if (nodeName !== undefined) out.nodeName = nodeName;
  if (Array.isArray(s.audiences)) out.audiences = s.audiences.filter((a): a is string => typeof a === 'string');
  return out;
}

export interface KubeTokenReviewerOptions {
  kubeConfig: KubeConfig;
  /** Budget of one review (the caller's signal may end it sooner). Default 1000 ms: the SDKs give up on a credential request after 1-2 s. */
  timeoutMs?: number;
}

/** TokenReviews over HTTPS with the KubeConfig's credentials and one keep-alive connection pool. */
export class KubeTokenReviewer implements TokenReviewer {
  private readonly timeoutMs: number;
  private readonly agent = new https.Agent({ keepAlive: true, maxSockets: 8 });

  constructor(private readonly options: KubeTokenReviewerOptions) {
    this.timeoutMs = options.timeoutMs ?? 1000;
  }

  async review(token: string, audiences: string[], signal?: AbortSignal): Promise<TokenReviewResult> {
    const timeout = AbortSignal.timeout(Math.max(1, this.timeoutMs));
    const body = JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences } });
    const answer = await this.post(TOKEN_REVIEW_PATH, body, signal ? AbortSignal.any([signal, timeout]) : timeout);
    if (!isObject(answer) || answer.kind !== 'TokenReview') throw new TokenReviewError('TokenReview: the answer is not a TokenReview');
    return parseTokenReviewStatus(answer.status);
  }

  /** Close the idle connections (the agent's sockets never keep the process alive either way). */
  close(): void {
    this.agent.destroy();
  }

  private async post(path: string, body: string, signal: AbortSignal): Promise<unknown> {
    try {
      return await kubeRequestJson(this.options.kubeConfig, { method: 'POST', path, body, signal, agent: this.agent });
    } catch (err) {
      if (err instanceof KubeHttpError) throw new TokenReviewError(err.message, err.statusCode);
      if (signal.aborted) throw new TokenReviewError(`POST ${path}: ${abortText(signal)}`);
      throw err;
    }
  }
}

function abortText(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') return 'timed out';
  return reason instanceof Error ? reason.message : 'aborted';
}
