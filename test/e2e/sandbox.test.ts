// Smoke test of the network-namespace sandbox: Calico-like routing, a DNAT rule inside the node namespace,
// pod IP reuse, process tracking by PID and cleanup (normal, on SIGTERM, and after a hard crash via sweep); the
// metadata service behind the node's eth0 (upstreamNetns), dual stack (ipv6), the emulated eBPF dataplane
// (installBypass) and the private cgroup2/bpffs (cgroup).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Node } from './harness.ts';
import {
  DEFAULT_HOST_IPV6, METADATA_IP, METADATA_IPV6, POD_GATEWAY_IPV6, Sandbox, TrackedProcess, UPLINK, findBinary, readMounts,
} from './sandbox.ts';

const gate = Sandbox.gate(['curl']);
const kubeGate = Sandbox.gate(['curl', 'kubectl']);
const bpfGate = Sandbox.gate(['curl', 'ip6tables-nft'], { bpf: true });
const CURL = findBinary('curl') ?? 'curl';
const IP = findBinary('ip') ?? 'ip';
const BPFTOOL = findBinary('bpftool') ?? 'bpftool';
const CLANG = findBinary('clang') ?? 'clang';
const SANDBOX_MODULE = fileURLToPath(new URL('./sandbox.ts', import.meta.url));

// A tiny HTTP server: answers "<label> <remoteAddress>" on each of the comma-separated hosts (all on the port the
// first one got), prints "listening <port>" once bound.
const ECHO_SERVER = `
const [hosts, port, label] = process.argv.slice(1);
const http = require('node:http');
const servers = [];
const listen = (list, p) => {
  if (list.length === 0) return console.log('listening ' + p);
  const srv = http.createServer((q, r) => r.end(label + ' ' + q.socket.remoteAddress + '\\n'));
  servers.push(srv);
  srv.listen(p, list[0], () => listen(list.slice(1), srv.address().port));
};
listen(hosts.split(','), Number(port));
process.on('SIGTERM', () => { for (const s of servers) s.close(); process.exit(0); });
`;
// Prints "ready" and stays alive until killed.
const SLEEPER = `console.log('ready'); setInterval(() => {}, 1e6);`;

function netnsList(): string[] {
  const r = spawnSync(IP, ['netns', 'list'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean);
}

/** Running (a zombie waiting for its reaper counts as gone). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/**
 * For a process that is not our child there is no exit event to wait on (Node has no pidfd), so this is the one
 * bounded poll of the suite: /proc every 5 ms. It returns as soon as the process is gone; the bound only limits how
 * long a failure takes, so it is generous (SIGKILL delivery on a loaded 2-core machine).
 */
async function waitGone(pid: number, ms = 10_000): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (alive(pid) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  return !alive(pid);
}

function netnsInode(name: string): string {
  return `net:[${statSync(`/run/netns/${name}`).ino}]`;
}

async function startEcho(sb: Sandbox, host: string, port: number, label: string, ns = sb.nodeNs): Promise<{ proc: TrackedProcess; port: number }> {
  const proc = sb.spawn(ns, [process.execPath, '-e', ECHO_SERVER, host, String(port), label]);
  const line = await proc.waitForLine(/^listening \d+$/, 5_000);
  return { proc, port: Number(line.split(' ')[1]) };
}

async function curl(sb: Sandbox, ns: string, url: string): Promise<string> {
  const out = await sb.execOrThrow(ns, [CURL, '-sS', '-g', '--max-time', '3', url], { timeoutMs: 5_000 });
  return out.trim();
}

/** The cgroup v2 path of a process (the `0::` line of /proc/PID/cgroup). */
function cgroupOf(pid: number): string {
  return /^0::(.*)$/m.exec(readFileSync(`/proc/${pid}/cgroup`, 'utf8'))?.[1] ?? '';
}

/** Where a top-level cgroup of that name exists, looking (read-only) through every cgroup2 mount of the machine. */
function cgroupsNamed(name: string): string[] {
  return readMounts()
    .filter((m) => m.fsType === 'cgroup2' && m.root === '/')
    .map((m) => join(m.mountPoint, name))
    .filter((p) => existsSync(p));
}

function mountsBelow(dir: string): string[] {
  return readMounts().filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`)).map((m) => `${m.fsType} ${m.mountPoint}`);
}

function progExists(id: number): boolean {
  return spawnSync(BPFTOOL, ['prog', 'show', 'id', String(id)], { stdio: 'ignore' }).status === 0;
}

// A cgroup/connect4 program that allows every connect: something to attach to the child cgroup, so cleanup has a
// program to detach.
const ALLOW_C = `#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("cgroup/connect4") int allow(struct bpf_sock_addr *ctx) { return 1; }
char LICENSE[] SEC("license") = "GPL";
`;

function compileAllow(dir: string): string {
  writeFileSync(join(dir, 'allow.bpf.c'), ALLOW_C);
  const multiarch = spawnSync(CLANG, ['-print-multiarch'], { encoding: 'utf8' }).stdout.trim();
  const obj = join(dir, 'allow.bpf.o');
  const r = spawnSync(CLANG, ['-O2', '-g', '-target', 'bpf', '-I', `/usr/include/${multiarch}`, '-c', join(dir, 'allow.bpf.c'), '-o', obj], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return obj;
}

/** Loads the object, pinned in the bpffs, attaches it (multi) to the cgroup; returns the program's id. */
function attachAllow(obj: string, bpffs: string, cgroup: string): number {
  const pin = join(bpffs, 'allow');
  for (const args of [['prog', 'load', obj, pin], ['cgroup', 'attach', cgroup, 'connect4', 'pinned', pin, 'multi']]) {
    const r = spawnSync(BPFTOOL, args, { encoding: 'utf8' });
    assert.equal(r.status, 0, `bpftool ${args.join(' ')}: ${r.stderr}`);
  }
  const shown = JSON.parse(spawnSync(BPFTOOL, ['cgroup', 'show', cgroup, '-j'], { encoding: 'utf8' }).stdout) as { id: number; attach_type: string }[];
  assert.equal(shown.length, 1, JSON.stringify(shown));
  return shown[0]!.id;
}

test('pods reach the host IP and 169.254.169.254; a DNAT inside the node namespace redirects them', { skip: gate.skip }, async (t) => {
  gate.assertReady();
  const t0 = performance.now();
  const sb = await Sandbox.create();
  const tCreate = performance.now() - t0;
  const spawned: TrackedProcess[] = [];
  const created: string[] = [];
  try {
    assert.match(sb.nodeNs, /^kiamt[0-9a-f]{4}-node$/);
    const t1 = performance.now();
    const [a, b] = await Promise.all([sb.addPod({ name: 'a' }), sb.addPod({ name: 'b', ip: '10.77.1.50' })]);
    const tPods = performance.now() - t1;
    assert.ok(a && b);
    created.push(sb.nodeNs, a.ns, b.ns);
    assert.deepEqual(
      netnsList().filter((n) => n.startsWith(`${sb.prefix}-`)).sort(),
      [...created].sort(),
    );
    assert.equal(b.ip, '10.77.1.50');
    assert.notEqual(a.ip, b.ip);
    for (const pod of [a, b]) {
      assert.match(pod.hostVeth, /^cali[0-9a-f]{11}$/);
      assert.equal(pod.ns, `${sb.prefix}-${pod.name}`);
      // Calico-style routing, and nothing of it in the root namespace.
      assert.equal((await sb.execOrThrow(sb.nodeNs, ['cat', `/proc/sys/net/ipv4/conf/${pod.hostVeth}/proxy_arp`])).trim(), '1');
      assert.match(await sb.execOrThrow(sb.nodeNs, [IP, 'route', 'show', `${pod.ip}/32`]), new RegExp(`dev ${pod.hostVeth}`));
      const podRoutes = await sb.execOrThrow(pod.ns, [IP, 'route', 'show']);
      assert.match(podRoutes, /^default via 169\.254\.1\.1 dev eth0/m);
      assert.match(podRoutes, /^169\.254\.1\.1 dev eth0 scope link/m);
      assert.match(await sb.execOrThrow(pod.ns, [IP, '-4', 'addr', 'show', 'eth0']), new RegExp(`inet ${pod.ip.replaceAll('.', '\\.')}/32`));
      assert.equal(spawnSync(IP, ['link', 'show', pod.hostVeth]).status, 1, 'veth must not exist in the root namespace');
    }

    const host = await startEcho(sb, sb.hostIp, 0, 'host');
    const metadata = await startEcho(sb, METADATA_IP, 80, 'metadata');
    spawned.push(host.proc, metadata.proc);
    // `ip netns exec` execs: the tracked PID is the server itself, and it lives in the node namespace.
    for (const p of [host.proc, metadata.proc]) {
      assert.equal(realpathSync(`/proc/${p.pid}/exe`), realpathSync(process.execPath));
      assert.equal(readlinkSync(`/proc/${p.pid}/ns/net`), netnsInode(sb.nodeNs));
    }

    assert.equal(await curl(sb, a.ns, `http://${sb.hostIp}:${host.port}/`), `host ${a.ip}`);
    assert.equal(await curl(sb, b.ns, `http://${sb.hostIp}:${host.port}/`), `host ${b.ip}`);
    assert.equal(await curl(sb, a.ns, `http://${METADATA_IP}/`), `metadata ${a.ip}`);

    // The agent's DNAT, installed inside the node namespace only.
    await sb.execOrThrow(sb.nodeNs, [
      'iptables-nft', '-w', '5', '-t', 'nat', '-I', 'PREROUTING', '-i', 'cali+', '-d', `${METADATA_IP}/32`,
      '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', `${sb.hostIp}:${host.port}`,
    ]);
    assert.equal(await curl(sb, a.ns, `http://${METADATA_IP}/`), `host ${a.ip}`);
    assert.equal(await curl(sb, b.ns, `http://${METADATA_IP}/latest/meta-data/`), `host ${b.ip}`);
    // Traffic of the node itself (OUTPUT, not PREROUTING) still reaches the upstream metadata service.
    assert.equal(await curl(sb, sb.nodeNs, `http://${METADATA_IP}/`), `metadata ${METADATA_IP}`);

    // A process in pod b is stopped with it; its IP can be taken by a new pod.
    const sleeper = sb.spawn(b.ns, [process.execPath, '-e', SLEEPER]);
    await sleeper.waitForLine(/^ready$/, 5_000);
    spawned.push(sleeper);
    const t2 = performance.now();
    await sb.removePod(b);
    const tRemove = performance.now() - t2;
    assert.ok(!sleeper.running && !alive(sleeper.pid), 'process of the removed pod is gone');
    assert.ok(!netnsList().includes(b.ns));
    assert.doesNotMatch(await sb.execOrThrow(sb.nodeNs, [IP, 'link', 'show']), new RegExp(b.hostVeth));
    await assert.rejects(sb.exec(b.ns, ['true']), /not a namespace of sandbox/);

    const c = await sb.addPod({ name: 'c', ip: b.ip });
    created.push(c.ns);
    assert.equal(c.ip, b.ip);
    assert.notEqual(c.hostVeth, b.hostVeth);
    assert.equal(await curl(sb, c.ns, `http://${METADATA_IP}/`), `host ${c.ip}`);
    // The re-added pod got a fresh namespace: a new inode behind the name.
    const inC = sb.spawn(c.ns, [process.execPath, '-e', SLEEPER]);
    spawned.push(inC);
    await inC.waitForLine(/^ready$/, 5_000);
    assert.equal(readlinkSync(`/proc/${inC.pid}/ns/net`), netnsInode(c.ns));

    const t3 = performance.now();
    await sb.destroy();
    const tDestroy = performance.now() - t3;
    t.diagnostic(
      `create ${tCreate.toFixed(0)} ms, 2 pods ${tPods.toFixed(0)} ms, removePod ${tRemove.toFixed(0)} ms, destroy ${tDestroy.toFixed(0)} ms`,
    );
  } finally {
    await sb.destroy();
  }
  const left = netnsList();
  for (const ns of created) assert.ok(!left.includes(ns), `${ns} deleted`);
  assert.equal(left.filter((n) => n.startsWith(`${sb.prefix}-`)).length, 0);
  for (const p of spawned) assert.ok(!alive(p.pid), `pid ${p.pid} gone`);
  assert.ok(!existsSync(sb.tmpDir), 'temp dir removed');
  assert.equal(sb.processes.length, 0);
});

test('ten pods set up at once all reach the host IP and each other', { skip: gate.skip }, async (t) => {
  gate.assertReady();
  const sb = await Sandbox.create();
  try {
    const host = await startEcho(sb, sb.hostIp, 0, 'host');
    const t0 = performance.now();
    const pods = await Promise.all(Array.from({ length: 10 }, (_, i) => sb.addPod({ name: `p${i}` })));
    const ms = performance.now() - t0;
    t.diagnostic(`10 pods in ${ms.toFixed(0)} ms`);
    assert.equal(new Set(pods.map((p) => p.ip)).size, 10);
    assert.equal(new Set(pods.map((p) => p.hostVeth)).size, 10);
    const answers = await Promise.all(pods.map((p) => curl(sb, p.ns, `http://${sb.hostIp}:${host.port}/`)));
    assert.deepEqual(answers, pods.map((p) => `host ${p.ip}`));
    // pod to pod goes through the node (ip_forward + host routes)
    const peer = await startEchoIn(sb, pods[1]!.ns, pods[1]!.ip);
    assert.equal(await curl(sb, pods[0]!.ns, `http://${pods[1]!.ip}:${peer}/`), `pod ${pods[0]!.ip}`);
  } finally {
    await sb.destroy();
  }
  assert.equal(netnsList().filter((n) => n.startsWith(`${sb.prefix}-`)).length, 0);
});

async function startEchoIn(sb: Sandbox, ns: string, ip: string): Promise<number> {
  const proc = sb.spawn(ns, [process.execPath, '-e', ECHO_SERVER, ip, '0', 'pod']);
  return Number((await proc.waitForLine(/^listening \d+$/, 5_000)).split(' ')[1]);
}

test('exec and spawn: namespaces are checked, exit codes, input, timeouts and early exits are reported', { skip: gate.skip }, async () => {
  gate.assertReady();
  const sb = await Sandbox.create();
  try {
    assert.throws(() => sb.spawn('default', ['true']), /not a namespace of sandbox/);
    await assert.rejects(sb.exec('', ['true']), /not a namespace of sandbox/);
    await assert.rejects(sb.addPod({ name: 'node' }), /invalid pod name/);
    await assert.rejects(sb.addPod({ name: 'x', ip: sb.hostIp }), /in use/);
    await assert.rejects(sb.addPod({ name: 'x', ip: '10.77.300.1' }), /invalid pod IP/);

    const echo = await sb.exec(sb.nodeNs, ['cat'], { input: 'hello' });
    assert.deepEqual([echo.code, echo.stdout, echo.timedOut], [0, 'hello', false]);
    const env = await sb.exec(sb.nodeNs, ['/usr/bin/env'], { env: { ONLY: 'this' } });
    assert.equal(env.stdout.trim(), 'ONLY=this');
    const fail = await sb.exec(sb.nodeNs, [process.execPath, '-e', 'console.error("boom"); process.exit(3)']);
    assert.deepEqual([fail.code, fail.stderr.trim()], [3, 'boom']);
    await assert.rejects(sb.execOrThrow(sb.nodeNs, ['false']), /\[.*-node\] false failed \(code 1\)/);
    const slow = await sb.exec(sb.nodeNs, [process.execPath, '-e', 'setTimeout(() => {}, 60000)'], { timeoutMs: 200 });
    assert.deepEqual([slow.timedOut, slow.signal], [true, 'SIGKILL']);

    const early = sb.spawn(sb.nodeNs, [process.execPath, '-e', 'console.log("one"); console.error("why"); process.exit(2)']);
    await assert.rejects(early.waitForLine(/never/, 5_000), /exited \(code 2\) before printing a line matching \/never\/; stderr: why/);
    const quiet = sb.spawn(sb.nodeNs, [process.execPath, '-e', SLEEPER]);
    await quiet.waitForLine(/^ready$/, 5_000);
    await assert.rejects(quiet.waitForLine((l) => l === 'more', 50), /timed out after 50 ms/);
    assert.equal(await quiet.waitForLine(/^ready$/, 10), 'ready', 'lines printed earlier still match');
    const exit = await quiet.stop(1_000);
    assert.equal(exit.signal, 'SIGTERM');
    assert.equal(quiet.kill(), false, 'no signal is sent to a reaped PID');
  } finally {
    await sb.destroy();
  }
  await sb.destroy(); // idempotent
  await assert.rejects(sb.addPod({ name: 'late' }), /destroyed/);
});

// A child test process that builds a sandbox and then waits to be killed.
const CHILD = (prefix: string) => `
const { Sandbox } = await import(${JSON.stringify(SANDBOX_MODULE)});
const sb = await Sandbox.create({ prefix: ${JSON.stringify(prefix)} });
const pod = await sb.addPod({ name: 'a' });
const p = sb.spawn(pod.ns, [process.execPath, '-e', ${JSON.stringify(SLEEPER)}]);
await p.waitForLine(/^ready$/, 5000);
console.log('pid ' + p.pid);
setInterval(() => {}, 1e6);
`;

function startChild(prefix: string): TrackedProcess {
  return new TrackedProcess(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD(prefix)], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
  });
}

test('a SIGTERM to the test process cleans up; a hard kill is cleaned up by sweep(prefix) only', { skip: gate.skip }, async () => {
  gate.assertReady();
  const suffix = Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0');
  const termPrefix = `kiamq${suffix}`;
  const crashPrefix = `kiamk${suffix}`;
  const other = await Sandbox.create(); // a live sandbox with another prefix must survive the sweep
  // The two child test processes are ours to stop by PID, also when an assertion fails before they are killed.
  let term: TrackedProcess | undefined;
  let crash: TrackedProcess | undefined;
  try {
    // SIGTERM: the exit handlers kill the pod's process by PID and delete the namespaces.
    term = startChild(termPrefix);
    const termPid = Number((await term.waitForLine(/^pid \d+$/, 10_000)).split(' ')[1]);
    assert.ok(netnsList().includes(`${termPrefix}-a`));
    term.kill('SIGTERM');
    assert.equal((await term.exited).signal, 'SIGTERM');
    assert.equal(netnsList().filter((n) => n.startsWith(`${termPrefix}-`)).length, 0);
    assert.ok(await waitGone(termPid), 'the pod process was killed by the exit handler');

    // SIGKILL: nothing runs, the namespaces and the pod's process stay behind until sweep(prefix).
    crash = startChild(crashPrefix);
    const orphan = Number((await crash.waitForLine(/^pid \d+$/, 10_000)).split(' ')[1]);
    crash.kill('SIGKILL');
    await crash.exited;
    assert.ok(alive(orphan), 'the pod process survives a hard kill of its test process');
    assert.deepEqual(netnsList().filter((n) => n.startsWith(`${crashPrefix}-`)).sort(), [`${crashPrefix}-a`, `${crashPrefix}-node`]);
    await assert.rejects(Sandbox.create({ prefix: crashPrefix }), /use Sandbox\.sweep/);
    assert.deepEqual((await Sandbox.sweep(crashPrefix)).sort(), [`${crashPrefix}-a`, `${crashPrefix}-node`]);
    assert.equal(netnsList().filter((n) => n.startsWith(`${crashPrefix}-`)).length, 0);
    assert.ok(await waitGone(orphan), 'sweep killed the orphan by PID');
    assert.deepEqual(await Sandbox.sweep(crashPrefix), []);
    assert.ok(netnsList().includes(other.nodeNs), 'other prefixes untouched');
    await assert.rejects(Sandbox.sweep(other.prefix), /live sandbox/);
    await assert.rejects(Sandbox.sweep(''), /invalid prefix/);
  } finally {
    crash?.kill('SIGKILL'); // a no-op once reaped; its namespaces and orphans go with the sweep below
    await Promise.all([term?.stop(2_000), crash?.exited]);
    await other.destroy();
    await Sandbox.sweep(termPrefix);
    await Sandbox.sweep(crashPrefix);
  }
});

test('upstreamNetns + ipv6: the metadata service sits behind the node\'s eth0; pods reach it over IPv4 and IPv6', { skip: kubeGate.skip }, async () => {
  kubeGate.assertReady();
  const sb = await Sandbox.create({ upstreamNetns: true, ipv6: true });
  try {
    assert.equal(sb.imdsNs, `${sb.prefix}-imds`);
    assert.equal(sb.metadataNs, sb.imdsNs);
    assert.equal(sb.hostIpv6, DEFAULT_HOST_IPV6);
    assert.deepEqual(sb.metadataAddresses, [METADATA_IP, METADATA_IPV6]);
    await assert.rejects(sb.addPod({ name: 'imds' }), /invalid pod name/);
    const node = await Node.start(sb);
    const [a, b] = await Promise.all([sb.addPod({ name: 'a' }), sb.addPod({ name: 'b', ip: '10.77.1.50', ipv6: 'fd77:1::50' })]);
    assert.ok(a && b);
    assert.deepEqual(netnsList().filter((n) => n.startsWith(`${sb.prefix}-`)).sort(), [a.ns, b.ns, sb.imdsNs, sb.nodeNs].sort());
    assert.equal(a.ipv6, 'fd77:1::1:2');
    assert.equal(b.ipv6, 'fd77:1::50');

    // The node: no metadata address of its own, routes to it through eth0; its host IPv6 on lo.
    const lo = await sb.execOrThrow(sb.nodeNs, [IP, 'addr', 'show', 'lo']);
    assert.doesNotMatch(lo, /169\.254\.169\.254|fd00:ec2::254/);
    assert.match(lo, /inet6 fd77::1\/128/);
    assert.match(await sb.execOrThrow(sb.nodeNs, [IP, 'route', 'get', METADATA_IP]), new RegExp(`via ${UPLINK.imds} dev eth0`));
    assert.match(await sb.execOrThrow(sb.nodeNs, [IP, 'route', 'get', METADATA_IPV6]), new RegExp(`via ${UPLINK.imdsV6} dev eth0`));
    // Calico-style IPv6: fe80::1 on the cali side, the pod's default route via it, a /128 per pod on the node.
    for (const pod of [a, b]) {
      assert.match(await sb.execOrThrow(sb.nodeNs, [IP, '-6', 'addr', 'show', 'dev', pod.hostVeth]), /inet6 fe80::1\/64 scope link/);
      assert.match(await sb.execOrThrow(sb.nodeNs, [IP, '-6', 'route', 'show', `${pod.ipv6}/128`]), new RegExp(`dev ${pod.hostVeth}`));
      assert.match(await sb.execOrThrow(pod.ns, [IP, '-6', 'route', 'show']), new RegExp(`^default via ${POD_GATEWAY_IPV6} dev eth0`, 'm'));
      assert.match(await sb.execOrThrow(pod.ns, [IP, '-6', 'addr', 'show', 'eth0']), new RegExp(`inet6 ${pod.ipv6}/128`));
    }
    // The fake metadata service runs inside the imds namespace.
    const imdsPids = spawnSync(IP, ['netns', 'pids', sb.imdsNs!], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
    assert.ok(imdsPids.some((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('test/fakes/metadata.ts')), 'metadata fake in the imds ns');

    const v4 = `http://${METADATA_IP}/latest/meta-data/`;
    const v6 = `http://[${METADATA_IPV6}]/latest/meta-data/`;
    for (const pod of [a, b]) {
      assert.match(await curl(sb, pod.ns, v4), /^instance-id$/m);
      assert.match(await curl(sb, pod.ns, v6), /^instance-id$/m);
    }
    const peers = (await node.upstreamRequests()).filter((r) => r.path === '/latest/meta-data/').map((r) => r.remoteAddress);
    assert.deepEqual(peers, [a.ip, a.ipv6, b.ip, b.ipv6]);
    // The node itself reaches it too (the agent's pass-through), from its eth0 addresses.
    assert.match(await curl(sb, sb.nodeNs, v6), /^instance-id$/m);

    // Pods reach the host's IPv6 address; the fake API server carries both pod IPs.
    const host = await startEcho(sb, `${sb.hostIp},${sb.hostIpv6}`, 0, 'host');
    assert.equal(await curl(sb, a.ns, `http://[${sb.hostIpv6}]:${host.port}/`), `host ${a.ipv6}`);
    assert.equal(await curl(sb, a.ns, `http://${sb.hostIp}:${host.port}/`), `host ${a.ip}`);
    await node.createNamespace('dual');
    await node.createPod({ name: 'a', namespace: 'dual', ip: a.ip, ipv6: a.ipv6 });
    await node.createPod({ name: 'v4', namespace: 'dual', ip: '10.77.9.9' });
    const podIps = async (name: string) => (JSON.parse(await node.kubectl(['get', 'pod', '-n', 'dual', name, '-o', 'json'])) as { status: { podIPs: unknown } }).status.podIPs;
    assert.deepEqual(await podIps('a'), [{ ip: a.ip }, { ip: a.ipv6 }]);
    assert.deepEqual(await podIps('v4'), [{ ip: '10.77.9.9' }]);
  } finally {
    await sb.destroy();
  }
  assert.equal(netnsList().filter((n) => n.startsWith(`${sb.prefix}-`)).length, 0);
});

test('an emulated eBPF dataplane: the node\'s DNAT catches pods until installBypass(), then they reach the metadata service', { skip: bpfGate.skip }, async () => {
  bpfGate.assertReady();
  const sysBpf = () => readMounts().filter((m) => m.mountPoint === '/sys/fs/bpf').length;
  const bpfOutsideTmp = () => readMounts().filter((m) => m.fsType === 'bpf' && !m.mountPoint.startsWith(`${tmpdir()}/`)).map((m) => m.mountPoint);
  const before = { sysBpf: sysBpf(), outside: bpfOutsideTmp() };
  const sb = await Sandbox.create({ upstreamNetns: true, ipv6: true });
  try {
    await startEcho(sb, `${METADATA_IP},${METADATA_IPV6}`, 80, 'imds', sb.imdsNs);
    const host = await startEcho(sb, `${sb.hostIp},${sb.hostIpv6}`, 0, 'host');
    const [a, b] = await Promise.all([sb.addPod({ name: 'a' }), sb.addPod({ name: 'b' })]);
    assert.ok(a && b);
    const ask = async (pod: typeof a) => [await curl(sb, pod.ns, `http://${METADATA_IP}/`), await curl(sb, pod.ns, `http://[${METADATA_IPV6}]/`)];
    assert.deepEqual(await ask(a), [`imds ${a.ip}`, `imds ${a.ipv6}`]);

    // The iptables interception, inside the node namespace only.
    for (const [bin, dst, to] of [
      ['iptables-nft', `${METADATA_IP}/32`, `${sb.hostIp}:${host.port}`],
      ['ip6tables-nft', `${METADATA_IPV6}/128`, `[${sb.hostIpv6}]:${host.port}`],
    ] as const) {
      await sb.execOrThrow(sb.nodeNs, [bin, '-w', '5', '-t', 'nat', '-I', 'PREROUTING', '-i', 'cali+', '-d', dst, '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', to]);
    }
    assert.deepEqual(await ask(a), [`host ${a.ip}`, `host ${a.ipv6}`]);
    assert.deepEqual(await ask(b), [`host ${b.ip}`, `host ${b.ipv6}`]);

    // The eBPF dataplane forwards past netfilter: the DNAT never sees the packets, the pods reach the service.
    await sb.installBypass();
    await sb.installBypass(); // idempotent
    const filters = await sb.execOrThrow(sb.nodeNs, ['tc', 'filter', 'show', 'dev', a.hostVeth, 'ingress']);
    assert.equal(filters.match(/ bpf .*direct-action/g)?.length, 1, filters);
    assert.deepEqual(await ask(a), [`imds ${a.ip}`, `imds ${a.ipv6}`]);
    assert.deepEqual(await ask(b), [`imds ${b.ip}`, `imds ${b.ipv6}`]);
    const c = await sb.addPod({ name: 'c' });
    assert.deepEqual(await ask(c), [`imds ${c.ip}`, `imds ${c.ipv6}`], 'a pod added later gets the bypass too');
    // Everything else still goes through the node's stack; the node's own traffic is not affected.
    assert.equal(await curl(sb, a.ns, `http://${sb.hostIp}:${host.port}/`), `host ${a.ip}`);
    assert.equal(await curl(sb, a.ns, `http://[${sb.hostIpv6}]:${host.port}/`), `host ${a.ipv6}`);
    assert.equal(await curl(sb, sb.nodeNs, `http://${METADATA_IP}/`), `imds ${UPLINK.node}`);

    // tc used the sandbox's bpffs (TC_BPF_MNT) and mounted none of its own.
    assert.ok(existsSync(join(sb.bpffsPath, 'tc', 'globals')), 'tc worked in the private bpffs');
    assert.equal(sysBpf(), before.sysBpf, 'no bpffs mounted at /sys/fs/bpf');
    assert.deepEqual(bpfOutsideTmp(), before.outside);

    await sb.removeBypass();
    assert.doesNotMatch(await sb.execOrThrow(sb.nodeNs, ['tc', 'filter', 'show', 'dev', a.hostVeth, 'ingress']), /bpf/);
    assert.deepEqual(await ask(a), [`host ${a.ip}`, `host ${a.ipv6}`]);
    assert.deepEqual(await ask(c), [`host ${c.ip}`, `host ${c.ipv6}`]);
    await sb.installBypass(); // left installed: destroy() removes it
    assert.deepEqual(await ask(c), [`imds ${c.ip}`, `imds ${c.ipv6}`]);
  } finally {
    await sb.destroy();
  }
  assert.deepEqual(mountsBelow(sb.tmpDir), []);
  assert.ok(!existsSync(sb.tmpDir));
  assert.equal(sysBpf(), before.sysBpf);
  assert.equal(netnsList().filter((n) => n.startsWith(`${sb.prefix}-`)).length, 0);
});

test('cgroup: every process of the sandbox joins its child cgroup; destroy() detaches programs, leaves no mount, cgroup or namespace', { skip: bpfGate.skip }, async () => {
  bpfGate.assertReady();
  const sb = await Sandbox.create({ cgroup: true });
  const name = `${sb.prefix}-pods`;
  let progId: number | undefined;
  const spawned: TrackedProcess[] = [];
  try {
    const cgroup = sb.cgroupPath!;
    assert.equal(cgroup, join(sb.tmpDir, 'cgroup2', name));
    assert.equal(sb.bpffsPath, join(sb.tmpDir, 'bpffs'));
    assert.deepEqual(mountsBelow(sb.tmpDir).sort(), [`bpf ${sb.bpffsPath}`, `cgroup2 ${dirname(cgroup)}`]);
    assert.ok(cgroupsNamed(name).length >= 2, 'the child cgroup is in the machine\'s cgroup2 hierarchy, seen through every mount');

    const a = await sb.addPod({ name: 'a' });
    const inPod = sb.spawn(a.ns, [process.execPath, '-e', SLEEPER]);
    const inNode = sb.spawn(sb.nodeNs, [process.execPath, '-e', SLEEPER]);
    spawned.push(inPod, inNode);
    await Promise.all([inPod.waitForLine(/^ready$/, 5_000), inNode.waitForLine(/^ready$/, 5_000)]);
    for (const [p, ns] of [[inPod, a.ns], [inNode, sb.nodeNs]] as const) {
      assert.equal(cgroupOf(p.pid), `/${name}`);
      assert.equal(readlinkSync(`/proc/${p.pid}/ns/net`), netnsInode(ns));
      assert.equal(realpathSync(`/proc/${p.pid}/exe`), realpathSync(process.execPath), 'the tracked PID is the command itself');
    }
    assert.match(readFileSync(join(cgroup, 'cgroup.procs'), 'utf8'), new RegExp(`^${inPod.pid}$`, 'm'));
    assert.match(await sb.execOrThrow(a.ns, ['cat', '/proc/self/cgroup']), new RegExp(`^0::/${name}$`, 'm'));
    // The environment given is the environment the command gets (the joining shell adds nothing).
    assert.equal((await sb.exec(sb.nodeNs, ['/usr/bin/env'], { env: { ONLY: 'this' } })).stdout.trim(), 'ONLY=this');
    assert.equal((await sb.exec(sb.nodeNs, ['/usr/bin/env'], { env: { PWD: '/x' } })).stdout.trim(), 'PWD=/x');

    // A program attached to the child cgroup (never a mount's root), pinned in the private bpffs.
    progId = attachAllow(compileAllow(sb.tmpDir), sb.bpffsPath, cgroup);
    assert.ok(progExists(progId));
    const host = await startEcho(sb, sb.hostIp, 0, 'host');
    assert.equal(await curl(sb, a.ns, `http://${sb.hostIp}:${host.port}/`), `host ${a.ip}`);
  } finally {
    await sb.destroy();
  }
  assert.deepEqual(mountsBelow(sb.tmpDir), []);
  assert.ok(!existsSync(sb.tmpDir));
  assert.deepEqual(cgroupsNamed(name), []);
  assert.equal(netnsList().filter((n) => n.startsWith(`${sb.prefix}-`)).length, 0);
  assert.ok(progId !== undefined && !progExists(progId), 'the program was detached and unpinned');
  for (const p of spawned) assert.ok(!alive(p.pid), `pid ${p.pid} gone`);
});

// A child test process that builds a cgroup sandbox, attaches a program to its cgroup and waits to be killed.
const CGROUP_CHILD = (prefix: string, obj: string) => `
const { spawnSync } = await import('node:child_process');
const { Sandbox } = await import(${JSON.stringify(SANDBOX_MODULE)});
const sb = await Sandbox.create({ prefix: ${JSON.stringify(prefix)}, cgroup: true });
const pod = await sb.addPod({ name: 'a' });
const p = sb.spawn(pod.ns, [process.execPath, '-e', ${JSON.stringify(SLEEPER)}]);
await p.waitForLine(/^ready$/, 5000);
const pin = sb.bpffsPath + '/allow';
for (const args of [['prog', 'load', ${JSON.stringify(obj)}, pin], ['cgroup', 'attach', sb.cgroupPath, 'connect4', 'pinned', pin, 'multi']]) {
  const r = spawnSync(${JSON.stringify(BPFTOOL)}, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
}
const [prog] = JSON.parse(spawnSync(${JSON.stringify(BPFTOOL)}, ['cgroup', 'show', sb.cgroupPath, '-j'], { encoding: 'utf8' }).stdout);
console.log('pid ' + p.pid + ' prog ' + prog.id + ' dir ' + sb.tmpDir);
setInterval(() => {}, 1e6);
`;

test('cgroup: a SIGTERM cleans up mounts, cgroup and programs; after a hard kill sweep(prefix) does', { skip: bpfGate.skip }, async () => {
  bpfGate.assertReady();
  const suffix = Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0');
  const termPrefix = `kiamr${suffix}`;
  const crashPrefix = `kiamc${suffix}`;
  const work = mkdtempSync(join(tmpdir(), 'kiam-bpfobj-'));
  let obj = '';
  let term: TrackedProcess | undefined;
  let crash: TrackedProcess | undefined;
  const start = (prefix: string) =>
    new TrackedProcess(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CGROUP_CHILD(prefix, obj)], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
    });
  const parse = (line: string) => {
    const [, pid, prog, dir] = /^pid (\d+) prog (\d+) dir (\S+)$/.exec(line) ?? [];
    return { pid: Number(pid), prog: Number(prog), dir: dir ?? '' };
  };
  try {
    obj = compileAllow(work);
    term = start(termPrefix);
    const t = parse(await term.waitForLine(/^pid \d+ prog/, 20_000));
    assert.ok(progExists(t.prog));
    assert.equal(cgroupsNamed(`${termPrefix}-pods`).length > 0, true);
    term.kill('SIGTERM');
    assert.equal((await term.exited).signal, 'SIGTERM');
    assert.ok(await waitGone(t.pid), 'the pod process was killed by the exit handler');
    assert.deepEqual(mountsBelow(t.dir), [], 'the exit handler unmounted cgroup2 and bpffs');
    assert.deepEqual(cgroupsNamed(`${termPrefix}-pods`), []);
    assert.ok(!progExists(t.prog), 'the program was detached and unpinned');
    assert.equal(netnsList().filter((n) => n.startsWith(`${termPrefix}-`)).length, 0);

    crash = start(crashPrefix);
    const c = parse(await crash.waitForLine(/^pid \d+ prog/, 20_000));
    crash.kill('SIGKILL');
    await crash.exited;
    assert.ok(alive(c.pid), 'the pod process survives a hard kill of its test process');
    assert.equal(cgroupOf(c.pid), `/${crashPrefix}-pods`);
    assert.equal(mountsBelow(c.dir).length, 2, 'the private mounts are left behind');
    assert.ok(progExists(c.prog));
    assert.deepEqual((await Sandbox.sweep(crashPrefix)).sort(), [`${crashPrefix}-a`, `${crashPrefix}-node`]);
    assert.ok(await waitGone(c.pid), 'sweep killed the orphan by PID');
    assert.deepEqual(mountsBelow(c.dir), []);
    assert.ok(!existsSync(c.dir));
    assert.deepEqual(cgroupsNamed(`${crashPrefix}-pods`), []);
    assert.ok(!progExists(c.prog), 'sweep detached the program');
    assert.deepEqual(readMounts().filter((m) => m.mountPoint.includes(`kiam-sweep-${crashPrefix}-`)), [], 'sweep\'s own mount is gone');
    assert.deepEqual(await Sandbox.sweep(crashPrefix), []);
  } finally {
    crash?.kill('SIGKILL');
    await Promise.all([term?.stop(2_000), crash?.exited]);
    await Sandbox.sweep(termPrefix);
    await Sandbox.sweep(crashPrefix);
    rmSync(work, { recursive: true, force: true });
  }
});
