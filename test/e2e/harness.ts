/**
 * A whole node in a sandbox: the fake metadata service on 169.254.169.254:80 of the node namespace (with the
 * sandbox's `upstreamNetns`, of the metadata namespace behind the node's eth0; on [fd00:ec2::254]:80 as well
 * when the sandbox has that address), a fake STS and a fake Kubernetes API server on its loopback, and the real
 * `kiam agent` (the production bundle) beside them. Shared by the end-to-end tests, the demo and the benchmarks.
 * The test process drives the fakes with real clients (kubectl, curl) run inside the node namespace, never from
 * the root namespace.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Pod, Sandbox, TrackedProcess } from './sandbox.ts';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const NODE_NAME = 'node-1';
export const ACCOUNT = '123456789012';
export const BASE_ARN = `arn:aws:iam::${ACCOUNT}:role/`;
/** The agent's own (static, fake) identity; the fake STS checks SigV4 against it. */
export const AGENT_KEY = { accessKeyId: 'AKIAKIAMAGENTTEST000', secretAccessKey: 'kiam-agent-test-secret-not-real' };
const CURL = '/usr/bin/curl';

export interface Json {
  [key: string]: unknown;
}

export interface PodSpec {
  name: string;
  namespace: string;
  ip: string;
  /** A second pod IP: status.podIPs becomes [{ip}, {ip: ipv6}] (dual stack). */
  ipv6?: string;
  role?: string;
  externalId?: string;
  node?: string;
  hostNetwork?: boolean;
}

export interface StsCall {
  roleArn: string;
  sessionName: string;
  externalId?: string;
  result: string;
  accessKeyId?: string;
  /** Epoch ms when the fake received it. */
  time: number;
}

/**
 * The agent's environment in the sandbox: static keys for its own STS identity (the fake STS checks them), the SDK
 * kept off the instance metadata service and config files, nothing else of this machine's environment.
 */
export function agentEnv(home: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    AWS_ACCESS_KEY_ID: AGENT_KEY.accessKeyId,
    AWS_SECRET_ACCESS_KEY: AGENT_KEY.secretAccessKey,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: '/nonexistent',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
    NODE_OPTIONS: '--disable-warning=NodeVersionSupportWarning',
  };
}

export class Node {
  agent: TrackedProcess | undefined;
  private constructor(
    readonly sb: Sandbox,
    readonly kubeconfig: string,
    readonly stsUrl: string,
    private readonly stsProc: TrackedProcess,
  ) {}

  /** Start the fakes inside the sandbox's node namespace (the metadata service in sb.metadataNs). */
  static async start(sb: Sandbox, options: { stsDelayMs?: number } = {}): Promise<Node> {
    const fake = (file: string, args: string[], ns = sb.nodeNs) =>
      sb.spawn(ns, [process.execPath, '--import', 'tsx', join('test/fakes', file), ...args], { cwd: REPO, logFile: join(sb.tmpDir, `${file}.log`) });
    const urlOf = async (p: TrackedProcess) => (JSON.parse(await p.waitForLine(/^\{"url"/, 20_000)) as { url: string }).url;

    const kubeconfig = join(sb.tmpDir, 'kubeconfig');
    const metadata = fake('metadata.ts', [...sb.metadataAddresses.flatMap((a) => ['--host', a]), '--port', '80'], sb.metadataNs);
    const sts = fake('sts.ts', [
      '--host', '127.0.0.1', '--port', '0',
      '--expect-access-key-id', AGENT_KEY.accessKeyId, '--expect-secret-access-key', AGENT_KEY.secretAccessKey,
      ...(options.stsDelayMs ? ['--delay-ms', String(options.stsDelayMs)] : []),
    ]);
    const kube = fake('kube-apiserver.ts', ['--host', '127.0.0.1', '--port', '0', '--kubeconfig-out', kubeconfig, '--bookmark-interval-ms', '2000']);
    const [, stsUrl] = await Promise.all([urlOf(metadata), urlOf(sts), urlOf(kube)]);
    return new Node(sb, kubeconfig, stsUrl!, sts);
  }

  /**
   * The interception flags for a mode: iptables on the cali+ interfaces (the default, as before), the eBPF socket
   * redirect on the sandbox's own child cgroup and bpffs, or both (auto); with the sandbox's host IPv6 when it has one.
   */
  interceptArgs(mode: 'iptables' | 'ebpf' | 'auto' | 'none' = 'iptables'): string[] {
    const v6 = this.sb.hostIpv6 ? ['--host-ipv6', this.sb.hostIpv6] : [];
    if (mode === 'none') return ['--intercept', 'none'];
    const ebpf = this.sb.cgroupPath ? ['--cgroup-root', this.sb.cgroupPath, '--bpffs', this.sb.bpffsPath] : [];
    const iptables = ['--host-interface', 'cali+'];
    if (mode === 'iptables') return ['--intercept', 'iptables', ...iptables, ...v6];
    if (mode === 'ebpf') return ['--intercept', 'ebpf', ...ebpf, ...v6];
    return ['--intercept', 'auto', ...iptables, ...ebpf, ...v6];
  }

  /**
   * Start `kiam agent` from the production bundle, as `npx kiam` runs it, and wait until it is ready. `intercept`
   * replaces the default interception flags (interceptArgs('iptables')).
   */
  async startAgent(extra: string[] = [], env: NodeJS.ProcessEnv = {}, intercept: string[] = this.interceptArgs('iptables')): Promise<TrackedProcess> {
    const argv = [
      process.execPath, join(REPO, 'bin/kiam.mjs'), 'agent',
      '--node-name', NODE_NAME,
      '--host-ip', this.sb.hostIp,
      '--kubeconfig', this.kubeconfig,
      ...intercept,
      '--role-base-arn', BASE_ARN,
      '--sts-endpoint', this.stsUrl,
      '--region', 'eu-west-1',
      ...extra,
    ];
    const agent = this.sb.spawn(this.sb.nodeNs, argv, {
      cwd: REPO,
      logFile: join(this.sb.tmpDir, 'agent.log'),
      env: { ...agentEnv(this.sb.tmpDir), ...env },
    });
    this.agent = agent;
    await agent.waitForLine((line) => logMsg(line) === 'ready', 30_000);
    return agent;
  }

  /** Wait for a JSON log line of the agent with this message (and fields), from line `from` on. */
  async agentLog(msg: string, fields: Json = {}, timeoutMs = 10_000, from = 0): Promise<Json> {
    const line = await this.agent!.waitForLine((l) => {
      const entry = parse(l);
      return entry?.msg === msg && Object.entries(fields).every(([k, v]) => entry[k] === v);
    }, timeoutMs, from);
    return parse(line)!;
  }

  /** kubectl against the fake API server, run inside the node namespace. */
  async kubectl(args: string[], input?: string): Promise<string> {
    return this.sb.execOrThrow(this.sb.nodeNs, ['kubectl', '--kubeconfig', this.kubeconfig, ...args], { input, env: { PATH: process.env.PATH, HOME: this.sb.tmpDir } });
  }

  async createNamespace(name: string, permitted?: string): Promise<void> {
    const annotations = permitted === undefined ? {} : { 'iam.amazonaws.com/permitted': permitted };
    await this.kubectl(['create', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, annotations } }));
  }

  /** Create the pod object in the API (already Running with its IP, as the kubelet would report it). Returns its uid. */
  async createPod(spec: PodSpec): Promise<string> {
    const annotations: Record<string, string> = {};
    if (spec.role) annotations['iam.amazonaws.com/role'] = spec.role;
    if (spec.externalId) annotations['iam.amazonaws.com/external-id'] = spec.externalId;
    const manifest = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: spec.name, namespace: spec.namespace, annotations },
      spec: { nodeName: spec.node ?? NODE_NAME, hostNetwork: spec.hostNetwork ?? false, containers: [{ name: 'app', image: 'example/app:1' }] },
      status: { phase: 'Running', podIP: spec.ip, podIPs: spec.ipv6 ? [{ ip: spec.ip }, { ip: spec.ipv6 }] : [{ ip: spec.ip }] },
    };
    const out = await this.kubectl(['create', '-f', '-', '-o', 'json'], JSON.stringify(manifest));
    return (JSON.parse(out) as { metadata: { uid: string } }).metadata.uid;
  }

  async deletePod(namespace: string, name: string): Promise<void> {
    await this.kubectl(['delete', 'pod', '-n', namespace, name, '--wait=false']);
  }

  /** The fake STS's call log, read with curl inside the node namespace. */
  async stsCalls(): Promise<StsCall[]> {
    return JSON.parse(await this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--max-time', '5', `${this.stsUrl}/_fake/calls`])) as StsCall[];
  }

  async configureSts(patch: Json): Promise<void> {
    await this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--fail', '--max-time', '5', '-X', 'POST', '-H', 'content-type: application/json', '--data', JSON.stringify(patch), `${this.stsUrl}/_fake/config`]);
  }

  /**
   * What reached the fake upstream metadata service: method, path, headers and the peer address. Asked from the node
   * namespace (whose own connections no interception rewrites), through eth0 with `upstreamNetns`.
   */
  async upstreamRequests(): Promise<{ method: string; path: string; headers: Record<string, string>; remoteAddress: string }[]> {
    return JSON.parse(await this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--max-time', '5', 'http://169.254.169.254/_fake/requests'])) as never;
  }

  get stsProcess(): TrackedProcess {
    return this.stsProc;
  }

  /** The agent's Prometheus text from 127.0.0.1:9620/metrics, read with curl inside the node namespace. */
  async metrics(): Promise<string> {
    return this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--fail', '--max-time', '5', 'http://127.0.0.1:9620/metrics']);
  }

  /** `kiam <args…>` from the production bundle, run inside the node namespace (e.g. `iptables remove`). */
  async kiam(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const r = await this.sb.exec(this.sb.nodeNs, [process.execPath, join(REPO, 'bin/kiam.mjs'), ...args], { env: { PATH: process.env.PATH } });
    return { code: r.code, stdout: r.stdout, stderr: r.stderr };
  }
}

/**
 * A sample's value in Prometheus text (`name{labels} value`); labels must match exactly the ones given
 * (in any order), none given = the unlabelled sample. 0 when the sample is absent (prom-client omits unused series).
 */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',');
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = (m[2] ?? '').split(/,(?=[a-zA-Z_]\w*=")/).filter(Boolean).sort().join(',');
    if (got === want) return Number(m[3]);
  }
  return 0;
}

export function parse(line: string): Json | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    return JSON.parse(line) as Json;
  } catch {
    return undefined;
  }
}

function logMsg(line: string): unknown {
  return parse(line)?.msg;
}

/** A clean environment for a client inside a pod: no credentials, no config, nothing of the test's. */
export function podEnv(sb: Sandbox, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const home = join(sb.tmpDir, 'pod-home');
  return { PATH: '/usr/bin:/bin', HOME: home, AWS_CONFIG_FILE: '/nonexistent', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent', AWS_DEFAULT_REGION: 'eu-west-1', ...extra };
}

export interface HttpAnswer {
  status: number;
  body: string;
  /** curl's exit code: 0, or e.g. 7 when the connection was refused. */
  curlCode: number;
}

/** The metadata service's base URL as a pod dials it: IPv4, IPv6 (fd00:ec2::254) or IPv4-mapped on an IPv6 socket. */
export type MetadataFamily = 'ipv4' | 'ipv6' | 'ipv4-mapped';
export const METADATA_BASE: Record<MetadataFamily, string> = {
  ipv4: 'http://169.254.169.254',
  ipv6: 'http://[fd00:ec2::254]',
  'ipv4-mapped': 'http://[::ffff:169.254.169.254]',
};

/** One HTTP request from inside a pod, with curl. */
export async function podCurl(
  sb: Sandbox,
  pod: Pod,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; family?: MetadataFamily } = {},
): Promise<HttpAnswer> {
  const args = [CURL, '-gsS', '--max-time', '3', '-o', '-', '-w', '\n%{http_code}', '-X', opts.method ?? 'GET'];
  for (const [k, v] of Object.entries(opts.headers ?? {})) args.push('-H', `${k}: ${v}`);
  args.push(`${METADATA_BASE[opts.family ?? 'ipv4']}${path}`);
  const r = await sb.exec(pod.ns, args, { env: podEnv(sb), timeoutMs: 10_000 });
  const cut = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(cut + 1)) || 0, body: r.stdout.slice(0, Math.max(cut, 0)), curlCode: r.code ?? -1 };
}

export interface HttpAnswerWithHeaders extends HttpAnswer {
  /** Response headers, names lower-cased (the last one wins when repeated). */
  headers: Record<string, string>;
}

/** podCurl() that also returns the response headers. */
export async function podHttp(sb: Sandbox, pod: Pod, path: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<HttpAnswerWithHeaders> {
  const args = [CURL, '-sS', '--max-time', '3', '-i', '-o', '-', '-w', '\n%{http_code}', '-X', opts.method ?? 'GET'];
  for (const [k, v] of Object.entries(opts.headers ?? {})) args.push('-H', `${k}: ${v}`);
  args.push(`http://169.254.169.254${path}`);
  const r = await sb.exec(pod.ns, args, { env: podEnv(sb), timeoutMs: 10_000 });
  const cut = r.stdout.lastIndexOf('\n');
  const raw = r.stdout.slice(0, Math.max(cut, 0));
  const split = raw.indexOf('\r\n\r\n');
  const head = split < 0 ? raw : raw.slice(0, split);
  const headers: Record<string, string> = {};
  for (const line of head.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(r.stdout.slice(cut + 1)) || 0, headers, body: split < 0 ? '' : raw.slice(split + 4), curlCode: r.code ?? -1 };
}

/** The IMDSv2 flow with curl: token, role listing, document. */
export async function curlCredentials(sb: Sandbox, pod: Pod, family: MetadataFamily = 'ipv4'): Promise<{ listing: HttpAnswer; document?: Json; token: string }> {
  const tokenAnswer = await podCurl(sb, pod, '/latest/api/token', { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '21600' }, family });
  const token = tokenAnswer.status === 200 ? tokenAnswer.body : '';
  const headers = token ? { 'X-aws-ec2-metadata-token': token } : undefined;
  const listing = await podCurl(sb, pod, '/latest/meta-data/iam/security-credentials/', { headers, family });
  if (listing.status !== 200) return { listing, token };
  const doc = await podCurl(sb, pod, `/latest/meta-data/iam/security-credentials/${listing.body}`, { headers, family });
  return { listing, token, document: doc.status === 200 ? (JSON.parse(doc.body) as Json) : undefined };
}

export type Client = 'curl' | 'aws-cli' | 'botocore' | 'js-sdk';
export const CLIENTS: Client[] = ['curl', 'aws-cli', 'botocore', 'js-sdk'];

/**
 * Credentials as a real client inside the pod sees them: the access key id, or the failure (raw output kept for
 * asserts). With family 'ipv6' the SDKs are told AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6 (they then dial
 * [fd00:ec2::254]) and curl dials that address itself.
 */
export async function clientCredentials(sb: Sandbox, pod: Pod, client: Client, family: 'ipv4' | 'ipv6' = 'ipv4'): Promise<{ accessKeyId?: string; output: string }> {
  const modeEnv: NodeJS.ProcessEnv = family === 'ipv6' ? { AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE: 'IPv6' } : {};
  const run = async (argv: string[], env = podEnv(sb, modeEnv)) => {
    const r = await sb.exec(pod.ns, argv, { env, cwd: REPO, timeoutMs: 30_000 });
    return { code: r.code, output: `${r.stdout}\n${r.stderr}` };
  };
  switch (client) {
    case 'curl': {
      const { document, listing } = await curlCredentials(sb, pod, family);
      return { accessKeyId: document?.AccessKeyId as string | undefined, output: `${listing.status} ${listing.body} ${JSON.stringify(document ?? {})}` };
    }
    case 'aws-cli': {
      const r = await run(['/usr/bin/aws', 'configure', 'export-credentials', '--format', 'process']);
      const m = /"AccessKeyId":\s*"([^"]+)"/.exec(r.output);
      return { accessKeyId: r.code === 0 ? m?.[1] : undefined, output: r.output };
    }
    case 'botocore': {
      const r = await run(['/usr/bin/python3', join(REPO, 'test/e2e/clients/botocore_creds.py')]);
      return { accessKeyId: r.code === 0 ? (parse(r.output.trim())?.accessKeyId as string) : undefined, output: r.output };
    }
    case 'js-sdk': {
      const r = await run([process.execPath, join(REPO, 'test/e2e/clients/js-sdk.mjs')], podEnv(sb, { ...modeEnv, NODE_OPTIONS: '--disable-warning=NodeVersionSupportWarning' }));
      return { accessKeyId: r.code === 0 ? (parse(r.output.trim())?.accessKeyId as string) : undefined, output: r.output };
    }
  }
}

/** Write a file into the sandbox's temp dir (kubeconfigs, scripts) and return its path. */
export function tmpFile(sb: Sandbox, name: string, text: string): string {
  const path = join(sb.tmpDir, name);
  writeFileSync(path, text);
  return path;
}
