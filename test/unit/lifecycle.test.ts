import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { pino, type Logger } from 'pino';
import { Lifecycle } from '../../src/lifecycle.ts';

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
