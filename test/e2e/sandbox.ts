// Network-namespace sandbox for the end-to-end tests, the demo and the benchmarks.
//
// One "node" namespace (lo up, host IP and 169.254.169.254 on lo, a fake NIC `eth0` carrying the default route) and
// one namespace per "pod", joined to the node by a veth pair named like Calico's (`cali` + 11 hex on the node side,
// `eth0` in the pod), routed the Calico way (pod: 169.254.1.1 link route + default via it; node: proxy ARP and a /32
// host route per pod). Nothing is ever configured in the root namespace: veth pairs are created directly inside the
// namespaces. Every process started here is tracked and stopped by PID; every namespace is deleted by destroy(),
// by the process exit/signal handlers after a crash, or by Sandbox.sweep(prefix) after a hard kill.
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { TrackedProcess, fmtExit } from './procs.ts';

export { TrackedProcess } from './procs.ts';
export type { ExitInfo, LineMatcher } from './procs.ts';

export const METADATA_IP = '169.254.169.254';
/** The gateway every Calico pod routes through; answered by proxy ARP on the node's cali interface. */
export const POD_GATEWAY = '169.254.1.1';
export const DEFAULT_HOST_IP = '10.77.0.1';

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
}

export interface PodSpec {
  /** lowercase letters, digits and '-', ≤ 32 chars, not 'node'. The namespace is `<prefix>-<name>`. */
  name: string;
  /** Pod IPv4 address; default: the next free one of 10.77.1.2, 10.77.1.3, … */
  ip?: string;
}

export interface Pod {
  readonly name: string;
  readonly ns: string;
  readonly ip: string;
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

/** Runs `ip` with the given arguments (and batch input), no shell. */
async function ipRun(args: readonly string[], input?: string): Promise<{ ok: boolean; stdout: string; stderr: string; why: string }> {
  const p = new TrackedProcess(ipBinary(), args, { keepOutput: true, ...(input === undefined ? {} : { input }) });
  const exit = await p.exited;
  return { ok: exit.code === 0, ...p.output(), why: fmtExit(exit) };
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
  /** Temp dir for process logs (and anything else a test wants to put there). */
  readonly tmpDir: string;

  readonly #graceMs: number;
  readonly #keepLogs: boolean;
  /** Namespaces this sandbox created (or is creating) and must delete. */
  readonly #namespaces = new Set<string>();
  readonly #pods = new Map<string, Pod>();
  readonly #procs = new Map<TrackedProcess, string>();
  #vethSeq = 0;
  #ipSeq = 0;
  #spawnSeq = 0;
  #destroyed: Promise<void> | undefined;

  private constructor(prefix: string, hostIp: string, opts: SandboxOptions) {
    this.prefix = prefix;
    this.nodeNs = `${prefix}-node`;
    this.hostIp = hostIp;
    this.#graceMs = opts.graceMs ?? 2_000;
    this.#keepLogs = opts.keepLogs ?? process.env.KIAM_E2E_KEEP_LOGS === '1';
    this.tmpDir = mkdtempSync(join(tmpdir(), `kiam-e2e-${prefix}-`));
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

  /**
   * For tests: `const gate = Sandbox.gate(['curl']); test('…', { skip: gate.skip }, async () => { gate.assertReady(); … })`.
   * Skips with the reason when something is missing, unless CI=true: then the test runs and fails.
   */
  static gate(extra: readonly string[] = []): Gate {
    const missing = Sandbox.prerequisites(extra);
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
   * Deletes namespaces `<prefix>-*` left by a crashed run of the SAME prefix (processes still inside them are killed
   * by PID, as listed by `ip netns pids`). Returns the names removed.
   */
  static async sweep(prefix: string): Promise<string[]> {
    validatePrefix(prefix);
    for (const sb of live) {
      if (sb.prefix === prefix) throw new Error(`sandbox: prefix ${prefix} belongs to a live sandbox of this process`);
    }
    // The crashed run's log directories go too.
    for (const d of readdirSync(tmpdir())) {
      if (d.startsWith(`kiam-e2e-${prefix}-`)) rmSync(join(tmpdir(), d), { recursive: true, force: true });
    }
    const names = parseNetnsList(await ipCmd(['netns', 'list'])).filter((n) => n.startsWith(`${prefix}-`));
    if (names.length === 0) return [];
    await killNamespacePids(names);
    await ipCmd(['-force', '-batch', '-'], names.map((n) => `netns del ${n}\n`).join(''));
    return names;
  }

  static async create(opts: SandboxOptions = {}): Promise<Sandbox> {
    const missing = Sandbox.prerequisites();
    if (missing.length) throw new Error(`sandbox prerequisites missing: ${missing.join('; ')}`);
    const prefix = opts.prefix ?? `kiamt${randomBytes(2).toString('hex')}`;
    validatePrefix(prefix);
    const hostIp = opts.hostIp ?? DEFAULT_HOST_IP;
    if (!isIPv4(hostIp) || hostIp === METADATA_IP || hostIp === POD_GATEWAY) {
      throw new Error(`sandbox: invalid hostIp ${JSON.stringify(hostIp)}`);
    }
    if (opts.sweep) await Sandbox.sweep(prefix);
    const sb = new Sandbox(prefix, hostIp, opts);
    live.add(sb);
    installHandlers();
    try {
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

  async #setupNode(): Promise<void> {
    const node = this.nodeNs;
    try {
      await ipCmd(['netns', 'add', node]);
    } catch (err) {
      throw new Error(
        `sandbox: cannot create namespace ${node} (a crashed run of prefix ${this.prefix}? use Sandbox.sweep): ${(err as Error).message}`,
      );
    }
    this.#namespaces.add(node);
    // eth0/eth0-wire: a fake NIC (its peer stays down) carrying the default route, as on a real node. Proxy ARP for
    // 169.254.1.1 only answers when the node has a route to it that leaves through another interface.
    await ipCmd(
      ['-n', node, '-batch', '-'],
      [
        'link set lo up',
        `addr add ${this.hostIp}/32 dev lo`,
        `addr add ${METADATA_IP}/32 dev lo`,
        'link add eth0 type veth peer name eth0-wire',
        'link set eth0 addrgenmode none',
        'link set eth0 up',
        'route add default dev eth0',
        '',
      ].join('\n'),
    );
    // `default` values are inherited by every cali interface created later (proxy_arp=1, no IPv6).
    const sysctl = await this.exec(node, [
      findBinary('sysctl') ?? 'sysctl',
      '-q',
      '-w',
      'net.ipv4.ip_forward=1',
      'net.ipv4.conf.default.proxy_arp=1',
      'net.ipv6.conf.all.disable_ipv6=1',
      'net.ipv6.conf.default.disable_ipv6=1',
    ]);
    if (sysctl.code !== 0) throw new Error(`sandbox: sysctl in ${node} failed: ${sysctl.stderr.trim()}`);
  }

  #assertUsable(): void {
    if (this.#destroyed) throw new Error(`sandbox ${this.prefix} is destroyed`);
  }

  #assertNs(ns: string): void {
    this.#assertUsable();
    if (ns !== this.nodeNs && ![...this.#pods.values()].some((p) => p.ns === ns)) {
      throw new Error(`sandbox: ${JSON.stringify(ns)} is not a namespace of sandbox ${this.prefix}`);
    }
  }

  #ipInUse(ip: string): boolean {
    return ip === this.hostIp || [...this.#pods.values()].some((p) => p.ip === ip);
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
    if (!POD_NAME_RE.test(name) || name === 'node') {
      throw new Error(`sandbox: invalid pod name ${JSON.stringify(name)} (want ${POD_NAME_RE}, not 'node')`);
    }
    if (this.#pods.has(name)) throw new Error(`sandbox: pod ${name} exists`);
    const ip = spec.ip ?? this.#nextIp();
    if (!isIPv4(ip) || ip === METADATA_IP || ip === POD_GATEWAY || ip.startsWith('127.') || ip === '0.0.0.0') {
      throw new Error(`sandbox: invalid pod IP ${JSON.stringify(ip)}`);
    }
    if (this.#ipInUse(ip)) throw new Error(`sandbox: IP ${ip} is in use`);
    const ns = `${this.prefix}-${name}`;
    const hostVeth = `cali${createHash('sha1').update(`${this.prefix}/${name}/${this.#vethSeq++}`).digest('hex').slice(0, 11)}`;
    const pod: Pod = Object.freeze({ name, ns, ip, hostVeth });
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
            '',
          ].join('\n'),
        ),
      ]);
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
    // If the namespace could not be deleted, destroy() tries again.
    if (deleted.ok || !existsSync(join(NETNS_DIR, pod.ns))) this.#namespaces.delete(pod.ns);
    else throw new Error(`sandbox: cannot delete namespace ${pod.ns}: ${deleted.stderr.trim()}`);
  }

  /** Runs argv inside the namespace (`ip netns exec ns …`, no shell) and collects its output. Never throws on exit code. */
  async exec(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    this.#assertNs(ns);
    if (argv.length === 0) throw new Error('sandbox: empty argv');
    const p = this.#track(
      new TrackedProcess(ipBinary(), ['netns', 'exec', ns, ...argv], {
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
      new TrackedProcess(ipBinary(), ['netns', 'exec', ns, ...argv], {
        logFile,
        ...(opts.env ? { env: opts.env } : {}),
        ...(opts.input !== undefined ? { input: opts.input } : {}),
        ...(opts.cwd ? { cwd: opts.cwd } : {}),
      }),
      ns,
    );
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
    try {
      await Promise.all([...this.#procs.keys()].map((p) => p.stop(this.#graceMs)));
      const names = this.#ordered();
      if (names.length) {
        await killNamespacePids(names);
        await ipRun(['-force', '-batch', '-'], names.map((n) => `netns del ${n}\n`).join(''));
        const left = parseNetnsList(await ipCmd(['netns', 'list'])).filter((n) => names.includes(n));
        if (left.length) throw new Error(`sandbox ${this.prefix}: namespaces not deleted: ${left.join(', ')}`);
      }
      this.#pods.clear();
      this.#namespaces.clear();
      if (!this.#keepLogs) rmSync(this.tmpDir, { recursive: true, force: true });
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
      ipSync(['-force', '-batch', '-'], names.map((n) => `netns del ${n}\n`).join(''));
    }
    this.#namespaces.clear();
    this.#pods.clear();
    try {
      writeSync(2, `sandbox ${this.prefix}: cleaned up at process exit; logs kept in ${this.tmpDir}\n`);
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
