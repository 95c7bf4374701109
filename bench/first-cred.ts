/**
 * A new pod's first credentials, run inside that pod's network namespace: at `startAt` create the pod in the fake
 * API server (bench/cluster.ts's control socket — what the kubelet's status update does), wait `delayMs` (the
 * container starting), then the SDK flow every AWS SDK runs: PUT the IMDSv2 token, GET the role listing, GET the
 * document, each on a new connection with the token header. Prints one line {"result": FirstResult}.
 *
 * With `token` (issue 10's token path): create the pod, have a service-account token issued for it (what the
 * kubelet's TokenRequest for the pod's projected volume does before the container starts), wait `delayMs`, then
 * what an SDK does with AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: GET
 * /v1/credentials on 169.254.170.23 with the token in the Authorization header, on a new connection; a 5xx is asked
 * again after its Retry-After (the SDKs retry 5xx; 4xx are final), up to 3 attempts. The flow ends at the first 200.
 *
 *   node --import tsx bench/first-cred.ts '<FirstConfig JSON>'
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { BenchPod } from './lib/pods.ts';
import { authorization, CONTAINER_CREDENTIALS, documentRole } from './lib/token-path.ts';

export interface FirstConfig {
  control: string;
  pod: BenchPod;
  delayMs: number;
  startAt: number;
  /** The token path: the token's audience and lifetime (s). */
  token?: { audience: string; expirationSeconds: number };
}

export interface FirstResult {
  ok: boolean;
  /** Token PUT start → document received, ms. */
  flowMs: number;
  steps: { what: string; status: number; ms: number }[];
  /** How long the create call took, ms. */
  createMs: number;
  /** The token path: how long issuing the token took, ms. */
  tokenMs?: number;
  lateMs: number;
  error?: string;
}

function call(opts: http.RequestOptions, body?: string): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ agent: false, timeout: 5_000, ...opts }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

async function run(cfg: FirstConfig): Promise<FirstResult> {
  // Warm this fresh process's HTTP client (its first request loads and compiles code: ~10-20 ms that are the
  // client's, not the agent's). Against the control socket: any request to the metadata IP before the pod exists
  // would be a different scenario (an unknown IP).
  for (let i = 0; i < 3; i++) await call({ socketPath: cfg.control, method: 'GET', path: '/warm-up' });
  await new Promise((r) => setTimeout(r, Math.max(0, cfg.startAt - Date.now())));
  const lateMs = Date.now() - cfg.startAt;
  const c0 = performance.now();
  const payload = JSON.stringify([cfg.pod]);
  const created = await call({ socketPath: cfg.control, method: 'POST', path: '/pods', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, payload);
  const createMs = performance.now() - c0;
  if (created.status !== 200) throw new Error(`create pod: ${created.status} ${created.body}`);
  if (cfg.token) return byToken(cfg, cfg.token, createMs, lateMs);
  await new Promise((r) => setTimeout(r, cfg.delayMs));

  const imds = { host: '169.254.169.254', port: 80 };
  const steps: FirstResult['steps'] = [];
  const t0 = performance.now();
  const step = async (what: string, opts: http.RequestOptions) => {
    const s = performance.now();
    const r = await call({ ...imds, ...opts });
    steps.push({ what, status: r.status, ms: performance.now() - s });
    return r;
  };
  const token = await step('token', { method: 'PUT', path: '/latest/api/token', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '21600' } });
  const headers = token.status === 200 ? { 'x-aws-ec2-metadata-token': token.body } : {};
  const listing = await step('listing', { method: 'GET', path: '/latest/meta-data/iam/security-credentials/', headers });
  let ok = false;
  if (listing.status === 200) {
    const doc = await step('document', { method: 'GET', path: `/latest/meta-data/iam/security-credentials/${listing.body}`, headers });
    // The pod's own role, never another one (the node's, had the request escaped the interception).
    ok = doc.status === 200 && /"AccessKeyId"\s*:\s*"ASIA/.test(doc.body) && token.status === 200 && listing.body === cfg.pod.role;
  }
  return { ok, flowMs: performance.now() - t0, steps, createMs, lateMs };
}

/** The token path's flow, once the pod exists: token issued, container start, GET /v1/credentials until a 200. */
async function byToken(cfg: FirstConfig, tok: NonNullable<FirstConfig['token']>, createMs: number, lateMs: number): Promise<FirstResult> {
  const i0 = performance.now();
  const payload = JSON.stringify([{ namespace: cfg.pod.namespace, pod: cfg.pod.name, audience: tok.audience, expirationSeconds: tok.expirationSeconds }]);
  const issued = await call({ socketPath: cfg.control, method: 'POST', path: '/tokens', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, payload);
  const tokenMs = performance.now() - i0;
  if (issued.status !== 200) throw new Error(`issue token: ${issued.status} ${issued.body}`);
  const [token] = (JSON.parse(issued.body) as { tokens: string[] }).tokens;
  if (!token) throw new Error('issue token: no token');
  await new Promise((r) => setTimeout(r, cfg.delayMs));

  const steps: FirstResult['steps'] = [];
  const t0 = performance.now();
  let ok = false;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const s = performance.now();
    const r = await call({ host: CONTAINER_CREDENTIALS.host, port: CONTAINER_CREDENTIALS.port, method: 'GET', path: CONTAINER_CREDENTIALS.path, headers: authorization(token) });
    steps.push({ what: 'credentials', status: r.status, ms: performance.now() - s });
    if (r.status === 200) {
      // The pod's own role (the fake STS's session token names it), never another pod's.
      ok = /"AccessKeyId"\s*:\s*"ASIA/.test(r.body) && documentRole(r.body)?.roleArn.endsWith(`/${cfg.pod.role}`) === true;
      break;
    }
    if (r.status < 500) break;
    const retryAfter = Number(r.headers['retry-after']);
    await new Promise((res) => setTimeout(res, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : 1000));
  }
  return { ok, flowMs: performance.now() - t0, steps, createMs, tokenMs, lateMs };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run(JSON.parse(process.argv[2] ?? '') as FirstConfig).then(
    (result) => process.stdout.write(`${JSON.stringify({ result })}\n`),
    (err: unknown) => {
      process.stdout.write(`${JSON.stringify({ result: { ok: false, flowMs: NaN, steps: [], createMs: NaN, lateMs: NaN, error: err instanceof Error ? err.message : String(err) } })}\n`);
    },
  );
}
