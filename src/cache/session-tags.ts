/**
 * STS session tags for a pod (`--session-tags`): who asked, as attributes IAM policies can test
 * (`aws:PrincipalTag/kubernetes-namespace`) and CloudTrail records.
 *
 * Keys: the ones EKS Pod Identity uses where it has one (kubernetes-namespace, kubernetes-service-account,
 * kubernetes-pod-name), so attribute-based policies written for it work unchanged; kubernetes-node-name and
 * kubernetes-cluster-name for the rest (the cluster's name comes from --cluster-name; without it the tag is left
 * out). https://docs.aws.amazon.com/eks/latest/userguide/pod-id-abac.html
 *
 * Limits (https://docs.aws.amazon.com/STS/latest/APIReference/API_Tag.html): keys 1-128 and values 0-256
 * characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`; keys are case-insensitive. Values are sanitised here (any other
 * character becomes `-`, then cut to 256): Kubernetes names already fit, a cluster name might not.
 *
 * Not transitive: the tags describe the pod the credentials are for. Were they transitive, a pod that chains to
 * another role would carry them into it, and its own AssumeRole with a tag of the same key would fail
 * (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_session-tags.html#id_session-tags_role-chaining).
 *
 * Passing tags needs sts:TagSession: the role's trust policy must allow it for the agent's identity, beside
 * sts:AssumeRole (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_session-tags.html#id_session-tags_permissions-required).
 */
import type { SessionTag } from './sts.ts';

export const SESSION_TAG_KEYS = {
  namespace: 'kubernetes-namespace',
  pod: 'kubernetes-pod-name',
  serviceAccount: 'kubernetes-service-account',
  node: 'kubernetes-node-name',
  cluster: 'kubernetes-cluster-name',
} as const;

export const MAX_TAG_VALUE_LENGTH = 256;
const NOT_TAG_CHAR = /[^\p{L}\p{Z}\p{N}_.:/=+\-@]/gu;

/** A value STS accepts: characters outside the allowed set become `-`, then at most 256 characters. */
export function sanitizeTagValue(raw: string): string {
  // Cut by code points, not UTF-16 units: STS counts characters, and half a surrogate pair would be invalid.
  return Array.from(raw.replace(NOT_TAG_CHAR, '-')).slice(0, MAX_TAG_VALUE_LENGTH).join('');
}

/** Why this cannot be a tag value as given (for --cluster-name), or undefined when it can. */
export function tagValueProblem(value: string): string | undefined {
  if (Array.from(value).length > MAX_TAG_VALUE_LENGTH) return `is longer than ${MAX_TAG_VALUE_LENGTH} characters`;
  const bad = value.match(NOT_TAG_CHAR);
  if (bad) return `holds ${JSON.stringify(bad[0])}: an STS session tag value may hold only letters, digits, spaces and _.:/=+-@`;
  return undefined;
}

export interface SessionTagValues {
  namespace: string;
  pod: string;
  serviceAccount: string;
  node: string;
  /** --cluster-name; the tag is left out without it. */
  clusterName?: string;
}

/** The session tags for one pod, always in the same order (they are part of the cache key). */
export function sessionTags(values: SessionTagValues): SessionTag[] {
  const tags: SessionTag[] = [
    { key: SESSION_TAG_KEYS.namespace, value: sanitizeTagValue(values.namespace) },
    { key: SESSION_TAG_KEYS.pod, value: sanitizeTagValue(values.pod) },
    { key: SESSION_TAG_KEYS.serviceAccount, value: sanitizeTagValue(values.serviceAccount) },
    { key: SESSION_TAG_KEYS.node, value: sanitizeTagValue(values.node) },
  ];
  if (values.clusterName) tags.push({ key: SESSION_TAG_KEYS.cluster, value: sanitizeTagValue(values.clusterName) });
  return tags;
}
