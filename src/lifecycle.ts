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
