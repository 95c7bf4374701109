/**
 * The token path (issue 10) beside the interception paths of bench/lib/intercept.ts: a pod asks the agent's
 * container-credentials listener directly, `GET /v1/credentials` on 169.254.170.23:80 with its projected
 * service-account token in the `Authorization` header, as the SDKs do with AWS_CONTAINER_CREDENTIALS_FULL_URI and
 * AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
 * (https://docs.aws.amazon.com/sdkref/latest/guide/feature-container-credentials.html). No interception is involved:
 * the agent puts the address on a link of its own namespace, and the bench removes every kiam rule and program
 * before a token-path run, so that nothing of the other paths sits under it. Pure, tested in
 * test/unit/bench-token.test.ts.
 */
import { PATH_LABEL, PATHS, type InterceptPath } from './intercept.ts';

export const TOKEN_PATH = 'token';
/** What a row of the warm and first-credential tables went through: an interception path or the token path. */
export type BenchPath = InterceptPath | typeof TOKEN_PATH;
/** Canonical order of the tables: the interception paths (DNAT first), then the token path. */
export const BENCH_PATHS: readonly BenchPath[] = [...PATHS, TOKEN_PATH];

/** The agent's container-credentials listener as a pod dials it (the agent's defaults). */
export const CONTAINER_CREDENTIALS = Object.freeze({ host: '169.254.170.23', port: 80, path: '/v1/credentials' });
/** The audience of the bench's tokens (the webhook's and the agent's default). */
export const TOKEN_AUDIENCE = 'kiam';
/** Lifetime of the bench's tokens, s: the webhook's projected volume asks for 86400, so the agent caches a review 10 min. */
export const TOKEN_EXPIRATION_S = 86_400;
/**
 * The agent flags that turn the token path on: the listener on its default port, on the IPv4 address only (the
 * bench's sandbox is IPv4), tokens of the bench's audience. The link: see BenchNode.tokenArgs().
 */
export const AGENT_TOKEN_ARGS: readonly string[] = ['--container-credentials', '--container-credentials-address', CONTAINER_CREDENTIALS.host, '--token-audience', TOKEN_AUDIENCE];

export function isTokenPath(p: BenchPath): p is typeof TOKEN_PATH {
  return p === TOKEN_PATH;
}

/** How tables and logs name a path. */
export function pathLabel(p: BenchPath): string {
  return isTokenPath(p) ? 'token' : PATH_LABEL[p];
}

/** The `Authorization` header value of a request by token: the raw token, no "Bearer" (what the SDKs send). */
export function authorization(token: string): Record<string, string> {
  return { Authorization: token };
}

/**
 * The role a container-credentials document was issued for, from the bench's fake STS session token
 * (`fakeSessionToken/<n>/<base64 of "roleArn|sessionName">`, test/fakes/sts.ts): lets the bench check that a pod got
 * its own role, not merely some credentials. undefined when the body is not such a document.
 */
export function documentRole(body: string): { roleArn: string; sessionName: string } | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch {
    return undefined;
  }
  const token = (doc as { Token?: unknown } | null)?.Token;
  if (typeof token !== 'string') return undefined;
  const m = /^fakeSessionToken\/\d+\/([A-Za-z0-9+/=]+)$/.exec(token);
  if (!m) return undefined;
  const [roleArn, sessionName] = Buffer.from(m[1]!, 'base64').toString('utf8').split('|');
  return roleArn && sessionName !== undefined ? { roleArn, sessionName } : undefined;
}
