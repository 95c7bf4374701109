import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../clock.ts';

/**
 * IMDSv2 session tokens minted by the agent itself: stateless, an HMAC under a random per-process key.
 * A token is bound to the source IP that asked for it and, when the pod holding that IP was known at the
 * time, to the pod's uid, so a token used from another IP, or after the IP passed to another pod, fails.
 * Tokens do not survive an agent restart; clients then get 401 and fetch a new one, as they do on expiry.
 *
 * Wire form: base64url of [version 1 byte][expiry, epoch seconds, 4 bytes][pod-bound flag 1 byte][HMAC-SHA256 32 bytes].
 */
export const MIN_TOKEN_TTL_SECONDS = 1;
export const MAX_TOKEN_TTL_SECONDS = 21600;

export type TokenCheck = 'ok' | 'invalid' | 'expired';

export interface TokenService {
  /** A token for `ip`, bound to `uid` when given, valid for ttlSeconds (1..21600). */
  mint(ip: string, uid: string | undefined, ttlSeconds: number): string;
  /** Check a presented token against the request's IP and the uid of the pod holding that IP now. */
  verify(token: string, ip: string, currentUid: string | undefined): TokenCheck;
}

const VERSION = 1;
const HEADER_BYTES = 6;
const MAC_BYTES = 32;
const TOKEN_BYTES = HEADER_BYTES + MAC_BYTES;

export function createTokenService(options: { clock: Clock; key?: Buffer }): TokenService {
  const { clock } = options;
  const key = options.key ?? randomBytes(32);
  if (key.length < 16) throw new Error('token key must be at least 16 bytes');

  const mac = (header: Buffer, ip: string, uid: string): Buffer =>
    createHmac('sha256', key).update(header).update(`\0${ip}\0${uid}`).digest();

  return {
    mint(ip, uid, ttlSeconds) {
      if (!Number.isInteger(ttlSeconds) || ttlSeconds < MIN_TOKEN_TTL_SECONDS || ttlSeconds > MAX_TOKEN_TTL_SECONDS) {
        throw new RangeError(`token TTL must be an integer in ${MIN_TOKEN_TTL_SECONDS}..${MAX_TOKEN_TTL_SECONDS}`);
      }
      const buf = Buffer.alloc(TOKEN_BYTES);
      buf.writeUInt8(VERSION, 0);
      buf.writeUInt32BE(Math.floor(clock.now() / 1000) + ttlSeconds, 1);
      buf.writeUInt8(uid === undefined ? 0 : 1, 5);
      mac(buf.subarray(0, HEADER_BYTES), ip, uid ?? '').copy(buf, HEADER_BYTES);
      return buf.toString('base64url');
    },

    verify(token, ip, currentUid) {
      if (token.length !== Math.ceil((TOKEN_BYTES * 4) / 3)) return 'invalid';
      const buf = Buffer.from(token, 'base64url');
      // Buffer.from ignores stray characters: insist on the canonical spelling.
      if (buf.length !== TOKEN_BYTES || buf.toString('base64url') !== token || buf.readUInt8(0) !== VERSION) return 'invalid';
      const header = buf.subarray(0, HEADER_BYTES);
      const bound = buf.readUInt8(5) === 1;
      if (bound && currentUid === undefined) return 'invalid';
      const expected = mac(header, ip, bound ? (currentUid as string) : '');
      if (!timingSafeEqual(expected, buf.subarray(HEADER_BYTES))) return 'invalid';
      return clock.now() < buf.readUInt32BE(1) * 1000 ? 'ok' : 'expired';
    },
  };
}

/** The TTL header of a token PUT: an integer 1..21600, or undefined when missing or invalid. */
export function parseTtl(header: string | string[] | undefined): number | undefined {
  if (typeof header !== 'string' || !/^\d{1,5}$/.test(header.trim())) return undefined;
  const ttl = Number(header.trim());
  return ttl >= MIN_TOKEN_TTL_SECONDS && ttl <= MAX_TOKEN_TTL_SECONDS ? ttl : undefined;
}
