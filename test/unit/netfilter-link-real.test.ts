/**
 * The container-credentials link manager against the real `ip`, inside a throwaway network namespace (the root
 * namespace is never touched but to add and delete it): the link and both addresses created (dummy, or ifb on a
 * kernel without the dummy driver), a second ensure changing nothing, a deleted address put back, and both addresses
 * usable at once (bind and connect, IPv6 without waiting for duplicate address detection). Needs root and ip:
 * without them the test is skipped, or fails when CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { runChecked, spawnRunner, type CommandRunner } from '../../src/netfilter/exec.ts';
import { LinkManager } from '../../src/netfilter/link.ts';
import { systemClock } from '../../src/clock.ts';

const CI = process.env.CI === 'true';

async function missingPrerequisite(): Promise<string | undefined> {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not running as root (network namespaces need it)';
  const ip = await spawnRunner().run(['ip', '-V']);
  if (ip.code !== 0) return 'missing ip (apt-get install iproute2)';
  return undefined;
}

const missing = await missingPrerequisite();
if (missing) {
  it('the container-credentials link in a throwaway network namespace', { skip: CI ? false : `skipped: ${missing}` }, () => {
    assert.fail(`CI=true and a prerequisite is missing: ${missing}`);
  });
} else {
  describe('the container-credentials link with the real ip, in a throwaway network namespace', () => {
    const ns = `kiamcc-${randomBytes(4).toString('hex')}`;
    const host = spawnRunner(); // only `ip netns add/del`
    const inNs: CommandRunner = spawnRunner(['ip', 'netns', 'exec', ns]);
    const manager = new LinkManager({ name: 'kiam-link0', addresses: ['169.254.170.23', 'fd00:ec2::23'] }, { runner: inNs, clock: systemClock, logger: pino({ level: 'silent' }), intervalMs: 60_000 });

    before(async () => {
      await runChecked(host, ['ip', 'netns', 'add', ns]);
      await runChecked(inNs, ['ip', 'link', 'set', 'lo', 'up']);
    });
    after(async () => {
      await manager.stop();
      await host.run(['ip', 'netns', 'del', ns]);
    });

    it('creates the link and its addresses, then changes nothing, then repairs a deleted address', async () => {
      const ran = await manager.ensure();
      assert.deepEqual(ran.map((a) => a.slice(0, 3).join(' ')), ['ip link add', 'ip link set', 'ip address replace', 'ip -6 address'], JSON.stringify(ran));
      const state = await manager.read();
      assert.ok(state.kind === 'dummy' || state.kind === 'ifb', state.kind);
      assert.equal(state.up, true);
      for (const a of ['169.254.170.23', 'fd00:ec2::23']) assert.ok(state.addresses.includes(a), a);
      assert.deepEqual(await manager.ensure(), [], 'idempotent');
      await runChecked(inNs, ['ip', '-6', 'address', 'del', 'fd00:ec2::23/128', 'dev', 'kiam-link0']);
      assert.equal(await manager.check(), 'repaired');
      assert.ok((await manager.read()).addresses.includes('fd00:ec2::23'));
    });

    it('both addresses can be listened on and reached at once (no tentative IPv6 address)', async () => {
      await manager.ensure();
      const script = `const net = require('node:net');
for (const h of ['169.254.170.23', 'fd00:ec2::23']) {
  const s = net.createServer((c) => c.end('ok'));
  s.on('error', (e) => { console.log(h + ':' + e.code); process.exitCode = 1; });
  s.listen(18080, h, () => net.connect(18080, h).on('data', (d) => { console.log(h + ':' + d); s.close(); }).on('error', (e) => console.log(h + ':' + e.code)));
}`;
      const result = await inNs.run([process.execPath, '-e', script], { timeoutMs: 10_000 });
      assert.equal(result.code, 0, result.stderr + result.stdout);
      assert.deepEqual(result.stdout.trim().split('\n').sort(), ['169.254.170.23:ok', 'fd00:ec2::23:ok']);
    });
  });
}
