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
}

export const realNodeFacts: NodeFacts = {
  mounts: () => parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8')),
  kernelRelease: () => release(),
};

/** --cgroup-root as given, else /sys/fs/cgroup where that is cgroup2 (unified hierarchy), else the fallback mount. */
export function resolveCgroupRoot(given: string | undefined, mounts: readonly MountInfo[]): string {
  if (given) return given;
  return fsTypeAt(mounts, DEFAULT_CGROUP_ROOT) === 'cgroup2' && mounts.some((m) => m.mountPoint === DEFAULT_CGROUP_ROOT) ? DEFAULT_CGROUP_ROOT : FALLBACK_CGROUP_ROOT;
}

/** Everything the socket redirect needs, checked at once (0.25 s: bpftool's feature probe). */
export async function probeSupport(runner: CommandRunner, facts: NodeFacts, paths: { cgroupRoot: string; bpffs: string }): Promise<Support> {
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
  return checkSupport({ kernelRelease: facts.kernelRelease(), mounts: facts.mounts(), ...paths, features, bpftoolError });
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
