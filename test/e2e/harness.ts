/**
 * A whole node in a sandbox: the fake metadata service on 169.254.169.254:80 of the node namespace (with the
 * sandbox's `upstreamNetns`, of the metadata namespace behind the node's eth0; on [fd00:ec2::254]:80 as well
 * when the sandbox has that address), a fake STS and a fake Kubernetes API server on its loopback, and the real
 * `kiam agent` (the production bundle) beside them. Shared by the end-to-end tests, the demo and the benchmarks.
 * The test process drives the fakes with real clients (kubectl, curl) run inside the node namespace, never from
 * the root namespace.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IssueTokenOptions } from '../fakes/kube-apiserver.ts';
import { CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6, type Pod, type Sandbox, type TrackedProcess } from './sandbox.ts';

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
  /** spec.serviceAccountName (default: the API's, `default`). */
  serviceAccount?: string;
  /**
   * Wire the pod to the container-credentials endpoint as the kiam webhook does: the projected token volume
   * (audience TOKEN_AUDIENCE) mounted at TOKEN_DIR and the two environment variables, in its container.
   */
  tokenVolume?: 'ipv4' | 'ipv6';
}

/** Where the kiam webhook mounts the pod's projected service-account token (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE). */
export const TOKEN_DIR = '/var/run/secrets/kiam/serviceaccount';
export const TOKEN_PATH = `${TOKEN_DIR}/token`;
/** The agent's default --token-audience. */
export const TOKEN_AUDIENCE = 'kiam';
/** The container-credentials endpoint as pods are told to use it (AWS_CONTAINER_CREDENTIALS_FULL_URI). */
export const CONTAINER_CREDENTIALS_URI = {
  ipv4: 'http://169.254.170.23/v1/credentials',
  ipv6: 'http://[fd00:ec2::23]/v1/credentials',
} as const;

/** A pod that runs in the node's own network namespace (spec.hostNetwork: its pod IP is the node's). */
export interface HostNetworkPod {
  readonly name: string;
  readonly namespace: string;
  /** The node namespace: clients of this "pod" run there. */
  readonly ns: string;
  readonly ip: string;
  readonly uid: string;
}

/** A projected token issued for a pod, and the file it was written to (read by clients as the kubelet's mount). */
export interface ProjectedToken {
  token: string;
  file: string;
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
  /** The link the agent puts the container-credentials addresses on (containerCredentialsArgs()); undefined: the node's lo. */
  containerCredentialsLink: string | undefined;
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
   * The flags that turn the container-credentials endpoint on (issue 10), on both of its addresses when the sandbox
   * has IPv6 (otherwise the agent finds IPv6 disabled and skips fd00:ec2::23): the agent makes its own dummy link
   * `kiam-link0` with them. On a kernel without dummy links (CONFIG_DUMMY unset) the sandbox puts them on the node's
   * lo itself and the agent gets `--container-credentials-link none` (the addresses managed elsewhere).
   */
  async containerCredentialsArgs(): Promise<string[]> {
    if (await this.sb.canCreateAgentLink()) {
      this.containerCredentialsLink = 'kiam-link0';
      return ['--container-credentials'];
    }
    this.containerCredentialsLink = undefined;
    await this.sb.addNodeAddresses(this.sb.hostIpv6 ? [CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6] : [CONTAINER_CREDENTIALS_IP]);
    return ['--container-credentials', '--container-credentials-link', 'none'];
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
    const container: Json = { name: 'app', image: 'example/app:1' };
    const wiring: Json = {};
    if (spec.tokenVolume) {
      // What the webhook adds (issue 10): the two variables, the read-only mount and the projected volume.
      container.env = [
        { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: CONTAINER_CREDENTIALS_URI[spec.tokenVolume] },
        { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: TOKEN_PATH },
      ];
      container.volumeMounts = [{ name: 'kiam-token', mountPath: TOKEN_DIR, readOnly: true }];
      wiring.volumes = [
        { name: 'kiam-token', projected: { sources: [{ serviceAccountToken: { audience: TOKEN_AUDIENCE, expirationSeconds: 86400, path: 'token' } }] } },
      ];
    }
    const manifest = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: spec.name, namespace: spec.namespace, annotations },
      spec: {
        nodeName: spec.node ?? NODE_NAME,
        hostNetwork: spec.hostNetwork ?? false,
        ...(spec.serviceAccount ? { serviceAccountName: spec.serviceAccount } : {}),
        containers: [container],
        ...wiring,
      },
      status: { phase: 'Running', podIP: spec.ip, podIPs: spec.ipv6 ? [{ ip: spec.ip }, { ip: spec.ipv6 }] : [{ ip: spec.ip }] },
    };
    const out = await this.kubectl(['create', '-f', '-', '-o', 'json'], JSON.stringify(manifest));
    return (JSON.parse(out) as { metadata: { uid: string } }).metadata.uid;
  }

  async deletePod(namespace: string, name: string): Promise<void> {
    await this.kubectl(['delete', 'pod', '-n', namespace, name, '--wait=false']);
  }

  /**
   * A pod of this node in the node's own network namespace (spec.hostNetwork, the node's IPs as its pod IPs), e.g. a
   * system agent: run its clients with tokenClientCredentials(sb, pod, …) / containerCurl(sb, pod, …).
   */
  async addHostNetworkPod(spec: Omit<PodSpec, 'ip' | 'ipv6' | 'hostNetwork' | 'node'>): Promise<HostNetworkPod> {
    const uid = await this.createPod({ ...spec, ip: this.sb.hostIp, ...(this.sb.hostIpv6 ? { ipv6: this.sb.hostIpv6 } : {}), hostNetwork: true });
    return Object.freeze({ name: spec.name, namespace: spec.namespace, ns: this.sb.nodeNs, ip: this.sb.hostIp, uid });
  }

  /** A ServiceAccount (annotations e.g. iam.amazonaws.com/role). Returns its uid. */
  async createServiceAccount(namespace: string, name: string, annotations: Record<string, string> = {}): Promise<string> {
    const manifest = { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace, annotations } };
    const out = await this.kubectl(['create', '-f', '-', '-o', 'json'], JSON.stringify(manifest));
    return (JSON.parse(out) as { metadata: { uid: string } }).metadata.uid;
  }

  /**
   * A service-account token signed by the fake API server (POST /_fake/tokens, as the admin client), bound to a
   * pod when `pod` is given, as the kubelet's projected tokens are. Default audience: TOKEN_AUDIENCE.
   */
  async issueToken(options: IssueTokenOptions): Promise<string> {
    const out = await this.kubectl(['create', '--raw', '/_fake/tokens', '-f', '-'], JSON.stringify({ audience: TOKEN_AUDIENCE, ...options }));
    const { token } = JSON.parse(out) as { token?: unknown };
    if (typeof token !== 'string' || token.split('.').length !== 3) throw new Error(`the fake API server issued no token: ${out.slice(0, 200)}`);
    return token;
  }

  /**
   * The kubelet's part: a token for the pod `namespace/pod` (options as issueToken) written where its containers
   * would read it, `<tmpDir>/pods/<owner>/var/run/secrets/kiam/serviceaccount/token` (owner: the sandbox pod's
   * name, default the pod's own name), without a trailing newline as the kubelet writes it.
   */
  async projectToken(namespace: string, pod: string, options: Omit<IssueTokenOptions, 'namespace' | 'pod'> & { owner?: string } = {}): Promise<ProjectedToken> {
    const { owner = pod, ...rest } = options;
    const token = await this.issueToken({ ...rest, namespace, pod });
    return { token, file: this.sb.podFile(owner, TOKEN_PATH, token) };
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
  return parseCurlI(r.stdout, r.code);
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

// ---- the container-credentials endpoint (issue 10) -----------------------------------------------------------

/**
 * The Python whose botocore and AWS CLI (v1) read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE and accept 169.254.170.23:
 * Debian's /usr/bin/aws (2.9) and python3-botocore (1.29) predate both. Override with KIAM_E2E_PYTHON (its `aws`
 * must sit beside it).
 */
export const TOKEN_PYTHON = process.env.KIAM_E2E_PYTHON ?? '/root/.pyenv/versions/3.11.7/bin/python3';
export const TOKEN_AWS_CLI = join(dirname(TOKEN_PYTHON), 'aws');

/** What TOKEN_PYTHON lacks for the token-file clients (empty: ready); checked by feature, not by version number. */
export function tokenClientProblems(): string[] {
  const probe = [
    'import botocore, awscli',
    'from botocore.credentials import ContainerProvider',
    'from botocore.utils import ContainerMetadataFetcher as F',
    "assert getattr(ContainerProvider, 'ENV_VAR_AUTH_TOKEN_FILE', None) == 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', 'botocore ' + botocore.__version__ + ' has no token-file support'",
    "assert '169.254.170.23' in F._ALLOWED_HOSTS and 'fd00:ec2::23' in F._ALLOWED_HOSTS, 'botocore ' + botocore.__version__ + ' does not accept 169.254.170.23'",
  ].join('\n');
  const r = spawnSync(TOKEN_PYTHON, ['-c', probe], { encoding: 'utf8', timeout: 30_000, env: { PATH: '/usr/bin:/bin' } });
  const problems: string[] = [];
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr.trim().split('\n').at(-1) ?? `exit ${r.status}`);
    problems.push(`${TOKEN_PYTHON} with botocore (token-file support) and awscli: ${why}`);
  }
  const cli = spawnSync(TOKEN_AWS_CLI, ['--version'], { encoding: 'utf8', timeout: 30_000, env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent' } });
  if (cli.error || cli.status !== 0) problems.push(`${TOKEN_AWS_CLI}: ${cli.error?.message ?? cli.stderr.trim()}`);
  return problems;
}

/** Where a token client runs: a sandbox pod, or a hostNetwork pod (the node's namespace). */
export type TokenClientPlace = Pick<Pod, 'ns'> | HostNetworkPod;

/**
 * A pod's environment as the webhook leaves it: podEnv() plus AWS_CONTAINER_CREDENTIALS_FULL_URI and (when a token
 * file is given) AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, with the instance metadata service off.
 */
export function tokenEnv(sb: Sandbox, tokenFile: string | undefined, family: 'ipv4' | 'ipv6' = 'ipv4', extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return podEnv(sb, {
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONTAINER_CREDENTIALS_FULL_URI: CONTAINER_CREDENTIALS_URI[family],
    ...(tokenFile === undefined ? {} : { AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: tokenFile }),
    ...extra,
  });
}

/**
 * One request to the container-credentials endpoint with curl, from a pod: `authorization` is the header's value
 * as sent (none: no header). Status, headers (lower-cased names) and body.
 */
export async function containerCurl(
  sb: Sandbox,
  place: TokenClientPlace,
  opts: { authorization?: string; family?: 'ipv4' | 'ipv6'; method?: string; path?: string } = {},
): Promise<HttpAnswerWithHeaders> {
  const url = new URL(CONTAINER_CREDENTIALS_URI[opts.family ?? 'ipv4']);
  if (opts.path !== undefined) url.pathname = opts.path;
  const args = [CURL, '-gsS', '--max-time', '3', '-i', '-o', '-', '-w', '\n%{http_code}', '-X', opts.method ?? 'GET'];
  if (opts.authorization !== undefined) args.push('-H', `Authorization: ${opts.authorization}`);
  args.push(url.href);
  const r = await sb.exec(place.ns, args, { env: podEnv(sb), timeoutMs: 10_000 });
  return parseCurlI(r.stdout, r.code);
}

function parseCurlI(stdout: string, code: number | null): HttpAnswerWithHeaders {
  const cut = stdout.lastIndexOf('\n');
  const raw = stdout.slice(0, Math.max(cut, 0));
  const split = raw.indexOf('\r\n\r\n');
  const head = split < 0 ? raw : raw.slice(0, split);
  const headers: Record<string, string> = {};
  for (const line of head.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(stdout.slice(cut + 1)) || 0, headers, body: split < 0 ? '' : raw.slice(split + 4), curlCode: code ?? -1 };
}

export type TokenClient = 'curl' | 'aws-cli' | 'botocore' | 'js-sdk' | 'js-sdk-chain';
export const TOKEN_CLIENTS: TokenClient[] = ['curl', 'aws-cli', 'botocore', 'js-sdk', 'js-sdk-chain'];

/**
 * Credentials as a real client in the pod gets them from the container-credentials endpoint, configured by the
 * environment only (tokenEnv: the two variables; tokenFile undefined = no token file variable at all):
 * - curl: the shell line AWS documents for Pod Identity, `curl -H "Authorization: $(cat $TOKEN_FILE)" $FULL_URI`;
 * - aws-cli: the AWS CLI (v1, TOKEN_AWS_CLI) signs `sts get-caller-identity` with what its credential chain found
 *   (sent, with --debug and one attempt, to a closed port on the pod's loopback: the access key id is read from the
 *   signed request's `Authorization: … Credential=<key id>/…`; this CLI has no `configure export-credentials`);
 * - botocore (TOKEN_PYTHON): the default chain, which must report the `container-role` provider;
 * - js-sdk / js-sdk-chain: the JS SDK v3's fromHttp / default provider chain, no retries.
 * Returns the access key id, or the failure (raw output kept for asserts).
 */
export async function tokenClientCredentials(
  sb: Sandbox,
  place: TokenClientPlace,
  client: TokenClient,
  opts: { tokenFile?: string; family?: 'ipv4' | 'ipv6' } = {},
): Promise<{ accessKeyId?: string; output: string }> {
  const env = tokenEnv(sb, opts.tokenFile, opts.family);
  const run = async (argv: string[], extra: NodeJS.ProcessEnv = {}) => {
    const r = await sb.exec(place.ns, argv, { env: { ...env, ...extra }, cwd: REPO, timeoutMs: 30_000 });
    // The clients print one JSON line on stdout; warnings and errors go to stderr.
    return { code: r.code, json: r.code === 0 ? parse(r.stdout.trim()) : undefined, output: `${r.stdout}\n${r.stderr}` };
  };
  switch (client) {
    case 'curl': {
      const script = 'exec curl -gsS --fail-with-body --max-time 3 -H "Authorization: $(cat "$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")" "$AWS_CONTAINER_CREDENTIALS_FULL_URI"';
      const r = await run(['/bin/sh', '-c', script]);
      return { accessKeyId: typeof r.json?.AccessKeyId === 'string' ? r.json.AccessKeyId : undefined, output: r.output };
    }
    case 'aws-cli': {
      const r = await run([TOKEN_AWS_CLI, 'sts', 'get-caller-identity', '--endpoint-url', 'http://127.0.0.1:9', '--debug'], { AWS_MAX_ATTEMPTS: '1' });
      const m = /Credential=([A-Z0-9]{16,128})\//.exec(r.output);
      return { accessKeyId: m?.[1], output: r.output };
    }
    case 'botocore': {
      const r = await run([TOKEN_PYTHON, join(REPO, 'test/e2e/clients/botocore_creds.py')]);
      return { accessKeyId: r.json?.method === 'container-role' ? (r.json.accessKeyId as string) : undefined, output: r.output };
    }
    case 'js-sdk':
    case 'js-sdk-chain': {
      const r = await run([process.execPath, join(REPO, 'test/e2e/clients/js-container.mjs'), client === 'js-sdk' ? 'http' : 'chain'], {
        NODE_OPTIONS: '--disable-warning=NodeVersionSupportWarning',
      });
      return { accessKeyId: r.json?.accessKeyId as string | undefined, output: r.output };
    }
  }
}

/** Write a file into the sandbox's temp dir (kubeconfigs, scripts) and return its path. */
export function tmpFile(sb: Sandbox, name: string, text: string): string {
  const path = join(sb.tmpDir, name);
  writeFileSync(path, text);
  return path;
}
