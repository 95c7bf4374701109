/**
 * The composition of the interception (src/intercept.ts) and the node side of the eBPF checks
 * (src/netfilter/ebpf/support.ts): `kiam intercept install|remove|status` and `kiam init` with a scripted runner,
 * fake node facts (mounts, kernel release) and a fake netns probe. bpftool is scripted command by command with real
 * captured output. The iptables half belongs to the netfilter tests and was being reworked (IPv6, backstop) when
 * these were written: here it is answered leniently (every save shows our rules installed, every other iptables
 * command succeeds) and only its presence in the report is checked.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { buildConfig, type RawOptions } from '../../src/config.ts';
import { buildInterception, installInterception, planEbpf, renderInterceptReport, runInterceptCommand, type InterceptDeps } from '../../src/intercept.ts';
import { createMetrics } from '../../src/metrics.ts';
import type { MountInfo } from '../../src/netfilter/ebpf/plan.ts';
import { ensureMount, parseCapEff, probeSupport, resolveCgroupRoot, type NodeFacts } from '../../src/netfilter/ebpf/support.ts';
import type { CommandResult, CommandRunner, RunOptions } from '../../src/netfilter/exec.ts';
import * as captured from '../fakes/bpftool-output.ts';
import { FEATURES, FIXTURE_BPFFS, FIXTURE_CGROUP, FIXTURE_ROOT, IDS, withAttached, withConfig } from '../fakes/bpftool-output.ts';
import { BpftoolRecorder, detach, PINS, READ, WRITE } from '../fakes/bpftool-runner.ts';
import { FakeClock } from '../fakes/clock.ts';
import { savedBackstop, savedInstalled } from '../fakes/iptables-save.ts';

const OBJECT = '/opt/kiam/kiam.bpf.o';
const FEATURE_PROBE = ['bpftool', '-j', 'feature', 'probe', 'kernel'];
const FEATURES_OK = { stdout: JSON.stringify(FEATURES) };
/** What the agent and `kiam intercept` run instead of the feature probe, which needs capabilities only `kiam init` has. */
const BPFTOOL_VERSION = ['bpftool', 'version'];
const VERSION_OK = { stdout: 'bpftool v7.1.0\nusing libbpf v1.1\n' };

/** A node with cgroup2 and bpffs where the captures were made, on a recent kernel. */
const SUPPORTED: MountInfo[] = [
  { mountPoint: '/', fsType: 'ext4' },
  { mountPoint: '/sys', fsType: 'sysfs' },
  { mountPoint: '/sys/fs/cgroup', fsType: 'tmpfs' },
  { mountPoint: '/sys/fs/cgroup/unified', fsType: 'cgroup2' },
  { mountPoint: `${FIXTURE_ROOT}/cg`, fsType: 'cgroup2' },
  { mountPoint: FIXTURE_BPFFS, fsType: 'bpf' },
];
/** An old node on cgroup v1: no cgroup2 anywhere, no bpffs. */
const UNSUPPORTED: MountInfo[] = [
  { mountPoint: '/', fsType: 'ext4' },
  { mountPoint: '/sys', fsType: 'sysfs' },
  { mountPoint: '/sys/fs/cgroup', fsType: 'tmpfs' },
  { mountPoint: '/sys/fs/cgroup/cpu', fsType: 'cgroup' },
];

/**
 * bpftool, mkdir, mount and rm go to the script; a successful `mount` adds to the node's mounts; iptables and
 * conntrack are answered leniently (see the header) and recorded.
 */
class NodeRunner implements CommandRunner {
  readonly bpf = new BpftoolRecorder();
  readonly iptables: string[][] = [];
  constructor(readonly mounts: MountInfo[]) {}

  async run(argv: readonly string[], options?: RunOptions): Promise<CommandResult> {
    if (/^(ip6?tables|conntrack)/.test(argv[0] ?? '')) {
      this.iptables.push([...argv]);
      if (/^iptables.*-save$/.test(argv[0]!)) return { code: 0, stdout: savedInstalled(['cali+']), stderr: '' };
      // No --host-ipv6 here: ip6tables holds the backstop alone.
      if (/^ip6tables.*-save$/.test(argv[0]!)) return { code: 0, stdout: savedBackstop(['cali+']), stderr: '' };
      return { code: argv[0] === 'conntrack' ? 1 : 0, stdout: '', stderr: '' };
    }
    const result = await this.bpf.run(argv, options);
    if (argv[0] === 'mount' && result.code === 0) this.mounts.push({ mountPoint: argv[4]!, fsType: argv[2]! });
    return result;
  }
}

interface Harness {
  runner: NodeRunner;
  deps: InterceptDeps;
  logs: Array<Record<string, unknown>>;
  probes: string[];
}

function setup(mounts: MountInfo[], kernel = '6.1.0-18-amd64'): Harness {
  const runner = new NodeRunner([...mounts]);
  const facts: NodeFacts = { mounts: () => [...runner.mounts], kernelRelease: () => kernel };
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const probes: string[] = [];
  const deps: InterceptDeps = {
    runner,
    clock: new FakeClock(),
    metrics: createMetrics(),
    logger: pino({ level: 'debug' }, sink),
    facts,
    probe: async (ip, port) => void probes.push(`${ip}:${port}`),
    object: OBJECT,
  };
  return { runner, deps, logs, probes };
}

const intercept = (raw: RawOptions) => buildConfig({ iptablesBackend: 'nft', ...raw }, {}, 'intercept');
const EBPF_FLAGS: RawOptions = { hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', intercept: 'ebpf', cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS };
const AUTO_FLAGS: RawOptions = { hostIp: '10.0.1.23', hostInterface: ['cali+'] };
const WANTED = { hostIp4: '10.0.0.5', port: 8181, hostIp6: '2001:db8::5', hostNetnsCookie: 3n, probeIp4: null, probePort: 0, learnedCookie: 0n };

/** An install on a node already intercepting: re-learn the cookie with interception on, re-write, verify. */
function expectInstallInSync(runner: NodeRunner): void {
  runner.bpf
    .expect(READ, captured.inSync)
    .expect(WRITE)
    .expect(READ, withConfig(captured.inSync, { ...WANTED, probeIp4: '127.1.2.3', probePort: 4242, learnedCookie: 3n }))
    .expect(WRITE)
    .expect(READ, captured.inSync);
}

describe('kiam intercept install', () => {
  test('auto on a node without eBPF support: the redirect is not active, says why, and the iptables rules go in', async () => {
    const h = setup(UNSUPPORTED, '4.19.0-26-amd64');
    h.runner.bpf.expect(BPFTOOL_VERSION, VERSION_OK);
    const { report, code } = await runInterceptCommand('install', intercept(AUTO_FLAGS), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(code, 0, 'auto without eBPF is not a failure');
    assert.equal(report.mode, 'auto');
    assert.equal(report.ebpf?.active, false);
    const reason = report.ebpf && !report.ebpf.active ? report.ebpf.reason ?? '' : '';
    assert.match(reason, /kernel 4\.19\.0-26-amd64 is older than 5\.8/);
    assert.match(reason, /\/run\/kiam\/cgroupv2 is a ext4 mount, not cgroup v2/);
    assert.match(reason, /no bpffs mounted at \/sys\/fs\/bpf/);
    assert.ok(report.iptables, 'the iptables half ran');
    assert.ok(h.runner.iptables.length > 0);
    assert.equal(h.probes.length, 0);
    const warning = h.logs.find((l) => l.level === 40 && /intercepting with iptables alone/.test(String(l.msg)));
    assert.ok(warning, 'a warning says what is missing');
    const text = renderInterceptReport(report);
    assert.match(text, /^ebpf: {6}not active: the eBPF socket redirect cannot run on this node: kernel 4\.19/m);
    // No --host-ipv6: ip6tables holds the backstop alone, shown and counted.
    assert.match(text, /^chain6: {3}KIAM-METADATA absent \(not wanted without --host-ipv6: the backstop alone\)$/m);
    assert.match(text, /^backstop6: KIAM-METADATA-BACKSTOP present, jumps INPUT 1, FORWARD 1$/m);
    assert.match(text, /^in sync: {3}yes$/m);
    assert.ok(h.runner.iptables.some((argv) => argv[0] === 'ip6tables-nft-restore'), 'the IPv6 backstop was written');
  });

  test('ebpf on a node without support: throws with the reason, runs nothing else', async () => {
    const h = setup(UNSUPPORTED, '4.19.0-26-amd64');
    h.runner.bpf.expect(BPFTOOL_VERSION, { code: 127, stderr: 'spawn bpftool ENOENT' });
    await assert.rejects(
      runInterceptCommand('install', intercept({ ...EBPF_FLAGS, cgroupRoot: undefined, bpffs: undefined }), h.deps),
      (err: Error) => {
        assert.match(err.message, /^the eBPF socket redirect cannot run on this node: kernel 4\.19\.0-26-amd64 is older than 5\.8/);
        assert.match(err.message, /bpftool cannot run: bpftool is not installed/);
        return true;
      },
    );
    h.runner.bpf.script.assertDone();
    assert.deepEqual(h.runner.iptables, []);
  });

  test('ebpf on a supported node: installs (interception kept on, the cookie re-learned) and reports what is attached', async () => {
    const h = setup(SUPPORTED);
    h.runner.bpf.expect(BPFTOOL_VERSION, VERSION_OK);
    expectInstallInSync(h.runner);
    h.runner.bpf.expect(READ, captured.foreign);
    const { report, code } = await runInterceptCommand('install', intercept(EBPF_FLAGS), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(code, 0);
    assert.equal(h.probes.length, 1);
    assert.ok(h.runner.bpf.writes.every((w) => w.hostIp4 === '10.0.0.5'));
    assert.equal(report.iptables, null);
    assert.ok(report.ebpf?.active);
    assert.equal(report.ebpf.inSync, true);
    assert.deepEqual(report.ebpf.config, { hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', port: 8181, hostNetnsCookie: '3' });
    const text = renderInterceptReport(report);
    assert.match(text, new RegExp(`^ebpf: {6}cgroup ${FIXTURE_CGROUP}, pins ${PINS}$`, 'm'));
    assert.match(text, /^attached: {2}connect4 foreign_c4 id 2500 multi \(not ours\)$/m);
    assert.match(text, /^attached: {2}connect4 kiam_connect4 id 2484 multi$/m);
    assert.match(text, /^config: {4}10\.0\.0\.5:8181 \[2001:db8::5\]:8181, node netns cookie 3$/m);
    assert.match(text, /^redirects: ipv4 1, ipv6 0, ipv4-mapped 0$/m);
  });
});

describe('kiam intercept status and remove', () => {
  test('status, auto, no flags, on a node where the cgroup does not exist: eBPF not active with bpftool’s words, exit 0', async () => {
    const h = setup(UNSUPPORTED);
    h.runner.bpf.expect(READ, captured.noCgroup);
    const { report, code } = await runInterceptCommand('status', intercept({ intercept: 'auto', cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(code, 0);
    assert.deepEqual(report.ebpf, { active: false, reason: `cannot read the cgroup's programs: can't open cgroup ${FIXTURE_CGROUP}` });
    assert.ok(report.iptables);
  });

  test('status with the flags: drift exits 1', async () => {
    const h = setup(SUPPORTED);
    h.runner.bpf.expect(READ, withConfig(captured.inSync, { ...WANTED, hostIp4: '10.0.0.9' }));
    const { report, code } = await runInterceptCommand('status', intercept(EBPF_FLAGS), h.deps);
    assert.equal(code, 1);
    assert.equal(report.inSync, false);
    assert.match(renderInterceptReport(report), /^drift: {5}kiam_config differs from the wanted configuration$/m);
  });

  test('remove, ebpf: detaches ours, keeps the foreign program, exit 0', async () => {
    const h = setup(SUPPORTED);
    const foreignOnly = withAttached(captured.empty, { id: IDS.foreign, attachType: 'cgroup_inet4_connect', name: 'foreign_c4' });
    h.runner.bpf
      .expect(READ, captured.foreign)
      .expect(detach('connect4', IDS.connect4))
      .expect(detach('connect6', IDS.connect6))
      .expect(detach('getpeername4', IDS.getpeername4))
      .expect(detach('getpeername6', IDS.getpeername6))
      .expect(['rm', '-rf', PINS])
      .expect(READ, foreignOnly);
    const { report, code } = await runInterceptCommand('remove', intercept({ intercept: 'ebpf', cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(code, 0);
    assert.ok(report.ebpf?.active);
    assert.deepEqual(report.ebpf.attached.map((a) => a.name), ['foreign_c4']);
  });

  test('remove, auto, on a node where the cgroup2 root was never mounted: nothing of ours can be attached; the rules are still removed', async () => {
    const h = setup(UNSUPPORTED);
    const { report, code } = await runInterceptCommand('remove', intercept({}), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(report.ebpf?.active, false);
    assert.match(report.ebpf && !report.ebpf.active ? report.ebpf.reason ?? '' : '', /\/run\/kiam\/cgroupv2 is not a cgroup v2 mount/);
    assert.ok(h.runner.iptables.some((argv) => /restore/.test(argv[0]!)), 'the iptables rules were removed');
    assert.ok(report.iptables);
    assert.equal(code, report.iptables.chainPresent || report.iptables.jumpPresent ? 1 : 0);
  });
});

describe('kiam init', () => {
  test('mounts bpffs when missing, finds cgroup2 in place, then installs', async () => {
    const h = setup(SUPPORTED.filter((m) => m.fsType !== 'bpf'));
    h.runner.bpf.expect(['mkdir', '-p', FIXTURE_BPFFS]).expect(['mount', '-t', 'bpf', 'bpf', FIXTURE_BPFFS]).expect(FEATURE_PROBE, FEATURES_OK);
    expectInstallInSync(h.runner);
    h.runner.bpf.expect(READ, captured.inSync);
    const { report, code } = await runInterceptCommand('init', intercept(EBPF_FLAGS), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(code, 0);
    assert.deepEqual(report.mounts, [
      { path: FIXTURE_BPFFS, fsType: 'bpf', mounted: true },
      { path: FIXTURE_CGROUP, fsType: 'cgroup2', mounted: false },
    ]);
    assert.ok(h.logs.some((l) => l.msg === 'mounted' && l.path === FIXTURE_BPFFS));
    assert.match(renderInterceptReport(report), new RegExp(`^mount: {5}bpf at ${FIXTURE_BPFFS} \\(mounted now\\)$`, 'm'));
  });

  test('mounts nothing when bpffs and cgroup2 are there (idempotent)', async () => {
    const h = setup(SUPPORTED);
    h.runner.bpf.expect(FEATURE_PROBE, FEATURES_OK);
    expectInstallInSync(h.runner);
    h.runner.bpf.expect(READ, captured.inSync);
    const { report } = await runInterceptCommand('init', intercept(EBPF_FLAGS), h.deps);
    h.runner.bpf.script.assertDone();
    assert.ok(report.mounts?.every((m) => !m.mounted));
    assert.ok(!h.runner.bpf.log.some((c) => c.startsWith('mount') || c.startsWith('mkdir')));
  });

  test('on a hybrid host without --cgroup-root: cgroup2 is mounted at /run/kiam/cgroupv2', async () => {
    const h = setup(UNSUPPORTED, '4.19.0-26-amd64');
    h.runner.bpf
      .expect(['mkdir', '-p', '/sys/fs/bpf'])
      .expect(['mount', '-t', 'bpf', 'bpf', '/sys/fs/bpf'])
      .expect(['mkdir', '-p', '/run/kiam/cgroupv2'])
      .expect(['mount', '-t', 'cgroup2', 'none', '/run/kiam/cgroupv2'])
      .expect(FEATURE_PROBE, FEATURES_OK);
    // The kernel is too old: auto goes on with iptables alone.
    const { report, code } = await runInterceptCommand('init', intercept(AUTO_FLAGS), h.deps);
    h.runner.bpf.script.assertDone();
    assert.equal(code, 0);
    assert.deepEqual(report.mounts?.map((m) => [m.path, m.fsType, m.mounted]), [
      ['/sys/fs/bpf', 'bpf', true],
      ['/run/kiam/cgroupv2', 'cgroup2', true],
    ]);
    assert.deepEqual(report.ebpf, { active: false, reason: "the eBPF socket redirect cannot run on this node: kernel 4.19.0-26-amd64 is older than 5.8 (cgroup getpeername hooks); upgrade the node's kernel" });
  });

  test('with --intercept iptables: no mounts, no bpftool', async () => {
    const h = setup(UNSUPPORTED);
    const { report } = await runInterceptCommand('init', intercept({ ...AUTO_FLAGS, intercept: 'iptables' }), h.deps);
    h.runner.bpf.script.assertDone();
    assert.deepEqual(report.mounts, []);
    assert.equal(report.ebpf, null);
  });
});

describe('buildInterception and planEbpf (the agent)', () => {
  test('--intercept none builds nothing and runs nothing', async () => {
    const h = setup(SUPPORTED);
    const result = await buildInterception(buildConfig({ nodeName: 'n' }, {}), h.deps);
    assert.deepEqual(result.interceptors, []);
    h.runner.bpf.script.assertDone();
  });

  test('auto on a supported node: eBPF first, then iptables', async () => {
    const h = setup(SUPPORTED);
    h.runner.bpf.expect(BPFTOOL_VERSION, VERSION_OK);
    const config = buildConfig({ nodeName: 'n', ...AUTO_FLAGS, intercept: 'auto', iptablesBackend: 'nft', cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }, {});
    const result = await buildInterception(config, h.deps);
    assert.deepEqual(result.interceptors.map((i) => i.kind), ['ebpf', 'iptables']);
    assert.equal(result.ebpf?.active, true);
    assert.equal(result.ebpf?.spec.cgroupRoot, FIXTURE_CGROUP);
    h.runner.bpf.script.assertDone();
  });

  test('auto on an unsupported node: iptables alone, and the plan says why', async () => {
    const h = setup(UNSUPPORTED);
    h.runner.bpf.expect(BPFTOOL_VERSION, VERSION_OK);
    const config = buildConfig({ nodeName: 'n', ...AUTO_FLAGS, intercept: 'auto', iptablesBackend: 'nft' }, {});
    const result = await buildInterception(config, h.deps);
    assert.deepEqual(result.interceptors.map((i) => i.kind), ['iptables']);
    assert.equal(result.ebpf?.active, false);
    assert.match(result.ebpf?.reason ?? '', /not cgroup v2/);
  });

  test('planEbpf: null when the mode has no eBPF half', async () => {
    const h = setup(SUPPORTED);
    assert.equal(await planEbpf(buildConfig({ nodeName: 'n', ...AUTO_FLAGS, intercept: 'iptables' }, {}), h.deps), null);
  });
});

describe('support: cgroup root, mounts, feature probe', () => {
  test('resolveCgroupRoot: the flag, else /sys/fs/cgroup when it is cgroup2, else /run/kiam/cgroupv2', () => {
    assert.equal(resolveCgroupRoot('/custom/cg', UNSUPPORTED), '/custom/cg');
    assert.equal(resolveCgroupRoot(undefined, [{ mountPoint: '/', fsType: 'ext4' }, { mountPoint: '/sys/fs/cgroup', fsType: 'cgroup2' }]), '/sys/fs/cgroup');
    assert.equal(resolveCgroupRoot(undefined, SUPPORTED), '/run/kiam/cgroupv2', 'hybrid: /sys/fs/cgroup/unified is not the root');
    assert.equal(resolveCgroupRoot(undefined, UNSUPPORTED), '/run/kiam/cgroupv2');
  });

  test('ensureMount: already there → nothing run; below a cgroup2 mount counts for cgroup2', async () => {
    const h = setup(SUPPORTED);
    assert.deepEqual(await ensureMount(h.runner, h.deps.facts, `${FIXTURE_BPFFS}/`, 'bpf'), { path: `${FIXTURE_BPFFS}/`, fsType: 'bpf', mounted: false });
    assert.equal((await ensureMount(h.runner, h.deps.facts, FIXTURE_CGROUP, 'cgroup2')).mounted, false);
    h.runner.bpf.script.assertDone();
  });

  test('ensureMount: a failed mount throws with the command and its stderr', async () => {
    const h = setup(UNSUPPORTED);
    h.runner.bpf.expect(['mkdir', '-p', '/sys/fs/bpf']).expect(['mount', '-t', 'bpf', 'bpf', '/sys/fs/bpf'], { code: 32, stderr: 'mount: /sys/fs/bpf: permission denied.\n' });
    await assert.rejects(ensureMount(h.runner, h.deps.facts, '/sys/fs/bpf', 'bpf'), /mount -t bpf bpf \/sys\/fs\/bpf exited 32: mount: \/sys\/fs\/bpf: permission denied\./);
  });

  test('probeSupport: bpftool failing or printing junk is reported, not thrown', async () => {
    const h = setup(SUPPORTED);
    h.runner.bpf.expect(FEATURE_PROBE, { code: 255, stderr: 'Error: bpf syscall: Operation not permitted\n' }).expect(FEATURE_PROBE, { stdout: 'not json' }).expect(FEATURE_PROBE, FEATURES_OK);
    const paths = { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS };
    assert.match((await probeSupport(h.runner, h.deps.facts, paths)).missing.join(), /bpftool feature probe exited 255: Error: bpf syscall: Operation not permitted/);
    assert.match((await probeSupport(h.runner, h.deps.facts, paths)).missing.join(), /bpftool feature probe printed no JSON/);
    assert.deepEqual(await probeSupport(h.runner, h.deps.facts, paths), { ok: true, missing: [], kernel: '6.1.0-18-amd64' });
  });
});

describe('the agent-side checks and installInterception', () => {
  /** An interceptor that records its calls and fails its install when told to. */
  class FakeInterceptor {
    present = false;
    calls: string[] = [];
    constructor(readonly kind: 'ebpf' | 'iptables', private readonly failInstall = false) {}
    async install(): Promise<void> {
      this.calls.push('install');
      if (this.failInstall) throw new Error('bpftool prog loadall … exited 255: libbpf: prog kiam_connect6: verifier rejected');
      this.present = true;
    }
    async check(): Promise<'in-sync'> {
      return 'in-sync';
    }
    start(): void {
      this.calls.push('start');
    }
    async stop(): Promise<void> {}
    async remove(): Promise<boolean> {
      return false;
    }
  }
  const quiet = pino({ level: 'silent' });
  const plan = () => ({ active: true, spec: { hostIp: '10.0.0.1', port: 8181, cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf' }, support: null, reason: null });

  test('auto: an eBPF install the kernel refuses is dropped with the reason, and the rules go on alone', async () => {
    const ebpf = new FakeInterceptor('ebpf', true);
    const rules = new FakeInterceptor('iptables');
    const interception = { interceptors: [ebpf, rules], ebpf: plan(), ebpfInterceptor: null, iptables: null, backend: null };
    await installInterception(interception as never, 'auto', quiet);
    assert.deepEqual(interception.interceptors, [rules]);
    assert.deepEqual(rules.calls, ['install', 'start']);
    assert.deepEqual(ebpf.calls, ['install'], 'never started');
    assert.equal(interception.ebpf.active, false);
    assert.match(String(interception.ebpf.reason), /could not be installed: .*verifier rejected/);
  });

  test('ebpf (asked for explicitly), or a failing iptables install: the failure is thrown', async () => {
    const only = { interceptors: [new FakeInterceptor('ebpf', true)], ebpf: plan(), ebpfInterceptor: null, iptables: null, backend: null };
    await assert.rejects(installInterception(only as never, 'ebpf', quiet), /verifier rejected/);
    const rulesFail = new FakeInterceptor('iptables', true);
    const both = { interceptors: [new FakeInterceptor('ebpf'), rulesFail], ebpf: plan(), ebpfInterceptor: null, iptables: null, backend: null };
    await assert.rejects(installInterception(both as never, 'auto', quiet), /verifier rejected/);
  });

  test('an abort before an install stops there', async () => {
    const first = new FakeInterceptor('ebpf');
    const controller = new AbortController();
    controller.abort(new Error('stopped by SIGTERM during start-up'));
    const interception = { interceptors: [first], ebpf: plan(), ebpfInterceptor: null, iptables: null, backend: null };
    await assert.rejects(installInterception(interception as never, 'auto', quiet, controller.signal), /SIGTERM/);
    assert.deepEqual(first.calls, []);
  });

  test('without CAP_SYS_ADMIN the redirect is refused: bpftool would see no attached program and report success', async () => {
    const h = setup(SUPPORTED);
    const facts = { ...h.deps.facts, capEff: () => 0x3000n /* NET_ADMIN, NET_RAW */ };
    h.runner.bpf.expect(BPFTOOL_VERSION, VERSION_OK);
    const support = await probeSupport(h.runner, facts, { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }, { features: false });
    assert.equal(support.ok, false);
    assert.deepEqual(support.missing, ['no CAP_SYS_ADMIN: bpftool cannot see which programs are attached to the cgroup nor detach them; run as root with CAP_SYS_ADMIN (the DaemonSet grants it)']);
    h.runner.bpf.expect(BPFTOOL_VERSION, VERSION_OK);
    const withAdmin = await probeSupport(h.runner, { ...facts, capEff: () => (1n << 21n) | 0x3000n }, { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }, { features: false });
    assert.deepEqual(withAdmin.missing, []);
  });

  test('parseCapEff reads the mask from /proc/self/status', () => {
    assert.equal(parseCapEff('Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n'), 0x1ffffffffffn);
    assert.equal(parseCapEff('Name:\tnode\n'), undefined);
  });
});
