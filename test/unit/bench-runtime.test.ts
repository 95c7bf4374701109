import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { entrypointNodeFlags } from '../../bench/runtime.ts';

describe('bench runtime: the agent runs with the Dockerfile ENTRYPOINT flags', () => {
  it('takes the flags between node and the script', () => {
    const flags = entrypointNodeFlags('FROM x\nENTRYPOINT ["node", "--max-semi-space-size=1", "--stack-size=500", "/app/bin/kiam.mjs"]\nCMD ["--help"]\n');
    assert.deepEqual(flags, ['--max-semi-space-size=1', '--stack-size=500']);
    assert.deepEqual(entrypointNodeFlags('ENTRYPOINT ["node", "/app/bin/kiam.mjs"]'), []);
  });

  it('refuses what it cannot read as the image would run it', () => {
    assert.throws(() => entrypointNodeFlags('FROM x\n'), /no ENTRYPOINT/);
    assert.throws(() => entrypointNodeFlags('ENTRYPOINT node /app/bin/kiam.mjs'), /exec \(JSON\) form/);
    assert.throws(() => entrypointNodeFlags('ENTRYPOINT ["sh", "-c", "node /app/bin/kiam.mjs"]'), /must be \["node"/);
  });

  it("reads the repository's own Dockerfile", () => {
    const flags = entrypointNodeFlags(readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8'));
    assert.ok(flags.every((f) => f.startsWith('--')), `every ENTRYPOINT flag is a node option: ${JSON.stringify(flags)}`);
  });
});
