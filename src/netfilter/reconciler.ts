/**
 * Installs the interception rules, re-checks them on a timer and re-applies them on drift, removes them.
 * Every iptables call goes through the CommandRunner; every write is one iptables-restore transaction per
 * family, covering the nat DNAT chain and the filter backstop together. ip6tables gets both when the spec has an
 * IPv6 host address, and the backstop alone otherwise; in that second case a node without ip6tables or without
 * IPv6 is no failure (one warning, IPv4 goes on).
 */
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import type { Backend, BackendName } from './backend.ts';
import { PeriodicReconciler, type Interceptor } from './interceptor.ts';
import { CommandError, EXIT_NOT_FOUND, runChecked, type CommandResult, type CommandRunner } from './exec.ts';
import {
  assertValidRuleSpec,
  backstopChain,
  compareFamily,
  desiredBackstop,
  desiredRules,
  familyState,
  formatArgs,
  HOOK_CHAINS,
  managesDnat,
  metadataAddress,
  METADATA_PORT,
  renderInstall,
  renderRemove,
  rulesAhead,
  type ChainState,
  type FamilyState,
  type IpFamily,
  type ResolvedRuleSpec,
  type RuleSpec,
} from './rules.ts';

export type CheckResult = 'in-sync' | 'repaired';

export interface RuleReconcilerDeps {
  runner: CommandRunner;
  clock: Clock;
  metrics: Pick<Metrics, 'ruleReconciles' | 'rulesPresent'>;
  logger: Logger;
  spec: RuleSpec;
  /** Already detected (see detectBackend). */
  backend: Backend;
  /** Re-check period for start(). */
  intervalMs: number;
}

/** The backstop part of a family's status. */
export interface BackstopStatus {
  /** The filter chain, e.g. KIAM-METADATA-BACKSTOP. */
  chain: string;
  chainPresent: boolean;
  /** 1-based positions of the jumps from filter INPUT and FORWARD (exactly one each, at 1, when installed). */
  jumpPositions: { INPUT: number[]; FORWARD: number[] };
  /** The chain's rules as wanted and as found, as `-A CHAIN …` lines. */
  rulesWanted: string[];
  rulesFound: string[];
}

/** What one family (iptables or ip6tables) holds. */
export interface FamilyStatus {
  /** The nat chain is there. */
  chainPresent: boolean;
  /** PREROUTING jumps to the chain at least once. */
  jumpPresent: boolean;
  /** 1-based position of the first PREROUTING jump, null when there is none. */
  jumpPosition: number | null;
  /** Positions of every PREROUTING jump (more than one is drift). */
  jumpPositions: number[];
  /** The nat chain's rules as wanted and as found, as `-A CHAIN …` lines. */
  rulesWanted: string[];
  rulesFound: string[];
  backstop: BackstopStatus;
  /**
   * The rules ahead of our jumps in nat PREROUTING and filter INPUT/FORWARD, as `-A CHAIN …` lines. Only those
   * that handle the metadata address are drift (a CNI's or kube-proxy's jumps ahead of ours are not).
   */
  rulesAhead: string[];
  inSync: boolean;
  /** Why it is not in sync; empty when it is. */
  drift: string[];
}

/** The ip6tables part of the status. */
export interface Ipv6Status extends FamilyStatus {
  /**
   * The DNAT target wanted for fd00:ec2::254; null when there is no IPv6 host address. With a spec, only the backstop
   * is then wanted (backstop.rulesWanted filled, rulesWanted empty, the nat table neither compared nor in drift).
   * Without a spec the section only shows what is there and inSync says whether all of it is.
   */
  hostIpv6: string | null;
  /** Why ip6tables could not be read (not installed, no IPv6 in the kernel, …); everything then reads as absent. */
  error?: string;
}

/**
 * What `kiam iptables status` prints: a plain, JSON-friendly object. The top-level fields other than `ipv6` describe
 * iptables (IPv4) as they always did, except `inSync` and `drift`, which cover IPv6 too (its drift prefixed `ipv6: `)
 * when the spec has an IPv6 host address, or when it has none but ip6tables can be read (the backstop alone).
 */
export interface RuleStatus extends FamilyStatus {
  backend: BackendName;
  backendReason: string;
  chain: string;
  ipv6: Ipv6Status;
}

/**
 * How ip6tables fails on a node without it or without IPv6: not installed (127); the legacy tables cannot be
 * created (`unable to initialize table`, `can't initialize ip6tables table`), nft or the socket refuses the family.
 */
const NO_IPV6 = /unable to initialize table|can't initialize ip6tables table|Address family not supported|Protocol not supported/i;

function noIpv6(err: unknown): err is CommandError {
  return err instanceof CommandError && (err.code === EXIT_NOT_FOUND || NO_IPV6.test(err.stderr));
}

const SAVE_TIMEOUT_MS = 15_000;
const RESTORE_TIMEOUT_MS = 30_000;
const CONNTRACK_TIMEOUT_MS = 10_000;

export class RuleReconciler extends PeriodicReconciler implements Interceptor {
  /** The interceptor port's label (see interceptor.ts). */
  readonly kind = 'iptables' as const;
  private readonly runner: CommandRunner;
  private readonly metrics: RuleReconcilerDeps['metrics'];
  private readonly logger: Logger;
  private readonly spec: ResolvedRuleSpec;
  private readonly backend: Backend;
  /** ipv4 and ipv6 (ipv6 with the backstop alone when the spec has no IPv6 host address). */
  private readonly families: readonly IpFamily[] = ['ipv4', 'ipv6'];
  /** Why ip6tables cannot take the IPv6 backstop (backstop alone only), once warned; cleared once it could. */
  private ipv6Unusable: string | undefined;

  private isPresent = false;
  /** Shadowing rules already warned about (family and rule), so each is logged once. */
  private readonly warnedShadows = new Set<string>();

  /** Throws a RuleSpecError (every problem named) for an invalid spec. */
  constructor(deps: RuleReconcilerDeps) {
    super(deps.clock, deps.intervalMs, 'interception rule check failed; retrying on the next tick');
    this.spec = assertValidRuleSpec(deps.spec);
    this.runner = deps.runner;
    this.metrics = deps.metrics;
    this.logger = deps.logger.child({ component: 'iptables', backend: deps.backend.name, chain: this.spec.chain });
    this.backend = deps.backend;
  }

  protected get log(): Logger {
    return this.logger;
  }

  /** True while the rules are known to be in place (last install/check succeeded, no remove since). */
  get present(): boolean {
    return this.isPresent;
  }

  /**
   * Write the chains and the jumps, one transaction per family, then flush conntrack entries for the metadata
   * address. Every family is read first, so a missing ip6tables fails the install before anything is written
   * (with an IPv6 host address; without one it is warned about and IPv4 goes on).
   */
  install(): Promise<void> {
    return this.exclusive(async () => {
      const lives: Array<[IpFamily, FamilyState]> = [];
      for (const family of this.families) {
        const live = await this.unlessNoIpv6(family, () => this.read(family));
        if (live) lives.push([family, live]);
      }
      for (const [family, live] of lives) this.warnShadowing(family, compareFamily(this.spec, live, family).shadowing);
      for (const [family, live] of lives) await this.unlessNoIpv6(family, () => this.apply(family, live));
      this.setPresent(true);
      this.logger.info(
        { hostIp: this.spec.hostIp, hostIpv6: this.spec.hostIpv6, port: this.spec.port, hostInterfaces: this.spec.hostInterfaces },
        'interception rules installed',
      );
    });
  }

  /**
   * Compare the live rules with the wanted ones and re-apply on drift, each family on its own (a failure in one does
   * not keep the other from being repaired). Counts every outcome, error included.
   */
  check(): Promise<CheckResult> {
    return this.exclusive(async () => {
      let repaired = false;
      let failure: unknown;
      for (const family of this.families) {
        try {
          if (await this.checkFamily(family)) repaired = true;
        } catch (err) {
          failure ??= err;
        }
      }
      if (failure !== undefined) {
        this.metrics.ruleReconciles.inc({ result: 'error' });
        throw failure;
      }
      this.setPresent(true);
      const result: CheckResult = repaired ? 'repaired' : 'in-sync';
      this.metrics.ruleReconciles.inc({ result });
      return result;
    });
  }

  /**
   * Stop the timer, then delete every jump to the chains and the chains themselves, one transaction per family.
   * Idempotent: returns false (and writes nothing) when nothing is there.
   */
  async remove(): Promise<boolean> {
    await this.stop();
    return this.exclusive(async () => {
      const removed = await removeChain(this.runner, this.backend, this.spec.chain, this.logger);
      this.setPresent(false);
      return removed;
    });
  }

  /** Read the live state (one iptables-save per family) and describe it. */
  status(): Promise<RuleStatus> {
    return readStatus(this.runner, this.backend, this.spec);
  }

  /** One family's check: true when it was repaired, false when in sync (or IPv6 backstop alone, and no ip6tables). */
  private async checkFamily(family: IpFamily): Promise<boolean> {
    const live = await this.unlessNoIpv6(family, () => this.read(family));
    if (!live) return false;
    const { inSync, drift, shadowing } = compareFamily(this.spec, live, family);
    this.warnShadowing(family, shadowing);
    if (inSync) return false;
    // Where ip6tables already refused the backstop, every tick finds it missing: that was warned about once, and
    // it does not make the rules any less present.
    const refused = family === 'ipv6' && this.ipv6Unusable !== undefined;
    if (!refused) this.setPresent(false);
    this.logger[refused ? 'debug' : 'warn']({ family, drift }, 'interception rules drifted; re-applying');
    if ((await this.unlessNoIpv6(family, () => this.apply(family, live).then(() => true))) !== true) return false;
    this.logger.info({ family }, 'interception rules repaired');
    return true;
  }

  /**
   * Run one ip6tables step. With the IPv6 backstop alone (no IPv6 host address), a node without ip6tables or
   * without IPv6 resolves undefined instead of failing, with one warning: such a node cannot reach fd00:ec2::254
   * at all, and IPv4 must not pay for it. Everything else (IPv4, IPv6 with a DNAT, other errors) throws as is.
   */
  private async unlessNoIpv6<T>(family: IpFamily, step: () => Promise<T>): Promise<T | undefined> {
    if (managesDnat(this.spec, family)) return step();
    try {
      return await step();
    } catch (err) {
      if (!noIpv6(err)) throw err;
      if (this.ipv6Unusable === undefined) {
        this.logger.warn(
          { family, argv: err.argv, code: err.code, stderr: err.stderr.trim() },
          `ip6tables cannot take the IPv6 backstop (${err.message}); going on with IPv4 alone. A node without IPv6 cannot ` +
            `reach ${metadataAddress('ipv6')} anyway; one with IPv6 needs ip6tables (${this.backend.name}) for its pods to fail closed there`,
        );
      }
      this.ipv6Unusable = err.message;
      return undefined;
    }
  }

  private warnShadowing(family: IpFamily, shadowing: readonly string[]): void {
    for (const rule of shadowing) {
      const key = `${family} ${rule}`;
      if (this.warnedShadows.has(key)) continue;
      this.warnedShadows.add(key);
      this.logger.warn(
        { family, rule },
        `a rule ahead of our jump handles ${metadataAddress(family)} and would take that traffic first (another metadata proxy such as kube2iam?); ` +
          'our jump is moved back to position 1: remove the other proxy and its rule',
      );
    }
  }

  private read(family: IpFamily): Promise<FamilyState> {
    return readFamily(this.runner, this.backend, family, this.spec.chain);
  }

  private async apply(family: IpFamily, live: FamilyState): Promise<void> {
    try {
      await restore(this.runner, this.backend, family, renderInstall(this.spec, live, family));
    } catch (err) {
      this.setPresent(false);
      throw err;
    }
    if (family === 'ipv6' && this.ipv6Unusable !== undefined) {
      this.ipv6Unusable = undefined;
      this.logger.info({ family }, 'ip6tables works now: the IPv6 backstop is installed');
    }
    // A backstop alone needs no flush: a filter rule sees every packet, a DNAT only a connection's first.
    if (managesDnat(this.spec, family)) await this.flushConntrack(family);
  }

  /**
   * Connections to the metadata address opened before the DNAT keep their conntrack entry and would go
   * on reaching the real service: delete them. Exit 1 with "0 flow entries" means there were none.
   * Failure here is a warning: the rules themselves are in place.
   */
  private async flushConntrack(family: IpFamily): Promise<void> {
    const address = metadataAddress(family);
    const argv = ['conntrack', ...(family === 'ipv6' ? ['-f', 'ipv6'] : []), '-D', '-p', 'tcp', '--orig-dst', address, '--orig-port-dst', String(METADATA_PORT)];
    const result = await this.runner.run(argv, { timeoutMs: CONNTRACK_TIMEOUT_MS });
    if (result.code === 0 || (result.code === 1 && /\b0 flow entries\b/.test(result.stderr + result.stdout))) return;
    const problem = result.code === 127 ? 'conntrack is not installed' : `conntrack exited ${result.code}`;
    this.logger.warn(
      { argv, code: result.code, stderr: result.stderr.trim() },
      `${problem}: connections to ${address} opened before the rules were installed may still reach the real metadata service`,
    );
  }

  private setPresent(present: boolean): void {
    this.isPresent = present;
    this.metrics.rulesPresent.set(present ? 1 : 0);
  }
}

function saveCommand(backend: Backend, family: IpFamily): string {
  return family === 'ipv6' ? backend.save6 : backend.save;
}

/** One family's iptables-save, every table (nat and filter are both needed). */
function save(runner: CommandRunner, backend: Backend, family: IpFamily): Promise<CommandResult> {
  return runner.run([saveCommand(backend, family)], { timeoutMs: SAVE_TIMEOUT_MS });
}

async function readFamily(runner: CommandRunner, backend: Backend, family: IpFamily, chain: string): Promise<FamilyState> {
  const result = await runChecked(runner, [saveCommand(backend, family)], { timeoutMs: SAVE_TIMEOUT_MS });
  return familyState(result.stdout, chain);
}

async function restore(runner: CommandRunner, backend: Backend, family: IpFamily, payload: string): Promise<void> {
  const command = family === 'ipv6' ? backend.restore6 : backend.restore;
  await runChecked(runner, [command, '--noflush', '--wait', '5'], { input: payload, timeoutMs: RESTORE_TIMEOUT_MS });
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] || 'no output';
}

/**
 * Delete every jump to the chain and to its backstop, and both chains, one transaction per family. Needs no rule
 * spec, so `kiam iptables remove` can clean up with nothing but the backend. IPv4 first; ip6tables is then read
 * too, and a node where it cannot be read (not installed, no IPv6) only gets a log line. Returns false (writing
 * nothing) when nothing is there.
 */
export async function removeChain(runner: CommandRunner, backend: Backend, chain: string, logger: Logger): Promise<boolean> {
  let removed = false;
  for (const family of ['ipv4', 'ipv6'] as const) {
    const result = await save(runner, backend, family);
    if (result.code !== 0 && family === 'ipv4') throw new CommandError([backend.save], result);
    if (result.code !== 0) {
      logger[result.code === EXIT_NOT_FOUND ? 'info' : 'warn'](
        { argv: [backend.save6], code: result.code, stderr: result.stderr.trim() },
        `cannot read ip6tables (${firstLine(result.stderr)}): IPv6 rules, if any, not removed`,
      );
      continue;
    }
    const live = familyState(result.stdout, chain);
    const payload = renderRemove(chain, live);
    if (payload === null) continue;
    await restore(runner, backend, family, payload);
    removed = true;
    logger.info({ family, chain, backstop: backstopChain(chain), jumpsRemoved: live.nat.jumps.length + live.backstop.jumps.length }, 'interception rules removed');
  }
  if (!removed) logger.info({ chain }, 'no interception rules to remove');
  return removed;
}

/**
 * Describe what is present, in both families. With a spec, also what is wanted and whether the two agree;
 * without one (`kiam iptables status` given no --host-ip), rulesWanted is empty and inSync says only whether
 * everything is there. With a spec, ip6tables is compared too: the DNAT and the backstop with an IPv6 host
 * address, the backstop alone without one. The top-level inSync counts IPv6 with an IPv6 host address, and
 * without one only when ip6tables can be read (a node without it or without IPv6 is not drift, as in install()).
 * Without a spec, IPv6 is described and left out.
 */
export async function readStatus(
  runner: CommandRunner,
  backend: Backend,
  spec: ResolvedRuleSpec | { chain: string },
): Promise<RuleStatus> {
  const chain = spec.chain;
  const full = 'hostIp' in spec ? spec : undefined;
  const v4 = familyStatus(await readFamily(runner, backend, 'ipv4', chain), chain, 'ipv4', full);
  const hostIpv6 = full?.hostIpv6 ?? null;
  const result6 = await save(runner, backend, 'ipv6');
  let v6: Ipv6Status;
  if (result6.code === 0) {
    v6 = { ...familyStatus(familyState(result6.stdout, chain), chain, 'ipv6', full), hostIpv6 };
  } else {
    const error = `${backend.save6} exited ${result6.code}: ${firstLine(result6.stderr)}`;
    const empty = familyStatus(familyState('', chain), chain, 'ipv6', full);
    v6 = { ...empty, hostIpv6, error, ...(full ? { inSync: false, drift: [`cannot read ip6tables: ${error}`] } : {}) };
  }
  const counted = full !== undefined && (hostIpv6 !== null || result6.code === 0);
  return {
    backend: backend.name,
    backendReason: backend.reason,
    chain,
    ...v4,
    inSync: v4.inSync && (!counted || v6.inSync),
    drift: [...v4.drift, ...(counted ? v6.drift.map((d) => `ipv6: ${d}`) : [])],
    ipv6: v6,
  };
}

function familyStatus(live: FamilyState, chain: string, family: IpFamily, spec: ResolvedRuleSpec | undefined): FamilyStatus {
  const backstop = backstopChain(chain);
  const lines = (name: string, rules: readonly string[]) => rules.map((rule) => `-A ${name} ${rule}`);
  const positions = (state: ChainState, hook: string) => state.jumps.filter((j) => j.chain === hook).map((j) => j.position);
  const compared = spec ? compareFamily(spec, live, family) : undefined;
  // Without a spec, inSync says only whether everything is there: both chains and every hook's jump.
  const everything =
    live.nat.chainPresent && live.backstop.chainPresent &&
    HOOK_CHAINS.nat.every((h) => positions(live.nat, h).length > 0) && HOOK_CHAINS.filter.every((h) => positions(live.backstop, h).length > 0);
  const jumpPositions = positions(live.nat, 'PREROUTING');
  const address = metadataAddress(family);
  const ahead = [...rulesAhead(live.nat, address), ...rulesAhead(live.backstop, address)].map((r) => `-A ${r.chain} ${r.spec}`);
  return {
    chainPresent: live.nat.chainPresent,
    jumpPresent: jumpPositions.length > 0,
    jumpPosition: jumpPositions[0] ?? null,
    jumpPositions,
    rulesWanted: spec && managesDnat(spec, family) ? lines(chain, desiredRules(spec, family).map(formatArgs)) : [],
    rulesFound: lines(chain, live.nat.rules),
    backstop: {
      chain: backstop,
      chainPresent: live.backstop.chainPresent,
      jumpPositions: { INPUT: positions(live.backstop, 'INPUT'), FORWARD: positions(live.backstop, 'FORWARD') },
      rulesWanted: spec ? lines(backstop, desiredBackstop(spec, family).map(formatArgs)) : [],
      rulesFound: lines(backstop, live.backstop.rules),
    },
    rulesAhead: ahead,
    inSync: compared?.inSync ?? everything,
    drift: compared?.drift ?? [],
  };
}
