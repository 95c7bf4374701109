// Tracked child processes for the end-to-end sandbox: started without a shell, known and stopped by PID only,
// stdout split into lines (event based waiting), stdout + stderr optionally copied to a log file.
import { spawn } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export type LineMatcher = RegExp | ((line: string) => boolean);

export interface StartOptions {
  /** Full environment of the child (replaces, like child_process). Default: the parent's environment. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to stdin, which is then closed. Without it stdin is /dev/null. */
  input?: string | Buffer;
  /** stdout and stderr (interleaved, as they arrive) are appended to this file. */
  logFile?: string;
  /** Keep the complete stdout/stderr text in memory (for short commands). */
  keepOutput?: boolean;
}

const MAX_LINES = 100_000;
const STDERR_TAIL = 8_192;
/** After 'exit', how long to wait for the pipes to close (a grandchild may still hold them). */
const CLOSE_GRACE_MS = 500;

export class TrackedProcess {
  readonly pid: number;
  readonly file: string;
  readonly args: readonly string[];
  readonly logFile: string | undefined;
  /** Resolves (never rejects) once the process has exited and its output has been read. */
  readonly exited: Promise<ExitInfo>;

  #exit: ExitInfo | undefined;
  #lines: string[] = [];
  #dropped = 0;
  #partial = '';
  #stderrTail = '';
  #stdoutChunks: Buffer[] | undefined;
  #stderrChunks: Buffer[] | undefined;
  #listeners = new Set<() => void>();
  #log: WriteStream | undefined;

  constructor(file: string, args: readonly string[], opts: StartOptions = {}) {
    this.file = file;
    this.args = [...args];
    this.logFile = opts.logFile;
    if (opts.keepOutput) {
      this.#stdoutChunks = [];
      this.#stderrChunks = [];
    }
    const child = spawn(file, this.args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      shell: false,
    });
    if (child.pid === undefined) {
      // spawn failed synchronously (ENOENT, EACCES…); the 'error' event follows, swallow it.
      child.once('error', () => {});
      throw new Error(`cannot start ${file}: spawn failed`);
    }
    this.pid = child.pid;
    const { stdout, stderr } = child;
    if (!stdout || !stderr) throw new Error('unreachable: stdout/stderr are pipes');
    if (opts.logFile) {
      this.#log = createWriteStream(opts.logFile, { flags: 'a' });
      this.#log.on('error', () => {}); // a log file problem must not crash the test process
    }
    if (opts.input !== undefined && child.stdin) {
      child.stdin.on('error', () => {}); // EPIPE when the child does not read its input
      child.stdin.end(opts.input);
    }

    const outDecoder = new StringDecoder('utf8');
    stdout.on('data', (chunk: Buffer) => {
      this.#stdoutChunks?.push(chunk);
      this.#log?.write(chunk);
      this.#addText(outDecoder.write(chunk));
    });
    stderr.on('data', (chunk: Buffer) => {
      this.#stderrChunks?.push(chunk);
      this.#log?.write(chunk);
      this.#stderrTail = (this.#stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL);
    });

    this.exited = new Promise<ExitInfo>((resolve) => {
      let info: ExitInfo | undefined;
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        this.#addText(outDecoder.end());
        if (this.#partial) this.#pushLine(this.#partial);
        this.#partial = '';
        this.#exit = info ?? { code: null, signal: null };
        this.#log?.end();
        this.#notify();
        resolve(this.#exit);
      };
      child.once('error', (err) => {
        this.#stderrTail += `\n[spawn error] ${err.message}`;
        info ??= { code: null, signal: null };
        // 'close' may not follow an error emitted after a successful spawn; make sure we finish.
        setImmediate(finish);
      });
      child.once('exit', (code, signal) => {
        info = { code, signal };
        const t = setTimeout(() => {
          stdout.destroy();
          stderr.destroy();
          finish();
        }, CLOSE_GRACE_MS);
        t.unref();
      });
      child.once('close', (code, signal) => {
        info ??= { code, signal };
        finish();
      });
    });
  }

  /** Exit status once exited (and output drained), otherwise undefined. */
  get exitInfo(): ExitInfo | undefined {
    return this.#exit;
  }

  get running(): boolean {
    return this.#exit === undefined;
  }

  /** Index the next stdout line will get (use as `fromLine` to wait only for lines that come later). */
  get lineCount(): number {
    return this.#dropped + this.#lines.length;
  }

  /** stdout lines received so far (the most recent 100 000). */
  lines(): readonly string[] {
    return this.#lines;
  }

  /** The last few KiB of stderr. */
  stderrTail(): string {
    return this.#stderrTail;
  }

  /** Complete stdout/stderr, only with `keepOutput`. */
  output(): { stdout: string; stderr: string } {
    return {
      stdout: Buffer.concat(this.#stdoutChunks ?? []).toString('utf8'),
      stderr: Buffer.concat(this.#stderrChunks ?? []).toString('utf8'),
    };
  }

  /**
   * Resolves with the first stdout line (at index ≥ fromLine) that matches; rejects on timeout or when the process
   * exits without printing one. Lines printed before the call count too (no race with fast processes).
   */
  waitForLine(match: LineMatcher, timeoutMs = 10_000, fromLine = 0): Promise<string> {
    const test = typeof match === 'function' ? match : (l: string) => match.test(l);
    let next = Math.max(fromLine, this.#dropped);
    return new Promise<string>((resolve, reject) => {
      const scan = (): boolean => {
        for (; next < this.lineCount; next++) {
          const line = this.#lines[next - this.#dropped];
          if (line !== undefined && test(line)) {
            cleanup();
            resolve(line);
            return true;
          }
        }
        if (this.#exit) {
          cleanup();
          reject(new Error(`${this.#describe()} exited (${fmtExit(this.#exit)}) before printing a line matching ${String(match)}${this.#tail()}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${this.#describe()} to print a line matching ${String(match)}${this.#tail()}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#listeners.delete(onEvent);
      };
      const onEvent = () => void scan();
      this.#listeners.add(onEvent);
      scan();
    });
  }

  /** Sends a signal by PID, only while the process has not been reaped (so a reused PID is never hit). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (this.#exit) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** SIGTERM, then SIGKILL after graceMs; resolves when the process is gone. */
  async stop(graceMs = 2_000): Promise<ExitInfo> {
    if (this.#exit) return this.#exit;
    this.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.kill('SIGKILL');
        resolve();
      }, graceMs);
    });
    await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    return this.exited;
  }

  #addText(text: string): void {
    if (!text) return;
    const parts = (this.#partial + text).split('\n');
    this.#partial = parts.pop() ?? '';
    for (const p of parts) this.#pushLine(p.endsWith('\r') ? p.slice(0, -1) : p);
    if (parts.length) this.#notify();
  }

  #pushLine(line: string): void {
    this.#lines.push(line);
    const excess = this.#lines.length - MAX_LINES;
    if (excess > 0) {
      this.#lines.splice(0, excess);
      this.#dropped += excess;
    }
  }

  #notify(): void {
    for (const l of [...this.#listeners]) l();
  }

  #describe(): string {
    return `pid ${this.pid} (${[this.file, ...this.args].join(' ').slice(0, 200)})`;
  }

  #tail(): string {
    const err = this.#stderrTail.trim();
    return err ? `; stderr: ${err.slice(-1_000)}` : '';
  }
}

export function fmtExit(e: ExitInfo): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}
