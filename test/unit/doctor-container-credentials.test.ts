/**
 * `kiam doctor`'s container-credentials rows (src/doctor/container-credentials.ts) and the `containerCredentials`
 * block of /debug/state: the mode, the link read with `ip` (scripted runner), the listener answering its 400, and
 * the token validations.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildConfig, type RawOptions } from '../../src/config.ts';
import type { HttpPort, HttpResponse } from '../../src/doctor/checks.ts';
import { containerCredentialsRows, linkRows, listenerRows, tokenRow } from '../../src/doctor/container-credentials.ts';
import { collectDebugState, type DebugContainerCredentials, type DebugState } from '../../src/doctor/state.ts';
import { showArgv } from '../../src/netfilter/link.ts';
import { ScriptedRunner } from '../fakes/runner.ts';

const NOW = Date.parse('2026-12-07T04:00:00Z');
const URL4 = 'http://169.254.170.23:80/v1/credentials';
const URL6 = 'http://[fd00:ec2::23]:80/v1/credentials';
const AGENT_400 = { status: 400, body: '{"message":"missing Authorization header"}' };

function linkJson(addresses: string[], options: { up?: boolean; kind?: string } = {}): string {
  const { up = true, kind = 'dummy' } = options;
  return JSON.stringify([
    {
      ifindex: 7,
      ifname: 'kiam-link0',
      flags: ['BROADCAST', 'NOARP', ...(up ? ['UP', 'LOWER_UP'] : [])],
      linkinfo: { info_kind: kind },
      addr_info: addresses.map((local) => ({ family: local.includes(':') ? 'inet6' : 'inet', local, prefixlen: local.includes(':') ? 128 : 32 })),
    },
  ]);
}

const ON: DebugContainerCredentials = {
  enabled: true,
  addresses: ['169.254.170.23:80', '[fd00:ec2::23]:80'],
  skipped: [],
  link: { name: 'kiam-link0', present: true, error: null },
  audience: 'kiam',
  identity: { audiences: ['kiam'], cacheEntries: 3, validations: { ok: 12, failed: { invalid: 2 } }, reviews: { ok: 5, unauthenticated: 2, error: 0, limited: 0 }, reviewsPerSecond: 0.2 },
};

function state(raw: Partial<RawOptions>, cc: DebugContainerCredentials | undefined): DebugState {
  const config = buildConfig({ nodeName: 'node-1', ...raw }, {});
  return collectDebugState({
    version: '9.9.9',
    startedAt: NOW - 60_000,
    now: () => NOW,
    config,
    readiness: () => ({ ready: true, checks: {} }),
    ...(cc ? { containerCredentials: () => cc } : {}),
  });
}

class Http implements HttpPort {
  readonly seen: string[] = [];
  constructor(private readonly routes: Record<string, HttpResponse | Error>) {}
  async request(url: string): Promise<HttpResponse> {
    this.seen.push(url);
    const answer = this.routes[url] ?? new Error('ECONNREFUSED');
    if (answer instanceof Error) throw answer;
    return answer;
  }
}

describe('/debug/state containerCredentials', () => {
  it('carries the flags in config and the listener as the agent reports it; null when not reported', () => {
    const s = state({ containerCredentials: true, tokenAudience: 'aud-x', containerCredentialsLink: 'none' }, ON);
    assert.deepEqual(
      [s.config.containerCredentials, s.config.containerCredentialsAddresses, s.config.containerCredentialsPort, s.config.containerCredentialsLink, s.config.tokenAudience],
      [true, ['169.254.170.23', 'fd00:ec2::23'], 80, null, 'aud-x'],
    );
    assert.equal(s.containerCredentials, ON);
    assert.equal(state({}, undefined).containerCredentials, null);
  });
});

describe('doctor rows', () => {
  it('off: one OK row saying so, nothing run', async () => {
    const runner = new ScriptedRunner();
    const http = new Http({});
    const rows = await containerCredentialsRows(runner, http, state({}, { ...ON, enabled: false }), 1000, NOW);
    assert.deepEqual(rows.map((r) => [r.id, r.status]), [['containerCredentials', 'ok']]);
    assert.match(rows[0]!.detail, /^off/);
    runner.assertDone();
    assert.deepEqual(http.seen, []);
  });

  it('on and healthy: mode, link, the listener at each address, token validations, all OK', async () => {
    const runner = new ScriptedRunner().expect(showArgv('kiam-link0'), { stdout: linkJson(['169.254.170.23', 'fd00:ec2::23']) });
    const http = new Http({ [URL4]: AGENT_400, [URL6]: AGENT_400 });
    const rows = await containerCredentialsRows(runner, http, state({ containerCredentials: true }, ON), 1000, NOW);
    runner.assertDone();
    assert.deepEqual(rows.map((r) => [r.id, r.status]), [
      ['containerCredentials', 'ok'],
      ['containerCredentials.link', 'ok'],
      ['containerCredentials.listener.169.254.170.23:80', 'ok'],
      ['containerCredentials.listener.[fd00:ec2::23]:80', 'ok'],
      ['containerCredentials.tokens', 'ok'],
    ]);
    assert.match(rows[0]!.detail, /audience "kiam"/);
    assert.equal(rows[1]!.detail, 'dummy link up with 169.254.170.23, fd00:ec2::23');
    assert.equal(rows[4]!.detail, '12 validated, refused: invalid 2; TokenReviews ok 5, unauthenticated 2, error 0, limited 0 (0.2/s); 3 cached');
    assert.deepEqual(http.seen, [URL4, URL6]);
  });

  it('the IPv6 address left out (node without IPv6): said in the mode row, not looked for on the link', async () => {
    const cc: DebugContainerCredentials = { ...ON, addresses: ['169.254.170.23:80'], skipped: [{ address: 'fd00:ec2::23', reason: '/proc/sys/net/ipv6/conf/all/disable_ipv6 is 1' }] };
    const runner = new ScriptedRunner().expect(showArgv('kiam-link0'), { stdout: linkJson(['169.254.170.23']) });
    const rows = await containerCredentialsRows(runner, new Http({ [URL4]: AGENT_400 }), state({ containerCredentials: true }, cc), 1000, NOW);
    assert.match(rows[0]!.detail, /fd00:ec2::23 left out: .*disable_ipv6 is 1/);
    assert.equal(rows.find((r) => r.id === 'containerCredentials.link')!.status, 'ok');
  });

  it('on, but the agent has not reported its listener yet: a warning', async () => {
    const rows = await containerCredentialsRows(new ScriptedRunner(), new Http({}), state({ containerCredentials: true }, undefined), 1000, NOW);
    assert.deepEqual(rows.map((r) => [r.id, r.status]), [['containerCredentials', 'warn']]);
    assert.ok(rows[0]!.fix);
  });
});

describe('link rows', () => {
  const addresses = ['169.254.170.23', 'fd00:ec2::23'];

  it('a missing link, a down one, a missing address, a link that is not ours: FAIL with the fix', async () => {
    const cases: Array<[string, { code?: number; stdout?: string; stderr?: string }, RegExp]> = [
      ['missing', { code: 1, stderr: 'Device "kiam-link0" does not exist.\n' }, /kiam-link0 does not exist: pods cannot reach 169\.254\.170\.23, fd00:ec2::23/],
      ['down', { stdout: linkJson(addresses, { up: false }) }, /kiam-link0: it is down$/],
      ['address', { stdout: linkJson(['169.254.170.23']) }, /kiam-link0: fd00:ec2::23 missing$/],
      ['foreign', { stdout: linkJson(addresses, { kind: 'bridge' }) }, /not a dummy link \(bridge\)/],
    ];
    for (const [name, result, detail] of cases) {
      const runner = new ScriptedRunner().expect(showArgv('kiam-link0'), result);
      const [r] = await linkRows(runner, { ...ON, link: { name: 'kiam-link0', present: false, error: 'RTNETLINK answers: Operation not permitted' } }, addresses);
      runner.assertDone();
      assert.equal(r!.status, 'fail', name);
      assert.match(r!.detail, detail, name);
      assert.match(r!.fix!, /repairs them every --reconcile-interval.*Operation not permitted/, name);
    }
  });

  it('ip cannot run: a warning, not a verdict', async () => {
    const runner = new ScriptedRunner().expect(showArgv('kiam-link0'), { code: 127, stderr: 'ip: command not found' });
    const [r] = await linkRows(runner, ON, addresses);
    assert.equal(r!.status, 'warn');
    assert.match(r!.detail, /command not found/);
  });

  it('--container-credentials-link none: the addresses must be on some link of the node', async () => {
    const all = JSON.stringify([JSON.parse(linkJson(['127.0.0.1']))[0], { ...JSON.parse(linkJson(addresses))[0], ifname: 'eth1' }]);
    const ok = new ScriptedRunner().expect(['ip', '-json', 'address', 'show'], { stdout: all });
    const [good] = await linkRows(ok, { ...ON, link: null }, addresses);
    ok.assertDone();
    assert.equal(good!.status, 'ok');
    assert.match(good!.detail, /managed outside the agent/);
    const missing = new ScriptedRunner().expect(['ip', '-json', 'address', 'show'], { stdout: linkJson(['169.254.170.23']) });
    const [bad] = await linkRows(missing, { ...ON, link: null }, addresses);
    assert.equal(bad!.status, 'fail');
    assert.match(bad!.detail, /^fd00:ec2::23 on no link of this node/);
  });
});

describe('listener rows', () => {
  it('anything but the agent 400 at an address is a FAIL: refused, another status, a body that is not ours', async () => {
    const rows = await listenerRows(new Http({ [URL6]: { status: 200, body: '<html>' } }), ON, 1000);
    assert.deepEqual(rows.map((r) => r.status), ['fail', 'fail']);
    assert.match(rows[0]!.detail, /ECONNREFUSED/);
    assert.match(rows[1]!.detail, /answered 200, not the agent's 400/);
    for (const r of rows) assert.ok(r.fix);
    const notJson = await listenerRows(new Http({ [URL4]: { status: 400, body: 'bad request' } }), { ...ON, addresses: ['169.254.170.23:80'] }, 1000);
    assert.equal(notJson[0]!.status, 'fail');
  });

  it('listening nowhere: FAIL', async () => {
    const rows = await listenerRows(new Http({}), { ...ON, addresses: [] }, 1000);
    assert.deepEqual(rows.map((r) => r.status), ['fail']);
  });
});

describe('token validations row', () => {
  const failing = (at: number) => ({
    ...ON,
    identity: {
      ...ON.identity!,
      validations: { ok: 1, failed: { 'review-failed': 4 } },
      reviews: { ok: 1, unauthenticated: 0, error: 4, limited: 0 },
      lastError: { at: new Date(at).toISOString(), message: 'POST /apis/authentication.k8s.io/v1/tokenreviews: HTTP 403: tokenreviews.authentication.k8s.io is forbidden' },
    },
  });

  it('a warning with the RBAC fix while TokenReviews fail (an error in the last 5 minutes)', () => {
    const r = tokenRow(failing(NOW - 60_000), NOW);
    assert.equal(r.status, 'warn');
    assert.match(r.detail, /refused: review-failed 4; TokenReviews ok 1, unauthenticated 0, error 4/);
    assert.match(r.detail, /last TokenReview error .*: .*is forbidden$/);
    assert.match(r.fix!, /create on tokenreviews/);
  });

  it('an old error alone is no warning', () => {
    assert.equal(tokenRow(failing(NOW - 10 * 60_000), NOW).status, 'ok');
  });

  it('no snapshot yet: a warning', () => {
    assert.equal(tokenRow({ ...ON, identity: null }, NOW).status, 'warn');
  });
});
