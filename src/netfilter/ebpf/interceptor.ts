/**
 * The eBPF socket redirect as an interceptor: loads kiam.bpf.o with bpftool, pins its programs and maps under
 * bpffs, attaches the four programs to the cgroup v2 root (`multi`, beside Cilium's or Calico's own hooks), writes
 * the config map, and re-checks all of it on a timer. Every bpftool call goes through the CommandRunner. The
 * programs stay attached when the agent stops: pods then get "connection refused", never the real service.
 */
import { createSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import type { Clock } from '../../clock.ts';
import type { Metrics } from '../../metrics.ts';
import { runChecked, type CommandRunner } from '../exec.ts';
import { PeriodicReconciler, type Interceptor } from '../interceptor.ts';
import {
  CONFIG_MAP,
  configUpdateArgs,
  HOOKS,
  layout,
  parseReadBatch,
  plan,
  PROG_PREFIX,
  renderReadBatch,
  wantedConfig,
  type AttachedProg,
  type EbpfSpec,
  type Layout,
  type LiveState,
  type MapConfig,
  type Stats,
} from './plan.ts';

const BPFTOOL_TIMEOUT_MS = 15_000;
/** How long the UDP probe may take to show up in the map. */
const PROBE_ATTEMPTS = 3;

/** Connects a UDP socket to ip:port (which sends nothing) and closes it: what the program's probe check sees. */
export type NetnsProbe = (ip: string, port: number) => Promise<void>;

export const udpProbe: NetnsProbe = (ip, port) =>
  new Promise((resolve, reject) => {
    const socket = createSocket('udp4');
    socket.once('error', (err) => {
      socket.close();
      reject(err);
    });
    socket.connect(port, ip, () => {
      socket.close();
      resolve();
    });
  });

export interface EbpfStatus {
  cgroupRoot: string;
  pinDir: string;
  /** Our programs and foreign ones on our four hooks. */
  attached: AttachedProg[];
  /** Our pinned programs per hook (id), null where the pin is missing. */
  pinned: Record<string, number | null>;
  config: { hostIp: string | null; hostIpv6: string | null; port: number; hostNetnsCookie: string } | null;
  stats: Stats | null;
  inSync: boolean;
  drift: string[];
}

export interface EbpfInterceptorDeps {
  runner: CommandRunner;
  clock: Clock;
  metrics: Pick<Metrics, 'ebpfReconciles' | 'ebpfPresent' | 'ebpfRedirects'>;
  logger: Logger;
  spec: EbpfSpec;
  /** Path of the compiled kiam.bpf.o. */
  object: string;
  intervalMs: number;
  probe?: NetnsProbe;
}

export class EbpfInterceptor extends PeriodicReconciler implements Interceptor {
  readonly kind = 'ebpf' as const;
  private readonly deps: EbpfInterceptorDeps;
  private readonly logger: Logger;
  private readonly layout: Layout;
  private readonly probe: NetnsProbe;
  /** The node's netns cookie as learned by the probe; 0n: init_net. */
  private hostCookie: bigint | undefined;
  private isPresent = false;

  constructor(deps: EbpfInterceptorDeps) {
    super(deps.clock, deps.intervalMs, 'eBPF socket redirect check failed; retrying on the next tick');
    this.deps = deps;
    this.logger = deps.logger.child({ component: 'ebpf', cgroup: deps.spec.cgroupRoot });
    this.layout = layout(deps.spec.bpffs);
    this.probe = deps.probe ?? udpProbe;
  }

  get present(): boolean {
    return this.isPresent;
  }

  protected get log(): Logger {
    return this.logger;
  }

  /** Load (when missing), attach, learn the node's netns cookie, write the config. */
  install(): Promise<void> {
    return this.exclusive(async () => {
      try {
        await this.reconcile(true);
        this.logger.info({ hostIp: this.deps.spec.hostIp, hostIpv6: this.deps.spec.hostIpv6, port: this.deps.spec.port, hostNetnsCookie: String(this.hostCookie) }, 'eBPF socket redirect installed');
      } catch (err) {
        this.setPresent(false);
        throw err;
      }
    });
  }

  check(): Promise<'in-sync' | 'repaired'> {
    return this.exclusive(async () => {
      try {
        const result = await this.reconcile(false);
        this.deps.metrics.ebpfReconciles.inc({ result });
        return result;
      } catch (err) {
        this.setPresent(false);
        this.deps.metrics.ebpfReconciles.inc({ result: 'error' });
        throw err;
      }
    });
  }

  async remove(): Promise<boolean> {
    await this.stop();
    return this.exclusive(async () => {
      const removed = await removeEbpf(this.deps.runner, this.deps.spec, this.logger);
      this.setPresent(false);
      return removed;
    });
  }

  status(): Promise<EbpfStatus> {
    return readEbpfStatus(this.deps.runner, this.deps.spec, this.hostCookie ?? 0n);
  }

  private async reconcile(learn: boolean): Promise<'in-sync' | 'repaired'> {
    const { runner, spec } = this.deps;
    let live = await readLive(runner, spec);
    // A redirect already configured (by `kiam init`, or before a restart) keeps its cookie while we re-learn it, so
    // interception never pauses.
    if (this.hostCookie === undefined && live.config?.hostIp4) this.hostCookie = live.config.hostNetnsCookie;
    const wanted = wantedConfig(spec, this.hostCookie ?? 0n);
    const p = plan(live, wanted);
    const inSync = !p.load && p.attach.length === 0 && p.detach.length === 0 && !p.writeConfig;
    if (inSync && !learn) {
      this.setPresent(true);
      this.updateStats(live.stats);
      return 'in-sync';
    }
    if (!learn) this.logger.warn({ drift: p.drift }, 'eBPF socket redirect drifted; repairing');
    if (p.load) {
      await this.load();
      // Fresh maps: interception stays off (host_ip4 0) until the node's netns is known.
      await this.writeConfig({ ...wanted, hostIp4: null });
      live = await readLive(runner, spec);
    }
    const { attach, detach } = plan(live, wanted);
    for (const hook of attach) {
      const h = HOOKS.find((x) => x.hook === hook)!;
      await runChecked(runner, ['bpftool', 'cgroup', 'attach', spec.cgroupRoot, h.hook, 'pinned', this.layout.prog(h.prog), 'multi'], { timeoutMs: BPFTOOL_TIMEOUT_MS });
    }
    if (learn || this.hostCookie === undefined) await this.learnCookie(wanted);
    await this.writeConfig(wantedConfig(spec, this.hostCookie ?? 0n));
    // Stale programs (an older load) go only now: until the new ones are configured, the old ones, with their own
    // still-configured maps, are what keeps intercepting (the new ones pass everything while host_ip4 is 0).
    for (const stale of detach) await detachProg(runner, spec.cgroupRoot, stale);
    const after = plan(await readLive(runner, spec), wantedConfig(spec, this.hostCookie ?? 0n));
    if (after.load || after.attach.length || after.detach.length || after.writeConfig) {
      throw new Error(`eBPF socket redirect still differs after repair: ${after.drift.join('; ')}`);
    }
    this.setPresent(true);
    if (!learn) this.logger.info('eBPF socket redirect repaired');
    return inSync ? 'in-sync' : 'repaired';
  }

  private async load(): Promise<void> {
    const { runner } = this.deps;
    // A partial pin directory (a crash mid-load, a newer object) is replaced whole; programs still attached keep
    // their own maps until they are detached below.
    await runChecked(runner, ['rm', '-rf', this.layout.dir], { timeoutMs: BPFTOOL_TIMEOUT_MS });
    await runChecked(runner, ['mkdir', '-p', this.layout.dir], { timeoutMs: BPFTOOL_TIMEOUT_MS });
    await runChecked(runner, ['bpftool', 'prog', 'loadall', this.deps.object, this.layout.progsDir, 'pinmaps', this.layout.mapsDir], { timeoutMs: BPFTOOL_TIMEOUT_MS });
    this.logger.info({ object: this.deps.object, pinDir: this.layout.dir }, 'eBPF programs loaded and pinned');
  }

  /**
   * Learn the netns cookie of the namespace we run in (the node's: the agent runs with hostNetwork): set a random
   * probe address in the map, connect a UDP socket to it, read back what the program recorded. A pod would have to
   * guess a random 127/8 address and port within these few milliseconds to be taken for the node.
   */
  private async learnCookie(wanted: MapConfig): Promise<void> {
    for (let attempt = 1; attempt <= PROBE_ATTEMPTS; attempt++) {
      const probeIp4 = `127.${randomInt(1, 255)}.${randomInt(0, 256)}.${randomInt(1, 255)}`;
      const probePort = randomInt(1024, 65536);
      const current = this.hostCookie ?? 0n;
      await this.writeConfig({ ...wanted, hostNetnsCookie: current, hostIp4: this.hostCookie === undefined ? null : wanted.hostIp4, probeIp4, probePort });
      try {
        await this.probe(probeIp4, probePort);
      } catch (err) {
        this.logger.warn({ err }, 'netns probe socket failed');
        continue;
      }
      const live = await readLive(this.deps.runner, this.deps.spec);
      const learned = live.config?.learnedCookie ?? 0n;
      if (learned !== 0n) {
        if (this.hostCookie !== undefined && this.hostCookie !== learned) this.logger.warn({ was: String(this.hostCookie), now: String(learned) }, "the node's netns cookie changed");
        this.hostCookie = learned;
        return;
      }
    }
    this.hostCookie = this.hostCookie ?? 0n;
    this.logger.warn(
      { cgroupRoot: this.deps.spec.cgroupRoot },
      "could not learn this network namespace's cookie (is the agent outside the cgroup the programs are attached to?): assuming the node is the initial network namespace",
    );
  }

  private writeConfig(config: MapConfig): Promise<unknown> {
    return runChecked(this.deps.runner, ['bpftool', ...configUpdateArgs(this.layout.map(CONFIG_MAP), config)], { timeoutMs: BPFTOOL_TIMEOUT_MS });
  }

  private updateStats(stats: Stats | null): void {
    if (!stats) return;
    const g = this.deps.metrics.ebpfRedirects;
    g.set({ family: 'ipv4' }, stats.redirect4);
    g.set({ family: 'ipv6' }, stats.redirect6);
    g.set({ family: 'ipv4-mapped' }, stats.redirect6Mapped);
  }

  private setPresent(present: boolean): void {
    this.isPresent = present;
    this.deps.metrics.ebpfPresent.set(present ? 1 : 0);
  }

}

/** One bpftool process reads the cgroup's programs, our pins, the config and the counters. */
export async function readLive(runner: CommandRunner, spec: Pick<EbpfSpec, 'cgroupRoot' | 'bpffs'>): Promise<LiveState> {
  const result = await runner.run(['bpftool', '-j', 'batch', 'file', '-'], { input: renderReadBatch(spec), timeoutMs: BPFTOOL_TIMEOUT_MS });
  if (result.code === 127) throw new Error('bpftool is not installed');
  return parseReadBatch(result.stdout, result.stderr);
}

async function detachProg(runner: CommandRunner, cgroup: string, prog: AttachedProg): Promise<void> {
  await runChecked(runner, ['bpftool', 'cgroup', 'detach', cgroup, prog.hook, 'id', String(prog.id)], { timeoutMs: BPFTOOL_TIMEOUT_MS });
}

/**
 * Detach every program of ours (named kiam_*) from the four hooks and delete our pins. Foreign programs on the same
 * hooks stay. Needs no addresses, so `kiam intercept remove` works with the paths alone. False when nothing was there.
 */
export async function removeEbpf(runner: CommandRunner, spec: Pick<EbpfSpec, 'cgroupRoot' | 'bpffs'>, logger: Logger): Promise<boolean> {
  const live = await readLive(runner, spec);
  const ours = live.attached.filter((a) => a.name.startsWith(PROG_PREFIX));
  for (const prog of ours) await detachProg(runner, spec.cgroupRoot, prog);
  const pinned = Object.keys(live.pinned).length > 0 || live.configMapId !== null || live.error === null;
  const dir = layout(spec.bpffs).dir;
  const rm = await runner.run(['rm', '-rf', dir], { timeoutMs: BPFTOOL_TIMEOUT_MS });
  if (rm.code !== 0) throw new Error(`rm -rf ${dir} exited ${rm.code}: ${rm.stderr.trim()}`);
  if (ours.length === 0 && !pinned) {
    logger.info({ cgroup: spec.cgroupRoot }, 'no eBPF socket redirect to remove');
    return false;
  }
  logger.info({ cgroup: spec.cgroupRoot, detached: ours.map((p) => `${p.hook}:${p.id}`) }, 'eBPF socket redirect removed');
  return true;
}

export async function readEbpfStatus(runner: CommandRunner, spec: EbpfSpec | Pick<EbpfSpec, 'cgroupRoot' | 'bpffs'>, hostCookie?: bigint): Promise<EbpfStatus> {
  const live = await readLive(runner, spec);
  const full = 'hostIp' in spec;
  const p = full ? plan(live, wantedConfig(spec, hostCookie ?? live.config?.hostNetnsCookie ?? 0n)) : undefined;
  const ours = live.attached.filter((a) => a.name.startsWith(PROG_PREFIX));
  return {
    cgroupRoot: spec.cgroupRoot,
    pinDir: layout(spec.bpffs).dir,
    attached: live.attached,
    pinned: Object.fromEntries(HOOKS.map((h) => [h.hook, live.pinned[h.hook]?.id ?? null])),
    config: live.config && {
      hostIp: live.config.hostIp4,
      hostIpv6: live.config.hostIp6,
      port: live.config.port,
      hostNetnsCookie: String(live.config.hostNetnsCookie),
    },
    stats: live.stats,
    inSync: p ? p.drift.length === 0 && !p.load && !p.writeConfig : ours.length === HOOKS.length && live.error === null,
    drift: p ? p.drift : [],
  };
}
