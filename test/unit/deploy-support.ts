/**
 * Helpers for the container image and manifest tests (dockerfile.test.ts, deploy-manifests.test.ts):
 * the Dockerfile parsed into stages (dockerfile-ast), .dockerignore matching, and `kubectl kustomize` renders.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Copy, DockerfileParser, From, type Instruction } from 'dockerfile-ast';
import { parseAllDocuments } from 'yaml';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string; engines: { node: string } };

// ---- Dockerfile ---------------------------------------------------------------------------------------

export interface Stage {
  name: string;
  /** The FROM image with build arguments substituted, e.g. node:22.23.3-bookworm-slim. */
  image: string;
  platformFlag: string | undefined;
  instructions: Instruction[];
}

export interface ParsedDockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  globalArgs: Map<string, string>;
  stages: Stage[];
}

/** Substitute ${NAME} and $NAME from `vars`; an unknown variable throws (so a typo cannot pass as a tag). */
export function substitute(text: string, vars: Map<string, string>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, a: string | undefined, b: string | undefined) => {
    const name = (a ?? b)!;
    const value = vars.get(name);
    if (value === undefined) throw new Error(`Dockerfile: \${${name}} has no default value`);
    return value;
  });
}

export function parseDockerfile(path = `${ROOT}Dockerfile`): ParsedDockerfile {
  const doc = DockerfileParser.parse(readFileSync(path, 'utf8'));
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const ins of doc.getInstructions()) {
    const keyword = ins.getKeyword();
    if (ins instanceof From) {
      const platform = ins.getPlatformFlag();
      stages.push({
        name: ins.getBuildStage() ?? String(stages.length),
        image: substitute(ins.getImage() ?? '', globalArgs),
        platformFlag: platform ? `--${platform.getName()}=${platform.getValue() ?? ''}` : undefined,
        instructions: [],
      });
    } else if (stages.length === 0) {
      if (keyword !== 'ARG') throw new Error(`Dockerfile: ${keyword} before the first FROM`);
      const [name, value = ''] = (ins.getArgumentsContent() ?? '').split('=', 2);
      globalArgs.set(name!.trim(), value.trim());
    } else {
      stages.at(-1)!.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

/** The instructions of one keyword in a stage. */
export function instructions(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.getKeyword() === keyword);
}

/** An exec-form (JSON array) instruction's strings, e.g. ENTRYPOINT ["node", "x"]; throws for the shell form. */
export function execForm(ins: Instruction): string[] {
  const text = (ins.getArgumentsContent() ?? '').trim();
  const parsed: unknown = JSON.parse(text);
  if (!Array.isArray(parsed) || !parsed.every((s) => typeof s === 'string')) throw new Error(`${ins.getKeyword()} is not in exec form: ${text}`);
  return parsed as string[];
}

export interface CopyInstruction {
  from: string | undefined;
  sources: string[];
  dest: string;
}

export function copies(stage: Stage): CopyInstruction[] {
  return instructions(stage, 'COPY').map((ins) => {
    if (!(ins instanceof Copy)) throw new Error('COPY instruction not parsed as Copy');
    const paths = ins.getArguments().map((a) => a.getValue());
    return { from: ins.getFromFlag()?.getValue() ?? undefined, sources: paths.slice(0, -1), dest: paths.at(-1) ?? '' };
  });
}

/** The user the image runs as (the stage's last USER), e.g. "1000:1000", or undefined (root). */
export function imageUser(stage: Stage): string | undefined {
  return instructions(stage, 'USER').at(-1)?.getArgumentsContent()?.trim();
}

// ---- .dockerignore --------------------------------------------------------------------------------------

/**
 * Whether .dockerignore `patterns` exclude a context path (relative, no leading slash), as Docker reads them:
 * each pattern is a path glob from the context root (`*` within one segment, `**` any number of segments), a
 * pattern also excludes everything below what it matches, `!` re-includes, and the last matching pattern wins.
 */
export function dockerIgnored(patterns: string[], path: string): boolean {
  let ignored = false;
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const pattern = (negate ? raw.slice(1) : raw).replace(/^\/+|\/+$/g, '');
    const re = new RegExp(
      `^${pattern
        .split('/')
        .map((seg) => (seg === '**' ? '(?:.*)' : seg.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')))
        .join('/')
        .replace(/\(\?:\.\*\)\//g, '(?:.*/)?')}(?:/.*)?$`,
    );
    if (re.test(path)) ignored = !negate;
  }
  return ignored;
}

export function dockerIgnorePatterns(path = `${ROOT}.dockerignore`): string[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

// ---- kustomize ------------------------------------------------------------------------------------------

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

/**
 * kubectl must be there: install-deps.sh relies on the machine's kubectl, and a missing one must fail the
 * manifest tests rather than skip them.
 */
export function requireKubectl(): void {
  const r = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error || r.status !== 0) {
    throw new Error(
      `kubectl is needed to render deploy/ with \`kubectl kustomize\` but ${r.error ? `could not run: ${r.error.message}` : `exited ${r.status}: ${r.stderr}`}; ` +
        'install kubectl (any version with kustomize built in, ≥ 1.14) and put it in PATH',
    );
  }
}

/** `kubectl kustomize <dir>` (no shell, offline) → the rendered objects. */
export function kustomize(dir: string): K8sObject[] {
  const r = spawnSync('kubectl', ['kustomize', dir], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw new Error(`kubectl kustomize ${dir}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`kubectl kustomize ${dir} exited ${r.status}: ${r.stderr}`);
  return parseYamlObjects(r.stdout, `kubectl kustomize ${dir}`);
}

export function parseYamlObjects(text: string, what: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`${what}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value === null) continue;
    objects.push(value as K8sObject);
  }
  return objects;
}
