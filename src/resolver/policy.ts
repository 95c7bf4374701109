/**
 * Pure policy: a pod's annotations and its namespace's annotations → the role it may have, or a denial.
 * Deny by default: a malformed annotation, an unknown namespace, a namespace without a policy, or a
 * policy that does not match the full role ARN all refuse credentials (peers.md pain 15).
 */
import { ROLE_BASE_ARN, SESSION_NAME_PLACEHOLDERS } from '../config.ts';
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
}

const SEGMENT = '[\\w+=,.@-]+';
const ROLE_ARN = new RegExp(`^arn:([a-z][a-z0-9-]{0,31}):iam::(\\d{12}):role/((?:${SEGMENT}/)*)([\\w+=,.@-]{1,64})$`);
const ROLE_NAME = new RegExp(`^/?((?:${SEGMENT}/)*)([\\w+=,.@-]{1,64})$`);
const EXTERNAL_ID = /^[\w+=,.@:/-]{2,1224}$/;
const PLACEHOLDER = /\{(\w+)\}/g;
const MAX_REGEX_CACHE = 1024;

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

  constructor(private readonly options: PolicyOptions) {
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
        if (!matchers.some((m) => m.test(role.arn))) {
          return denied(ref, 'not-permitted', `role ${role.arn} matches no entry of ${ALLOWED_ROLES_ANNOTATION} ${allowedRoles} of namespace ${pod.namespace}`, role.arn);
        }
      } else if (pattern === undefined) {
        return denied(ref, 'namespace-no-policy', `namespace ${pod.namespace} has no ${PERMITTED_ANNOTATION} (or ${ALLOWED_ROLES_ANNOTATION}) annotation`, role.arn);
      } else {
        const regex = this.compile(pattern);
        if (regex instanceof Error) {
          return denied(ref, 'namespace-invalid-policy', `namespace ${pod.namespace}: ${PERMITTED_ANNOTATION} is not a valid regular expression: ${regex.message}`, role.arn);
        }
        if (!regex.test(role.arn)) {
          return denied(ref, 'not-permitted', `role ${role.arn} does not match ${PERMITTED_ANNOTATION} "${pattern}" of namespace ${pod.namespace}`, role.arn);
        }
      }
    }

    const sessionName = this.sessionName(pod, role.name);
    const identity: RoleIdentity = {
      key: JSON.stringify([role.arn, pod.externalId ?? null, sessionName]),
      roleArn: role.arn,
      roleName: role.name,
      sessionName,
    };
    if (pod.externalId !== undefined) identity.externalId = pod.externalId;
    return { kind: 'role', pod: ref, identity };
  }

  private resolveRole(value: string): ResolvedRole | { error: string; code: DenialCode } {
    if (value.startsWith('arn:')) {
      const parsed = parseRoleArn(value);
      return parsed ?? { code: 'invalid-role', error: `"${value}" is not a role ARN (arn:<partition>:iam::<12 digits>:role/[path/]name)` };
    }
    const m = ROLE_NAME.exec(value);
    if (!m) return { code: 'invalid-role', error: `"${value}" is neither a role ARN nor a role name ([path/]name of [\\w+=,.@-])` };
    if (this.baseArn === undefined) return { code: 'no-base-arn', error: `role name "${value}" needs --role-base-arn (or use a full ARN)` };
    const arn = `${this.baseArn}${m[1]}${m[2]}`;
    return { arn, name: m[2]! };
  }

  private compile(pattern: string): RegExp | Error {
    let cached = this.regexCache.get(pattern);
    if (cached === undefined) {
      try {
        cached = new RegExp(`^(?:${pattern})$`);
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
      out.push(new RegExp(`^${prefix}(?:${body})$`));
    } catch (err) {
      return new Error(`entry "${entry}" is not a valid regular expression: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return out;
}

function denied(pod: PodRef, code: DenialCode, reason: string, role?: string): Lookup {
  return role === undefined ? { kind: 'denied', pod, code, reason } : { kind: 'denied', pod, code, reason, role };
}
