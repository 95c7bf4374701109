import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { backendCommands } from '../../src/netfilter/backend.ts';
import { CommandError } from '../../src/netfilter/exec.ts';
import { RuleReconciler } from '../../src/netfilter/reconciler.ts';
import { RuleSpecError, type RuleSpec } from '../../src/netfilter/rules.ts';
import { FakeClock } from '../fakes/clock.ts';
import { ScriptedRunner } from '../fakes/runner.ts';
import { printedRule, RULE_COMMENT, savedNat } from '../fakes/iptables-save.ts';

const SAVE = ['iptables-nft-save', '-t', 'nat'];
const RESTORE = ['iptables-nft-restore', '--noflush', '--wait', '5'];
const CONNTRACK = ['conntrack', '-D', '-p', 'tcp', '--orig-dst', '169.254.169.254', '--orig-port-dst', '80'];
const NO_FLOWS = { code: 1, stderr: 'conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n' };

const EMPTY = savedNat({ chain: false });
const INSTALLED_ONE = savedNat({ rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA'] });

function installPayload(rules: string[], prerouting: string[] = ['-I PREROUTING 1 -j KIAM-METADATA']): string {
  return ['*nat', ':KIAM-METADATA - [0:0]', ...rules, ...prerouting, 'COMMIT', ''].join('\n');
}

const RULE_CALI =
  '-A KIAM-METADATA -i cali+ -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "kiam: metadata to agent" -j DNAT --to-destination 10.0.1.23:8181';

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

describe('RuleReconciler.install', () => {
  it('writes the exact transaction for one interface, then flushes conntrack', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(RESTORE, {}, { input: installPayload([RULE_CALI]) }).expect(CONNTRACK, NO_FLOWS);
    assert.equal(h.reconciler.present, false);
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
    assert.equal(await gauge(h.metrics), 1);
    assert.deepEqual(h.logs.filter((l) => Number(l.level) >= 40), [], 'no warning for "0 flow entries"');
  });

  it('writes every interface in order, negation included, and no jump when it is already there', async () => {
    const h = setup({ hostInterfaces: ['cali+', '!eth0', 'eni+'] });
    const rule = (m: string) => `-A KIAM-METADATA ${m} -d 169.254.169.254/32 -p tcp -m tcp --dport 80 ${RULE_COMMENT} -j DNAT --to-destination 10.0.1.23:8181`;
    h.runner
      .expect(SAVE, { stdout: savedNat({ rules: [], prerouting: ['-j KUBE-SERVICES', '-j KIAM-METADATA'] }) })
      .expect(RESTORE, {}, { input: installPayload([rule('-i cali+'), rule('! -i eth0'), rule('-i eni+')], []) })
      .expect(CONNTRACK, { code: 0, stderr: 'conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.\n' });
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
  });

  it('fails with argv and stderr when the restore fails, leaving present false', async () => {
    const h = setup();
    const stderr = "iptables-nft-restore v1.8.9 (nf_tables): Chain 'KIAM-METADATA' does not exist\nError occurred at line: 3\n";
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(RESTORE, { code: 2, stderr });
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
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(RESTORE).expect(CONNTRACK, { code: 127, stderr: 'conntrack: command not found' });
    await h.reconciler.install();
    h.runner.assertDone();
    assert.equal(h.reconciler.present, true);
    const warning = h.logs.find((l) => l.level === 40);
    assert.ok(warning, 'a warning was logged');
    assert.match(String(warning.msg), /conntrack is not installed/);
  });

  it('serialises a check that arrives while an install is running', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: EMPTY }).expect(RESTORE).expect(CONNTRACK, NO_FLOWS).expect(SAVE, { stdout: INSTALLED_ONE });
    const [, result] = await Promise.all([h.reconciler.install(), h.reconciler.check()]);
    assert.equal(result, 'in-sync');
    h.runner.assertDone();
  });

  it('rejects an invalid spec at construction, naming the values', () => {
    assert.throws(() => setup({ hostIp: '300.1.1.1', hostInterfaces: ['way-too-long-name0'] }), (err: unknown) => {
      assert.ok(err instanceof RuleSpecError);
      assert.match(err.message, /"300\.1\.1\.1"/);
      assert.match(err.message, /"way-too-long-name0"/);
      return true;
    });
  });
});

describe('RuleReconciler.check', () => {
  it('reads and writes nothing when in sync', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: INSTALLED_ONE });
    assert.equal(await h.reconciler.check(), 'in-sync');
    h.runner.assertDone();
    assert.equal(h.runner.inputsOf('iptables-nft-restore').length, 0);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1 });
    assert.equal(h.reconciler.present, true);
  });

  it('accepts a single plain jump below other rules (no fight with CNI rules that insert at the top)', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: savedNat({ rules: [printedRule('cali+')], prerouting: ['-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING', '-j KIAM-METADATA'] }) });
    assert.equal(await h.reconciler.check(), 'in-sync');
    h.runner.assertDone();
  });

  const drifts: Array<[string, string, string]> = [
    ['the chain was deleted by hand', EMPTY, installPayload([RULE_CALI])],
    ['a rule was altered', savedNat({ rules: [printedRule('cali+', '10.9.9.9:8181')], prerouting: ['-j KIAM-METADATA'] }), installPayload([RULE_CALI], [])],
    ['a rule was deleted', savedNat({ rules: [], prerouting: ['-j KIAM-METADATA'] }), installPayload([RULE_CALI], [])],
    ['the jump was removed', savedNat({ rules: [printedRule('cali+')] }), installPayload([RULE_CALI])],
    [
      'the jump was duplicated',
      savedNat({ rules: [printedRule('cali+')], prerouting: ['-j KIAM-METADATA', '-j KIAM-METADATA'] }),
      installPayload([RULE_CALI], ['-D PREROUTING -j KIAM-METADATA', '-D PREROUTING -j KIAM-METADATA', '-I PREROUTING 1 -j KIAM-METADATA']),
    ],
  ];
  for (const [label, live, payload] of drifts) {
    it(`re-applies and counts a repair when ${label}`, async () => {
      const h = setup();
      h.runner.expect(SAVE, { stdout: live }).expect(RESTORE, {}, { input: payload }).expect(CONNTRACK, NO_FLOWS);
      assert.equal(await h.reconciler.check(), 'repaired');
      h.runner.assertDone();
      assert.deepEqual(await reconciles(h.metrics), { repaired: 1 });
      assert.equal(h.reconciler.present, true);
      const warning = h.logs.find((l) => l.level === 40);
      assert.ok(Array.isArray(warning?.drift) && warning.drift.length > 0, 'the drift is logged');
    });
  }

  it('counts a failed read as an error, with the stderr in the error', async () => {
    const h = setup();
    h.runner.expect(SAVE, { code: 4, stderr: 'iptables-nft-save: Permission denied (you must be root)\n' });
    await assert.rejects(h.reconciler.check(), /iptables-nft-save -t nat exited 4: iptables-nft-save: Permission denied/);
    h.runner.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { error: 1 });
  });
});

describe('RuleReconciler timer', () => {
  it('re-checks every interval; a failed restore is counted and logged and the timer keeps going', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(SAVE, { stdout: EMPTY })
      .expect(RESTORE, { code: 2, stderr: 'iptables-nft-restore: line 3 failed\n' })
      .expect(SAVE, { stdout: EMPTY })
      .expect(RESTORE, {}, { input: installPayload([RULE_CALI]) })
      .expect(CONNTRACK, NO_FLOWS)
      .expect(SAVE, { stdout: INSTALLED_ONE });
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
    assert.equal(h.runner.calls.length, 7, 'no check after stop()');
  });
});

describe('RuleReconciler.remove', () => {
  it('removes the jump and the chain in one transaction, and is a no-op the second time', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: INSTALLED_ONE })
      .expect(RESTORE, {}, { input: '*nat\n-D PREROUTING -j KIAM-METADATA\n:KIAM-METADATA - [0:0]\n-X KIAM-METADATA\nCOMMIT\n' })
      .expect(SAVE, { stdout: EMPTY });
    h.reconciler.start();
    assert.equal(await h.reconciler.remove(), true);
    assert.equal(h.clock.timers, 0, 'remove() stops the timer');
    assert.equal(h.reconciler.present, false);
    assert.equal(await h.reconciler.remove(), false);
    h.runner.assertDone();
    assert.equal(await gauge(h.metrics), 0);
  });

  it('removes a chain left without its jump', async () => {
    const h = setup();
    h.runner
      .expect(SAVE, { stdout: savedNat({ rules: [printedRule('cali+')] }) })
      .expect(RESTORE, {}, { input: '*nat\n:KIAM-METADATA - [0:0]\n-X KIAM-METADATA\nCOMMIT\n' });
    assert.equal(await h.reconciler.remove(), true);
    h.runner.assertDone();
  });
});

describe('RuleReconciler.status', () => {
  it('describes backend, chain, jump position and rules found vs wanted', async () => {
    const h = setup({ hostInterfaces: ['cali+', '!eth0'] });
    h.runner.expect(SAVE, { stdout: savedNat({ rules: [printedRule('cali+')], prerouting: ['-j KUBE-SERVICES', '-j KIAM-METADATA'] }) });
    const status = await h.reconciler.status();
    h.runner.assertDone();
    assert.deepEqual(status, {
      backend: 'nft',
      backendReason: 'test',
      chain: 'KIAM-METADATA',
      chainPresent: true,
      jumpPresent: true,
      jumpPosition: 2,
      jumpPositions: [2],
      rulesWanted: [RULE_CALI, RULE_CALI.replace('-i cali+', '! -i eth0')],
      rulesFound: [printedRule('cali+')],
      inSync: false,
      drift: ['chain KIAM-METADATA holds 1 rule(s) that differ from the 2 wanted'],
    });
  });

  it('reports nothing present on an empty table', async () => {
    const h = setup();
    h.runner.expect(SAVE, { stdout: EMPTY });
    const status = await h.reconciler.status();
    assert.equal(status.chainPresent, false);
    assert.equal(status.jumpPresent, false);
    assert.equal(status.jumpPosition, null);
    assert.deepEqual(status.rulesFound, []);
    h.runner.assertDone();
  });
});
