/**
 * Pure iptables logic: validate the interception spec, render iptables-restore transactions for the
 * agent's own nat chain, parse iptables-save output and compare what is live with what is wanted.
 * No I/O here.
 */

import { hostIpProblem, interfacePatternProblem, METADATA_IP } from '../config.ts';

export { METADATA_IP };
export const METADATA_PORT = 80;
export const DEFAULT_CHAIN = 'KIAM-METADATA';
export const RULE_COMMENT = 'kiam: metadata to agent';

export interface RuleSpec {
  /** Where the DNAT sends metadata traffic: the agent's address on this node. */
  hostIp: string;
  port: number;
  /** iptables -i patterns: `cali+`, `eni+`, `cni0`, negated `!eth0`. One DNAT rule each. */
  hostInterfaces: readonly string[];
  /** The nat chain the agent owns; default KIAM-METADATA. */
  chain?: string;
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
    if (typeof chain !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_-]{0,27}$/.test(chain)) {
      problems.push(`chain ${JSON.stringify(chain)} must be 1-28 characters of [A-Za-z0-9_-], not starting with '-' or '_'`);
    } else if (BUILTIN_NAMES.has(chain.toUpperCase())) {
      problems.push(`chain ${JSON.stringify(chain)} is a built-in chain or target name`);
    }
  }
  return problems;
}

/** Throws a RuleSpecError naming every problem; returns the spec with the chain filled in. */
export function assertValidRuleSpec(spec: RuleSpec): Required<RuleSpec> {
  const problems = validateRuleSpec(spec);
  if (problems.length > 0) throw new RuleSpecError(problems);
  return { hostIp: spec.hostIp, port: spec.port, hostInterfaces: [...spec.hostInterfaces], chain: spec.chain ?? DEFAULT_CHAIN };
}

// ---------------------------------------------------------------------------------------------------
// Rendering

/** The DNAT rule for one interface pattern, as `-A CHAIN …` arguments (without the leading `-A CHAIN`). */
export function ruleArgs(spec: Required<RuleSpec>, pattern: string): string[] {
  const iface = pattern.startsWith('!') ? ['!', '-i', pattern.slice(1)] : ['-i', pattern];
  return [
    ...iface,
    '-d', `${METADATA_IP}/32`,
    '-p', 'tcp', '-m', 'tcp', '--dport', String(METADATA_PORT),
    '-m', 'comment', '--comment', RULE_COMMENT,
    '-j', 'DNAT', '--to-destination', `${spec.hostIp}:${spec.port}`,
  ];
}

/** The rules the chain should hold, in order, as argument lists. */
export function desiredRules(spec: Required<RuleSpec>): string[][] {
  return spec.hostInterfaces.map((pattern) => ruleArgs(spec, pattern));
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
 * The `iptables-restore --noflush` transaction that (re)writes the chain and makes sure PREROUTING jumps
 * to it exactly once. `:CHAIN - [0:0]` creates or flushes only that chain. With the live state given,
 * the jump is inserted only when missing; stray or duplicate jumps from PREROUTING are deleted first
 * and one plain jump is inserted at position 1.
 */
export function renderInstall(spec: Required<RuleSpec>, live?: ChainState): string {
  const lines = ['*nat', `:${spec.chain} - [0:0]`];
  for (const args of desiredRules(spec)) lines.push(`-A ${spec.chain} ${formatArgs(args)}`);
  const jumps = live?.jumps.filter((j) => j.chain === 'PREROUTING') ?? [];
  const keep = jumps.length === 1 && jumps[0]?.plain === true;
  if (!keep) {
    for (const jump of jumps) lines.push(`-D PREROUTING ${jump.spec}`);
    lines.push(`-I PREROUTING 1 -j ${spec.chain}`);
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/**
 * The transaction that removes every jump to the chain (from any nat chain), then flushes and deletes
 * it; null when there is nothing to remove.
 */
export function renderRemove(chain: string, live: ChainState): string | null {
  if (!live.chainPresent && live.jumps.length === 0) return null;
  const lines = ['*nat'];
  for (const jump of live.jumps) lines.push(`-D ${jump.chain} ${jump.spec}`);
  if (live.chainPresent) lines.push(`:${chain} - [0:0]`, `-X ${chain}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
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
 * given /32, the implicit `-m tcp`/`-m udp` and the match-all `-i +` dropped, then sorted.
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
    current.push((flag === '-s' || flag === '-d') && /^\d+\.\d+\.\d+\.\d+$/.test(token) ? `${token}/32` : token);
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

export interface JumpRule {
  /** The chain holding the jump (normally PREROUTING). */
  chain: string;
  /** 1-based position within that chain. */
  position: number;
  /** The rule as printed after `-A CHAIN`, usable after `-D CHAIN`. */
  spec: string;
  /** True for a bare `-j CHAIN` with no other match. */
  plain: boolean;
}

/** What the live nat table holds for the agent's chain. */
export interface ChainState {
  chainPresent: boolean;
  /** The chain's rules as printed by iptables-save (text after `-A CHAIN `). */
  rules: string[];
  /** Every rule in any nat chain that jumps (-j or -g) to the chain. */
  jumps: JumpRule[];
}

/** Extract the chain's state from `iptables-save -t nat` output. */
export function chainState(saveOutput: string, chain: string): ChainState {
  const nat = parseSave(saveOutput).get('nat');
  if (!nat) return { chainPresent: false, rules: [], jumps: [] };
  const jumpRe = new RegExp(`(?:^|\\s)-[jg]\\s+"?${chain.replace(/[-]/g, '\\-')}"?(?:\\s|$)`);
  const positions = new Map<string, number>();
  const rules: string[] = [];
  const jumps: JumpRule[] = [];
  const plain = canonicalRule(['-j', chain]);
  for (const rule of nat.rules) {
    const position = (positions.get(rule.chain) ?? 0) + 1;
    positions.set(rule.chain, position);
    if (rule.chain === chain) rules.push(rule.spec);
    if (!jumpRe.test(rule.spec)) continue;
    const args = tokenize(rule.spec);
    const target = args.findIndex((a, i) => (a === '-j' || a === '-g' || a === '--jump' || a === '--goto') && args[i + 1] === chain);
    if (target < 0) continue;
    jumps.push({ chain: rule.chain, position, spec: rule.spec, plain: canonicalRule(args) === plain });
  }
  return { chainPresent: nat.chains.has(chain), rules, jumps };
}

export interface Comparison {
  inSync: boolean;
  /** Human-readable reasons for drift, empty when in sync. */
  drift: string[];
  /** 1-based positions of the jumps in PREROUTING. */
  jumpPositions: number[];
}

/** Compare the live state with the wanted rules. */
export function compare(spec: Required<RuleSpec>, live: ChainState): Comparison {
  const drift: string[] = [];
  const prerouting = live.jumps.filter((j) => j.chain === 'PREROUTING');
  if (!live.chainPresent) {
    drift.push(`chain ${spec.chain} missing`);
  } else {
    const want = desiredRules(spec).map(canonicalRule);
    const have = live.rules.map((r) => canonicalRule(tokenize(r)));
    if (want.length !== have.length || want.some((w, i) => w !== have[i])) {
      drift.push(`chain ${spec.chain} holds ${have.length} rule(s) that differ from the ${want.length} wanted`);
    }
  }
  if (prerouting.length === 0) drift.push(`PREROUTING does not jump to ${spec.chain}`);
  else if (prerouting.length > 1) drift.push(`PREROUTING jumps to ${spec.chain} ${prerouting.length} times`);
  else if (!prerouting[0]?.plain) drift.push(`PREROUTING jump to ${spec.chain} was modified: ${prerouting[0]?.spec}`);
  return { inSync: drift.length === 0, drift, jumpPositions: prerouting.map((j) => j.position) };
}
