import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CommandError, runChecked, spawnRunner } from '../../src/netfilter/exec.ts';
import { ScriptedRunner } from '../fakes/runner.ts';

const NODE = process.execPath;

describe('spawnRunner', () => {
  it('feeds stdin and captures stdout, stderr and the exit code, with no shell', async () => {
    const runner = spawnRunner();
    const script = 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{process.stdout.write(s.toUpperCase());process.stderr.write("warn");process.exit(3)})';
    assert.deepEqual(await runner.run([NODE, '-e', script], { input: 'hello $(touch /tmp/x) `id`' }), {
      code: 3,
      stdout: 'HELLO $(TOUCH /TMP/X) `ID`',
      stderr: 'warn',
    });
  });

  it('prepends the prefix to every command', async () => {
    const runner = spawnRunner([NODE, '-e', 'console.log(JSON.stringify(process.argv.slice(1)))']);
    const result = await runner.run(['iptables-nft-save', '-t', 'nat']);
    assert.equal(result.code, 0);
    assert.deepEqual(JSON.parse(result.stdout), ['iptables-nft-save', '-t', 'nat']);
  });

  it('resolves a missing binary to code 127 with a clear message', async () => {
    const result = await spawnRunner().run(['kiam-no-such-binary-xyz', '--version']);
    assert.deepEqual(result, { code: 127, stdout: '', stderr: 'kiam-no-such-binary-xyz: command not found' });
  });

  it('resolves an argument spawn refuses (a NUL byte) to an error result, not a throw', async () => {
    const result = await spawnRunner().run([NODE, '-e', 'x\0y']);
    assert.equal(result.code, 126);
    assert.match(result.stderr, /cannot run/);
  });

  it('kills a command that outlives its timeout (code 124)', async () => {
    const result = await spawnRunner().run([NODE, '-e', 'setTimeout(() => {}, 60000)'], { timeoutMs: 200 });
    assert.equal(result.code, 124);
    assert.match(result.stderr, /timed out after 200 ms/);
  });

  it('survives a command that exits without reading its stdin', async () => {
    const result = await spawnRunner().run([NODE, '-e', 'process.exit(0)'], { input: 'x'.repeat(4 << 20) });
    assert.equal(result.code, 0);
  });
});

describe('runChecked / CommandError', () => {
  it('returns the result on success and throws argv, code and stderr otherwise', async () => {
    const runner = new ScriptedRunner().expect(['ok']).expect(['bad', '-x'], { code: 2, stderr: 'line one\nline two\n' }, { input: 'payload' });
    assert.equal((await runChecked(runner, ['ok'])).code, 0);
    await assert.rejects(runChecked(runner, ['bad', '-x'], { input: 'payload' }), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.deepEqual([err.argv, err.code, err.stderr, err.input], [['bad', '-x'], 2, 'line one\nline two\n', 'payload']);
      assert.equal(err.message, 'bad -x exited 2: line one | line two');
      return true;
    });
    runner.assertDone();
  });

  it('accepts extra exit codes', async () => {
    const runner = new ScriptedRunner().expect(['conntrack'], { code: 1 });
    assert.equal((await runChecked(runner, ['conntrack'], { okCodes: [0, 1] })).code, 1);
    runner.assertDone();
  });
});

describe('ScriptedRunner', () => {
  it('fails an unexpected command with a readable message and keeps the failure for assertDone()', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save', '-t', 'nat']);
    await assert.rejects(runner.run(['iptables-legacy-save', '-t', 'nat']), /command #1 differs from the script[^]*iptables-legacy-save/);
    assert.throws(() => runner.assertDone(), /command #1 differs/);
    const extra = new ScriptedRunner();
    await assert.rejects(extra.run(['rm', '-rf', '/'], { input: 'x' }), /unexpected command #1 \(the script holds 0\):\n {2}rm -rf \/\n {2}with stdin:\n {4}\| x/);
  });

  it('checks stdin line by line and reports scripted commands that never ran', async () => {
    const runner = new ScriptedRunner().expect(['restore'], {}, { input: 'a\nb\n' }).expect(['never']);
    await assert.rejects(runner.run(['restore'], { input: 'a\nc\n' }), /stdin of command #1 differs/);
    const other = new ScriptedRunner().expect(['restore'], {}, { input: /^\*nat/ }).expect(['never']);
    await other.run(['restore'], { input: '*nat\nCOMMIT\n' });
    assert.throws(() => other.assertDone(), /1 scripted command\(s\) never ran:\n {2}never/);
  });
});
