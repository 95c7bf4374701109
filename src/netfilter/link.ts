/**
 * The container-credentials addresses (169.254.170.23, fd00:ec2::23) on a dummy link of the agent's own, in its
 * own network namespace (the node's: the agent runs with hostNetwork), as EKS's Pod Identity agent puts them on a
 * host link: a pod's packets to them are routed to the node like any other, and delivered locally to the agent's
 * listener. `ip` is spawned through the CommandRunner (no shell), as iptables and bpftool are.
 *
 *   ip -details -json address show dev kiam-link0     what is there (exit 1: no such link)
 *   ip link add kiam-link0 type dummy                 when missing (type ifb on a kernel built without the dummy
 *                                                     driver: "Unknown device type"; any link with no traffic of its
 *                                                     own holds local addresses as well)
 *   ip link set dev kiam-link0 up                     when down (a down link's addresses are not local)
 *   ip address replace 169.254.170.23/32 dev kiam-link0
 *   ip -6 address replace fd00:ec2::23/128 dev kiam-link0 nodad
 *                                                     each address missing; nodad: usable at once, no duplicate
 *                                                     address detection (RFC 4862 §5.4) holding it tentative
 *
 * Idempotent: ensure() changes only what is missing, and is re-run on the interception's timer (the same
 * --reconcile-interval), so a link or address someone deleted comes back. A link of that name that is not a dummy
 * (or ifb) link is never touched: ensure() fails, naming it. Addresses on the link that are not ours are left alone. The
 * link stays when the agent stops, like the interception: pods get "connection refused" at once rather than a
 * timeout while the agent is away.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Clock } from '../clock.ts';
import { CommandError, runChecked, type CommandRunner } from './exec.ts';
import { PeriodicReconciler } from './interceptor.ts';

export const IP_TIMEOUT_MS = 5_000;

export interface LinkSpec {
  /** The link's name (≤ 15 characters). */
  name: string;
  /** IP literals in canonical form (IPv6 compressed, lower case), each put on the link as a host address. */
  addresses: readonly string[];
}

/** What `ip -details -json address show dev NAME` says. */
export interface LinkState {
  exists: boolean;
  /** linkinfo.info_kind: `dummy` (or `ifb`) for ours; undefined for a plain device (a physical NIC, lo). */
  kind?: string;
  up: boolean;
  /** The link's addresses, canonical (no prefix length). */
  addresses: string[];
}

const MISSING: LinkState = Object.freeze({ exists: false, up: false, addresses: [] }) as LinkState;

/** The argv that reads a link's state. */
export function showArgv(name: string): string[] {
  return ['ip', '-details', '-json', 'address', 'show', 'dev', name];
}

/** Parse `ip -details -json address show dev NAME`'s output (a one-element JSON array). */
export function parseLinkState(json: string): LinkState {
  const parsed = JSON.parse(json) as unknown;
  if (!Array.isArray(parsed)) throw new Error('ip -json address show: not a JSON array');
  const link = parsed[0] as
    | { flags?: unknown; linkinfo?: { info_kind?: unknown } | null; addr_info?: Array<{ local?: unknown } | null> | null }
    | undefined;
  if (link === undefined) return MISSING;
  const flags = Array.isArray(link.flags) ? link.flags : [];
  const kind = typeof link.linkinfo?.info_kind === 'string' ? link.linkinfo.info_kind : undefined;
  const addresses = (link.addr_info ?? []).map((a) => a?.local).filter((a): a is string => typeof a === 'string').map(canonical);
  return { exists: true, ...(kind !== undefined ? { kind } : {}), up: flags.includes('UP'), addresses };
}

/** The kinds of link the agent creates (the first the kernel knows) and manages. */
export const LINK_KINDS: readonly string[] = ['dummy', 'ifb'];

/** `ip link add` for a kind of link. */
export function addArgv(name: string, kind: string): string[] {
  return ['ip', 'link', 'add', name, 'type', kind];
}

/** The commands that make the state match the spec, in order; [] when it does. Throws for a link that is not ours to manage. */
export function linkPlan(spec: LinkSpec, state: LinkState): string[][] {
  if (state.exists && !LINK_KINDS.includes(state.kind ?? '')) {
    throw new Error(`link ${spec.name} exists and is not a dummy link (${state.kind ?? 'a plain device'}): the agent will not put its addresses on it; delete it, or give --container-credentials-link another name (or none)`);
  }
  const out: string[][] = [];
  if (!state.exists) out.push(addArgv(spec.name, 'dummy'));
  if (!state.up) out.push(['ip', 'link', 'set', 'dev', spec.name, 'up']);
  for (const address of spec.addresses) {
    if (state.addresses.includes(canonical(address))) continue;
    out.push(
      address.includes(':')
        ? ['ip', '-6', 'address', 'replace', `${address}/128`, 'dev', spec.name, 'nodad']
        : ['ip', 'address', 'replace', `${address}/32`, 'dev', spec.name],
    );
  }
  return out;
}

/** Whether the IPv6 addresses of the spec can go on a new link: IPv6 is on in the kernel, for all links and new ones. */
export function ipv6Enabled(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): { enabled: boolean; reason?: string } {
  for (const scope of ['all', 'default']) {
    const path = `/proc/sys/net/ipv6/conf/${scope}/disable_ipv6`;
    let value: string;
    try {
      value = read(path).trim();
    } catch {
      return { enabled: false, reason: `${path} cannot be read: the kernel has no IPv6` };
    }
    if (value !== '0') return { enabled: false, reason: `${path} is ${value}` };
  }
  return { enabled: true };
}

export interface LinkManagerDeps {
  runner: CommandRunner;
  clock: Clock;
  logger: Logger;
  /** How often the link is checked and repaired (--reconcile-interval). */
  intervalMs: number;
}

export class LinkManager extends PeriodicReconciler {
  private inPlace = false;
  private lastError: string | undefined;

  constructor(
    readonly spec: LinkSpec,
    private readonly deps: LinkManagerDeps,
  ) {
    super(deps.clock, deps.intervalMs, 'container-credentials link check failed');
  }

  protected get log(): Logger {
    return this.deps.logger;
  }

  /** The last ensure found (or made) the link up with every address. */
  get present(): boolean {
    return this.inPlace;
  }

  /** The last failure's message, cleared by a success. */
  get error(): string | undefined {
    return this.lastError;
  }

  /** Read the link's state. */
  async read(): Promise<LinkState> {
    const argv = showArgv(this.spec.name);
    const result = await this.deps.runner.run(argv, { timeoutMs: IP_TIMEOUT_MS });
    // iproute2: `Device "NAME" does not exist.` on stderr, exit 1.
    if (result.code !== 0 && /does not exist/.test(result.stderr)) return MISSING;
    if (result.code !== 0) throw new CommandError(argv, result);
    return parseLinkState(result.stdout);
  }

  /** Make the link and its addresses be there; resolves with the commands run ([] when nothing was missing). */
  ensure(): Promise<string[][]> {
    return this.exclusive(async () => {
      try {
        const plan = linkPlan(this.spec, await this.read());
        for (let i = 0; i < plan.length; i++) plan[i] = await this.run(plan[i]!);
        this.inPlace = true;
        this.lastError = undefined;
        return plan;
      } catch (err) {
        this.inPlace = false;
        this.lastError = err instanceof Error ? err.message : String(err);
        throw err;
      }
    });
  }

  /** Run one command; an `ip link add … type dummy` the kernel cannot do is done with the next kind. Resolves with the argv that ran. */
  private async run(argv: string[]): Promise<string[]> {
    const dummy = addArgv(this.spec.name, 'dummy');
    if (argv.join(' ') !== dummy.join(' ')) {
      await runChecked(this.deps.runner, argv, { timeoutMs: IP_TIMEOUT_MS });
      return argv;
    }
    for (const kind of LINK_KINDS) {
      const add = addArgv(this.spec.name, kind);
      const result = await this.deps.runner.run(add, { timeoutMs: IP_TIMEOUT_MS });
      if (result.code === 0) return add;
      // iproute2 says "Error: Unknown device type." when the kernel has no driver for it (CONFIG_DUMMY=n).
      const unknown = /Unknown device type/i.test(result.stderr);
      if (unknown && kind === LINK_KINDS.at(-1)) {
        throw new Error(`${new CommandError(add, result).message}: this kernel has neither the dummy nor the ifb link driver (CONFIG_DUMMY, CONFIG_IFB); put the container-credentials addresses on a link yourself and run with --container-credentials-link none`);
      }
      if (!unknown) throw new CommandError(add, result);
      this.deps.logger.info({ link: this.spec.name, kind }, `the kernel has no ${kind} link driver: trying the next kind`);
    }
    throw new Error('unreachable');
  }

  /** The timer's check: ensure(), logging a repair at warn (someone deleted the link or an address). */
  async check(): Promise<'in-sync' | 'repaired'> {
    const plan = await this.ensure();
    if (plan.length === 0) return 'in-sync';
    this.deps.logger.warn({ link: this.spec.name, ran: plan.map((argv) => argv.join(' ')) }, 'container-credentials link repaired');
    return 'repaired';
  }
}

function canonical(ip: string): string {
  if (!ip.includes(':')) return ip;
  try {
    return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return ip;
  }
}
