import type { Logger } from 'pino';

type StopHook = () => Promise<void> | void;

/**
 * Ordered start-up and shutdown. Components register a stop hook as they start; stop() runs the hooks in
 * reverse order, once, isolating failures (one hook throwing never skips the rest), and gives up on a hook
 * that outlives the overall deadline so that the process always exits in time.
 */
export class Lifecycle {
  private readonly hooks: { name: string; fn: StopHook }[] = [];
  private stopping: Promise<boolean> | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly deadlineMs = 10_000,
  ) {}

  get stopped(): boolean {
    return this.stopping !== undefined;
  }

  /** Register a stop hook. Refused once stop() has begun: a late starter must clean up itself. */
  onStop(name: string, fn: StopHook): void {
    if (this.stopping) throw new Error(`lifecycle: cannot register "${name}" after stop began`);
    this.hooks.push({ name, fn });
  }

  /** Run every stop hook, last registered first. Resolves true when all finished cleanly within the deadline. */
  stop(): Promise<boolean> {
    this.stopping ??= this.runHooks();
    return this.stopping;
  }

  private async runHooks(): Promise<boolean> {
    const deadline = Date.now() + this.deadlineMs;
    let clean = true;
    for (const { name, fn } of [...this.hooks].reverse()) {
      const left = deadline - Date.now();
      if (left <= 0) {
        this.logger.error({ hook: name }, 'shutdown deadline passed; skipping remaining stop hooks');
        return false;
      }
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((resolve) => {
        // Deliberately not unref'd: a hung hook that holds no handle must still be abandoned (logged, stop() → false)
        // rather than the loop draining silently. The timer is cleared as soon as the hook settles.
        timer = setTimeout(() => resolve('timeout'), left);
      });
      try {
        const result = await Promise.race([Promise.resolve().then(fn), timeout]);
        if (result === 'timeout') {
          this.logger.error({ hook: name }, 'stop hook did not finish before the shutdown deadline');
          return false;
        }
      } catch (err) {
        clean = false;
        this.logger.error({ hook: name, err }, 'stop hook failed');
      } finally {
        clearTimeout(timer);
      }
    }
    return clean;
  }
}

/**
 * Start-up that a signal can stop between any two steps. main.ts runs every step through step(): once stop() has
 * been called no further step starts (step() throws the abort reason instead), a step that takes the signal can
 * end early, and ready() marks the agent serving only in the same tick as it checks the signal, so a SIGTERM
 * during start-up never ends with interception installed by a step that began after it, nor with the agent
 * marked serving. stop() waits for the start-up to settle (the step in flight ends and the code after it
 * registers its stop hooks) before it runs the lifecycle's stop hooks, so that whatever that step set up is stopped
 * too; it waits at most settleTimeoutMs for a step that does not heed the signal.
 */
export class Startup {
  private readonly controller = new AbortController();
  private settle!: () => void;
  private readonly settled = new Promise<void>((resolve) => (this.settle = resolve));

  constructor(
    private readonly lifecycle: Lifecycle,
    private readonly logger: Logger,
    private readonly settleTimeoutMs = 3_000,
  ) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Run one step of the start-up, unless it was stopped: then throw the reason, and the step never runs. */
  async step<T>(name: string, fn: (signal: AbortSignal) => Promise<T> | T): Promise<T> {
    this.signal.throwIfAborted();
    this.logger.debug({ step: name }, 'start-up step');
    return fn(this.signal);
  }

  /** The last step: mark the agent ready (fn), in the same tick as the check, unless it was stopped. */
  ready(fn: () => void): void {
    this.signal.throwIfAborted();
    fn();
  }

  /** The start-up sequence has ended, whichever way (completed, failed, or stopped). */
  finished(): void {
    this.settle();
  }

  /**
   * Stop: abort the start-up, wait for it to settle (at most settleTimeoutMs), then run the stop hooks.
   * Resolves as Lifecycle.stop() does. Idempotent.
   */
  async stop(reason: Error): Promise<boolean> {
    if (!this.signal.aborted) this.controller.abort(reason);
    let timer: NodeJS.Timeout | undefined;
    const waited = await Promise.race([
      this.settled.then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), this.settleTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (!waited) this.logger.error({ waitedMs: this.settleTimeoutMs }, 'a start-up step did not end after the stop signal; stopping anyway');
    return this.lifecycle.stop();
  }
}
