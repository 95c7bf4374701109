/**
 * The node side of the eBPF checks and of `kiam init`: what is mounted where, the kernel's release and features,
 * mounting bpffs and cgroup2 where they are missing. Reads /proc/self/mountinfo; runs bpftool and mount through the
 * CommandRunner.
 */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import type { CommandRunner } from '../exec.ts';
import { runChecked } from '../exec.ts';
import { checkSupport, fsTypeAt, parseMountInfo, type MountInfo, type Support } from './plan.ts';

/** Where `kiam init` mounts cgroup2 on a node whose /sys/fs/cgroup is cgroup v1 or hybrid (as Cilium does under /run). */
export const FALLBACK_CGROUP_ROOT = '/run/kiam/cgroupv2';
export const DEFAULT_CGROUP_ROOT = '/sys/fs/cgroup';
const TIMEOUT_MS = 15_000;

export interface NodeFacts {
  mounts: () => MountInfo[];
  kernelRelease: () => string;
  /** Effective capabilities (CapEff of /proc/self/status); undefined when unknown. */
  capEff?: () => bigint | undefined;
}

export const realNodeFacts: NodeFacts = {
  mounts: () => parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8')),
  kernelRelease: () => release(),
  capEff: () => parseCapEff(readFileSync('/proc/self/status', 'utf8')),
};

/** CapEff from /proc/PID/status (proc(5)): a hexadecimal mask. */
export function parseCapEff(status: string): bigint | undefined {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  return m?.[1] ? BigInt(`0x${m[1]}`) : undefined;
}

/** --cgroup-root as given, else /sys/fs/cgroup where that is cgroup2 (unified hierarchy), else the fallback mount. */
export function resolveCgroupRoot(given: string | undefined, mounts: readonly MountInfo[]): string {
  if (given) return given;
  return fsTypeAt(mounts, DEFAULT_CGROUP_ROOT) === 'cgroup2' && mounts.some((m) => m.mountPoint === DEFAULT_CGROUP_ROOT) ? DEFAULT_CGROUP_ROOT : FALLBACK_CGROUP_ROOT;
}

/**
 * Everything the socket redirect needs, checked at once. With `features` (kiam init, doctor: 0.25 s), bpftool's
 * feature probe, which needs CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; without it (the agent, which
 * keeps fewer capabilities) only that bpftool runs, and loading the object is the rest of the test.
 */
export async function probeSupport(
  runner: CommandRunner,
  facts: NodeFacts,
  paths: { cgroupRoot: string; bpffs: string },
  options: { features?: boolean } = {},
): Promise<Support> {
  const capEff = facts.capEff?.();
  const base = { kernelRelease: facts.kernelRelease(), mounts: facts.mounts(), ...paths, ...(capEff === undefined ? {} : { capEff }) };
  if (options.features === false) {
    const version = await runner.run(['bpftool', 'version'], { timeoutMs: TIMEOUT_MS });
    const bpftoolError = version.code === 0 ? undefined : version.code === 127 ? 'bpftool is not installed' : `bpftool version exited ${version.code}`;
    return checkSupport({ ...base, features: 'not-probed', ...(bpftoolError ? { bpftoolError } : {}) });
  }
  const probe = await runner.run(['bpftool', '-j', 'feature', 'probe', 'kernel'], { timeoutMs: TIMEOUT_MS });
  let features: unknown;
  let bpftoolError: string | undefined;
  if (probe.code === 0) {
    try {
      features = JSON.parse(probe.stdout);
    } catch {
      bpftoolError = 'bpftool feature probe printed no JSON';
    }
  } else {
    bpftoolError = probe.code === 127 ? 'bpftool is not installed' : `bpftool feature probe exited ${probe.code}: ${probe.stderr.trim().split('\n')[0] ?? ''}`;
  }
  return checkSupport({ ...base, features, ...(bpftoolError ? { bpftoolError } : {}) });
}

export interface MountResult {
  path: string;
  fsType: 'bpf' | 'cgroup2';
  /** false: it was already mounted. */
  mounted: boolean;
}

/** Mount `fsType` at `path` unless it is already there (idempotent, as `kiam init` must be). */
export async function ensureMount(runner: CommandRunner, facts: NodeFacts, path: string, fsType: 'bpf' | 'cgroup2'): Promise<MountResult> {
  const mounts = facts.mounts();
  if (mounts.some((m) => m.mountPoint === path.replace(/\/+$/, '') && m.fsType === fsType)) return { path, fsType, mounted: false };
  if (fsType === 'cgroup2' && fsTypeAt(mounts, path) === 'cgroup2') return { path, fsType, mounted: false };
  await runChecked(runner, ['mkdir', '-p', path], { timeoutMs: TIMEOUT_MS });
  await runChecked(runner, ['mount', '-t', fsType, fsType === 'bpf' ? 'bpf' : 'none', path], { timeoutMs: TIMEOUT_MS });
  return { path, fsType, mounted: true };
}
