/**
 * The reconciler against real iptables (nft and legacy), inside a throwaway network namespace per
 * backend. Every iptables command runs under `ip netns exec NS`; the root namespace is never touched
 * except to add and delete the namespaces. Needs root, ip, iptables (both backends) and conntrack:
 * without them the test is skipped, or fails when CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { FakeClock } from '../fakes/clock.ts';
import { createMetrics } from '../../src/metrics.ts';
import { backendCommands, detectBackend, type BackendName } from '../../src/netfilter/backend.ts';
import { runChecked, spawnRunner, type CommandRunner } from '../../src/netfilter/exec.ts';
import { RuleReconciler } from '../../src/netfilter/reconciler.ts';

const CI = process.env.CI === 'true';
const BINARIES = ['ip', 'iptables-nft', 'iptables-nft-save', 'iptables-nft-restore', 'iptables-legacy', 'iptables-legacy-save', 'iptables-legacy-restore', 'conntrack'];

function onPath(binary: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(':').concat('/usr/sbin', '/sbin')) {
    try {
      accessSync(join(dir, binary), constants.X_OK);
      return true;
    } catch {
      // next directory
    }
  }
  return false;
}

function missingPrerequisite(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not running as root (network namespaces and iptables need it)';
  const missing = BINARIES.filter((b) => !onPath(b));
  if (missing.length > 0) return `missing ${missing.join(', ')} (apt-get install iptables conntrack iproute2)`;
  return undefined;
}

const missing = missingPrerequisite();
if (missing) {
  // A missing prerequisite fails in CI (a green run must mean this test ran) and is a visible skip elsewhere.
  it('real iptables in a throwaway network namespace', { skip: CI ? false : `skipped: ${missing}` }, () => {
    assert.fail(`CI=true and a prerequisite of the real iptables test is missing: ${missing}`);
  });
}

for (const backendName of missing ? [] : (['nft', 'legacy'] as BackendName[])) {
  describe(`real iptables (${backendName}) in a throwaway network namespace`, () => {
    const ns = `kiamnf-${randomBytes(4).toString('hex')}`;
    const host = spawnRunner(); // only for `ip netns add/del`
    const inNs: CommandRunner = spawnRunner(['ip', 'netns', 'exec', ns]);
    const iptables = (...args: string[]) => runChecked(inNs, [`iptables-${backendName}`, '-t', 'nat', ...args]);
    const save = async () => (await runChecked(inNs, [`iptables-${backendName}-save`, '-t', 'nat'])).stdout;
    let created = false;

    before(async () => {
      await runChecked(host, ['ip', 'netns', 'add', ns]);
      created = true;
    });
    after(async () => {
      if (created) await runChecked(host, ['ip', 'netns', 'delete', ns]);
    });

    it('installs, reports, repairs every kind of drift, and removes without a trace', async () => {
      const metrics = createMetrics();
      const reconciler = new RuleReconciler({
        runner: inNs,
        clock: new FakeClock(),
        metrics,
        logger: pino({ level: 'silent' }),
        spec: { hostIp: '10.0.1.23', port: 8181, hostInterfaces: ['cali+', '!eth0', 'vlan.10@x', '+'] },
        backend: backendCommands(backendName, 'test'),
        intervalMs: 10_000,
      });
      try {
        assert.equal((await reconciler.status()).chainPresent, false, 'a fresh namespace holds nothing');
        await reconciler.install();
        const status = await reconciler.status();
        assert.equal(status.backend, backendName);
        assert.deepEqual(
          [status.chainPresent, status.jumpPresent, status.jumpPosition, status.rulesFound.length, status.inSync, status.drift],
          [true, true, 1, 4, true, []],
        );
        assert.equal(await reconciler.check(), 'in-sync', 'what iptables-save prints back compares equal to what we wrote');

        const drifts: Array<[string, () => Promise<unknown>]> = [
          ['rule deleted', () => iptables('-D', 'KIAM-METADATA', '1')],
          ['rule altered', () => iptables('-R', 'KIAM-METADATA', '2', '-d', '169.254.169.254/32', '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', '10.9.9.9:1')],
          ['jump deleted', () => iptables('-D', 'PREROUTING', '-j', 'KIAM-METADATA')],
          ['jump duplicated', () => iptables('-A', 'PREROUTING', '-j', 'KIAM-METADATA')],
          ['jump moved down', async () => {
            await iptables('-D', 'PREROUTING', '-j', 'KIAM-METADATA');
            await iptables('-A', 'PREROUTING', '-i', 'lo', '-j', 'RETURN');
            await iptables('-A', 'PREROUTING', '-i', 'eth9', '-j', 'KIAM-METADATA');
          }],
          ['chain deleted', async () => {
            await iptables('-D', 'PREROUTING', '-j', 'KIAM-METADATA');
            await iptables('-F', 'KIAM-METADATA');
            await iptables('-X', 'KIAM-METADATA');
          }],
        ];
        for (const [label, drift] of drifts) {
          await drift();
          assert.equal((await reconciler.status()).inSync, false, `${label}: drift seen`);
          assert.equal(await reconciler.check(), 'repaired', `${label}: repaired`);
          const repaired = await reconciler.status();
          assert.equal(repaired.inSync, true, `${label}: in sync after repair (${repaired.drift.join('; ')})`);
          assert.equal(repaired.jumpPositions.length, 1, `${label}: exactly one jump`);
          assert.equal(await reconciler.check(), 'in-sync', `${label}: stable`);
        }
        // Repairs put the jump back at position 1 and leave other rules of PREROUTING alone.
        assert.equal((await reconciler.status()).jumpPosition, 1);
        assert.match(await save(), /^-A PREROUTING -i lo -j RETURN$/m);

        const counts = Object.fromEntries((await metrics.ruleReconciles.get()).values.map((v) => [v.labels.result, v.value]));
        assert.deepEqual(counts, { 'in-sync': 1 + drifts.length, repaired: drifts.length });

        const detected = await detectBackend(inNs, 'auto');
        assert.equal(detected.name, backendName, `auto-detection inside the namespace: ${detected.reason}`);

        assert.equal(await reconciler.remove(), true);
        const left = await save();
        assert.doesNotMatch(left, /KIAM-METADATA/);
        assert.match(left, /^-A PREROUTING -i lo -j RETURN$/m, 'rules that are not ours stay');
        assert.equal(await reconciler.remove(), false, 'a second remove is a no-op');
        assert.equal(reconciler.present, false);
      } finally {
        await reconciler.stop();
      }
    });
  });
}
