/**
 * The interceptor port: what sends pods' metadata traffic to the agent. Two adapters implement it, the iptables
 * rules (reconciler.ts) and the eBPF socket redirect (ebpf/interceptor.ts); main.ts composes the ones the
 * `--intercept` mode asks for and treats them alike: install once the server listens, re-check on a timer, keep
 * them when the agent stops (pods fail closed), remove them only when asked.
 */
import type { Logger } from 'pino';
import type { Clock, Timer } from '../clock.ts';

export type { InterceptMode } from '../config.ts';

export interface Interceptor {
  /** 'iptables' or 'ebpf': a metric label and the key in `kiam intercept status`. */
  readonly kind: 'iptables' | 'ebpf';
  /** True while the interception is known to be in place (last install/check succeeded, no remove since). */
  readonly present: boolean;
  install(): Promise<void>;
  /** Compare with what is wanted and repair drift; resolves 'in-sync' or 'repaired', rejects when it cannot. */
  check(): Promise<'in-sync' | 'repaired'>;
  /** Re-check on a timer until stop(); errors are counted and logged, never thrown out of the timer. */
  start(): void;
  stop(): Promise<void>;
  /** Stop, then remove everything of ours (and only ours); false when nothing was there. */
  remove(): Promise<boolean>;
}

/**
 * What both interceptors share: install/check/remove run one at a time (a timer tick never interleaves with an
 * explicit call), and check() runs every intervalMs between start() and stop(), its errors logged, never thrown out
 * of the timer.
 */
export abstract class PeriodicReconciler {
  private timer: Timer | undefined;
  private running = false;
  private queue: Promise<unknown> = Promise.resolve();

  protected constructor(
    private readonly clock: Clock,
    private readonly intervalMs: number,
    /** Logged with the error when a timed check fails. */
    private readonly failureMessage: string,
  ) {
    if (!Number.isFinite(intervalMs) || intervalMs <= 0) throw new Error(`reconcile interval ${intervalMs} ms must be a positive number`);
  }

  abstract check(): Promise<'in-sync' | 'repaired'>;
  protected abstract get log(): Logger;

  /** Re-check every intervalMs until stop(). */
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

  /** Run fn after everything queued before it. */
  protected exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
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
      this.log.error({ err }, this.failureMessage);
    } finally {
      if (this.running) this.schedule();
    }
  }
}
