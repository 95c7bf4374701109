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

// ---- cert-manager custom resources (deploy/webhook/cert-manager) ------------------------------------------

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The fields of `v` outside `allowed`, and those of `required` it lacks, as problems at `path`. */
function fieldProblems(v: Record<string, unknown>, path: string, allowed: string[], required: string[] = []): string[] {
  return [
    ...Object.keys(v).filter((k) => !allowed.includes(k)).map((k) => `${path}.${k}: unknown field`),
    ...required.filter((k) => !(k in v)).map((k) => `${path}.${k}: missing`),
  ];
}

/** metadata of a namespaced cert-manager object, and apiVersion cert-manager.io/v1. */
function certManagerObjectProblems(obj: unknown, kind: string): { problems: string[]; spec?: Record<string, unknown> } {
  if (!isPlainObject(obj)) return { problems: ['not an object'] };
  const problems = fieldProblems(obj, kind, ['apiVersion', 'kind', 'metadata', 'spec'], ['metadata', 'spec']);
  if (obj.apiVersion !== 'cert-manager.io/v1') problems.push('apiVersion: must be cert-manager.io/v1');
  const metadata = obj.metadata;
  if (!isPlainObject(metadata) || typeof metadata.name !== 'string' || typeof metadata.namespace !== 'string') problems.push('metadata: needs a name and a namespace');
  if (!isPlainObject(obj.spec)) return { problems: [...problems, 'spec: must be an object'] };
  return { problems, spec: obj.spec };
}

/**
 * A cert-manager.io/v1 Issuer of the kinds deploy/ uses (selfSigned, ca), checked by hand against cert-manager's
 * API reference (https://cert-manager.io/docs/reference/api-docs/#cert-manager.io/v1.IssuerSpec).
 */
export function issuerProblems(obj: unknown): string[] {
  const { problems, spec } = certManagerObjectProblems(obj, 'Issuer');
  if (!spec) return problems;
  const kinds = ['acme', 'ca', 'vault', 'selfSigned', 'venafi'];
  problems.push(...fieldProblems(spec, 'spec', kinds));
  if (kinds.filter((k) => k in spec).length !== 1) problems.push(`spec: exactly one of ${kinds.join(', ')}`);
  if ('selfSigned' in spec) {
    if (!isPlainObject(spec.selfSigned)) problems.push('spec.selfSigned: must be an object');
    else problems.push(...fieldProblems(spec.selfSigned, 'spec.selfSigned', ['crlDistributionPoints']));
  }
  if ('ca' in spec) {
    if (!isPlainObject(spec.ca)) problems.push('spec.ca: must be an object');
    else {
      problems.push(...fieldProblems(spec.ca, 'spec.ca', ['secretName', 'crlDistributionPoints', 'ocspServers', 'issuingCertificateURLs'], ['secretName']));
      if (typeof spec.ca.secretName !== 'string') problems.push('spec.ca.secretName: must be a string');
    }
  }
  return problems;
}

const CERTIFICATE_USAGES = [
  'signing', 'digital signature', 'content commitment', 'key encipherment', 'key agreement', 'data encipherment', 'cert sign', 'crl sign',
  'encipher only', 'decipher only', 'any', 'server auth', 'client auth', 'code signing', 'email protection', 's/mime', 'ipsec end system',
  'ipsec tunnel', 'ipsec user', 'timestamping', 'ocsp signing', 'microsoft sgc', 'netscape sgc',
];
const GO_DURATION = /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/;

/**
 * A cert-manager.io/v1 Certificate, checked by hand against cert-manager's API reference
 * (https://cert-manager.io/docs/reference/api-docs/#cert-manager.io/v1.CertificateSpec).
 */
export function certificateProblems(obj: unknown): string[] {
  const { problems, spec } = certManagerObjectProblems(obj, 'Certificate');
  if (!spec) return problems;
  problems.push(
    ...fieldProblems(
      spec,
      'spec',
      ['subject', 'literalSubject', 'commonName', 'duration', 'renewBefore', 'renewBeforePercentage', 'dnsNames', 'ipAddresses', 'uris', 'otherNames', 'emailAddresses',
        'secretName', 'secretTemplate', 'keystores', 'issuerRef', 'isCA', 'usages', 'privateKey', 'encodeUsagesInRequest', 'revisionHistoryLimit', 'additionalOutputFormats', 'nameConstraints'],
      ['secretName', 'issuerRef'],
    ),
  );
  if (typeof spec.secretName !== 'string') problems.push('spec.secretName: must be a string');
  for (const k of ['dnsNames', 'usages'] as const) {
    if (k in spec && (!Array.isArray(spec[k]) || !(spec[k] as unknown[]).every((x) => typeof x === 'string'))) problems.push(`spec.${k}: must be a list of strings`);
  }
  for (const u of Array.isArray(spec.usages) ? spec.usages : []) if (!CERTIFICATE_USAGES.includes(u as string)) problems.push(`spec.usages: "${String(u)}" is not a key usage`);
  for (const k of ['duration', 'renewBefore'] as const) {
    if (k in spec && (typeof spec[k] !== 'string' || !GO_DURATION.test(spec[k] as string))) problems.push(`spec.${k}: must be a Go duration such as 2160h`);
  }
  if ('isCA' in spec && typeof spec.isCA !== 'boolean') problems.push('spec.isCA: must be a boolean');
  const ref = spec.issuerRef;
  if (!isPlainObject(ref)) problems.push('spec.issuerRef: must be an object');
  else {
    problems.push(...fieldProblems(ref, 'spec.issuerRef', ['name', 'kind', 'group'], ['name']));
    if (ref.kind !== undefined && ref.kind !== 'Issuer' && ref.kind !== 'ClusterIssuer') problems.push('spec.issuerRef.kind: Issuer or ClusterIssuer');
  }
  const key = spec.privateKey;
  if (key !== undefined) {
    if (!isPlainObject(key)) problems.push('spec.privateKey: must be an object');
    else {
      problems.push(...fieldProblems(key, 'spec.privateKey', ['rotationPolicy', 'encoding', 'algorithm', 'size']));
      if (key.algorithm !== undefined && !['RSA', 'ECDSA', 'Ed25519'].includes(key.algorithm as string)) problems.push('spec.privateKey.algorithm: RSA, ECDSA or Ed25519');
      if (key.algorithm === 'ECDSA' && key.size !== undefined && ![256, 384, 521].includes(key.size as number)) problems.push('spec.privateKey.size: 256, 384 or 521 for ECDSA');
      if (key.rotationPolicy !== undefined && !['Never', 'Always'].includes(key.rotationPolicy as string)) problems.push('spec.privateKey.rotationPolicy: Never or Always');
      if (key.encoding !== undefined && !['PKCS1', 'PKCS8'].includes(key.encoding as string)) problems.push('spec.privateKey.encoding: PKCS1 or PKCS8');
    }
  }
  return problems;
}
