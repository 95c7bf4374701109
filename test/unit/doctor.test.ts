import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { StsError, type AssumeRoleRequest } from '../../src/cache/sts.ts';
import { ConfigError, buildConfig } from '../../src/config.ts';
import {
  agentRows,
  checkApiServer,
  checkBackend,
  checkBypass,
  checkInterfaces,
  checkMetadata,
  checkRules,
  fetchAgentState,
  identityRow,
  inspectRules,
  interfaceMatches,
  suggestPatterns,
  type CheckRow,
  type HttpPort,
  type HttpResponse,
  type KubePort,
} from '../../src/doctor/checks.ts';
import { parseDoctorOptions, type DoctorOptions } from '../../src/doctor/options.ts';
import { exitCode, fetchHttp, renderText, runDoctor, type DoctorPorts } from '../../src/doctor/run.ts';
import { collectDebugState, type DebugIdentity, type DebugState } from '../../src/doctor/state.ts';
import { createMetrics } from '../../src/metrics.ts';
import type { RuleSpec } from '../../src/netfilter/rules.ts';
import type { Lookup } from '../../src/resolver/types.ts';
import { FakeClock, settle } from '../fakes/clock.ts';
import { ScriptedRunner } from '../fakes/runner.ts';
import { ScriptedSts } from '../fakes/sts.ts';
import { printedRule, savedNat } from '../fakes/iptables-save.ts';

const NOW = Date.parse('2026-11-28T07:00:00Z');
const MIN = 60_000;
const BASE = 'arn:aws:iam::123456789012:role/';
const SPEC: Required<RuleSpec> = { hostIp: '10.0.1.23', port: 8181, hostInterfaces: ['cali+'], chain: 'KIAM-METADATA' };

const INSTALLED = savedNat({ rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA'] });

function only(rows: CheckRow[], id: string): CheckRow {
  const found = rows.filter((r) => r.id === id);
  assert.equal(found.length, 1, `one row ${id} in ${JSON.stringify(rows, null, 1)}`);
  return found[0]!;
}

/** Every non-OK row carries a fix; no OK row does. */
function assertFixes(rows: CheckRow[]): void {
  for (const r of rows) {
    if (r.status === 'ok') assert.equal(r.fix, undefined, `OK row ${r.id} has no fix`);
    else assert.ok(r.fix && r.fix.length > 10, `row ${r.id} (${r.status}) has a fix in words`);
  }
}

function identity(over: Partial<DebugIdentity> = {}): DebugIdentity {
  return {
    roleArn: `${BASE}app-reader`,
    sessionName: 'team-a.a1',
    externalId: false,
    users: 1,
    fetching: false,
    accessKeyId: 'ASIATEST000000000001',
    expiration: new Date(NOW + 60 * MIN).toISOString(),
    lastUpdated: new Date(NOW - 5 * MIN).toISOString(),
    servableUntil: new Date(NOW + 30 * MIN).toISOString(),
    refreshAt: new Date(NOW + 20 * MIN).toISOString(),
    lastError: null,
    ...over,
  };
}

function agentState(over: Partial<DebugState> = {}): DebugState {
  const config = buildConfig(
    { nodeName: 'node-1', hostIp: '10.0.1.23', iptables: true, hostInterface: ['cali+'], kubeconfig: '/etc/kiam/kubeconfig', roleBaseArn: BASE },
    {},
  );
  const base = collectDebugState({
    version: '9.9.9',
    startedAt: NOW - 10 * MIN,
    now: () => NOW,
    config,
    readiness: () => ({ ready: true, checks: { watch: true, serving: true, rules: true } }),
    rules: () => ({ enabled: true, backend: 'nft', backendReason: 'kubelet chains found in iptables-nft-save -t mangle', chain: 'KIAM-METADATA', present: true }),
    pods: () => [
      { kind: 'role', pod: { uid: 'u1', namespace: 'team-a', name: 'a1', ip: '10.77.1.2' }, identity: { key: 'k', roleArn: `${BASE}app-reader`, roleName: 'app-reader', sessionName: 'team-a.a1' } },
      { kind: 'no-role', pod: { uid: 'u2', namespace: 'team-a', name: 'c1', ip: '10.77.1.3' } },
    ],
    identities: () => [],
  });
  return { ...base, identities: [identity()], ...over };
}

// ---- fakes of the ports -----------------------------------------------------------------------------

type Route = (init: { method?: string; headers?: Record<string, string> }) => HttpResponse | Error;

class FakeHttp implements HttpPort {
  readonly seen: Array<{ url: string; method: string; headers: Record<string, string> }> = [];
  constructor(private readonly routes: Record<string, Route>) {}
  async request(url: string, init: { method?: string; headers?: Record<string, string>; timeoutMs: number }): Promise<HttpResponse> {
    const method = init.method ?? 'GET';
    this.seen.push({ url, method, headers: init.headers ?? {} });
    const route = this.routes[`${method} ${url}`];
    if (!route) throw new Error('ECONNREFUSED');
    const answer = route(init);
    if (answer instanceof Error) throw answer;
    return answer;
  }
}

const IMDS = 'http://169.254.169.254';
const STATE_URL = 'http://127.0.0.1:9620/debug/state';

function imdsV2Routes(): Record<string, Route> {
  return {
    [`PUT ${IMDS}/latest/api/token`]: (init) => (init.headers?.['x-aws-ec2-metadata-token-ttl-seconds'] ? { status: 200, body: 'TOKEN' } : { status: 400, body: '' }),
    [`GET ${IMDS}/latest/meta-data/`]: (init) => (init.headers?.['x-aws-ec2-metadata-token'] === 'TOKEN' ? { status: 200, body: 'ami-id\ninstance-id\n' } : { status: 401, body: '' }),
  };
}

function fakeKube(answers: Record<string, unknown | Error> = {}): KubePort {
  return {
    server: 'https://10.0.0.1:6443',
    async get(path) {
      const key = Object.keys(answers).find((k) => path.startsWith(k));
      const answer = key === undefined ? new Error(`GET ${path}: HTTP 404: not found`) : answers[key];
      if (answer instanceof Error) throw answer;
      return answer;
    },
  };
}

const OPTIONS: DoctorOptions = parseDoctorOptions({});

// ---- tests ------------------------------------------------------------------------------------------

describe('doctor options', () => {
  it('defaults: the agent decides interfaces, backend and kubeconfig', () => {
    assert.deepEqual(parseDoctorOptions({}), { metricsPort: 9620, metadataEndpoint: 'http://169.254.169.254', json: false, timeoutMs: 3000 });
  });

  it('takes every flag', () => {
    assert.deepEqual(
      parseDoctorOptions({ metricsPort: '9700', hostInterface: ['eni+', '!eth0'], iptablesBackend: 'legacy', kubeconfig: '/k', metadataEndpoint: 'http://127.0.0.1:8080/', json: true, timeout: '500ms' }),
      { metricsPort: 9700, hostInterfaces: ['eni+', '!eth0'], iptablesBackend: 'legacy', kubeconfig: '/k', metadataEndpoint: 'http://127.0.0.1:8080', json: true, timeoutMs: 500 },
    );
  });

  it('names every bad flag at once', () => {
    try {
      parseDoctorOptions({ metricsPort: '0', hostInterface: ['ca+li'], iptablesBackend: 'xt', metadataEndpoint: 'https://x', timeout: '2m', kubeconfig: '' });
      assert.fail('expected a ConfigError');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      for (const flag of ['--metrics-port', '--host-interface', '--iptables-backend', '--metadata-endpoint', '--timeout', '--kubeconfig']) {
        assert.ok(err.problems.some((p) => p.startsWith(flag)), `${flag} in ${err.problems.join('\n')}`);
      }
    }
  });
});

describe('interface patterns (iptables -i semantics)', () => {
  const cases: Array<[string, string, boolean]> = [
    ['cali+', 'cali1234abcd', true],
    ['cali+', 'cali', true],
    ['cali+', 'eth0', false],
    ['cni0', 'cni0', true],
    ['cni0', 'cni01', false],
    ['+', 'anything', true],
    ['!eth0', 'eth0', false],
    ['!eth0', 'cali1', true],
    ['!eth+', 'eth1', false],
  ];
  for (const [pattern, name, want] of cases) {
    it(`${pattern} ${want ? 'matches' : 'does not match'} ${name}`, () => assert.equal(interfaceMatches(pattern, name), want));
  }

  it('suggests patterns from the CNI interfaces present', () => {
    assert.deepEqual(suggestPatterns(['lo', 'eth0', 'eni0a1b2c3', 'vethabc']), ['eni+ (AWS VPC CNI)', 'veth+ (kindnet)']);
    assert.deepEqual(suggestPatterns(['lo', 'eth0']), []);
  });

  const names = ['lo', 'eth0', 'cali1234567890a', 'cali0987654321b'];

  it('OK with the interfaces a pattern matches', () => {
    const rows = checkInterfaces(['cali+'], names, 2, 'as the agent runs');
    assert.equal(rows[0]!.status, 'ok');
    assert.match(rows[0]!.detail, /cali0987654321b, cali1234567890a/);
  });

  it('WARN for a pattern matching nothing on a node without pods, with the CNI patterns as the fix', () => {
    const rows = checkInterfaces(['eni+'], names, 0, 'from --host-interface');
    assert.equal(rows[0]!.status, 'warn');
    assert.match(rows[0]!.detail, /matches no interface.*eth0/);
    assert.match(rows[0]!.fix!, /cali\+ \(Calico\)/);
    assert.match(rows[0]!.fix!, /eni\+.*cni0.*weave.*veth\+.*lxc\+/);
  });

  it('FAIL when the agent indexes pods and no pattern matches anything: their traffic is not intercepted', () => {
    const rows = checkInterfaces(['eni+', 'weave'], names, 3, 'as the agent runs');
    assert.deepEqual(rows.map((r) => r.status), ['fail', 'fail']);
    assert.match(rows[0]!.detail, /3 pod\(s\)/);
    assert.match(rows[0]!.fix!, /--host-interface.*cali\+ \(Calico\)/);
  });

  it('one matching pattern is enough: the others only warn', () => {
    const rows = checkInterfaces(['cali+', 'eni+'], names, 3, 'as the agent runs');
    assert.deepEqual(rows.map((r) => r.status), ['ok', 'warn']);
  });

  it('a negation must exclude something', () => {
    assert.equal(checkInterfaces(['!eth0'], names, 1, 'x')[0]!.status, 'ok');
    const none = checkInterfaces(['!ens5'], names, 1, 'x')[0]!;
    assert.equal(none.status, 'warn');
    assert.match(none.fix!, /uplink/);
  });

  it('no pattern to check: WARN', () => {
    const rows = checkInterfaces(undefined, names, undefined, 'x');
    assert.equal(rows[0]!.status, 'warn');
    assertFixes(rows);
  });
});

describe('chain and jump', () => {
  it('OK when the chain holds exactly what the agent would install and PREROUTING jumps to it once', () => {
    const rows = inspectRules(INSTALLED, SPEC, 10_000);
    assert.equal(only(rows, 'iptables.chain').status, 'ok');
    assert.equal(only(rows, 'iptables.jump').status, 'ok');
    assert.equal(rows.length, 2);
  });

  it('FAIL on a missing jump, with how the agent repairs it and the command to reinstall', () => {
    const rows = inspectRules(savedNat({ rules: [printedRule('cali+')] }), SPEC, 3_600_000);
    const jump = only(rows, 'iptables.jump');
    assert.equal(jump.status, 'fail');
    assert.match(jump.detail, /PREROUTING does not jump to KIAM-METADATA/);
    assert.match(jump.fix!, /--reconcile-interval \(3600s\)/);
    assert.match(jump.fix!, /kiam iptables install --host-ip 10\.0\.1\.23 --port 8181 --host-interface 'cali\+'/);
    assert.equal(only(rows, 'iptables.chain').status, 'ok');
  });

  it('FAIL on a missing chain', () => {
    const rows = inspectRules(savedNat({ chain: false }), SPEC);
    assert.equal(only(rows, 'iptables.chain').status, 'fail');
    assert.equal(only(rows, 'iptables.jump').status, 'fail');
    assertFixes(rows);
  });

  it('FAIL when the chain differs from what the agent would install (other host IP)', () => {
    const rows = inspectRules(savedNat({ rules: [printedRule('cali+', '10.0.9.9:8181')], prerouting: ['-j KIAM-METADATA'] }), SPEC);
    const chain = only(rows, 'iptables.chain');
    assert.equal(chain.status, 'fail');
    assert.match(chain.detail, /10\.0\.9\.9:8181/);
    assert.match(chain.detail, /wanted: .*10\.0\.1\.23:8181/);
  });

  it('WARN on a duplicated jump, FAIL on a modified one', () => {
    assert.equal(only(inspectRules(savedNat({ rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA', '-j KIAM-METADATA'] }), SPEC), 'iptables.jump').status, 'warn');
    const modified = only(inspectRules(savedNat({ rules: [printedRule('cali+')], prerouting: ['-i eth9 -j KIAM-METADATA'] }), SPEC), 'iptables.jump');
    assert.equal(modified.status, 'fail');
    assert.match(modified.detail, /-i eth9/);
  });

  it('WARN on another interceptor of 169.254.169.254 ahead of ours (kube2iam left behind)', () => {
    const kube2iam = '-d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.23:8181';
    const rows = inspectRules(savedNat({ rules: [printedRule('cali+')], prerouting: ['-j KUBE-SERVICES', kube2iam, '-j KIAM-METADATA'] }), SPEC);
    const competing = only(rows, 'iptables.competing');
    assert.equal(competing.status, 'warn');
    assert.match(competing.detail, /#2 /);
    assert.match(competing.fix!, /kube2iam/);
    assert.equal(only(rows, 'iptables.jump').status, 'ok');
  });

  it('without the agent settings: presence only', () => {
    const rows = inspectRules(INSTALLED, undefined);
    assert.equal(only(rows, 'iptables.chain').status, 'ok');
    assert.match(only(rows, 'iptables.chain').detail, /not compared/);
  });

  it('reads the nat table with the backend the agent uses, without re-detecting it', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save', '-t', 'nat'], { stdout: INSTALLED });
    const agent = agentState();
    const { rows, backend } = await checkBackend(runner, undefined, agent);
    assert.equal(backend?.name, 'nft');
    assert.equal(rows[0]!.status, 'ok');
    assert.match(rows[0]!.detail, /nft \(the one the agent uses: kubelet chains/);
    const ruleRows = await checkRules(runner, backend, agent);
    assert.deepEqual(ruleRows.map((r) => [r.id, r.status]), [['iptables.chain', 'ok'], ['iptables.jump', 'ok']]);
    runner.assertDone();
  });

  it('auto-detects the backend when the agent is unknown', async () => {
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: '*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n' });
    const { rows, backend } = await checkBackend(runner, undefined, undefined);
    assert.equal(backend?.name, 'nft');
    assert.match(rows[0]!.detail, /kubelet chains/);
    runner.assertDone();
  });

  it('FAIL when no iptables can run, with the fix', async () => {
    const missing = { code: 127, stderr: 'command not found' };
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], missing)
      .expect(['iptables-legacy-save'], missing)
      .expect(['iptables-nft-save'], missing);
    const { rows, backend } = await checkBackend(runner, 'auto', undefined);
    assert.equal(backend, undefined);
    assert.equal(rows[0]!.status, 'fail');
    assert.match(rows[0]!.fix!, /root/);
    const ruleRows = await checkRules(runner, backend, undefined);
    assert.equal(ruleRows[0]!.status, 'fail');
  });

  it('WARN when told to read another backend than the agent writes', async () => {
    const { rows } = await checkBackend(new ScriptedRunner(), 'legacy', agentState());
    assert.equal(only(rows, 'iptables.backend-agent').status, 'warn');
  });

  it('FAIL when the nat table cannot be read', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save', '-t', 'nat'], { code: 4, stderr: 'Permission denied (you must be root)' });
    const { backend } = await checkBackend(new ScriptedRunner(), undefined, agentState());
    const rows = await checkRules(runner, backend, agentState());
    assert.equal(rows[0]!.status, 'fail');
    assert.match(rows[0]!.detail, /Permission denied/);
  });

  it('WARN when the agent runs without --iptables', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save', '-t', 'nat'], { stdout: savedNat({ chain: false }) });
    const agent = agentState();
    agent.config.iptables = false;
    const { backend } = await checkBackend(new ScriptedRunner(), 'nft', undefined);
    const rows = await checkRules(runner, backend, agent);
    assert.equal(rows[0]!.status, 'warn');
    assert.match(rows[0]!.fix!, /--iptables/);
  });

  it('eBPF dataplanes that bypass netfilter are warned about', () => {
    assert.equal(checkBypass(() => ['lo', 'eth0'])[0]!.status, 'ok');
    const rows = checkBypass(() => ['lo', 'cilium_host']);
    assert.equal(rows[0]!.status, 'warn');
    assert.match(rows[0]!.detail, /Cilium/);
    assertFixes(rows);
  });
});

describe('metadata endpoint', () => {
  it('OK with an IMDSv2 token', async () => {
    const http = new FakeHttp(imdsV2Routes());
    const rows = await checkMetadata(http, IMDS, 1000);
    assert.equal(rows[0]!.status, 'ok');
    assert.match(rows[0]!.detail, /IMDSv2/);
    assert.deepEqual(http.seen.map((s) => s.method), ['PUT', 'GET']);
  });

  it('WARN when only IMDSv1 answers (the hop limit), with the fix', async () => {
    const http = new FakeHttp({
      [`PUT ${IMDS}/latest/api/token`]: () => ({ status: 403, body: '' }),
      [`GET ${IMDS}/latest/meta-data/`]: () => ({ status: 200, body: 'ami-id\n' }),
    });
    const rows = await checkMetadata(http, IMDS, 1000);
    assert.equal(rows[0]!.status, 'warn');
    assert.match(rows[0]!.fix!, /HttpPutResponseHopLimit/);
  });

  it('FAIL when unreachable or refusing', async () => {
    const down = await checkMetadata(new FakeHttp({}), IMDS, 1000);
    assert.equal(down[0]!.status, 'fail');
    assert.match(down[0]!.detail, /ECONNREFUSED/);
    const refusing = await checkMetadata(new FakeHttp({ ...imdsV2Routes(), [`GET ${IMDS}/latest/meta-data/`]: () => ({ status: 500, body: '' }) }), IMDS, 1000);
    assert.equal(refusing[0]!.status, 'fail');
    assert.match(refusing[0]!.detail, /answered 500/);
    assertFixes([...down, ...refusing]);
  });
});

describe('API server', () => {
  it("OK: /version answers and this node's pods can be listed", async () => {
    const seen: string[] = [];
    const kube = fakeKube({ '/version': { gitVersion: 'v1.31.2' }, '/api/v1/pods': { items: [] } });
    const rows = await checkApiServer(() => ({ ...kube, get: (p, t) => (seen.push(p), kube.get(p, t)) }), 'node-1', 1000);
    assert.equal(rows[0]!.status, 'ok');
    assert.match(rows[0]!.detail, /v1\.31\.2/);
    assert.deepEqual(seen, ['/version', '/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=1']);
  });

  it('FAIL when unreachable, FAIL with the RBAC fix when the list is forbidden', async () => {
    const down = await checkApiServer(() => fakeKube({ '/version': new Error('connect ECONNREFUSED 10.0.0.1:6443') }), 'node-1', 1000);
    assert.equal(down[0]!.status, 'fail');
    const forbidden = await checkApiServer(() => fakeKube({ '/version': { gitVersion: 'v1' }, '/api/v1/pods': new Error('GET /api/v1/pods: HTTP 403: forbidden') }), 'node-1', 1000);
    assert.equal(forbidden[0]!.status, 'fail');
    assert.match(forbidden[0]!.fix!, /get\/list\/watch on pods/);
  });

  it('WARN when there is no kubeconfig to use, FAIL when the one given cannot be loaded', async () => {
    const rows = await checkApiServer(() => {
      throw new Error('not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig');
    }, undefined, 1000);
    assert.equal(rows[0]!.status, 'warn');
    assert.match(rows[0]!.fix!, /--kubeconfig/);
    const given = await checkApiServer(() => {
      throw new Error('--kubeconfig /nope: cannot load: ENOENT');
    }, undefined, 1000, true);
    assert.equal(given[0]!.status, 'fail', 'a --kubeconfig given that cannot be loaded is a failure');
    assert.match(given[0]!.detail, /ENOENT/);
  });
});

describe("the running agent's view", () => {
  it('FAIL when the agent is unreachable, refuses (403), or answers something else', async () => {
    const down = await fetchAgentState(new FakeHttp({}), 9620, 1000);
    assert.equal(down.rows[0]!.status, 'fail');
    assert.match(down.rows[0]!.fix!, /--metrics-port/);
    const refused = await fetchAgentState(new FakeHttp({ [`GET ${STATE_URL}`]: () => ({ status: 403, body: 'forbidden\n' }) }), 9620, 1000);
    assert.match(refused.rows[0]!.fix!, /loopback/);
    const garbage = await fetchAgentState(new FakeHttp({ [`GET ${STATE_URL}`]: () => ({ status: 200, body: '<html>' }) }), 9620, 1000);
    assert.equal(garbage.state, undefined);
    assert.equal(garbage.rows[0]!.status, 'fail');
  });

  it('OK when ready, with pods and roles counted', () => {
    const rows = agentRows(agentState(), NOW);
    assert.equal(only(rows, 'agent').status, 'ok');
    assert.match(only(rows, 'agent.pods').detail, /2 live pod\(s\): 1 with a role \(1 role\(s\)\), 1 without, 0 denied/);
    assert.equal(rows.filter((r) => r.status !== 'ok').length, 0);
  });

  it('FAIL when not ready, naming what fails and how to fix it', () => {
    const rows = agentRows(agentState({ readiness: { ready: false, checks: { watch: false, serving: true, rules: false } } }), NOW);
    const agent = only(rows, 'agent');
    assert.equal(agent.status, 'fail');
    assert.match(agent.detail, /watch, rules failing/);
    assert.match(agent.fix!, /RBAC/);
    assert.match(agent.fix!, /chain and jump rows/);
  });

  it('WARN per denied pod, with the namespace annotation to add', () => {
    const state = agentState();
    state.pods!.push({ namespace: 'locked', name: 'd1', ip: '10.77.1.4', answer: 'denied', requestedRole: `${BASE}app.reader`, denialCode: 'namespace-no-policy', denialReason: 'namespace locked has no iam.amazonaws.com/permitted annotation' });
    const row = only(agentRows(state, NOW), 'pod.locked.d1');
    assert.equal(row.status, 'warn');
    assert.match(row.fix!, /kubectl annotate namespace locked iam\.amazonaws\.com\/permitted='arn:aws:iam::123456789012:role\/app\\\.reader'/);
  });

  it('credential verdicts per identity', () => {
    const cases: Array<[string, Partial<DebugIdentity>, 'ok' | 'warn' | 'fail', RegExp]> = [
      ['fresh', {}, 'ok', /expires 2026-11-28T08:00:00\.000Z \(in 60 min\), refresh in 20 min, 1 pod/],
      ['being fetched', { accessKeyId: null, expiration: null, servableUntil: null, fetching: true }, 'ok', /being fetched/],
      ['no credentials, no error', { accessKeyId: null, expiration: null, servableUntil: null }, 'warn', /no credentials yet/],
      ['STS denies', { accessKeyId: null, expiration: null, servableUntil: null, lastError: { code: 'AccessDenied', message: 'not authorized', failures: 3, retryAt: new Date(NOW + 4000).toISOString() } }, 'fail', /AccessDenied: not authorized \(3 failure/],
      ['refresh failing', { lastError: { code: 'Throttling', message: 'Rate exceeded', failures: 1, retryAt: new Date(NOW + 2000).toISOString() } }, 'warn', /refresh failing/],
      ['close to expiry', { servableUntil: new Date(NOW + 2 * MIN).toISOString() }, 'warn', /served only until/],
      ['refresh overdue', { refreshAt: new Date(NOW - 10 * MIN).toISOString() }, 'warn', /refresh was due 10 min ago/],
    ];
    for (const [name, over, status, detail] of cases) {
      const row = identityRow(identity(over), NOW);
      assert.equal(row.status, status, name);
      assert.match(row.detail, detail, name);
      assertFixes([row]);
    }
    assert.match(identityRow(identity({ accessKeyId: null, lastError: { code: 'AccessDenied', message: 'x', failures: 1, retryAt: new Date(NOW).toISOString() } }), NOW).fix!, /trust policy/);
  });
});

describe('runDoctor', () => {
  function ports(over: Partial<DoctorPorts> & { state?: DebugState; save?: string } = {}): DoctorPorts & { runner: ScriptedRunner } {
    const state = over.state ?? agentState();
    const runner = new ScriptedRunner().expect(['iptables-nft-save', '-t', 'nat'], { stdout: over.save ?? INSTALLED });
    return {
      runner,
      http: new FakeHttp({ ...imdsV2Routes(), [`GET ${STATE_URL}`]: () => ({ status: 200, body: JSON.stringify(state) }) }),
      listInterfaces: () => ['lo', 'eth0', 'cali1234567890a'],
      kube: (path) => {
        assert.equal(path, '/etc/kiam/kubeconfig', "the agent's kubeconfig by default");
        return fakeKube({ '/version': { gitVersion: 'v1.31.2' }, '/api/v1/pods': { items: [] } });
      },
      now: () => NOW,
      ...over,
    } as DoctorPorts & { runner: ScriptedRunner };
  }

  it('all OK: exit 0, every check reported once, the JSON carries the agent view', async () => {
    const p = ports();
    const report = await runDoctor(OPTIONS, p);
    p.runner.assertDone();
    assert.deepEqual(report.checks.filter((r) => r.status !== 'ok'), []);
    assert.equal(exitCode(report), 0);
    assert.deepEqual(
      report.checks.map((r) => r.id),
      ['iptables.backend', 'iptables.bypass', 'iptables.chain', 'iptables.jump', 'interfaces.cali+', 'metadata', 'apiserver', 'agent', 'agent.pods', `identity.team-a.a1.${BASE}app-reader`],
    );
    assert.deepEqual(report.summary, { ok: 10, warn: 0, fail: 0 });
    const json = JSON.parse(JSON.stringify(report)) as { ok: boolean; agent: DebugState };
    assert.equal(json.ok, true);
    assert.deepEqual(json.agent.pods!.map((p) => `${p.namespace}/${p.name}`), ['team-a/a1', 'team-a/c1']);
  });

  it('a missing jump: exit 1 and the text report carries the FAIL row and its fix', async () => {
    const report = await runDoctor(OPTIONS, ports({ save: savedNat({ rules: [printedRule('cali+')] }) }));
    assert.equal(exitCode(report), 1);
    const text = renderText(report);
    assert.match(text, /^FAIL\s+PREROUTING jump\s+PREROUTING does not jump to KIAM-METADATA: metadata traffic is not intercepted$/m);
    assert.match(text, /^\s+fix: the agent repairs drift within its --reconcile-interval \(10s\)/m);
    assert.match(text, /^  team-a\/a1\s+10\.77\.1\.2\s+arn:aws:iam::123456789012:role\/app-reader$/m);
    assert.match(text, /^  team-a\/c1\s+10\.77\.1\.3\s+no role$/m);
    assert.match(text, /ASIATEST000000000001 expires/);
    assert.match(text, /9 ok, 0 warning\(s\), 1 failure\(s\)\n$/);
  });

  it('--host-interface overrides the patterns the agent reports; warnings alone still exit 0', async () => {
    const report = await runDoctor({ ...OPTIONS, hostInterfaces: ['cali+', 'eni+'] }, ports());
    assert.equal(only(report.checks, 'interfaces.eni+').status, 'warn');
    assert.match(only(report.checks, 'interfaces.eni+').detail, /from --host-interface/);
    assert.equal(exitCode(report), 0);
  });

  it('never crashes: without an agent and with a throwing port, every problem is a FAIL row', async () => {
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: '' })
      .expect(['iptables-legacy-save'], { stdout: '' })
      .expect(['iptables-nft-save'], { stdout: '' })
      .expect(['iptables-nft-save', '-t', 'nat'], { stdout: savedNat({ chain: false }) });
    const report = await runDoctor(OPTIONS, {
      runner,
      http: new FakeHttp({}),
      listInterfaces: () => {
        throw new Error('EACCES: /sys/class/net');
      },
      kube: () => {
        throw new Error('not running in a cluster');
      },
      now: () => NOW,
    });
    runner.assertDone();
    assert.equal(report.agent, null);
    assert.equal(exitCode(report), 1);
    for (const id of ['iptables.chain', 'iptables.jump', 'interfaces', 'metadata', 'agent']) assert.equal(only(report.checks, id).status, 'fail', id);
    assert.match(only(report.checks, 'interfaces').detail, /EACCES/);
    assertFixes(report.checks);
  });
});

describe('debug state', () => {
  it('reports pods and identities of a real credential cache without secrets or external ID values', async () => {
    const clock = new FakeClock(NOW);
    let n = 0;
    const sts = new ScriptedSts((req: AssumeRoleRequest) => {
      n++;
      if (req.roleArn.endsWith('denied')) return new StsError('AccessDenied', 'not authorized to assume', false, 403);
      return { accessKeyId: `ASIATEST${n}`, secretAccessKey: 'SECRET-KEY-VALUE', sessionToken: 'SESSION-TOKEN-VALUE', expiration: clock.now() + 3600_000 };
    });
    const cache = new CredentialCache({ sts, clock, metrics: createMetrics(), logger: pino({ level: 'silent' }), sessionDurationSec: 3600, stsTimeoutMs: 5000, random: () => 0 });
    const ok = { key: 'k1', roleArn: `${BASE}app`, sessionName: 'team-a.a1', externalId: 'EXTERNAL-ID-VALUE' };
    const bad = { key: 'k2', roleArn: `${BASE}denied`, sessionName: 'team-a.a2' };
    cache.retain(ok);
    cache.retain(bad);
    await cache.prefetch(ok);
    await cache.prefetch(bad);
    await settle();
    const config = buildConfig({ nodeName: 'node-1' }, {});
    const lookups: Lookup[] = [
      { kind: 'role', pod: { uid: 'u1', namespace: 'team-a', name: 'a1', ip: '10.0.0.2' }, identity: { ...ok, roleName: 'app' } },
      { kind: 'denied', pod: { uid: 'u3', namespace: 'locked', name: 'd1', ip: '10.0.0.4' }, code: 'not-permitted', reason: 'role x does not match', role: `${BASE}x` },
      { kind: 'unknown' },
    ];
    const state = collectDebugState({ version: '1.2.3', startedAt: NOW - 1000, now: () => clock.now(), config, readiness: () => ({ ready: true, checks: {} }), pods: () => lookups, identities: () => cache.snapshot() });
    const text = JSON.stringify(state);
    for (const secret of ['SECRET-KEY-VALUE', 'SESSION-TOKEN-VALUE', 'EXTERNAL-ID-VALUE']) assert.ok(!text.includes(secret), `${secret} leaked`);
    assert.equal(state.rules, null);
    assert.deepEqual(state.pods!.map((p) => [p.name, p.answer]), [['d1', 'denied'], ['a1', 'role']]);
    assert.equal(state.pods![1]!.externalId, true);
    const [good, failed] = state.identities!;
    assert.deepEqual(
      { roleArn: good!.roleArn, externalId: good!.externalId, users: good!.users, accessKeyId: good!.accessKeyId, expiration: good!.expiration, servableUntil: good!.servableUntil, refreshAt: good!.refreshAt, lastError: good!.lastError },
      { roleArn: `${BASE}app`, externalId: true, users: 1, accessKeyId: 'ASIATEST1', expiration: '2026-11-28T08:00:00.000Z', servableUntil: '2026-11-28T07:30:00.000Z', refreshAt: '2026-11-28T07:25:00.000Z', lastError: null },
    );
    assert.equal(failed!.accessKeyId, null);
    assert.equal(failed!.lastError?.code, 'AccessDenied');
    assert.equal(failed!.lastError?.failures, 1);
    assert.equal(identityRow(failed!, clock.now()).status, 'fail');
    cache.stop();
  });
});

describe('fetchHttp', () => {
  it('returns status and body, names a refused connection and a timeout', async (t) => {
    let hold = false;
    const server = http.createServer((req, res) => {
      if (hold) return; // never answers
      res.writeHead(req.method === 'PUT' ? 200 : 404).end(`${req.method} ${req.url}`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      server.closeAllConnections();
      server.close();
    });
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    assert.deepEqual(await fetchHttp.request(`${base}/x`, { method: 'PUT', timeoutMs: 2000 }), { status: 200, body: 'PUT /x' });
    assert.equal((await fetchHttp.request(`${base}/y`, { timeoutMs: 2000 })).status, 404);
    hold = true;
    await assert.rejects(fetchHttp.request(`${base}/z`, { timeoutMs: 150 }), /no answer within 150 ms/);
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    await assert.rejects(fetchHttp.request(`http://127.0.0.1:${port}/`, { timeoutMs: 2000 }), /ECONNREFUSED/);
  });
});
