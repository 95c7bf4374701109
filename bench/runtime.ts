/**
 * How the benchmark starts the agent: exactly as the image does. The V8 flags are read from the Dockerfile's
 * ENTRYPOINT (`["node", <flags>…, "/app/bin/kiam.mjs"]`), so the figures are always those of the shipped
 * command; the Node binary is this process's unless `--node <path>` names another (e.g. the image's version:
 * see BENCHMARKS.md for how to get it).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const ENTRY_SCRIPT = '/app/bin/kiam.mjs';

/** The flags between `node` and the script in the Dockerfile's exec-form ENTRYPOINT. */
export function entrypointNodeFlags(dockerfile: string): string[] {
  const lines = dockerfile.split('\n').filter((l) => /^ENTRYPOINT\s/i.test(l));
  const last = lines.at(-1);
  if (last === undefined) throw new Error('Dockerfile: no ENTRYPOINT');
  let argv: unknown;
  try {
    argv = JSON.parse(last.replace(/^ENTRYPOINT\s+/i, ''));
  } catch {
    throw new Error(`Dockerfile: ENTRYPOINT is not in exec (JSON) form: ${last}`);
  }
  if (!Array.isArray(argv) || argv[0] !== 'node' || argv.at(-1) !== ENTRY_SCRIPT || !argv.every((a) => typeof a === 'string')) {
    throw new Error(`Dockerfile: ENTRYPOINT must be ["node", <flags>…, "${ENTRY_SCRIPT}"], got ${last}`);
  }
  return argv.slice(1, -1) as string[];
}

export interface AgentRuntime {
  /** The Node binary that runs the agent. */
  node: string;
  /** Its version, e.g. v22.23.3. */
  version: string;
  /** V8/Node flags from the Dockerfile. */
  flags: string[];
}

export const runtime: AgentRuntime = { node: process.execPath, version: process.version, flags: [] };

export function configureRuntime(repo: string, node: string | undefined): AgentRuntime {
  runtime.node = node ?? process.execPath;
  runtime.version = execFileSync(runtime.node, ['--version'], { encoding: 'utf8' }).trim();
  runtime.flags = entrypointNodeFlags(readFileSync(join(repo, 'Dockerfile'), 'utf8'));
  return runtime;
}
