/**
 * The interceptor port: what sends pods' metadata traffic to the agent. Two adapters implement it, the iptables
 * rules (reconciler.ts) and the eBPF socket redirect (ebpf/interceptor.ts); main.ts composes the ones the
 * `--intercept` mode asks for and treats them alike: install once the server listens, re-check on a timer, keep
 * them when the agent stops (pods fail closed), remove them only when asked.
 */
export type { InterceptMode } from '../config.ts';

export interface Interceptor {
  /** 'iptables' or 'ebpf': a metric label and the key in `kiam intercept status`. */
  readonly kind: 'iptables' | 'ebpf';
  /** True while the interception is known to be in place (last install/check succeeded, no remove since). */
  readonly present: boolean;
  install(): Promise<void>;
  /** Compare with what is wanted and repair drift; resolves 'in-sync' or 'repaired', rejects when it cannot. */
  check(): Promise<'in-sync' | 'repaired'>;
  /** Re-check on a timer until stop(); errors are counted and logged, never thrown out of the timer. */
  start(): void;
  stop(): Promise<void>;
  /** Stop, then remove everything of ours (and only ours); false when nothing was there. */
  remove(): Promise<boolean>;
}
