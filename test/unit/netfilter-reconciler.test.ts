import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { backendCommands } from '../../src/netfilter/backend.ts';
import { CommandError } from '../../src/netfilter/exec.ts';
import { readStatus, RuleReconciler } from '../../src/netfilter/reconciler.ts';
import { RuleSpecError, type RuleSpec } from '../../src/netfilter/rules.ts';
import { FakeClock } from '../fakes/clock.ts';
import { ScriptedRunner } from '../fakes/runner.ts';
import { printedBackstop, printedRule, RULE_COMMENT, saved, SAVED_EMPTY, savedBackstop, savedInstalled } from '../fakes/iptables-save.ts';

const SAVE = ['iptables-nft-save'];
const SAVE6 = ['ip6tables-nft-save'];
const RESTORE = ['iptables-nft-restore', '--noflush', '--wait', '5'];
const RESTORE6 = ['ip6tables-nft-restore', '--noflush', '--wait', '5'];
const CONNTRACK = ['conntrack', '-D', '-p', 'tcp', '--orig-dst', '169.254.169.254', '--orig-port-dst', '80'];
const CONNTRACK6 = ['conntrack', '-f', 'ipv6', '-D', '-p', 'tcp', '--orig-dst', 'fd00:ec2::254', '--orig-port-dst', '80'];
const NO_FLOWS = { code: 1, stderr: 'conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n' };

const EMPTY = SAVED_EMPTY;
const INSTALLED_ONE = savedInstalled(['cali+']);
/** The backstop as installed for cali+, for lives that vary only the nat table. */
const FILTER_OK = { rules: [printedBackstop('cali+')], input: ['-j KIAM-METADATA-BACKSTOP'], forward: ['-j KIAM-METADATA-BACKSTOP'] };
const NAT_OK = { rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA'] };

const JUMP = '-I PREROUTING 1 -j KIAM-METADATA';
const BACKSTOP_JUMPS = ['-I INPUT 1 -j KIAM-METADATA-BACKSTOP', '-I FORWARD 1 -j KIAM-METADATA-BACKSTOP'];

/** One family's transaction: the nat chain and its jump lines, then the backstop chain and its jump lines. */
function installPayload(rules: string[], prerouting: string[] = [JUMP], backstop: string[] = [BACKSTOP_CALI], hooks: string[] = BACKSTOP_JUMPS): string {
  return ['*nat', ':KIAM-METADATA - [0:0]', ...rules, ...prerouting, 'COMMIT', '*filter', ':KIAM-METADATA-BACKSTOP - [0:0]', ...backstop, ...hooks, 'COMMIT', ''].join('\n');
}

const RULE_CALI =
  '-A KIAM-METADATA -i cali+ -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "kiam: metadata to agent" -j DNAT --to-destination 10.0.1.23:8181';
const BACKSTOP_CALI =
  '-A KIAM-METADATA-BACKSTOP -i cali+ -d 169.254.169.254/32 -p tcp -m comment --comment "kiam: fail closed" -j REJECT --reject-with tcp-reset';
const RULE6_CALI =
  '-A KIAM-METADATA -i cali+ -d fd00:ec2::254/128 -p tcp -m tcp --dport 80 -m comment --comment "kiam: metadata to agent" -j DNAT --to-destination [2001:db8::23]:8181';
const BACKSTOP6_CALI =
  '-A KIAM-METADATA-BACKSTOP -i cali+ -d fd00:ec2::254/128 -p tcp -m comment --comment "kiam: fail closed" -j REJECT --reject-with tcp-reset';
const INSTALLED6 = savedInstalled(['cali+'], 'ipv6');
/** Without an IPv6 host address: the IPv6 backstop alone, installed (no IPv6 DNAT). */
const BACKSTOP6_ONLY = savedBackstop();
/** The IPv6 transaction without an IPv6 host address: the filter table alone. */
function backstop6Payload(backstop: string[] = [BACKSTOP6_CALI], hooks: string[] = BACKSTOP_JUMPS): string {
  return ['*filter', ':KIAM-METADATA-BACKSTOP - [0:0]', ...backstop, ...hooks, 'COMMIT', ''].join('\n');
}

interface Harness {
  runner: ScriptedRunner;
  clock: FakeClock;
  metrics: Metrics;
  logs: Array<Record<string, unknown>>;
  reconciler: RuleReconciler;
}

const open: RuleReconciler[] = [];
afterEach(async () => {
  for (const r of open.splice(0)) await r.stop();
});

function setup(spec: Partial<RuleSpec> = {}): Harness {
  const runner = new ScriptedRunner();
  const clock = new FakeClock();
  const metrics = createMetrics();
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const reconciler = new RuleReconciler({
    runner,
    clock,
    metrics,
    logger: pino({ level: 'debug' }, sink),
    spec: { hostIp: '10.0.1.23', port: 8181, hostInterfaces: ['cali+'], ...spec },
    backend: backendCommands('nft', 'test'),
    intervalMs: 10_000,
  });
  open.push(reconciler);
  return { runner, clock, metrics, logs, reconciler };
}

async function reconciles(metrics: Metrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await metrics.ruleReconciles.get()).values) out[String(v.labels.result)] = v.value;
  return out;
}

async function gauge(metrics: Metrics): Promise<number | undefined> {
  return (await metrics.rulesPresent.get()).values[0]?.value;
}

const V6 = { hostIpv6: '2001:db8::23' };

function warnings(logs: Array<Record<string, unknown>>, pattern: RegExp): Array<Record<string, unknown>> {
  return logs.filter((l) => l.level === 40 && pattern.test(String(l.msg)));
}

describe('RuleReconciler.install', () => {
  it('writes the exact transaction for one interface (DNAT and backstop), then flushes conntrack; IPv6 gets the backstop alone', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { stdout: EMPTY })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(RESTORE6, {}, { input: backstop6Payload() });
    assert.equal(h.reconciler.present, false);
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
    assert.equal(await gauge(h.metrics), 1);
    assert.deepEqual(h.logs.filter((l) => Number(l.level) >= 40), [], 'no warning for "0 flow entries"');
    assert.equal(h.reconciler.kind, 'iptables');
  });

  it('writes every interface in order, negation included, and no jump when it is already there', async () => {
    const h = setup({ hostInterfaces: ['cali+', '!eth0', 'eni+'] });
    const rule = (m: string) => `-A KIAM-METADATA ${m} -d 169.254.169.254/32 -p tcp -m tcp --dport 80 ${RULE_COMMENT} -j DNAT --to-destination 10.0.1.23:8181`;
    const backstop = (m: string) => `-A KIAM-METADATA-BACKSTOP ${m} -d 169.254.169.254/32 -p tcp -m comment --comment "kiam: fail closed" -j REJECT --reject-with tcp-reset`;
    const backstopV6 = (m: string) => backstop(m).replace('169.254.169.254/32', 'fd00:ec2::254/128');
    h.runner
      .expect(SAVE, { stdout: saved({ nat: { rules: [], prerouting: ['-j KUBE-SERVICES', '-j KIAM-METADATA'] }, filter: { ...FILTER_OK, rules: [] } }) })
      .expect(SAVE6, { stdout: savedBackstop(['cali+', '!eth0', 'eni+']) })
      .expect(RESTORE, {}, { input: installPayload([rule('-i cali+'), rule('! -i eth0'), rule('-i eni+')], [], [backstop('-i cali+'), backstop('! -i eth0'), backstop('-i eni+')], []) })
      .expect(CONNTRACK, { code: 0, stderr: 'conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.\n' })
      .expect(RESTORE6, {}, { input: backstop6Payload([backstopV6('-i cali+'), backstopV6('! -i eth0'), backstopV6('-i eni+')], []) });
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
  });

  it('with an IPv6 host address, reads both families first, then writes and flushes each', async () => {
    const h = setup({ hostIpv6: '2001:DB8:0::23' });
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { stdout: EMPTY })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(RESTORE6, {}, { input: installPayload([RULE6_CALI], [JUMP], [BACKSTOP6_CALI]) })
      .expect(CONNTRACK6, NO_FLOWS);
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
    const installed = h.logs.find((l) => l.msg === 'interception rules installed');
    assert.equal(installed?.hostIpv6, '2001:db8::23');
  });

  it('with an IPv6 host address and no ip6tables, fails clearly before writing anything', async () => {
    const h = setup(V6);
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(SAVE6, { code: 127, stderr: 'ip6tables-nft-save: command not found' });
    await assert.rejects(h.reconciler.install(), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.match(err.message, /^ip6tables-nft-save exited 127: ip6tables-nft-save: command not found$/);
      return true;
    });
    h.runner.assertDone();
    assert.equal(h.reconciler.present, false);
  });

  it('with an IPv6 host address on a kernel without IPv6 nat, fails with the restore error (IPv4 stays installed)', async () => {
    const h = setup(V6);
    const stderr = "ip6tables-restore v1.8.9 (legacy): ip6tables-restore: unable to initialize table 'nat'\nError occurred at line: 1\n";
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(SAVE6, { stdout: '' }).expect(RESTORE).expect(CONNTRACK, NO_FLOWS).expect(RESTORE6, { code: 2, stderr });
    await assert.rejects(h.reconciler.install(), /^CommandError: ip6tables-nft-restore --noflush --wait 5 exited 2: .*unable to initialize table 'nat'/);
    h.runner.assertDone();
    assert.equal(h.reconciler.present, false);
    assert.equal(await gauge(h.metrics), 0);
  });

  it('moves a shadowed jump to position 1 and warns about the rule ahead of it', async () => {
    const h = setup();
    const kube2iam = '-d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.23:8282';
    h.runner
      .expect(SAVE, { stdout: saved({ nat: { ...NAT_OK, prerouting: [kube2iam, '-j KIAM-METADATA'] }, filter: FILTER_OK }) })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI], ['-D PREROUTING -j KIAM-METADATA', JUMP], [BACKSTOP_CALI], []) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(RESTORE6, {}, { input: backstop6Payload([BACKSTOP6_CALI], []) });
    await h.reconciler.install();
    h.runner.assertDone();
    const shadow = warnings(h.logs, /rule ahead of our jump handles 169\.254\.169\.254/);
    assert.equal(shadow.length, 1);
    assert.equal(shadow[0]?.rule, `-A PREROUTING ${kube2iam}`);
  });

  it('fails with argv and stderr when the restore fails, leaving present false', async () => {
    const h = setup();
    const stderr = "iptables-nft-restore v1.8.9 (nf_tables): Chain 'KIAM-METADATA' does not exist\nError occurred at line: 3\n";
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(SAVE6, { stdout: BACKSTOP6_ONLY }).expect(RESTORE, { code: 2, stderr });
    await assert.rejects(h.reconciler.install(), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.deepEqual(err.argv, RESTORE);
      assert.equal(err.code, 2);
      assert.equal(err.stderr, stderr);
      assert.equal(err.input, installPayload([RULE_CALI]));
      assert.match(err.message, /^iptables-nft-restore --noflush --wait 5 exited 2: .*Chain 'KIAM-METADATA' does not exist/);
      return true;
    });
    h.runner.assertDone();
    assert.equal(h.reconciler.present, false);
    assert.equal(await gauge(h.metrics), 0);
  });

  it('logs a warning, and still succeeds, when conntrack is missing', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(SAVE6, { stdout: BACKSTOP6_ONLY }).expect(RESTORE).expect(CONNTRACK, { code: 127, stderr: 'conntrack: command not found' }).expect(RESTORE6);
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
    const warning = h.logs.find((l) => l.level === 40);
    assert.ok(warning, 'a warning was logged');
    assert.match(String(warning.msg), /conntrack is not installed/);
  });

  it('serialises a check that arrives while an install is running', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(RESTORE)
      .expect(CONNTRACK, NO_FLOWS)
      .expect(RESTORE6)
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY });
    const [, result] = await Promise.all([h.reconciler.install(), h.reconciler.check()]);
    assert.equal(result, 'in-sync');
    h.runner.assertDone();
  });

  it('rejects an invalid spec at construction, naming the values', () => {
    assert.throws(() => setup({ hostIp: '300.1.1.1', hostIpv6: 'fe80::1', hostInterfaces: ['way-too-long-name0'] }), (err: unknown) => {
      assert.ok(err instanceof RuleSpecError);
      assert.match(err.message, /"300\.1\.1\.1"/);
      assert.match(err.message, /"fe80::1" is a link-local address/);
      assert.match(err.message, /"way-too-long-name0"/);
      return true;
    });
  });
});

describe('RuleReconciler.check', () => {
  it('reads and writes nothing when in sync', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: INSTALLED_ONE }).expect(SAVE6, { stdout: BACKSTOP6_ONLY });
    assert.equal(await h.reconciler.check(), 'in-sync');
    h.runner.assertDone();
    assert.equal(h.runner.inputsOf('iptables-nft-restore').length, 0);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1 });
    assert.equal(h.reconciler.present, true);
  });

  it('accepts single plain jumps below other rules (no fight with CNI rules that insert at the top)', async () => {
    const h = setup();
    h.runner.expect(SAVE, {
      stdout: saved({
        nat: { ...NAT_OK, prerouting: ['-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING', '-j KIAM-METADATA'] },
        filter: { ...FILTER_OK, input: ['-j KUBE-FIREWALL', '-j KIAM-METADATA-BACKSTOP'], forward: ['-j cali-FORWARD', '-j KUBE-FORWARD', '-j KIAM-METADATA-BACKSTOP'] },
      }),
    }).expect(SAVE6, { stdout: BACKSTOP6_ONLY });
    assert.equal(await h.reconciler.check(), 'in-sync');
    h.runner.assertDone();
    assert.deepEqual(h.logs.filter((l) => Number(l.level) >= 40), []);
  });

  it('checks both families with an IPv6 host address, and repairs the one that drifted', async () => {
    const h = setup(V6);
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: INSTALLED6 })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: saved({ nat: { chain: false }, filter: { ...FILTER_OK, rules: [printedBackstop('cali+', 'ipv6')] } }) })
      .expect(RESTORE6, {}, { input: installPayload([RULE6_CALI], [JUMP], [BACKSTOP6_CALI], []) })
      .expect(CONNTRACK6, NO_FLOWS);
    assert.equal(await h.reconciler.check(), 'in-sync');
    assert.equal(await h.reconciler.check(), 'repaired');
    h.runner.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1, repaired: 1 });
    const drift = h.logs.find((l) => l.msg === 'interception rules drifted; re-applying');
    assert.deepEqual([drift?.family, drift?.drift], ['ipv6', ['chain KIAM-METADATA missing', 'PREROUTING does not jump to KIAM-METADATA']]);
  });

  it('repairs IPv4 even when ip6tables cannot be read, then counts the error', async () => {
    const h = setup(V6);
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(SAVE6, { code: 127, stderr: 'ip6tables-nft-save: command not found' });
    await assert.rejects(h.reconciler.check(), /ip6tables-nft-save exited 127/);
    h.runner.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { error: 1 });
  });

  const drifts: Array<[string, string, string]> = [
    ['the chain was deleted by hand', saved({ nat: { chain: false }, filter: FILTER_OK }), installPayload([RULE_CALI], [JUMP], [BACKSTOP_CALI], [])],
    ['a rule was altered', saved({ nat: { ...NAT_OK, rules: [printedRule('cali+', '10.9.9.9:8181')] }, filter: FILTER_OK }), installPayload([RULE_CALI], [], [BACKSTOP_CALI], [])],
    ['a rule was deleted', saved({ nat: { ...NAT_OK, rules: [] }, filter: FILTER_OK }), installPayload([RULE_CALI], [], [BACKSTOP_CALI], [])],
    ['the jump was removed', saved({ nat: { ...NAT_OK, prerouting: [] }, filter: FILTER_OK }), installPayload([RULE_CALI], [JUMP], [BACKSTOP_CALI], [])],
    [
      'the jump was duplicated',
      saved({ nat: { ...NAT_OK, prerouting: ['-j KIAM-METADATA', '-j KIAM-METADATA'] }, filter: FILTER_OK }),
      installPayload([RULE_CALI], ['-D PREROUTING -j KIAM-METADATA', '-D PREROUTING -j KIAM-METADATA', JUMP], [BACKSTOP_CALI], []),
    ],
    ['the whole nat table was flushed', saved({ nat: null, filter: FILTER_OK }), installPayload([RULE_CALI], [JUMP], [BACKSTOP_CALI], [])],
    ['everything was deleted', EMPTY, installPayload([RULE_CALI])],
    ['the backstop chain was deleted', saved({ nat: NAT_OK, filter: { chain: false } }), installPayload([RULE_CALI], [], [BACKSTOP_CALI])],
    ['a backstop rule was altered', saved({ nat: NAT_OK, filter: { ...FILTER_OK, rules: [printedBackstop('cali+').replace('REJECT --reject-with tcp-reset', 'ACCEPT')] } }), installPayload([RULE_CALI], [], [BACKSTOP_CALI], [])],
    ['the INPUT jump was removed', saved({ nat: NAT_OK, filter: { ...FILTER_OK, input: [] } }), installPayload([RULE_CALI], [], [BACKSTOP_CALI], [BACKSTOP_JUMPS[0]!])],
    [
      'the FORWARD jump was duplicated',
      saved({ nat: NAT_OK, filter: { ...FILTER_OK, forward: ['-j KIAM-METADATA-BACKSTOP', '-j KIAM-METADATA-BACKSTOP'] } }),
      installPayload([RULE_CALI], [], [BACKSTOP_CALI], ['-D FORWARD -j KIAM-METADATA-BACKSTOP', '-D FORWARD -j KIAM-METADATA-BACKSTOP', BACKSTOP_JUMPS[1]!]),
    ],
    [
      'a rule ahead of the FORWARD jump accepts metadata traffic',
      saved({ nat: NAT_OK, filter: { ...FILTER_OK, forward: ['-d 169.254.169.254/32 -j ACCEPT', '-j KIAM-METADATA-BACKSTOP'] } }),
      installPayload([RULE_CALI], [], [BACKSTOP_CALI], ['-D FORWARD -j KIAM-METADATA-BACKSTOP', BACKSTOP_JUMPS[1]!]),
    ],
  ];
  for (const [label, live, payload] of drifts) {
    it(`re-applies and counts a repair when ${label}`, async () => {
      const h = setup();
      h.runner.expect(SAVE, { stdout: live }).expect(RESTORE, {}, { input: payload }).expect(CONNTRACK, NO_FLOWS).expect(SAVE6, { stdout: BACKSTOP6_ONLY });
      assert.equal(await h.reconciler.check(), 'repaired');
      h.runner.assertDone();
      assert.deepEqual(await reconciles(h.metrics), { repaired: 1 });
      assert.equal(h.reconciler.present, true);
      const warning = h.logs.find((l) => l.level === 40 && l.msg === 'interception rules drifted; re-applying');
      assert.ok(Array.isArray(warning?.drift) && warning.drift.length > 0, 'the drift is logged');
    });
  }

  it('repairs a shadowed jump every time, but warns once per distinct shadowing rule', async () => {
    const h = setup();
    const kube2iam = '-d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.1.23:8282';
    const other = '-d 169.254.169.254/32 -j RETURN';
    const shadowed = (rule: string) => saved({ nat: { ...NAT_OK, prerouting: ['-j cali-PREROUTING', rule, '-j KIAM-METADATA'] }, filter: FILTER_OK });
    const payload = installPayload([RULE_CALI], ['-D PREROUTING -j KIAM-METADATA', JUMP], [BACKSTOP_CALI], []);
    for (const rule of [kube2iam, kube2iam, other]) {
      h.runner.expect(SAVE, { stdout: shadowed(rule) }).expect(RESTORE, {}, { input: payload }).expect(CONNTRACK, NO_FLOWS).expect(SAVE6, { stdout: BACKSTOP6_ONLY });
    }
    for (let i = 0; i < 3; i++) assert.equal(await h.reconciler.check(), 'repaired');
    h.runner.assertDone();
    const drift = h.logs.filter((l) => l.msg === 'interception rules drifted; re-applying').map((l) => l.drift);
    assert.deepEqual(drift, [
      [`rule ahead of our jump shadows it: -A PREROUTING ${kube2iam}`],
      [`rule ahead of our jump shadows it: -A PREROUTING ${kube2iam}`],
      [`rule ahead of our jump shadows it: -A PREROUTING ${other}`],
    ]);
    assert.deepEqual(warnings(h.logs, /rule ahead of our jump handles/).map((l) => l.rule), [`-A PREROUTING ${kube2iam}`, `-A PREROUTING ${other}`]);
  });

  it('counts a failed read as an error, with the stderr in the error', async () => {
    const h = setup();
    h.runner.expect(SAVE, { code: 4, stderr: 'iptables-nft-save: Permission denied (you must be root)\n' }).expect(SAVE6, { stdout: BACKSTOP6_ONLY });
    await assert.rejects(h.reconciler.check(), /iptables-nft-save exited 4: iptables-nft-save: Permission denied/);
    h.runner.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { error: 1 });
  });
});

describe('RuleReconciler without an IPv6 host address: the IPv6 backstop alone', () => {
  const NO_IP6TABLES = { code: 127, stderr: 'ip6tables-nft-save: command not found' };
  const NO_IPV6_STACK = { code: 2, stderr: "ip6tables-restore v1.8.9 (legacy): ip6tables-restore: unable to initialize table 'filter'\nError occurred at line: 1\n" };
  const noIpv6Warnings = (logs: Array<Record<string, unknown>>) => warnings(logs, /^ip6tables cannot take the IPv6 backstop/);

  it('check() repairs the IPv6 backstop, writing no nat table and flushing no IPv6 conntrack', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: saved({ nat: { chain: false }, filter: { ...FILTER_OK, rules: [printedBackstop('cali+', 'ipv6')], forward: [] } }) })
      .expect(RESTORE6, {}, { input: backstop6Payload([BACKSTOP6_CALI], [BACKSTOP_JUMPS[1]!]) });
    assert.equal(await h.reconciler.check(), 'repaired');
    h.runner.assertDone();
    const drift = h.logs.find((l) => l.msg === 'interception rules drifted; re-applying');
    assert.deepEqual([drift?.level, drift?.family, drift?.drift], [40, 'ipv6', ['FORWARD does not jump to KIAM-METADATA-BACKSTOP']]);
  });

  it('without ip6tables, installs IPv4 with one warning, and later checks stay quiet', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, NO_IP6TABLES)
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, NO_IP6TABLES)
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, NO_IP6TABLES);
    await h.reconciler.install();
    assert.equal(h.reconciler.present, true);
    assert.equal(await h.reconciler.check(), 'in-sync');
    assert.equal(await h.reconciler.check(), 'in-sync');
    h.runner.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 2 });
    const warned = noIpv6Warnings(h.logs);
    assert.equal(warned.length, 1, 'one warning');
    assert.match(String(warned[0]?.msg), /ip6tables-nft-save exited 127: ip6tables-nft-save: command not found\); going on with IPv4 alone/);
    assert.deepEqual(h.logs.filter((l) => Number(l.level) >= 40).map((l) => l.msg), [warned[0]?.msg], 'nothing else above info');
  });

  it('on a kernel without IPv6 (the restore fails), installs IPv4 with one warning, retries quietly, and says when it works', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { stdout: '' })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(RESTORE6, NO_IPV6_STACK, { input: backstop6Payload() })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: '' })
      .expect(RESTORE6, NO_IPV6_STACK)
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: '' })
      .expect(RESTORE6, {}, { input: backstop6Payload() });
    await h.reconciler.install();
    assert.equal(h.reconciler.present, true);
    assert.equal(await gauge(h.metrics), 1);
    assert.equal(await h.reconciler.check(), 'in-sync', 'nothing could be repaired');
    assert.equal(h.reconciler.present, true);
    assert.equal(await h.reconciler.check(), 'repaired', 'ip6tables works again');
    h.runner.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1, repaired: 1 });
    assert.equal(noIpv6Warnings(h.logs).length, 1, 'one warning');
    assert.match(String(noIpv6Warnings(h.logs)[0]?.msg), /unable to initialize table 'filter'/);
    assert.deepEqual(h.logs.filter((l) => l.msg === 'interception rules drifted; re-applying').map((l) => l.level), [20, 20], 'the known-missing backstop is no news: debug, not warn');
    assert.ok(h.logs.some((l) => l.level === 30 && l.msg === 'ip6tables works now: the IPv6 backstop is installed'));
  });

  it('fails the install on any other ip6tables failure, as for IPv4', async () => {
    const h = setup();
    const locked = { code: 4, stderr: 'Another app is currently holding the xtables lock. Stopped waiting after 5s.\n' };
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(SAVE6, { stdout: EMPTY }).expect(RESTORE).expect(CONNTRACK, NO_FLOWS).expect(RESTORE6, locked);
    await assert.rejects(h.reconciler.install(), /^CommandError: ip6tables-nft-restore --noflush --wait 5 exited 4: Another app is currently holding the xtables lock/);
    h.runner.assertDone();
    assert.equal(h.reconciler.present, false);
    assert.deepEqual(noIpv6Warnings(h.logs), []);
  });

  it('remove() removes the IPv6 backstop alone', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(RESTORE, {}, { input: REMOVE_V4 })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(RESTORE6, {}, { input: ['*filter', '-D INPUT -j KIAM-METADATA-BACKSTOP', '-D FORWARD -j KIAM-METADATA-BACKSTOP', ':KIAM-METADATA-BACKSTOP - [0:0]', '-X KIAM-METADATA-BACKSTOP', 'COMMIT', ''].join('\n') });
    assert.equal(await h.reconciler.remove(), true);
    h.runner.assertDone();
  });
});

describe('RuleReconciler timer', () => {
  it('re-checks every interval; a failed restore is counted and logged and the timer keeps going', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(SAVE, { stdout: EMPTY })
      .expect(RESTORE, { code: 2, stderr: 'iptables-nft-restore: line 3 failed\n' })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(SAVE, { stdout: EMPTY })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY });
    h.reconciler.start();
    h.reconciler.start(); // idempotent: still one timer
    assert.equal(h.clock.timers, 1);

    await h.clock.advance(9_999);
    assert.equal(h.runner.calls.length, 0, 'nothing before the first interval');
    await h.clock.advance(1);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1 });

    await h.clock.advance(10_000);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1, error: 1 });
    assert.equal(h.reconciler.present, false);
    assert.equal(await gauge(h.metrics), 0);
    const error = h.logs.find((l) => l.level === 50);
    assert.ok(error, 'the failure is logged');
    assert.match(String((error.err as { message?: string }).message), /exited 2: iptables-nft-restore: line 3 failed/);

    await h.clock.advance(10_000);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1, error: 1, repaired: 1 });
    assert.equal(h.reconciler.present, true);

    await h.clock.advance(10_000);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 2, error: 1, repaired: 1 });
    h.runner.assertDone();

    await h.reconciler.stop();
    assert.equal(h.clock.timers, 0);
    await h.clock.advance(60_000);
    assert.equal(h.runner.calls.length, 11, 'no check after stop()');
  });
});

const REMOVE_V4 = [
  '*nat',
  '-D PREROUTING -j KIAM-METADATA',
  ':KIAM-METADATA - [0:0]',
  '-X KIAM-METADATA',
  'COMMIT',
  '*filter',
  '-D INPUT -j KIAM-METADATA-BACKSTOP',
  '-D FORWARD -j KIAM-METADATA-BACKSTOP',
  ':KIAM-METADATA-BACKSTOP - [0:0]',
  '-X KIAM-METADATA-BACKSTOP',
  'COMMIT',
  '',
].join('\n');

describe('RuleReconciler.remove', () => {
  it('removes the jumps and both chains in one transaction per family, and is a no-op the second time', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(RESTORE, {}, { input: REMOVE_V4 })
      .expect(SAVE6, { stdout: '' })
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { stdout: EMPTY });
    h.reconciler.start();
    assert.equal(await h.reconciler.remove(), true);
    assert.equal(h.clock.timers, 0, 'remove() stops the timer');
    assert.equal(h.reconciler.present, false);
    assert.equal(await h.reconciler.remove(), false);
    h.runner.assertDone();
    assert.equal(await gauge(h.metrics), 0);
  });

  it('removes a chain left without its jump, and a backstop left alone', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: saved({ nat: { rules: [printedRule('cali+')] }, filter: null }) })
      .expect(RESTORE, {}, { input: '*nat\n:KIAM-METADATA - [0:0]\n-X KIAM-METADATA\nCOMMIT\n' })
      .expect(SAVE6, { stdout: EMPTY })
      .expect(SAVE, { stdout: saved({ nat: { chain: false }, filter: { ...FILTER_OK, input: [] } }) })
      .expect(RESTORE, {}, { input: '*filter\n-D FORWARD -j KIAM-METADATA-BACKSTOP\n:KIAM-METADATA-BACKSTOP - [0:0]\n-X KIAM-METADATA-BACKSTOP\nCOMMIT\n' })
      .expect(SAVE6, { stdout: EMPTY });
    assert.equal(await h.reconciler.remove(), true);
    assert.equal(await h.reconciler.remove(), true);
    h.runner.assertDone();
  });

  it('removes IPv6 rules whatever the spec says, and gets by without ip6tables', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { stdout: INSTALLED6 })
      .expect(RESTORE6, {}, { input: REMOVE_V4 })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(RESTORE, {}, { input: REMOVE_V4 })
      .expect(SAVE6, { code: 127, stderr: 'ip6tables-nft-save: command not found' })
      .expect(SAVE, { stdout: EMPTY })
      .expect(SAVE6, { code: 1, stderr: "ip6tables-nft-save: Failed to initialize nft: Protocol not supported\n" });
    assert.equal(await h.reconciler.remove(), true, 'IPv6 leftovers');
    assert.equal(await h.reconciler.remove(), true, 'IPv4 removed, ip6tables missing');
    assert.equal(await h.reconciler.remove(), false, 'nothing, and ip6tables failing');
    h.runner.assertDone();
    assert.deepEqual(h.logs.filter((l) => /cannot read ip6tables/.test(String(l.msg))).map((l) => l.level), [30, 40], 'not installed: info; failing: warn');
  });

  it('fails when iptables itself cannot be read', async () => {
    const h = setup();
    h.runner.expect(SAVE, { code: 4, stderr: 'iptables-nft-save: Permission denied (you must be root)\n' });
    await assert.rejects(h.reconciler.remove(), /^CommandError: iptables-nft-save exited 4: iptables-nft-save: Permission denied/);
    h.runner.assertDone();
  });
});

const EMPTY_FAMILY = {
  chainPresent: false,
  jumpPresent: false,
  jumpPosition: null,
  jumpPositions: [],
  rulesWanted: [],
  rulesFound: [],
  backstop: { chain: 'KIAM-METADATA-BACKSTOP', chainPresent: false, jumpPositions: { INPUT: [], FORWARD: [] }, rulesWanted: [], rulesFound: [] },
  rulesAhead: [],
  inSync: false,
  drift: [],
};

describe('RuleReconciler.status', () => {
  it('describes backend, chains, jump positions, rules found vs wanted and the rules ahead, for both families (IPv6: the backstop alone)', async () => {
    const h = setup({ hostInterfaces: ['cali+', '!eth0'] });
    h.runner
      .expect(SAVE, { stdout: saved({ nat: { ...NAT_OK, prerouting: ['-j KUBE-SERVICES', '-j KIAM-METADATA'] }, filter: { ...FILTER_OK, forward: ['-j cali-FORWARD', '-j KIAM-METADATA-BACKSTOP'] } }) })
      .expect(SAVE6, { stdout: '' });
    const status = await h.reconciler.status();
    h.runner.assertDone();
    const negated = (rule: string) => rule.replace('-i cali+', '! -i eth0');
    assert.deepEqual(status, {
      backend: 'nft',
      backendReason: 'test',
      chain: 'KIAM-METADATA',
      chainPresent: true,
      jumpPresent: true,
      jumpPosition: 2,
      jumpPositions: [2],
      rulesWanted: [RULE_CALI, negated(RULE_CALI)],
      rulesFound: [printedRule('cali+')],
      backstop: {
        chain: 'KIAM-METADATA-BACKSTOP',
        chainPresent: true,
        jumpPositions: { INPUT: [1], FORWARD: [2] },
        rulesWanted: [BACKSTOP_CALI, negated(BACKSTOP_CALI)],
        rulesFound: [printedBackstop('cali+')],
      },
      rulesAhead: ['-A PREROUTING -j KUBE-SERVICES', '-A FORWARD -j cali-FORWARD'],
      inSync: false,
      drift: [
        'chain KIAM-METADATA holds 1 rule(s) that differ from the 2 wanted',
        'chain KIAM-METADATA-BACKSTOP holds 1 rule(s) that differ from the 2 wanted',
        'ipv6: chain KIAM-METADATA-BACKSTOP missing',
        'ipv6: INPUT does not jump to KIAM-METADATA-BACKSTOP',
        'ipv6: FORWARD does not jump to KIAM-METADATA-BACKSTOP',
      ],
      ipv6: {
        ...EMPTY_FAMILY,
        backstop: { ...EMPTY_FAMILY.backstop, rulesWanted: [BACKSTOP6_CALI, negated(BACKSTOP6_CALI)] },
        drift: ['chain KIAM-METADATA-BACKSTOP missing', 'INPUT does not jump to KIAM-METADATA-BACKSTOP', 'FORWARD does not jump to KIAM-METADATA-BACKSTOP'],
        hostIpv6: null,
      },
    });
  });

  it('reports nothing present on an empty table', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(SAVE6, { stdout: EMPTY });
    const status = await h.reconciler.status();
    assert.equal(status.chainPresent, false);
    assert.equal(status.jumpPresent, false);
    assert.equal(status.jumpPosition, null);
    assert.equal(status.backstop.chainPresent, false);
    assert.deepEqual(status.rulesFound, []);
    h.runner.assertDone();
  });

  it('with an IPv6 host address, is in sync only when both families are, IPv6 drift prefixed', async () => {
    const h = setup(V6);
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: INSTALLED6 })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: saved({ nat: { ...NAT_OK, rules: [printedRule('cali+', '[2001:db8::23]:8181', 'ipv6')] }, filter: { chain: false } }) })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { code: 127, stderr: 'ip6tables-nft-save: command not found' });
    const ok = await h.reconciler.status();
    assert.deepEqual([ok.inSync, ok.drift, ok.ipv6.inSync, ok.ipv6.hostIpv6], [true, [], true, '2001:db8::23']);
    assert.deepEqual(ok.ipv6.rulesWanted, [RULE6_CALI]);
    assert.deepEqual(ok.ipv6.backstop.rulesFound, [printedBackstop('cali+', 'ipv6')]);
    assert.deepEqual(ok.ipv6.backstop.jumpPositions, { INPUT: [1], FORWARD: [1] });

    const drifted = await h.reconciler.status();
    assert.equal(drifted.inSync, false);
    assert.deepEqual(drifted.drift, [
      'ipv6: chain KIAM-METADATA-BACKSTOP missing',
      'ipv6: INPUT does not jump to KIAM-METADATA-BACKSTOP',
      'ipv6: FORWARD does not jump to KIAM-METADATA-BACKSTOP',
    ]);
    assert.deepEqual(drifted.ipv6.drift, drifted.drift.map((d) => d.slice('ipv6: '.length)));

    const missing = await h.reconciler.status();
    assert.equal(missing.inSync, false);
    assert.equal(missing.ipv6.error, 'ip6tables-nft-save exited 127: ip6tables-nft-save: command not found');
    assert.deepEqual(missing.drift, ['ipv6: cannot read ip6tables: ip6tables-nft-save exited 127: ip6tables-nft-save: command not found']);
    h.runner.assertDone();
  });

  it('without an IPv6 host address, counts the IPv6 backstop alone (a leftover DNAT is shown, not drift), unless ip6tables cannot be read', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: BACKSTOP6_ONLY })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: INSTALLED6 })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: saved({ nat: { chain: false }, filter: { ...FILTER_OK, rules: [printedBackstop('cali+', 'ipv6')], input: [] } }) })
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { code: 127, stderr: 'ip6tables-nft-save: command not found' });
    const ok = await h.reconciler.status();
    assert.deepEqual([ok.inSync, ok.drift], [true, []]);
    assert.deepEqual(ok.ipv6, {
      ...EMPTY_FAMILY,
      backstop: { ...EMPTY_FAMILY.backstop, chainPresent: true, jumpPositions: { INPUT: [1], FORWARD: [1] }, rulesWanted: [BACKSTOP6_CALI], rulesFound: [printedBackstop('cali+', 'ipv6')] },
      inSync: true,
      hostIpv6: null,
    });

    const leftover = await h.reconciler.status();
    assert.deepEqual([leftover.inSync, leftover.drift, leftover.ipv6.inSync], [true, [], true]);
    assert.deepEqual([leftover.ipv6.rulesWanted, leftover.ipv6.rulesFound, leftover.ipv6.jumpPositions], [[], [printedRule('cali+', '[2001:db8::23]:8181', 'ipv6')], [1]]);

    const drifted = await h.reconciler.status();
    assert.deepEqual([drifted.inSync, drifted.drift, drifted.ipv6.inSync], [false, ['ipv6: INPUT does not jump to KIAM-METADATA-BACKSTOP'], false]);

    const missing = await h.reconciler.status();
    const error = 'ip6tables-nft-save exited 127: ip6tables-nft-save: command not found';
    assert.deepEqual(missing.ipv6, {
      ...EMPTY_FAMILY,
      backstop: { ...EMPTY_FAMILY.backstop, rulesWanted: [BACKSTOP6_CALI] },
      drift: [`cannot read ip6tables: ${error}`],
      hostIpv6: null,
      error,
    });
    assert.deepEqual([missing.inSync, missing.drift], [true, []], 'a node without ip6tables is not drift when no IPv6 DNAT is wanted');
    h.runner.assertDone();
  });

  it('without a spec (status given no flags), says whether everything is there', async () => {
    const runner = new ScriptedRunner()
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE6, { stdout: EMPTY })
      .expect(SAVE, { stdout: saved({ nat: NAT_OK, filter: { ...FILTER_OK, forward: [] } }) })
      .expect(SAVE6, { stdout: EMPTY });
    const backend = backendCommands('nft', 'test');
    const full = await readStatus(runner, backend, { chain: 'KIAM-METADATA' });
    assert.deepEqual([full.inSync, full.drift, full.rulesWanted, full.ipv6.inSync], [true, [], [], false]);
    const partial = await readStatus(runner, backend, { chain: 'KIAM-METADATA' });
    assert.deepEqual([partial.inSync, partial.backstop.jumpPositions], [false, { INPUT: [1], FORWARD: [] }]);
    runner.assertDone();
  });
});
