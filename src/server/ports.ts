/**
 * What the metadata server consumes, defined by the consumer. The resolver and the cache provide
 * objects of these shapes; main.ts wires them. Nothing here imports client-node or the AWS SDK.
 */

/**
 * Who is asking and what they may have: the resolver's answer shapes, used as they are (type-only, so the
 * server still never loads the resolver).
 */
export type { Lookup, PodRef, RoleIdentity } from '../resolver/types.ts';
import type { Lookup, RoleIdentity } from '../resolver/types.ts';

/** A lookup that found the pod of this node at the source: the server answers nothing else (403). */
export type PodLookup = Exclude<Lookup, { kind: 'unknown' } | { kind: 'ambiguous' }>;

export interface IdentityLookup {
  /**
   * Who is asking, and which role may they have. Waits for the watch up to a deadline when the IP is not
   * known yet, then does one live look-up. Counts unknown and ambiguous sources; policy denials are counted by
   * the server, which knows whether credentials were asked for. Called for every request. Never throws.
   */
  lookup(ip: string): Promise<Lookup>;
  /**
   * The answer lookup() would give at once for a pod already in the index, without waiting, counting or logging;
   * undefined otherwise (then lookup() decides). Optional: the server's warm path uses it when present.
   */
  peek?(ip: string): Lookup | undefined;
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
   * Credentials for the identity with at least the serving floor of lifetime left (while STS fails retryably,
   * down to 5 min before expiry); rejects when none can be had (STS error, negative cache).
   */
  get(identity: RoleIdentity): Promise<Credentials>;
  /**
   * The credentials get() would resolve with at once (a cache hit, counted as one), or undefined when get() would
   * have to wait or reject. The same object for as long as the same credentials are held. Optional: the server's
   * warm path uses it when present.
   */
  peek?(identity: RoleIdentity): Credentials | undefined;
}
