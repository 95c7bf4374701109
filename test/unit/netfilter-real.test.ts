/**
 * The reconciler against real iptables and ip6tables (nft and legacy), inside throwaway network namespaces per
 * backend: a node namespace holding the rules, and a pod namespace joined to it by a veth named like Calico's.
 * Every iptables command and every connection runs under `ip netns exec NS`; the root namespace is never touched
 * except to add and delete the namespaces and to create the veth pair straight into them. Needs root, ip,
 * iptables and ip6tables (both backends) and conntrack: without them the test is skipped, or fails when CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { FakeClock } from '../fakes/clock.ts';
import { TrackedProcess } from '../e2e/procs.ts';
import { createMetrics } from '../../src/metrics.ts';
import { backendCommands, detectBackend, type BackendName } from '../../src/netfilter/backend.ts';
import { runChecked, spawnRunner, type CommandRunner } from '../../src/netfilter/exec.ts';
import { RuleReconciler } from '../../src/netfilter/reconciler.ts';

const CI = process.env.CI === 'true';
const BINARIES = ['ip', 'conntrack'].concat(
  ...['iptables', 'ip6tables'].flatMap((cmd) => ['nft', 'legacy'].map((b) => [`${cmd}-${b}`, `${cmd}-${b}-save`, `${cmd}-${b}-restore`])),
);

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

/** Listens on each [host, port, name] and answers every connection with its name; prints `listening` once all are. */
const SERVER = `const net = require('node:net');
const targets = JSON.parse(process.argv[1]);
let n = 0;
for (const [host, port, name] of targets) net.createServer((s) => s.end(name)).listen(port, host, () => { if (++n === targets.length) console.log('listening'); });`;
/** Connects to host:port and prints `answer:TEXT` or `error:CODE`. */
const CLIENT = `const s = require('node:net').connect({ host: process.argv[1], port: Number(process.argv[2]), timeout: 5000 });
let data = '';
s.on('data', (d) => (data += d));
s.on('end', () => console.log('answer:' + data));
s.on('timeout', () => { console.log('error:timeout'); s.destroy(); });
s.on('error', (e) => console.log('error:' + e.code));`;

const HOST_IP = '10.0.1.23';
const HOST_IPV6 = '2001:db8::23';

for (const backendName of missing ? [] : (['nft', 'legacy'] as BackendName[])) {
  describe(`real iptables and ip6tables (${backendName}) in throwaway network namespaces`, () => {
    const id = randomBytes(4).toString('hex');
    const ns = `kiamnf-${id}`;
    const podNs = `kiamnf-${id}-pod`;
    const veth = `cali${id}`;
    const host = spawnRunner(); // only for `ip netns add/del` and the veth pair
    const inNs: CommandRunner = spawnRunner(['ip', 'netns', 'exec', ns]);
    const inPod: CommandRunner = spawnRunner(['ip', 'netns', 'exec', podNs]);
    const iptables = (...args: string[]) => runChecked(inNs, [`iptables-${backendName}`, '-w', '5', ...args]);
    const ip6tables = (...args: string[]) => runChecked(inNs, [`ip6tables-${backendName}`, '-w', '5', ...args]);
    const save = async () => (await runChecked(inNs, [`iptables-${backendName}-save`])).stdout;
    const save6 = async () => (await runChecked(inNs, [`ip6tables-${backendName}-save`])).stdout;
    const created: string[] = [];
    let server: TrackedProcess | undefined;

    before(async () => {
      for (const name of [ns, podNs]) {
        await runChecked(host, ['ip', 'netns', 'add', name]);
        created.push(name);
      }
      await runChecked(host, ['ip', 'link', 'add', veth, 'netns', ns, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', podNs]);
      const node = (...args: string[]) => runChecked(host, ['ip', '-n', ns, ...args]);
      const pod = (...args: string[]) => runChecked(host, ['ip', '-n', podNs, ...args]);
      // The node: the real metadata service's addresses and the agent's on lo, the pod's gateway on the veth.
      await node('link', 'set', 'lo', 'up');
      await node('link', 'set', veth, 'up');
      await node('addr', 'add', '10.99.0.1/24', 'dev', veth);
      await node('addr', 'add', 'fd99::1/64', 'dev', veth, 'nodad');
      for (const address of ['169.254.169.254/32', `${HOST_IP}/32`, 'fd00:ec2::254/128', `${HOST_IPV6}/128`]) await node('addr', 'add', address, 'dev', 'lo');
      await pod('link', 'set', 'lo', 'up');
      await pod('link', 'set', 'eth0', 'up');
      await pod('addr', 'add', '10.99.0.2/24', 'dev', 'eth0');
      await pod('addr', 'add', 'fd99::2/64', 'dev', 'eth0', 'nodad');
      await pod('route', 'add', 'default', 'via', '10.99.0.1');
      await pod('-6', 'route', 'add', 'default', 'via', 'fd99::1');
      const targets = [['169.254.169.254', 80, 'real'], ['fd00:ec2::254', 80, 'real'], [HOST_IP, 8181, 'agent'], [HOST_IPV6, 8181, 'agent']];
      server = new TrackedProcess('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER, JSON.stringify(targets)]);
      await server.waitForLine(/^listening$/);
    });
    after(async () => {
      await server?.stop();
      for (const name of created.reverse()) await runChecked(host, ['ip', 'netns', 'delete', name]);
    });

    function reconcilerFor(hostInterfaces: string[], hostIpv6: string | null = HOST_IPV6): { reconciler: RuleReconciler; metrics: ReturnType<typeof createMetrics> } {
      const metrics = createMetrics();
      const reconciler = new RuleReconciler({
        runner: inNs,
        clock: new FakeClock(),
        metrics,
        logger: pino({ level: 'silent' }),
        spec: { hostIp: HOST_IP, ...(hostIpv6 ? { hostIpv6 } : {}), port: 8181, hostInterfaces },
        backend: backendCommands(backendName, 'test'),
        intervalMs: 10_000,
      });
      return { reconciler, metrics };
    }

    it('installs, reports, repairs every kind of drift in both families and tables, and removes without a trace', async () => {
      const { reconciler, metrics } = reconcilerFor(['cali+', '!eth0', 'vlan.10@x', '+']);
      try {
        const fresh = await reconciler.status();
        assert.deepEqual([fresh.chainPresent, fresh.backstop.chainPresent, fresh.ipv6.chainPresent, fresh.ipv6.error], [false, false, false, undefined], 'a fresh namespace holds nothing');
        await reconciler.install();
        const status = await reconciler.status();
        assert.equal(status.backend, backendName);
        for (const [family, s] of [['ipv4', status], ['ipv6', status.ipv6]] as const) {
          assert.deepEqual(
            [s.chainPresent, s.jumpPresent, s.jumpPosition, s.rulesFound.length, s.backstop.chainPresent, s.backstop.jumpPositions, s.backstop.rulesFound.length, s.inSync, s.drift],
            [true, true, 1, 4, true, { INPUT: [1], FORWARD: [1] }, 4, true, []],
            family,
          );
        }
        assert.equal(status.inSync, true);
        assert.equal(await reconciler.check(), 'in-sync', 'what iptables-save and ip6tables-save print back compares equal to what we wrote');

        const kube2iam = ['-d', '169.254.169.254/32', '-i', 'cali+', '-p', 'tcp', '-m', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', '10.0.1.23:8282'];
        const drifts: Array<[string, () => Promise<unknown>]> = [
          ['nat table flushed by hand', async () => {
            await iptables('-t', 'nat', '-F');
            const left = await reconciler.status();
            assert.deepEqual([left.chainPresent, left.rulesFound, left.jumpPresent], [true, [], false], 'the DNAT is gone');
            assert.deepEqual([left.backstop.chainPresent, left.backstop.rulesFound.length, left.backstop.jumpPositions], [true, 4, { INPUT: [1], FORWARD: [1] }], 'the backstop is not');
          }],
          ['rule deleted', () => iptables('-t', 'nat', '-D', 'KIAM-METADATA', '1')],
          ['rule altered', () => iptables('-t', 'nat', '-R', 'KIAM-METADATA', '2', '-d', '169.254.169.254/32', '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', '10.9.9.9:1')],
          ['jump deleted', () => iptables('-t', 'nat', '-D', 'PREROUTING', '-j', 'KIAM-METADATA')],
          ['jump duplicated', () => iptables('-t', 'nat', '-A', 'PREROUTING', '-j', 'KIAM-METADATA')],
          ['jump moved down', async () => {
            await iptables('-t', 'nat', '-D', 'PREROUTING', '-j', 'KIAM-METADATA');
            await iptables('-t', 'nat', '-A', 'PREROUTING', '-i', 'lo', '-j', 'RETURN');
            await iptables('-t', 'nat', '-A', 'PREROUTING', '-i', 'eth9', '-j', 'KIAM-METADATA');
          }],
          ['chain deleted', async () => {
            await iptables('-t', 'nat', '-D', 'PREROUTING', '-j', 'KIAM-METADATA');
            await iptables('-t', 'nat', '-F', 'KIAM-METADATA');
            await iptables('-t', 'nat', '-X', 'KIAM-METADATA');
          }],
          ['a kube2iam DNAT inserted ahead of the jump', () => iptables('-t', 'nat', '-I', 'PREROUTING', '1', ...kube2iam)],
          ['backstop rule deleted', () => iptables('-D', 'KIAM-METADATA-BACKSTOP', '1')],
          ['backstop rule altered', () => iptables('-R', 'KIAM-METADATA-BACKSTOP', '2', '-d', '169.254.169.254/32', '-p', 'tcp', '-j', 'ACCEPT')],
          ['INPUT jump deleted', () => iptables('-D', 'INPUT', '-j', 'KIAM-METADATA-BACKSTOP')],
          ['a FORWARD rule accepting metadata traffic inserted ahead of the jump', () => iptables('-I', 'FORWARD', '1', '-d', '169.254.169.254/32', '-j', 'ACCEPT')],
          ['backstop chain deleted', async () => {
            await iptables('-D', 'INPUT', '-j', 'KIAM-METADATA-BACKSTOP');
            await iptables('-D', 'FORWARD', '-j', 'KIAM-METADATA-BACKSTOP');
            await iptables('-F', 'KIAM-METADATA-BACKSTOP');
            await iptables('-X', 'KIAM-METADATA-BACKSTOP');
          }],
          ['ip6tables nat table flushed by hand', async () => {
            await ip6tables('-t', 'nat', '-F');
            const left = (await reconciler.status()).ipv6;
            assert.deepEqual([left.rulesFound, left.jumpPresent, left.backstop.rulesFound.length], [[], false, 4], 'the IPv6 backstop stays');
          }],
          ['ip6tables rule altered', () => ip6tables('-t', 'nat', '-R', 'KIAM-METADATA', '1', '-d', 'fd00:ec2::254/128', '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', '[2001:db8::99]:1')],
          ['ip6tables INPUT jump deleted', () => ip6tables('-D', 'INPUT', '-j', 'KIAM-METADATA-BACKSTOP')],
          ['ip6tables backstop rule deleted', () => ip6tables('-D', 'KIAM-METADATA-BACKSTOP', '3')],
          ['an IPv6 DNAT inserted ahead of the jump', () => ip6tables('-t', 'nat', '-I', 'PREROUTING', '1', '-d', 'fd00:ec2::254/128', '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', '[2001:db8::99]:80')],
        ];
        for (const [label, drift] of drifts) {
          await drift();
          assert.equal(await reconciler.check(), 'repaired', `${label}: drift seen and repaired`);
          const repaired = await reconciler.status();
          assert.equal(repaired.inSync, true, `${label}: in sync after repair (${repaired.drift.join('; ')})`);
          for (const s of [repaired, repaired.ipv6]) {
            assert.deepEqual([s.jumpPositions, s.backstop.jumpPositions.INPUT.length, s.backstop.jumpPositions.FORWARD.length], [[s.jumpPosition], 1, 1], `${label}: exactly one jump each`);
          }
          assert.equal(await reconciler.check(), 'in-sync', `${label}: stable`);
        }
        // Repairs put the shadowed jumps back at position 1 and leave other rules alone, now behind ours.
        const final = await reconciler.status();
        assert.deepEqual([final.jumpPosition, final.backstop.jumpPositions, final.ipv6.jumpPosition], [1, { INPUT: [1], FORWARD: [1] }, 1]);
        assert.deepEqual(final.rulesAhead, []);
        const v4 = await save();
        assert.match(v4, /^-A PREROUTING -i lo -j RETURN$/m);
        assert.match(v4, /^-A PREROUTING -j KIAM-METADATA\n-A PREROUTING -d 169\.254\.169\.254\/32 -i cali\+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10\.0\.1\.23:8282$/m);
        assert.match(v4, /^-A FORWARD -j KIAM-METADATA-BACKSTOP\n-A FORWARD -d 169\.254\.169\.254\/32 -j ACCEPT$/m);
        assert.match(await save6(), /^-A PREROUTING -j KIAM-METADATA\n-A PREROUTING -d fd00:ec2::254\/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination \[2001:db8::99\]:80$/m);

        const counts = Object.fromEntries((await metrics.ruleReconciles.get()).values.map((v) => [v.labels.result, v.value]));
        assert.deepEqual(counts, { 'in-sync': 1 + drifts.length, repaired: drifts.length });

        const detected = await detectBackend(inNs, 'auto');
        assert.equal(detected.name, backendName, `auto-detection inside the namespace: ${detected.reason}`);

        assert.equal(await reconciler.remove(), true);
        const left = await save();
        const left6 = await save6();
        assert.doesNotMatch(left, /KIAM-METADATA/);
        assert.doesNotMatch(left6, /KIAM-METADATA/);
        assert.match(left, /^-A PREROUTING -i lo -j RETURN$/m, 'rules that are not ours stay');
        assert.match(left, /^-A FORWARD -d 169\.254\.169\.254\/32 -j ACCEPT$/m, 'rules that are not ours stay');
        assert.match(left6, /^-A PREROUTING -d fd00:ec2::254\/128 /m, 'rules that are not ours stay');
        assert.equal(await reconciler.remove(), false, 'a second remove is a no-op');
        assert.equal(reconciler.present, false);
      } finally {
        await reconciler.stop();
        // Leave the namespace clean for the next test whatever happened.
        for (const [cmd, table] of [[iptables, 'nat'], [iptables, 'filter'], [ip6tables, 'nat'], [ip6tables, 'filter']] as const) await cmd('-t', table, '-F');
      }
    });

    it('pods reach the agent through the DNAT; with the nat table flushed the backstop resets them, never the real service', async () => {
      const { reconciler } = reconcilerFor(['cali+']);
      const dial = async (address: string) => (await runChecked(inPod, [process.execPath, '-e', CLIENT, address, '80'])).stdout.trim();
      const both = async () => [await dial('169.254.169.254'), await dial('fd00:ec2::254')];
      try {
        assert.deepEqual(await both(), ['answer:real', 'answer:real'], 'without our rules the pod reaches the real service (the leak the rules close)');
        await reconciler.install();
        assert.deepEqual(await both(), ['answer:agent', 'answer:agent'], 'the DNAT sends the pod to the agent, and the backstop lets it through');
        await iptables('-t', 'nat', '-F');
        await ip6tables('-t', 'nat', '-F');
        assert.deepEqual(await both(), ['error:ECONNREFUSED', 'error:ECONNREFUSED'], 'the backstop resets what escaped the DNAT');
        assert.equal(await reconciler.check(), 'repaired');
        assert.deepEqual(await both(), ['answer:agent', 'answer:agent']);
        assert.equal(await reconciler.remove(), true);
        assert.deepEqual(await both(), ['answer:real', 'answer:real']);
      } finally {
        await reconciler.stop();
      }
    });

    it('without a host IPv6 address, a pod dialling [fd00:ec2::254]:80 is reset by the IPv6 backstop alone, never reaching the real service', async () => {
      const { reconciler } = reconcilerFor(['cali+'], null);
      const dial = async (address: string) => (await runChecked(inPod, [process.execPath, '-e', CLIENT, address, '80'])).stdout.trim();
      const both = async () => [await dial('169.254.169.254'), await dial('fd00:ec2::254')];
      try {
        assert.deepEqual(await both(), ['answer:real', 'answer:real'], 'without our rules the pod reaches the real service over both families');
        await reconciler.install();
        assert.deepEqual(await both(), ['answer:agent', 'error:ECONNREFUSED'], 'IPv4 goes to the agent; IPv6 fails closed');
        assert.doesNotMatch(await runChecked(inNs, [`ip6tables-${backendName}-save`, '-t', 'nat']).then((r) => r.stdout), /KIAM-METADATA/, 'no IPv6 DNAT');
        const status = await reconciler.status();
        assert.deepEqual(
          [status.inSync, status.drift, status.ipv6.hostIpv6, status.ipv6.chainPresent, status.ipv6.rulesWanted, status.ipv6.backstop.chainPresent, status.ipv6.backstop.jumpPositions, status.ipv6.backstop.rulesFound.length, status.ipv6.inSync],
          [true, [], null, false, [], true, { INPUT: [1], FORWARD: [1] }, 1, true],
        );
        assert.equal(await reconciler.check(), 'in-sync', 'what ip6tables-save prints back compares equal to the backstop we wrote');

        await ip6tables('-F', 'KIAM-METADATA-BACKSTOP');
        assert.deepEqual((await reconciler.status()).drift, ['ipv6: chain KIAM-METADATA-BACKSTOP holds 0 rule(s) that differ from the 1 wanted']);
        assert.equal(await dial('fd00:ec2::254'), 'answer:real', 'the leak the backstop closes');
        assert.equal(await reconciler.check(), 'repaired');
        assert.equal(await dial('fd00:ec2::254'), 'error:ECONNREFUSED');

        assert.equal(await reconciler.remove(), true);
        assert.doesNotMatch(await save6(), /KIAM-METADATA/);
        assert.deepEqual(await both(), ['answer:real', 'answer:real']);
      } finally {
        await reconciler.stop();
        for (const [cmd, table] of [[iptables, 'nat'], [iptables, 'filter'], [ip6tables, 'nat'], [ip6tables, 'filter']] as const) await cmd('-t', table, '-F');
      }
    });
  });
}
