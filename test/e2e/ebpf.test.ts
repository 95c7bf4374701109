/**
 * The eBPF socket redirect end to end. The sandbox is a node as on EC2: the fake metadata service (holding the
 * NODE's role, keys ASIANODE…) lives behind the node's eth0 on 169.254.169.254 and fd00:ec2::254, pods are dual
 * stack behind cali veths, and every process the sandbox starts sits in a child cgroup the sandbox created under a
 * private cgroup2 mount: that child cgroup is the only place programs are attached (never a mount's root, never
 * /sys/fs/cgroup). The node is itself a network namespace, so the agent must learn its netns cookie (the nested-node
 * case, as in kind).
 *
 * installBypass() emulates an eBPF dataplane (Cilium eBPF host routing): a tc program on the cali interfaces sends
 * pod packets for the metadata addresses straight out of eth0, past the node's netfilter.
 *
 * The tests run in order on one sandbox; each says what it leaves for the next.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BASE_ARN, clientCredentials, CLIENTS, curlCredentials, metricValue, Node, podCurl, REPO, type Json } from './harness.ts';
import { Sandbox, type Pod } from './sandbox.ts';

const gate = Sandbox.gate(
  ['curl', 'kubectl', 'conntrack', 'iptables-nft-restore', 'iptables-nft-save', 'ip6tables-nft-restore', 'ip6tables-nft-save', '/usr/bin/aws', '/usr/bin/python3', 'bpftool', 'clang'],
  { bpf: true },
);
const botocore = spawnSync('/usr/bin/python3', ['-c', 'import botocore'], { stdio: 'ignore' }).status === 0;
const skip = gate.skip || (!botocore && process.env.CI !== 'true' ? 'python3-botocore is not installed' : false);
const NODE_KEY = /ASIANODE/;
const LISTING = '/latest/meta-data/iam/security-credentials/';

interface Peer {
  peer?: [string, number];
  status?: string;
  body?: string;
  error?: string;
}

describe('the eBPF socket redirect in a sandboxed node', { skip }, () => {
  let sb: Sandbox;
  let node: Node;
  const pods: Record<string, Pod> = {};
  let foreignDir = '';

  /** Dial host:80 from the pod with a plain socket: what getpeername says, and the answer to GET path. */
  async function dial(pod: Pod, host: string, path = LISTING): Promise<Peer> {
    const r = await sb.exec(pod.ns, ['/usr/bin/python3', join(REPO, 'test/e2e/clients/peer.py'), host, path], { timeoutMs: 15_000 });
    return JSON.parse(r.stdout.trim() || '{}') as Peer;
  }

  async function kiamJson(args: string[]): Promise<Json> {
    const r = await node.kiam([...args, '--json']);
    assert.ok(r.stdout.startsWith('{'), `kiam ${args.join(' ')}: ${r.stdout}${r.stderr}`);
    return JSON.parse(r.stdout) as Json;
  }

  /** `kiam intercept status` of the eBPF half, as the agent configures it. */
  async function ebpfStatus(): Promise<Json> {
    const report = await kiamJson(['intercept', 'status', ...node.interceptArgs('ebpf'), '--host-ip', sb.hostIp]);
    return report.ebpf as Json;
  }

  function attached(status: Json): Array<{ hook: string; name: string; id: number }> {
    return status.attached as Array<{ hook: string; name: string; id: number }>;
  }

  async function stopAgent(): Promise<void> {
    const agent = node.agent;
    if (!agent) return;
    agent.kill('SIGTERM');
    const exit = await agent.exited;
    assert.equal(exit.code, 0, 'the agent stops cleanly');
    node.agent = undefined;
  }

  /** bpftool in the node namespace (the sandbox puts it in the child cgroup too; bpftool itself is not affected). */
  async function bpftool(args: string[]): Promise<string> {
    return sb.execOrThrow(sb.nodeNs, ['bpftool', ...args]);
  }

  before(async () => {
    gate.assertReady();
    assert.ok(botocore, 'python3-botocore is required (apt-get install python3-botocore)');
    sb = await Sandbox.create({ upstreamNetns: true, cgroup: true, ipv6: true });
    node = await Node.start(sb);
    await node.createNamespace('team-a', `${BASE_ARN}app-.*`);
    for (const [name, role] of [['a1', 'app-reader'], ['a2', 'app-writer']] as const) {
      const pod = await sb.addPod({ name });
      pods[name] = pod;
      await node.createPod({ name, namespace: 'team-a', ip: pod.ip, ipv6: pod.ipv6, role });
    }
    // A pod namespace the API does not know: not a pod of this node.
    pods.stranger = await sb.addPod({ name: 'stranger' });
  });

  after(async () => {
    await sb?.destroy();
  });

  it('kiam init installs the redirect once, idempotently, in the node namespace', async () => {
    for (let round = 1; round <= 2; round++) {
      const r = await node.kiam(['init', ...node.interceptArgs('ebpf'), '--host-ip', sb.hostIp, '--json']);
      assert.equal(r.code, 0, `init round ${round}: ${r.stdout}${r.stderr}`);
      const report = JSON.parse(r.stdout) as { ebpf: Json; mounts: Array<{ fsType: string; mounted: boolean }> };
      assert.deepEqual(report.mounts.map((m) => [m.fsType, m.mounted]), [['bpf', false], ['cgroup2', false]], 'the sandbox mounted both already');
      assert.equal(report.ebpf.inSync, true);
    }
    const status = await ebpfStatus();
    const ours = attached(status).filter((a) => a.name.startsWith('kiam_'));
    assert.deepEqual(ours.map((a) => a.hook).sort(), ['connect4', 'connect6', 'getpeername4', 'getpeername6'], 'exactly one program per hook');
    const config = status.config as Json;
    assert.equal(config.hostIp, sb.hostIp);
    assert.equal(config.hostIpv6, sb.hostIpv6);
    assert.notEqual(config.hostNetnsCookie, '0', 'the nested node taught the program its own netns cookie');
    // Nobody listens yet: pods fail closed, and never reach the node's role.
    const early = await dial(pods.a1!, '169.254.169.254');
    assert.equal(early.error, 'ECONNREFUSED', JSON.stringify(early));
  });

  it('sends pods to the agent over IPv4, IPv6 and the v4-mapped form, and the pod sees the address it dialled', async () => {
    await node.startAgent(['--reconcile-interval', '5s', '--log-level', 'debug'], {}, node.interceptArgs('ebpf'));
    await node.agentLog('assumed role', { sessionName: 'team-a.a1' }, 10_000, 0);
    for (const [host, peer] of [
      ['169.254.169.254', '169.254.169.254'],
      ['fd00:ec2::254', 'fd00:ec2::254'],
      ['::ffff:169.254.169.254', '::ffff:169.254.169.254'],
    ] as const) {
      const a1 = await dial(pods.a1!, host);
      assert.deepEqual(a1.peer, [peer, 80], `getpeername after dialling ${host}`);
      assert.match(a1.status ?? '', / 200 /, `${host}: ${JSON.stringify(a1)}`);
      assert.equal(a1.body, 'app-reader', `${host}: the agent placed the pod by its own address`);
      const a2 = await dial(pods.a2!, host);
      assert.equal(a2.body, 'app-writer', `${host} from a2`);
    }
    // Each answer named the dialling pod's own role: the agent saw that pod's address (IPv4, or IPv6 for fd00:ec2::254).
    const stats = (await ebpfStatus()).stats as Json;
    assert.ok(Number(stats.redirect4) >= 2 && Number(stats.redirect6) >= 2 && Number(stats.redirect6Mapped) >= 2, JSON.stringify(stats));
    assert.ok(metricValue(await node.metrics(), 'kiam_ebpf_redirect_present') === 1);
  });

  it('gives curl, the AWS CLI, botocore and the JS SDK their pod role over IPv4 and IPv6', async () => {
    const keys = new Map<string, string>();
    for (const family of ['ipv4', 'ipv6'] as const) {
      for (const client of CLIENTS) {
        const got = await clientCredentials(sb, pods.a1!, client, family);
        assert.ok(got.accessKeyId, `${client} over ${family}: ${got.output}`);
        assert.doesNotMatch(got.accessKeyId, NODE_KEY);
        keys.set(`${client}/${family}`, got.accessKeyId);
      }
    }
    assert.equal(new Set(keys.values()).size, 1, `one cached identity for the pod: ${JSON.stringify([...keys])}`);
  });

  it('kiam doctor reports the eBPF mode per family, and a detached program until the agent re-attaches it', async () => {
    const doctor = async () => {
      const r = await node.kiam(['doctor', '--json', '--metadata-endpoint', 'http://169.254.169.254', '--timeout', '3s']);
      const report = JSON.parse(r.stdout) as { checks: Array<{ id: string; status: string; detail: string; fix?: string }> };
      return { code: r.code, rows: new Map(report.checks.map((c) => [c.id, c])) };
    };
    const ok = await doctor();
    assert.equal(ok.code, 0, JSON.stringify([...ok.rows.values()].filter((c) => c.status !== 'ok')));
    assert.match(ok.rows.get('intercept.ipv4')!.detail, /eBPF/);
    assert.match(ok.rows.get('intercept.ipv6')!.detail, /eBPF/);
    for (const hook of ['connect4', 'connect6', 'getpeername4', 'getpeername6']) assert.equal(ok.rows.get(`ebpf.${hook}`)?.status, 'ok', hook);
    assert.equal(ok.rows.get('ebpf.config')?.status, 'ok');

    // Detach our connect4 by hand, as a careless CNI restart might, right after a check found everything in sync (the
    // next one is 5 s away): doctor fails that row with the fix, then the agent re-attaches it and counts the repair.
    const inSync = async () => metricValue(await node.metrics(), 'kiam_ebpf_reconciles_total', { result: 'in-sync' });
    const start = await inSync();
    while ((await inSync()) === start) await new Promise((r) => setTimeout(r, 100));
    const from = node.agent!.lineCount;
    const connect4 = attached(await ebpfStatus()).find((p) => p.hook === 'connect4' && p.name === 'kiam_connect4')!;
    await bpftool(['cgroup', 'detach', sb.cgroupPath!, 'connect4', 'id', String(connect4.id)]);
    const broken = await doctor();
    assert.equal(broken.code, 1);
    assert.equal(broken.rows.get('ebpf.connect4')!.status, 'fail');
    assert.ok(broken.rows.get('ebpf.connect4')!.fix, 'a failing row says how to fix it');
    await node.agentLog('eBPF socket redirect repaired', {}, 10_000, from);
    assert.ok(metricValue(await node.metrics(), 'kiam_ebpf_reconciles_total', { result: 'repaired' }) >= 1);
    const again = await doctor();
    assert.equal(again.code, 0, 'in sync again after the repair');
  });

  it('never rewrites the node namespace, other ports, other addresses or UDP', async () => {
    // The agent's pass-through dials 169.254.169.254 from the node namespace: it reaches the real service.
    const id = await podCurl(sb, pods.a1!, '/latest/meta-data/instance-id');
    assert.equal(id.status, 200, id.body);
    assert.match(id.body, /^i-/);
    // From here on, nothing may be redirected.
    const before = (await ebpfStatus()).stats as Json;
    // A process of the node namespace (in the same cgroup) reaches the upstream itself.
    const fromNode = await sb.execOrThrow(sb.nodeNs, ['curl', '-sS', '--max-time', '5', 'http://169.254.169.254/latest/meta-data/iam/security-credentials/']);
    assert.equal(fromNode, 'node-role');
    // Another port of the metadata address: not rewritten (the fake listens on 80 only).
    const port81 = await sb.exec(pods.a1!.ns, ['curl', '-sS', '--max-time', '3', 'http://169.254.169.254:81/']);
    assert.notEqual(port81.code, 0, 'port 81 is not sent to the agent');
    // The host address itself is reached as it is.
    const direct = await sb.exec(pods.a1!.ns, ['curl', '-sS', '--max-time', '3', `http://${sb.hostIp}:8181${LISTING}`]);
    assert.equal(direct.stdout, 'app-reader');
    // UDP to the metadata address: untouched.
    await sb.execOrThrow(pods.a1!.ns, ['/usr/bin/python3', '-c', 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("169.254.169.254", 80)); s.send(b"x")']);
    const after = (await ebpfStatus()).stats as Json;
    assert.equal(after.redirect4, before.redirect4, 'none of these was redirected by the program');
    assert.ok(Number(after.hostSkipped) > Number(before.hostSkipped), 'the node-namespace connects were seen and skipped');
  });

  it('refuses a source that is not a pod of this node, for credentials and pass-through', async () => {
    const creds = await podCurl(sb, pods.stranger!, LISTING);
    assert.equal(creds.status, 403);
    const passthrough = await podCurl(sb, pods.stranger!, '/latest/meta-data/instance-id');
    assert.equal(passthrough.status, 403);
    assert.doesNotMatch(creds.body + passthrough.body, /node-role|ASIA|i-/);
  });

  it('holds on an emulated eBPF dataplane, where the iptables DNAT leaks the node role', async () => {
    await sb.installBypass();
    // eBPF: the connect is rewritten before a packet exists, so the bypass never sees metadata traffic.
    const ebpf = await curlCredentials(sb, pods.a1!);
    assert.equal(ebpf.listing.body, 'app-reader');
    await stopAgent();

    // iptables alone: the pod's packets skip the node's netfilter and reach the real service.
    await node.kiam(['intercept', 'remove', ...node.interceptArgs('ebpf')]);
    await node.startAgent(['--reconcile-interval', '1s'], {}, node.interceptArgs('iptables'));
    const leak = await podCurl(sb, pods.a1!, LISTING);
    assert.equal(leak.body, 'node-role', 'the test shows the leak iptables alone cannot stop');
    await stopAgent();

    // auto: eBPF and iptables together hold.
    await node.startAgent(['--reconcile-interval', '1s'], {}, node.interceptArgs('auto'));
    for (const family of ['ipv4', 'ipv6'] as const) {
      const { listing, document } = await curlCredentials(sb, pods.a1!, family);
      assert.equal(listing.body, 'app-reader', family);
      assert.doesNotMatch(String(document?.AccessKeyId), NODE_KEY);
    }
    await sb.removeBypass();
    // Leaves: the agent running with --intercept auto.
  });

  it('keeps a foreign connect4 program working, re-installs to one program per hook, fails closed when the agent is killed, and remove restores the upstream', async () => {
    // A foreign program beside ours, as Cilium's or Calico's would be.
    foreignDir = join(sb.bpffsPath, 'foreign');
    const obj = join(sb.tmpDir, 'foreign.bpf.o');
    const multiarch = process.arch === 'arm64' ? 'aarch64-linux-gnu' : 'x86_64-linux-gnu';
    const cc = spawnSync('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${multiarch}`, '-c', join(REPO, 'test/e2e/foreign.bpf.c'), '-o', obj], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    await sb.execOrThrow(sb.nodeNs, ['mkdir', '-p', foreignDir]);
    await bpftool(['prog', 'loadall', obj, join(foreignDir, 'progs'), 'pinmaps', join(foreignDir, 'maps')]);
    await bpftool(['cgroup', 'attach', sb.cgroupPath!, 'connect4', 'pinned', join(foreignDir, 'progs', 'foreign_c4'), 'multi']);
    const count = async () => {
      const dump = JSON.parse(await bpftool(['-j', 'map', 'dump', 'pinned', join(foreignDir, 'maps', 'foreign_count')])) as Array<{ value: string[] }>;
      return dump[0]!.value.reduceRight((acc, b) => acc * 256 + parseInt(b, 16), 0);
    };
    const n0 = await count();
    const { listing } = await curlCredentials(sb, pods.a2!);
    assert.equal(listing.body, 'app-writer', 'ours still redirects');
    assert.ok((await count()) > n0, 'the foreign program still sees connects');

    // Re-install (as a restarted init container would): still exactly one of ours per hook, the foreign one kept.
    for (let i = 0; i < 2; i++) assert.equal((await node.kiam(['intercept', 'install', ...node.interceptArgs('ebpf'), '--host-ip', sb.hostIp])).code, 0);
    const progs = attached(await ebpfStatus());
    for (const hook of ['connect4', 'connect6', 'getpeername4', 'getpeername6']) {
      assert.equal(progs.filter((p) => p.hook === hook && p.name.startsWith('kiam_')).length, 1, `one kiam program on ${hook}`);
    }
    assert.ok(progs.some((p) => p.name === 'foreign_c4'), 'the foreign program is still attached');

    // The agent killed: pods get "connection refused", never the real service.
    node.agent!.kill('SIGKILL');
    await node.agent!.exited;
    node.agent = undefined;
    for (const host of ['169.254.169.254', 'fd00:ec2::254']) {
      const r = await dial(pods.a1!, host);
      assert.equal(r.error, 'ECONNREFUSED', `${host}: ${JSON.stringify(r)}`);
    }

    // remove: ours detached (the foreign one stays), and the pod reaches the upstream again.
    const removed = await node.kiam(['intercept', 'remove', ...node.interceptArgs('auto')]);
    assert.equal(removed.code, 0, removed.stdout + removed.stderr);
    const left = attached(await ebpfStatus());
    assert.deepEqual(left.map((p) => p.name), ['foreign_c4']);
    const upstream = await dial(pods.a1!, '169.254.169.254');
    assert.equal(upstream.body, 'node-role', 'without kiam the pod reaches the real service again');
  });

  it('falls back to the backstop when the nat table is flushed by hand, until the reconciler repairs it', async () => {
    await node.startAgent(['--reconcile-interval', '4s'], {}, node.interceptArgs('iptables'));
    // Flush right after a check found the rules in sync, so the next check is seconds away.
    const inSync = async () => metricValue(await node.metrics(), 'kiam_iptables_reconciles_total', { result: 'in-sync' });
    const start = await inSync();
    while ((await inSync()) === start) await new Promise((r) => setTimeout(r, 100));
    await sb.execOrThrow(sb.nodeNs, ['iptables-nft', '-t', 'nat', '-F']);
    const refused = await dial(pods.a1!, '169.254.169.254');
    assert.equal(refused.error, 'ECONNREFUSED', `the backstop rejects what the flushed DNAT no longer catches: ${JSON.stringify(refused)}`);
    await node.agentLog('interception rules repaired', {}, 15_000);
    const back = await dial(pods.a1!, '169.254.169.254');
    assert.equal(back.body, 'app-reader');
    await stopAgent();
    await node.kiam(['intercept', 'remove', ...node.interceptArgs('auto')]);
  });
});
