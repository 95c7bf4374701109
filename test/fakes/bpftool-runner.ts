/**
 * A CommandRunner for the eBPF tests: a ScriptedRunner underneath, except that config map writes
 * (`bpftool map update pinned …/kiam_config key hex 00 00 00 00 value hex <48 bytes>`) are decoded into `writes`
 * and reach the script as WRITE, since their probe address is random. Paths are those of the captures in
 * bpftool-output.ts.
 */
import assert from 'node:assert/strict';
import { decodeConfig, type MapConfig } from '../../src/netfilter/ebpf/plan.ts';
import type { CommandResult, CommandRunner, RunOptions } from '../../src/netfilter/exec.ts';
import { FIXTURE_BPFFS, FIXTURE_CGROUP } from './bpftool-output.ts';
import { ScriptedRunner } from './runner.ts';

export const PINS = `${FIXTURE_BPFFS}/kiam`;
export const READ = ['bpftool', '-j', 'batch', 'file', '-'];
/** A config write as the recorder passes it on to the script. */
export const WRITE = ['bpftool', 'map', 'update', 'pinned', `${PINS}/maps/kiam_config`, '<config>'];
export const HOOK_PROGS = [['connect4', 'kiam_connect4'], ['connect6', 'kiam_connect6'], ['getpeername4', 'kiam_getpeer4'], ['getpeername6', 'kiam_getpeer6']] as const;

export function loadCommands(object: string): string[][] {
  return [['rm', '-rf', PINS], ['mkdir', '-p', PINS], ['bpftool', 'prog', 'loadall', object, `${PINS}/progs`, 'pinmaps', `${PINS}/maps`]];
}
export const attach = (hook: string, prog: string) => ['bpftool', 'cgroup', 'attach', FIXTURE_CGROUP, hook, 'pinned', `${PINS}/progs/${prog}`, 'multi'];
export const ATTACH_ALL = HOOK_PROGS.map(([hook, prog]) => attach(hook, prog));
export const detach = (hook: string, id: number) => ['bpftool', 'cgroup', 'detach', FIXTURE_CGROUP, hook, 'id', String(id)];

/** What readLive feeds `bpftool -j batch file -` for the capture paths. */
export const READ_INPUT = [
  `cgroup show ${FIXTURE_CGROUP}`,
  ...HOOK_PROGS.map(([, prog]) => `prog show pinned ${PINS}/progs/${prog}`),
  `map show pinned ${PINS}/maps/kiam_config`,
  `map lookup pinned ${PINS}/maps/kiam_config key hex 00 00 00 00`,
  `map dump pinned ${PINS}/maps/kiam_stats`,
  '',
].join('\n');

export class BpftoolRecorder implements CommandRunner {
  /** Every config written, decoded, in order. */
  readonly writes: MapConfig[] = [];
  /** Every command in order (config writes as 'write'), for order assertions. */
  readonly log: string[] = [];
  readonly script = new ScriptedRunner();

  run(argv: readonly string[], options?: RunOptions): Promise<CommandResult> {
    if (argv[0] === 'bpftool' && argv[1] === 'map' && argv[2] === 'update') {
      assert.deepEqual(argv.slice(5, 13), ['key', 'hex', '00', '00', '00', '00', 'value', 'hex']);
      assert.equal(argv.length, 13 + 48);
      this.writes.push(decodeConfig(argv.slice(13).map((b) => parseInt(b, 16))));
      this.log.push('write');
      return this.script.run([...argv.slice(0, 5), '<config>'], options);
    }
    this.log.push(argv.join(' '));
    return this.script.run(argv, options);
  }

  /** Expect argv next (READ also checks its stdin). */
  expect(argv: readonly string[], result: Partial<CommandResult> = {}): this {
    this.script.expect(argv, result, argv === READ ? { input: READ_INPUT } : {});
    return this;
  }

  expectAll(argvs: ReadonlyArray<readonly string[]>): this {
    for (const argv of argvs) this.expect(argv);
    return this;
  }
}
