/**
 * Which iptables backend the node uses (nft or legacy), decided as the Kubernetes iptables wrappers do,
 * and a cheap hint when an eBPF dataplane may bypass netfilter altogether.
 */
import { readdirSync } from 'node:fs';
import type { IptablesBackendChoice } from '../config.ts';
import type { CommandRunner } from './exec.ts';

export type BackendName = 'nft' | 'legacy';

export interface Backend {
  name: BackendName;
  /** e.g. iptables-nft-save */
  save: string;
  /** e.g. iptables-nft-restore */
  restore: string;
  /** The IPv6 counterparts on the same backend, e.g. ip6tables-nft-save and ip6tables-nft-restore. */
  save6: string;
  restore6: string;
  /** Why this backend was chosen, for logs and `kiam iptables status`. */
  reason: string;
  /** Set when auto-detection had to guess because one backend's save failed (e.g. no CAP_NET_RAW for legacy). */
  warning?: string;
}

/** Timeout for each save during detection (iptables-nft 1.8.3 could loop forever). */
const DETECT_TIMEOUT_MS = 5000;
const KUBELET_CHAINS = /^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\s/m;

/** The binaries of a backend. ip6tables uses the same backend as iptables: the choice is made once, for both. */
export function backendCommands(name: BackendName, reason: string): Backend {
  return {
    name,
    save: `iptables-${name}-save`,
    restore: `iptables-${name}-restore`,
    save6: `ip6tables-${name}-save`,
    restore6: `ip6tables-${name}-restore`,
    reason,
  };
}

/**
 * Resolve the backend. An explicit choice is taken as is. For auto:
 * 1. KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY in `iptables-nft-save -t mangle` → nft;
 * 2. the same chains in `iptables-legacy-save` (whole output: `-t mangle` would create the legacy table) → legacy;
 * 3. otherwise the backend with more rules wins, a tie goes to nft.
 * A save that fails (binary missing, no CAP_NET_RAW for legacy, …) counts as zero rules, and the result carries a
 * warning saying so; if neither save runs at all, detection fails.
 */
export async function detectBackend(runner: CommandRunner, choice: IptablesBackendChoice): Promise<Backend> {
  if (choice === 'nft' || choice === 'legacy') return backendCommands(choice, `chosen with --iptables-backend=${choice}`);
  if (choice !== 'auto') throw new Error(`unknown iptables backend ${JSON.stringify(choice)}: use auto, nft or legacy`);

  const nftMangle = await runner.run(['iptables-nft-save', '-t', 'mangle'], { timeoutMs: DETECT_TIMEOUT_MS });
  if (nftMangle.code === 0 && KUBELET_CHAINS.test(nftMangle.stdout)) {
    return backendCommands('nft', 'kubelet chains found in iptables-nft-save -t mangle');
  }
  const legacy = await runner.run(['iptables-legacy-save'], { timeoutMs: DETECT_TIMEOUT_MS });
  if (legacy.code === 0 && KUBELET_CHAINS.test(legacy.stdout)) {
    return backendCommands('legacy', 'kubelet chains found in iptables-legacy-save');
  }
  const nft = await runner.run(['iptables-nft-save'], { timeoutMs: DETECT_TIMEOUT_MS });
  if (legacy.code !== 0 && nft.code !== 0) {
    throw new Error(
      `cannot detect the iptables backend: iptables-legacy-save exited ${legacy.code} (${firstLine(legacy.stderr)}), ` +
        `iptables-nft-save exited ${nft.code} (${firstLine(nft.stderr)}); is iptables installed and are we privileged?`,
    );
  }
  const legacyRules = legacy.code === 0 ? countRules(legacy.stdout) : 0;
  const nftRules = nft.code === 0 ? countRules(nft.stdout) : 0;
  const counts = `legacy ${legacyRules} rule(s), nft ${nftRules}`;
  const backend =
    legacyRules > nftRules ? backendCommands('legacy', `more legacy rules (${counts})`) : backendCommands('nft', `nft by rule count (${counts})`);
  const failed = legacy.code !== 0 ? ['iptables-legacy-save', legacy] as const : nft.code !== 0 ? ['iptables-nft-save', nft] as const : undefined;
  if (!failed) return backend;
  return {
    ...backend,
    warning:
      `${failed[0]} failed (exit ${failed[1].code}: ${firstLine(failed[1].stderr)}), so its rules were not counted and ${backend.name} was chosen; ` +
      `if the node uses the other backend, the rules will not apply: give the agent CAP_NET_RAW (legacy needs it) or set --iptables-backend`,
  };
}

/** Rules (lines starting with `-`) in iptables-save output. */
export function countRules(saveOutput: string): number {
  let n = 0;
  for (const line of saveOutput.split('\n')) if (line.startsWith('-')) n++;
  return n;
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] || 'no output';
}

/** Interfaces that eBPF dataplanes create, and the dataplane each names (doctor's dataplane row reads this too). */
export const EBPF_DATAPLANE_INTERFACES: ReadonlyArray<readonly [iface: string, dataplane: string]> = [
  ['cilium_host', 'Cilium eBPF'],
  ['bpfin.cali', 'Calico eBPF'],
  ['bpfnatin', 'Calico eBPF'],
];

/** What each of those interfaces means for the DNAT. */
const BYPASS_HINTS: Array<{ iface: string; warning: string }> = EBPF_DATAPLANE_INTERFACES.map(([iface, dataplane]) => ({
  iface,
  warning:
    dataplane === 'Cilium eBPF'
      ? `Cilium found (${iface}): with eBPF host routing, pod traffic bypasses netfilter and the metadata DNAT never applies; ` +
        'use bpf.hostLegacyRouting=true or check that pods really reach the agent'
      : `Calico eBPF dataplane found (${iface}): pod traffic may bypass iptables nat PREROUTING and the metadata DNAT`,
}));

/**
 * Warnings for dataplanes that may bypass the iptables nat table. Cheap: one directory listing.
 * `listInterfaces` is injectable for tests; by default it reads /sys/class/net (an unreadable
 * directory gives no warnings).
 */
export function netfilterBypassWarnings(listInterfaces: () => string[] = sysClassNet): string[] {
  let names: Set<string>;
  try {
    names = new Set(listInterfaces());
  } catch {
    return [];
  }
  return BYPASS_HINTS.filter((h) => names.has(h.iface)).map((h) => h.warning);
}

function sysClassNet(): string[] {
  return readdirSync('/sys/class/net');
}
