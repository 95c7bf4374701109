/**
 * A scripted CommandRunner. The test lists the commands it expects, in order, with canned results;
 * the runner checks each call against the script, records argv and stdin, and fails on anything
 * unexpected with a readable diff. Failures are also kept, so a failure swallowed by the code under test
 * (a timer that logs errors) still fails the test at assertDone().
 *
 *   const runner = new ScriptedRunner()
 *     .expect(['iptables-nft-save', '-t', 'nat'], { stdout: EMPTY_NAT })
 *     .expect(['iptables-nft-restore', '--noflush', '--wait', '5'], { code: 0 }, { input: PAYLOAD });
 */
import assert from 'node:assert/strict';
import type { CommandResult, CommandRunner, RunOptions } from '../../src/netfilter/exec.ts';

export type InputMatcher = string | RegExp | ((input: string) => boolean);

export interface Expectation {
  argv: readonly string[];
  result: Partial<CommandResult>;
  /** When given, stdin must match: a string exactly, a RegExp, or a predicate. */
  input?: InputMatcher;
}

export interface RecordedCall {
  argv: string[];
  input: string | undefined;
  timeoutMs: number | undefined;
}

export class ScriptedRunner implements CommandRunner {
  private readonly script: Expectation[] = [];
  private next = 0;
  readonly calls: RecordedCall[] = [];
  readonly failures: Error[] = [];

  /** Expect argv next; answer with result (code defaults to 0, outputs to ''). */
  expect(argv: readonly string[], result: Partial<CommandResult> = {}, options: { input?: InputMatcher } = {}): this {
    this.script.push({ argv: [...argv], result, ...(options.input !== undefined ? { input: options.input } : {}) });
    return this;
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const call: RecordedCall = { argv: [...argv], input: options.input, timeoutMs: options.timeoutMs };
    this.calls.push(call);
    const index = this.next;
    const expected = this.script[index];
    try {
      if (!expected) {
        assert.fail(`unexpected command #${index + 1} (the script holds ${this.script.length}):\n  ${argv.join(' ')}${describeInput(options.input)}`);
      }
      assert.deepEqual(call.argv, [...expected.argv], `command #${index + 1} differs from the script`);
      if (expected.input !== undefined) checkInput(expected.input, options.input ?? '', index);
    } catch (err) {
      this.failures.push(err as Error);
      throw err;
    }
    this.next++;
    return { code: expected.result.code ?? 0, stdout: expected.result.stdout ?? '', stderr: expected.result.stderr ?? '' };
  }

  /** Inputs (stdin) of the calls whose argv[0] is command, in order. */
  inputsOf(command: string): string[] {
    return this.calls.filter((c) => c.argv[0] === command).map((c) => c.input ?? '');
  }

  /** Number of scripted commands not yet run. */
  get remaining(): number {
    return this.script.length - this.next;
  }

  /** Throw the first recorded failure, or if commands of the script were never run. */
  assertDone(): void {
    if (this.failures.length > 0) throw this.failures[0];
    if (this.remaining > 0) {
      const missing = this.script.slice(this.next).map((e) => `  ${e.argv.join(' ')}`).join('\n');
      assert.fail(`${this.remaining} scripted command(s) never ran:\n${missing}`);
    }
  }
}

function checkInput(matcher: InputMatcher, input: string, index: number): void {
  const label = `stdin of command #${index + 1}`;
  if (typeof matcher === 'string') {
    // Compare line by line so the assertion diff points at the differing line.
    assert.deepEqual(input.split('\n'), matcher.split('\n'), `${label} differs from the script`);
  } else if (matcher instanceof RegExp) {
    assert.match(input, matcher, `${label} does not match ${matcher}:\n${input}`);
  } else {
    assert.ok(matcher(input), `${label} was rejected by the script's predicate:\n${input}`);
  }
}

function describeInput(input: string | undefined): string {
  return input ? `\n  with stdin:\n${input.replace(/^/gm, '    | ')}` : '';
}
