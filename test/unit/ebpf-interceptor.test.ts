/**
 * EbpfInterceptor, removeEbpf and readEbpfStatus through a scripted runner: every bpftool call in order, with the
 * real bpftool output of test/fakes/bpftool-output.ts as what is read back. Config writes are decoded and kept
 * (test/fakes/bpftool-runner.ts; their probe address is random), so the tests can say what the map held at each step.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { afterEach, describe, test } from 'node:test';
import { pino } from 'pino';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { EbpfInterceptor, readEbpfStatus, removeEbpf, type NetnsProbe } from '../../src/netfilter/ebpf/interceptor.ts';
import { wantedConfig, type EbpfSpec, type MapConfig } from '../../src/netfilter/ebpf/plan.ts';
import type { CommandRunner } from '../../src/netfilter/exec.ts';
import * as captured from '../fakes/bpftool-output.ts';
import { FIXTURE_BPFFS, FIXTURE_CGROUP, IDS, RELOADED_IDS, withAttached, withConfig, withoutAttached } from '../fakes/bpftool-output.ts';
import { ATTACH_ALL, attach, BpftoolRecorder, detach, loadCommands, PINS, READ, WRITE } from '../fakes/bpftool-runner.ts';
import { FakeClock } from '../fakes/clock.ts';

const SPEC: EbpfSpec = { hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', port: 8181, cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS };
const OBJECT = '/opt/kiam/kiam.bpf.o';
const INTERVAL_MS = 10_000;
/** The node's cookie in the captures. */
const COOKIE = 3n;
const WANTED = wantedConfig(SPEC, COOKIE);

const LOAD = loadCommands(OBJECT);

interface Harness {
  runner: BpftoolRecorder;
  clock: FakeClock;
  metrics: Metrics;
  logs: Array<Record<string, unknown>>;
  probes: Array<{ ip: string; port: number }>;
  interceptor: EbpfInterceptor;
}

const open: EbpfInterceptor[] = [];
afterEach(async () => {
  for (const i of open.splice(0)) await i.stop();
});

function setup(probe?: NetnsProbe): Harness {
  const runner = new BpftoolRecorder();
  const clock = new FakeClock();
  const metrics = createMetrics();
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const probes: Array<{ ip: string; port: number }> = [];
  const interceptor = new EbpfInterceptor({
    runner,
    clock,
    metrics,
    logger: pino({ level: 'debug' }, sink),
    spec: SPEC,
    object: OBJECT,
    intervalMs: INTERVAL_MS,
    // The fake probe "connects": the scripted read that follows shows the cookie the program recorded.
    probe:
      probe ??
      (async (ip, port) => {
        probes.push({ ip, port });
      }),
  });
  open.push(interceptor);
  return { runner, clock, metrics, logs, probes, interceptor };
}

async function reconciles(metrics: Metrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await metrics.ebpfReconciles.get()).values) out[String(v.labels.result)] = v.value;
  return out;
}

async function present(metrics: Metrics): Promise<number | undefined> {
  return (await metrics.ebpfPresent.get()).values[0]?.value;
}

/** The read right after a probe: what the program recorded (with the rest of the config as written). */
function probedWith(config: MapConfig, learned: bigint = COOKIE) {
  return withConfig(captured.inSync, { ...config, probeIp4: '127.1.2.3', probePort: 4242, learnedCookie: learned });
}

function assertProbeWrite(write: MapConfig | undefined, probe: { ip: string; port: number } | undefined) {
  assert.ok(write && probe);
  assert.equal(write.probeIp4, probe.ip, 'the probe dials the address written in the map');
  assert.equal(write.probePort, probe.port);
  assert.match(probe.ip, /^127\.\d+\.\d+\.\d+$/);
  assert.ok(probe.port >= 1024 && probe.port <= 65535);
}

describe('install', () => {
  test('a fresh node: load and pin, interception off, attach all four, probe, then the final config', async () => {
    const h = setup();
    const off = { ...wantedConfig(SPEC, 0n), hostIp4: null };
    h.runner
      .expect(READ, captured.empty)
      .expectAll(LOAD)
      .expect(WRITE)
      .expect(READ, withConfig(captured.loaded, off))
      .expectAll(ATTACH_ALL)
      .expect(WRITE)
      .expect(READ, probedWith(off))
      .expect(WRITE)
      .expect(READ, captured.inSync);
    await h.interceptor.install();
    h.runner.script.assertDone();

    assert.equal(h.runner.writes.length, 3);
    const [first, probe, final] = h.runner.writes;
    assert.deepEqual(first, off, 'fresh maps: interception stays off (host_ip4 0) until the node’s netns is known');
    assertProbeWrite(probe, h.probes[0]);
    assert.deepEqual({ ...probe, probeIp4: null, probePort: 0 }, off, 'still off while probing: a pod is not told apart from the node yet');
    assert.deepEqual(final, WANTED, 'the final config: the learned cookie, no probe');
    assert.equal(h.probes.length, 1);
    assert.equal(h.interceptor.present, true);
    assert.equal(await present(h.metrics), 1);
    assert.ok(h.logs.some((l) => l.msg === 'eBPF socket redirect installed' && l.hostNetnsCookie === '3'));
  });

  test('already in sync (an agent restart): programs kept, interception never off, the cookie re-learned', async () => {
    const h = setup();
    h.runner
      .expect(READ, captured.foreign)
      .expect(WRITE)
      .expect(READ, probedWith(WANTED))
      .expect(WRITE)
      .expect(READ, captured.foreign);
    await h.interceptor.install();
    h.runner.script.assertDone();

    assert.ok(!h.runner.log.some((c) => /loadall|attach|detach|rm -rf/.test(c)), h.runner.log.join('\n'));
    // The security property: a pod's connect is redirected at every instant, also while the agent probes.
    assert.ok(h.runner.writes.length > 0);
    for (const w of h.runner.writes) {
      assert.equal(w.hostIp4, '10.0.0.5', 'host_ip4 is never written as 0 on a node that is already intercepting');
      assert.equal(w.hostNetnsCookie, COOKIE, 'and the node keeps its cookie while it is re-learned');
    }
    assertProbeWrite(h.runner.writes[0], h.probes[0]);
    assert.deepEqual(h.runner.writes.at(-1), WANTED);
    assert.equal(h.interceptor.present, true);
  });

  test('the probe never answers: warns, assumes init_net (cookie 0), and still installs', async () => {
    let calls = 0;
    const h = setup(async () => {
      calls++;
      if (calls === 1) throw Object.assign(new Error('connect EPERM 127.0.0.1:1'), { code: 'EPERM' });
    });
    const off = { ...wantedConfig(SPEC, 0n), hostIp4: null };
    h.runner
      .expect(READ, captured.empty)
      .expectAll(LOAD)
      .expect(WRITE)
      .expect(READ, withConfig(captured.loaded, off))
      .expectAll(ATTACH_ALL)
      // Attempt 1: the probe socket fails, nothing to read.
      .expect(WRITE)
      // Attempts 2 and 3: the program recorded nothing.
      .expect(WRITE)
      .expect(READ, probedWith(off, 0n))
      .expect(WRITE)
      .expect(READ, probedWith(off, 0n))
      .expect(WRITE)
      .expect(READ, withConfig(captured.inSync, wantedConfig(SPEC, 0n)));
    await h.interceptor.install();
    h.runner.script.assertDone();
    assert.equal(calls, 3);
    const probes = h.runner.writes.slice(1, 4);
    assert.equal(new Set(probes.map((w) => `${w.probeIp4}:${w.probePort}`)).size, 3, 'a new random address for every attempt');
    assert.deepEqual(h.runner.writes.at(-1), wantedConfig(SPEC, 0n));
    assert.ok(h.logs.some((l) => l.level === 40 && l.msg === 'netns probe socket failed'));
    assert.ok(h.logs.some((l) => l.level === 40 && /could not learn this network namespace's cookie/.test(String(l.msg))));
    assert.equal(h.interceptor.present, true);
  });

  test('a failed install (loadall refused by the verifier) throws and leaves present false', async () => {
    const h = setup();
    h.runner
      .expect(READ, captured.empty)
      .expectAll(LOAD.slice(0, 2))
      .expect(LOAD[2]!, { code: 255, stderr: 'libbpf: prog kiam_connect4: failed to load: -13\nError: failed to load object file\n' });
    await assert.rejects(h.interceptor.install(), /loadall .* exited 255: libbpf: prog kiam_connect4: failed to load: -13/);
    h.runner.script.assertDone();
    assert.equal(h.interceptor.present, false);
    assert.equal(await present(h.metrics), 0);
  });

  test('still differing after the repair (something undoes it) is an error', async () => {
    const h = setup();
    h.runner
      .expect(READ, captured.foreign)
      .expect(WRITE)
      .expect(READ, probedWith(WANTED))
      .expect(WRITE)
      .expect(READ, withoutAttached(captured.foreign, IDS.connect6));
    await assert.rejects(h.interceptor.install(), /still differs after repair: kiam_connect6 is not attached to connect6/);
    assert.equal(h.interceptor.present, false);
  });
});

describe('check', () => {
  test('in sync: one read, nothing written, counted in-sync, the redirect counters exported', async () => {
    const h = setup();
    h.runner.expect(READ, captured.inSync);
    assert.equal(await h.interceptor.check(), 'in-sync');
    h.runner.script.assertDone();
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1 });
    assert.equal(h.interceptor.present, true);
    const redirects = Object.fromEntries((await h.metrics.ebpfRedirects.get()).values.map((v) => [v.labels.family, v.value]));
    assert.deepEqual(redirects, { ipv4: 1, ipv6: 0, 'ipv4-mapped': 0 });
  });

  test('a detached hook is re-attached: repaired, counted, logged with the drift', async () => {
    const h = setup();
    h.runner
      .expect(READ, withoutAttached(captured.foreign, IDS.getpeername6))
      .expect(attach('getpeername6', 'kiam_getpeer6'))
      .expect(WRITE)
      .expect(READ, captured.foreign);
    assert.equal(await h.interceptor.check(), 'repaired');
    h.runner.script.assertDone();
    assert.deepEqual(h.runner.writes, [WANTED], 'no probe: the cookie came from the map');
    assert.deepEqual(await reconciles(h.metrics), { repaired: 1 });
    const warn = h.logs.find((l) => l.msg === 'eBPF socket redirect drifted; repairing');
    assert.deepEqual(warn?.drift, ['kiam_getpeer6 is not attached to getpeername6']);
  });

  test('a config someone rewrote is written back', async () => {
    const h = setup();
    h.runner
      .expect(READ, withConfig(captured.inSync, { ...WANTED, port: 9999 }))
      .expect(WRITE)
      .expect(READ, captured.inSync);
    assert.equal(await h.interceptor.check(), 'repaired');
    h.runner.script.assertDone();
  });

  test('after a new load (an upgrade): the new programs attached, then configured, and only then the old ones detached', async () => {
    const h = setup();
    // The cookie is known from the install.
    h.runner.expect(READ, captured.inSync);
    assert.equal(await h.interceptor.check(), 'in-sync');
    const newOnes = [
      { id: RELOADED_IDS.connect4, attachType: 'cgroup_inet4_connect', name: 'kiam_connect4' },
      { id: RELOADED_IDS.connect6, attachType: 'cgroup_inet6_connect', name: 'kiam_connect6' },
      { id: RELOADED_IDS.getpeername4, attachType: 'cgroup_inet4_getpeername', name: 'kiam_getpeer4' },
      { id: RELOADED_IDS.getpeername6, attachType: 'cgroup_inet6_getpeername', name: 'kiam_getpeer6' },
    ];
    const after = withConfig(newOnes.reduce(withAttached, withoutAttached(captured.reloaded, IDS.connect4, IDS.connect6, IDS.getpeername4, IDS.getpeername6)), WANTED);
    h.runner
      .expect(READ, captured.reloaded)
      .expectAll(ATTACH_ALL)
      .expect(WRITE)
      .expect(detach('connect4', IDS.connect4))
      .expect(detach('connect6', IDS.connect6))
      .expect(detach('getpeername4', IDS.getpeername4))
      .expect(detach('getpeername6', IDS.getpeername6))
      .expect(READ, after);
    assert.equal(await h.interceptor.check(), 'repaired');
    h.runner.script.assertDone();
    assert.ok(!h.runner.log.some((c) => c.includes(`id ${IDS.foreign}`)), 'the foreign program stays');
    // Never a moment where only unconfigured programs of ours are attached: the old ones go after the write.
    const log = h.runner.log.slice(1);
    assert.ok(log.indexOf('write') < log.findIndex((c) => c.includes('cgroup detach')), log.join('\n'));
    assert.deepEqual(h.runner.writes, [WANTED]);
  });

  test('a pin deleted: reload; the old programs keep intercepting until the new ones are configured', async () => {
    const h = setup();
    h.runner.expect(READ, captured.inSync);
    await h.interceptor.check();
    const loadedBeside = withConfig(withoutAttached(captured.reloaded, IDS.foreign), { ...WANTED, hostIp4: null });
    h.runner
      .expect(READ, captured.missingPin)
      .expectAll(LOAD)
      .expect(WRITE)
      .expect(READ, loadedBeside)
      .expectAll(ATTACH_ALL)
      .expect(WRITE)
      .expect(detach('connect4', IDS.connect4))
      .expect(detach('connect6', IDS.connect6))
      .expect(detach('getpeername4', IDS.getpeername4))
      .expect(detach('getpeername6', IDS.getpeername6))
      .expect(
        READ,
        withConfig(
          [
            { id: RELOADED_IDS.connect4, attachType: 'cgroup_inet4_connect', name: 'kiam_connect4' },
            { id: RELOADED_IDS.connect6, attachType: 'cgroup_inet6_connect', name: 'kiam_connect6' },
            { id: RELOADED_IDS.getpeername4, attachType: 'cgroup_inet4_getpeername', name: 'kiam_getpeer4' },
            { id: RELOADED_IDS.getpeername6, attachType: 'cgroup_inet6_getpeername', name: 'kiam_getpeer6' },
          ].reduce(withAttached, withoutAttached(captured.reloaded, IDS.connect4, IDS.connect6, IDS.getpeername4, IDS.getpeername6)),
          WANTED,
        ),
      );
    assert.equal(await h.interceptor.check(), 'repaired');
    h.runner.script.assertDone();
    assert.deepEqual(h.runner.writes.at(-1), WANTED);
    const log = h.runner.log.slice(1);
    assert.ok(log.lastIndexOf('write') < log.findIndex((c) => c.includes('cgroup detach')), log.join('\n'));
  });

  test('an error (the cgroup cannot be read): rejects, counted as error, present false', async () => {
    const h = setup();
    h.runner.expect(READ, captured.inSync);
    await h.interceptor.check();
    assert.equal(h.interceptor.present, true);
    h.runner.expect(READ, captured.noCgroup);
    await assert.rejects(h.interceptor.check(), /cannot read the cgroup's programs: can't open cgroup/);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1, error: 1 });
    assert.equal(h.interceptor.present, false);
    assert.equal(await present(h.metrics), 0);
  });

  test('bpftool missing (exit 127): a clear error', async () => {
    const h = setup();
    h.runner.expect(READ, { code: 127, stderr: 'spawn bpftool ENOENT' });
    await assert.rejects(h.interceptor.check(), /bpftool is not installed/);
  });
});

describe('the timer', () => {
  test('start() re-checks every interval, errors do not stop it, stop() ends it', async () => {
    const h = setup();
    h.runner.expect(READ, captured.inSync);
    h.interceptor.start();
    h.interceptor.start();
    assert.equal(h.clock.timers, 1, 'start() twice is one timer');
    await h.clock.advance(INTERVAL_MS - 1);
    assert.equal(h.runner.script.calls.length, 0, 'nothing before the interval');
    await h.clock.advance(1);
    assert.equal(h.runner.script.calls.length, 1);

    h.runner.expect(READ, captured.noCgroup);
    await h.clock.advance(INTERVAL_MS);
    assert.ok(h.logs.some((l) => l.level === 50 && /check failed; retrying on the next tick/.test(String(l.msg))));

    h.runner.expect(READ, withoutAttached(captured.inSync, IDS.connect4)).expect(attach('connect4', 'kiam_connect4')).expect(WRITE).expect(READ, captured.inSync);
    await h.clock.advance(INTERVAL_MS);
    assert.deepEqual(await reconciles(h.metrics), { 'in-sync': 1, error: 1, repaired: 1 });
    assert.equal(h.interceptor.present, true);

    await h.interceptor.stop();
    assert.equal(h.clock.timers, 0);
    await h.clock.advance(INTERVAL_MS * 5);
    h.runner.script.assertDone();
  });

  test('stop() waits for a check in progress', async () => {
    const h = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: CommandRunner = {
      run: async (argv, options) => {
        await gate;
        return h.runner.run(argv, options);
      },
    };
    const interceptor = new EbpfInterceptor({ runner: slow, clock: h.clock, metrics: h.metrics, logger: pino({ level: 'silent' }), spec: SPEC, object: OBJECT, intervalMs: INTERVAL_MS });
    h.runner.expect(READ, captured.inSync);
    interceptor.start();
    await h.clock.advance(INTERVAL_MS);
    let stopped = false;
    const stopping = interceptor.stop().then(() => (stopped = true));
    await h.clock.advance(0);
    assert.equal(stopped, false);
    release();
    await stopping;
    assert.equal(interceptor.present, true);
    assert.equal(h.clock.timers, 0);
    h.runner.script.assertDone();
  });
});

describe('remove', () => {
  test('detaches only kiam_* programs (a foreign one stays), deletes the pins, present false', async () => {
    const h = setup();
    h.runner
      .expect(READ, captured.foreign)
      .expect(detach('connect4', IDS.connect4))
      .expect(detach('connect6', IDS.connect6))
      .expect(detach('getpeername4', IDS.getpeername4))
      .expect(detach('getpeername6', IDS.getpeername6))
      .expect(['rm', '-rf', PINS]);
    assert.equal(await h.interceptor.remove(), true);
    h.runner.script.assertDone();
    assert.ok(!h.runner.log.some((c) => c.includes(String(IDS.foreign))));
    assert.equal(h.interceptor.present, false);
    assert.equal(await present(h.metrics), 0);
  });

  test('removeEbpf with the paths alone; nothing there → false, and it is idempotent', async () => {
    const runner = new BpftoolRecorder();
    runner.expect(READ, withAttached(captured.empty, { id: IDS.foreign, attachType: 'cgroup_inet4_connect', name: 'foreign_c4' })).expect(['rm', '-rf', PINS]);
    assert.equal(await removeEbpf(runner, { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }, pino({ level: 'silent' })), false);
    runner.script.assertDone();
  });

  test('pins left without attachments (a crash between load and attach) are still removed, and reported', async () => {
    const runner = new BpftoolRecorder();
    runner.expect(READ, captured.loaded).expect(['rm', '-rf', PINS]);
    assert.equal(await removeEbpf(runner, { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }, pino({ level: 'silent' })), true);
  });

  test('a failed detach stops the removal with bpftool’s error', async () => {
    const runner = new BpftoolRecorder();
    runner.expect(READ, captured.inSync).expect(detach('connect4', IDS.connect4), { code: 255, stderr: 'Error: failed to detach program\n' });
    await assert.rejects(removeEbpf(runner, { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }, pino({ level: 'silent' })), /failed to detach program/);
  });
});

describe('status', () => {
  test('with the flags: what is attached (foreign included), the pins, the config, in sync', async () => {
    const runner = new BpftoolRecorder();
    runner.expect(READ, captured.foreign);
    const s = await readEbpfStatus(runner, SPEC);
    assert.equal(s.inSync, true);
    assert.deepEqual(s.drift, []);
    assert.deepEqual(s.attached.map((a) => a.name), ['kiam_connect4', 'foreign_c4', 'kiam_connect6', 'kiam_getpeer4', 'kiam_getpeer6']);
    assert.deepEqual(s.pinned, { connect4: IDS.connect4, connect6: IDS.connect6, getpeername4: IDS.getpeername4, getpeername6: IDS.getpeername6 });
    assert.deepEqual(s.config, { hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', port: 8181, hostNetnsCookie: '3' });
    assert.deepEqual(s.stats, { redirect4: 1, redirect6: 0, redirect6Mapped: 0, hostSkipped: 0 });
    assert.equal(s.pinDir, PINS);
  });

  test('with the flags: another host IP is drift', async () => {
    const runner = new BpftoolRecorder();
    runner.expect(READ, captured.inSync);
    const s = await readEbpfStatus(runner, { ...SPEC, hostIp: '10.0.0.6' });
    assert.equal(s.inSync, false);
    assert.deepEqual(s.drift, ['kiam_config differs from the wanted configuration']);
  });

  test('without flags: in sync when all four of ours are attached and every pin is there', async () => {
    const paths = { cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS };
    for (const [result, inSync] of [[captured.inSync, true], [captured.missingPin, false], [withoutAttached(captured.inSync, IDS.connect6), false], [captured.empty, false]] as const) {
      const runner = new BpftoolRecorder();
      runner.expect(READ, result);
      assert.equal((await readEbpfStatus(runner, paths)).inSync, inSync);
    }
  });

  test('the interceptor’s status() uses the cookie it learned', async () => {
    const h = setup();
    h.runner.expect(READ, captured.inSync).expect(READ, captured.inSync);
    await h.interceptor.check();
    assert.equal((await h.interceptor.status()).inSync, true);
  });
});
