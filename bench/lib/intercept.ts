/**
 * The interception paths the benchmark compares, and the agent / `kiam intercept` flags for each (pure, tested in
 * test/unit/bench-intercept.test.ts):
 * - `iptables`: the nat PREROUTING DNAT on the pods' cali+ interfaces (today's path; conntrack tracks every
 *   connection and rewrites every packet);
 * - `ebpf`: the cgroup connect4/connect6 socket redirect (src/netfilter/ebpf/kiam.bpf.c): the connect() itself is
 *   addressed to HOST_IP:PORT, no kiam rule in netfilter, so the node's conntrack has nothing to do (unless other
 *   nat rules of the node turn it on);
 * - `auto`: both, as `--intercept auto` installs them on a node that supports eBPF: the redirect wins (the DNAT
 *   never matches a rewritten connect) but the DNAT rule keeps conntrack on.
 */

export const PATHS = ['iptables', 'ebpf', 'auto'] as const;
export type InterceptPath = (typeof PATHS)[number];

/** What the run compares by default: today's DNAT and the eBPF redirect. */
export const DEFAULT_PATHS: readonly InterceptPath[] = ['iptables', 'ebpf'];

/** How tables and logs name a path. */
export const PATH_LABEL: Readonly<Record<InterceptPath, string>> = { iptables: 'DNAT', ebpf: 'eBPF', auto: 'auto (eBPF + DNAT rule)' };

/** The bench's pod-facing interfaces (the sandbox names them like Calico's). */
export const HOST_INTERFACE = 'cali+';

/** `--intercept iptables,ebpf` → the paths, in the order given; throws on an unknown or repeated name. */
export function parsePaths(list: string): InterceptPath[] {
  const names = list.split(',').map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) throw new Error(`no path given; choose from ${PATHS.join(', ')}`);
  const out: InterceptPath[] = [];
  for (const n of names) {
    if (!(PATHS as readonly string[]).includes(n)) throw new Error(`unknown path ${JSON.stringify(n)}; choose from ${PATHS.join(', ')}`);
    if (out.includes(n as InterceptPath)) throw new Error(`path ${n} given twice`);
    out.push(n as InterceptPath);
  }
  return out;
}

/** The path loads the eBPF redirect: the run needs the sandbox's child cgroup and bpffs. */
export function usesEbpf(path: InterceptPath): boolean {
  return path !== 'iptables';
}

/** Where the eBPF programs go: the sandbox's child cgroup (never a mount's root) and its private bpffs. */
export interface EbpfPlace {
  cgroupPath: string | undefined;
  bpffsPath: string;
}

/**
 * The interception flags of `kiam agent` and `kiam intercept install|remove|status` for a path (`none`: no
 * interception; the warm section installs it with `kiam intercept install`, switching between two servers).
 */
export function interceptArgs(path: InterceptPath | 'none', place: EbpfPlace): string[] {
  if (path === 'none') return ['--intercept', 'none'];
  const iptables = ['--host-interface', HOST_INTERFACE];
  if (path === 'iptables') return ['--intercept', 'iptables', ...iptables];
  if (!place.cgroupPath) throw new Error(`the ${path} path needs a sandbox with a child cgroup (Sandbox.create({ cgroup: true }))`);
  const ebpf = ['--cgroup-root', place.cgroupPath, '--bpffs', place.bpffsPath];
  return path === 'ebpf' ? ['--intercept', 'ebpf', ...ebpf] : ['--intercept', 'auto', ...iptables, ...ebpf];
}

/** Connects the eBPF program rewrote, from `kiam intercept status --json` (`ebpf.stats`); 0 when it has none. */
export function ebpfRedirects(status: unknown): number {
  const stats = (status as { ebpf?: { stats?: Record<string, unknown> | null } } | null)?.ebpf?.stats;
  if (!stats) return 0;
  return ['redirect4', 'redirect6', 'redirect6Mapped'].reduce((n, k) => n + (Number(stats[k]) || 0), 0);
}
