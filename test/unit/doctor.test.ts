import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { StsError, type AssumeRoleRequest } from '../../src/cache/sts.ts';
import { parseCommandLine } from '../../src/cli.ts';
import { ConfigError, buildConfig, type RawOptions } from '../../src/config.ts';
import {
  agentInterception,
  agentRows,
  checkApiServer,
  checkBackend,
  checkEbpf,
  checkIptables,
  checkInterfaces,
  checkMetadata,
  checkRules,
  dataplaneRow,
  detectDataplane,
  ebpfNeed,
  ebpfPaths,
  ebpfUse,
  fetchAgentState,
  identityRow,
  inspectFamily,
  inspectRules,
  interceptionRows,
  interfaceMatches,
  suggestPatterns,
  supportRows,
  type AgentInterception,
  type CheckRow,
  type Dataplane,
  type EbpfContext,
  type EbpfInspection,
  type HttpPort,
  type HttpResponse,
  type IptablesCheck,
  type KubePort,
  type RulesInspection,
} from '../../src/doctor/checks.ts';
import { parseDoctorOptions, type DoctorOptions } from '../../src/doctor/options.ts';
import { exitCode, fetchHttp, renderText, runDoctor, type DoctorPorts } from '../../src/doctor/run.ts';
import { collectDebugState, debugConfig, type DebugEbpf, type DebugIdentity, type DebugState } from '../../src/doctor/state.ts';
import { createMetrics } from '../../src/metrics.ts';
import { checkSupport, renderReadBatch, type MountInfo } from '../../src/netfilter/ebpf/plan.ts';
import type { NodeFacts } from '../../src/netfilter/ebpf/support.ts';
import type { CommandResult } from '../../src/netfilter/exec.ts';
import type { ResolvedRuleSpec } from '../../src/netfilter/rules.ts';
import type { Lookup } from '../../src/resolver/types.ts';
import * as bpf from '../fakes/bpftool-output.ts';
import { READ, READ_INPUT } from '../fakes/bpftool-runner.ts';
import { FakeClock, settle } from '../fakes/clock.ts';
import { ScriptedRunner } from '../fakes/runner.ts';
import { ScriptedSts } from '../fakes/sts.ts';
import { printedBackstop, printedRule, saved, savedInstalled } from '../fakes/iptables-save.ts';

const NOW = Date.parse('2026-11-28T07:00:00Z');
const MIN = 60_000;
const BASE = 'arn:aws:iam::123456789012:role/';
const SPEC: ResolvedRuleSpec = { hostIp: '10.0.1.23', port: 8181, hostInterfaces: ['cali+'], chain: 'KIAM-METADATA' };
const SPEC6: ResolvedRuleSpec = { ...SPEC, hostIpv6: '2001:db8::23' };

/** Everything of ours in place, as `iptables-nft-save` (every table) prints it back. */
const INSTALLED = savedInstalled(['cali+']);
const KUBE2IAM = '-d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.23:8181';

/** Our nat rules and filter backstop, with the hook chains as given (each without its `-A CHAIN`). */
function installedWith(hooks: { prerouting?: string[]; input?: string[]; forward?: string[] } = {}): string {
  return saved({
    nat: { rules: [printedRule('cali+')], prerouting: hooks.prerouting ?? ['-j KIAM-METADATA'] },
    filter: { rules: [printedBackstop('cali+')], input: hooks.input ?? ['-j KIAM-METADATA-BACKSTOP'], forward: hooks.forward ?? ['-j KIAM-METADATA-BACKSTOP'] },
  });
}

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

const statuses = (rows: CheckRow[]): Array<[string, string]> => rows.map((r) => [r.id, r.status]);

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

/** The agent as /debug/state reports it: `kiam agent --iptables` on 10.0.1.23 unless `raw` says otherwise. */
function agentState(over: Partial<DebugState> = {}, raw: Partial<RawOptions> = {}, ebpf?: DebugEbpf): DebugState {
  const config = buildConfig(
    { nodeName: 'node-1', hostIp: '10.0.1.23', iptables: true, hostInterface: ['cali+'], kubeconfig: '/etc/kiam/kubeconfig', roleBaseArn: BASE, ...raw },
    {},
  );
  const base = collectDebugState({
    version: '9.9.9',
    startedAt: NOW - 10 * MIN,
    now: () => NOW,
    config,
    readiness: () => ({ ready: true, checks: { watch: true, serving: true, rules: true } }),
    ...(config.iptables ? { rules: () => ({ enabled: true, backend: 'nft', backendReason: 'kubelet chains found in iptables-nft-save -t mangle', chain: 'KIAM-METADATA', present: true }) } : {}),
    ...(ebpf ? { ebpf: () => ebpf } : {}),
    pods: () => [
      { kind: 'role', pod: { uid: 'u1', namespace: 'team-a', name: 'a1', ip: '10.77.1.2' }, identity: { key: 'k', roleArn: `${BASE}app-reader`, roleName: 'app-reader', sessionName: 'team-a.a1' } },
      { kind: 'no-role', pod: { uid: 'u2', namespace: 'team-a', name: 'c1', ip: '10.77.1.3' } },
    ],
    identities: () => [],
  });
  return { ...base, identities: [identity()], ...over };
}

/** The eBPF state of an agent running the redirect on the captures' cgroup and bpffs. */
const EBPF_ACTIVE: DebugEbpf = { enabled: true, active: true, reason: null, cgroupRoot: bpf.FIXTURE_CGROUP, bpffs: bpf.FIXTURE_BPFFS, present: true };

/** `kiam agent --intercept auto` with the addresses of the bpftool captures (10.0.0.5, 2001:db8::5), eBPF active. */
function autoAgent(over: Partial<DebugState> = {}, raw: Partial<RawOptions> = {}, ebpf: DebugEbpf = EBPF_ACTIVE): DebugState {
  return agentState(over, { iptables: false, intercept: 'auto', hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', ...raw }, ebpf);
}

// ---- fakes of the ports -----------------------------------------------------------------------------

/** A node with cgroup2 at /sys/fs/cgroup, bpffs at /sys/fs/bpf, and the captures' private mounts. */
const MOUNTS: MountInfo[] = [
  { mountPoint: '/', fsType: 'ext4' },
  { mountPoint: '/sys/fs/cgroup', fsType: 'cgroup2' },
  { mountPoint: '/sys/fs/bpf', fsType: 'bpf' },
  { mountPoint: `${bpf.FIXTURE_ROOT}/cg`, fsType: 'cgroup2' },
  { mountPoint: bpf.FIXTURE_BPFFS, fsType: 'bpf' },
];
const FACTS: NodeFacts = { mounts: () => MOUNTS, kernelRelease: () => '6.18.0-1-amd64' };
/** Doctor checks bpftool the way the agent does (`bpftool version`): its feature probe needs capabilities the agent container has not. */
const PROBE = ['bpftool', 'version'];
const FEATURES: Partial<CommandResult> = { stdout: 'bpftool v7.1.0\nusing libbpf v1.1\n' };
/** What readLive feeds bpftool for the default paths (/sys/fs/cgroup, /sys/fs/bpf). */
const READ_DEFAULT = renderReadBatch({ cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf' });

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

/** A metadata service with IMDSv2; tokens 'required' (HttpTokens=required: a token-less GET → 401) or 'optional'. */
function imdsV2Routes(tokens: 'optional' | 'required' = 'optional'): Record<string, Route> {
  const meta = { status: 200, body: 'ami-id\ninstance-id\n' };
  return {
    [`PUT ${IMDS}/latest/api/token`]: (init) => (init.headers?.['x-aws-ec2-metadata-token-ttl-seconds'] ? { status: 200, body: 'TOKEN' } : { status: 400, body: '' }),
    [`GET ${IMDS}/latest/meta-data/`]: (init) => {
      const token = init.headers?.['x-aws-ec2-metadata-token'];
      if (token === undefined) return tokens === 'required' ? { status: 401, body: '' } : meta;
      return token === 'TOKEN' ? meta : { status: 401, body: '' };
    },
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
  it('defaults: the agent decides interfaces, backend, kubeconfig and the eBPF paths', () => {
    assert.deepEqual(parseDoctorOptions({}), { metricsPort: 9620, metadataEndpoint: 'http://169.254.169.254', json: false, timeoutMs: 3000 });
  });

  it('takes every flag', () => {
    assert.deepEqual(
      parseDoctorOptions({
        metricsPort: '9700', hostInterface: ['eni+', '!eth0'], iptablesBackend: 'legacy', kubeconfig: '/k', cgroupRoot: '/run/kiam/cgroupv2', bpffs: '/sys/fs/bpf',
        metadataEndpoint: 'http://127.0.0.1:8080/', json: true, timeout: '500ms',
      }),
      {
        metricsPort: 9700, hostInterfaces: ['eni+', '!eth0'], iptablesBackend: 'legacy', kubeconfig: '/k', cgroupRoot: '/run/kiam/cgroupv2', bpffs: '/sys/fs/bpf',
        metadataEndpoint: 'http://127.0.0.1:8080', json: true, timeoutMs: 500,
      },
    );
  });

  it('names every bad flag at once', () => {
    try {
      parseDoctorOptions({ metricsPort: '0', hostInterface: ['ca+li'], iptablesBackend: 'xt', metadataEndpoint: 'https://x', timeout: '2m', kubeconfig: '', cgroupRoot: 'cg', bpffs: '/sys/fs/bpf.x' });
      assert.fail('expected a ConfigError');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      for (const flag of ['--metrics-port', '--host-interface', '--iptables-backend', '--metadata-endpoint', '--timeout', '--kubeconfig', '--cgroup-root', '--bpffs']) {
        assert.ok(err.problems.some((p) => p.startsWith(flag)), `${flag} in ${err.problems.join('\n')}`);
      }
    }
  });

  it('kiam doctor takes --cgroup-root and --bpffs; bad ones exit 2 naming the flag', () => {
    const inv = parseCommandLine(['doctor', '--cgroup-root', '/run/kiam/cgroupv2', '--bpffs', '/run/kiam/bpf'], {});
    assert.equal(inv.kind, 'doctor');
    assert.deepEqual(inv.kind === 'doctor' && [inv.options.cgroupRoot, inv.options.bpffs], ['/run/kiam/cgroupv2', '/run/kiam/bpf']);
    const bad = parseCommandLine(['doctor', '--bpffs', 'relative'], {});
    assert.equal(bad.kind, 'exit');
    assert.ok(bad.kind === 'exit' && bad.code === 2 && bad.output.includes('--bpffs'));
    const help = parseCommandLine(['doctor', '--help'], {});
    assert.ok(help.kind === 'exit' && /--cgroup-root <path>/.test(help.output) && /--bpffs <path>/.test(help.output));
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

describe('chain, jump, backstop and rules ahead', () => {
  it('OK when both chains hold exactly what the agent would install and each hook jumps to them once', () => {
    const rows = inspectRules(INSTALLED, SPEC, 10_000);
    assert.deepEqual(statuses(rows), [['iptables.chain', 'ok'], ['iptables.jump', 'ok'], ['iptables.backstop', 'ok']]);
    assert.equal(only(rows, 'iptables.jump').detail, 'PREROUTING position 1 jumps to KIAM-METADATA');
    assert.equal(only(rows, 'iptables.backstop').detail, '1 REJECT rule(s) for cali+; INPUT position 1 jumps to KIAM-METADATA-BACKSTOP; FORWARD position 1 jumps to KIAM-METADATA-BACKSTOP');
  });

  it('FAIL on a missing jump, with how the agent repairs it and the command to reinstall', () => {
    const rows = inspectRules(installedWith({ prerouting: [] }), SPEC, 3_600_000);
    const jump = only(rows, 'iptables.jump');
    assert.equal(jump.status, 'fail');
    assert.match(jump.detail, /PREROUTING does not jump to KIAM-METADATA/);
    assert.match(jump.fix!, /--reconcile-interval \(3600s\)/);
    assert.match(jump.fix!, /kiam intercept install --intercept iptables --host-ip 10\.0\.1\.23 --port 8181 --host-interface 'cali\+'/);
    assert.equal(only(rows, 'iptables.chain').status, 'ok');
    assert.equal(only(rows, 'iptables.backstop').status, 'ok');
  });

  it('FAIL on a missing chain', () => {
    const rows = inspectRules(saved({ nat: { chain: false }, filter: { chain: false } }), SPEC);
    assert.deepEqual(statuses(rows), [['iptables.chain', 'fail'], ['iptables.jump', 'fail'], ['iptables.backstop', 'fail']]);
    assertFixes(rows);
  });

  it('FAIL when the chain differs from what the agent would install (other host IP)', () => {
    const rows = inspectRules(saved({ nat: { rules: [printedRule('cali+', '10.0.9.9:8181')], prerouting: ['-j KIAM-METADATA'] }, filter: {} }), SPEC);
    const chain = only(rows, 'iptables.chain');
    assert.equal(chain.status, 'fail');
    assert.match(chain.detail, /10\.0\.9\.9:8181/);
    assert.match(chain.detail, /wanted: .*10\.0\.1\.23:8181/);
  });

  it('WARN on a duplicated jump, FAIL on a modified one', () => {
    assert.equal(only(inspectRules(installedWith({ prerouting: ['-j KIAM-METADATA', '-j KIAM-METADATA'] }), SPEC), 'iptables.jump').status, 'warn');
    const modified = only(inspectRules(installedWith({ prerouting: ['-i eth9 -j KIAM-METADATA'] }), SPEC), 'iptables.jump');
    assert.equal(modified.status, 'fail');
    assert.match(modified.detail, /-i eth9/);
  });

  it('backstop: FAIL without its chain or a jump from FORWARD, WARN on a duplicated INPUT jump, FAIL on other rules', () => {
    const noChain = only(inspectRules(saved({ nat: { rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA'] }, filter: { chain: false } }), SPEC), 'iptables.backstop');
    assert.equal(noChain.status, 'fail');
    assert.match(noChain.detail, /filter chain KIAM-METADATA-BACKSTOP is missing/);
    const noForward = only(inspectRules(installedWith({ forward: [] }), SPEC), 'iptables.backstop');
    assert.equal(noForward.status, 'fail');
    assert.match(noForward.detail, /INPUT position 1 jumps to KIAM-METADATA-BACKSTOP; FORWARD does not jump to KIAM-METADATA-BACKSTOP/);
    assert.equal(only(inspectRules(installedWith({ input: ['-j KIAM-METADATA-BACKSTOP', '-j KIAM-METADATA-BACKSTOP'] }), SPEC), 'iptables.backstop').status, 'warn');
    const otherRules = only(inspectRules(saved({ nat: { rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA'] }, filter: { rules: [printedBackstop('eni+')], input: ['-j KIAM-METADATA-BACKSTOP'], forward: ['-j KIAM-METADATA-BACKSTOP'] } }), SPEC), 'iptables.backstop');
    assert.equal(otherRules.status, 'fail');
    assert.match(otherRules.detail, /wanted: -A KIAM-METADATA-BACKSTOP .*-i cali\+/);
    assertFixes([noChain, noForward, otherRules]);
  });

  it('OK, listing them, for the rules ahead of our jumps that do not name the metadata address', () => {
    const rows = inspectRules(installedWith({ prerouting: ['-j KUBE-SERVICES', '-j KIAM-METADATA'], forward: ['-j cali-FORWARD', '-j KIAM-METADATA-BACKSTOP'] }), SPEC);
    const ahead = only(rows, 'iptables.ahead');
    assert.equal(ahead.status, 'ok');
    assert.equal(ahead.detail, 'rule(s) ahead of our jump, none naming 169.254.169.254 (left in place): PREROUTING #1: -j KUBE-SERVICES | FORWARD #1: -j cali-FORWARD');
    assert.equal(ahead.fix, undefined);
    assert.equal(only(rows, 'iptables.jump').detail, 'PREROUTING position 2 jumps to KIAM-METADATA');
    assert.equal(rows.filter((r) => r.id === 'iptables.competing').length, 0);
  });

  it('FAIL on another interceptor of 169.254.169.254 ahead of ours (kube2iam left behind), in nat or filter', () => {
    const rows = inspectRules(installedWith({ prerouting: ['-j KUBE-SERVICES', KUBE2IAM, '-j KIAM-METADATA'] }), SPEC);
    const competing = only(rows, 'iptables.competing');
    assert.equal(competing.status, 'fail');
    assert.match(competing.detail, /PREROUTING #2: -d 169\.254\.169\.254\/32/);
    assert.match(competing.fix!, /kube2iam/);
    assert.match(only(rows, 'iptables.ahead').detail, /PREROUTING #1: -j KUBE-SERVICES$/, 'the others are listed apart');
    assert.equal(only(rows, 'iptables.jump').status, 'ok');
    const inFilter = only(inspectRules(installedWith({ input: ['-d 169.254.169.254/32 -j ACCEPT', '-j KIAM-METADATA-BACKSTOP'] }), SPEC), 'iptables.competing');
    assert.match(inFilter.detail, /INPUT #1: -d 169\.254\.169\.254\/32 -j ACCEPT/);
    const result = inspectFamily(installedWith({ prerouting: [KUBE2IAM, '-j KIAM-METADATA'] }), SPEC);
    assert.equal(result.holds, false, 'a shadowed DNAT does not hold');
    assert.equal(result.failsClosed, true);
    assert.equal(inspectFamily(installedWith({ forward: [] }), SPEC).failsClosed, false, 'forwarded pod traffic would pass');
    assert.equal(inspectFamily(INSTALLED, SPEC).holds, true);
  });

  it('a comment naming the metadata address shadows nothing', () => {
    const rows = inspectRules(installedWith({ prerouting: ['-m comment --comment "169.254.169.254 audit" -j LOG', '-j KIAM-METADATA'] }), SPEC);
    assert.equal(rows.filter((r) => r.id === 'iptables.competing').length, 0);
    assert.equal(only(rows, 'iptables.ahead').status, 'ok');
  });

  it('ip6tables: the same rows for fd00:ec2::254, DNAT to the IPv6 host address', () => {
    const rows = inspectRules(savedInstalled(['cali+'], 'ipv6'), SPEC6, 10_000, 'ipv6');
    assert.deepEqual(statuses(rows), [['ip6tables.chain', 'ok'], ['ip6tables.jump', 'ok'], ['ip6tables.backstop', 'ok']]);
    assert.equal(only(rows, 'ip6tables.chain').title, 'ip6tables chain KIAM-METADATA');
    assert.match(only(rows, 'ip6tables.chain').detail, /1 DNAT rule\(s\) to \[2001:db8::23\]:8181 for cali\+/);
    const shadowed = inspectRules(
      saved({ nat: { rules: [printedRule('cali+', '[2001:db8::23]:8181', 'ipv6')], prerouting: ['-d fd00:ec2::254/128 -p tcp -j DNAT --to-destination [2001:db8::99]:80', '-j KIAM-METADATA'] }, filter: {} }),
      SPEC6, 10_000, 'ipv6',
    );
    assert.equal(only(shadowed, 'ip6tables.competing').status, 'fail');
    assert.match(only(shadowed, 'ip6tables.competing').fix!, /ip6tables -t nat -D PREROUTING/);
  });

  it('without the agent settings: presence only', () => {
    const rows = inspectRules(INSTALLED, undefined);
    assert.equal(only(rows, 'iptables.chain').status, 'ok');
    assert.match(only(rows, 'iptables.chain').detail, /not compared/);
    assert.match(only(rows, 'iptables.backstop').detail, /present with 1 rule\(s\) \(not compared/);
  });

  it('reads every table with the backend the agent uses, without re-detecting it', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save'], { stdout: INSTALLED });
    const agent = agentState();
    const { rows, backend } = await checkBackend(runner, undefined, agent);
    assert.equal(backend?.name, 'nft');
    assert.equal(rows[0]!.status, 'ok');
    assert.match(rows[0]!.detail, /nft \(the one the agent uses: kubelet chains/);
    const ruleRows = await checkRules(runner, backend, agent);
    assert.deepEqual(statuses(ruleRows), [['iptables.chain', 'ok'], ['iptables.jump', 'ok'], ['iptables.backstop', 'ok']]);
    runner.assertDone();
  });

  it('reads ip6tables too when the agent has an IPv6 host address', async () => {
    const agent = agentState({}, { hostIpv6: '2001:DB8:0::23' });
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save'], { stdout: INSTALLED })
      .expect(['ip6tables-nft-save'], { stdout: saved({ nat: { chain: false }, filter: { chain: false } }) });
    const { backend } = await checkBackend(new ScriptedRunner(), undefined, agent);
    const result = await checkIptables(runner, backend, agent);
    runner.assertDone();
    assert.deepEqual(statuses(result.rows), [
      ['iptables.chain', 'ok'], ['iptables.jump', 'ok'], ['iptables.backstop', 'ok'],
      ['ip6tables.chain', 'fail'], ['ip6tables.jump', 'fail'], ['ip6tables.backstop', 'fail'],
    ]);
    assert.match(only(result.rows, 'ip6tables.chain').fix!, /--host-ipv6 2001:db8::23/, 'the reinstall command carries the compressed IPv6 address');
    assert.equal(result.ipv4?.holds, true);
    assert.equal(result.ipv6?.holds, false);

    const broken = new ScriptedRunner()
      .expect(['iptables-nft-save'], { stdout: INSTALLED })
      .expect(['ip6tables-nft-save'], { code: 3, stderr: "ip6tables-nft-save: can't initialize ip6tables table `nat'" });
    const failed = await checkIptables(broken, backend, agent);
    const row = only(failed.rows, 'ip6tables.rules');
    assert.equal(row.status, 'fail');
    assert.match(row.detail, /exited 3: ip6tables-nft-save: can't initialize/);
    assert.equal(failed.ipv6, undefined);
  });

  it('auto-detects the backend when the agent is unknown', async () => {
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: '*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n' });
    const { rows, backend } = await checkBackend(runner, undefined, undefined);
    assert.equal(backend?.name, 'nft');
    assert.match(rows[0]!.detail, /kubelet chains/);
    runner.assertDone();
  });

  it('FAIL when no iptables can run, with the fix; not used with --intercept ebpf', async () => {
    const missing = { code: 127, stderr: 'command not found' };
    const detection = () =>
      new ScriptedRunner().expect(['iptables-nft-save', '-t', 'mangle'], missing).expect(['iptables-legacy-save'], missing).expect(['iptables-nft-save'], missing);
    const { rows, backend } = await checkBackend(detection(), 'auto', undefined);
    assert.equal(backend, undefined);
    assert.equal(rows[0]!.status, 'fail');
    assert.match(rows[0]!.fix!, /root/);
    const ruleRows = await checkRules(new ScriptedRunner(), backend, undefined);
    assert.equal(ruleRows[0]!.status, 'fail');

    const ebpfOnly = autoAgent({}, { intercept: 'ebpf' });
    const unused = await checkBackend(detection(), undefined, ebpfOnly);
    assert.deepEqual(statuses(unused.rows), [['iptables.backend', 'ok']]);
    assert.match(unused.rows[0]!.detail, /^not used \(--intercept ebpf\)/);
    assert.deepEqual(await checkRules(new ScriptedRunner(), undefined, ebpfOnly), []);
  });

  it('WARN when told to read another backend than the agent writes', async () => {
    const { rows } = await checkBackend(new ScriptedRunner(), 'legacy', agentState());
    assert.equal(only(rows, 'iptables.backend-agent').status, 'warn');
  });

  it('FAIL when the rules cannot be read', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save'], { code: 4, stderr: 'Permission denied (you must be root)' });
    const { backend } = await checkBackend(new ScriptedRunner(), undefined, agentState());
    const rows = await checkRules(runner, backend, agentState());
    assert.equal(rows[0]!.status, 'fail');
    assert.match(rows[0]!.detail, /Permission denied/);
  });

  it('a mode without the rules (ebpf, none) reports only whether ours are there', async () => {
    const { backend } = await checkBackend(new ScriptedRunner(), 'nft', undefined);
    for (const [raw, text] of [[{ iptables: false, intercept: 'none' }, /not used \(--intercept none\); our chains are absent/], [{ iptables: false, intercept: 'ebpf' }, /not used \(--intercept ebpf\); our chains are present/]] as const) {
      const runner = new ScriptedRunner().expect(['iptables-nft-save'], { stdout: raw.intercept === 'none' ? saved({ nat: { chain: false }, filter: { chain: false } }) : INSTALLED });
      const result = await checkIptables(runner, backend, agentState({}, raw));
      runner.assertDone();
      assert.deepEqual(statuses(result.rows), [['iptables.rules', 'ok']]);
      assert.match(result.rows[0]!.detail, text);
      assert.equal(result.ipv4?.holds, raw.intercept === 'ebpf');
    }
  });
});

describe('dataplane', () => {
  const agentOf = (raw: Partial<RawOptions>, ebpf?: DebugEbpf) => agentInterception(agentState({}, raw, ebpf));
  const iptablesOnly = agentOf({});
  const autoActive = agentOf({ iptables: false, intercept: 'auto' }, EBPF_ACTIVE);
  const autoInactive = agentOf({ iptables: false, intercept: 'auto' }, { ...EBPF_ACTIVE, active: false, present: false, reason: 'the eBPF socket redirect cannot run on this node: kernel 5.4.0 is older than 5.8 (cgroup getpeername hooks); upgrade the node\'s kernel' });

  it('tells Cilium eBPF, Calico eBPF and netfilter apart by their interfaces', () => {
    assert.deepEqual(detectDataplane(() => ['lo', 'eth0', 'cali123']), { kind: 'netfilter', name: 'netfilter', evidence: 'no cilium_host, bpfin.cali or bpfnatin interface' });
    assert.deepEqual(detectDataplane(() => ['lo', 'cilium_host', 'cilium_net', 'lxc1']), { kind: 'ebpf', name: 'Cilium eBPF', evidence: 'cilium_host found' });
    assert.deepEqual(detectDataplane(() => ['bpfin.cali', 'bpfout.cali', 'bpfnatin']), { kind: 'ebpf', name: 'Calico eBPF', evidence: 'bpfin.cali, bpfnatin found' });
    assert.equal(detectDataplane(() => {
      throw new Error('EACCES');
    }).kind, 'unknown');
  });

  it('FAIL for iptables alone on an eBPF dataplane, with the fix "use --intercept auto"', () => {
    const r = dataplaneRow(detectDataplane(() => ['cilium_host']), iptablesOnly, false);
    assert.equal(r.status, 'fail');
    assert.match(r.detail, /^Cilium eBPF \(cilium_host found\): .*--intercept iptables does not hold on it/);
    assert.match(r.fix!, /--intercept auto/);
  });

  it('OK when the eBPF redirect runs there, FAIL when auto fell back to iptables on it', () => {
    assert.match(dataplaneRow(detectDataplane(() => ['cilium_host']), autoActive, true).detail, /--intercept auto runs the eBPF socket redirect, which holds on it/);
    const fallback = dataplaneRow(detectDataplane(() => ['bpfnatin']), autoInactive, false);
    assert.equal(fallback.status, 'fail');
    assert.match(fallback.detail, /Calico eBPF.*fell back to iptables alone \(.*kernel 5\.4\.0/);
    assert.match(fallback.fix!, /eBPF kernel support/);
  });

  it('OK on netfilter for every mode; with the agent unknown, what is attached decides', () => {
    const netfilter = detectDataplane(() => ['eth0']);
    for (const ai of [iptablesOnly, autoActive, autoInactive, agentOf({ iptables: false, intercept: 'none' })]) assert.equal(dataplaneRow(netfilter, ai, false).status, 'ok');
    const unknown = agentInterception(undefined);
    assert.equal(dataplaneRow(detectDataplane(() => ['cilium_host']), unknown, true).status, 'ok');
    assert.equal(dataplaneRow(detectDataplane(() => ['cilium_host']), unknown, false).status, 'fail');
    const blind = dataplaneRow(detectDataplane(() => {
      throw new Error('EACCES: /sys/class/net');
    }), iptablesOnly, false);
    assert.equal(blind.status, 'warn');
    assert.match(blind.detail, /EACCES/);
    assertFixes([blind]);
  });
});

describe('eBPF kernel support', () => {
  const paths = { cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf', source: 'the defaults' };

  it('OK with the kernel, cgroup2 and bpffs it needs', () => {
    const rows = supportRows(checkSupport({ kernelRelease: '6.18.0', mounts: MOUNTS, ...paths, features: bpf.FEATURES }), { level: 'required', why: 'x' }, paths);
    assert.deepEqual(statuses(rows), [['ebpf.support', 'ok']]);
    assert.match(rows[0]!.detail, /^kernel 6\.18\.0: .*cgroup2 at \/sys\/fs\/cgroup, bpffs at \/sys\/fs\/bpf$/);
  });

  it("one row per missing piece, each with checkSupport's fix; the verdict follows how much the node needs it", () => {
    const v1 = { cgroupRoot: '/sys/fs/cgroup/unified', bpffs: '/run/none', source: 'x' };
    const support = checkSupport({ kernelRelease: '5.4.0-150-generic', mounts: [{ mountPoint: '/sys/fs/cgroup', fsType: 'tmpfs' }], ...v1, features: { program_types: {} } });
    const required = supportRows(support, { level: 'required', why: 'only the eBPF redirect holds on Cilium eBPF' }, v1);
    assert.deepEqual(required.map((r) => r.id), ['ebpf.support', 'ebpf.support-1', 'ebpf.support-2', 'ebpf.support-3']);
    assert.ok(required.every((r) => r.status === 'fail'));
    assert.equal(required[0]!.detail, 'kernel 5.4.0-150-generic is older than 5.8 (cgroup getpeername hooks) (only the eBPF redirect holds on Cilium eBPF)');
    assert.equal(required[0]!.fix, "upgrade the node's kernel");
    assert.match(required[1]!.detail, /\/sys\/fs\/cgroup\/unified is a tmpfs mount, not cgroup v2/);
    assert.match(required[1]!.fix!, /kiam init.*--cgroup-root/);
    assert.match(required[2]!.fix!, /kiam init.*--bpffs/);
    assert.match(required[3]!.detail, /no cgroup_sock_addr programs/);
    assert.match(required[3]!.fix!, /Linux 5\.8 or later built with CONFIG_CGROUP_BPF/, 'a gap of the kernel itself gets a fix in words too');
    assertFixes(required);
    assert.ok(supportRows(support, { level: 'fallback', why: '--intercept auto falls back to iptables alone' }, v1).every((r) => r.status === 'warn'));
    const unused = supportRows(support, { level: 'unused', why: '--intercept iptables does not use it' }, v1);
    assert.ok(unused.every((r) => r.status === 'ok' && r.fix === undefined));
    assert.match(unused[0]!.detail, /\(not needed: --intercept iptables does not use it\)$/);
  });

  it('the need: ebpf and eBPF dataplanes require it, auto falls back, iptables and none do not use it', () => {
    const cilium: Dataplane = { kind: 'ebpf', name: 'Cilium eBPF', evidence: 'cilium_host found' };
    const netfilter: Dataplane = { kind: 'netfilter', name: 'netfilter', evidence: '' };
    const mode = (intercept: string) => agentInterception(agentState({}, { iptables: false, intercept }));
    assert.equal(ebpfNeed(mode('ebpf'), netfilter).level, 'required');
    assert.equal(ebpfNeed(agentInterception(agentState()), cilium).level, 'required');
    assert.equal(ebpfNeed(mode('auto'), netfilter).level, 'fallback');
    assert.equal(ebpfNeed(agentInterception(agentState()), netfilter).level, 'unused');
    assert.equal(ebpfNeed(mode('none'), cilium).level, 'unused');
    assert.equal(ebpfNeed(agentInterception(undefined), netfilter).level, 'unknown');
  });
});

describe('eBPF programs and config map (real bpftool outputs)', () => {
  const PATHS = { cgroupRoot: bpf.FIXTURE_CGROUP, bpffs: bpf.FIXTURE_BPFFS, source: 'as the agent runs' };
  const used = (raw: Partial<RawOptions> = {}): EbpfContext => ({ paths: PATHS, use: 'used', ai: agentInterception(autoAgent({}, raw)) });

  async function inspect(output: CommandResult, ctx: EbpfContext = used()): Promise<EbpfInspection> {
    const runner = new ScriptedRunner().expect(READ, output, { input: READ_INPUT });
    const result = await checkEbpf(runner, ctx);
    runner.assertDone();
    return result;
  }

  it('in sync: our four programs by id and name on the cgroup, the map as the agent configures it', async () => {
    const result = await inspect(bpf.inSync);
    assert.deepEqual(statuses(result.rows), [
      ['ebpf.cgroup', 'ok'], ['ebpf.connect4', 'ok'], ['ebpf.connect6', 'ok'], ['ebpf.getpeername4', 'ok'], ['ebpf.getpeername6', 'ok'], ['ebpf.config', 'ok'],
    ]);
    assert.equal(only(result.rows, 'ebpf.cgroup').detail, `cgroup ${bpf.FIXTURE_CGROUP}: 4 program(s) of ours, 0 not ours; pins under ${bpf.FIXTURE_BPFFS}/kiam (as the agent runs)`);
    assert.equal(only(result.rows, 'ebpf.connect4').detail, `kiam_connect4 id ${bpf.IDS.connect4} (multi) on ${bpf.FIXTURE_CGROUP}`);
    assert.equal(only(result.rows, 'ebpf.getpeername6').detail, `kiam_getpeer6 id ${bpf.IDS.getpeername6} (multi) on ${bpf.FIXTURE_CGROUP}`);
    assert.equal(
      only(result.rows, 'ebpf.config').detail,
      '169.254.169.254 → 10.0.0.5:8181, fd00:ec2::254 → [2001:db8::5]:8181, node netns cookie 3; redirected 1 IPv4, 0 IPv6, 0 v4-mapped, 0 node socket(s) skipped',
    );
    assert.deepEqual([result.ipv4, result.ipv6, result.attached], [true, 'host', true]);
  });

  it("lists programs that are not ours beside ours, naming Cilium's", async () => {
    const result = await inspect(bpf.foreign);
    assert.equal(only(result.rows, 'ebpf.connect4').status, 'ok');
    assert.match(only(result.rows, 'ebpf.connect4').detail, /kiam_connect4 id 2484 \(multi\) on .*; beside it: foreign_c4 id 2500 \(multi\) \(foreign\)$/);
    assert.match(only(result.rows, 'ebpf.cgroup').detail, /4 program\(s\) of ours, 1 not ours/);
    const cilium = await inspect(bpf.withAttached(bpf.inSync, { id: 77, attachType: 'cgroup_inet6_connect', name: 'cil_sock6_conne' }));
    assert.match(only(cilium.rows, 'ebpf.connect6').detail, /beside it: cil_sock6_conne id 77 \(multi\) \(Cilium's\)$/);
    assert.ok(cilium.rows.every((r) => r.status === 'ok'));
  });

  it('FAIL when one of ours is missing, with the repair and the install command', async () => {
    const result = await inspect(bpf.withoutAttached(bpf.inSync, bpf.IDS.getpeername6));
    const missing = only(result.rows, 'ebpf.getpeername6');
    assert.equal(missing.status, 'fail');
    assert.match(missing.detail, /no program of ours on getpeername6 of .* \(kiam_getpeer6 id 2487 is pinned but not attached\)/);
    assert.match(missing.fix!, /next reconcile \(within its --reconcile-interval, 10s\)/);
    assert.match(missing.fix!, new RegExp(`kiam intercept install --intercept ebpf --host-ip 10\\.0\\.0\\.5 --host-ipv6 2001:db8::5 --port 8181 --cgroup-root ${bpf.FIXTURE_CGROUP} --bpffs ${bpf.FIXTURE_BPFFS}`));
    assert.deepEqual([result.ipv4, result.ipv6], [true, 'host']);
    const noConnect4 = await inspect(bpf.withoutAttached(bpf.inSync, bpf.IDS.connect4));
    assert.equal(only(noConnect4.rows, 'ebpf.connect4').status, 'fail');
    assert.match(only(noConnect4.rows, 'ebpf.connect4').detail, /169\.254\.169\.254 is not redirected in pods/);
    assert.equal(noConnect4.ipv4, false);
  });

  it('WARN for a duplicate of ours, and for programs older than the pinned ones', async () => {
    const dup = await inspect(bpf.withAttached(bpf.inSync, { id: 2517, attachType: 'cgroup_inet4_connect', name: 'kiam_connect4' }));
    const row = only(dup.rows, 'ebpf.connect4');
    assert.equal(row.status, 'warn');
    assert.match(row.detail, /^2 programs of ours on connect4: kiam_connect4 id 2484 \(multi\), kiam_connect4 id 2517 \(multi\) \(the pinned one is id 2484\)/);
    assert.match(row.fix!, /detaches the ones that are not pinned/);
    const reloaded = await inspect(bpf.reloaded);
    assert.equal(only(reloaded.rows, 'ebpf.connect4').status, 'warn');
    assert.match(only(reloaded.rows, 'ebpf.connect4').detail, /kiam_connect4 id 2484 \(multi\) is attached, but the pinned kiam_connect4 is id 2517: an older load/);
    const config = only(reloaded.rows, 'ebpf.config');
    assert.equal(config.status, 'fail');
    assert.match(config.detail, /interception is off \(host IP 0\)/);
    assertFixes([...dup.rows, ...reloaded.rows]);
  });

  it('FAIL when the pins are incomplete: the config map cannot be read', async () => {
    const result = await inspect(bpf.missingPin);
    const config = only(result.rows, 'ebpf.config');
    assert.equal(config.status, 'fail');
    assert.match(config.detail, /cannot read kiam_config under .*: bpf obj get \(.*kiam_getpeer6\): No such file or directory/);
    assert.equal(only(result.rows, 'ebpf.getpeername6').status, 'ok', 'what is attached still is');
    assert.deepEqual([result.ipv4, result.ipv6], [true, 'mapped']);
  });

  it("FAIL when the map differs from the agent's addresses; WARN when the node's netns cookie was not learned", async () => {
    const base = { hostIp4: '10.0.0.5', port: 8181, hostIp6: '2001:db8::5', hostNetnsCookie: 3n, probeIp4: null, probePort: 0, learnedCookie: 3n };
    const other = only((await inspect(bpf.withConfig(bpf.inSync, { ...base, hostIp4: '10.0.0.9', port: 8182 }))).rows, 'ebpf.config');
    assert.equal(other.status, 'fail');
    assert.match(other.detail, /host IP 10\.0\.0\.9, the agent's is 10\.0\.0\.5; port 8182, the agent's is 8181/);
    const v6 = only((await inspect(bpf.inSync, used({ hostIpv6: '2001:db8::6' }))).rows, 'ebpf.config');
    assert.equal(v6.status, 'fail');
    assert.match(v6.detail, /host IPv6 2001:db8::5, the agent's is 2001:db8::6/);
    const noV6 = await inspect(bpf.withConfig(bpf.inSync, { ...base, hostIp6: null }));
    assert.match(only(noV6.rows, 'ebpf.config').detail, /host IPv6 none, the agent's is 2001:db8::5/);
    assert.equal(noV6.ipv6, 'mapped');
    const cookie = only((await inspect(bpf.withConfig(bpf.inSync, { ...base, hostNetnsCookie: 0n }))).rows, 'ebpf.config');
    assert.equal(cookie.status, 'warn');
    assert.match(cookie.detail, /node netns cookie 0: the node's network namespace cookie was not learned/);
    assert.match(cookie.fix!, /could not learn this network namespace's cookie/);
    assertFixes([other, v6, cookie]);
  });

  it('FAIL when the cgroup cannot be read or bpftool is missing; OK when the agent does not use the redirect', async () => {
    const noCgroup = await inspect(bpf.noCgroup);
    assert.deepEqual(statuses(noCgroup.rows), [['ebpf.cgroup', 'fail']]);
    assert.match(noCgroup.rows[0]!.detail, /can't open cgroup \/tmp\/kiam-fixture\/cg\/kfx-child/);
    assert.match(noCgroup.rows[0]!.fix!, /--cgroup-root/);
    const missing = await checkEbpf(new ScriptedRunner().expect(READ, { code: 127, stderr: 'spawn bpftool ENOENT' }), used());
    assert.match(missing.rows[0]!.detail, /bpftool is not installed/);
    const iptablesAgent: EbpfContext = { paths: PATHS, use: 'unused', ai: agentInterception(agentState()) };
    const unused = await inspect(bpf.noCgroup, iptablesAgent);
    assert.deepEqual(statuses(unused.rows), [['ebpf.cgroup', 'ok']]);
    assert.match(unused.rows[0]!.detail, /^not used \(--intercept iptables\); cannot read/);
    const empty = await inspect(bpf.empty, iptablesAgent);
    assert.equal(empty.rows[0]!.detail, `not used (--intercept iptables); nothing of ours attached to ${bpf.FIXTURE_CGROUP}`);
  });

  it('WARN on programs of ours left attached while the agent runs without the redirect', async () => {
    const result = await inspect(bpf.foreign, { paths: PATHS, use: 'unused', ai: agentInterception(agentState()) });
    assert.deepEqual(statuses(result.rows), [['ebpf.cgroup', 'warn']]);
    assert.match(result.rows[0]!.detail, /although the agent runs --intercept iptables: connect4 kiam_connect4 id 2484 \(multi\),.*; not ours: connect4 foreign_c4 id 2500/);
    assert.match(result.rows[0]!.fix!, new RegExp(`kiam intercept remove --intercept ebpf --cgroup-root ${bpf.FIXTURE_CGROUP}`));
    assert.equal(result.ipv4, true, 'they still redirect');
  });

  it('with the agent unknown: WARN when nothing of ours is attached, the full rows otherwise (nothing compared)', async () => {
    const unknown: EbpfContext = { paths: PATHS, use: 'unknown', ai: agentInterception(undefined) };
    const empty = await inspect(bpf.empty, unknown);
    assert.deepEqual(statuses(empty.rows), [['ebpf.cgroup', 'warn']]);
    assertFixes(empty.rows);
    const there = await inspect(bpf.withConfig(bpf.inSync, { hostIp4: '10.0.0.9', port: 8181, hostIp6: null, hostNetnsCookie: 3n, probeIp4: null, probePort: 0, learnedCookie: 3n }), unknown);
    assert.ok(there.rows.every((r) => r.status === 'ok'), JSON.stringify(there.rows, null, 1));
    assert.match(only(there.rows, 'ebpf.config').detail, /fd00:ec2::254 → \[::ffff:10\.0\.0\.9\]:8181 \(v4-mapped\)/);
  });

  it("paths: the flags, else the agent's, else its defaults on this node's mounts", () => {
    assert.deepEqual(ebpfPaths({}, autoAgent(), () => MOUNTS), { ...PATHS, source: 'as the agent runs' });
    assert.deepEqual(ebpfPaths({ cgroupRoot: '/x/cg' }, autoAgent(), () => MOUNTS), { cgroupRoot: '/x/cg', bpffs: bpf.FIXTURE_BPFFS, source: 'from --cgroup-root' });
    assert.deepEqual(ebpfPaths({}, agentState(), () => MOUNTS), { cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf', source: "the agent's defaults" });
    assert.deepEqual(ebpfPaths({}, agentState({}, { cgroupRoot: '/run/kiam/cgroupv2', bpffs: '/run/kiam/bpf' }), () => MOUNTS).cgroupRoot, '/run/kiam/cgroupv2');
    assert.equal(ebpfPaths({}, undefined, () => [{ mountPoint: '/sys/fs/cgroup', fsType: 'tmpfs' }]).cgroupRoot, '/run/kiam/cgroupv2', 'a hybrid node: the mount kiam init makes');
    assert.equal(ebpfPaths({}, undefined, () => {
      throw new Error('EACCES');
    }).cgroupRoot, '/sys/fs/cgroup');
  });
});

describe('interception per family', () => {
  const netfilter: Dataplane = { kind: 'netfilter', name: 'netfilter', evidence: 'no cilium_host, bpfin.cali or bpfnatin interface' };
  const cilium: Dataplane = { kind: 'ebpf', name: 'Cilium eBPF', evidence: 'cilium_host found' };
  const rules = (holds: boolean): RulesInspection => ({ rows: [], holds, present: holds, failsClosed: holds });
  const ebpfOf = (ipv4: boolean, ipv6: EbpfInspection['ipv6']): EbpfInspection => ({ rows: [], ipv4, ipv6, attached: ipv4 || ipv6 !== null });
  const iptables = (v4: boolean, v6?: boolean): IptablesCheck => ({ rows: [], ipv4: rules(v4), ...(v6 !== undefined ? { ipv6: rules(v6) } : {}) });
  const ai = (raw: Partial<RawOptions> = {}, ebpf?: DebugEbpf): AgentInterception => agentInterception(agentState({}, raw, ebpf));
  const rowsOf = (a: AgentInterception, dp: Dataplane, e: EbpfInspection | undefined, r: IptablesCheck | undefined) => {
    const rows = interceptionRows(a, dp, e, r);
    assert.deepEqual(rows.map((x) => x.id), ['intercept.ipv4', 'intercept.ipv6']);
    assertFixes(rows);
    return { v4: rows[0]!, v6: rows[1]! };
  };

  it('iptables on netfilter: IPv4 by the DNAT; IPv6 not used without --host-ipv6', () => {
    const { v4, v6 } = rowsOf(ai(), netfilter, ebpfOf(false, null), iptables(true));
    assert.deepEqual([v4.status, v4.detail], ['ok', 'iptables DNAT (KIAM-METADATA)']);
    assert.deepEqual([v6.status, v6.detail], ['ok', 'not used by the node (the agent has no --host-ipv6)']);
  });

  it('iptables only while an eBPF dataplane is detected: FAIL, fix "use --intercept auto"', () => {
    const { v4, v6 } = rowsOf(ai({ hostIpv6: '2001:db8::23' }), cilium, ebpfOf(false, null), iptables(true, true));
    assert.equal(v4.status, 'fail');
    assert.equal(v4.detail, 'not intercepted in a way that holds on Cilium eBPF: iptables DNAT (KIAM-METADATA), which Cilium eBPF bypasses');
    assert.match(v4.fix!, /--intercept auto/);
    assert.equal(v6.status, 'fail');
    assert.match(v6.detail, /ip6tables DNAT \(KIAM-METADATA\), which Cilium eBPF bypasses/);
  });

  it('auto with the redirect: eBPF and iptables for IPv4, eBPF to the host IPv6 (or v4-mapped) for IPv6', () => {
    const active = ai({ iptables: false, intercept: 'auto', hostIpv6: '2001:db8::5' }, EBPF_ACTIVE);
    const { v4, v6 } = rowsOf(active, cilium, ebpfOf(true, 'host'), iptables(true, true));
    assert.deepEqual([v4.status, v4.detail], ['ok', 'eBPF socket redirect (connect4) + iptables DNAT (KIAM-METADATA), which Cilium eBPF bypasses']);
    assert.deepEqual([v6.status, v6.detail], ['ok', "eBPF redirect to the node's IPv6 address (connect6) + ip6tables DNAT (KIAM-METADATA), which Cilium eBPF bypasses"]);
    assert.match(rowsOf(active, netfilter, ebpfOf(true, 'mapped'), iptables(true, false)).v6.detail, /^eBPF redirect to the v4-mapped host IP \(connect6; IPv6-only sockets fail closed\)$/);
    assert.equal(rowsOf(active, netfilter, ebpfOf(false, null), iptables(true, true)).v6.detail, 'ip6tables DNAT (KIAM-METADATA)');
  });

  it('FAIL when a used family is not intercepted at all, each fix pointing at what to repair', () => {
    const active = ai({ iptables: false, intercept: 'ebpf', hostIpv6: '2001:db8::5' }, EBPF_ACTIVE);
    const { v4, v6 } = rowsOf(active, cilium, ebpfOf(false, 'host'), undefined);
    assert.equal(v4.status, 'fail');
    assert.equal(v4.detail, 'not intercepted in a way that holds on Cilium eBPF: neither the eBPF redirect nor the DNAT is in place');
    assert.match(v4.fix!, /^see the eBPF rows: the agent repairs it on its next reconcile .*kiam intercept install/);
    assert.equal(v6.status, 'ok');
    const fallback = ai({ iptables: false, intercept: 'auto' }, { ...EBPF_ACTIVE, active: false, reason: 'no bpffs mounted at /sys/fs/bpf' });
    assert.match(rowsOf(fallback, cilium, ebpfOf(false, null), iptables(true)).v4.fix!, /could not run the eBPF redirect here \(no bpffs mounted at \/sys\/fs\/bpf\)/);
    const ip6 = rowsOf(ai({ hostIpv6: '2001:db8::23' }), netfilter, ebpfOf(false, null), iptables(true, false)).v6;
    assert.equal(ip6.status, 'fail');
    assert.match(ip6.fix!, /ip6tables chain and jump rows/);
  });

  it('WARN with --intercept none (a LocalRedirectPolicy may do it); with the agent unknown, what is there decides', () => {
    const none = rowsOf(ai({ iptables: false, intercept: 'none' }), cilium, ebpfOf(false, null), iptables(false));
    assert.equal(none.v4.status, 'warn');
    assert.match(none.v4.fix!, /CiliumLocalRedirectPolicy/);
    assert.equal(none.v6.status, 'ok');
    const unknown = rowsOf(agentInterception(undefined), netfilter, ebpfOf(false, null), iptables(true));
    assert.equal(unknown.v4.status, 'ok');
    assert.equal(unknown.v6.status, 'warn');
    assert.match(unknown.v6.detail, /whether the node uses IPv6 is unknown/);
    assert.equal(rowsOf(agentInterception(undefined), cilium, ebpfOf(false, null), iptables(true)).v4.status, 'fail');
  });
});

describe('metadata endpoint', () => {
  it('OK with an IMDSv2 token', async () => {
    const http = new FakeHttp(imdsV2Routes());
    const rows = await checkMetadata(http, IMDS, 1000);
    assert.equal(rows[0]!.status, 'ok');
    assert.match(rows[0]!.detail, /IMDSv2 token, 2 meta-data entries, tokens optional/);
    assert.deepEqual(http.seen.map((s) => `${s.method} ${s.headers['x-aws-ec2-metadata-token'] ?? '-'}`), ['PUT -', 'GET TOKEN', 'GET -']);
  });

  it('WARN when the node requires IMDSv2 tokens and the agent does not (--imdsv2 optional, or an agent older than the flag)', async () => {
    for (const agentMode of ['optional']) {
      const rows = await checkMetadata(new FakeHttp(imdsV2Routes('required')), IMDS, 1000, agentMode);
      assert.deepEqual(rows.map((r) => [r.id, r.status]), [['metadata', 'ok'], ['metadata.imdsv2', 'warn']]);
      assert.match(rows[0]!.detail, /tokens required/);
      assert.match(rows[1]!.detail, /requires IMDSv2 tokens \(HttpTokens=required\), but the agent answers pods' GETs without one \(--imdsv2 optional\)/);
      assert.match(rows[1]!.fix!, /--imdsv2 required/);
    }
    // Both required, the node optional, or no agent to compare with: nothing to say.
    for (const [tokens, agentMode] of [['required', 'required'], ['optional', 'optional'], ['optional', 'required'], ['required', undefined]] as const) {
      const rows = await checkMetadata(new FakeHttp(imdsV2Routes(tokens)), IMDS, 1000, agentMode);
      assert.deepEqual(rows.map((r) => [r.id, r.status]), [['metadata', 'ok']], `${tokens} ${agentMode}`);
    }
  });

  it('WARN when only IMDSv1 answers (the hop limit), with the fix', async () => {
    const http = new FakeHttp({
      [`PUT ${IMDS}/latest/api/token`]: () => ({ status: 403, body: '' }),
      [`GET ${IMDS}/latest/meta-data/`]: () => ({ status: 200, body: 'ami-id\n' }),
    });
    const rows = await checkMetadata(http, IMDS, 1000);
    assert.equal(rows[0]!.status, 'warn');
    assert.match(rows[0]!.fix!, /HttpPutResponseHopLimit 2, so run doctor in the agent pod/);
    assert.match(rows[0]!.fix!, /where 1 is enough and is what pods should have/);
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
  interface Script {
    /** What `iptables-nft-save` prints (every table). */
    save?: string;
    /** What `ip6tables-nft-save` prints; given only when doctor reads it. */
    save6?: string;
    batch?: CommandResult;
    batchInput?: string;
  }

  function ports(over: Partial<DoctorPorts> & { state?: DebugState } = {}, script: Script = {}): DoctorPorts & { runner: ScriptedRunner } {
    const state = over.state ?? agentState();
    const runner = new ScriptedRunner().expect(['iptables-nft-save'], { stdout: script.save ?? INSTALLED });
    if (script.save6 !== undefined) runner.expect(['ip6tables-nft-save'], { stdout: script.save6 });
    runner.expect(PROBE, FEATURES).expect(READ, script.batch ?? bpf.empty, { input: script.batchInput ?? READ_DEFAULT });
    return {
      runner,
      http: new FakeHttp({ ...imdsV2Routes(), [`GET ${STATE_URL}`]: () => ({ status: 200, body: JSON.stringify(state, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)) }) }),
      listInterfaces: () => ['lo', 'eth0', 'cali1234567890a'],
      kube: (path) => {
        assert.equal(path, '/etc/kiam/kubeconfig', "the agent's kubeconfig by default");
        return fakeKube({ '/version': { gitVersion: 'v1.31.2' }, '/api/v1/pods': { items: [] } });
      },
      facts: FACTS,
      now: () => NOW,
      ...over,
    } as DoctorPorts & { runner: ScriptedRunner };
  }

  it('WARN (exit 0) when the running agent answers token-less GETs on a node that requires tokens', async () => {
    const state = agentState();
    const body = JSON.stringify(state, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));
    const p = ports({ http: new FakeHttp({ ...imdsV2Routes('required'), [`GET ${STATE_URL}`]: () => ({ status: 200, body }) }) });
    const report = await runDoctor(OPTIONS, p);
    p.runner.assertDone();
    assert.deepEqual(report.checks.filter((r) => r.status !== 'ok').map((r) => r.id), ['metadata.imdsv2']);
    assert.equal(exitCode(report), 0);
  });

  it('all OK with --intercept iptables: exit 0, every check reported once, the JSON carries the agent view', async () => {
    const p = ports();
    const report = await runDoctor(OPTIONS, p);
    p.runner.assertDone();
    assert.deepEqual(report.checks.filter((r) => r.status !== 'ok'), []);
    assert.equal(exitCode(report), 0);
    assert.deepEqual(report.checks.map((r) => r.id), [
      'intercept.ipv4', 'intercept.ipv6', 'dataplane',
      'iptables.backend', 'iptables.chain', 'iptables.jump', 'iptables.backstop', 'interfaces.cali+',
      'ebpf.support', 'ebpf.cgroup',
      'metadata', 'apiserver', 'agent', 'agent.pods', `identity.team-a.a1.${BASE}app-reader`, 'containerCredentials',
    ]);
    assert.deepEqual(report.summary, { ok: 16, warn: 0, fail: 0 });
    assert.equal(only(report.checks, 'intercept.ipv4').detail, 'iptables DNAT (KIAM-METADATA)');
    assert.equal(only(report.checks, 'dataplane').detail, 'netfilter (no cilium_host, bpfin.cali or bpfnatin interface): --intercept iptables holds on it');
    assert.equal(only(report.checks, 'ebpf.cgroup').detail, "not used (--intercept iptables); nothing of ours attached to /sys/fs/cgroup");
    const json = JSON.parse(JSON.stringify(report)) as { ok: boolean; agent: DebugState };
    assert.equal(json.ok, true);
    assert.deepEqual(json.agent.pods!.map((p) => `${p.namespace}/${p.name}`), ['team-a/a1', 'team-a/c1']);
  });

  it('a missing jump: exit 1 and the text report carries the FAIL rows and their fixes', async () => {
    const report = await runDoctor(OPTIONS, ports({}, { save: installedWith({ prerouting: [] }) }));
    assert.equal(exitCode(report), 1);
    assert.deepEqual(report.checks.filter((r) => r.status === 'fail').map((r) => r.id), ['intercept.ipv4', 'iptables.jump']);
    const text = renderText(report);
    assert.match(text, /^FAIL\s+PREROUTING jump\s+PREROUTING does not jump to KIAM-METADATA: metadata traffic is not intercepted$/m);
    assert.match(text, /^FAIL\s+IPv4 interception\s+not intercepted in a way that holds: iptables rules of ours, incomplete \(the backstop rejects pods' metadata traffic: they fail closed\)$/m);
    assert.match(text, /^\s+fix: the agent repairs drift within its --reconcile-interval \(10s\)/m);
    assert.match(text, /^  team-a\/a1\s+10\.77\.1\.2\s+arn:aws:iam::123456789012:role\/app-reader$/m);
    assert.match(text, /^  team-a\/c1\s+10\.77\.1\.3\s+no role$/m);
    assert.match(text, /ASIATEST000000000001 expires/);
    assert.match(text, /14 ok, 0 warning\(s\), 2 failure\(s\)\n$/);
  });

  it('--intercept iptables on Cilium eBPF: FAIL on IPv4 and on the dataplane, with the fix "use --intercept auto"', async () => {
    const report = await runDoctor(OPTIONS, ports({ listInterfaces: () => ['lo', 'eth0', 'cilium_host', 'cali1234567890a'] }));
    assert.equal(exitCode(report), 1);
    assert.deepEqual(report.checks.filter((r) => r.status !== 'ok').map((r) => [r.id, r.status]), [['intercept.ipv4', 'fail'], ['dataplane', 'fail']]);
    for (const id of ['intercept.ipv4', 'dataplane']) assert.match(only(report.checks, id).fix!, /--intercept auto/);
    assert.match(only(report.checks, 'ebpf.support').detail, /^kernel 6\.18\.0-1-amd64: /, 'the kernel could run the redirect');
  });

  it('--intercept auto on Cilium eBPF with the real bpftool outputs: all OK, then a detached program fails', async () => {
    const state = autoAgent();
    const script: Script = {
      save: savedInstalled(['cali+'], 'ipv4', '10.0.0.5:8181'),
      save6: savedInstalled(['cali+'], 'ipv6', '[2001:db8::5]:8181'),
      batch: bpf.foreign,
      batchInput: READ_INPUT,
    };
    const cilium = { state, listInterfaces: () => ['lo', 'eth0', 'cilium_host', 'cali1234567890a'] };
    const p = ports(cilium, script);
    const report = await runDoctor(OPTIONS, p);
    p.runner.assertDone();
    assert.deepEqual(report.checks.filter((r) => r.status !== 'ok'), []);
    assert.deepEqual(report.checks.slice(0, 17).map((r) => r.id), [
      'intercept.ipv4', 'intercept.ipv6', 'dataplane',
      'iptables.backend', 'iptables.chain', 'iptables.jump', 'iptables.backstop', 'ip6tables.chain', 'ip6tables.jump', 'ip6tables.backstop', 'interfaces.cali+',
      'ebpf.support', 'ebpf.cgroup', 'ebpf.connect4', 'ebpf.connect6', 'ebpf.getpeername4', 'ebpf.getpeername6',
    ]);
    assert.equal(only(report.checks, 'intercept.ipv4').detail, 'eBPF socket redirect (connect4) + iptables DNAT (KIAM-METADATA), which Cilium eBPF bypasses');
    assert.match(only(report.checks, 'intercept.ipv6').detail, /^eBPF redirect to the node's IPv6 address/);
    assert.match(only(report.checks, 'dataplane').detail, /^Cilium eBPF \(cilium_host found\): .*runs the eBPF socket redirect, which holds on it$/);
    assert.match(only(report.checks, 'ebpf.connect4').detail, /beside it: foreign_c4 id 2500/);
    assert.match(renderText(report), /^OK\s+eBPF connect4\s+kiam_connect4 id 2484 \(multi\) on \/tmp\/kiam-fixture\/cg\/kfx-child; beside it/m);

    const detached = await runDoctor(OPTIONS, ports(cilium, { ...script, batch: bpf.withoutAttached(bpf.foreign, bpf.IDS.connect4) }));
    assert.equal(exitCode(detached), 1);
    assert.deepEqual(detached.checks.filter((r) => r.status !== 'ok').map((r) => [r.id, r.status]), [['intercept.ipv4', 'fail'], ['ebpf.connect4', 'fail']]);
    assert.match(only(detached.checks, 'ebpf.connect4').detail, /no program of ours on connect4 .*; beside it: foreign_c4 id 2500 \(multi\) \(foreign\)$/);
    assert.match(only(detached.checks, 'ebpf.connect4').fix!, /next reconcile.*kiam intercept install --intercept ebpf/);
    assert.match(only(detached.checks, 'intercept.ipv4').fix!, /^see the eBPF rows/);
    assert.deepEqual(JSON.parse(JSON.stringify(detached)).agent.ebpf, EBPF_ACTIVE);
  });

  it('--intercept ebpf: the redirect alone, the rules and interface patterns not used', async () => {
    const state = autoAgent({}, { intercept: 'ebpf', hostInterface: [] });
    const p = ports({ state });
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: '*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n' })
      .expect(['iptables-nft-save'], { stdout: saved({ nat: { chain: false }, filter: { chain: false } }) })
      .expect(PROBE, FEATURES)
      .expect(READ, bpf.inSync, { input: READ_INPUT });
    const report = await runDoctor(OPTIONS, { ...p, runner });
    runner.assertDone();
    assert.deepEqual(report.checks.filter((r) => r.status !== 'ok'), []);
    assert.deepEqual(report.checks.slice(0, 7).map((r) => [r.id, r.detail]), [
      ['intercept.ipv4', 'eBPF socket redirect (connect4)'],
      ['intercept.ipv6', "eBPF redirect to the node's IPv6 address (connect6)"],
      ['dataplane', 'netfilter (no cilium_host, bpfin.cali or bpfnatin interface): --intercept ebpf holds on it'],
      ['iptables.backend', 'nft (kubelet chains found in iptables-nft-save -t mangle)'],
      ['iptables.rules', 'not used (--intercept ebpf); our chains are absent'],
      ['interfaces', 'not used (--intercept ebpf: only the iptables rules match interfaces)'],
      ['ebpf.support', `kernel 6.18.0-1-amd64: ≥ 5.8 (getpeername hooks), bpftool runs with CAP_SYS_ADMIN; cgroup2 at ${bpf.FIXTURE_CGROUP}, bpffs at ${bpf.FIXTURE_BPFFS}`],
    ]);
  });

  it('an auto agent that has not reported its eBPF state yet: nothing taken for a leftover', async () => {
    const state = autoAgent({}, {}, undefined);
    state.ebpf = null;
    const ai = agentInterception(state);
    assert.equal(ebpfUse(ai), 'unknown');
    assert.equal(ebpfUse(agentInterception(autoAgent())), 'used');
    assert.equal(ebpfUse(agentInterception(agentState())), 'unused');
    const rows = (await checkEbpf(new ScriptedRunner().expect(READ, bpf.inSync), { paths: ebpfPaths({}, autoAgent(), () => MOUNTS), ai, use: ebpfUse(ai) })).rows;
    assert.ok(rows.every((r) => r.status === 'ok'), JSON.stringify(rows, null, 1));
    assert.match(dataplaneRow(detectDataplane(() => ['cilium_host']), ai, false).detail, /has not reported its eBPF state yet/);
  });

  it('--cgroup-root and --bpffs override where the programs are read', async () => {
    const p = ports({}, { batchInput: renderReadBatch({ cgroupRoot: bpf.FIXTURE_CGROUP, bpffs: bpf.FIXTURE_BPFFS }) });
    const report = await runDoctor({ ...OPTIONS, cgroupRoot: bpf.FIXTURE_CGROUP, bpffs: bpf.FIXTURE_BPFFS }, p);
    p.runner.assertDone();
    assert.match(only(report.checks, 'ebpf.support').detail, new RegExp(`cgroup2 at ${bpf.FIXTURE_CGROUP}, bpffs at ${bpf.FIXTURE_BPFFS}$`));
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
      .expect(['iptables-nft-save'], { stdout: saved({ nat: { chain: false }, filter: { chain: false } }) })
      .expect(['ip6tables-nft-save'], { code: 1, stderr: 'ip6tables: not found' })
      .expect(PROBE, { code: 127, stderr: 'spawn bpftool ENOENT' })
      .expect(READ, { code: 127, stderr: 'spawn bpftool ENOENT' }, { input: READ_DEFAULT });
    const report = await runDoctor(OPTIONS, {
      runner,
      http: new FakeHttp({}),
      listInterfaces: () => {
        throw new Error('EACCES: /sys/class/net');
      },
      kube: () => {
        throw new Error('not running in a cluster');
      },
      facts: FACTS,
      now: () => NOW,
    });
    runner.assertDone();
    assert.equal(report.agent, null);
    assert.equal(exitCode(report), 1);
    for (const id of ['intercept.ipv4', 'iptables.chain', 'iptables.jump', 'iptables.backstop', 'interfaces', 'metadata', 'agent']) assert.equal(only(report.checks, id).status, 'fail', id);
    for (const id of ['intercept.ipv6', 'dataplane', 'ebpf.support', 'ebpf.cgroup']) assert.equal(only(report.checks, id).status, 'warn', id);
    assert.match(only(report.checks, 'interfaces').detail, /EACCES/);
    assert.match(only(report.checks, 'ebpf.support').detail, /bpftool is not installed/);
    assertFixes(report.checks);
  });
});

describe('debug state', () => {
  it("carries the agent's interception settings", () => {
    const config = buildConfig({ nodeName: 'node-1', hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', intercept: 'auto', hostInterface: ['cali+'], cgroupRoot: '/run/kiam/cgroupv2', bpffs: '/run/kiam/bpf' }, {});
    const c = debugConfig(config);
    assert.deepEqual([c.intercept, c.hostIpv6, c.iptables, c.cgroupRoot, c.bpffs], ['auto', '2001:db8::5', true, '/run/kiam/cgroupv2', '/run/kiam/bpf']);
    const bare = debugConfig(buildConfig({ nodeName: 'node-1' }, {}));
    assert.deepEqual([bare.intercept, bare.hostIpv6, bare.cgroupRoot, bare.bpffs], ['none', null, null, '/sys/fs/bpf']);
    assert.equal(collectDebugState({ version: '1', startedAt: NOW, now: () => NOW, config, readiness: () => ({ ready: true, checks: {} }), ebpf: () => EBPF_ACTIVE }).ebpf, EBPF_ACTIVE);
  });

  it('an agent older than --intercept reports only iptables: doctor takes its mode from that', () => {
    const old = agentState();
    const { intercept: _intercept, ...config } = old.config;
    const legacy = { ...old, config: config as typeof old.config };
    assert.equal(agentInterception(legacy).mode, 'iptables');
    assert.equal(agentInterception({ ...legacy, config: { ...legacy.config, iptables: false } }).mode, 'none');
  });

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
      { roleArn: `${BASE}app`, externalId: true, users: 1, accessKeyId: 'ASIATEST1', expiration: '2026-11-28T08:00:00.000Z', servableUntil: '2026-11-28T07:30:00.000Z', refreshAt: '2026-11-28T07:12:00.000Z', lastError: null },
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
