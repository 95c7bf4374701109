/**
 * `kiam doctor`'s rows for the container-credentials listener (--container-credentials): the mode, the link and its
 * addresses (read with `ip`), the listener answering (a GET without a token must get the agent's 400), and the token
 * validations the agent reports in /debug/state. None throws: what cannot be read is a row of its own.
 */
import { CONTAINER_CREDENTIALS_PATH } from '../server/container-credentials.ts';
import { LINK_KINDS, parseLinkState, showArgv, type LinkState } from '../netfilter/link.ts';
import type { CommandRunner } from '../netfilter/exec.ts';
import type { CheckRow, HttpPort, Status } from './checks.ts';
import type { DebugContainerCredentials, DebugState } from './state.ts';

const row = (id: string, title: string, status: Status, detail: string, fix?: string): CheckRow => (fix && status !== 'ok' ? { id, title, status, detail, fix } : { id, title, status, detail });
const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Everything the rows need, from the agent's /debug/state. */
export async function containerCredentialsRows(runner: CommandRunner, http: HttpPort, state: DebugState, timeoutMs: number, now: number): Promise<CheckRow[]> {
  const c = state.config;
  const cc = state.containerCredentials;
  if (c.containerCredentials !== true) {
    return [row('containerCredentials', 'container credentials', 'ok', 'off (no --container-credentials): pods get their roles through the metadata interception only')];
  }
  if (!cc) {
    return [row('containerCredentials', 'container credentials', 'warn', 'on, but the agent has not reported its listener yet', 'wait for the agent to finish starting (see its log), then run doctor again')];
  }
  const rows: CheckRow[] = [modeRow(cc)];
  const wanted = c.containerCredentialsAddresses ?? [];
  const skipped = new Set(cc.skipped.map((s) => s.address));
  const addresses = wanted.filter((a) => !skipped.has(a));
  rows.push(...(await linkRows(runner, cc, addresses)));
  rows.push(...(await listenerRows(http, cc, timeoutMs)));
  rows.push(tokenRow(cc, now));
  return rows;
}

function modeRow(cc: DebugContainerCredentials): CheckRow {
  const skipped = cc.skipped.map((s) => `; ${s.address} left out: ${s.reason}`).join('');
  return row('containerCredentials', 'container credentials', 'ok', `on: pods identified by service-account tokens of audience "${cc.audience}"${skipped}`);
}

/** The link (or, with --container-credentials-link none, any link) carries every address. */
export async function linkRows(runner: CommandRunner, cc: DebugContainerCredentials, addresses: readonly string[]): Promise<CheckRow[]> {
  const id = 'containerCredentials.link';
  if (cc.link === null) {
    const title = 'container credentials addresses';
    let found: Set<string>;
    try {
      const result = await runner.run(['ip', '-json', 'address', 'show'], { timeoutMs: 5_000 });
      if (result.code !== 0) throw new Error(result.stderr.trim() || `ip exited ${result.code}`);
      found = new Set((JSON.parse(result.stdout) as unknown[]).flatMap((link) => parseLinkState(JSON.stringify([link])).addresses));
    } catch (err) {
      return [row(id, title, 'warn', `cannot list this node's addresses: ${message(err)}`, 'run doctor on the node or inside the agent pod (host network), where `ip` is installed')];
    }
    const missing = addresses.filter((a) => !found.has(a));
    if (missing.length === 0) return [row(id, title, 'ok', `${addresses.join(', ')} on this node's links (--container-credentials-link none: managed outside the agent)`)];
    return [
      row(id, title, 'fail', `${missing.join(', ')} on no link of this node: pods cannot reach the listener there`,
        'put the address(es) on a link of the node (ip address add 169.254.170.23/32 dev <link>), or let the agent manage a dummy link: --container-credentials-link kiam-link0 (the default)'),
    ];
  }
  const name = cc.link.name;
  const title = `link ${name}`;
  const fix = `the agent creates ${name} and its addresses at start and repairs them every --reconcile-interval: look for "container-credentials link" in its log${cc.link.error ? ` (it says: ${cc.link.error})` : ''}`;
  let state: LinkState;
  try {
    const result = await runner.run(showArgv(name), { timeoutMs: 5_000 });
    if (result.code !== 0 && /does not exist/.test(result.stderr)) return [row(id, title, 'fail', `${name} does not exist: pods cannot reach ${addresses.join(', ')}`, fix)];
    if (result.code !== 0) throw new Error(result.stderr.trim() || `ip exited ${result.code}`);
    state = parseLinkState(result.stdout);
  } catch (err) {
    return [row(id, title, 'warn', `cannot read ${name}: ${message(err)}`, 'run doctor on the node or inside the agent pod (host network), where `ip` is installed')];
  }
  const problems: string[] = [];
  if (!LINK_KINDS.includes(state.kind ?? '')) problems.push(`it is not a dummy link (${state.kind ?? 'a plain device'}): the agent does not manage it`);
  if (!state.up) problems.push('it is down');
  const missing = addresses.filter((a) => !state.addresses.includes(a));
  if (missing.length > 0) problems.push(`${missing.join(', ')} missing`);
  if (problems.length === 0) return [row(id, title, 'ok', `${state.kind} link up with ${addresses.join(', ')}`)];
  return [row(id, title, 'fail', `${name}: ${problems.join('; ')}`, fix)];
}

/** A GET without a token at every address the agent listens on must get its 400 (JSON with a message). */
export async function listenerRows(http: HttpPort, cc: DebugContainerCredentials, timeoutMs: number): Promise<CheckRow[]> {
  const id = 'containerCredentials.listener';
  const title = 'container credentials listener';
  if (cc.addresses.length === 0) {
    return [row(id, title, 'fail', 'the agent listens nowhere yet', 'the agent may still be starting; otherwise see its log ("container credentials server cannot listen")')];
  }
  const rows: CheckRow[] = [];
  for (const address of cc.addresses) {
    const url = `http://${address}${CONTAINER_CREDENTIALS_PATH}`;
    try {
      const res = await http.request(url, { timeoutMs });
      const body = safeJson(res.body);
      if (res.status === 400 && typeof body?.message === 'string') rows.push(row(`${id}.${address}`, title, 'ok', `${url} answers (400 without a token, as it should)`));
      else rows.push(row(`${id}.${address}`, title, 'fail', `${url} answered ${res.status}, not the agent's 400 for a request without a token`, 'something else listens there: check the port (--container-credentials-port) and what owns that address'));
    } catch (err) {
      rows.push(row(`${id}.${address}`, title, 'fail', `${url}: ${message(err)}`,
        'run doctor in the node\'s network namespace (on the node, or in the agent pod); if it still fails, the link or address is gone (see the link row) or the agent stopped listening (see its log)'));
    }
  }
  return rows;
}

/** A TokenReview error this recent makes the token row a warning. */
export const RECENT_ERROR_MS = 5 * 60_000;

/**
 * Token validations (TokenIdentity.snapshot()): OK with the counts (TokenReviews held back by the agent's rate bound
 * among them); a warning while TokenReviews fail (an error in the last RECENT_ERROR_MS).
 */
export function tokenRow(cc: DebugContainerCredentials, now: number): CheckRow {
  const id = 'containerCredentials.tokens';
  const title = 'token validations';
  const stats = cc.identity;
  if (!stats) return row(id, title, 'warn', 'the agent reports no token validations yet', 'wait for the agent to finish starting, then run doctor again');
  const failed = Object.entries(stats.validations.failed).filter(([, n]) => n > 0);
  const refused = failed.length ? failed.map(([code, n]) => `${code} ${n}`).join(', ') : 'none';
  const { reviews } = stats;
  const detail =
    `${stats.validations.ok} validated, refused: ${refused}; TokenReviews ok ${reviews.ok}, unauthenticated ${reviews.unauthenticated}, ` +
    `error ${reviews.error}, limited ${reviews.limited} (${stats.reviewsPerSecond}/s); ${stats.cacheEntries} cached`;
  const last = stats.lastError;
  if (last && now - Date.parse(last.at) < RECENT_ERROR_MS) {
    return row(id, title, 'warn', `${detail}; last TokenReview error ${last.at}: ${last.message}`,
      "pods asking by token get 503 while TokenReviews fail: the agent's ClusterRole needs create on tokenreviews (authentication.k8s.io) and get on serviceaccounts (deploy/base/rbac.yaml); see the API server row");
  }
  return row(id, title, 'ok', detail);
}

function safeJson(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
