/**
 * Installs the interception rules, re-checks them on a timer and re-applies them on drift, removes them.
 * Every iptables call goes through the CommandRunner; every write is one iptables-restore transaction.
 */
import type { Logger } from 'pino';
import type { Clock, Timer } from '../clock.ts';
import type { Metrics } from '../metrics.ts';
import type { Backend, BackendName } from './backend.ts';
import { runChecked, type CommandRunner } from './exec.ts';
import {
  assertValidRuleSpec,
  chainState,
  compare,
  desiredRules,
  formatArgs,
  METADATA_IP,
  METADATA_PORT,
  renderInstall,
  renderRemove,
  type ChainState,
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

/** What `kiam iptables status` prints: a plain, JSON-friendly object. */
export interface RuleStatus {
  backend: BackendName;
  backendReason: string;
  chain: string;
  chainPresent: boolean;
  /** PREROUTING jumps to the chain at least once. */
  jumpPresent: boolean;
  /** 1-based position of the first PREROUTING jump, null when there is none. */
  jumpPosition: number | null;
  /** Positions of every PREROUTING jump (more than one is drift). */
  jumpPositions: number[];
  /** The chain's rules as wanted and as found, as `-A CHAIN …` lines. */
  rulesWanted: string[];
  rulesFound: string[];
  inSync: boolean;
  /** Why it is not in sync; empty when it is. */
  drift: string[];
}

const SAVE_TIMEOUT_MS = 15_000;
const RESTORE_TIMEOUT_MS = 30_000;
const CONNTRACK_TIMEOUT_MS = 10_000;

export class RuleReconciler {
  private readonly runner: CommandRunner;
  private readonly clock: Clock;
  private readonly metrics: RuleReconcilerDeps['metrics'];
  private readonly logger: Logger;
  private readonly spec: Required<RuleSpec>;
  private readonly backend: Backend;
  private readonly intervalMs: number;

  private timer: Timer | undefined;
  private running = false;
  /** Serialises install/check/remove so a timer tick never interleaves with an explicit call. */
  private queue: Promise<unknown> = Promise.resolve();
  private isPresent = false;

  /** Throws a RuleSpecError (every problem named) for an invalid spec. */
  constructor(deps: RuleReconcilerDeps) {
    this.spec = assertValidRuleSpec(deps.spec);
    if (!Number.isFinite(deps.intervalMs) || deps.intervalMs <= 0) {
      throw new Error(`reconcile interval ${deps.intervalMs} ms must be a positive number`);
    }
    this.runner = deps.runner;
    this.clock = deps.clock;
    this.metrics = deps.metrics;
    this.logger = deps.logger.child({ component: 'iptables', backend: deps.backend.name, chain: this.spec.chain });
    this.backend = deps.backend;
    this.intervalMs = deps.intervalMs;
  }

  /** True while the rules are known to be in place (last install/check succeeded, no remove since). */
  get present(): boolean {
    return this.isPresent;
  }

  /** Write the chain and the jump in one transaction, then flush conntrack entries for the metadata address. */
  install(): Promise<void> {
    return this.exclusive(async () => {
      const live = await this.read();
      await this.apply(live);
      this.logger.info({ hostIp: this.spec.hostIp, port: this.spec.port, hostInterfaces: this.spec.hostInterfaces }, 'interception rules installed');
    });
  }

  /** Compare the live rules with the wanted ones and re-apply on drift. Counts every outcome, error included. */
  check(): Promise<CheckResult> {
    return this.exclusive(async () => {
      try {
        const live = await this.read();
        const { inSync, drift } = compare(this.spec, live);
        if (inSync) {
          this.setPresent(true);
          this.metrics.ruleReconciles.inc({ result: 'in-sync' });
          return 'in-sync';
        }
        this.setPresent(false);
        this.logger.warn({ drift }, 'interception rules drifted; re-applying');
        await this.apply(live);
        this.metrics.ruleReconciles.inc({ result: 'repaired' });
        this.logger.info('interception rules repaired');
        return 'repaired';
      } catch (err) {
        this.metrics.ruleReconciles.inc({ result: 'error' });
        throw err;
      }
    });
  }

  /** Re-check every intervalMs until stop(). Errors are counted and logged, never thrown out of the timer. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule();
  }

  /** Stop the timer and wait for a check in flight. */
  async stop(): Promise<void> {
    this.running = false;
    this.timer?.cancel();
    this.timer = undefined;
    await this.queue.catch(() => {});
  }

  /**
   * Stop the timer, then delete every jump to the chain and the chain itself in one transaction.
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

  /** Read the live state (one iptables-save) and describe it. */
  status(): Promise<RuleStatus> {
    return readStatus(this.runner, this.backend, this.spec);
  }

  private schedule(): void {
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      void this.tick();
    }, this.intervalMs);
  }

  private async tick(): Promise<void> {
    if (!this.running) return;
    try {
      await this.check();
    } catch (err) {
      this.logger.error({ err }, 'interception rule check failed; retrying on the next tick');
    } finally {
      if (this.running) this.schedule();
    }
  }

  private read(): Promise<ChainState> {
    return readChain(this.runner, this.backend, this.spec.chain);
  }

  private async apply(live: ChainState): Promise<void> {
    try {
      await this.restore(renderInstall(this.spec, live));
    } catch (err) {
      this.setPresent(false);
      throw err;
    }
    this.setPresent(true);
    await this.flushConntrack();
  }

  private restore(payload: string): Promise<void> {
    return restore(this.runner, this.backend, payload);
  }

  /**
   * Connections to the metadata address opened before the DNAT keep their conntrack entry and would go
   * on reaching the real service: delete them. Exit 1 with "0 flow entries" means there were none.
   * Failure here is a warning: the rules themselves are in place.
   */
  private async flushConntrack(): Promise<void> {
    const argv = ['conntrack', '-D', '-p', 'tcp', '--orig-dst', METADATA_IP, '--orig-port-dst', String(METADATA_PORT)];
    const result = await this.runner.run(argv, { timeoutMs: CONNTRACK_TIMEOUT_MS });
    if (result.code === 0 || (result.code === 1 && /\b0 flow entries\b/.test(result.stderr + result.stdout))) return;
    const problem = result.code === 127 ? 'conntrack is not installed' : `conntrack exited ${result.code}`;
    this.logger.warn(
      { argv, code: result.code, stderr: result.stderr.trim() },
      `${problem}: connections to ${METADATA_IP} opened before the rules were installed may still reach the real metadata service`,
    );
  }

  private setPresent(present: boolean): void {
    this.isPresent = present;
    this.metrics.rulesPresent.set(present ? 1 : 0);
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }
}

async function readChain(runner: CommandRunner, backend: Backend, chain: string): Promise<ChainState> {
  const result = await runChecked(runner, [backend.save, '-t', 'nat'], { timeoutMs: SAVE_TIMEOUT_MS });
  return chainState(result.stdout, chain);
}

async function restore(runner: CommandRunner, backend: Backend, payload: string): Promise<void> {
  await runChecked(runner, [backend.restore, '--noflush', '--wait', '5'], { input: payload, timeoutMs: RESTORE_TIMEOUT_MS });
}

/**
 * Delete every jump to the chain and the chain itself in one transaction. Needs no rule spec, so
 * `kiam iptables remove` can clean up with nothing but the backend. Returns false (writing nothing) when
 * nothing is there.
 */
export async function removeChain(runner: CommandRunner, backend: Backend, chain: string, logger: Logger): Promise<boolean> {
  const live = await readChain(runner, backend, chain);
  const payload = renderRemove(chain, live);
  if (payload === null) {
    logger.info({ chain }, 'no interception rules to remove');
    return false;
  }
  await restore(runner, backend, payload);
  logger.info({ chain, jumpsRemoved: live.jumps.length }, 'interception rules removed');
  return true;
}

/**
 * Describe what is present. With a spec, also what is wanted and whether the two agree; without one
 * (`kiam iptables status` given no --host-ip), rulesWanted is empty and inSync says only whether anything is there.
 */
export async function readStatus(
  runner: CommandRunner,
  backend: Backend,
  spec: Required<RuleSpec> | { chain: string },
): Promise<RuleStatus> {
  const chain = spec.chain;
  const live = await readChain(runner, backend, chain);
  const full = 'hostIp' in spec;
  const { inSync, drift, jumpPositions } = full
    ? compare(spec, live)
    : { inSync: live.chainPresent && live.jumps.length > 0, drift: [], jumpPositions: live.jumps.filter((j) => j.chain === 'PREROUTING').map((j) => j.position) };
  return {
    backend: backend.name,
    backendReason: backend.reason,
    chain,
    chainPresent: live.chainPresent,
    jumpPresent: jumpPositions.length > 0,
    jumpPosition: jumpPositions[0] ?? null,
    jumpPositions,
    rulesWanted: full ? desiredRules(spec).map((args) => `-A ${chain} ${formatArgs(args)}`) : [],
    rulesFound: live.rules.map((rule) => `-A ${chain} ${rule}`),
    inSync,
    drift,
  };
}
