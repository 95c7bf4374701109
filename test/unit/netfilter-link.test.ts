/**
 * The container-credentials link (src/netfilter/link.ts) through the scripted runner: the exact `ip` commands for a
 * missing link, a down one, missing addresses, nothing missing; a foreign link left alone; failures; the timer.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { CommandError } from '../../src/netfilter/exec.ts';
import { addArgv, ipv6Enabled, LinkManager, linkPlan, parseLinkState, showArgv, type LinkSpec } from '../../src/netfilter/link.ts';
import { FakeClock } from '../fakes/clock.ts';
import { ScriptedRunner } from '../fakes/runner.ts';

const SPEC: LinkSpec = { name: 'kiam-link0', addresses: ['169.254.170.23', 'fd00:ec2::23'] };
const SHOW = showArgv('kiam-link0');
const ADD = ['ip', 'link', 'add', 'kiam-link0', 'type', 'dummy'];
const UP = ['ip', 'link', 'set', 'dev', 'kiam-link0', 'up'];
const ADDR4 = ['ip', 'address', 'replace', '169.254.170.23/32', 'dev', 'kiam-link0'];
const ADDR6 = ['ip', '-6', 'address', 'replace', 'fd00:ec2::23/128', 'dev', 'kiam-link0', 'nodad'];
const NO_DEVICE = { code: 1, stderr: 'Device "kiam-link0" does not exist.\n' };

/** `ip -details -json address show dev kiam-link0` as iproute2 6.1 prints it (fields we do not read trimmed). */
function shown(options: { up?: boolean; kind?: string | null; addresses?: Array<[string, number]> } = {}): string {
  const { up = true, kind = 'dummy', addresses = [['169.254.170.23', 32], ['fd00:ec2::23', 128]] } = options;
  const flags = ['BROADCAST', 'NOARP', ...(up ? ['UP', 'LOWER_UP'] : [])];
  const link: Record<string, unknown> = {
    ifindex: 7,
    ifname: 'kiam-link0',
    flags,
    mtu: 1500,
    qdisc: up ? 'noqueue' : 'noop',
    operstate: up ? 'UNKNOWN' : 'DOWN',
    group: 'default',
    txqlen: 1000,
    link_type: 'ether',
    address: '3e:5a:0b:11:22:33',
    broadcast: 'ff:ff:ff:ff:ff:ff',
    ...(kind === null ? {} : { linkinfo: { info_kind: kind } }),
    addr_info: addresses.map(([local, prefixlen]) => ({
      family: local.includes(':') ? 'inet6' : 'inet',
      local,
      prefixlen,
      scope: 'global',
      ...(local.includes(':') ? { nodad: true } : { label: 'kiam-link0' }),
      valid_life_time: 4294967295,
      preferred_life_time: 4294967295,
    })),
  };
  return `${JSON.stringify([link])}\n`;
}

interface Harness {
  runner: ScriptedRunner;
  clock: FakeClock;
  logs: Array<Record<string, unknown>>;
  manager: LinkManager;
}

const open: LinkManager[] = [];
afterEach(async () => {
  while (open.length) await open.pop()!.stop();
});

function harness(spec: LinkSpec = SPEC): Harness {
  const runner = new ScriptedRunner();
  const clock = new FakeClock();
  const logs: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (c: Buffer, _e, done) => (logs.push(JSON.parse(c.toString()) as Record<string, unknown>), done()) }));
  const manager = new LinkManager(spec, { runner, clock, logger, intervalMs: 10_000 });
  open.push(manager);
  return { runner, clock, logs, manager };
}

describe('parseLinkState', () => {
  it('reads kind, UP and the addresses (IPv6 canonical)', () => {
    assert.deepEqual(parseLinkState(shown()), { exists: true, kind: 'dummy', up: true, addresses: ['169.254.170.23', 'fd00:ec2::23'] });
    assert.deepEqual(parseLinkState(shown({ up: false, addresses: [['FD00:EC2:0::23', 128]] })), { exists: true, kind: 'dummy', up: false, addresses: ['fd00:ec2::23'] });
    assert.deepEqual(parseLinkState(shown({ kind: null, addresses: [] })), { exists: true, up: true, addresses: [] }, 'a plain device has no linkinfo');
    assert.deepEqual(parseLinkState('[]'), { exists: false, up: false, addresses: [] });
    assert.throws(() => parseLinkState('{}'), /not a JSON array/);
  });
});

describe('linkPlan', () => {
  it('nothing missing: no command', () => {
    assert.deepEqual(linkPlan(SPEC, parseLinkState(shown())), []);
  });

  it('a missing link: created, brought up, both addresses (the IPv6 one without duplicate address detection)', () => {
    assert.deepEqual(linkPlan(SPEC, { exists: false, up: false, addresses: [] }), [ADD, UP, ADDR4, ADDR6]);
  });

  it('only what is missing: a down link is brought up, a missing address added, others left', () => {
    assert.deepEqual(linkPlan(SPEC, parseLinkState(shown({ up: false }))), [UP]);
    assert.deepEqual(linkPlan(SPEC, parseLinkState(shown({ addresses: [['fd00:ec2::23', 128], ['10.9.9.9', 32]] }))), [ADDR4]);
  });

  it('an ifb link of that name is ours too (made where the kernel has no dummy driver)', () => {
    assert.deepEqual(linkPlan(SPEC, parseLinkState(shown({ kind: 'ifb' }))), []);
  });

  it('a link of that name that is not a dummy link is never touched', () => {
    assert.throws(() => linkPlan(SPEC, parseLinkState(shown({ kind: null }))), /kiam-link0 exists and is not a dummy link \(a plain device\)/);
    assert.throws(() => linkPlan(SPEC, parseLinkState(shown({ kind: 'veth' }))), /not a dummy link \(veth\)/);
  });
});

describe('LinkManager', () => {
  it('ensure on a node without the link: the exact commands, then present', async () => {
    const h = harness();
    h.runner.expect(SHOW, NO_DEVICE).expect(ADD).expect(UP).expect(ADDR4).expect(ADDR6);
    assert.equal(h.manager.present, false);
    assert.deepEqual(await h.manager.ensure(), [ADD, UP, ADDR4, ADDR6]);
    h.runner.assertDone();
    assert.equal(h.manager.present, true);
    assert.ok(h.runner.calls.every((c) => c.timeoutMs === 5_000), 'every ip command has a time budget');
  });

  it('a kernel without the dummy driver: an ifb link instead, said at info', async () => {
    const h = harness();
    const IFB = addArgv('kiam-link0', 'ifb');
    h.runner.expect(SHOW, NO_DEVICE).expect(ADD, { code: 2, stderr: 'Error: Unknown device type.\n' }).expect(IFB).expect(UP).expect(ADDR4).expect(ADDR6);
    assert.deepEqual(await h.manager.ensure(), [IFB, UP, ADDR4, ADDR6]);
    h.runner.assertDone();
    assert.equal(h.manager.present, true);
    assert.ok(h.logs.some((l) => l.level === 30 && /no dummy link driver/.test(String(l.msg))));
  });

  it('neither driver: ensure fails with the last error and what to do', async () => {
    const h = harness();
    const unknown = { code: 2, stderr: 'Error: Unknown device type.\n' };
    h.runner.expect(SHOW, NO_DEVICE).expect(ADD, unknown).expect(addArgv('kiam-link0', 'ifb'), unknown);
    await assert.rejects(h.manager.ensure(), /ip link add kiam-link0 type ifb exited 2: Error: Unknown device type\..*neither the dummy nor the ifb link driver.*--container-credentials-link none/);
    h.runner.assertDone();
  });

  it('ensure is idempotent: a second run reads and changes nothing', async () => {
    const h = harness();
    h.runner.expect(SHOW, { stdout: shown() });
    assert.deepEqual(await h.manager.ensure(), []);
    h.runner.assertDone();
    assert.equal(h.manager.present, true);
  });

  it('IPv4 alone (a node without IPv6): no ip -6 command', async () => {
    const h = harness({ name: 'kiam-link0', addresses: ['169.254.170.23'] });
    h.runner.expect(SHOW, NO_DEVICE).expect(ADD).expect(UP).expect(ADDR4);
    await h.manager.ensure();
    h.runner.assertDone();
  });

  it('a failing command: ensure rejects with the argv and stderr, not present, the error kept until a success', async () => {
    const h = harness();
    h.runner.expect(SHOW, NO_DEVICE).expect(ADD, { code: 2, stderr: 'RTNETLINK answers: Operation not permitted\n' });
    await assert.rejects(h.manager.ensure(), (err: unknown) => err instanceof CommandError && /ip link add kiam-link0 type dummy exited 2: RTNETLINK answers: Operation not permitted/.test(err.message));
    assert.equal(h.manager.present, false);
    assert.match(h.manager.error ?? '', /Operation not permitted/);
    h.runner.expect(SHOW, { stdout: shown() });
    await h.manager.ensure();
    assert.equal(h.manager.error, undefined);
    assert.equal(h.manager.present, true);
    h.runner.assertDone();
  });

  it('ip itself failing to read (not a missing device) is an error, not "missing"', async () => {
    const h = harness();
    h.runner.expect(SHOW, { code: 127, stderr: 'ip: command not found' });
    await assert.rejects(h.manager.ensure(), /ip -details -json address show dev kiam-link0 exited 127: ip: command not found/);
    h.runner.assertDone();
  });

  it('a foreign link of that name: ensure rejects and runs nothing after reading', async () => {
    const h = harness();
    h.runner.expect(SHOW, { stdout: shown({ kind: 'bridge' }) });
    await assert.rejects(h.manager.ensure(), /not a dummy link \(bridge\)/);
    h.runner.assertDone();
    assert.equal(h.manager.present, false);
  });

  it('the timer: in sync every interval; a deleted address is put back and the repair logged at warn', async () => {
    const h = harness();
    h.runner.expect(SHOW, { stdout: shown() });
    await h.manager.ensure();
    h.manager.start();
    h.runner.expect(SHOW, { stdout: shown() });
    await h.clock.advance(10_000);
    assert.equal(h.runner.remaining, 0);
    h.runner.expect(SHOW, { stdout: shown({ addresses: [['169.254.170.23', 32]] }) }).expect(ADDR6);
    await h.clock.advance(10_000);
    h.runner.assertDone();
    const repaired = h.logs.find((l) => l.msg === 'container-credentials link repaired');
    assert.ok(repaired, 'the repair is logged');
    assert.equal(repaired.level, 40);
    assert.deepEqual(repaired.ran, [ADDR6.join(' ')]);
    await h.manager.stop();
    await h.clock.advance(60_000);
    h.runner.assertDone();
    assert.equal(h.clock.timers, 0, 'no timer left after stop');
  });

  it('the timer survives a failure: logged at error, tried again on the next tick', async () => {
    const h = harness();
    h.manager.start();
    h.runner.expect(SHOW, { code: 1, stderr: 'RTNETLINK answers: Operation not permitted\n' });
    await h.clock.advance(10_000);
    const failed = h.logs.find((l) => l.msg === 'container-credentials link check failed');
    assert.ok(failed);
    assert.equal(failed.level, 50);
    h.runner.expect(SHOW, NO_DEVICE).expect(ADD).expect(UP).expect(ADDR4).expect(ADDR6);
    await h.clock.advance(10_000);
    h.runner.assertDone();
    assert.equal(h.manager.present, true);
  });
});

describe('ipv6Enabled', () => {
  const files = (all: string | Error, dflt: string | Error) => (path: string) => {
    const v = path.includes('/all/') ? all : dflt;
    if (v instanceof Error) throw v;
    return v;
  };

  it('on when neither all nor default disables it', () => {
    assert.deepEqual(ipv6Enabled(files('0\n', '0\n')), { enabled: true });
  });

  it('off, with the reason, when either does, or the kernel has no IPv6 at all', () => {
    assert.deepEqual(ipv6Enabled(files('1\n', '0\n')), { enabled: false, reason: '/proc/sys/net/ipv6/conf/all/disable_ipv6 is 1' });
    assert.deepEqual(ipv6Enabled(files('0\n', '1\n')), { enabled: false, reason: '/proc/sys/net/ipv6/conf/default/disable_ipv6 is 1' });
    const none = ipv6Enabled(files(new Error('ENOENT'), new Error('ENOENT')));
    assert.equal(none.enabled, false);
    assert.match(none.reason ?? '', /cannot be read: the kernel has no IPv6/);
  });
});
