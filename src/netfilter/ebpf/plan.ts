/**
 * Pure eBPF logic: the pinned layout under bpffs, the config map's byte layout (it must match struct kiam_config
 * in kiam.bpf.c), the bpftool batch that reads everything in one process, its parsing, the comparison of what is
 * live with what is wanted, and the kernel support checks. No I/O here.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** The four hooks, our program on each (names as the kernel keeps them: ≤ 15 characters), and bpftool's names. */
export const HOOKS = [
  { hook: 'connect4', prog: 'kiam_connect4', attachType: 'cgroup_inet4_connect' },
  { hook: 'connect6', prog: 'kiam_connect6', attachType: 'cgroup_inet6_connect' },
  { hook: 'getpeername4', prog: 'kiam_getpeer4', attachType: 'cgroup_inet4_getpeername' },
  { hook: 'getpeername6', prog: 'kiam_getpeer6', attachType: 'cgroup_inet6_getpeername' },
] as const;
export type Hook = (typeof HOOKS)[number]['hook'];
/** Every program of ours is named so; a program on our hooks without it is someone else's and is never touched. */
export const PROG_PREFIX = 'kiam_';
export const CONFIG_MAP = 'kiam_config';
export const STATS_MAP = 'kiam_stats';
/** sizeof(struct kiam_config). */
export const CONFIG_SIZE = 48;
const STATS = ['redirect4', 'redirect6', 'redirect6Mapped', 'hostSkipped'] as const;
export type Stats = Record<(typeof STATS)[number], number>;

export interface EbpfSpec {
  /** IPv4 address the agent listens on; connects to 169.254.169.254:80 go there. */
  hostIp: string;
  /** IPv6 address the agent listens on; without it fd00:ec2::254 goes to the v4-mapped host IP. */
  hostIpv6?: string;
  port: number;
  /** cgroup v2 directory the programs are attached to (the root in production). */
  cgroupRoot: string;
  /** A mounted bpffs; ours is the `kiam` directory in it. */
  bpffs: string;
}

export interface Layout {
  dir: string;
  progsDir: string;
  mapsDir: string;
  prog(name: string): string;
  map(name: string): string;
}

export function layout(bpffs: string): Layout {
  const dir = `${bpffs.replace(/\/+$/, '')}/kiam`;
  return { dir, progsDir: `${dir}/progs`, mapsDir: `${dir}/maps`, prog: (n) => `${dir}/progs/${n}`, map: (n) => `${dir}/maps/${n}` };
}

// ---------------------------------------------------------------------------------------------------
// The config map

export interface MapConfig {
  /** null: interception off. */
  hostIp4: string | null;
  port: number;
  hostIp6: string | null;
  /** 0n: the node is init_net. */
  hostNetnsCookie: bigint;
  probeIp4: string | null;
  probePort: number;
  learnedCookie: bigint;
}

function ip4Bytes(ip: string | null): number[] {
  if (ip === null) return [0, 0, 0, 0];
  if (!isIPv4(ip)) throw new Error(`not an IPv4 address: ${ip}`);
  return ip.split('.').map(Number);
}

/** The 16 bytes of an IPv6 address (RFC 4291 text forms, including an embedded IPv4 tail). */
export function ip6Bytes(ip: string | null): number[] {
  if (ip === null) return new Array<number>(16).fill(0);
  if (!isIPv6(ip)) throw new Error(`not an IPv6 address: ${ip}`);
  let text = ip.replace(/%.*$/, '');
  const tail = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (tail?.[1]) {
    const [a, b, c, d] = tail[1].split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, -tail[1].length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', rest] = text.split('::') as [string, string | undefined];
  const left = head ? head.split(':') : [];
  const right = rest === undefined ? [] : rest ? rest.split(':') : [];
  const groups = rest === undefined ? left : [...left, ...new Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return groups.flatMap((g) => {
    const v = parseInt(g, 16);
    return [v >> 8, v & 0xff];
  });
}

function ip6Text(bytes: readonly number[]): string | null {
  if (bytes.every((b) => b === 0)) return null;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

function u32le(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

function u64le(n: bigint): number[] {
  const out: number[] = [];
  for (let i = 0n; i < 8n; i++) out.push(Number((n >> (8n * i)) & 0xffn));
  return out;
}

/** struct kiam_config as bytes (x86-64 and arm64 are little-endian; addresses stay in network order). */
export function encodeConfig(c: MapConfig): number[] {
  return [
    ...ip4Bytes(c.hostIp4),
    ...u32le(c.port),
    ...ip6Bytes(c.hostIp6),
    ...u64le(c.hostNetnsCookie),
    ...ip4Bytes(c.probeIp4),
    ...u32le(c.probePort),
    ...u64le(c.learnedCookie),
  ];
}

export function decodeConfig(bytes: readonly number[]): MapConfig {
  if (bytes.length !== CONFIG_SIZE) throw new Error(`${CONFIG_MAP} value has ${bytes.length} bytes, expected ${CONFIG_SIZE}: an object of another version is loaded`);
  const u32 = (o: number) => ((bytes[o] ?? 0) | ((bytes[o + 1] ?? 0) << 8) | ((bytes[o + 2] ?? 0) << 16) | ((bytes[o + 3] ?? 0) << 24)) >>> 0;
  const u64 = (o: number) => BigInt(u32(o)) | (BigInt(u32(o + 4)) << 32n);
  const ip4 = (o: number) => (u32(o) === 0 ? null : bytes.slice(o, o + 4).join('.'));
  return {
    hostIp4: ip4(0),
    port: u32(4),
    hostIp6: ip6Text(bytes.slice(8, 24)),
    hostNetnsCookie: u64(24),
    probeIp4: ip4(32),
    probePort: u32(36),
    learnedCookie: u64(40),
  };
}

/** The argv tail of `bpftool map update pinned PATH key hex … value hex …` for the config entry. */
export function configUpdateArgs(path: string, c: MapConfig): string[] {
  return ['map', 'update', 'pinned', path, 'key', 'hex', '00', '00', '00', '00', 'value', 'hex', ...encodeConfig(c).map(hex)];
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/** The config the agent wants: interception to the host addresses, skipping the node's netns, no probe. */
export function wantedConfig(spec: EbpfSpec, hostNetnsCookie: bigint): MapConfig {
  // In the form decodeConfig gives back (RFC 5952), so that `2001:DB8:0::5` compares equal to what the map holds.
  const hostIp6 = spec.hostIpv6 ? ip6Text(ip6Bytes(spec.hostIpv6)) : null;
  return { hostIp4: spec.hostIp, port: spec.port, hostIp6, hostNetnsCookie, probeIp4: null, probePort: 0, learnedCookie: 0n };
}

/** Equal in everything the agent sets (the program's own learned_cookie is not compared). */
export function sameConfig(a: MapConfig, b: MapConfig): boolean {
  return (
    a.hostIp4 === b.hostIp4 &&
    a.port === b.port &&
    a.hostIp6 === b.hostIp6 &&
    a.hostNetnsCookie === b.hostNetnsCookie &&
    a.probeIp4 === b.probeIp4 &&
    a.probePort === b.probePort
  );
}

// ---------------------------------------------------------------------------------------------------
// Reading the live state: one `bpftool -j batch file -`

/** The batch input; it stops at the first failing command, so the cgroup comes first and the pins after. */
export function renderReadBatch(spec: Pick<EbpfSpec, 'cgroupRoot' | 'bpffs'>): string {
  const l = layout(spec.bpffs);
  return [
    `cgroup show ${spec.cgroupRoot}`,
    ...HOOKS.map((h) => `prog show pinned ${l.prog(h.prog)}`),
    `map show pinned ${l.map(CONFIG_MAP)}`,
    `map lookup pinned ${l.map(CONFIG_MAP)} key hex 00 00 00 00`,
    `map dump pinned ${l.map(STATS_MAP)}`,
    '',
  ].join('\n');
}

export interface AttachedProg {
  id: number;
  hook: Hook | string;
  name: string;
  flags: string;
}

export interface LiveState {
  /** Every program attached to the cgroup on one of our four hooks, ours and others'. */
  attached: AttachedProg[];
  /** Our pinned program's id per hook; missing when the pin is absent. */
  pinned: Partial<Record<Hook, { id: number; mapIds: number[] }>>;
  configMapId: number | null;
  config: MapConfig | null;
  stats: Stats | null;
  /** The first bpftool error after the cgroup was read (a missing pin), if any. */
  error: string | null;
}

interface BatchEntry {
  command: string[];
  output: unknown;
}

/** Parse `bpftool -j batch file -` output. Throws when even the cgroup could not be read. */
export function parseReadBatch(stdout: string, stderr = ''): LiveState {
  let entries: BatchEntry[];
  try {
    // bpftool 7.1 prints nothing at all for `cgroup show` of a cgroup without programs, not even `[]`, which leaves
    // `"output":}` in a batch's JSON.
    entries = (JSON.parse(stdout.replace(/"output":\s*}/g, '"output":[]}')) as BatchEntry[]).filter((e) => Array.isArray(e?.command));
    if (!Array.isArray(entries)) throw new Error('not an array');
  } catch {
    throw new Error(`bpftool printed no JSON: ${(stderr || stdout).trim().split('\n')[0] ?? ''}`);
  }
  const errorOf = (e: BatchEntry | undefined) => {
    const out = e?.output as { error?: string } | undefined;
    return out && typeof out === 'object' && typeof out.error === 'string' ? out.error : null;
  };
  const first = entries[0];
  if (!first || errorOf(first) !== null) throw new Error(`cannot read the cgroup's programs: ${errorOf(first) ?? 'no output'}`);
  const state: LiveState = { attached: [], pinned: {}, configMapId: null, config: null, stats: null, error: null };
  const byType = new Map<string, Hook>(HOOKS.map((h) => [h.attachType, h.hook]));
  for (const p of first.output as Array<{ id: number; attach_type: string; attach_flags?: string; name?: string }>) {
    const hook = byType.get(p.attach_type) ?? (HOOKS.some((h) => h.hook === p.attach_type) ? p.attach_type : undefined);
    if (hook) state.attached.push({ id: p.id, hook, name: p.name ?? '', flags: p.attach_flags ?? '' });
  }
  for (const entry of entries.slice(1)) {
    const error = errorOf(entry);
    if (error !== null) {
      state.error = error;
      break;
    }
    const [group, verb] = entry.command;
    const out = entry.output as Record<string, unknown>;
    if (group === 'prog') {
      const hook = HOOKS.find((h) => h.prog === out.name);
      if (hook) state.pinned[hook.hook] = { id: Number(out.id), mapIds: (out.map_ids as number[] | undefined) ?? [] };
    } else if (group === 'map' && verb === 'show') {
      state.configMapId = Number(out.id);
    } else if (group === 'map' && verb === 'lookup') {
      // A value of another size (an older object still pinned) is unreadable, not fatal: plan() then reloads.
      try {
        state.config = decodeConfig(hexBytes(out.value));
      } catch (err) {
        state.error = (err as Error).message;
      }
    } else if (group === 'map' && verb === 'dump') {
      const values = new Map<number, number>();
      for (const e of out as unknown as Array<{ key: unknown; value: unknown }>) {
        const key = hexBytes(e.key);
        const value = hexBytes(e.value);
        values.set(key[0] ?? 0, Number(value.reduceRight((acc, b) => (acc << 8n) | BigInt(b), 0n)));
      }
      state.stats = Object.fromEntries(STATS.map((name, i) => [name, values.get(i) ?? 0])) as Stats;
    }
  }
  return state;
}

function hexBytes(value: unknown): number[] {
  if (!Array.isArray(value)) throw new Error(`bpftool printed a map value that is not a byte list: ${JSON.stringify(value)}`);
  return value.map((b) => parseInt(String(b), 16));
}

// ---------------------------------------------------------------------------------------------------
// Comparing

export interface Plan {
  /** The pinned programs or maps are missing or do not belong together: load the object afresh. */
  load: boolean;
  /** Hooks whose pinned program is not attached. */
  attach: Hook[];
  /** Programs of ours attached that are not the pinned ones (an older load, a duplicate). */
  detach: AttachedProg[];
  /** The config entry differs from the wanted one. */
  writeConfig: boolean;
  drift: string[];
}

export function plan(live: LiveState, wanted: MapConfig): Plan {
  const drift: string[] = [];
  const missing = HOOKS.filter((h) => !live.pinned[h.hook]);
  const configId = live.configMapId;
  // Only the connect programs read the config (the getpeername ones use the socket map alone).
  const foreignMaps = configId === null ? [] : HOOKS.filter((h) => h.hook.startsWith('connect') && live.pinned[h.hook] && !live.pinned[h.hook]!.mapIds.includes(configId));
  const load = missing.length > 0 || configId === null || live.config === null || foreignMaps.length > 0;
  if (missing.length > 0) drift.push(`pinned program(s) missing: ${missing.map((h) => h.prog).join(', ')}`);
  else if (configId === null || live.config === null) drift.push(`pinned map ${CONFIG_MAP} missing or unreadable`);
  else if (foreignMaps.length > 0) drift.push(`pinned programs do not use the pinned ${CONFIG_MAP}`);
  const attach: Hook[] = [];
  const detach: AttachedProg[] = [];
  for (const h of HOOKS) {
    const pinnedId = load ? undefined : live.pinned[h.hook]?.id;
    const ours = live.attached.filter((a) => a.hook === h.hook && a.name.startsWith(PROG_PREFIX));
    if (pinnedId === undefined || !ours.some((a) => a.id === pinnedId)) {
      attach.push(h.hook);
      if (!load) drift.push(`${h.prog} is not attached to ${h.hook}`);
    }
    for (const a of ours) {
      if (a.id === pinnedId) continue;
      detach.push(a);
      if (!load) drift.push(`stale ${a.name} (id ${a.id}) attached to ${h.hook}`);
    }
  }
  const writeConfig = load || live.config === null || !sameConfig(live.config, wanted);
  if (!load && writeConfig) drift.push(`${CONFIG_MAP} differs from the wanted configuration`);
  return { load, attach, detach, writeConfig, drift };
}

// ---------------------------------------------------------------------------------------------------
// Kernel support

export interface MountInfo {
  mountPoint: string;
  fsType: string;
}

/** Parse /proc/self/mountinfo (proc(5)): mount point is field 5, the type follows the ' - ' separator. */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const mountPoint = left.split(' ')[4];
    const fsType = right.split(' ')[0];
    if (mountPoint && fsType) out.push({ mountPoint: mountPoint.replace(/\\040/g, ' '), fsType });
  }
  return out;
}

/** The filesystem type holding `path`: the longest mount point that is a prefix of it (the last one mounted wins). */
export function fsTypeAt(mounts: readonly MountInfo[], path: string): string | undefined {
  const clean = path.replace(/\/+$/, '') || '/';
  let best: MountInfo | undefined;
  for (const m of mounts) {
    const mp = m.mountPoint;
    const under = clean === mp || mp === '/' || clean.startsWith(`${mp}/`);
    if (under && (!best || mp.length >= best.mountPoint.length)) best = m;
  }
  return best?.fsType;
}

/** `6.1.0-18-amd64` → [6, 1]. */
export function kernelVersion(release: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

export interface SupportInput {
  kernelRelease: string;
  mounts: readonly MountInfo[];
  cgroupRoot: string;
  bpffs: string;
  /**
   * `bpftool -j feature probe kernel` output; undefined when bpftool could not run (then `bpftoolError` says why).
   * 'not-probed': the probe was skipped (it needs CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, which only
   * `kiam init` has); loading the object is then the test, and bpftoolError says whether bpftool runs at all.
   */
  features?: unknown;
  bpftoolError?: string;
  /** The process's effective capabilities (CapEff), when known. */
  capEff?: bigint;
}

/** CAP_SYS_ADMIN (capability(7) number 21). */
export const CAP_SYS_ADMIN_BIT = 21n;

export interface Support {
  ok: boolean;
  /** What is missing, each with its fix, empty when ok. */
  missing: string[];
  kernel: string;
}

/** Can this node run the socket redirect? Everything missing is listed, each with what would fix it. */
export function checkSupport(input: SupportInput): Support {
  const missing: string[] = [];
  const [major, minor] = kernelVersion(input.kernelRelease);
  if (major < 5 || (major === 5 && minor < 8)) missing.push(`kernel ${input.kernelRelease} is older than 5.8 (cgroup getpeername hooks); upgrade the node's kernel`);
  const cgType = fsTypeAt(input.mounts, input.cgroupRoot);
  if (cgType !== 'cgroup2') {
    missing.push(`${input.cgroupRoot} is ${cgType ? `a ${cgType} mount` : 'not mounted'}, not cgroup v2; run \`kiam init\` (it mounts cgroup2) or pass --cgroup-root`);
  }
  if (fsTypeAt(input.mounts, input.bpffs) !== 'bpf') missing.push(`no bpffs mounted at ${input.bpffs}; run \`kiam init\` (it mounts one) or pass --bpffs`);
  if (input.capEff !== undefined && ((input.capEff >> CAP_SYS_ADMIN_BIT) & 1n) === 0n) {
    // Measured: without it bpftool's `cgroup show` prints an empty list (exit 0) and detach by id fails, so the
    // agent would take attached programs for missing ones (deploy/README.md, "Capabilities, measured").
    missing.push('no CAP_SYS_ADMIN: bpftool cannot see which programs are attached to the cgroup nor detach them; run as root with CAP_SYS_ADMIN (the DaemonSet grants it)');
  }
  if (input.bpftoolError !== undefined || input.features === undefined) {
    missing.push(`bpftool cannot run: ${input.bpftoolError ?? 'unknown error'}; install bpftool and give the agent CAP_SYS_ADMIN and CAP_NET_ADMIN`);
  } else if (input.features !== 'not-probed') {
    const f = input.features as { program_types?: Record<string, boolean>; helpers?: Record<string, string[]> };
    if (f.program_types?.have_cgroup_sock_addr_prog_type !== true) missing.push('the kernel has no cgroup_sock_addr programs (CONFIG_CGROUP_BPF)');
    else {
      const helpers = f.helpers?.cgroup_sock_addr_available_helpers ?? [];
      for (const h of ['bpf_get_netns_cookie', 'bpf_get_socket_cookie']) {
        if (!helpers.includes(h)) missing.push(`the kernel offers no ${h} to cgroup_sock_addr programs (needs 5.7)`);
      }
    }
  }
  return { ok: missing.length === 0, missing, kernel: input.kernelRelease };
}
