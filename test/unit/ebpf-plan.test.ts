/**
 * The pure half of the eBPF socket redirect (src/netfilter/ebpf/plan.ts): the config map's bytes against struct
 * kiam_config in kiam.bpf.c, the read batch and its parser on real bpftool output (test/fakes/bpftool-output.ts),
 * the comparison of live and wanted, and the kernel support checks.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import {
  checkSupport,
  CONFIG_SIZE,
  configUpdateArgs,
  decodeConfig,
  encodeConfig,
  fsTypeAt,
  ip6Bytes,
  kernelVersion,
  layout,
  parseMountInfo,
  parseReadBatch,
  plan,
  renderReadBatch,
  wantedConfig,
  type LiveState,
  type MapConfig,
  type MountInfo,
} from '../../src/netfilter/ebpf/plan.ts';
import * as captured from '../fakes/bpftool-output.ts';
import { CONFIG_MAP_ID, FEATURES, FIXTURE_BPFFS, FIXTURE_CGROUP, FIXTURE_ROOT, IDS, RELOADED_CONFIG_MAP_ID, RELOADED_IDS, withAttached, withConfig, withoutAttached } from '../fakes/bpftool-output.ts';

const SPEC = { hostIp: '10.0.0.5', hostIpv6: '2001:db8::5', port: 8181, cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS };
/** What the in-sync capture holds: the node's netns cookie was learned as 3 (init_net on the capturing machine). */
const WANTED = wantedConfig(SPEC, 3n);
const OFF: MapConfig = { hostIp4: null, port: 0, hostIp6: null, hostNetnsCookie: 0n, probeIp4: null, probePort: 0, learnedCookie: 0n };

const parse = (r: { stdout: string; stderr: string }) => parseReadBatch(r.stdout, r.stderr);

/** Byte offsets and size of each member of struct kiam_config, computed from the C source with natural alignment. */
function structLayout(): { size: number; offsets: Record<string, { offset: number; size: number }> } {
  const source = readFileSync(new URL('../../src/netfilter/ebpf/kiam.bpf.c', import.meta.url), 'utf8');
  const body = /struct kiam_config \{([^}]*)\};/.exec(source)?.[1];
  assert.ok(body, 'struct kiam_config is in kiam.bpf.c');
  const offsets: Record<string, { offset: number; size: number }> = {};
  let offset = 0;
  let align = 1;
  for (const line of body.split('\n')) {
    const m = /^\s*__u(32|64) (\w+)(?:\[(\d+)\])?;/.exec(line);
    if (!m) continue;
    const width = Number(m[1]) / 8;
    const count = m[3] ? Number(m[3]) : 1;
    offset = Math.ceil(offset / width) * width;
    align = Math.max(align, width);
    offsets[m[2]!] = { offset, size: width * count };
    offset += width * count;
  }
  return { size: Math.ceil(offset / align) * align, offsets };
}

describe('the config map layout', () => {
  test('struct kiam_config in kiam.bpf.c is the 48-byte layout plan.ts encodes', () => {
    const { size, offsets } = structLayout();
    assert.equal(size, CONFIG_SIZE);
    assert.deepEqual(offsets, {
      host_ip4: { offset: 0, size: 4 },
      port: { offset: 4, size: 4 },
      host_ip6: { offset: 8, size: 16 },
      host_netns_cookie: { offset: 24, size: 8 },
      probe_ip4: { offset: 32, size: 4 },
      probe_port: { offset: 36, size: 4 },
      learned_cookie: { offset: 40, size: 8 },
    });
  });

  test('every field lands at its offset: addresses in network order, port and cookies little-endian', () => {
    const bytes = encodeConfig({
      hostIp4: '10.1.2.3',
      port: 0x1ff5,
      hostIp6: '2001:db8:aa:bb:cc:dd:ee:ff',
      hostNetnsCookie: 0x0102030405060708n,
      probeIp4: '127.9.8.7',
      probePort: 0xbeef,
      learnedCookie: 0x1112131415161718n,
    });
    assert.equal(bytes.length, 48);
    const at = (offset: number, size: number) => bytes.slice(offset, offset + size);
    assert.deepEqual(at(0, 4), [10, 1, 2, 3]);
    assert.deepEqual(at(4, 4), [0xf5, 0x1f, 0, 0]);
    assert.deepEqual(at(8, 16), [0x20, 0x01, 0x0d, 0xb8, 0x00, 0xaa, 0x00, 0xbb, 0x00, 0xcc, 0x00, 0xdd, 0x00, 0xee, 0x00, 0xff]);
    assert.deepEqual(at(24, 8), [8, 7, 6, 5, 4, 3, 2, 1]);
    assert.deepEqual(at(32, 4), [127, 9, 8, 7]);
    assert.deepEqual(at(36, 4), [0xef, 0xbe, 0, 0]);
    assert.deepEqual(at(40, 8), [0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
  });

  test('bpftool, reading the struct through the object’s BTF, sees the fields the agent wrote (real captures)', () => {
    for (const [name, result] of [['attachedOff', captured.attachedOff], ['probed', captured.probed], ['inSync', captured.inSync]] as const) {
      const entries = JSON.parse(result.stdout) as Array<{ command?: string[]; output: { value: string[]; formatted: { value: Record<string, number | number[]> } } }>;
      const lookup = entries.find((e) => e.command?.[1] === 'lookup')!;
      const bytes = lookup.output.value.map((b) => parseInt(b, 16));
      const config = decodeConfig(bytes);
      assert.deepEqual(encodeConfig(config), bytes, `${name}: decode then encode gives the same bytes`);
      const le32 = (o: number) => ((bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16) | (bytes[o + 3]! << 24)) >>> 0);
      const f = lookup.output.formatted.value;
      assert.equal(f.host_ip4, le32(0), name);
      assert.equal(f.port, config.port, name);
      assert.deepEqual(f.host_ip6, [le32(8), le32(12), le32(16), le32(20)], name);
      assert.equal(BigInt(f.host_netns_cookie as number), config.hostNetnsCookie, name);
      assert.equal(f.probe_ip4, le32(32), name);
      assert.equal(f.probe_port, config.probePort, name);
      assert.equal(BigInt(f.learned_cookie as number), config.learnedCookie, name);
    }
    assert.deepEqual(parse(captured.inSync).config, { ...WANTED });
    assert.equal(parse(captured.probed).config?.learnedCookie, 3n);
  });
});

describe('encodeConfig / decodeConfig', () => {
  const base: MapConfig = { hostIp4: '10.0.1.23', port: 8181, hostIp6: null, hostNetnsCookie: 0n, probeIp4: null, probePort: 0, learnedCookie: 0n };

  test('round trip: IPv4 only, interception off, a probe in progress', () => {
    for (const c of [base, OFF, { ...base, hostIp4: null, probeIp4: '127.200.3.254', probePort: 65535, learnedCookie: 4096n }]) {
      assert.deepEqual(decodeConfig(encodeConfig(c)), c);
    }
  });

  test('round trip: cookies above 2^32 and up to 2^64 - 1', () => {
    for (const cookie of [2n ** 32n, 2n ** 32n + 1n, 0x1234_5678_9abc_def0n, 2n ** 64n - 1n]) {
      const c = { ...base, hostNetnsCookie: cookie, learnedCookie: cookie - 1n };
      assert.deepEqual(decodeConfig(encodeConfig(c)), c);
    }
  });

  test('IPv6 in every text form decodes to its RFC 5952 form', () => {
    for (const [given, canonical] of [
      ['2001:db8::5', '2001:db8::5'],
      ['2001:0db8:0000:0000:0000:0000:0000:0005', '2001:db8::5'],
      ['2001:DB8::A:5', '2001:db8::a:5'],
      ['fd00:ec2::254', 'fd00:ec2::254'],
      ['2600:1f18:abc:1::', '2600:1f18:abc:1::'],
      ['::2', '::2'],
      ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2:3:4:5:6'],
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
      ['::ffff:10.0.0.5', '::ffff:a00:5'],
      ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
    ] as const) {
      const decoded = decodeConfig(encodeConfig({ ...base, hostIp6: given })).hostIp6;
      assert.equal(decoded, canonical, given);
      assert.deepEqual(ip6Bytes(decoded), ip6Bytes(given), given);
    }
  });

  test('ip6Bytes: an embedded IPv4 tail and a zone ID', () => {
    assert.deepEqual(ip6Bytes('::ffff:169.254.169.254'), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254]);
    assert.deepEqual(ip6Bytes('fe80::1%eth0'), [0xfe, 0x80, ...new Array<number>(13).fill(0), 1]);
    assert.deepEqual(ip6Bytes(null), new Array<number>(16).fill(0));
  });

  test('bad addresses are refused before any bytes are written', () => {
    assert.throws(() => encodeConfig({ ...base, hostIp4: '10.0.0' }), /not an IPv4 address: 10\.0\.0/);
    assert.throws(() => encodeConfig({ ...base, hostIp6: '2001:db8::1::2' }), /not an IPv6 address/);
  });

  test('a value of another size (an object of another version) is refused', () => {
    assert.throws(() => decodeConfig(new Array<number>(40).fill(0)), /40 bytes, expected 48/);
  });

  test('configUpdateArgs: key 0, then 48 value bytes in hex', () => {
    const args = configUpdateArgs('/sys/fs/bpf/kiam/maps/kiam_config', { ...base, hostNetnsCookie: 3n });
    assert.deepEqual(args.slice(0, 13), ['map', 'update', 'pinned', '/sys/fs/bpf/kiam/maps/kiam_config', 'key', 'hex', '00', '00', '00', '00', 'value', 'hex', '0a']);
    assert.equal(args.length, 12 + 48);
    assert.deepEqual(args.slice(12, 20), ['0a', '00', '01', '17', 'f5', '1f', '00', '00']);
    assert.equal(args[12 + 24], '03');
    assert.ok(args.slice(12).every((b) => /^[0-9a-f]{2}$/.test(b)));
  });

  test('wantedConfig: the host addresses, the node’s cookie, no probe; an IPv6 address in any spelling compares equal', () => {
    assert.deepEqual(wantedConfig({ ...SPEC, hostIpv6: undefined }, 0n), { ...base, hostIp4: '10.0.0.5', hostIp6: null });
    const loud = wantedConfig({ ...SPEC, hostIpv6: '2001:0DB8:0:0::5' }, 3n);
    assert.equal(plan(parse(captured.inSync), loud).writeConfig, false, 'the map holds the same address');
  });
});

describe('layout and the read batch', () => {
  test('our pins live in <bpffs>/kiam', () => {
    const l = layout('/sys/fs/bpf/');
    assert.equal(l.dir, '/sys/fs/bpf/kiam');
    assert.equal(l.prog('kiam_connect4'), '/sys/fs/bpf/kiam/progs/kiam_connect4');
    assert.equal(l.map('kiam_config'), '/sys/fs/bpf/kiam/maps/kiam_config');
  });

  test('renderReadBatch: the cgroup first, then every pin, one command a line', () => {
    assert.equal(
      renderReadBatch({ cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf' }),
      [
        'cgroup show /sys/fs/cgroup',
        'prog show pinned /sys/fs/bpf/kiam/progs/kiam_connect4',
        'prog show pinned /sys/fs/bpf/kiam/progs/kiam_connect6',
        'prog show pinned /sys/fs/bpf/kiam/progs/kiam_getpeer4',
        'prog show pinned /sys/fs/bpf/kiam/progs/kiam_getpeer6',
        'map show pinned /sys/fs/bpf/kiam/maps/kiam_config',
        'map lookup pinned /sys/fs/bpf/kiam/maps/kiam_config key hex 00 00 00 00',
        'map dump pinned /sys/fs/bpf/kiam/maps/kiam_stats',
        '',
      ].join('\n'),
    );
  });

  test('the fixtures were captured with exactly this batch', () => {
    const entries = JSON.parse(captured.inSync.stdout) as Array<{ command?: string[] }>;
    const commands = entries.filter((e) => e.command).map((e) => e.command!.join(' '));
    assert.deepEqual(commands, renderReadBatch({ cgroupRoot: FIXTURE_CGROUP, bpffs: FIXTURE_BPFFS }).trim().split('\n'));
  });
});

describe('parseReadBatch on real bpftool 7.1 output', () => {
  const OURS = [
    { id: IDS.connect4, hook: 'connect4', name: 'kiam_connect4', flags: 'multi' },
    { id: IDS.connect6, hook: 'connect6', name: 'kiam_connect6', flags: 'multi' },
    { id: IDS.getpeername4, hook: 'getpeername4', name: 'kiam_getpeer4', flags: 'multi' },
    { id: IDS.getpeername6, hook: 'getpeername6', name: 'kiam_getpeer6', flags: 'multi' },
  ];
  const PINNED = {
    connect4: { id: IDS.connect4, mapIds: [246, 247, 245] },
    connect6: { id: IDS.connect6, mapIds: [246, 247, 245] },
    getpeername4: { id: IDS.getpeername4, mapIds: [245] },
    getpeername6: { id: IDS.getpeername6, mapIds: [245] },
  };

  test('nothing attached, nothing pinned: `"output":}` is read as no programs, the missing pin is the error', () => {
    assert.match(captured.empty.stdout, /"output":\}/);
    assert.deepEqual(parse(captured.empty), {
      attached: [],
      pinned: {},
      configMapId: null,
      config: null,
      stats: null,
      error: `bpf obj get (${FIXTURE_BPFFS}/kiam/progs/kiam_connect4): No such file or directory`,
    });
  });

  test('loaded, not attached: every pin, the zeroed config, the counters', () => {
    const live = parse(captured.loaded);
    assert.deepEqual(live.attached, []);
    assert.deepEqual(live.pinned, PINNED);
    assert.equal(live.configMapId, CONFIG_MAP_ID);
    assert.deepEqual(live.config, OFF);
    assert.deepEqual(live.stats, { redirect4: 0, redirect6: 0, redirect6Mapped: 0, hostSkipped: 0 });
    assert.equal(live.error, null, 'the trailing "reading batch file failed" entry has no command and is not an error of ours');
  });

  test('in sync: the four programs attached with multi, the config, a redirect counted', () => {
    const live = parse(captured.inSync);
    assert.equal(captured.inSync.code, 255, 'bpftool 7.1 exits 255 even when every command of a batch read from stdin succeeded');
    assert.deepEqual(live.attached, OURS);
    assert.deepEqual(live.pinned, PINNED);
    assert.deepEqual(live.config, WANTED);
    assert.deepEqual(live.stats, { redirect4: 1, redirect6: 0, redirect6Mapped: 0, hostSkipped: 0 });
    assert.equal(live.error, null);
  });

  test('a foreign program beside ours is listed, with its own name', () => {
    const live = parse(captured.foreign);
    assert.deepEqual(live.attached, [OURS[0], { id: IDS.foreign, hook: 'connect4', name: 'foreign_c4', flags: 'multi' }, ...OURS.slice(1)]);
  });

  test('a missing pin: what came before it is kept, the rest is unknown, the error names the pin', () => {
    const live = parse(captured.missingPin);
    assert.deepEqual(Object.keys(live.pinned), ['connect4', 'connect6', 'getpeername4']);
    assert.equal(live.configMapId, null);
    assert.equal(live.config, null);
    assert.match(live.error ?? '', /kiam_getpeer6\): No such file or directory/);
  });

  test('after a new load, the attached programs are older than the pinned ones', () => {
    const live = parse(captured.reloaded);
    assert.deepEqual(live.attached.map((a) => a.id), [IDS.connect4, IDS.foreign, IDS.connect6, IDS.getpeername4, IDS.getpeername6]);
    assert.deepEqual(Object.values(live.pinned).map((p) => p!.id), Object.values(RELOADED_IDS));
    assert.equal(live.configMapId, RELOADED_CONFIG_MAP_ID);
  });

  test('a cgroup that cannot be read throws with bpftool’s words', () => {
    assert.throws(() => parse(captured.noCgroup), new RegExp(`cannot read the cgroup's programs: can't open cgroup ${FIXTURE_CGROUP}`));
    assert.throws(() => parse(captured.v1Cgroup), /can't query bpf programs attached to \/sys\/fs\/cgroup\/cpu/);
  });

  test('no JSON at all (bpftool too old for -j batch, or killed) throws with the first line of stderr', () => {
    assert.throws(() => parseReadBatch('', 'Error: bpftool: unknown option -- j\nmore\n'), /bpftool printed no JSON: Error: bpftool: unknown option -- j$/);
    assert.throws(() => parseReadBatch('[{"command":["cgroup"', ''), /bpftool printed no JSON/);
  });

  test('a config value of another size (an older object still pinned) is unreadable, which plan() answers with a reload', () => {
    const entries = JSON.parse(captured.inSync.stdout) as Array<{ command?: string[]; output: { value?: string[] } }>;
    entries.find((e) => e.command?.[1] === 'lookup')!.output = { value: new Array<string>(40).fill('0x00') };
    const live = parseReadBatch(JSON.stringify(entries));
    assert.equal(live.config, null);
    assert.match(live.error ?? '', /40 bytes, expected 48/);
    const p = plan(live, WANTED);
    assert.equal(p.load, true);
    assert.deepEqual(p.detach.map((d) => d.id), Object.values(IDS).filter((id) => id !== IDS.foreign));
  });
});

describe('plan', () => {
  const nothing = (p: ReturnType<typeof plan>) => !p.load && p.attach.length === 0 && p.detach.length === 0 && !p.writeConfig;

  test('a fresh node: load, attach all four, write the config', () => {
    const p = plan(parse(captured.empty), WANTED);
    assert.equal(p.load, true);
    assert.deepEqual(p.attach, ['connect4', 'connect6', 'getpeername4', 'getpeername6']);
    assert.deepEqual(p.detach, []);
    assert.equal(p.writeConfig, true);
    assert.match(p.drift.join('\n'), /pinned program\(s\) missing: kiam_connect4, kiam_connect6, kiam_getpeer4, kiam_getpeer6/);
  });

  test('loaded but not attached: attach all four and write the config, no reload', () => {
    const p = plan(parse(captured.loaded), WANTED);
    assert.equal(p.load, false);
    assert.deepEqual(p.attach, ['connect4', 'connect6', 'getpeername4', 'getpeername6']);
    assert.equal(p.writeConfig, true);
  });

  test('in sync: nothing to do, no drift; a foreign program changes nothing', () => {
    for (const result of [captured.inSync, captured.foreign]) {
      const p = plan(parse(result), WANTED);
      assert.ok(nothing(p), JSON.stringify(p));
      assert.deepEqual(p.drift, []);
    }
  });

  test('one hook detached: attach only it', () => {
    const p = plan(parse(withoutAttached(captured.foreign, IDS.getpeername4)), WANTED);
    assert.deepEqual([p.load, p.attach, p.detach, p.writeConfig], [false, ['getpeername4'], [], false]);
    assert.deepEqual(p.drift, ['kiam_getpeer4 is not attached to getpeername4']);
  });

  test('a stale kiam_ program (an older load) beside the pinned one: detach it, never the foreign one', () => {
    const stale = { id: 1999, attachType: 'cgroup_inet4_connect', name: 'kiam_connect4' };
    const p = plan(parse(withAttached(captured.foreign, stale)), WANTED);
    assert.deepEqual(p.attach, []);
    assert.deepEqual(p.detach, [{ id: 1999, hook: 'connect4', name: 'kiam_connect4', flags: 'multi' }]);
    assert.deepEqual(p.drift, ['stale kiam_connect4 (id 1999) attached to connect4']);
  });

  test('after a new load: attach the four new programs, detach the four old ones, keep the foreign one', () => {
    const p = plan(parse(captured.reloaded), WANTED);
    assert.equal(p.load, false);
    assert.deepEqual(p.attach, ['connect4', 'connect6', 'getpeername4', 'getpeername6']);
    assert.deepEqual(p.detach.map((d) => d.id), [IDS.connect4, IDS.connect6, IDS.getpeername4, IDS.getpeername6]);
    assert.ok(!p.detach.some((d) => !d.name.startsWith('kiam_')));
    assert.equal(p.writeConfig, true);
  });

  test('a foreign program is never in detach, whatever its hook, even one whose name only resembles ours', () => {
    const withForeigners = [
      { id: 3001, attachType: 'cgroup_inet6_connect', name: 'cilium_sock6_co' },
      { id: 3002, attachType: 'cgroup_inet4_getpeername', name: 'calico_getpeer' },
      { id: 3003, attachType: 'cgroup_inet4_connect', name: 'kiamconnect4' },
      { id: 3004, attachType: 'cgroup_inet4_connect', name: '' },
    ].reduce(withAttached, captured.reloaded);
    const p = plan(parse(withForeigners), WANTED);
    assert.deepEqual(p.detach.map((d) => d.id).sort(), [IDS.connect4, IDS.connect6, IDS.getpeername4, IDS.getpeername6].sort());
  });

  test('the config differs: write it (and only that)', () => {
    for (const differs of [{ hostIp4: '10.0.0.6' }, { hostIp4: null }, { port: 8282 }, { hostIp6: null }, { hostNetnsCookie: 4n }, { probeIp4: '127.1.2.3', probePort: 4000 }]) {
      const p = plan(parse(withConfig(captured.inSync, { ...WANTED, ...differs })), WANTED);
      assert.deepEqual([p.load, p.attach, p.detach, p.writeConfig], [false, [], [], true], Object.keys(differs).join());
      assert.deepEqual(p.drift, ['kiam_config differs from the wanted configuration']);
    }
  });

  test('the program’s own learned_cookie is not drift', () => {
    assert.ok(nothing(plan(parse(withConfig(captured.inSync, { ...WANTED, learnedCookie: 3n })), WANTED)));
  });

  test('pinned programs that do not use the pinned config map (pins of two loads mixed): reload', () => {
    const live = parse(captured.inSync);
    const mixed: LiveState = { ...live, pinned: { ...live.pinned, connect6: { id: 4000, mapIds: [300, 301, 245] } } };
    const p = plan(mixed, WANTED);
    assert.equal(p.load, true);
    assert.deepEqual(p.drift, ['pinned programs do not use the pinned kiam_config']);
    assert.deepEqual(p.attach, ['connect4', 'connect6', 'getpeername4', 'getpeername6'], 'after a load every hook gets the new program');
    assert.deepEqual(p.detach.map((d) => d.id), [IDS.connect4, IDS.connect6, IDS.getpeername4, IDS.getpeername6], 'and every old one goes');
    // The getpeername programs do not read the config map: theirs is never compared.
    const getpeer: LiveState = { ...live, pinned: { ...live.pinned, getpeername6: { id: 4001, mapIds: [999] } } };
    assert.equal(plan(getpeer, WANTED).load, false);
  });

  test('a pin missing or the config map unreadable: reload', () => {
    assert.equal(plan(parse(captured.missingPin), WANTED).load, true);
    const live = parse(captured.inSync);
    assert.equal(plan({ ...live, configMapId: null }, WANTED).load, true);
    assert.match(plan({ ...live, config: null }, WANTED).drift.join(), /pinned map kiam_config missing or unreadable/);
  });
});

// A real /proc/self/mountinfo of a systemd hybrid host (cgroup v1 controllers, cgroup2 under unified), with a
// private bpffs and cgroup2 mounted under a temporary directory (renamed to FIXTURE_ROOT). Note /dev/pts twice.
const MOUNTINFO = `21 26 0:20 / /proc rw,relatime - proc proc rw
22 26 0:21 / /sys rw,relatime - sysfs sysfs rw
23 26 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334808k,nr_inodes=3083702,mode=755
24 23 0:22 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683748k
25 23 0:23 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
28 25 0:25 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
44 26 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
45 26 0:39 / ${FIXTURE_ROOT}/bpffs rw,relatime - bpf bpf rw
46 26 0:37 / ${FIXTURE_ROOT}/cg rw,relatime - cgroup2 none rw
47 44 0:4 net:[4026532173] /run/netns/kx-node rw shared:2 - nsfs nsfs rw
`;

describe('parseMountInfo and fsTypeAt', () => {
  const mounts = parseMountInfo(MOUNTINFO);

  test('mount point and type of every line, optional fields (shared:N) skipped', () => {
    assert.equal(mounts.length, 16);
    assert.deepEqual(mounts[0], { mountPoint: '/proc', fsType: 'proc' });
    assert.deepEqual(mounts.find((m) => m.mountPoint === '/run/netns'), { mountPoint: '/run/netns', fsType: 'ext4' });
    assert.deepEqual(mounts.find((m) => m.mountPoint === `${FIXTURE_ROOT}/cg`), { mountPoint: `${FIXTURE_ROOT}/cg`, fsType: 'cgroup2' });
    assert.deepEqual(mounts.at(-1), { mountPoint: '/run/netns/kx-node', fsType: 'nsfs' });
  });

  test('a mount point with a blank (octal \\040) is unescaped; junk lines are skipped', () => {
    assert.deepEqual(parseMountInfo('50 26 0:40 / /mnt/my\\040disk rw - ext4 /dev/vdb rw\n\nnot a mountinfo line\n'), [{ mountPoint: '/mnt/my disk', fsType: 'ext4' }]);
  });

  test('the deepest mount holding a path gives its type', () => {
    assert.equal(fsTypeAt(mounts, '/sys/fs/cgroup'), 'tmpfs');
    assert.equal(fsTypeAt(mounts, '/sys/fs/cgroup/'), 'tmpfs');
    assert.equal(fsTypeAt(mounts, '/sys/fs/cgroup/unified'), 'cgroup2');
    assert.equal(fsTypeAt(mounts, '/sys/fs/cgroup/unified/kubepods.slice'), 'cgroup2');
    assert.equal(fsTypeAt(mounts, '/sys/fs/cgroup/unifiedx'), 'tmpfs', 'a prefix of the name is not a parent');
    assert.equal(fsTypeAt(mounts, '/sys/fs/bpf'), 'sysfs', 'no bpffs there on this host');
    assert.equal(fsTypeAt(mounts, FIXTURE_BPFFS), 'bpf');
    assert.equal(fsTypeAt(mounts, FIXTURE_CGROUP), 'cgroup2');
    assert.equal(fsTypeAt(mounts, '/run/kiam/cgroupv2'), 'ext4');
    assert.equal(fsTypeAt([], '/anything'), undefined);
  });

  test('the same mount point mounted twice: the last one wins', () => {
    assert.equal(fsTypeAt([{ mountPoint: '/sys/fs/bpf', fsType: 'tmpfs' }, { mountPoint: '/sys/fs/bpf', fsType: 'bpf' }], '/sys/fs/bpf'), 'bpf');
  });
});

describe('checkSupport', () => {
  const GOOD_MOUNTS: MountInfo[] = [
    { mountPoint: '/', fsType: 'ext4' },
    { mountPoint: '/sys', fsType: 'sysfs' },
    { mountPoint: '/sys/fs/cgroup', fsType: 'cgroup2' },
    { mountPoint: '/sys/fs/bpf', fsType: 'bpf' },
  ];
  const good = { kernelRelease: '6.1.0-18-amd64', mounts: GOOD_MOUNTS, cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf', features: FEATURES };

  test('a supported node (the real feature probe): ok, nothing missing', () => {
    assert.deepEqual(checkSupport(good), { ok: true, missing: [], kernel: '6.1.0-18-amd64' });
  });

  test('kernel releases: 5.8 is the minimum (getpeername hooks)', () => {
    assert.deepEqual(kernelVersion('6.1.0-18-amd64'), [6, 1]);
    assert.deepEqual(kernelVersion('5.10.217-205.860.amzn2.x86_64'), [5, 10]);
    assert.deepEqual(kernelVersion('garbage'), [0, 0]);
    for (const ok of ['5.8.0', '5.10.0', '6.18.44-fc-v1272', '10.0.0']) assert.equal(checkSupport({ ...good, kernelRelease: ok }).ok, true, ok);
    for (const old of ['4.19.0-26-amd64', '5.4.0-1103-aws', '5.7.19', 'garbage']) {
      const s = checkSupport({ ...good, kernelRelease: old });
      assert.equal(s.ok, false, old);
      assert.deepEqual(s.missing, [`kernel ${old} is older than 5.8 (cgroup getpeername hooks); upgrade the node's kernel`]);
    }
  });

  test('cgroup v1 (a tmpfs at /sys/fs/cgroup), or nothing mounted: says so and how to fix it', () => {
    const mounts = parseMountInfo(MOUNTINFO);
    const s = checkSupport({ ...good, mounts, bpffs: FIXTURE_BPFFS });
    assert.deepEqual(s.missing, ['/sys/fs/cgroup is a tmpfs mount, not cgroup v2; run `kiam init` (it mounts cgroup2) or pass --cgroup-root']);
    assert.equal(checkSupport({ ...good, mounts, bpffs: FIXTURE_BPFFS, cgroupRoot: '/sys/fs/cgroup/unified' }).ok, true);
    const v1 = checkSupport({ ...good, mounts: [...GOOD_MOUNTS, { mountPoint: '/sys/fs/cgroup/cpu', fsType: 'cgroup' }], cgroupRoot: '/sys/fs/cgroup/cpu' });
    assert.match(v1.missing.join(), /\/sys\/fs\/cgroup\/cpu is a cgroup mount, not cgroup v2/);
    assert.match(checkSupport({ ...good, mounts: [] }).missing.join('\n'), /\/sys\/fs\/cgroup is not mounted, not cgroup v2/);
  });

  test('no bpffs at --bpffs', () => {
    const s = checkSupport({ ...good, mounts: GOOD_MOUNTS.filter((m) => m.fsType !== 'bpf') });
    assert.deepEqual(s.missing, ['no bpffs mounted at /sys/fs/bpf; run `kiam init` (it mounts one) or pass --bpffs']);
  });

  test('bpftool missing: says what to install and which capabilities the agent needs', () => {
    const { features: _unused, ...rest } = good;
    const s = checkSupport({ ...rest, bpftoolError: 'bpftool is not installed' });
    assert.equal(s.ok, false);
    assert.deepEqual(s.missing, [
      'bpftool cannot run: bpftool is not installed; install bpftool and give the agent CAP_SYS_ADMIN and CAP_NET_ADMIN',
    ]);
  });

  test('features lacking the program type or the helpers', () => {
    const noType = { ...FEATURES, program_types: { ...FEATURES.program_types, have_cgroup_sock_addr_prog_type: false } };
    assert.deepEqual(checkSupport({ ...good, features: noType }).missing, ['the kernel has no cgroup_sock_addr programs (CONFIG_CGROUP_BPF)']);
    const helpers = FEATURES.helpers.cgroup_sock_addr_available_helpers.filter((h) => h !== 'bpf_get_netns_cookie');
    const noCookie = { ...FEATURES, helpers: { cgroup_sock_addr_available_helpers: helpers } };
    assert.deepEqual(checkSupport({ ...good, features: noCookie }).missing, ['the kernel offers no bpf_get_netns_cookie to cgroup_sock_addr programs (needs 5.7)']);
    assert.equal(checkSupport({ ...good, features: {} }).missing.length, 1);
  });

  test('everything missing at once is listed at once', () => {
    const s = checkSupport({ kernelRelease: '4.14.0', mounts: [{ mountPoint: '/sys/fs/cgroup', fsType: 'tmpfs' }], cgroupRoot: '/sys/fs/cgroup', bpffs: '/sys/fs/bpf', bpftoolError: 'x' });
    assert.equal(s.missing.length, 4, s.missing.join('\n'));
  });
});
