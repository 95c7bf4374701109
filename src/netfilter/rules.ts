/**
 * Pure iptables logic: validate the interception spec, render iptables-restore transactions for the
 * agent's own chains (the nat DNAT chain and the filter backstop, for IPv4 and IPv6), parse iptables-save
 * output and compare what is live with what is wanted. No I/O here.
 */

import { hostIpProblem, hostIpv6Problem, interfacePatternProblem, METADATA_IP, METADATA_IPV6 } from '../config.ts';

export { METADATA_IP, METADATA_IPV6 };
export const METADATA_PORT = 80;
export const DEFAULT_CHAIN = 'KIAM-METADATA';
/** Appended to the nat chain's name to name the filter chain that rejects metadata traffic the DNAT missed. */
export const BACKSTOP_SUFFIX = '-BACKSTOP';
export const DEFAULT_BACKSTOP_CHAIN = `${DEFAULT_CHAIN}${BACKSTOP_SUFFIX}`;
export const RULE_COMMENT = 'kiam: metadata to agent';
export const BACKSTOP_COMMENT = 'kiam: fail closed';

/** iptables (IPv4) or ip6tables (IPv6). */
export type IpFamily = 'ipv4' | 'ipv6';
/** The tables the agent writes: the DNAT in nat, the backstop in filter. */
export type RuleTable = 'nat' | 'filter';

/** The built-in chains that jump to the agent's chain in each table, each jump at position 1 when installed. */
export const HOOK_CHAINS: Readonly<Record<RuleTable, readonly string[]>> = { nat: ['PREROUTING'], filter: ['INPUT', 'FORWARD'] };

export interface RuleSpec {
  /** Where the DNAT sends metadata traffic: the agent's address on this node. */
  hostIp: string;
  /**
   * The node's global IPv6 address: when given, ip6tables gets the same rules for fd00:ec2::254, DNAT to [hostIpv6]:port.
   * Without it, ip6tables gets the backstop alone (no DNAT): pods dialling fd00:ec2::254 are rejected.
   */
  hostIpv6?: string;
  port: number;
  /** iptables -i patterns: `cali+`, `eni+`, `cni0`, negated `!eth0`. One DNAT rule each. */
  hostInterfaces: readonly string[];
  /** The nat chain the agent owns; default KIAM-METADATA. The filter backstop is named after it (CHAIN-BACKSTOP). */
  chain?: string;
}

/** A validated spec: the chain filled in, hostIpv6 (when given) in the compressed form ip6tables prints. */
export type ResolvedRuleSpec = Required<Omit<RuleSpec, 'hostIpv6'>> & Pick<RuleSpec, 'hostIpv6'>;

/** The metadata address intercepted in a family. */
export function metadataAddress(family: IpFamily): string {
  return family === 'ipv6' ? METADATA_IPV6 : METADATA_IP;
}

/**
 * Whether the spec wants a DNAT in this family: always for IPv4, for IPv6 only with an IPv6 host address. Without
 * one, ip6tables holds the backstop alone, so that pods on a node whose instance serves fd00:ec2::254
 * (HttpProtocolIpv6 enabled) fail closed there instead of reaching the node's role.
 */
export function managesDnat(spec: Pick<RuleSpec, 'hostIpv6'>, family: IpFamily): boolean {
  return family === 'ipv4' || spec.hostIpv6 !== undefined;
}

/** The filter chain holding the backstop for a nat chain. */
export function backstopChain(chain: string): string {
  return `${chain}${BACKSTOP_SUFFIX}`;
}

/** An IPv6 address in the compressed lowercase form iptables-save prints (RFC 5952), or undefined when it is not one. */
export function canonicalIpv6(text: string): string | undefined {
  if (!text.includes(':') || !/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  try {
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}

/** Thrown for an invalid spec; `problems` lists every problem, each naming the offending value. */
export class RuleSpecError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid interception rule spec: ${problems.join('; ')}`);
    this.name = 'RuleSpecError';
    this.problems = problems;
  }
}

const BUILTIN_NAMES = new Set(['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING', 'ACCEPT', 'DROP', 'RETURN', 'QUEUE', 'DNAT', 'SNAT', 'MASQUERADE', 'REDIRECT']);

/** Every problem with the spec, empty when it is valid. */
export function validateRuleSpec(spec: RuleSpec): string[] {
  const problems: string[] = [];
  const ipProblem = hostIpProblem(spec.hostIp);
  if (ipProblem) problems.push(ipProblem);
  if (spec.hostIpv6 !== undefined) {
    const ipv6Problem = hostIpv6Problem(spec.hostIpv6);
    if (ipv6Problem) problems.push(ipv6Problem);
  }
  if (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65535) {
    problems.push(`port ${JSON.stringify(spec.port)} must be an integer between 1 and 65535`);
  }
  if (!Array.isArray(spec.hostInterfaces) || spec.hostInterfaces.length === 0) {
    problems.push('at least one host interface pattern is required (e.g. cali+, eni+, !eth0)');
  } else {
    const seen = new Set<string>();
    for (const pattern of spec.hostInterfaces) {
      const problem = interfacePatternProblem(pattern);
      if (problem) problems.push(problem);
      else if (seen.has(pattern)) problems.push(`host interface ${JSON.stringify(pattern)} is given more than once`);
      seen.add(pattern);
    }
  }
  if (spec.chain !== undefined) {
    const chain = spec.chain;
    // iptables chain names hold at most 28 characters, and the backstop chain appends -BACKSTOP (9).
    if (typeof chain !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_-]{0,18}$/.test(chain)) {
      problems.push(`chain ${JSON.stringify(chain)} must be 1-19 characters of [A-Za-z0-9_-], not starting with '-' or '_'`);
    } else if (BUILTIN_NAMES.has(chain.toUpperCase())) {
      problems.push(`chain ${JSON.stringify(chain)} is a built-in chain or target name`);
    }
  }
  return problems;
}

/** Throws a RuleSpecError naming every problem; returns the spec with the chain filled in and hostIpv6 compressed. */
export function assertValidRuleSpec(spec: RuleSpec): ResolvedRuleSpec {
  const problems = validateRuleSpec(spec);
  if (problems.length > 0) throw new RuleSpecError(problems);
  const resolved: ResolvedRuleSpec = { hostIp: spec.hostIp, port: spec.port, hostInterfaces: [...spec.hostInterfaces], chain: spec.chain ?? DEFAULT_CHAIN };
  if (spec.hostIpv6 !== undefined) resolved.hostIpv6 = canonicalIpv6(spec.hostIpv6) ?? spec.hostIpv6;
  return resolved;
}

// ---------------------------------------------------------------------------------------------------
// Rendering

/** The DNAT rule for one interface pattern, as `-A CHAIN …` arguments (without the leading `-A CHAIN`). */
export function ruleArgs(spec: ResolvedRuleSpec, pattern: string, family: IpFamily = 'ipv4'): string[] {
  const target = family === 'ipv6' ? `[${ipv6Target(spec)}]:${spec.port}` : `${spec.hostIp}:${spec.port}`;
  return [
    ...interfaceArgs(pattern),
    '-d', metadataPrefix(family),
    '-p', 'tcp', '-m', 'tcp', '--dport', String(METADATA_PORT),
    '-m', 'comment', '--comment', RULE_COMMENT,
    '-j', 'DNAT', '--to-destination', target,
  ];
}

/**
 * The backstop rule for one interface pattern: TCP from that interface still addressed to the metadata
 * service is rejected with a reset. The nat table's DNAT runs before the filter table (PREROUTING comes before
 * INPUT and FORWARD), so what matches here is only traffic that escaped the DNAT: a flushed or reordered nat table.
 */
export function backstopArgs(pattern: string, family: IpFamily = 'ipv4'): string[] {
  return [
    ...interfaceArgs(pattern),
    '-d', metadataPrefix(family),
    '-p', 'tcp',
    '-m', 'comment', '--comment', BACKSTOP_COMMENT,
    '-j', 'REJECT', '--reject-with', 'tcp-reset',
  ];
}

function interfaceArgs(pattern: string): string[] {
  return pattern.startsWith('!') ? ['!', '-i', pattern.slice(1)] : ['-i', pattern];
}

function metadataPrefix(family: IpFamily): string {
  return family === 'ipv6' ? `${METADATA_IPV6}/128` : `${METADATA_IP}/32`;
}

function ipv6Target(spec: ResolvedRuleSpec): string {
  if (spec.hostIpv6 === undefined) throw new Error('no IPv6 host address in the rule spec: ip6tables rules need hostIpv6');
  return spec.hostIpv6;
}

/** The rules the nat chain should hold, in order, as argument lists. */
export function desiredRules(spec: ResolvedRuleSpec, family: IpFamily = 'ipv4'): string[][] {
  return spec.hostInterfaces.map((pattern) => ruleArgs(spec, pattern, family));
}

/** The rules the filter backstop chain should hold, in order, as argument lists. */
export function desiredBackstop(spec: ResolvedRuleSpec, family: IpFamily = 'ipv4'): string[][] {
  return spec.hostInterfaces.map((pattern) => backstopArgs(pattern, family));
}

/** Join arguments into one iptables-restore line, quoting as iptables-save does. */
export function formatArgs(args: readonly string[]): string {
  return args.map(quoteArg).join(' ');
}

function quoteArg(arg: string): string {
  if (arg !== '' && /^[^\s"'\\]+$/.test(arg)) return arg;
  return `"${arg.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}

/**
 * The `iptables-restore --noflush` transaction (`ip6tables-restore` for IPv6) that (re)writes the nat chain
 * and the filter backstop chain, and makes sure each hook chain (nat PREROUTING; filter INPUT and FORWARD)
 * jumps to ours exactly once. IPv6 without an IPv6 host address gets the filter part alone (see managesDnat);
 * the nat table is then not touched. `:CHAIN - [0:0]` creates or flushes only that chain. With the live state given,
 * a jump is inserted only when missing; stray or duplicate jumps are deleted first and one plain jump is
 * inserted at position 1, and so is a jump that a rule handling the metadata address shadows.
 * nft applies the whole input at once; legacy commits each table in turn, the nat table first, so that a
 * failure in the second still leaves the DNAT in place.
 */
export function renderInstall(spec: ResolvedRuleSpec, live?: FamilyState, family: IpFamily = 'ipv4'): string {
  const address = metadataAddress(family);
  return [
    ...(managesDnat(spec, family) ? renderTable('nat', spec.chain, desiredRules(spec, family), live?.nat, address) : []),
    ...renderTable('filter', backstopChain(spec.chain), desiredBackstop(spec, family), live?.backstop, address),
    '',
  ].join('\n');
}

function renderTable(table: RuleTable, chain: string, wanted: string[][], live: ChainState | undefined, address: string): string[] {
  const lines = [`*${table}`, `:${chain} - [0:0]`];
  for (const args of wanted) lines.push(`-A ${chain} ${formatArgs(args)}`);
  for (const hook of HOOK_CHAINS[table]) {
    const jumps = live?.jumps.filter((j) => j.chain === hook) ?? [];
    const shadowed = live !== undefined && rulesAhead(live, address).some((r) => r.chain === hook && r.shadows);
    if (jumps.length === 1 && jumps[0]?.plain === true && !shadowed) continue;
    for (const jump of jumps) lines.push(`-D ${hook} ${jump.spec}`);
    lines.push(`-I ${hook} 1 -j ${chain}`);
  }
  lines.push('COMMIT');
  return lines;
}

/**
 * The transaction that removes every jump to the nat chain (from any nat chain) and to the backstop chain (from
 * any filter chain), then flushes and deletes both; null when there is nothing to remove.
 */
export function renderRemove(chain: string, live: FamilyState): string | null {
  const lines = [...removeTable('nat', chain, live.nat), ...removeTable('filter', backstopChain(chain), live.backstop)];
  return lines.length === 0 ? null : [...lines, ''].join('\n');
}

function removeTable(table: RuleTable, chain: string, live: ChainState): string[] {
  if (!live.chainPresent && live.jumps.length === 0) return [];
  const lines = [`*${table}`];
  for (const jump of live.jumps) lines.push(`-D ${jump.chain} ${jump.spec}`);
  if (live.chainPresent) lines.push(`:${chain} - [0:0]`, `-X ${chain}`);
  lines.push('COMMIT');
  return lines;
}

// ---------------------------------------------------------------------------------------------------
// Parsing iptables-save

export interface SaveRule {
  chain: string;
  /** The rule as printed after `-A CHAIN `, unparsed (tokenize() it when needed). */
  spec: string;
}

export interface SaveTable {
  name: string;
  /** Chain name → policy (`ACCEPT`… for built-ins, `-` for user chains), in the order printed. */
  chains: Map<string, string>;
  rules: SaveRule[];
}

/** Parse iptables-save output into tables, chains and rules (rules kept as raw text, cheap for big tables). */
export function parseSave(text: string): Map<string, SaveTable> {
  const tables = new Map<string, SaveTable>();
  let current: SaveTable | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('*')) {
      current = { name: line.slice(1), chains: new Map(), rules: [] };
      tables.set(current.name, current);
    } else if (line === 'COMMIT') {
      current = undefined;
    } else if (current && line.startsWith(':')) {
      const [name, policy = '-'] = line.slice(1).split(/\s+/);
      if (name) current.chains.set(name, policy);
    } else if (current) {
      // Rules may carry counters when saved with -c: `[pkts:bytes] -A CHAIN …`.
      const match = /^(?:\[\d+:\d+\]\s+)?-A\s+(\S+)(?:\s+(.*))?$/.exec(line);
      if (match?.[1]) current.rules.push({ chain: match[1], spec: match[2] ?? '' });
    }
  }
  return tables;
}

/** Split an iptables-save rule into arguments, undoing its quoting (`"…"` with `\"` and `\\`). */
export function tokenize(spec: string): string[] {
  const tokens: string[] = [];
  let i = 0;
  while (i < spec.length) {
    while (spec[i] === ' ' || spec[i] === '\t') i++;
    if (i >= spec.length) break;
    let token = '';
    while (i < spec.length && spec[i] !== ' ' && spec[i] !== '\t') {
      const c = spec[i];
      if (c === '"' || c === "'") {
        i++;
        while (i < spec.length && spec[i] !== c) {
          if (spec[i] === '\\' && i + 1 < spec.length) i++;
          token += spec[i];
          i++;
        }
        i++; // closing quote
      } else {
        token += c;
        i++;
      }
    }
    tokens.push(token);
  }
  return tokens;
}

const ALIASES: Record<string, string> = {
  '--in-interface': '-i', '--out-interface': '-o', '--source': '-s', '--src': '-s', '--destination': '-d',
  '--dst': '-d', '--protocol': '-p', '--jump': '-j', '--goto': '-g', '--match': '-m', '--destination-port': '--dport',
  '--source-port': '--sport', '--to': '--to-destination',
};

/**
 * A canonical form of a rule for comparison, robust to how the backends print it: options grouped with
 * their values and negation (`! -i x` and `-i ! x` alike), long names mapped to short ones, addresses
 * given /32 (IPv4) or /128 (IPv6), IPv6 addresses compressed, the implicit `-m tcp`/`-m udp` and the
 * match-all `-i +` dropped, then sorted.
 */
export function canonicalRule(args: readonly string[]): string {
  const groups: string[] = [];
  let negate = false;
  let current: string[] | undefined;
  const flush = () => {
    if (current) groups.push(current.join(' '));
    current = undefined;
  };
  for (let i = 0; i < args.length; i++) {
    const token = args[i] ?? '';
    if (token === '!') {
      // `! -i x` negates the next option; the old `-i ! x` negates the current one.
      if (isOption(args[i + 1])) {
        flush();
        negate = true;
      } else if (current) current.unshift('!');
      continue;
    }
    if (isOption(token)) {
      flush();
      const name = ALIASES[token] ?? token;
      current = negate ? ['!', name] : [name];
      negate = false;
      continue;
    }
    if (!current) current = [];
    const flag = current[current.length - 1];
    current.push(flag === '-s' || flag === '-d' ? canonicalAddress(token) : flag === '--to-destination' ? canonicalTarget(token) : token);
  }
  flush();
  // `-m tcp` is implied by `-p tcp`; `-i +` (any interface) is not printed back at all.
  const implied = new Set(groups.filter((g) => g.startsWith('-p ')).map((g) => `-m ${g.slice(3).toLowerCase()}`));
  implied.add('-i +').add('-o +');
  return groups
    .filter((g) => !implied.has(g))
    .map((g) => (g.startsWith('-p ') ? g.toLowerCase() : g))
    .sort()
    .join(' ');
}

function isOption(token: string | undefined): boolean {
  return token !== undefined && token.startsWith('-') && token.length > 1 && !/^-\d/.test(token);
}

/** `-s`/`-d` values: a bare address gets its full-length prefix, IPv6 is compressed. */
function canonicalAddress(token: string): string {
  const [address = '', prefix] = token.split('/');
  if (/^\d+\.\d+\.\d+\.\d+$/.test(address)) return `${address}/${prefix ?? '32'}`;
  const ipv6 = canonicalIpv6(address);
  return ipv6 === undefined ? token : `${ipv6}/${prefix ?? '128'}`;
}

/** DNAT targets: `[IPv6]:port` with the address compressed. */
function canonicalTarget(token: string): string {
  const match = /^\[([^\]]+)\](.*)$/.exec(token);
  const ipv6 = match?.[1] === undefined ? undefined : canonicalIpv6(match[1]);
  return ipv6 === undefined ? token : `[${ipv6}]${match?.[2] ?? ''}`;
}

export interface JumpRule {
  /** The chain holding the jump (normally a hook chain: PREROUTING, INPUT, FORWARD). */
  chain: string;
  /** 1-based position within that chain. */
  position: number;
  /** The rule as printed after `-A CHAIN`, usable after `-D CHAIN`. */
  spec: string;
  /** True for a bare `-j CHAIN` with no other match. */
  plain: boolean;
}

/** A rule of a hook chain, with its 1-based position there. */
export interface HookRule {
  chain: string;
  position: number;
  /** The rule as printed after `-A CHAIN`. */
  spec: string;
}

/** What one table holds for one of the agent's chains. */
export interface ChainState {
  chainPresent: boolean;
  /** The chain's rules as printed by iptables-save (text after `-A CHAIN `). */
  rules: string[];
  /** Every rule in any chain of the table that jumps (-j or -g) to the chain. */
  jumps: JumpRule[];
  /** Every rule of the table's hook chains (nat PREROUTING; filter INPUT, FORWARD), in order. */
  hookRules: HookRule[];
}

/** What one family (iptables or ip6tables) holds for the agent: the nat chain and the filter backstop. */
export interface FamilyState {
  nat: ChainState;
  backstop: ChainState;
}

/** Extract a chain's state from iptables-save output (the given table; absent table → nothing there). */
export function chainState(saveOutput: string, chain: string, table: RuleTable = 'nat'): ChainState {
  const parsed = parseSave(saveOutput).get(table);
  if (!parsed) return { chainPresent: false, rules: [], jumps: [], hookRules: [] };
  const hooks = new Set(HOOK_CHAINS[table]);
  const jumpRe = new RegExp(`(?:^|\\s)-[jg]\\s+"?${chain.replace(/[-]/g, '\\-')}"?(?:\\s|$)`);
  const positions = new Map<string, number>();
  const rules: string[] = [];
  const jumps: JumpRule[] = [];
  const hookRules: HookRule[] = [];
  const plain = canonicalRule(['-j', chain]);
  for (const rule of parsed.rules) {
    const position = (positions.get(rule.chain) ?? 0) + 1;
    positions.set(rule.chain, position);
    if (rule.chain === chain) rules.push(rule.spec);
    if (hooks.has(rule.chain)) hookRules.push({ chain: rule.chain, position, spec: rule.spec });
    if (!jumpRe.test(rule.spec)) continue;
    const args = tokenize(rule.spec);
    const target = args.findIndex((a, i) => (a === '-j' || a === '-g' || a === '--jump' || a === '--goto') && args[i + 1] === chain);
    if (target < 0) continue;
    jumps.push({ chain: rule.chain, position, spec: rule.spec, plain: canonicalRule(args) === plain });
  }
  return { chainPresent: parsed.chains.has(chain), rules, jumps, hookRules };
}

/** Both of the agent's chains in one family's iptables-save output (all tables). */
export function familyState(saveOutput: string, chain: string): FamilyState {
  return { nat: chainState(saveOutput, chain, 'nat'), backstop: chainState(saveOutput, backstopChain(chain), 'filter') };
}

export interface RuleAhead extends HookRule {
  /** The rule handles the metadata address: it takes that traffic before our jump does. */
  shadows: boolean;
}

/**
 * The rules of each hook chain that come before its first jump to ours (none for a hook without a jump). Those
 * that mention the metadata address (a kube2iam leftover, another proxy) shadow our jump; the others (a CNI's or
 * kube-proxy's jumps) are only listed.
 */
export function rulesAhead(live: ChainState, address: string): RuleAhead[] {
  const first = new Map<string, number>();
  for (const jump of live.jumps) first.set(jump.chain, Math.min(jump.position, first.get(jump.chain) ?? Infinity));
  return live.hookRules
    .filter((r) => r.position < (first.get(r.chain) ?? -Infinity))
    .map((r) => ({ ...r, shadows: mentions(r.spec, address) }));
}

/** True when a rule's matches or target (not its comment) name the address. */
function mentions(spec: string, address: string): boolean {
  if (!spec.includes(address)) return false;
  const args = tokenize(spec);
  return args.some((a, i) => a.includes(address) && args[i - 1] !== '--comment');
}

export interface Comparison {
  inSync: boolean;
  /** Human-readable reasons for drift, empty when in sync. */
  drift: string[];
  /** 1-based positions of the jumps in PREROUTING. */
  jumpPositions: number[];
  /** The rules ahead of our jump, as `-A CHAIN …` lines: listed, drift only when they shadow it. */
  rulesAhead: string[];
  /** Those of rulesAhead that handle the metadata address (each one is also in drift). */
  shadowing: string[];
}

export interface BackstopComparison extends Omit<Comparison, 'jumpPositions'> {
  /** 1-based positions of the jumps in filter INPUT and FORWARD. */
  jumpPositions: { INPUT: number[]; FORWARD: number[] };
}

/** Compare a live nat chain with the wanted DNAT rules and its PREROUTING jump. */
export function compare(spec: ResolvedRuleSpec, live: ChainState, family: IpFamily = 'ipv4'): Comparison {
  const result = compareChain('nat', spec.chain, desiredRules(spec, family), live, metadataAddress(family));
  return { ...result, jumpPositions: result.jumpPositions.PREROUTING ?? [] };
}

/** Compare a live filter backstop chain with the wanted rules and its INPUT and FORWARD jumps. */
export function compareBackstop(spec: ResolvedRuleSpec, live: ChainState, family: IpFamily = 'ipv4'): BackstopComparison {
  const result = compareChain('filter', backstopChain(spec.chain), desiredBackstop(spec, family), live, metadataAddress(family));
  return { ...result, jumpPositions: { INPUT: result.jumpPositions.INPUT ?? [], FORWARD: result.jumpPositions.FORWARD ?? [] } };
}

export interface FamilyComparison {
  inSync: boolean;
  /** The nat chain's drift, then the backstop's. */
  drift: string[];
  nat: Comparison;
  backstop: BackstopComparison;
  rulesAhead: string[];
  shadowing: string[];
}

/**
 * Compare both of the agent's chains in one family. Where the spec wants no DNAT (IPv6 without an IPv6 host
 * address), the nat table is left out: its comparison is in sync, with no drift and nothing shadowing (a leftover
 * DNAT chain of ours is not drift: it only shows in the jump positions).
 */
export function compareFamily(spec: ResolvedRuleSpec, live: FamilyState, family: IpFamily = 'ipv4'): FamilyComparison {
  const nat = managesDnat(spec, family)
    ? compare(spec, live.nat, family)
    : { inSync: true, drift: [], jumpPositions: live.nat.jumps.filter((j) => j.chain === 'PREROUTING').map((j) => j.position), rulesAhead: [], shadowing: [] };
  const backstop = compareBackstop(spec, live.backstop, family);
  return {
    inSync: nat.inSync && backstop.inSync,
    drift: [...nat.drift, ...backstop.drift],
    nat,
    backstop,
    rulesAhead: [...nat.rulesAhead, ...backstop.rulesAhead],
    shadowing: [...nat.shadowing, ...backstop.shadowing],
  };
}

function compareChain(
  table: RuleTable,
  chain: string,
  wanted: string[][],
  live: ChainState,
  address: string,
): Omit<Comparison, 'jumpPositions'> & { jumpPositions: Record<string, number[]> } {
  const drift: string[] = [];
  if (!live.chainPresent) {
    drift.push(`chain ${chain} missing`);
  } else {
    const want = wanted.map(canonicalRule);
    const have = live.rules.map((r) => canonicalRule(tokenize(r)));
    if (want.length !== have.length || want.some((w, i) => w !== have[i])) {
      drift.push(`chain ${chain} holds ${have.length} rule(s) that differ from the ${want.length} wanted`);
    }
  }
  const jumpPositions: Record<string, number[]> = {};
  for (const hook of HOOK_CHAINS[table]) {
    const jumps = live.jumps.filter((j) => j.chain === hook);
    jumpPositions[hook] = jumps.map((j) => j.position);
    if (jumps.length === 0) drift.push(`${hook} does not jump to ${chain}`);
    else if (jumps.length > 1) drift.push(`${hook} jumps to ${chain} ${jumps.length} times`);
    else if (!jumps[0]?.plain) drift.push(`${hook} jump to ${chain} was modified: ${jumps[0]?.spec}`);
  }
  const ahead = rulesAhead(live, address);
  const line = (r: HookRule) => `-A ${r.chain} ${r.spec}`;
  const shadowing = ahead.filter((r) => r.shadows).map(line);
  for (const rule of shadowing) drift.push(`rule ahead of our jump shadows it: ${rule}`);
  return { inSync: drift.length === 0, drift, jumpPositions, rulesAhead: ahead.map(line), shadowing };
}
