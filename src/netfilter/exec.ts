/**
 * The CommandRunner port and its one adapter: child_process.spawn with no shell. This is the only file
 * in the project that imports child_process; everything else runs commands through a CommandRunner, so
 * tests can script the exact sequence of commands they expect.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

export interface CommandResult {
  /** Exit code. 127: binary not found; 126: could not be executed; 124: timed out; 128+n: killed by signal n. */
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to the command's stdin, which is then closed. Without it stdin is empty. */
  input?: string;
  /** Kill the command (SIGKILL) after this long; it then resolves with code 124. */
  timeoutMs?: number;
}

export interface CommandRunner {
  /** Run argv (argv[0] looked up in PATH, no shell). Resolves for every exit code; never rejects for a failed command. */
  run(argv: readonly string[], options?: RunOptions): Promise<CommandResult>;
}

export const EXIT_NOT_FOUND = 127;
export const EXIT_NOT_EXECUTABLE = 126;
export const EXIT_TIMEOUT = 124;

/** A command that failed: carries the argv, exit code and stderr (and the stdin it was given, if any). */
export class CommandError extends Error {
  readonly argv: readonly string[];
  readonly code: number;
  readonly stderr: string;
  readonly stdout: string;
  readonly input: string | undefined;

  constructor(argv: readonly string[], result: CommandResult, input?: string) {
    const detail = result.stderr.trim().split('\n').slice(0, 5).join(' | ') || '(no stderr)';
    super(`${argv.join(' ')} exited ${result.code}: ${detail}`);
    this.name = 'CommandError';
    this.argv = [...argv];
    this.code = result.code;
    this.stderr = result.stderr;
    this.stdout = result.stdout;
    this.input = input;
  }
}

/** Run and throw a CommandError unless the exit code is 0 (or one of okCodes). */
export async function runChecked(
  runner: CommandRunner,
  argv: readonly string[],
  options: RunOptions & { okCodes?: readonly number[] } = {},
): Promise<CommandResult> {
  const { okCodes = [0], ...runOptions } = options;
  const result = await runner.run(argv, runOptions);
  if (!okCodes.includes(result.code)) throw new CommandError(argv, result, options.input);
  return result;
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

/**
 * The real runner. `prefix` is prepended to every argv, e.g. ['ip', 'netns', 'exec', NS] so that tests
 * run everything inside a throwaway network namespace.
 */
export function spawnRunner(prefix: readonly string[] = []): CommandRunner {
  return {
    run(argv, options = {}) {
      const full = [...prefix, ...argv];
      return new Promise<CommandResult>((resolve) => {
        const [file, ...args] = full;
        if (file === undefined) {
          resolve({ code: EXIT_NOT_FOUND, stdout: '', stderr: 'empty command' });
          return;
        }
        const stdout: Buffer[] = [];
        const stderr: Buffer[] = [];
        let timedOut = false;
        let done = false;
        let timer: NodeJS.Timeout | undefined;
        const finish = (result: CommandResult) => {
          if (done) return;
          done = true;
          if (timer) clearTimeout(timer);
          resolve(result);
        };
        let child: ChildProcessWithoutNullStreams;
        try {
          // LC_ALL=C: messages we match on ("0 flow entries") stay in English.
          child = spawn(file, args, { shell: false, stdio: 'pipe', env: { ...process.env, LC_ALL: 'C' } });
        } catch (err) {
          // e.g. an argument holding a NUL byte
          finish({ code: EXIT_NOT_EXECUTABLE, stdout: '', stderr: `${file}: cannot run: ${(err as Error).message}` });
          return;
        }
        if (options.timeoutMs !== undefined) {
          timer = setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, options.timeoutMs);
        }
        child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
        child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
        // The child may exit before reading all of stdin (EPIPE): its exit code tells the story.
        child.stdin.on('error', () => {});
        child.on('error', (err: NodeJS.ErrnoException) => {
          const code = err.code === 'ENOENT' ? EXIT_NOT_FOUND : EXIT_NOT_EXECUTABLE;
          const what = err.code === 'ENOENT' ? 'command not found' : `cannot execute (${err.code ?? err.message})`;
          finish({ code, stdout: '', stderr: `${file}: ${what}` });
        });
        child.on('close', (code, signal) => {
          const out = Buffer.concat(stdout).toString('utf8');
          let err = Buffer.concat(stderr).toString('utf8');
          if (timedOut) {
            err += `${err && !err.endsWith('\n') ? '\n' : ''}${file}: timed out after ${options.timeoutMs} ms`;
            finish({ code: EXIT_TIMEOUT, stdout: out, stderr: err });
          } else if (code === null) {
            finish({ code: 128 + (SIGNALS[signal ?? ''] ?? 0), stdout: out, stderr: err || `${file}: killed by ${signal}` });
          } else {
            finish({ code, stdout: out, stderr: err });
          }
        });
        child.stdin.end(options.input ?? '');
      });
    },
  };
}
