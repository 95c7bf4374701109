/**
 * Warms the cache for the identities that live pods need, and keeps them retained (so refreshed) exactly
 * while at least one pod still needs them.
 *
 * The resolver reports each pod's identity through podIdentity(uid, identity) (undefined when the pod is gone or
 * has no role). An identity's first pod retains it in the cache and queues one prefetch; its last pod releases
 * it. Prefetches run at most `concurrency` at a time (default 8), in arrival order; an identity queued and then
 * abandoned before its turn is skipped.
 */
import type { Logger } from 'pino';

/** The identity shape consumed (structurally a RoleIdentity). */
export interface PrefetchIdentity {
  key: string;
  roleArn: string;
  externalId?: string;
  sessionName: string;
  tags?: ReadonlyArray<{ readonly key: string; readonly value: string }>;
}

/** The part of CredentialCache the prefetcher drives. */
export interface PrefetchTarget {
  retain(identity: PrefetchIdentity): void;
  release(key: string): void;
  /** Resolves when the fetch is done (or not needed); never rejects. */
  prefetch(identity: PrefetchIdentity): Promise<void>;
}

export interface PrefetcherDeps {
  cache: PrefetchTarget;
  logger: Logger;
  /** Prefetches in flight at once (default 8). */
  concurrency?: number;
}

interface Use {
  identity: PrefetchIdentity;
  pods: number;
}

export class Prefetcher {
  private readonly byPod = new Map<string, string>();
  private readonly uses = new Map<string, Use>();
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly concurrency: number;
  private active = 0;
  private stopped = false;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly deps: PrefetcherDeps) {
    const c = deps.concurrency ?? 8;
    if (!Number.isInteger(c) || c < 1) throw new Error(`Prefetcher: concurrency must be a whole number ≥ 1, got ${c}`);
    this.concurrency = c;
  }

  /** The identity this pod needs now (undefined: none, or the pod is gone). */
  podIdentity(podUid: string, identity: PrefetchIdentity | undefined): void {
    if (this.stopped) return;
    const oldKey = this.byPod.get(podUid);
    if (oldKey === identity?.key) return;
    // Retain the new identity before releasing the old one: never drop what the pod may still be served.
    if (identity) {
      this.byPod.set(podUid, identity.key);
      const use = this.uses.get(identity.key);
      if (use) {
        use.pods++;
      } else {
        this.uses.set(identity.key, { identity, pods: 1 });
        this.deps.cache.retain(identity);
        this.enqueue(identity.key);
      }
    } else {
      this.byPod.delete(podUid);
    }
    if (oldKey !== undefined) {
      const old = this.uses.get(oldKey);
      if (old && --old.pods === 0) {
        this.uses.delete(oldKey);
        this.deps.cache.release(oldKey);
      }
    }
  }

  /** Identities in use by at least one pod. */
  get identities(): number {
    return this.uses.size;
  }

  /** Prefetches waiting for a slot. */
  get pending(): number {
    return this.queue.length;
  }

  /** Resolves once nothing is queued or running (for tests and orderly start-up). */
  idle(): Promise<void> {
    if (this.active === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop prefetching (queue dropped). Does not release: stopping the cache cancels everything. Idempotent. */
  stop(): void {
    this.stopped = true;
    this.queue.length = 0;
    this.queued.clear();
    if (this.active === 0) this.notifyIdle();
  }

  private enqueue(key: string): void {
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.queue.push(key);
    this.pump();
  }

  private pump(): void {
    while (!this.stopped && this.active < this.concurrency && this.queue.length > 0) {
      const key = this.queue.shift() as string;
      this.queued.delete(key);
      const use = this.uses.get(key);
      if (!use) continue; // abandoned before its turn
      this.active++;
      this.run(use.identity).finally(() => {
        this.active--;
        this.pump();
      });
    }
    if (this.active === 0 && this.queue.length === 0) this.notifyIdle();
  }

  private async run(identity: PrefetchIdentity): Promise<void> {
    try {
      await this.deps.cache.prefetch(identity);
    } catch (err) {
      // prefetch() is documented never to reject; keep going if one does.
      this.deps.logger.warn({ roleArn: identity.roleArn, sessionName: identity.sessionName, error: String(err) }, 'prefetch failed');
    }
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
