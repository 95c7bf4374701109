/**
 * `kiam doctor` end to end: the production bundle runs `kiam doctor` inside the sandbox's node namespace,
 * beside a real `kiam agent --iptables`, the fake metadata service on 169.254.169.254 and the fake API server.
 * The agent reconciles only every hour here, so a jump the test deletes stays deleted while doctor looks.
 * iptables runs only inside the sandbox's node namespace.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { CheckRow } from '../../src/doctor/checks.ts';
import type { DoctorReport } from '../../src/doctor/run.ts';
import { BASE_ARN, Node } from './harness.ts';
import { Sandbox, type Pod } from './sandbox.ts';

const gate = Sandbox.gate(['curl', 'kubectl', 'conntrack', 'iptables-nft-restore', 'iptables-nft-save', 'iptables-legacy-save']);

describe('kiam doctor in a network-namespace sandbox', { skip: gate.skip }, () => {
  let sb: Sandbox;
  let node: Node;
  let a1: Pod;
  let c1: Pod;

  async function doctor(extra: string[] = []): Promise<{ code: number | null; report: DoctorReport; stderr: string }> {
    const r = await node.kiam(['doctor', '--json', '--metadata-endpoint', 'http://169.254.169.254', '--timeout', '3s', ...extra]);
    let report: DoctorReport;
    try {
      report = JSON.parse(r.stdout) as DoctorReport;
    } catch {
      assert.fail(`doctor printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
    }
    return { code: r.code, report, stderr: r.stderr };
  }

  const row = (report: DoctorReport, id: string): CheckRow => {
    const found = report.checks.find((c) => c.id === id);
    assert.ok(found, `no row ${id} in ${JSON.stringify(report.checks, null, 1)}`);
    return found;
  };

  before(async () => {
    gate.assertReady();
    sb = await Sandbox.create();
    node = await Node.start(sb);
    await node.createNamespace('team-a', `${BASE_ARN}app-.*`);
    a1 = await sb.addPod({ name: 'a1' });
    await node.createPod({ name: 'a1', namespace: 'team-a', ip: a1.ip, role: 'app-reader' });
    c1 = await sb.addPod({ name: 'c1' });
    await node.createPod({ name: 'c1', namespace: 'team-a', ip: c1.ip });
    await node.startAgent(['--reconcile-interval', '1h']);
    await node.agentLog('assumed role', { sessionName: 'team-a.a1' }, 10_000, 0);
  });

  after(async () => {
    await sb?.destroy();
  });

  it('reports all OK and lists the pods, roles and credentials the agent has', async () => {
    const { code, report, stderr } = await doctor();
    const notOk = report.checks.filter((c) => c.status !== 'ok');
    assert.deepEqual(notOk, [], `everything OK:\n${stderr}`);
    assert.equal(code, 0);
    assert.equal(report.ok, true);
    for (const id of ['iptables.backend', 'iptables.chain', 'iptables.jump', 'interfaces.cali+', 'metadata', 'apiserver', 'agent', 'agent.pods']) row(report, id);
    assert.match(row(report, 'interfaces.cali+').detail, new RegExp(`matches .*${a1.hostVeth}`));
    assert.match(row(report, 'apiserver').detail, /pods of node node-1 can be listed/);

    const agent = report.agent!;
    assert.equal(agent.readiness.ready, true);
    assert.equal(agent.config.nodeName, 'node-1');
    assert.deepEqual(agent.config.hostInterfaces, ['cali+']);
    assert.equal(agent.rules?.present, true);
    assert.deepEqual(
      agent.pods!.map((p) => [`${p.namespace}/${p.name}`, p.ip, p.answer, p.roleArn ?? null]),
      [['team-a/a1', a1.ip, 'role', `${BASE_ARN}app-reader`], ['team-a/c1', c1.ip, 'no-role', null]],
    );
    const issued = (await node.stsCalls()).filter((c) => c.sessionName === 'team-a.a1' && c.result === 'ok').at(-1)!;
    const identity = agent.identities!.find((i) => i.sessionName === 'team-a.a1');
    assert.equal(identity?.accessKeyId, issued.accessKeyId);
    assert.ok(Date.parse(identity!.expiration!) - Date.now() > 30 * 60_000);
    assert.doesNotMatch(JSON.stringify(report), /SecretAccessKey|secretAccessKey|sessionToken|SessionToken/);

    // The human-readable table says the same.
    const text = await node.kiam(['doctor', '--metadata-endpoint', 'http://169.254.169.254']);
    assert.equal(text.code, 0, text.stdout + text.stderr);
    assert.match(text.stdout, /^OK\s+PREROUTING jump\s+PREROUTING position 1 jumps to KIAM-METADATA$/m);
    assert.match(text.stdout, new RegExp(`^  team-a/a1\\s+${a1.ip.replace(/\./g, '\\.')}\\s+${BASE_ARN}app-reader$`, 'm'));
    assert.match(text.stdout, / 0 failure\(s\)\n$/);
  });

  it("refuses /debug/state to a pod, which reaches the metrics port on the node's IP", async () => {
    const r = await sb.exec(a1.ns, ['curl', '-sS', '--max-time', '3', '-o', '-', '-w', '\n%{http_code}', `http://${sb.hostIp}:9620/debug/state`], { env: { PATH: '/usr/bin:/bin' } });
    const [body, status] = [r.stdout.slice(0, r.stdout.lastIndexOf('\n')), r.stdout.slice(r.stdout.lastIndexOf('\n') + 1)];
    assert.equal(status, '403', r.stderr);
    assert.equal(body, 'forbidden\n');
    const metrics = await sb.exec(a1.ns, ['curl', '-sS', '--max-time', '3', '-o', '/dev/null', '-w', '%{http_code}', `http://${sb.hostIp}:9620/metrics`], { env: { PATH: '/usr/bin:/bin' } });
    assert.equal(metrics.stdout, '200', 'the rest of the ops port stays reachable');
  });

  it('exits 1 with a FAIL on the jump once the PREROUTING jump is deleted', async () => {
    const { report: before } = await doctor();
    const backend = before.agent!.rules!.backend!;
    assert.match(backend, /^(nft|legacy)$/);
    const iptables = `iptables-${backend}`;
    await sb.execOrThrow(sb.nodeNs, [iptables, '-w', '5', '-t', 'nat', '-D', 'PREROUTING', '-j', 'KIAM-METADATA']);
    try {
      const { code, report } = await doctor();
      assert.equal(code, 1);
      assert.equal(report.ok, false);
      const jump = row(report, 'iptables.jump');
      assert.equal(jump.status, 'fail');
      assert.match(jump.detail, /PREROUTING does not jump to KIAM-METADATA/);
      assert.match(jump.fix!, /--reconcile-interval \(3600s\)/);
      assert.equal(row(report, 'iptables.chain').status, 'ok', 'the chain itself is intact');
      // IPv4 is then not intercepted at all (the backstop still makes pods fail closed): both rows say so.
      assert.deepEqual(report.checks.filter((c) => c.status === 'fail').map((c) => c.id), ['intercept.ipv4', 'iptables.jump']);
    } finally {
      await sb.execOrThrow(sb.nodeNs, [iptables, '-w', '5', '-t', 'nat', '-I', 'PREROUTING', '1', '-j', 'KIAM-METADATA']);
    }
    const { code } = await doctor();
    assert.equal(code, 0, 'in sync again once the jump is back');
  });

  it('a --host-interface pattern that matches nothing fails (the agent has pods), with the fix in words', async () => {
    const { code, report } = await doctor(['--host-interface', 'eni+']);
    const eni = row(report, 'interfaces.eni+');
    assert.equal(eni.status, 'fail');
    assert.match(eni.detail, /matches no interface on this node/);
    assert.match(eni.fix!, /cali\+ \(Calico\)/);
    assert.equal(code, 1);
    const { code: bad, stderr } = await node.kiam(['doctor', '--host-interface', 'a b']).then((r) => ({ code: r.code, stderr: r.stderr }));
    assert.equal(bad, 2);
    assert.match(stderr, /--host-interface/);
  });
});
