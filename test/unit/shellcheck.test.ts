/**
 * Every shell script in the repository (scripts/, test/e2e/kind/, anywhere but node_modules and ignored scratch) is clean under
 * `shellcheck -x`. The kind end-to-end script cannot run on the development machines (no Docker engine), so
 * this is the check it gets here. scripts/install-deps.sh installs shellcheck; without it this test fails.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Every *.sh git tracks or would track (.gitignore'd scratch such as .tmp/ and node_modules/ left out); without
 * git (an exported tree), every *.sh outside node_modules, dist and dot-directories.
 */
function shellScripts(): string[] {
  const git = spawnSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z', '--', '*.sh'], { cwd: REPO, encoding: 'utf8' });
  if (!git.error && git.status === 0) return git.stdout.split('\0').filter((f) => f !== '' && existsSync(join(REPO, f))).sort();
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
      if (entry.isDirectory()) return entry.name.startsWith('.') || SKIP_DIRS.has(entry.name) ? [] : walk(join(dir, entry.name));
      return entry.isFile() && entry.name.endsWith('.sh') ? [relative(REPO, join(dir, entry.name))] : [];
    });
  return walk(REPO).sort();
}
const SKIP_DIRS = new Set(['node_modules', 'dist']);

describe('shell scripts', () => {
  const scripts = shellScripts();

  it('finds the scripts to check (scripts/ and the kind end-to-end script)', () => {
    assert.ok(scripts.includes('scripts/test.sh'), `found: ${scripts.join(', ')}`);
    assert.ok(scripts.includes('test/e2e/kind/run.sh'), `found: ${scripts.join(', ')}`);
  });

  it('are clean under shellcheck -x', () => {
    const version = spawnSync('shellcheck', ['--version'], { encoding: 'utf8' });
    assert.ok(
      !version.error && version.status === 0,
      'shellcheck is not installed: run `sudo ./scripts/install-deps.sh` (or `apt-get install shellcheck`) and test again',
    );
    const result = spawnSync('shellcheck', ['-x', '--format=gcc', ...scripts], { cwd: REPO, encoding: 'utf8', timeout: 60_000 });
    assert.ifError(result.error);
    assert.equal(result.stderr, '', 'shellcheck wrote to stderr');
    assert.equal(result.stdout, '', `shellcheck findings (fix them, or disable one with a comment saying why):\n${result.stdout}`);
    assert.equal(result.status, 0);
  });
});
