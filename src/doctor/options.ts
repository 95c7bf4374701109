/**
 * `kiam doctor` flags → one validated DoctorOptions (every problem at once, as a ConfigError naming the flag).
 */
import { ConfigError, DEFAULTS, interfacePatternProblem, parseDuration, pathProblem, type IptablesBackendChoice } from '../config.ts';

export interface DoctorOptions {
  /** The running agent's metrics port on 127.0.0.1 (/debug/state). */
  metricsPort: number;
  /** Patterns to check against this node's interfaces; undefined: the ones the running agent reports. */
  hostInterfaces?: string[];
  /** undefined: the backend the running agent uses, else auto-detection. */
  iptablesBackend?: IptablesBackendChoice;
  /** undefined: the kubeconfig the running agent uses, else in-cluster. */
  kubeconfig?: string;
  /** cgroup v2 directory to read the eBPF programs from; undefined: the running agent's, else the agent's default. */
  cgroupRoot?: string;
  /** bpffs holding the eBPF pins; undefined: the running agent's, else /sys/fs/bpf. */
  bpffs?: string;
  metadataEndpoint: string;
  json: boolean;
  /** Budget of each network check. */
  timeoutMs: number;
}

export interface RawDoctorOptions {
  metricsPort?: string;
  hostInterface?: string[];
  iptablesBackend?: string;
  kubeconfig?: string;
  cgroupRoot?: string;
  bpffs?: string;
  metadataEndpoint?: string;
  json?: boolean;
  timeout?: string;
}

export const DOCTOR_DEFAULTS = { metricsPort: DEFAULTS.metricsPort, metadataEndpoint: DEFAULTS.metadataEndpoint, timeout: '3s' } as const;

export function parseDoctorOptions(raw: RawDoctorOptions): DoctorOptions {
  const problems: string[] = [];
  const portText = raw.metricsPort ?? DOCTOR_DEFAULTS.metricsPort;
  const metricsPort = Number(portText);
  if (!/^\d+$/.test(portText) || metricsPort < 1 || metricsPort > 65535) problems.push(`--metrics-port: "${portText}" is not a port number (1-65535)`);

  for (const pattern of raw.hostInterface ?? []) {
    const problem = interfacePatternProblem(pattern);
    if (problem) problems.push(`--host-interface: ${problem}`);
  }
  const backend = raw.iptablesBackend;
  if (backend !== undefined && backend !== 'auto' && backend !== 'nft' && backend !== 'legacy') {
    problems.push(`--iptables-backend: "${backend}" is not one of auto, nft, legacy`);
  }
  if (raw.kubeconfig === '') problems.push('--kubeconfig must not be empty');
  const cgroupProblem = raw.cgroupRoot === undefined ? undefined : pathProblem('--cgroup-root', raw.cgroupRoot, true);
  if (cgroupProblem) problems.push(cgroupProblem);
  const bpffsProblem = raw.bpffs === undefined ? undefined : pathProblem('--bpffs', raw.bpffs, false);
  if (bpffsProblem) problems.push(bpffsProblem);

  const endpointText = raw.metadataEndpoint ?? DOCTOR_DEFAULTS.metadataEndpoint;
  let metadataEndpoint = endpointText;
  try {
    const url = new URL(endpointText.replace(/\/+$/, ''));
    if (url.protocol !== 'http:' || url.pathname !== '/' || url.search) throw new Error('not a plain http base URL');
    metadataEndpoint = url.origin;
  } catch {
    problems.push(`--metadata-endpoint: "${endpointText}" must be an http:// base URL such as http://169.254.169.254`);
  }

  const timeoutText = raw.timeout ?? DOCTOR_DEFAULTS.timeout;
  const timeoutMs = parseDuration(timeoutText);
  if (!(timeoutMs >= 100 && timeoutMs <= 60_000)) problems.push(`--timeout: "${timeoutText}" must be a duration between 100ms and 60s`);

  if (problems.length > 0) throw new ConfigError(problems);
  return {
    metricsPort,
    ...(raw.hostInterface && raw.hostInterface.length > 0 ? { hostInterfaces: [...raw.hostInterface] } : {}),
    ...(backend !== undefined ? { iptablesBackend: backend as IptablesBackendChoice } : {}),
    ...(raw.kubeconfig !== undefined ? { kubeconfig: raw.kubeconfig } : {}),
    ...(raw.cgroupRoot !== undefined ? { cgroupRoot: raw.cgroupRoot } : {}),
    ...(raw.bpffs !== undefined ? { bpffs: raw.bpffs } : {}),
    metadataEndpoint,
    json: Boolean(raw.json),
    timeoutMs,
  };
}
