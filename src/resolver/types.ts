/**
 * The resolver's answer shapes, also the shapes the metadata server consumes (src/server/ports.ts re-exports
 * them as types).
 */

export interface PodRef {
  uid: string;
  namespace: string;
  name: string;
  ip: string;
}

export interface RoleIdentity {
  /** Unambiguous over (roleArn, externalId, sessionName[, tags]): a JSON array of them. */
  key: string;
  roleArn: string;
  /** Last path segment of the role ARN. */
  roleName: string;
  externalId?: string;
  sessionName: string;
  /** STS session tags (--session-tags), part of the key: they name the pod, so each pod is its own identity. */
  tags?: ReadonlyArray<{ readonly key: string; readonly value: string }>;
}

/** Fixed, short reasons: safe as metric labels. */
export type DenialCode =
  | 'invalid-role'
  | 'no-base-arn'
  | 'invalid-external-id'
  | 'namespace-unknown'
  | 'namespace-no-policy'
  | 'namespace-invalid-policy'
  | 'not-permitted';

export type Lookup =
  | { kind: 'role'; pod: PodRef; identity: RoleIdentity }
  | { kind: 'no-role'; pod: PodRef }
  /** reason: human text for logs (never shown to the pod); code: its fixed label; role: what was asked for. */
  | { kind: 'denied'; pod: PodRef; reason: string; code: DenialCode; role?: string }
  | { kind: 'unknown' }
  | { kind: 'ambiguous' };

export interface NamespaceInfo {
  readonly name: string;
  /** Only the namespace's `iam.amazonaws.com/*` annotations are kept. */
  readonly annotations: Readonly<Record<string, string>>;
}
