/**
 * What the metadata server consumes, defined by the consumer. The resolver and the cache provide
 * objects of these shapes; main.ts wires them. Nothing here imports client-node or the AWS SDK.
 */

export interface PodRef {
  uid: string;
  namespace: string;
  name: string;
  ip: string;
}

/** One STS identity: the cache key is role ARN + external ID + session name. */
export interface RoleIdentity {
  /** Stable cache key derived from roleArn, externalId and sessionName. */
  key: string;
  roleArn: string;
  /** The last path segment of the role ARN: what the role listing shows. */
  roleName: string;
  externalId?: string;
  sessionName: string;
}

export type Lookup =
  /** The pod may use this role. */
  | { kind: 'role'; pod: PodRef; identity: RoleIdentity }
  /** The pod has no role annotation and there is no default role. */
  | { kind: 'no-role'; pod: PodRef }
  /** The pod asks for a role it may not have (namespace policy, malformed annotation). Reason goes to logs only. */
  | { kind: 'denied'; pod: PodRef; reason: string }
  /** No live pod of this node has this IP (after the wait and the live look-up). */
  | { kind: 'unknown' }
  /** Two live pods claim this IP: fail closed. */
  | { kind: 'ambiguous' };

export interface IdentityLookup {
  /**
   * Who is asking, and which role may they have. Waits for the watch up to a deadline when the IP is not
   * known yet, then does one live look-up. Never throws.
   */
  lookup(ip: string): Promise<Lookup>;
  /** The uid of the pod that holds this IP right now, without waiting; undefined if none or ambiguous. */
  peekUid(ip: string): string | undefined;
}

export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** Epoch milliseconds. */
  expiration: number;
  /** Epoch milliseconds: when these credentials were obtained. */
  lastUpdated: number;
}

export interface CredentialProvider {
  /**
   * Credentials for the identity with at least the serving floor of lifetime left; rejects when none can
   * be had (STS error, negative cache). Never resolves with credentials below the floor.
   */
  get(identity: RoleIdentity): Promise<Credentials>;
}
