/**
 * The benchmark's node: a sandbox node namespace with the same fakes as test/e2e/harness.ts (metadata service on
 * 169.254.169.254:80, the SigV4-checking fake STS) but bench/cluster.ts as the API server (bulk pods, per-client
 * counts), the agent started with the production command (`node <Dockerfile flags> bin/kiam.mjs agent …` → dist/kiam.mjs) and
 * readiness taken from /readyz (so it works at any log level), and pod namespaces with many source IPs. The
 * interception is one of the paths of bench/lib/intercept.ts: the DNAT, or the eBPF redirect attached to the
 * sandbox's child cgroup (which holds every process the sandbox starts: generators, pods, servers).
 */
import { request } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENT_KEY, agentEnv, BASE_ARN, NODE_NAME, REPO, metricValue, podEnv, type StsCall } from '../test/e2e/harness.ts';
import { findBinary, type Pod, type Sandbox, type TrackedProcess } from '../test/e2e/sandbox.ts';
import type { ClusterStats } from './cluster.ts';
import { ebpfRedirects, interceptArgs, type InterceptPath } from './lib/intercept.ts';
import type { BenchPod } from './lib/pods.ts';
import { AGENT_TOKEN_ARGS, CONTAINER_CREDENTIALS, TOKEN_AUDIENCE, TOKEN_EXPIRATION_S } from './lib/token-path.ts';
import { runtime } from './runtime.ts';

const CURL = '/usr/bin/curl';
export const AGENT_PORT = 8181;
export const BASELINE_PORT = 8182;
export { NODE_NAME };

export class BenchNode {
  agent: TrackedProcess | undefined;
  private agentSeq = 0;
  /** The interception in place (installed by an agent or by redirect(); both stay when the agent stops). */
  private installed: { path: InterceptPath; port: number } | undefined;

  private constructor(
    readonly sb: Sandbox,
    readonly stsUrl: string,
    readonly controlPath: string,
  ) {}

  static async start(sb: Sandbox): Promise<BenchNode> {
    const fake = (file: string, args: string[]) =>
      sb.spawn(sb.nodeNs, [process.execPath, '--import', 'tsx', file, ...args], { cwd: REPO, logFile: join(sb.tmpDir, `${file.replace(/\W/g, '_')}.log`) });
    const announced = async (p: TrackedProcess) => JSON.parse(await p.waitForLine(/^\{"url"/, 30_000)) as { url: string };
    const controlPath = join(sb.tmpDir, 'cluster.sock');
    const metadata = fake('test/fakes/metadata.ts', ['--host', '169.254.169.254', '--port', '80']);
    const sts = fake('test/fakes/sts.ts', [
      '--host', '127.0.0.1', '--port', '0',
      '--expect-access-key-id', AGENT_KEY.accessKeyId, '--expect-secret-access-key', AGENT_KEY.secretAccessKey,
    ]);
    // Bookmarks every 10 s keep client-node's watches (aborted after 30 s of silence) alive without churn of their own.
    const cluster = fake('bench/cluster.ts', ['--host', '127.0.0.1', '--port', '0', '--control', controlPath, '--bookmark-interval-ms', '10000']);
    const [, s] = await Promise.all([announced(metadata), announced(sts), announced(cluster)]);
    return new BenchNode(sb, s.url, controlPath);
  }

  /** A call to bench/cluster.ts's control socket (a Unix socket: no network namespace in the way). */
  control<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request({ socketPath: this.controlPath, method, path, headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {} }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) reject(new Error(`cluster control ${method} ${path}: ${res.statusCode} ${text}`));
          else resolve(JSON.parse(text) as T);
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(payload);
    });
  }

  createNamespaces(names: string[]): Promise<unknown> {
    return this.control('POST', '/namespaces', names.map((name) => ({ name, annotations: { 'iam.amazonaws.com/permitted': '.*' } })));
  }

  async createPods(pods: BenchPod[]): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < pods.length; i += 5_000) out.push(...(await this.control<{ uids: string[] }>('POST', '/pods', pods.slice(i, i + 5_000))).uids);
    return out;
  }

  async deletePods(pods: { namespace: string; name: string }[]): Promise<void> {
    if (pods.length) await this.control('POST', '/pods/delete', pods.map(({ namespace, name }) => ({ namespace, name })));
  }

  patchPods(items: { namespace: string; name: string; patch: unknown }[]): Promise<unknown> {
    return this.control('POST', '/pods/patch', items);
  }

  stats(): Promise<ClusterStats> {
    return this.control('GET', '/stats');
  }

  /** Service-account tokens (audience `kiam`, 24 h) bound to these pods, as the kubelet gets them for a projected volume. */
  async issueTokens(pods: { namespace: string; name: string }[]): Promise<string[]> {
    if (pods.length === 0) return [];
    const body = pods.map(({ namespace, name }) => ({ namespace, pod: name, audience: TOKEN_AUDIENCE, expirationSeconds: TOKEN_EXPIRATION_S }));
    return (await this.control<{ tokens: string[] }>('POST', '/tokens', body)).tokens;
  }

  /**
   * The agent flags of the token path (AGENT_TOKEN_ARGS): the agent makes its dummy link `kiam-link0` with the
   * address, as in production; on a kernel without dummy links (CONFIG_DUMMY unset) the address goes on the node
   * namespace's lo instead and the agent gets `--container-credentials-link none` (the address managed elsewhere).
   */
  async tokenArgs(): Promise<string[]> {
    if (await this.sb.canCreateAgentLink()) return [...AGENT_TOKEN_ARGS];
    await this.sb.addNodeAddresses([CONTAINER_CREDENTIALS.host]);
    return [...AGENT_TOKEN_ARGS, '--container-credentials-link', 'none'];
  }

  /** TokenReviews the API server has answered so far (any client). */
  async tokenReviews(): Promise<number> {
    return (await this.control<{ count: number }>('GET', '/token-reviews')).count;
  }

  /**
   * Starts `kiam agent` as production does (bin/kiam.mjs → dist/kiam.mjs, no tsx), as API client `client`, and
   * waits for /readyz. The environment is the harness's: static agent keys for the fake STS, instance metadata
   * disabled for the SDK, no config files. `intercept` (default `iptables`, the DNAT): the agent installs that path
   * itself; another path left in place before is removed first.
   */
  async startAgent(opts: { client?: string; intercept?: InterceptPath | 'none'; extra?: string[] } = {}): Promise<TrackedProcess> {
    if (this.agent?.running) throw new Error('bench: an agent is already running');
    const intercept = opts.intercept ?? 'iptables';
    if (intercept !== 'none' && this.installed && this.installed.path !== intercept) await this.removeInterception();
    const client = opts.client ?? `agent-${++this.agentSeq}`;
    const { kubeconfig } = await this.control<{ kubeconfig: string }>('POST', '/clients', { name: client });
    const kubeconfigPath = join(this.sb.tmpDir, `kubeconfig-${client}`);
    writeFileSync(kubeconfigPath, kubeconfig, { mode: 0o600 });
    const argv = [
      runtime.node, ...runtime.flags, join(REPO, 'bin/kiam.mjs'), 'agent',
      '--node-name', NODE_NAME,
      '--host-ip', this.sb.hostIp,
      '--port', String(AGENT_PORT),
      '--kubeconfig', kubeconfigPath,
      ...interceptArgs(intercept, this.sb),
      '--role-base-arn', BASE_ARN,
      '--sts-endpoint', this.stsUrl,
      '--region', 'eu-west-1',
      // One load-generator source IP sends far more than a pod's default 100 requests a second: the limiter stays
      // on (its cost is measured) with a cap no run reaches.
      '--max-requests-per-second', '1000000',
      ...(opts.extra ?? []),
    ];
    if (intercept !== 'none') this.installed = { path: intercept, port: AGENT_PORT };
    const agent = this.sb.spawn(this.sb.nodeNs, pin(process.env.KIAM_BENCH_AGENT_CPUS, argv), {
      cwd: REPO,
      logFile: join(this.sb.tmpDir, `${client}.log`),
      env: agentEnv(this.sb.tmpDir),
    });
    this.agent = agent;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (!agent.running) throw new Error(`agent exited before it was ready: ${agent.stderrTail().slice(-2000)}`);
      const r = await this.sb.exec(this.sb.nodeNs, [CURL, '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '1', 'http://127.0.0.1:9620/readyz']);
      if (r.stdout === '200') return agent;
      if (Date.now() > deadline) throw new Error('agent not ready after 30 s');
      await sleep(200);
    }
  }

  async stopAgent(): Promise<void> {
    await this.agent?.stop(12_000);
    this.agent = undefined;
  }

  async metrics(): Promise<string> {
    return this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--fail', '--max-time', '5', 'http://127.0.0.1:9620/metrics']);
  }

  /** Polls a metric of the agent until pred holds (or throws after timeoutMs). */
  async waitForMetric(name: string, pred: (v: number) => boolean, timeoutMs = 30_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = metricValue(await this.metrics(), name);
      if (pred(v)) return v;
      if (Date.now() > deadline) throw new Error(`metric ${name} = ${v} after ${timeoutMs} ms`);
      await sleep(250);
    }
  }

  async stsCalls(): Promise<(StsCall & { time: number })[]> {
    return JSON.parse(await this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--max-time', '10', `${this.stsUrl}/_fake/calls`])) as (StsCall & { time: number })[];
  }

  async configureSts(patch: Record<string, unknown>): Promise<void> {
    await this.sb.execOrThrow(this.sb.nodeNs, [CURL, '-sS', '--fail', '--max-time', '5', '-X', 'POST', '-H', 'content-type: application/json', '--data', JSON.stringify(patch), `${this.stsUrl}/_fake/config`]);
  }

  /** `kiam <args…>` from the production bundle inside the node namespace; throws unless it exits 0. */
  async kiam(args: string[]): Promise<string> {
    return this.sb.execOrThrow(this.sb.nodeNs, [process.execPath, join(REPO, 'bin/kiam.mjs'), ...args], { env: { PATH: process.env.PATH } });
  }

  /**
   * Points the interception at hostIp:port (the agent's or the baseline's) with `kiam intercept install`: the DNAT
   * rule's target, or the eBPF program's config map. Switching to another path removes the one in place first.
   */
  async redirect(path: InterceptPath, port: number): Promise<void> {
    if (this.installed && this.installed.path !== path) await this.removeInterception();
    this.installed = { path, port };
    await this.kiam(['intercept', 'install', ...interceptArgs(path, this.sb), '--host-ip', this.sb.hostIp, '--port', String(port)]);
  }

  /**
   * Removes every trace of the interception (`kiam intercept remove`, both halves where the sandbox has a cgroup):
   * the eBPF programs stay attached after their agent stops, and must not sit under a DNAT measurement.
   */
  async removeInterception(): Promise<void> {
    await this.kiam(['intercept', 'remove', ...interceptArgs(this.sb.cgroupPath ? 'auto' : 'iptables', this.sb), '--host-ip', this.sb.hostIp]);
    this.installed = undefined;
  }

  /** The interception in place, if any. */
  get interception(): { path: InterceptPath; port: number } | undefined {
    return this.installed;
  }

  /**
   * Empties the node namespace's conntrack table (conntrack-tools' `conntrack -F`, in the sandbox's own namespace),
   * so that the next count is what one run created. false when conntrack-tools is not installed.
   */
  async flushConntrack(): Promise<boolean> {
    const conntrack = findBinary('conntrack');
    if (!conntrack) return false;
    const r = await this.sb.exec(this.sb.nodeNs, [conntrack, '-F']);
    // conntrack -F exits 1 with "0 flow entries" on some versions when the table was empty already.
    if (r.code !== 0 && !/0 flow entries/.test(r.stderr)) throw new Error(`conntrack -F: ${r.stderr.trim()}`);
    return true;
  }

  /** Connections the node namespace's conntrack tracks now (nf_conntrack_count is per network namespace). */
  async conntrackCount(): Promise<number> {
    const out = await this.sb.execOrThrow(this.sb.nodeNs, ['cat', '/proc/sys/net/netfilter/nf_conntrack_count']);
    return Number(out.trim());
  }

  /** How many connects the eBPF program has rewritten so far (0 without it). */
  async ebpfRedirects(): Promise<number> {
    if (!this.sb.cgroupPath) return 0;
    const args = interceptArgs('ebpf', this.sb);
    // status exits 1 when what is there differs from the flags (e.g. nothing installed): read the JSON anyway.
    const r = await this.sb.exec(this.sb.nodeNs, [process.execPath, join(REPO, 'bin/kiam.mjs'), 'intercept', 'status', ...args, '--json'], { env: { PATH: process.env.PATH } });
    if (!r.stdout.startsWith('{')) throw new Error(`kiam intercept status: ${r.stdout}${r.stderr}`);
    return ebpfRedirects(JSON.parse(r.stdout));
  }

  /**
   * Gives a pod namespace more IPs: secondary /32 addresses on its eth0 and /32 routes to them on the node over
   * the same veth, so every address is a pod of its own to the agent (as if many pods shared one veth).
   */
  async addSourceIps(pod: Pod, ips: string[]): Promise<void> {
    await this.sb.execOrThrow(pod.ns, ['ip', '-batch', '-'], { input: ips.map((ip) => `addr add ${ip}/32 dev eth0\n`).join('') });
    await this.sb.execOrThrow(this.sb.nodeNs, ['ip', '-batch', '-'], { input: ips.map((ip) => `route add ${ip}/32 dev ${pod.hostVeth}\n`).join('') });
  }

  /** Runs a bench script (bench/*.ts) inside a pod namespace with a clean environment. */
  spawnInPod(pod: Pod, script: string, args: string[]): TrackedProcess {
    return this.sb.spawn(pod.ns, pin(process.env.KIAM_BENCH_LOAD_CPUS, [process.execPath, '--import', 'tsx', join(REPO, script), ...args]), {
      cwd: REPO,
      env: podEnv(this.sb, { NODE_OPTIONS: '--disable-warning=NodeVersionSupportWarning' }),
    });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Prefixes argv with `taskset -c <cpus>` when cpus (a CPU list, e.g. "1" or "0,2-3") is set: KIAM_BENCH_AGENT_CPUS
 * pins the agent and the baseline servers, KIAM_BENCH_LOAD_CPUS the load generators and pod clients, so that they
 * do not compete for the same cores. Unset: nothing is pinned (the default).
 */
export function pin(cpus: string | undefined, argv: string[]): string[] {
  return cpus ? ['taskset', '-c', cpus, ...argv] : argv;
}
