// Smoke test of the network-namespace sandbox: Calico-like routing, a DNAT rule inside the node namespace,
// pod IP reuse, process tracking by PID and cleanup (normal, on SIGTERM, and after a hard crash via sweep).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { METADATA_IP, Sandbox, TrackedProcess, findBinary } from './sandbox.ts';

const gate = Sandbox.gate(['curl']);
const CURL = findBinary('curl') ?? 'curl';
const IP = findBinary('ip') ?? 'ip';
const SANDBOX_MODULE = fileURLToPath(new URL('./sandbox.ts', import.meta.url));

// A tiny HTTP server: answers "<label> <remoteAddress>", prints "listening <port>" once bound.
const ECHO_SERVER = `
const [host, port, label] = process.argv.slice(1);
const srv = require('node:http').createServer((q, r) => r.end(label + ' ' + q.socket.remoteAddress + '\\n'));
srv.listen(Number(port), host, () => console.log('listening ' + srv.address().port));
process.on('SIGTERM', () => srv.close(() => process.exit(0)));
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

async function startEcho(sb: Sandbox, host: string, port: number, label: string): Promise<{ proc: TrackedProcess; port: number }> {
  const proc = sb.spawn(sb.nodeNs, [process.execPath, '-e', ECHO_SERVER, host, String(port), label]);
  const line = await proc.waitForLine(/^listening \d+$/, 5_000);
  return { proc, port: Number(line.split(' ')[1]) };
}

async function curl(sb: Sandbox, ns: string, url: string): Promise<string> {
  const out = await sb.execOrThrow(ns, [CURL, '-sS', '--max-time', '3', url], { timeoutMs: 5_000 });
  return out.trim();
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
