/**
 * The agent end to end: the production bundle runs as `kiam agent --iptables` in a sandboxed node namespace,
 * pods sit behind cali veths in their own namespaces, and real clients (curl, the AWS CLI v2, botocore, the
 * JS SDK v3) ask http://169.254.169.254 for credentials through the real DNAT path. The fake upstream metadata
 * service on the node's 169.254.169.254 holds the NODE's credentials (ASIANODE…): no pod may ever see them.
 * The tests run in order and share one node; each states what it leaves behind for the next.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { BASE_ARN, CLIENTS, clientCredentials, curlCredentials, Node, podCurl, REPO } from './harness.ts';
import { Sandbox, type Pod } from './sandbox.ts';

const gate = Sandbox.gate(['curl', 'kubectl', 'conntrack', 'iptables-nft-restore', 'iptables-nft-save', 'iptables-legacy-save', '/usr/bin/aws', '/usr/bin/python3']);
const botocore = spawnSync('/usr/bin/python3', ['-c', 'import botocore'], { stdio: 'ignore' }).status === 0;
const skip = gate.skip || (!botocore && process.env.CI !== 'true' ? 'python3-botocore is not installed' : false);

const NODE_KEY = /ASIANODE/;

describe('kiam agent in a network-namespace sandbox', { skip }, () => {
  let sb: Sandbox;
  let node: Node;
  const pods: Record<string, Pod> = {};
  const uids: Record<string, string> = {};

  /** The access key id STS issued for a pod's session (namespace.pod). */
  async function issuedKey(session: string): Promise<string> {
    const calls = (await node.stsCalls()).filter((c) => c.sessionName === session && c.result === 'ok');
    assert.ok(calls.length > 0, `STS issued nothing for session ${session}`);
    return calls.at(-1)!.accessKeyId!;
  }

  async function addPod(name: string, namespace: string, opts: { role?: string; node?: string; ip?: string } = {}): Promise<Pod> {
    const pod = await sb.addPod({ name, ip: opts.ip });
    pods[name] = pod;
    uids[name] = await node.createPod({ name, namespace, ip: pod.ip, role: opts.role, node: opts.node });
    return pod;
  }

  before(async () => {
    gate.assertReady();
    assert.ok(botocore, 'python3-botocore is required (apt-get install python3-botocore)');
    sb = await Sandbox.create();
    node = await Node.start(sb);
    await node.createNamespace('team-a', `${BASE_ARN}app-.*`);
    await node.createNamespace('team-b', `${BASE_ARN}b-role`);
    await node.createNamespace('locked');
    await addPod('a1', 'team-a', { role: 'app-reader' });
    await addPod('b1', 'team-b', { role: `${BASE_ARN}b-role` });
    await addPod('c1', 'team-a');
    await addPod('d1', 'locked', { role: 'app-reader' });
    // A pod the API places on another node: the node-scoped watch never sees it, so its IP is unknown here.
    await addPod('x1', 'team-a', { role: 'app-writer', node: 'node-2' });
    await node.startAgent(['--reconcile-interval', '1s', '--log-level', 'debug', '--pod-wait-timeout', '300ms']);
  });

  after(async () => {
    await sb?.destroy();
  });

  it('gives each pod its own role with curl (IMDSv2), the AWS CLI v2, botocore and the JS SDK v3', async () => {
    // "ready" does not wait for the prefetches (they run beside the rule install): wait for both, from the first line.
    await node.agentLog('assumed role', { sessionName: 'team-a.a1' }, 10_000, 0);
    await node.agentLog('assumed role', { sessionName: 'team-b.b1' }, 10_000, 0);
    const a1 = await issuedKey('team-a.a1');
    const b1 = await issuedKey('team-b.b1');
    assert.notEqual(a1, b1);
    for (const client of CLIENTS) {
      const fromA = await clientCredentials(sb, pods.a1!, client);
      assert.equal(fromA.accessKeyId, a1, `${client} in a1: ${fromA.output}`);
      const fromB = await clientCredentials(sb, pods.b1!, client);
      assert.equal(fromB.accessKeyId, b1, `${client} in b1: ${fromB.output}`);
    }
    const { listing, document } = await curlCredentials(sb, pods.a1!);
    assert.equal(listing.body, 'app-reader');
    assert.equal(document?.Code, 'Success');
    assert.match(String(document?.Expiration), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.ok(Date.parse(String(document?.Expiration)) - Date.now() >= 30 * 60_000, 'at least 30 minutes of lifetime');
    // Another pod's role by name: not found.
    const other = await podCurl(sb, pods.a1!, '/latest/meta-data/iam/security-credentials/b-role');
    assert.equal(other.status, 404);
    assert.doesNotMatch(other.body, /AccessKeyId/);
  });

  it('gives an unannotated pod, a pod its namespace does not permit and a pod of another node nothing, never the node role', async () => {
    // x1 is a pod of another node: its source is not a pod of this node, so every request is refused (403).
    const expected: Record<string, number> = { c1: 404, d1: 403, x1: 403 };
    for (const [name, status] of Object.entries(expected)) {
      const { listing } = await curlCredentials(sb, pods[name]!);
      assert.equal(listing.status, status, `${name} listing`);
      assert.doesNotMatch(listing.body, NODE_KEY);
      for (const client of CLIENTS) {
        const got = await clientCredentials(sb, pods[name]!, client);
        assert.equal(got.accessKeyId, undefined, `${client} in ${name} got credentials: ${got.output}`);
        assert.doesNotMatch(got.output, NODE_KEY, `${client} in ${name} saw the node's credentials`);
      }
    }
    const podIps = new Set(Object.values(pods).map((p) => p.ip));
    const upstream = await node.upstreamRequests();
    assert.deepEqual(upstream.filter((r) => podIps.has(r.remoteAddress)), [], 'no pod reached the real metadata service');
    assert.deepEqual(upstream.filter((r) => /security-credentials/.test(r.path)), [], 'nobody fetched the node role');
    assert.equal((await node.stsCalls()).filter((c) => /locked|x1/.test(c.sessionName)).length, 0, 'no STS call for denied pods');
  });

  it('passes other paths through with its own session, and the deny list holds', async () => {
    const pod = pods.c1!;
    const token = (await podCurl(sb, pod, '/latest/api/token', { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '60' } })).body;
    const headers = { 'X-aws-ec2-metadata-token': token, 'X-Forwarded-For': '10.0.0.1' };
    const id = await podCurl(sb, pod, '/latest/meta-data/instance-id', { headers });
    assert.equal(id.status, 200);
    assert.match(id.body, /^i-[0-9a-f]+$/);
    for (const denied of ['/latest/user-data', '/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance']) {
      const answer = await podCurl(sb, pod, denied, { headers });
      assert.equal(answer.status, 404, denied);
      assert.doesNotMatch(answer.body, /secret|ASIANODE/);
    }
    const upstream = await node.upstreamRequests();
    const forwarded = upstream.filter((r) => r.path.endsWith('/instance-id'));
    assert.equal(forwarded.length, 1);
    assert.equal(forwarded[0]!.headers['x-forwarded-for'], undefined);
    assert.notEqual(forwarded[0]!.headers['x-aws-ec2-metadata-token'], token, 'the pod token never goes upstream');
    assert.ok(forwarded[0]!.headers['x-aws-ec2-metadata-token'], 'the agent uses its own IMDSv2 session');
    assert.deepEqual(upstream.filter((r) => /user-data|identity-credentials/.test(r.path)), []);
  });

  it('serves a pod added at runtime from the prefetched cache', async () => {
    const from = node.agent!.lineCount;
    uids.e1 = await node.createPod({ name: 'e1', namespace: 'team-a', ip: '10.77.1.60', role: 'app-writer' });
    await node.agentLog('assumed role', { sessionName: 'team-a.e1' }, 10_000, from);
    const callsBefore = (await node.stsCalls()).length;
    // From now on STS takes longer than any SDK waits: only a warm cache can answer in time.
    await node.configureSts({ delayMs: 3000 });
    try {
      pods.e1 = await sb.addPod({ name: 'e1', ip: '10.77.1.60' });
      const got = await clientCredentials(sb, pods.e1, 'js-sdk');
      assert.equal(got.accessKeyId, await issuedKey('team-a.e1'), got.output);
      assert.equal((await node.stsCalls()).length, callsBefore, 'no STS call on the request path');
    } finally {
      await node.configureSts({ delayMs: 0 }); // also when it failed: the later tests share this STS
    }
  });

  it('never gives a new pod on a re-used IP the old pod\'s role, nor honours the old pod\'s token', async () => {
    const ip = pods.a1!.ip;
    const oldToken = (await curlCredentials(sb, pods.a1!)).token;
    assert.ok(oldToken);
    const from = node.agent!.lineCount;
    await node.deletePod('team-a', 'a1');
    await node.agentLog('pod left the index', { podUid: uids.a1! }, 10_000, from);
    await sb.removePod(pods.a1!);
    // The IP goes to a pod of another namespace with another role.
    const a2 = await addPod('a2', 'team-b', { ip, role: 'b-role' });
    assert.equal(a2.ip, ip);
    const stale = await podCurl(sb, a2, '/latest/meta-data/iam/security-credentials/', { headers: { 'X-aws-ec2-metadata-token': oldToken } });
    assert.equal(stale.status, 401, 'a token minted for the old pod is refused');
    const { listing, document } = await curlCredentials(sb, a2);
    assert.equal(listing.body, 'b-role');
    assert.equal(document?.AccessKeyId, await issuedKey('team-b.a2'));
    assert.notEqual(document?.AccessKeyId, await issuedKey('team-a.a1'));
  });

  it('puts the rules back after they are deleted by hand', async () => {
    const from = node.agent!.lineCount;
    // Both deletions in one transaction: as two commands, a reconcile (every 1 s) could repair between them, and the
    // flush would then undo the repair after the log line this test waits for.
    await sb.execOrThrow(sb.nodeNs, ['iptables-nft-restore', '--noflush'], { input: '*nat\n-D PREROUTING -j KIAM-METADATA\n-F KIAM-METADATA\nCOMMIT\n' });
    await node.agentLog('interception rules repaired', {}, 10_000, from);
    const save = await sb.execOrThrow(sb.nodeNs, ['iptables-nft-save', '-t', 'nat']);
    assert.match(save, /-A PREROUTING -j KIAM-METADATA/);
    assert.match(save, /-A KIAM-METADATA -d 169\.254\.169\.254\/32 -i cali\+ -p tcp -m tcp --dport 80 .*-j DNAT --to-destination 10\.77\.0\.1:8181/);
    const got = await clientCredentials(sb, pods.b1!, 'curl');
    assert.equal(got.accessKeyId, await issuedKey('team-b.b1'));
    const metrics = await sb.execOrThrow(sb.nodeNs, ['curl', '-sS', 'http://127.0.0.1:9620/metrics']);
    assert.match(metrics, /kiam_iptables_reconciles_total\{result="repaired"\} [1-9]/);
    assert.match(metrics, /kiam_iptables_rules_present 1/);
  });

  it('exits 0 on SIGTERM, and pods then fail closed instead of reaching the real service', async () => {
    const ready = await sb.execOrThrow(sb.nodeNs, ['curl', '-sS', 'http://127.0.0.1:9620/readyz']);
    assert.match(ready, /"ready":true/);
    const agent = node.agent!;
    agent.kill('SIGTERM');
    const exit = await agent.exited;
    assert.deepEqual(exit, { code: 0, signal: null });
    for (const pod of [pods.b1!, pods.c1!]) {
      const answer = await podCurl(sb, pod, '/latest/meta-data/iam/security-credentials/');
      assert.equal(answer.status, 0, 'no answer at all');
      assert.equal(answer.curlCode, 7, 'connection refused: the DNAT still points at the stopped agent');
      const got = await clientCredentials(sb, pod, 'botocore');
      assert.equal(got.accessKeyId, undefined);
      assert.doesNotMatch(got.output, NODE_KEY);
    }
    const podIps = new Set(Object.values(pods).map((p) => p.ip));
    assert.deepEqual((await node.upstreamRequests()).filter((r) => podIps.has(r.remoteAddress)), []);
  });

  it('`kiam iptables status` reports the rules and `kiam iptables remove` leaves no trace', async () => {
    const kiam = (...args: string[]) => sb.exec(sb.nodeNs, [process.execPath, `${REPO}/bin/kiam.mjs`, 'iptables', ...args], { env: { PATH: process.env.PATH } });
    const status = await kiam('status', '--json', '--host-ip', sb.hostIp, '--host-interface', 'cali+');
    assert.equal(status.code, 0, status.stderr);
    const parsed = JSON.parse(status.stdout) as { backend: string; inSync: boolean; jumpPosition: number };
    assert.deepEqual({ backend: parsed.backend, inSync: parsed.inSync, jumpPosition: parsed.jumpPosition }, { backend: 'nft', inSync: true, jumpPosition: 1 });
    const removed = await kiam('remove');
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal((await kiam('remove')).code, 0, 'remove is idempotent');
    for (const save of ['iptables-nft-save', 'iptables-legacy-save']) {
      const text = await sb.execOrThrow(sb.nodeNs, [save, '-t', 'nat']);
      assert.doesNotMatch(text, /KIAM|169\.254\.169\.254/, save);
    }
  });
});
