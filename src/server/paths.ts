/**
 * Request paths, normalised once and classified strictly. Everything that could reach `meta-data/iam` on
 * the real service, in any spelling, is answered by the agent or refused — never proxied. Only that place is
 * special: a segment elsewhere that merely contains `iam` (an instance tag named `William`) is an ordinary path.
 *
 * Normalisation: query and fragment dropped, absolute-form URLs reduced to their path, percent-decoding
 * applied exactly once (a `%` left after decoding is double encoding: refused), duplicate slashes
 * collapsed, `.` and `..` resolved. Control characters and backslashes are refused.
 */

export interface NormalisedPath {
  /** Non-empty, decoded path segments. */
  segments: string[];
  /** The decoded path ended with `/` (or with a dot segment): directory listings keep it upstream. */
  trailingSlash: boolean;
  /** Segments joined by `/`, without the leading slash, with the trailing slash: `latest/meta-data/`. */
  path: string;
}

export type Route =
  /** PUT /latest/api/token. */
  | { kind: 'token' }
  /** Anything under <version>/meta-data/iam (any case): `rest` are the segments after `iam`. */
  | { kind: 'iam'; rest: string[] }
  /** A candidate for the upstream: `path` without leading slash, e.g. `latest/meta-data/instance-id`. */
  | { kind: 'passthrough'; path: string }
  /** Never proxied and not ours: 404. */
  | { kind: 'refused' }
  /** Not a path at all (malformed encoding, control characters): 400. */
  | { kind: 'bad' };

const VERSION = /^(?:latest|\d{4}-\d{2}-\d{2})$/i;
// eslint-disable-next-line no-control-regex
const FORBIDDEN = /[\u0000-\u001f\u007f\\%]/;
/** Characters a pass-through segment may hold; anything else is refused rather than re-encoded. */
const SAFE_SEGMENT = /^[A-Za-z0-9._~+=,@:-]+$/;
const ABSOLUTE_FORM = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i;

/** Normalise a raw request target; undefined when it is not a usable path. */
export function normalisePath(rawUrl: string): NormalisedPath | undefined {
  let target = rawUrl;
  const cut = target.search(/[?#]/);
  if (cut >= 0) target = target.slice(0, cut);
  if (!target.startsWith('/')) {
    const m = ABSOLUTE_FORM.exec(target);
    if (!m) return undefined;
    target = target.slice(m[0].length) || '/';
  }
  let decoded: string;
  try {
    decoded = target.includes('%') ? decodeURIComponent(target) : target;
  } catch {
    return undefined;
  }
  if (FORBIDDEN.test(decoded)) return undefined;

  const segments: string[] = [];
  const parts = decoded.split('/');
  let trailingSlash = false;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    const last = i === parts.length - 1;
    if (part === '' || part === '.') {
      if (last && segments.length > 0) trailingSlash = true;
    } else if (part === '..') {
      segments.pop();
      if (last && segments.length > 0) trailingSlash = true;
    } else {
      segments.push(part);
    }
  }
  const joined = segments.join('/');
  return { segments, trailingSlash, path: trailingSlash ? `${joined}/` : joined };
}

/** Decide who answers a request. */
export function classify(rawUrl: string): Route {
  const norm = normalisePath(rawUrl);
  if (!norm) return { kind: 'bad' };
  const segs = norm.segments;
  const lower = segs.map((s) => s.toLowerCase());
  // `/meta-data/…` (root prefix) or `/<version>/meta-data/…`.
  const base = lower[0] === 'meta-data' || lower[0] === 'api' ? 0 : VERSION.test(segs[0] ?? '') ? 1 : -1;

  if (base >= 0 && lower[base] === 'meta-data') {
    const category = lower[base + 1];
    if (category === 'iam') return { kind: 'iam', rest: segs.slice(base + 2) };
    // `iam.`, `i-a-m`, `~iam`: decorated spellings of the category a lenient server might still take for it.
    if (category !== undefined && category.replace(/[^a-z0-9]/g, '') === 'iam') return { kind: 'refused' };
  }

  if (base >= 0 && lower[base] === 'api') {
    return base === 1 && lower.length === 3 && lower[2] === 'token' ? { kind: 'token' } : { kind: 'refused' };
  }
  if (segs.length === 0) return { kind: 'passthrough', path: '' };
  if (base !== 1) return { kind: 'refused' };
  if (!segs.every((s) => SAFE_SEGMENT.test(s))) return { kind: 'refused' };
  return { kind: 'passthrough', path: norm.path };
}

/**
 * The allow/deny decision for a pass-through path (`latest/meta-data/instance-id`). An empty allow list
 * allows everything not denied. Deny patterns are tried against the path and its lower-case form, so a
 * case variant cannot slip past a deny rule written in lower case.
 */
export function routeAllowed(path: string, allow: readonly RegExp[], deny: readonly RegExp[]): boolean {
  const lower = path.toLowerCase();
  for (const re of deny) {
    if (test(re, path) || (lower !== path && test(re, lower))) return false;
  }
  if (allow.length === 0) return true;
  return allow.some((re) => test(re, path));
}

/** RegExp.test without the lastIndex trap of global/sticky patterns. */
function test(re: RegExp, s: string): boolean {
  re.lastIndex = 0;
  return re.test(s);
}
