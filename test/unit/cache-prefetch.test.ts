import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { Prefetcher, type PrefetchIdentity, type PrefetchTarget } from '../../src/cache/prefetch.ts';
import type { AssumeRoleRequest, StsCredentials } from '../../src/cache/sts.ts';
import { createMetrics } from '../../src/metrics.ts';
import type { RoleIdentity } from '../../src/server/ports.ts';
import { FakeClock, settle } from '../fakes/clock.ts';
import { ScriptedSts } from '../fakes/sts.ts';

const MIN = 60_000;
const logger = pino({ level: 'silent' });

function identity(name: string): RoleIdentity {
  const roleArn = `arn:aws:iam::123456789012:role/${name}`;
  const sessionName = `kiam-${name}`;
  return { key: `${roleArn}||${sessionName}`, roleArn, roleName: name, sessionName };
}

function setup(opts: { hang?: boolean; concurrency?: number } = {}) {
  const clock = new FakeClock();
  const issue = (req: AssumeRoleRequest, n: number): StsCredentials => ({
    accessKeyId: `ASIATEST${String(n).padStart(12, '0')}`,
    secretAccessKey: `secret-${n}`,
    sessionToken: `token-${n}`,
    expiration: clock.now() + req.durationSeconds * 1000,
  });
  const sts = new ScriptedSts(opts.hang ? () => 'hang' : issue);
  const cache = new CredentialCache({
    sts,
    clock,
    metrics: createMetrics(),
    logger,
    sessionDurationSec: 3600,
    stsTimeoutMs: 5000,
    random: () => 0,
  });
  const prefetcher = new Prefetcher({ cache, logger, ...(opts.concurrency ? { concurrency: opts.concurrency } : {}) });
  const stop = () => {
    prefetcher.stop();
    cache.stop();
  };
  return { clock, sts, cache, prefetcher, issue, stop };
}

/** A PrefetchTarget that records what the prefetcher asks of it. */
class RecordingTarget implements PrefetchTarget {
  readonly events: string[] = [];
  retain(identity: PrefetchIdentity): void {
    this.events.push(`retain ${identity.key}`);
  }
  release(key: string): void {
    this.events.push(`release ${key}`);
  }
  async prefetch(identity: PrefetchIdentity): Promise<void> {
    this.events.push(`prefetch ${identity.key}`);
  }
}

describe('Prefetcher', () => {
  it('makes one STS call for 200 pods of one identity, and serves them all from the cache', async () => {
    const { sts, cache, prefetcher, stop } = setup();
    const id = identity('shared');
    for (let i = 0; i < 200; i++) prefetcher.podIdentity(`pod-${i}`, id);
    await prefetcher.idle();
    assert.equal(sts.calls.length, 1);
    assert.equal(prefetcher.identities, 1);
    const served = await Promise.all(Array.from({ length: 200 }, () => cache.get(id)));
    assert.ok(served.every((c) => c.accessKeyId === served[0]!.accessKeyId));
    assert.equal(sts.calls.length, 1);
    stop();
  });

  it('keeps at most 8 prefetches in flight, queueing the rest, one call per identity', async () => {
    const { sts, prefetcher, issue, stop } = setup({ hang: true });
    const ids = Array.from({ length: 30 }, (_, i) => identity(`role-${i}`));
    for (const [i, id] of ids.entries()) {
      prefetcher.podIdentity(`pod-${i}-a`, id);
      prefetcher.podIdentity(`pod-${i}-b`, id);
    }
    await settle();
    let maxInFlight = 0;
    while (sts.inFlight > 0) {
      maxInFlight = Math.max(maxInFlight, sts.inFlight);
      assert.ok(sts.inFlight <= 8, `${sts.inFlight} calls in flight`);
      // Answer the oldest pending call, as a slow STS would.
      const next = sts.calls.find((c) => !c.settled)!;
      next.resolve(issue(next.req, sts.calls.indexOf(next) + 1));
      await settle();
    }
    await prefetcher.idle();
    assert.equal(maxInFlight, 8);
    assert.equal(sts.calls.length, 30);
    assert.deepEqual(new Set(sts.calls.map((c) => c.req.roleArn)), new Set(ids.map((i) => i.roleArn)));
    assert.equal(prefetcher.pending, 0);
    stop();
  });

  it('honours a smaller concurrency', async () => {
    const { sts, prefetcher, stop } = setup({ hang: true, concurrency: 2 });
    for (let i = 0; i < 5; i++) prefetcher.podIdentity(`pod-${i}`, identity(`r${i}`));
    await settle();
    assert.equal(sts.inFlight, 2);
    assert.equal(prefetcher.pending, 3);
    stop();
    assert.equal(prefetcher.pending, 0);
  });

  it('retains the new identity before releasing the old, and releases only with the last pod', () => {
    const target = new RecordingTarget();
    const prefetcher = new Prefetcher({ cache: target, logger });
    const a = identity('a');
    const b = identity('b');
    prefetcher.podIdentity('p1', a);
    prefetcher.podIdentity('p2', a);
    prefetcher.podIdentity('p1', a); // unchanged: nothing
    prefetcher.podIdentity('p1', b); // p1 moves to b; p2 still uses a
    prefetcher.podIdentity('p2', undefined); // last user of a gone
    prefetcher.podIdentity('p1', undefined);
    prefetcher.podIdentity('p3', undefined); // unknown pod, no identity: nothing
    assert.deepEqual(target.events, [
      `retain ${a.key}`,
      `prefetch ${a.key}`,
      `retain ${b.key}`,
      `prefetch ${b.key}`,
      `release ${a.key}`,
      `release ${b.key}`,
    ]);
    assert.equal(prefetcher.identities, 0);
    prefetcher.stop();
  });

  it('refreshes only while a pod uses the identity', async () => {
    const { sts, cache, prefetcher, clock, stop } = setup();
    const id = identity('app');
    prefetcher.podIdentity('p1', id);
    await prefetcher.idle();
    await clock.advance(12 * MIN); // the refresh of a 1 h session
    assert.equal(sts.calls.length, 2);
    prefetcher.podIdentity('p1', undefined);
    assert.equal(cache.size, 0);
    assert.equal(clock.timers, 0);
    await clock.advance(120 * MIN);
    assert.equal(sts.calls.length, 2);
    stop();
  });

  it('skips a queued identity whose pods went away before its turn', async () => {
    const { sts, prefetcher, stop } = setup({ hang: true, concurrency: 1 });
    prefetcher.podIdentity('p1', identity('first'));
    prefetcher.podIdentity('p2', identity('gone'));
    prefetcher.podIdentity('p2', undefined);
    await settle();
    assert.equal(sts.calls.length, 1);
    sts.calls[0]!.reject(new Error('down'));
    await prefetcher.idle();
    assert.equal(sts.calls.length, 1);
    assert.deepEqual(sts.calls.map((c) => c.req.roleArn), [identity('first').roleArn]);
    stop();
  });

  it('a pod added at runtime is served from the warm cache', async () => {
    const { sts, cache, prefetcher, stop } = setup();
    const id = identity('late');
    prefetcher.podIdentity('late-pod', id);
    await prefetcher.idle();
    const c = await cache.get(id);
    assert.equal(sts.calls.length, 1);
    assert.match(c.accessKeyId, /^ASIATEST/);
    stop();
  });

  it('ignores changes after stop()', () => {
    const target = new RecordingTarget();
    const prefetcher = new Prefetcher({ cache: target, logger });
    prefetcher.stop();
    prefetcher.podIdentity('p1', identity('a'));
    assert.deepEqual(target.events, []);
  });

  it('rejects a nonsensical concurrency', () => {
    assert.throws(() => new Prefetcher({ cache: new RecordingTarget(), logger, concurrency: 0 }), /concurrency/);
  });
});
