/**
 * Pure policy: a pod's annotations and its namespace's annotations → the role it may have, or a denial.
 * Deny by default: a malformed annotation, an unknown namespace, a namespace without a policy, or a
 * policy that does not match the full role ARN all refuse credentials.
 *
 * Namespace patterns (`permitted`, and `allowed-roles` entries) are written by namespace owners and evaluated in the
 * watch handlers, on the one thread that serves every pod: they run on V8's linear-time engine (linearRegExp), so
 * no pattern can stall the agent, and one the engine cannot compile (a backreference, a lookaround) denies, with
 * the reason in the log like any invalid pattern.
 */
import { linearEngineAvailable, linearRegExp, ROLE_BASE_ARN, SESSION_NAME_PLACEHOLDERS } from '../config.ts';
import { sessionTags } from '../cache/session-tags.ts';
import type { PodInfo } from './pod-index.ts';
import type { DenialCode, Lookup, PodRef, RoleIdentity } from './types.ts';

export const PERMITTED_ANNOTATION = 'iam.amazonaws.com/permitted';
/**
 * kube2iam's namespace annotation: a JSON list of role names (prefixed with the base ARN) or ARNs, each a glob
 * (`*` = any characters) or, with allowedRolesFormat 'regexp', a regular expression; either way matched against
 * the whole role ARN. Read only when the namespace has no `permitted` annotation.
 */
export const ALLOWED_ROLES_ANNOTATION = 'iam.amazonaws.com/allowed-roles';

export interface PolicyOptions {
  /** e.g. `arn:aws:iam::123456789012:role/` (a path may follow `role/`); a trailing `/` is added if missing. */
  roleBaseArn?: string;
  /** Role (name or ARN) for pods without the role annotation. */
  defaultRole?: string;
  namespaceRestriction: boolean;
  /** How entries of iam.amazonaws.com/allowed-roles match; default 'glob' (kube2iam's default). */
  allowedRolesFormat?: 'glob' | 'regexp';
  /** Placeholders {namespace} {pod} {serviceAccount} {node} {role}. */
  sessionNameTemplate: string;
  nodeName: string;
  /** --session-tags: STS session tags naming the pod (src/cache/session-tags.ts); off when absent. */
  sessionTags?: { clusterName?: string };
  /**
   * Milliseconds, for the match budget (MATCH_BUDGET_MS); default the process's CPU time, so that a busy node (the
   * thread descheduled mid-match) never makes a cheap pattern look costly. Tests pass their own.
   */
  now?: () => number;
}

/**
 * Linear time is not cheap time: V8's engine runs a pattern with many states (`(?:.*a.*a…){16}`) over the longest ARN
 * IAM allows in about a hundred milliseconds. A namespace pattern whose match costs more CPU time than this, twice in a row
 * (a garbage collection can make one slow), denies from then on without running, so it blocks the agent once at most;
 * the patterns people write take microseconds.
 */
export const MATCH_BUDGET_MS = 25;

const SEGMENT = '[\\w+=,.@-]+';
const ROLE_ARN = new RegExp(`^arn:([a-z][a-z0-9-]{0,31}):iam::(\\d{12}):role/((?:${SEGMENT}/)*)([\\w+=,.@-]{1,64})$`);
const ROLE_NAME = new RegExp(`^/?((?:${SEGMENT}/)*)([\\w+=,.@-]{1,64})$`);
const EXTERNAL_ID = /^[\w+=,.@:/-]{2,1224}$/;
const PLACEHOLDER = /\{(\w+)\}/g;
const MAX_REGEX_CACHE = 1024;
const MAX_MATCH_CACHE = 4096;
/**
 * IAM's own limits (IAM API Reference, Role: Arn 20-2048 characters, Path 1-512, RoleName 1-64): a longer annotation
 * names no role, and refusing it before any pattern runs keeps the work a namespace pattern can cost small.
 */
const MAX_ARN_LENGTH = 2048;
const MAX_PATH_LENGTH = 512;

export interface ResolvedRole {
  arn: string;
  name: string;
}

/** Parse a full role ARN; undefined when it is not one. */
export function parseRoleArn(arn: string): ResolvedRole | undefined {
  const m = ROLE_ARN.exec(arn);
  return m ? { arn, name: m[4]! } : undefined;
}

/** Sanitise to the characters STS accepts in RoleSessionName, 2..64 long. */
export function sanitizeSessionName(raw: string): string {
  let name = raw.replace(/[^\w+=,.@-]/g, '-');
  if (name.length > 64) name = name.slice(0, 64);
  if (name.length < 2) name = `kiam-${name}`.slice(0, 64);
  return name;
}

/** Thrown by the Policy constructor for bad options (names the flag). */
export class PolicyConfigError extends Error {
  override name = 'PolicyConfigError';
}

export class Policy {
  private readonly baseArn: string | undefined;
  private readonly defaultRole: ResolvedRole | undefined;
  private readonly regexCache = new Map<string, RegExp | Error>();
  private readonly allowedRolesCache = new Map<string, RegExp[] | Error>();
  /** (compiled annotation, role ARN) → permitted: a pod re-evaluated (status updates, namespace edits) costs no match again. */
  private readonly matchCache = new Map<string, boolean>();
  /** A short key per compiled annotation, so that matchCache's keys stay as small as the ARNs. */
  private readonly matcherIds = new WeakMap<object, number>();
  private nextMatcherId = 0;
  /** Compiled annotations that went over MATCH_BUDGET_MS: they deny without running. */
  private readonly tooCostly = new WeakSet<object>();
  private readonly now: () => number;

  constructor(private readonly options: PolicyOptions) {
    this.now = options.now ?? cpuMs;
    const errors: string[] = [];
    if (options.roleBaseArn !== undefined && options.roleBaseArn !== '') {
      const base = options.roleBaseArn.endsWith('/') ? options.roleBaseArn : `${options.roleBaseArn}/`;
      if (!ROLE_BASE_ARN.test(base)) errors.push(`--role-base-arn: "${options.roleBaseArn}" is not of the form arn:<partition>:iam::<12 digits>:role/[path/]`);
      this.baseArn = base;
    }
    for (const m of options.sessionNameTemplate.matchAll(PLACEHOLDER)) {
      if (!SESSION_NAME_PLACEHOLDERS.has(m[1]!)) errors.push(`--session-name: unknown placeholder {${m[1]}} (use ${[...SESSION_NAME_PLACEHOLDERS].map((p) => `{${p}}`).join(' ')})`);
    }
    if (options.defaultRole !== undefined && options.defaultRole !== '') {
      const resolved = this.resolveRole(options.defaultRole.trim());
      if ('error' in resolved) errors.push(`--default-role: ${resolved.error}`);
      else this.defaultRole = resolved;
    }
    if (options.namespaceRestriction && !linearEngineAvailable()) {
      errors.push('namespace restriction: this Node.js has no linear-time RegExp engine (V8 flag --enable-experimental-regexp-engine); use Node.js 20 or 22');
    }
    if (errors.length > 0) throw new PolicyConfigError(errors.join('; '));
  }

  /**
   * The lookup answer for a live pod. namespaceAnnotations is undefined when the namespace is not known
   * (yet). Never throws.
   */
  evaluate(pod: PodInfo, namespaceAnnotations: Readonly<Record<string, string>> | undefined): Lookup {
    const ref: PodRef = { uid: pod.uid, namespace: pod.namespace, name: pod.name, ip: pod.ip };
    let role: ResolvedRole;
    if (pod.role !== undefined) {
      const resolved = this.resolveRole(pod.role);
      if ('error' in resolved) return denied(ref, resolved.code, resolved.error, pod.role);
      role = resolved;
    } else if (this.defaultRole) {
      role = this.defaultRole;
    } else {
      return { kind: 'no-role', pod: ref };
    }

    if (pod.externalId !== undefined && !EXTERNAL_ID.test(pod.externalId)) {
      return denied(ref, 'invalid-external-id', 'annotation iam.amazonaws.com/external-id must be 2-1224 characters of [\\w+=,.@:/-]', role.arn);
    }

    if (this.options.namespaceRestriction) {
      if (namespaceAnnotations === undefined) {
        return denied(ref, 'namespace-unknown', `namespace ${pod.namespace} is not known (yet)`, role.arn);
      }
      const pattern = namespaceAnnotations[PERMITTED_ANNOTATION];
      const allowedRoles = pattern === undefined ? namespaceAnnotations[ALLOWED_ROLES_ANNOTATION] : undefined;
      if (allowedRoles !== undefined) {
        const matchers = this.compileAllowedRoles(allowedRoles);
        if (matchers instanceof Error) {
          return denied(ref, 'namespace-invalid-policy', `namespace ${pod.namespace}: ${ALLOWED_ROLES_ANNOTATION} ${matchers.message}`, role.arn);
        }
        const permitted = this.permits(matchers, role.arn, () => matchers.some((m) => m.test(role.arn)));
        if (permitted === 'too-costly') return denied(ref, 'namespace-invalid-policy', tooCostly(pod.namespace, ALLOWED_ROLES_ANNOTATION), role.arn);
        if (!permitted) {
          return denied(ref, 'not-permitted', `role ${role.arn} matches no entry of ${ALLOWED_ROLES_ANNOTATION} ${allowedRoles} of namespace ${pod.namespace}`, role.arn);
        }
      } else if (pattern === undefined) {
        return denied(ref, 'namespace-no-policy', `namespace ${pod.namespace} has no ${PERMITTED_ANNOTATION} (or ${ALLOWED_ROLES_ANNOTATION}) annotation`, role.arn);
      } else {
        const regex = this.compile(pattern);
        if (regex instanceof Error) {
          return denied(ref, 'namespace-invalid-policy', `namespace ${pod.namespace}: ${PERMITTED_ANNOTATION} is not a valid regular expression: ${regex.message}`, role.arn);
        }
        const permitted = this.permits(regex, role.arn, () => regex.test(role.arn));
        if (permitted === 'too-costly') return denied(ref, 'namespace-invalid-policy', tooCostly(pod.namespace, PERMITTED_ANNOTATION), role.arn);
        if (!permitted) {
          return denied(ref, 'not-permitted', `role ${role.arn} does not match ${PERMITTED_ANNOTATION} "${pattern}" of namespace ${pod.namespace}`, role.arn);
        }
      }
    }

    const sessionName = this.sessionName(pod, role.name);
    const tagOptions = this.options.sessionTags;
    const tags = tagOptions
      ? sessionTags({ namespace: pod.namespace, pod: pod.name, serviceAccount: pod.serviceAccount, node: this.options.nodeName, clusterName: tagOptions.clusterName })
      : undefined;
    const identity: RoleIdentity = {
      // The tags name the pod: with them every pod is an identity of its own, whatever the session name shares.
      key: JSON.stringify(tags ? [role.arn, pod.externalId ?? null, sessionName, tags.map((t) => [t.key, t.value])] : [role.arn, pod.externalId ?? null, sessionName]),
      roleArn: role.arn,
      roleName: role.name,
      sessionName,
    };
    if (pod.externalId !== undefined) identity.externalId = pod.externalId;
    if (tags) identity.tags = tags;
    return { kind: 'role', pod: ref, identity };
  }

  private resolveRole(value: string): ResolvedRole | { error: string; code: DenialCode } {
    if (value.length > MAX_ARN_LENGTH) return { code: 'invalid-role', error: `the role annotation is ${value.length} characters long: IAM role ARNs have at most ${MAX_ARN_LENGTH}` };
    let role: ResolvedRole;
    if (value.startsWith('arn:')) {
      const parsed = parseRoleArn(value);
      if (!parsed) return { code: 'invalid-role', error: `"${value}" is not a role ARN (arn:<partition>:iam::<12 digits>:role/[path/]name)` };
      role = parsed;
    } else {
      const m = ROLE_NAME.exec(value);
      if (!m) return { code: 'invalid-role', error: `"${value}" is neither a role ARN nor a role name ([path/]name of [\\w+=,.@-])` };
      if (this.baseArn === undefined) return { code: 'no-base-arn', error: `role name "${value}" needs --role-base-arn (or use a full ARN)` };
      role = { arn: `${this.baseArn}${m[1]}${m[2]}`, name: m[2]! };
    }
    // The path: from the `/` after `:role` to the `/` before the name.
    const pathLength = role.arn.length - role.name.length - role.arn.indexOf(':role/') - 5;
    if (pathLength > MAX_PATH_LENGTH || role.arn.length > MAX_ARN_LENGTH) {
      return { code: 'invalid-role', error: `role ${role.name}: its path is ${pathLength} characters long, IAM allows at most ${MAX_PATH_LENGTH}` };
    }
    return role;
  }

  /**
   * Whether the compiled annotation permits arn (match() says), remembered per pair; 'too-costly' once its match
   * went over MATCH_BUDGET_MS twice in a row.
   */
  private permits(matcher: object, arn: string, match: () => boolean): boolean | 'too-costly' {
    if (this.tooCostly.has(matcher)) return 'too-costly';
    let id = this.matcherIds.get(matcher);
    if (id === undefined) this.matcherIds.set(matcher, (id = this.nextMatcherId++));
    const cacheKey = `${id}\0${arn}`;
    let permitted = this.matchCache.get(cacheKey);
    if (permitted === undefined) {
      let result = false;
      let slow = 0;
      while (slow < 2) {
        const start = this.now();
        result = match();
        if (this.now() - start <= MATCH_BUDGET_MS) break;
        slow++;
      }
      if (slow === 2) {
        this.tooCostly.add(matcher);
        return 'too-costly';
      }
      if (this.matchCache.size >= MAX_MATCH_CACHE) this.matchCache.clear();
      this.matchCache.set(cacheKey, result);
      permitted = result;
    }
    return permitted;
  }

  private compile(pattern: string): RegExp | Error {
    let cached = this.regexCache.get(pattern);
    if (cached === undefined) {
      try {
        cached = linearRegExp(`^(?:${pattern})$`);
      } catch (err) {
        cached = err instanceof Error ? err : new Error(String(err));
      }
      if (this.regexCache.size >= MAX_REGEX_CACHE) this.regexCache.clear();
      this.regexCache.set(pattern, cached);
    }
    return cached;
  }

  /** The annotation's entries as anchored patterns over the full role ARN, or why it is unusable. Cached per value. */
  private compileAllowedRoles(value: string): RegExp[] | Error {
    let cached = this.allowedRolesCache.get(value);
    if (cached === undefined) {
      cached = parseAllowedRoles(value, this.baseArn, this.options.allowedRolesFormat ?? 'glob');
      if (this.allowedRolesCache.size >= MAX_REGEX_CACHE) this.allowedRolesCache.clear();
      this.allowedRolesCache.set(value, cached);
    }
    return cached;
  }

  private sessionName(pod: PodInfo, roleName: string): string {
    const values: Record<string, string> = {
      namespace: pod.namespace,
      pod: pod.name,
      serviceAccount: pod.serviceAccount,
      node: this.options.nodeName,
      role: roleName,
    };
    return sanitizeSessionName(this.options.sessionNameTemplate.replace(PLACEHOLDER, (all, key: string) => values[key] ?? all));
  }
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

function parseAllowedRoles(value: string, baseArn: string | undefined, format: 'glob' | 'regexp'): RegExp[] | Error {
  let list: unknown;
  try {
    list = JSON.parse(value);
  } catch {
    list = undefined;
  }
  if (!Array.isArray(list) || !list.every((e): e is string => typeof e === 'string' && e.trim() !== '')) {
    return new Error('is not a JSON list of role names or ARNs, e.g. ["reader", "arn:aws:iam::123456789012:role/team-a/*"]');
  }
  const out: RegExp[] = [];
  for (const raw of list) {
    const entry = raw.trim();
    const isArn = entry.toLowerCase().startsWith('arn:');
    if (!isArn && baseArn === undefined) return new Error(`entry "${entry}" is a role name, which needs --role-base-arn (or use a full ARN)`);
    const prefix = isArn ? '' : escapeRegExp(baseArn!);
    const body = format === 'glob' ? entry.split('*').map(escapeRegExp).join('.*') : entry;
    try {
      out.push(linearRegExp(`^${prefix}(?:${body})$`));
    } catch (err) {
      return new Error(`entry "${entry}" is not a valid regular expression: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return out;
}

/** CPU time this process has used, in milliseconds (user + system, microsecond resolution). */
function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

function tooCostly(namespace: string, annotation: string): string {
  return `namespace ${namespace}: ${annotation} took over ${MATCH_BUDGET_MS} ms of CPU to match, twice: it is no longer evaluated; write a simpler pattern`;
}

function denied(pod: PodRef, code: DenialCode, reason: string, role?: string): Lookup {
  return role === undefined ? { kind: 'denied', pod, code, reason } : { kind: 'denied', pod, code, reason, role };
}
