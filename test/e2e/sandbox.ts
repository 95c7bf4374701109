// Network-namespace sandbox for the end-to-end tests, the demo and the benchmarks.
//
// One "node" namespace (lo up, host IP and 169.254.169.254 on lo, a fake NIC `eth0` carrying the default route) and
// one namespace per "pod", joined to the node by a veth pair named like Calico's (`cali` + 11 hex on the node side,
// `eth0` in the pod), routed the Calico way (pod: 169.254.1.1 link route + default via it; node: proxy ARP and a /32
// host route per pod). Nothing is ever configured in the root namespace: veth pairs are created directly inside the
// namespaces. Every process started here is tracked and stopped by PID; every namespace is deleted by destroy(),
// by the process exit/signal handlers after a crash, or by Sandbox.sweep(prefix) after a hard kill.
//
// Options, all off by default:
// - `upstreamNetns`: the metadata service lives in a third namespace `<prefix>-imds` behind the node's eth0 (as on
//   EC2, where it sits beyond the instance's NIC) instead of on the node's lo.
// - `ipv6`: dual stack: a host IPv6 address on the node's lo, an IPv6 address per pod, routed the Calico way
//   (fe80::1 on the node's cali interface, pod default route via it, a /128 host route per pod on the node).
// - `cgroup`: a private cgroup2 mount and a private bpffs under the temp dir, a child cgroup `<prefix>-pods` holding
//   every process the sandbox starts (eBPF programs are attached there, never at a mount's root, which is the
//   machine's cgroup2 root). Cleanup kills the cgroup's processes, detaches every program attached to it, removes
//   the pins, the cgroup and both mounts.
// - installBypass(): a tc program on the pods' cali interfaces that forwards their metadata traffic past the node's
//   netfilter, as an eBPF dataplane does (needs upstreamNetns).
// For the container-credentials endpoint: podFile() writes a pod's own files (its projected token) under the temp
// dir; canCreateAgentLink() and addNodeAddresses() let a test fall back to the node's lo for 169.254.170.23 and
// fd00:ec2::23 on a kernel that can make neither the agent's dummy link nor its ifb fallback. Pods reach those addresses by their default route, as any node address.
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, watch, writeFileSync, writeSync,
} from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TrackedProcess, fmtExit } from './procs.ts';

export { TrackedProcess } from './procs.ts';
export type { ExitInfo, LineMatcher } from './procs.ts';

export const METADATA_IP = '169.254.169.254';
/** The instance metadata service's IPv6 address (Nitro instances with HttpProtocolIpv6=enabled). */
export const METADATA_IPV6 = 'fd00:ec2::254';
/** The gateway every Calico pod routes through; answered by proxy ARP on the node's cali interface. */
export const POD_GATEWAY = '169.254.1.1';
/** The IPv6 gateway of every pod (`ipv6`): a link-local address on each node-side cali interface. */
export const POD_GATEWAY_IPV6 = 'fe80::1';
/**
 * The container-credentials endpoint's addresses (EKS Pod Identity's, which the SDKs accept over plain HTTP): the
 * agent with --container-credentials puts them on a link of the node namespace; pods reach them by their default
 * route to the node, like any address of the node.
 */
export const CONTAINER_CREDENTIALS_IP = '169.254.170.23';
export const CONTAINER_CREDENTIALS_IPV6 = 'fd00:ec2::23';
export const DEFAULT_HOST_IP = '10.77.0.1';
/** The node's host IPv6 address (`ipv6`), on its lo. Pods get fd77:1::/64 addresses. */
export const DEFAULT_HOST_IPV6 = 'fd77::1';
/** The link between the node's eth0 and the metadata namespace (`upstreamNetns`). */
export const UPLINK = Object.freeze({ node: '10.78.0.1', imds: '10.78.0.2', nodeV6: 'fd78::1', imdsV6: 'fd78::2' });

export interface SandboxOptions {
  /** Namespace name prefix: lowercase letter then letters/digits, ≤ 12 chars. Default 'kiamt' + 4 random hex. */
  prefix?: string;
  /** Host IP put on the node namespace's lo. Default 10.77.0.1. */
  hostIp?: string;
  /** Run Sandbox.sweep(prefix) first (for a fixed prefix, e.g. the demo's, after a crashed run). */
  sweep?: boolean;
  /** Keep the temp dir with the process logs after destroy(). Default: env KIAM_E2E_KEEP_LOGS=1. */
  keepLogs?: boolean;
  /** SIGTERM → SIGKILL grace period used by destroy() and removePod(). Default 2000 ms. */
  graceMs?: number;
  /**
   * Private cgroup2 and bpffs mounts under the temp dir, and a child cgroup `<prefix>-pods` (sb.cgroupPath) that
   * every process started by exec()/spawn() joins before it execs. bpffs at sb.bpffsPath. Default off.
   */
  cgroup?: boolean;
  /**
   * The metadata service in a namespace of its own, `<prefix>-imds` (sb.imdsNs), reached through the node's eth0
   * (node 10.78.0.1/30 + fd78::1/64, imds 10.78.0.2 + fd78::2, 169.254.169.254 and fd00:ec2::254 on its lo),
   * instead of 169.254.169.254 on the node's lo. Default off.
   */
  upstreamNetns?: boolean;
  /** Dual stack: sb.hostIpv6 on the node's lo, an IPv6 address per pod (Pod.ipv6). Default off. */
  ipv6?: boolean;
}

export interface PodSpec {
  /** lowercase letters, digits and '-', ≤ 32 chars, not 'node'. The namespace is `<prefix>-<name>`. */
  name: string;
  /** Pod IPv4 address; default: the next free one of 10.77.1.2, 10.77.1.3, … */
  ip?: string;
  /** Pod IPv6 address, only in an `ipv6` sandbox; default fd77:1::C:D for the IPv4 address A.B.C.D. */
  ipv6?: string;
}

export interface Pod {
  readonly name: string;
  readonly ns: string;
  readonly ip: string;
  /** Its IPv6 address, in an `ipv6` sandbox. */
  readonly ipv6?: string;
  /** Node-side veth in the node namespace (`cali` + 11 hex). */
  readonly hostVeth: string;
}

export interface ExecOptions {
  /** Full environment (replaces the parent's, like child_process). Default: the parent's environment. */
  env?: NodeJS.ProcessEnv;
  input?: string | Buffer;
  /** Killed with SIGKILL after this long. Default 30 000 ms. */
  timeoutMs?: number;
  cwd?: string;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Default: `<sb.tmpDir>/<n>-<command>.log`. */
  logFile?: string;
  cwd?: string;
  input?: string | Buffer;
}

export interface Gate {
  /** false, or the reason to skip (never a reason when CI=true: then the test runs and assertReady() fails it). */
  skip: string | false;
  missing: readonly string[];
  /** Throws listing what is missing. */
  assertReady(): void;
}

const NETNS_DIR = '/run/netns';
const PREFIX_RE = /^[a-z][a-z0-9]{0,11}$/;
const POD_NAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$/;
const SEARCH_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
const BASE_BINARIES = ['ip', 'sysctl', 'iptables-nft', 'iptables-nft-save', 'iptables-nft-restore'];
/** sh -c script: join the cgroup whose cgroup.procs is $0, give PWD back the value $1 (unset if empty), exec the rest. */
const JOIN_CGROUP = 'echo $$ > "$0" || exit 125; if [ -z "$1" ]; then unset PWD; else PWD=$1; export PWD; fi; shift; exec "$@"';

/** Absolute path of an executable (PATH first, then the usual sbin/bin dirs), or undefined. */
export function findBinary(name: string): string | undefined {
  const candidates = name.includes('/')
    ? [name]
    : [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SEARCH_PATH].map((d) => join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

function ipBinary(): string {
  const ip = findBinary('ip');
  if (!ip) throw new Error('sandbox: `ip` (iproute2) not found');
  return ip;
}

/** Runs a command (no shell) and collects its output. */
async function run(file: string, args: readonly string[], input?: string): Promise<{ ok: boolean; stdout: string; stderr: string; why: string }> {
  const p = new TrackedProcess(file, args, { keepOutput: true, ...(input === undefined ? {} : { input }) });
  const exit = await p.exited;
  return { ok: exit.code === 0, ...p.output(), why: fmtExit(exit) };
}

/** Runs `ip` with the given arguments (and batch input), no shell. */
function ipRun(args: readonly string[], input?: string): Promise<{ ok: boolean; stdout: string; stderr: string; why: string }> {
  return run(ipBinary(), args, input);
}

/** ipRun() that throws with argv, stderr and the batch input on failure; returns stdout. */
async function ipCmd(args: readonly string[], input?: string): Promise<string> {
  const r = await ipRun(args, input);
  if (!r.ok) throw new Error(`ip ${args.join(' ')} failed (${r.why}): ${r.stderr.trim()}${input ? `\ninput:\n${input}` : ''}`);
  return r.stdout;
}

function ipSync(args: readonly string[], input?: string): { ok: boolean; stdout: string; stderr: string } {
  const ip = findBinary('ip');
  if (!ip) return { ok: false, stdout: '', stderr: 'ip not found' };
  const r = spawnSync(ip, args, { input: input ?? '', encoding: 'utf8', timeout: 10_000 });
  return { ok: r.status === 0, stdout: r.stdout ?? '', stderr: r.stderr ?? String(r.error ?? '') };
}

function parseNetnsList(out: string): string[] {
  // "name (id: 3)" or "name"
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
}

function parsePids(out: string): number[] {
  return out
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((pid) => pid > 1 && pid !== process.pid);
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function validatePrefix(prefix: string): void {
  if (!PREFIX_RE.test(prefix)) {
    throw new Error(`sandbox: invalid prefix ${JSON.stringify(prefix)} (want ${PREFIX_RE}; no '-')`);
  }
}

// ---- mounts, cgroups and BPF attachments (synchronous: shared by destroy(), the exit handlers and sweep) -----------
function missingFilesystems(names: readonly string[]): string[] {
  let known = '';
  try {
    known = readFileSync('/proc/filesystems', 'utf8');
  } catch {
    // not linux
  }
  return names.filter((fs) => !new RegExp(`\\s${fs}$`, 'm').test(known)).map((fs) => `filesystem ${fs}`);
}

/** What the `cgroup` option needs. */
function missingForCgroup(): string[] {
  const binaries = ['mount', 'umount', 'bpftool'].filter((b) => !findBinary(b)).map((b) => `binary ${b}`);
  return [...binaries, ...missingFilesystems(['cgroup2', 'bpf'])];
}

/** What installBypass() needs beyond that: the compiler, the libbpf headers (Debian libbpf-dev) and tc. */
function missingForBypass(): string[] {
  const binaries = ['clang', 'tc'].filter((b) => !findBinary(b)).map((b) => `binary ${b}`);
  const headers = existsSync('/usr/include/bpf/bpf_helpers.h') ? [] : ['header /usr/include/bpf/bpf_helpers.h (Debian libbpf-dev)'];
  return [...binaries, ...headers];
}

interface MountEntry {
  /** Path inside the filesystem that is mounted (`/` for a whole cgroup2 hierarchy). */
  root: string;
  mountPoint: string;
  fsType: string;
}

/** This process's mounts, from /proc/self/mountinfo (proc(5)), in mount order. */
export function readMounts(): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0 || f.length < sep + 2) continue;
    out.push({ root: unescape(f[3] ?? ''), mountPoint: unescape(f[4] ?? ''), fsType: f[sep + 1] ?? '' });
  }
  return out;
}

/** Mount points at or below dir, the most recent (innermost) first. */
function mountsUnder(dir: string): MountEntry[] {
  return readMounts()
    .filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`))
    .reverse();
}

function runSync(file: string, args: readonly string[]): { ok: boolean; stdout: string; stderr: string } {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 10_000 });
  return { ok: r.status === 0, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}

/** Sleeps the thread (only for the synchronous exit-time cleanup, where no event loop runs). */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function mountFs(type: 'cgroup2' | 'bpf', target: string): void {
  mkdirSync(target, { recursive: true });
  const r = runSync(findBinary('mount') ?? 'mount', ['-t', type, type === 'bpf' ? 'bpf' : 'none', target]);
  if (!r.ok) throw new Error(`sandbox: mount -t ${type} ${target} failed: ${r.stderr.trim()}`);
}

/** Unmounts everything at or below dir (lazily when busy) and removes the mount points. Returns what failed. */
function unmountAll(dir: string): string[] {
  const errors: string[] = [];
  const umount = findBinary('umount') ?? 'umount';
  for (const m of mountsUnder(dir)) {
    if (m.fsType === 'bpf') errors.push(...clearBpffs(m.mountPoint));
    let r = runSync(umount, [m.mountPoint]);
    if (!r.ok) r = runSync(umount, ['-l', m.mountPoint]);
    if (!r.ok) errors.push(`umount ${m.mountPoint}: ${r.stderr.trim()}`);
  }
  const left = mountsUnder(dir);
  if (left.length) errors.push(`still mounted: ${left.map((m) => m.mountPoint).join(', ')}`);
  return errors;
}

/** The kernel's own entries in every bpffs (bpf_preload, kernel/bpf/preload): not removable, gone with the mount. */
const BPFFS_PRELOADED = new Set(['maps.debug', 'progs.debug']);

/** rm -r of a bpffs's contents (pinned programs and maps); refuses anything that is not a bpffs mount point. */
function clearBpffs(dir: string): string[] {
  if (!readMounts().some((m) => m.mountPoint === dir && m.fsType === 'bpf')) return [`${dir} is not a bpffs mount point`];
  const errors: string[] = [];
  for (const entry of readdirSync(dir)) {
    if (BPFFS_PRELOADED.has(entry)) continue;
    try {
      rmSync(join(dir, entry), { recursive: true, force: true });
    } catch (err) {
      errors.push(`rm ${join(dir, entry)}: ${(err as Error).message}`);
    }
  }
  return errors;
}

function cgroupPids(cgroup: string): number[] {
  try {
    return parsePids(readFileSync(join(cgroup, 'cgroup.procs'), 'utf8'));
  } catch {
    return [];
  }
}

/** `populated 1` in cgroup.events: some live process is still in it (cgroup-v2.rst, "Organizing Processes"). */
function cgroupPopulated(cgroup: string): boolean {
  try {
    return /^populated 1$/m.test(readFileSync(join(cgroup, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

/** SIGKILL, by PID, whatever is in the cgroup (only processes the sandbox put there, and their children). */
function killCgroupPids(cgroup: string): void {
  for (const pid of cgroupPids(cgroup)) killPid(pid, 'SIGKILL');
}

/** Resolves once the cgroup has no live process (cgroup.events changes raise inotify events), or after ms. */
async function cgroupEmptied(cgroup: string, ms: number): Promise<boolean> {
  if (!cgroupPopulated(cgroup)) return true;
  return new Promise<boolean>((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      watcher?.close();
      resolve(!cgroupPopulated(cgroup));
    };
    const timer = setTimeout(finish, ms);
    let watcher: ReturnType<typeof watch> | undefined;
    try {
      watcher = watch(join(cgroup, 'cgroup.events'), () => {
        killCgroupPids(cgroup); // a process forked before it was killed
        if (!cgroupPopulated(cgroup)) finish();
      });
      watcher.on('error', finish);
    } catch {
      // no inotify: the timer decides
    }
    if (!cgroupPopulated(cgroup)) finish();
  });
}

/** Detaches every BPF program attached to the cgroup (`bpftool cgroup show CG -j`, then `cgroup detach`). */
function detachCgroupPrograms(cgroup: string): string[] {
  const bpftool = findBinary('bpftool');
  if (!bpftool) return [`bpftool not found: cannot check ${cgroup} for attached programs`];
  const shown = runSync(bpftool, ['cgroup', 'show', cgroup, '-j']);
  if (!shown.ok) return [`bpftool cgroup show ${cgroup}: ${shown.stderr.trim()}`];
  let progs: { id?: number; attach_type?: string }[];
  try {
    progs = JSON.parse(shown.stdout.trim() || '[]') as typeof progs;
  } catch {
    return [`bpftool cgroup show ${cgroup}: unexpected output ${shown.stdout.slice(0, 200)}`];
  }
  const errors: string[] = [];
  for (const p of progs) {
    if (typeof p.id !== 'number' || typeof p.attach_type !== 'string') continue;
    const r = runSync(bpftool, ['cgroup', 'detach', cgroup, p.attach_type, 'id', String(p.id)]);
    if (!r.ok) errors.push(`bpftool cgroup detach ${cgroup} ${p.attach_type} id ${p.id}: ${r.stderr.trim()}`);
  }
  return errors;
}

/** Detaches the cgroup's programs and removes it (it must be empty of processes). Returns what failed. */
function removeCgroup(cgroup: string): string[] {
  if (!existsSync(cgroup)) return [];
  const errors = detachCgroupPrograms(cgroup);
  try {
    rmdirSync(cgroup);
  } catch (err) {
    errors.push(`rmdir ${cgroup}: ${(err as Error).message}${cgroupPopulated(cgroup) ? ` (processes left: ${cgroupPids(cgroup).join(' ')})` : ''}`);
  }
  return errors;
}

/** Synchronous: kill the cgroup's processes, wait (bounded) until they are gone, detach, rmdir. */
function destroyCgroupSync(cgroup: string, ms = 3_000): string[] {
  if (!existsSync(cgroup)) return [];
  const deadline = performance.now() + ms;
  for (killCgroupPids(cgroup); cgroupPopulated(cgroup) && performance.now() < deadline; killCgroupPids(cgroup)) sleepSync(5);
  return removeCgroup(cgroup);
}

/**
 * After a crash: a `<prefix>-pods` cgroup left in the machine's cgroup2 hierarchy (seen read-only through any cgroup2
 * mount, e.g. /sys/fs/cgroup/unified) is emptied, detached and removed through a private cgroup2 mount of our own.
 */
function sweepCgroup(prefix: string): string[] {
  const name = `${prefix}-pods`;
  if (!readMounts().some((m) => m.fsType === 'cgroup2' && m.root === '/' && existsSync(join(m.mountPoint, name)))) return [];
  const dir = mkdtempSync(join(tmpdir(), `kiam-sweep-${prefix}-`));
  const mnt = join(dir, 'cgroup2');
  const errors: string[] = [];
  try {
    mountFs('cgroup2', mnt);
    errors.push(...destroyCgroupSync(join(mnt, name)));
  } catch (err) {
    errors.push((err as Error).message);
  } finally {
    const left = unmountAll(dir);
    errors.push(...left);
    if (left.length === 0) rmSync(dir, { recursive: true, force: true });
  }
  return errors;
}

/** Removes a temp dir of ours: everything mounted below it is unmounted first, and nothing is removed if that fails. */
function removeTmpDir(dir: string): string[] {
  const errors = unmountAll(dir);
  if (errors.length === 0) rmSync(dir, { recursive: true, force: true });
  return errors;
}

// ---- process-wide crash cleanup -------------------------------------------------------------------------------
const live = new Set<Sandbox>();
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let installed = false;

function onExit(): void {
  for (const sb of [...live]) sb.destroySync();
}

function onSignal(signal: NodeJS.Signals): void {
  onExit();
  uninstallHandlers();
  // Keep the default behaviour of the signal unless someone else handles it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function installHandlers(): void {
  if (installed) return;
  installed = true;
  process.on('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function uninstallHandlers(): void {
  if (!installed) return;
  installed = false;
  process.off('exit', onExit);
  for (const s of SIGNALS) process.off(s, onSignal);
}

// ---- the sandbox ----------------------------------------------------------------------------------------------
export class Sandbox {
  readonly prefix: string;
  readonly nodeNs: string;
  readonly hostIp: string;
  /** The node's IPv6 address on its lo (`ipv6`), else undefined. */
  readonly hostIpv6: string | undefined;
  /** `<prefix>-imds`, where the metadata service lives (`upstreamNetns`), else undefined. */
  readonly imdsNs: string | undefined;
  /** Where the metadata addresses are local: the imds namespace with `upstreamNetns`, else the node's. */
  readonly metadataNs: string;
  /** The metadata service's addresses in this sandbox: 169.254.169.254, and fd00:ec2::254 with ipv6/upstreamNetns. */
  readonly metadataAddresses: readonly string[];
  /** The child cgroup holding every process of the sandbox (`cgroup`): `<tmpDir>/cgroup2/<prefix>-pods`. */
  readonly cgroupPath: string | undefined;
  /** The private bpffs (`cgroup`, or once installBypass() ran): `<tmpDir>/bpffs`. */
  readonly bpffsPath: string;
  /** Temp dir for process logs (and anything else a test wants to put there). */
  readonly tmpDir: string;

  readonly #graceMs: number;
  readonly #keepLogs: boolean;
  /** Namespaces this sandbox created (or is creating) and must delete. */
  readonly #namespaces = new Set<string>();
  readonly #pods = new Map<string, Pod>();
  /** Pods whose veths are set up (installBypass() attaches to these; later ones attach themselves). */
  readonly #readyPods = new Set<Pod>();
  readonly #procs = new Map<TrackedProcess, string>();
  #vethSeq = 0;
  #ipSeq = 0;
  #spawnSeq = 0;
  #destroyed: Promise<void> | undefined;
  /** The compiled bypass object while installBypass() is in force. */
  #bypassObj: string | undefined;
  #bypassInstalling: Promise<void> | undefined;
  #dummyProbe: Promise<boolean> | undefined;

  private constructor(prefix: string, hostIp: string, opts: SandboxOptions) {
    this.prefix = prefix;
    this.nodeNs = `${prefix}-node`;
    this.hostIp = hostIp;
    this.hostIpv6 = opts.ipv6 ? DEFAULT_HOST_IPV6 : undefined;
    this.imdsNs = opts.upstreamNetns ? `${prefix}-imds` : undefined;
    this.metadataNs = this.imdsNs ?? this.nodeNs;
    this.metadataAddresses = Object.freeze(opts.ipv6 || opts.upstreamNetns ? [METADATA_IP, METADATA_IPV6] : [METADATA_IP]);
    this.#graceMs = opts.graceMs ?? 2_000;
    this.#keepLogs = opts.keepLogs ?? process.env.KIAM_E2E_KEEP_LOGS === '1';
    this.tmpDir = mkdtempSync(join(tmpdir(), `kiam-e2e-${prefix}-`));
    this.bpffsPath = join(this.tmpDir, 'bpffs');
    this.cgroupPath = opts.cgroup ? join(this.tmpDir, 'cgroup2', `${prefix}-pods`) : undefined;
  }

  /** What this machine lacks to run the sandbox (empty = ready). `extra`: more binaries a test needs. */
  static prerequisites(extra: readonly string[] = []): string[] {
    const missing: string[] = [];
    if (process.platform !== 'linux') return [`linux (this is ${process.platform})`];
    if (process.getuid?.() !== 0) missing.push('root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)');
    if (!existsSync('/proc/self/ns/net')) missing.push('network namespace support (/proc/self/ns/net)');
    for (const b of [...BASE_BINARIES, ...extra]) if (!findBinary(b)) missing.push(`binary ${b}`);
    if (findBinary('ip') && missing.length === 0) {
      const r = ipSync(['netns', 'list']);
      if (!r.ok) missing.push(`working \`ip netns\` (${r.stderr.trim()})`);
    }
    return missing;
  }

  /** What the `cgroup` option (and installBypass) need beyond prerequisites(): binaries and filesystems. */
  static bpfPrerequisites(): string[] {
    return [...missingForCgroup(), ...missingForBypass()];
  }

  /**
   * For tests: `const gate = Sandbox.gate(['curl']); test('…', { skip: gate.skip }, async () => { gate.assertReady(); … })`.
   * Skips with the reason when something is missing, unless CI=true: then the test runs and fails.
   */
  static gate(extra: readonly string[] = [], opts: { bpf?: boolean } = {}): Gate {
    const missing = [...Sandbox.prerequisites(extra), ...(opts.bpf ? Sandbox.bpfPrerequisites() : [])];
    const ci = process.env.CI === 'true';
    return {
      missing,
      skip: missing.length > 0 && !ci ? `sandbox prerequisites missing: ${missing.join('; ')}` : false,
      assertReady() {
        if (missing.length > 0) throw new Error(`sandbox prerequisites missing: ${missing.join('; ')}`);
      },
    };
  }

  /**
   * Cleans up after a crashed run of the SAME prefix: kills (by PID) the processes inside namespaces `<prefix>-*`
   * and inside a leftover `<prefix>-pods` cgroup, detaches the programs attached to that cgroup and removes it,
   * unmounts the crashed run's private cgroup2 and bpffs, deletes its temp dirs and the namespaces. Returns the
   * names of the namespaces removed; rejects if a cgroup or a mount could not be removed.
   */
  static async sweep(prefix: string): Promise<string[]> {
    validatePrefix(prefix);
    for (const sb of live) {
      if (sb.prefix === prefix) throw new Error(`sandbox: prefix ${prefix} belongs to a live sandbox of this process`);
    }
    const names = parseNetnsList(await ipCmd(['netns', 'list'])).filter((n) => n.startsWith(`${prefix}-`));
    if (names.length) await killNamespacePids(names);
    const errors = sweepCgroup(prefix);
    // The crashed run's temp dirs (logs, mounts) go too; a dir whose mounts cannot be removed stays.
    for (const d of readdirSync(tmpdir())) {
      if (d.startsWith(`kiam-e2e-${prefix}-`) || d.startsWith(`kiam-sweep-${prefix}-`)) errors.push(...removeTmpDir(join(tmpdir(), d)));
    }
    if (names.length) await ipCmd(['-force', '-batch', '-'], names.map((n) => `netns del ${n}\n`).join(''));
    if (errors.length) throw new Error(`sandbox: sweep ${prefix}: ${errors.join('; ')}`);
    return names;
  }

  static async create(opts: SandboxOptions = {}): Promise<Sandbox> {
    const missing = Sandbox.prerequisites();
    if (missing.length) throw new Error(`sandbox prerequisites missing: ${missing.join('; ')}`);
    const prefix = opts.prefix ?? `kiamt${randomBytes(2).toString('hex')}`;
    validatePrefix(prefix);
    const hostIp = opts.hostIp ?? DEFAULT_HOST_IP;
    if (!isIPv4(hostIp) || hostIp === METADATA_IP || hostIp === POD_GATEWAY || hostIp === UPLINK.node || hostIp === UPLINK.imds) {
      throw new Error(`sandbox: invalid hostIp ${JSON.stringify(hostIp)}`);
    }
    if (opts.cgroup) {
      const missing = missingForCgroup();
      if (missing.length) throw new Error(`sandbox: the cgroup option needs: ${missing.join('; ')}`);
    }
    if (opts.sweep) await Sandbox.sweep(prefix);
    const sb = new Sandbox(prefix, hostIp, opts);
    live.add(sb);
    installHandlers();
    try {
      // libbpf turns '.' into '_' in pin paths: a bpffs below a dotted path breaks pinning.
      if (sb.bpffsPath.includes('.')) throw new Error(`sandbox: temp dir ${sb.tmpDir} contains a '.' (set TMPDIR)`);
      if (sb.cgroupPath) sb.#mountCgroup(sb.cgroupPath);
      await sb.#setupNode();
    } catch (err) {
      await sb.destroy().catch(() => {});
      throw err;
    }
    return sb;
  }

  /** Live pods. */
  get pods(): readonly Pod[] {
    return [...this.#pods.values()];
  }

  /** Namespaces of this sandbox that currently exist (node first). */
  get namespaces(): readonly string[] {
    return [...this.#namespaces];
  }

  /** Tracked processes that have not exited yet. */
  get processes(): readonly TrackedProcess[] {
    return [...this.#procs.keys()];
  }

  /**
   * Writes a file of a pod's own (e.g. the projected service-account token a kubelet would mount), at
   * `<tmpDir>/pods/<owner>/<path>` (mode 0600; an earlier one is overwritten), and returns that path. The namespaces
   * share this machine's filesystem, so a process started in any of them reads it there. `owner` is a
   * pod name, or any other label (e.g. a hostNetwork pod, which runs in the node's namespace).
   */
  podFile(owner: string, path: string, content: string | Buffer): string {
    this.#assertUsable();
    const rel = normalize(path.replace(/^\/+/, ''));
    if (!POD_NAME_RE.test(owner) || isAbsolute(rel) || rel === '.' || rel.startsWith('..')) {
      throw new Error(`sandbox: invalid pod file ${JSON.stringify(owner)} ${JSON.stringify(path)}`);
    }
    const file = join(this.tmpDir, 'pods', owner, rel);
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(file, content, { mode: 0o600 });
    return file;
  }

  /**
   * Whether the agent can make its own link here: a `dummy` link (CONFIG_DUMMY; not every VM kernel has it) or its
   * fallback, an `ifb` one; probed once with a throwaway link in the node namespace.
   */
  canCreateAgentLink(): Promise<boolean> {
    this.#assertUsable();
    this.#dummyProbe ??= (async () => {
      // The kinds the agent tries, in its order (src/netfilter/link.ts LINK_KINDS: ifb where the kernel lacks dummy).
      for (const kind of ['dummy', 'ifb']) {
        const r = await ipRun(['-n', this.nodeNs, 'link', 'add', 'kiamprobe0', 'type', kind]);
        if (!r.ok) continue;
        await ipCmd(['-n', this.nodeNs, 'link', 'del', 'kiamprobe0']);
        return true;
      }
      return false;
    })();
    return this.#dummyProbe;
  }

  /**
   * Puts host addresses on the node namespace's lo (/32, or /128 without duplicate address detection), e.g. the
   * container-credentials addresses when the agent runs with `--container-credentials-link none`. IPv6 ones need
   * the `ipv6` option. Idempotent.
   */
  async addNodeAddresses(addresses: readonly string[]): Promise<void> {
    this.#assertUsable();
    const lines = addresses.map((a) => {
      if (isIPv4(a)) return `addr replace ${a}/32 dev lo`;
      if (!isIPv6(a)) throw new Error(`sandbox: invalid address ${JSON.stringify(a)}`);
      if (!this.hostIpv6) throw new Error(`sandbox: ${a} needs the ipv6 option`);
      return `addr replace ${a}/128 dev lo nodad`;
    });
    if (lines.length) await ipCmd(['-n', this.nodeNs, '-batch', '-'], `${lines.join('\n')}\n`);
  }

  /** Private cgroup2 + bpffs mounts and the child cgroup (synchronous: nothing is started before they exist). */
  #mountCgroup(cgroup: string): void {
    const mnt = join(this.tmpDir, 'cgroup2');
    mountFs('cgroup2', mnt);
    // Never the mount's root: that is the machine's cgroup2 root, holding every process of the machine.
    mkdirSync(cgroup);
    this.#ensureBpffs();
  }

  #ensureBpffs(): void {
    if (!readMounts().some((m) => m.mountPoint === this.bpffsPath && m.fsType === 'bpf')) mountFs('bpf', this.bpffsPath);
  }

  async #setupNode(): Promise<void> {
    const node = this.nodeNs;
    const imds = this.imdsNs;
    const dual = this.metadataAddresses.includes(METADATA_IPV6);
    for (const ns of imds ? [node, imds] : [node]) {
      try {
        await ipCmd(['netns', 'add', ns]);
      } catch (err) {
        throw new Error(
          `sandbox: cannot create namespace ${ns} (a crashed run of prefix ${this.prefix}? use Sandbox.sweep): ${(err as Error).message}`,
        );
      }
      this.#namespaces.add(ns);
    }
    // eth0/eth0-wire: a fake NIC carrying the default route, as on a real node; its peer stays down, or with
    // upstreamNetns is the metadata namespace's side of the wire. Proxy ARP for 169.254.1.1 only answers when the
    // node has a route to it that leaves through another interface.
    await ipCmd(
      ['-n', node, '-batch', '-'],
      [
        'link set lo up',
        `addr add ${this.hostIp}/32 dev lo`,
        ...(imds ? [] : [`addr add ${METADATA_IP}/32 dev lo`]),
        ...(this.hostIpv6 ? [`addr add ${this.hostIpv6}/128 dev lo`] : []),
        ...(this.hostIpv6 && !imds ? [`addr add ${METADATA_IPV6}/128 dev lo`] : []),
        `link add eth0 type veth peer name eth0-wire${imds ? ` netns ${imds}` : ''}`,
        'link set eth0 addrgenmode none',
        // A link-local address too: Linux solicits a forwarded packet's next hop only from the outgoing interface's
        // link-local address (net/ipv6/ndisc.c, ndisc_solicit), though RFC 4861 7.2.2 would allow any.
        ...(imds ? [`addr add ${UPLINK.node}/30 dev eth0`, `addr add ${UPLINK.nodeV6}/64 dev eth0 nodad`, 'addr add fe80::78:1/64 dev eth0 nodad'] : []),
        'link set eth0 up',
        'route add default dev eth0',
        '',
      ].join('\n'),
    );
    if (imds) {
      // The metadata side: its addresses on lo, everything else (the node's pods and host addresses) via the node.
      await ipCmd(
        ['-n', imds, '-batch', '-'],
        [
          'link set lo up',
          `addr add ${METADATA_IP}/32 dev lo`,
          `addr add ${METADATA_IPV6}/128 dev lo`,
          'link set eth0-wire addrgenmode none',
          `addr add ${UPLINK.imds}/30 dev eth0-wire`,
          `addr add ${UPLINK.imdsV6}/64 dev eth0-wire nodad`,
          'addr add fe80::78:2/64 dev eth0-wire nodad',
          'link set eth0-wire up',
          `route add default via ${UPLINK.node} dev eth0-wire`,
          `route add ::/0 via ${UPLINK.nodeV6} dev eth0-wire`,
          '',
        ].join('\n'),
      );
      await ipCmd(
        ['-n', node, '-batch', '-'],
        [`route add ${METADATA_IP}/32 via ${UPLINK.imds} dev eth0`, `route add ${METADATA_IPV6}/128 via ${UPLINK.imdsV6} dev eth0`, ''].join('\n'),
      );
    }
    // `default` values are inherited by every cali interface created later (proxy_arp=1; IPv6 off unless needed,
    // then without duplicate address detection, so addresses are usable at once).
    const sysctl = await this.#exec(node, [
      findBinary('sysctl') ?? 'sysctl',
      '-q',
      '-w',
      'net.ipv4.ip_forward=1',
      'net.ipv4.conf.default.proxy_arp=1',
      ...(dual
        ? [
            'net.ipv6.conf.all.forwarding=1',
            'net.ipv6.conf.default.forwarding=1',
            'net.ipv6.conf.all.accept_dad=0',
            'net.ipv6.conf.default.accept_dad=0',
          ]
        : ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']),
      // Replies from the metadata namespace to a pod whose request bypassed the node come in on eth0.
      ...(imds ? ['net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0', 'net.ipv4.conf.eth0.rp_filter=0'] : []),
    ]);
    if (sysctl.code !== 0) throw new Error(`sandbox: sysctl in ${node} failed: ${sysctl.stderr.trim()}`);
  }

  #assertUsable(): void {
    if (this.#destroyed) throw new Error(`sandbox ${this.prefix} is destroyed`);
  }

  #assertNs(ns: string): void {
    this.#assertUsable();
    if (ns !== this.nodeNs && ns !== this.imdsNs && ![...this.#pods.values()].some((p) => p.ns === ns)) {
      throw new Error(`sandbox: ${JSON.stringify(ns)} is not a namespace of sandbox ${this.prefix}`);
    }
  }

  #ipInUse(ip: string): boolean {
    return ip === this.hostIp || [...this.#pods.values()].some((p) => p.ip === ip || p.ipv6 === ip);
  }

  #nextIp(): string {
    for (;;) {
      const n = this.#ipSeq++;
      if (n >= 250 * 250) throw new Error('sandbox: pod addresses exhausted');
      const ip = `10.77.${1 + Math.floor(n / 250)}.${2 + (n % 250)}`;
      if (!this.#ipInUse(ip)) return ip;
    }
  }

  async addPod(spec: PodSpec): Promise<Pod> {
    this.#assertUsable();
    const { name } = spec;
    if (!POD_NAME_RE.test(name) || name === 'node' || name === 'imds') {
      throw new Error(`sandbox: invalid pod name ${JSON.stringify(name)} (want ${POD_NAME_RE}, not 'node' or 'imds')`);
    }
    if (this.#pods.has(name)) throw new Error(`sandbox: pod ${name} exists`);
    const ip = spec.ip ?? this.#nextIp();
    if (
      !isIPv4(ip) || ip === METADATA_IP || ip === POD_GATEWAY || ip.startsWith('127.') || ip === '0.0.0.0' ||
      ip === UPLINK.node || ip === UPLINK.imds
    ) {
      throw new Error(`sandbox: invalid pod IP ${JSON.stringify(ip)}`);
    }
    if (this.#ipInUse(ip)) throw new Error(`sandbox: IP ${ip} is in use`);
    if (spec.ipv6 !== undefined && !this.hostIpv6) throw new Error('sandbox: a pod IPv6 address needs the ipv6 option');
    // fd77:1::C:D for A.B.C.D (decimal octets read as hex groups: distinct octets, distinct addresses).
    const ipv6 = this.hostIpv6 ? (spec.ipv6 ?? `fd77:1::${ip.split('.').slice(2).join(':')}`) : undefined;
    if (ipv6 !== undefined) {
      if (!isIPv6(ipv6) || ipv6 === METADATA_IPV6 || /^(?:fe80:|::|ff)/i.test(ipv6) || ipv6 === UPLINK.nodeV6 || ipv6 === UPLINK.imdsV6) {
        throw new Error(`sandbox: invalid pod IPv6 ${JSON.stringify(ipv6)}`);
      }
      if (ipv6 === this.hostIpv6 || this.#ipInUse(ipv6)) throw new Error(`sandbox: IP ${ipv6} is in use`);
    }
    const ns = `${this.prefix}-${name}`;
    const hostVeth = `cali${createHash('sha1').update(`${this.prefix}/${name}/${this.#vethSeq++}`).digest('hex').slice(0, 11)}`;
    const pod: Pod = Object.freeze({ name, ns, ip, ...(ipv6 === undefined ? {} : { ipv6 }), hostVeth });
    // Reserve name and IP synchronously, so concurrent addPod calls cannot collide.
    this.#pods.set(name, pod);
    this.#namespaces.add(ns);
    try {
      // Owning `<prefix>-node` means owning the prefix, so a leftover `<prefix>-<name>` is ours to replace.
      await ipCmd(
        ['-batch', '-'],
        `netns add ${ns}\nlink add ${hostVeth} netns ${this.nodeNs} type veth peer name eth0 netns ${ns}\n`,
      );
      if (this.#destroyed) throw new Error(`sandbox ${this.prefix} destroyed while adding pod ${name}`);
      await Promise.all([
        ipCmd(
          ['-n', ns, '-batch', '-'],
          [
            'link set lo up',
            'link set eth0 addrgenmode none',
            `addr add ${ip}/32 dev eth0`,
            'link set eth0 up',
            `route add ${POD_GATEWAY} dev eth0 scope link`,
            `route add default via ${POD_GATEWAY} dev eth0`,
            // Calico's IPv6: the pod's /128, default via a link-local address of the node's side of the veth.
            ...(ipv6 ? [`addr add ${ipv6}/128 dev eth0 nodad`, `route add default via ${POD_GATEWAY_IPV6} dev eth0`] : []),
            '',
          ].join('\n'),
        ),
        ipCmd(
          ['-n', this.nodeNs, '-batch', '-'],
          [
            `link set ${hostVeth} address ee:ee:ee:ee:ee:ee`,
            `ntable change name arp_cache dev ${hostVeth} proxy_delay 0`,
            `link set ${hostVeth} up`,
            `route add ${ip}/32 dev ${hostVeth}`,
            ...(ipv6 ? [`addr add ${POD_GATEWAY_IPV6}/64 dev ${hostVeth} nodad`, `route add ${ipv6}/128 dev ${hostVeth}`] : []),
            '',
          ].join('\n'),
        ),
      ]);
      if (this.#destroyed) throw new Error(`sandbox ${this.prefix} destroyed while adding pod ${name}`);
      this.#readyPods.add(pod);
      if (this.#bypassObj) await this.#attachBypass(pod, this.#bypassObj);
    } catch (err) {
      await this.#deletePod(pod).catch(() => {});
      throw err;
    }
    return pod;
  }

  /** Stops the pod's processes, deletes its veth (and host route) and namespace. Its name and IP can be reused. */
  async removePod(pod: Pod | string): Promise<void> {
    this.#assertUsable();
    const p = typeof pod === 'string' ? this.#pods.get(pod) : this.#pods.get(pod.name);
    if (!p || (typeof pod !== 'string' && p !== pod)) {
      throw new Error(`sandbox: no pod ${typeof pod === 'string' ? pod : pod.name} in sandbox ${this.prefix}`);
    }
    await this.#deletePod(p);
  }

  async #deletePod(pod: Pod): Promise<void> {
    await Promise.all([...this.#procs].filter(([, ns]) => ns === pod.ns).map(([p]) => p.stop(this.#graceMs)));
    await killNamespacePids([pod.ns]);
    // Delete the veth explicitly: namespace teardown is asynchronous in the kernel, and the old cali interface and
    // its /32 route must be gone before a new pod may take the same IP.
    await ipCmd(['-n', this.nodeNs, 'link', 'del', pod.hostVeth]).catch(() => {});
    const deleted = await ipRun(['netns', 'del', pod.ns]);
    this.#pods.delete(pod.name);
    this.#readyPods.delete(pod);
    // If the namespace could not be deleted, destroy() tries again.
    if (deleted.ok || !existsSync(join(NETNS_DIR, pod.ns))) this.#namespaces.delete(pod.ns);
    else throw new Error(`sandbox: cannot delete namespace ${pod.ns}: ${deleted.stderr.trim()}`);
  }

  /**
   * Runs argv inside the namespace (`ip netns exec ns …`, no shell; with `cgroup`, a /bin/sh that moves itself into
   * the child cgroup and execs it) and collects its output. Never throws on exit code.
   */
  async exec(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    this.#assertNs(ns);
    return this.#exec(ns, argv, opts);
  }

  /** `ip netns exec ns argv…`, preceded with `cgroup` by a shell that joins the child cgroup, then execs. */
  #command(ns: string, argv: readonly string[], env: NodeJS.ProcessEnv | undefined): [string, string[]] {
    const inNs = ['netns', 'exec', ns, ...argv];
    if (!this.cgroupPath) return [ipBinary(), inNs];
    // $0: the cgroup.procs file (no cgroup, no command); $1: PWD as the caller's environment has it (dash sets
    // one of its own). The PID stays the same through both execs.
    const pwd = (env ?? process.env).PWD ?? '';
    return ['/bin/sh', ['-c', JOIN_CGROUP, join(this.cgroupPath, 'cgroup.procs'), pwd, ipBinary(), ...inNs]];
  }

  async #exec(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    if (argv.length === 0) throw new Error('sandbox: empty argv');
    const p = this.#track(
      new TrackedProcess(...this.#command(ns, argv, opts.env), {
        keepOutput: true,
        ...(opts.env ? { env: opts.env } : {}),
        ...(opts.input !== undefined ? { input: opts.input } : {}),
        ...(opts.cwd ? { cwd: opts.cwd } : {}),
      }),
      ns,
    );
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    const exit = await p.exited;
    clearTimeout(timer);
    return { ...exit, ...p.output(), timedOut };
  }

  /** exec() that throws (with argv, exit status and stderr) unless the exit code is 0; returns stdout. */
  async execOrThrow(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<string> {
    const r = await this.exec(ns, argv, opts);
    if (r.code !== 0) {
      const why = r.timedOut ? 'timed out' : fmtExit(r);
      throw new Error(`[${ns}] ${argv.join(' ')} failed (${why}): ${r.stderr.trim() || r.stdout.trim()}`);
    }
    return r.stdout;
  }

  /**
   * Starts a long-running process inside the namespace. `ip netns exec` execs the command, so the PID is the
   * command's own. stdout+stderr go to a log file; use waitForLine() on stdout. destroy() stops it.
   */
  spawn(ns: string, argv: readonly string[], opts: SpawnOptions = {}): TrackedProcess {
    this.#assertNs(ns);
    if (argv.length === 0) throw new Error('sandbox: empty argv');
    const n = ++this.#spawnSeq;
    const logFile = opts.logFile ?? join(this.tmpDir, `${n}-${basename(argv[0] ?? 'proc').replace(/[^\w.-]/g, '_')}.log`);
    return this.#track(
      new TrackedProcess(...this.#command(ns, argv, opts.env), {
        logFile,
        ...(opts.env ? { env: opts.env } : {}),
        ...(opts.input !== undefined ? { input: opts.input } : {}),
        ...(opts.cwd ? { cwd: opts.cwd } : {}),
      }),
      ns,
    );
  }

  /**
   * Emulates an eBPF dataplane (needs `upstreamNetns`): compiles test/e2e/bypass.bpf.c for this sandbox's node and
   * attaches it (tc clsact, ingress, direct action) to the cali interface of every pod, now and added later, so pod
   * packets to 169.254.169.254 and fd00:ec2::254 leave through the node's eth0 without passing its netfilter.
   * Idempotent. removeBypass() (and destroy()) take it away.
   */
  installBypass(): Promise<void> {
    this.#assertUsable();
    if (!this.imdsNs) return Promise.reject(new Error('sandbox: installBypass() needs the upstreamNetns option'));
    if (this.#bypassObj) return Promise.resolve();
    this.#bypassInstalling ??= this.#installBypass(this.imdsNs).finally(() => (this.#bypassInstalling = undefined));
    return this.#bypassInstalling;
  }

  async #installBypass(imdsNs: string): Promise<void> {
    const missing = [...missingForBypass(), ...missingFilesystems(['bpf'])];
    if (missing.length) throw new Error(`sandbox: installBypass() needs: ${missing.join('; ')}`);
    this.#ensureBpffs();
    const link = async (ns: string, dev: string) => {
      const [info] = JSON.parse(await ipCmd(['-n', ns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number; address: string }[];
      if (!info) throw new Error(`sandbox: no ${dev} in ${ns}`);
      return { ifindex: info.ifindex, mac: `0x${info.address.replaceAll(':', '')}` };
    };
    const [uplink, peer] = await Promise.all([link(this.nodeNs, 'eth0'), link(imdsNs, 'eth0-wire')]);
    const obj = join(this.tmpDir, 'bypass.bpf.o');
    const clang = findBinary('clang') ?? 'clang';
    const multiarch = runSync(clang, ['-print-multiarch']).stdout.trim();
    const cc = await run(clang, [
      '-O2', '-g', '-target', 'bpf',
      ...(multiarch ? ['-I', `/usr/include/${multiarch}`] : []),
      `-DUPLINK_IFINDEX=${uplink.ifindex}`, `-DUPLINK_MAC=${uplink.mac}`, `-DPEER_MAC=${peer.mac}`,
      '-c', fileURLToPath(new URL('./bypass.bpf.c', import.meta.url)), '-o', obj,
    ]);
    if (!cc.ok) throw new Error(`sandbox: clang bypass.bpf.c failed (${cc.why}): ${cc.stderr.trim()}`);
    this.#assertUsable();
    this.#bypassObj = obj;
    await Promise.all([...this.#readyPods].map((pod) => this.#attachBypass(pod, obj)));
  }

  /** Detaches the bypass from every pod; pods added later no longer get it. */
  async removeBypass(): Promise<void> {
    this.#assertUsable();
    await this.#removeBypass();
  }

  async #removeBypass(): Promise<void> {
    await this.#bypassInstalling?.catch(() => {});
    if (!this.#bypassObj) return;
    this.#bypassObj = undefined;
    const errors: string[] = [];
    await Promise.all(
      [...this.#readyPods].map(async (pod) => {
        const r = await this.#tc(['qdisc', 'del', 'dev', pod.hostVeth, 'clsact']);
        if (r.code !== 0 && this.#pods.get(pod.name) === pod) errors.push(`${pod.hostVeth}: ${r.stderr.trim()}`);
      }),
    );
    if (errors.length) throw new Error(`sandbox: removing the bypass failed: ${errors.join('; ')}`);
  }

  async #attachBypass(pod: Pod, obj: string): Promise<void> {
    const dev = pod.hostVeth;
    const r = await this.#tc(['-batch', '-'], `qdisc add dev ${dev} clsact
filter add dev ${dev} ingress bpf da obj ${obj} sec tc
`);
    if (r.code !== 0) throw new Error(`sandbox: attaching the bypass to ${dev} failed (${fmtExit(r)}): ${r.stderr.trim()}`);
  }

  /**
   * tc inside the node namespace. TC_BPF_MNT points tc at the sandbox's own bpffs: without one, tc mounts a bpffs at
   * /sys/fs/bpf by itself (tc-bpf(8), ENVIRONMENT).
   */
  #tc(args: readonly string[], input?: string): Promise<ExecResult> {
    return this.#exec(this.nodeNs, [findBinary('tc') ?? 'tc', ...args], {
      env: { PATH: process.env.PATH, TC_BPF_MNT: this.bpffsPath },
      ...(input === undefined ? {} : { input }),
    });
  }

  #track(p: TrackedProcess, ns: string): TrackedProcess {
    this.#procs.set(p, ns);
    void p.exited.then(() => this.#procs.delete(p));
    return p;
  }

  /**
   * Stops every tracked process (SIGTERM, SIGKILL after the grace period), kills anything else left inside the
   * sandbox's namespaces, deletes the namespaces (and with them the veths). Idempotent; safe after any failure.
   * Rejects only if a namespace could not be deleted.
   */
  destroy(): Promise<void> {
    this.#destroyed ??= this.#destroy();
    return this.#destroyed;
  }

  async #destroy(): Promise<void> {
    const errors: string[] = [];
    try {
      // Deleting the namespaces would take the tc filters with them; remove them first anyway.
      await this.#removeBypass().catch((err: Error) => errors.push(err.message));
      await Promise.all([...this.#procs.keys()].map((p) => p.stop(this.#graceMs)));
      const names = this.#ordered();
      if (names.length) await killNamespacePids(names);
      if (this.cgroupPath && existsSync(this.cgroupPath)) {
        killCgroupPids(this.cgroupPath);
        await cgroupEmptied(this.cgroupPath, 5_000);
        errors.push(...removeCgroup(this.cgroupPath));
      }
      if (names.length) {
        await ipRun(['-force', '-batch', '-'], names.map((n) => `netns del ${n}\n`).join(''));
        const left = parseNetnsList(await ipCmd(['netns', 'list'])).filter((n) => names.includes(n));
        if (left.length) errors.push(`namespaces not deleted: ${left.join(', ')}`);
      }
      this.#pods.clear();
      this.#readyPods.clear();
      this.#namespaces.clear();
      // Pins go with the bpffs's contents, then both mounts; the temp dir only once nothing is mounted below it.
      errors.push(...(this.#keepLogs ? unmountAll(this.tmpDir) : removeTmpDir(this.tmpDir)));
      if (errors.length) throw new Error(`sandbox ${this.prefix}: ${errors.join('; ')}`);
    } finally {
      live.delete(this);
      if (live.size === 0) uninstallHandlers();
    }
  }

  /** Pods first, node last. */
  #ordered(): string[] {
    return [...this.#namespaces].sort((a, b) => Number(a === this.nodeNs) - Number(b === this.nodeNs));
  }

  /**
   * Synchronous last-resort cleanup for process exit/signals: SIGKILL by PID, delete namespaces. Keeps the logs
   * (and says where on stderr; Sandbox.sweep(prefix) removes them). Normal code should await destroy().
   */
  destroySync(): void {
    if (!live.has(this)) return;
    live.delete(this);
    this.#destroyed ??= Promise.resolve();
    for (const p of this.#procs.keys()) p.kill('SIGKILL');
    const names = this.#ordered();
    if (names.length) {
      const pids = ipSync(['-force', '-batch', '-'], names.map((n) => `netns pids ${n}\n`).join(''));
      for (const pid of parsePids(pids.stdout)) killPid(pid, 'SIGKILL');
    }
    const errors = this.cgroupPath ? destroyCgroupSync(this.cgroupPath) : [];
    if (names.length) ipSync(['-force', '-batch', '-'], names.map((n) => `netns del ${n}\n`).join(''));
    errors.push(...unmountAll(this.tmpDir));
    this.#namespaces.clear();
    this.#pods.clear();
    this.#readyPods.clear();
    try {
      const failed = errors.length ? `; left behind (Sandbox.sweep(${JSON.stringify(this.prefix)}) retries): ${errors.join('; ')}` : '';
      writeSync(2, `sandbox ${this.prefix}: cleaned up at process exit; logs kept in ${this.tmpDir}${failed}\n`);
    } catch {
      // stderr closed
    }
  }
}

/** SIGKILL every process inside the given namespaces (by PID, from `ip netns pids`; missing namespaces are fine). */
async function killNamespacePids(names: readonly string[]): Promise<void> {
  const r = await ipRun(['-force', '-batch', '-'], names.map((n) => `netns pids ${n}\n`).join(''));
  for (const pid of parsePids(r.stdout)) killPid(pid, 'SIGKILL');
}
