import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { pino, type Logger } from 'pino';
import { Lifecycle, Startup } from '../../src/lifecycle.ts';

interface LogLine {
  level: number;
  msg: string;
  hook?: string;
  err?: { message: string };
}

/** A real pino logger that records every line it writes. */
function recordingLogger(): { logger: Logger; lines: LogLine[]; errors: () => LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'trace' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines, errors: () => lines.filter((l) => l.level >= 50) };
}

const silent = pino({ level: 'silent' });

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('Lifecycle', () => {
  test('runs stop hooks in reverse registration order and resolves true', async () => {
    const lc = new Lifecycle(silent);
    const ran: string[] = [];
    for (const name of ['metrics', 'upstream', 'cache', 'watch', 'server']) lc.onStop(name, () => void ran.push(name));
    assert.equal(await lc.stop(), true);
    assert.deepEqual(ran, ['server', 'watch', 'cache', 'upstream', 'metrics']);
  });

  test('with no hooks, stop resolves true', async () => {
    assert.equal(await new Lifecycle(silent).stop(), true);
  });

  test('awaits each async hook before starting the next', async () => {
    const lc = new Lifecycle(silent);
    const events: string[] = [];
    const gate = deferred();
    lc.onStop('first', () => void events.push('first'));
    lc.onStop('second', async () => {
      events.push('second:start');
      await gate.promise;
      events.push('second:end');
    });
    const done = lc.stop();
    // Let the second hook start and block on the gate.
    await new Promise<void>((r) => setImmediate(r));
    assert.deepEqual(events, ['second:start']);
    gate.resolve();
    assert.equal(await done, true);
    assert.deepEqual(events, ['second:start', 'second:end', 'first']);
  });

  test('a throwing or rejecting hook does not stop the others; stop resolves false and logs the failure', async () => {
    const { logger, errors } = recordingLogger();
    const lc = new Lifecycle(logger);
    const ran: string[] = [];
    lc.onStop('a', () => void ran.push('a'));
    lc.onStop('rejects', async () => {
      ran.push('rejects');
      throw new Error('async boom');
    });
    lc.onStop('b', () => void ran.push('b'));
    lc.onStop('throws', () => {
      ran.push('throws');
      throw new Error('sync boom');
    });
    lc.onStop('c', () => void ran.push('c'));
    assert.equal(await lc.stop(), false);
    assert.deepEqual(ran, ['c', 'throws', 'b', 'rejects', 'a']);
    const failures = errors();
    assert.deepEqual(failures.map((l) => l.hook).sort(), ['rejects', 'throws']);
    assert.ok(failures.some((l) => l.err?.message === 'sync boom'));
    assert.ok(failures.some((l) => l.err?.message === 'async boom'));
  });

  test('stop twice runs the hooks once and returns the same promise', async () => {
    const lc = new Lifecycle(silent);
    let calls = 0;
    lc.onStop('counter', async () => {
      calls++;
    });
    assert.equal(lc.stopped, false);
    const first = lc.stop();
    const second = lc.stop();
    assert.equal(lc.stopped, true);
    assert.strictEqual(first, second);
    assert.equal(await first, true);
    assert.strictEqual(lc.stop(), first);
    assert.equal(calls, 1);
  });

  test('a hook that never settles is abandoned at the deadline; later hooks are skipped with an error log', async (t) => {
    // Lifecycle reads Date.now() and arms a setTimeout (it takes no Clock), so the deadline is driven with node's
    // mock timers: exact, and no real waiting. setImmediate stays real, to let promise jobs run between ticks.
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
    const { logger, errors } = recordingLogger();
    const deadlineMs = 50;
    const lc = new Lifecycle(logger, deadlineMs);
    const ran: string[] = [];
    lc.onStop('registered first, runs last', () => void ran.push('last'));
    lc.onStop('hangs', () => {
      ran.push('hangs');
      return new Promise<void>(() => {});
    });
    lc.onStop('registered last, runs first', () => void ran.push('first'));
    let result: boolean | undefined;
    void lc.stop().then((clean) => (result = clean));
    const flush = async () => {
      for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
    };
    await flush();
    assert.deepEqual(ran, ['first', 'hangs']);
    t.mock.timers.tick(deadlineMs - 1);
    await flush();
    assert.equal(result, undefined, 'still waiting 1 ms before the deadline');
    assert.deepEqual(errors(), []);
    t.mock.timers.tick(1);
    await flush();
    assert.equal(result, false, 'abandoned at the deadline');
    assert.deepEqual(ran, ['first', 'hangs'], 'the hook after the hung one never ran');
    const errs = errors();
    assert.equal(errs.length, 1, JSON.stringify(errs));
    assert.equal(errs[0]!.hook, 'hangs');
    assert.match(errs[0]!.msg, /deadline/);
  });

  test('onStop after stop began throws and the hook never runs', async () => {
    const lc = new Lifecycle(silent);
    lc.onStop('early', () => {});
    const stopping = lc.stop();
    let lateRan = false;
    assert.throws(
      () =>
        lc.onStop('late', () => {
          lateRan = true;
        }),
      /late/,
    );
    assert.equal(await stopping, true);
    assert.throws(() => lc.onStop('later still', () => {}), /after stop/);
    assert.equal(lateRan, false);
  });

  test('a hook may not register another hook while stopping', async () => {
    const lc = new Lifecycle(silent);
    let registrationError: unknown;
    lc.onStop('sneaky', () => {
      try {
        lc.onStop('nested', () => {});
      } catch (err) {
        registrationError = err;
      }
    });
    assert.equal(await lc.stop(), true);
    assert.ok(registrationError instanceof Error);
  });
});

/**
 * Startup, driven the way src/main.ts drives it: the agent's start-up steps (metrics port, watches synced, metadata
 * server listening, interception installed), each a fake the test settles, each registering a stop hook for what it
 * set up once it is done; then ready() marks the agent serving. SIGTERM (startup.stop) arrives during each step in
 * turn, and between two steps.
 */
const STEPS = ['metrics server', 'watches synced', 'metadata server', 'interception install'] as const;

function agentStartup(opts: { heedSignal?: boolean; settleTimeoutMs?: number; logger?: Logger } = {}) {
  const logger = opts.logger ?? silent;
  const lifecycle = new Lifecycle(logger);
  const startup = new Startup(lifecycle, logger, opts.settleTimeoutMs ?? 5_000);
  const events: string[] = [];
  const gates = new Map(STEPS.map((name) => [name, deferred()]));
  const begun = new Map(STEPS.map((name) => [name, deferred()]));
  const state = { serving: false };
  const outcome = (async () => {
    try {
      for (const name of STEPS) {
        await startup.step(name, (signal) => {
          events.push(`start ${name}`);
          begun.get(name)!.resolve();
          const done = gates.get(name)!.promise;
          if (!opts.heedSignal) return done;
          // As resolver.whenReady(signal) and installInterception(…, signal) do: give up when the signal aborts.
          return Promise.race([done, new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))]);
        });
        events.push(`done ${name}`);
        lifecycle.onStop(name, () => void events.push(`stop ${name}`));
      }
      startup.ready(() => {
        state.serving = true;
      });
      return 'ready';
    } catch (err) {
      if (!startup.signal.aborted) throw err;
      return 'stopped';
    } finally {
      startup.finished();
    }
  })();
  return { lifecycle, startup, events, gates, begun, state, outcome };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('Startup: SIGTERM during start-up', () => {
  for (const [index, step] of STEPS.entries()) {
    test(`during "${step}" (a step that does not heed the signal): nothing after it starts, its own stop hook runs too, never ready`, async () => {
      const a = agentStartup();
      for (const earlier of STEPS.slice(0, index)) a.gates.get(earlier)!.resolve();
      await a.begun.get(step)!.promise;
      const stopping = a.startup.stop(new Error('stopped by SIGTERM during start-up'));
      await tick();
      assert.ok(!a.events.some((e) => e.startsWith('stop ')), 'no stop hook runs while the step is in flight');
      a.gates.get(step)!.resolve(); // e.g. listenOn() or the install finishing after the signal
      assert.equal(await stopping, true, 'a clean stop');
      assert.equal(await a.outcome, 'stopped');
      assert.equal(a.state.serving, false);
      const upTo = STEPS.slice(0, index + 1);
      assert.deepEqual(a.events, [
        ...upTo.flatMap((s) => [`start ${s}`, `done ${s}`]),
        ...[...upTo].reverse().map((s) => `stop ${s}`),
      ]);
      for (const later of STEPS.slice(index + 1)) a.gates.get(later)!.resolve();
      await tick();
      assert.ok(!a.events.some((e) => STEPS.slice(index + 1).some((l) => e === `start ${l}`)), 'no later step ever starts');
    });

    test(`during "${step}" (a step that heeds the signal): it ends at once, the steps before it are stopped`, async () => {
      const a = agentStartup({ heedSignal: true });
      for (const earlier of STEPS.slice(0, index)) a.gates.get(earlier)!.resolve();
      await a.begun.get(step)!.promise;
      assert.equal(await a.startup.stop(new Error('SIGTERM')), true);
      assert.equal(await a.outcome, 'stopped');
      assert.equal(a.state.serving, false);
      const before = STEPS.slice(0, index);
      assert.deepEqual(a.events, [...before.flatMap((s) => [`start ${s}`, `done ${s}`]), `start ${step}`, ...[...before].reverse().map((s) => `stop ${s}`)]);
    });
  }

  test('between two steps: the next one never starts', async () => {
    const a = agentStartup();
    a.gates.get('metrics server')!.resolve();
    a.gates.get('watches synced')!.resolve();
    await a.begun.get('metadata server')!.promise;
    a.gates.get('metadata server')!.resolve();
    const stopping = a.startup.stop(new Error('SIGTERM')); // before the code after the step has run
    assert.equal(await stopping, true);
    assert.equal(await a.outcome, 'stopped');
    assert.ok(!a.events.includes('start interception install'));
    assert.deepEqual(a.events.filter((e) => e.startsWith('stop ')), ['stop metadata server', 'stop watches synced', 'stop metrics server']);
    assert.equal(a.state.serving, false);
  });

  test('after start-up: ready, and stop runs every hook at once', async () => {
    const a = agentStartup();
    for (const name of STEPS) a.gates.get(name)!.resolve();
    assert.equal(await a.outcome, 'ready');
    assert.equal(a.state.serving, true);
    assert.equal(await a.startup.stop(new Error('SIGTERM')), true);
    assert.deepEqual(a.events.filter((e) => e.startsWith('stop ')), [...STEPS].reverse().map((s) => `stop ${s}`));
  });

  test('ready() after the signal throws and never marks the agent serving; step() never runs the step', async () => {
    const lifecycle = new Lifecycle(silent);
    const startup = new Startup(lifecycle, silent);
    startup.finished();
    await startup.stop(new Error('SIGTERM'));
    let marked = false;
    assert.throws(() => startup.ready(() => (marked = true)), /SIGTERM/);
    assert.equal(marked, false);
    let ran = false;
    await assert.rejects(startup.step('late', () => (ran = true)), /SIGTERM/);
    assert.equal(ran, false);
  });

  test('a step that never ends after the signal: stop waits for it only so long, then stops what was started', async () => {
    const { logger, errors } = recordingLogger();
    const a = agentStartup({ settleTimeoutMs: 20, logger });
    a.gates.get('metrics server')!.resolve();
    await a.begun.get('watches synced')!.promise;
    assert.equal(await a.startup.stop(new Error('SIGTERM')), true);
    assert.deepEqual(a.events.filter((e) => e.startsWith('stop ')), ['stop metrics server']);
    assert.equal(errors()[0]?.msg, 'a start-up step did not end after the stop signal; stopping anyway');
  });
});
