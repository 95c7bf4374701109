/**
 * STS trouble and `--imdsv2 required`, end to end: the production bundle runs as `kiam agent --intercept iptables
 * --imdsv2 required` in a sandboxed node namespace, beside the fake STS (driven through its /_fake/ controls) and
 * the fake upstream metadata service; curl, botocore, the AWS CLI and the JS SDK v3 ask from pod namespaces
 * through the real DNAT.
 *
 * - IMDSv2 required: a GET without a token gets 401, for the role listing and for a pass-through path (which then
 *   never reaches the upstream service); the SDKs, which ask for a token first, still get the pod's role.
 * - A refusal (AccessDenied) for one role: the pod gets nothing, the agent logs the error once with the fix (not
 *   once per request), and /debug/state and `kiam doctor` show the identity's failures and error code.
 * - An outage (every AssumeRole answered 503 for 20 s): a pod holding credentials keeps being served, a pod that
 *   appears meanwhile gets a terse 503 and costs at most one call per 5 s, and gets its role within 15 s of STS
 *   answering again.
 * The tests share one node and run in order; the outage comes last, so that it disturbs no other identity's state.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { CheckRow } from '../../src/doctor/checks.ts';
import type { DoctorReport } from '../../src/doctor/run.ts';
import type { DebugIdentity, DebugState } from '../../src/doctor/state.ts';
import { BASE_ARN, clientCredentials, type Json, metricValue, Node, parse, podCurl, podEnv } from './harness.ts';
import { Sandbox, type Pod } from './sandbox.ts';

const gate = Sandbox.gate(['curl', 'kubectl', 'conntrack', 'iptables-nft-restore', 'iptables-nft-save', '/usr/bin/aws', '/usr/bin/python3']);
const botocore = spawnSync('/usr/bin/python3', ['-c', 'import botocore'], { stdio: 'ignore' }).status === 0;
const skip = gate.skip || (!botocore && process.env.CI !== 'true' ? 'python3-botocore is not installed' : false);

const LISTING = '/latest/meta-data/iam/security-credentials/';
const TOKEN = 'X-aws-ec2-metadata-token';
const NS = 'faults';
/** The fake STS answers AccessDenied for every role ARN containing `forbidden` (its denyForbidden default). */
const DENIED_ROLE = 'sts-forbidden';
const OUTAGE_MS = 20_000;
/** At most this many AssumeRole calls per second for an identity STS keeps failing. */
const MAX_CALL_RATE = 0.2;
/** Every identity is served again within this long of STS answering again. */
const RECOVERY_MS = 15_000;

/**
 * botocore's own instance-metadata provider, nothing else of its chain: token PUT (IMDSv2), role listing, document.
 * Prints {"accessKeyId", "method"} or {"error"}, never a secret.
 */
const BOTOCORE_IMDS = `
import json, sys
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher
try:
    creds = InstanceMetadataProvider(iam_role_fetcher=InstanceMetadataFetcher(timeout=2, num_attempts=1)).load()
except Exception as err:
    print(json.dumps({"error": str(err)})); sys.exit(3)
if creds is None:
    print(json.dumps({"error": "no credentials"})); sys.exit(3)
print(json.dumps({"accessKeyId": creds.get_frozen_credentials().access_key, "method": creds.method}))
`;

describe('kiam agent: STS outages and refusals, --imdsv2 required', { skip }, () => {
  let sb: Sandbox;
  let node: Node;
  const pods: Record<string, Pod> = {};
  const tokens: Record<string, string> = {};

  async function addPod(name: string, role: string): Promise<Pod> {
    const pod = await sb.addPod({ name });
    pods[name] = pod;
    await node.createPod({ name, namespace: NS, ip: pod.ip, role });
    return pod;
  }

  /** The access key id STS last issued for a pod's session (namespace.pod). */
  async function issuedKey(session: string): Promise<string> {
    const calls = (await node.stsCalls()).filter((c) => c.sessionName === session && c.result === 'ok');
    assert.ok(calls.length > 0, `STS issued nothing for session ${session}`);
    return calls.at(-1)!.accessKeyId!;
  }

  /** An IMDSv2 token minted for the pod (once; it is bound to the pod's IP and uid). */
  async function token(pod: Pod): Promise<string> {
    if (tokens[pod.name] === undefined) {
      const put = await podCurl(sb, pod, '/latest/api/token', { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '21600' } });
      assert.equal(put.status, 200, `token PUT from ${pod.name}: ${put.body}`);
      tokens[pod.name] = put.body;
    }
    return tokens[pod.name]!;
  }

  /** The pod's credential document with a token: its status, and the access key id when there is one. */
  async function document(pod: Pod, role: string): Promise<{ status: number; body: string; accessKeyId?: string }> {
    const r = await podCurl(sb, pod, `${LISTING}${role}`, { headers: { [TOKEN]: await token(pod) } });
    const accessKeyId = r.status === 200 ? ((JSON.parse(r.body) as Json).AccessKeyId as string) : undefined;
    return { status: r.status, body: r.body, ...(accessKeyId ? { accessKeyId } : {}) };
  }

  /** The agent's /debug/state (metrics port, loopback only), read with curl inside the node namespace. */
  async function debugState(): Promise<DebugState> {
    return JSON.parse(await sb.execOrThrow(sb.nodeNs, ['curl', '-sS', '--fail', '--max-time', '5', 'http://127.0.0.1:9620/debug/state'], { env: { PATH: process.env.PATH } })) as DebugState;
  }

  async function identity(session: string): Promise<DebugIdentity> {
    const found = (await debugState()).identities?.find((i) => i.sessionName === session);
    assert.ok(found, `no identity ${session} in /debug/state`);
    return found;
  }

  /** The agent's JSON log lines so far. */
  function agentLines(): Json[] {
    return node.agent!.lines().map(parse).filter((j): j is Json => j !== undefined);
  }

  /** Wait for the agent to log this message for this session (from line `from` on). */
  function sessionLog(msgs: RegExp, sessionName: string, timeoutMs: number, from: number): Promise<string> {
    return node.agent!.waitForLine((l) => {
      const j = parse(l);
      return j?.sessionName === sessionName && msgs.test(String(j.msg));
    }, timeoutMs, from);
  }

  before(async () => {
    gate.assertReady();
    assert.ok(botocore, 'python3-botocore is required (apt-get install python3-botocore)');
    sb = await Sandbox.create();
    node = await Node.start(sb);
    await node.createNamespace(NS, `${BASE_ARN}sts-.*`);
    await addPod('v2', 'sts-v2');
    await addPod('held', 'sts-held');
    await addPod('denied', DENIED_ROLE);
    await node.startAgent(['--imdsv2', 'required']);
    await Promise.all([
      node.agentLog('assumed role', { sessionName: `${NS}.v2` }),
      node.agentLog('assumed role', { sessionName: `${NS}.held` }),
      node.agentLog('assume role failed', { sessionName: `${NS}.denied` }),
    ]);
  });

  after(async () => {
    await sb?.destroy();
  });

  it('--imdsv2 required: a GET without a token gets 401, the role listing and a pass-through path alike; nothing reaches upstream', async () => {
    const pod = pods.v2!;
    const listing = await podCurl(sb, pod, LISTING);
    assert.equal(listing.status, 401, listing.body);
    assert.doesNotMatch(listing.body, /sts-v2|AccessKeyId/);
    assert.equal((await podCurl(sb, pod, `${LISTING}sts-v2`)).status, 401);

    // A path the agent itself never asks for, so that every upstream request for it is a pod's.
    const path = '/latest/meta-data/ami-id';
    const upstream = async () => (await node.upstreamRequests()).filter((r) => r.path === path).length;
    assert.equal(await upstream(), 0);
    const tokenless = await podCurl(sb, pod, path);
    assert.equal(tokenless.status, 401, tokenless.body);
    assert.equal(await upstream(), 0, 'a token-less pass-through GET never reaches the upstream service');
    // The same request with a token passes through (the check above would see it).
    const withToken = await podCurl(sb, pod, path, { headers: { [TOKEN]: await token(pod) } });
    assert.equal(withToken.status, 200);
    assert.match(withToken.body, /^ami-/);
    assert.equal(await upstream(), 1);
  });

  it('--imdsv2 required: curl with a token, botocore, the AWS CLI and the JS SDK v3 get the pod role', async () => {
    const pod = pods.v2!;
    const key = await issuedKey(`${NS}.v2`);
    const [boto, cli, js] = await Promise.all([
      sb.exec(pod.ns, ['/usr/bin/python3', '-c', BOTOCORE_IMDS], { env: podEnv(sb), timeoutMs: 30_000 }),
      clientCredentials(sb, pod, 'aws-cli'),
      clientCredentials(sb, pod, 'js-sdk'),
    ]);
    const botoOut = parse(boto.stdout.trim());
    assert.deepEqual(botoOut, { accessKeyId: key, method: 'iam-role' }, `${boto.stdout}\n${boto.stderr}`);
    assert.equal(cli.accessKeyId, key, cli.output);
    assert.equal(js.accessKeyId, key, js.output);
    assert.equal((await document(pod, 'sts-v2')).accessKeyId, key, 'curl with a token');
  });

  it('a refusal (AccessDenied): no credentials, the error logged once with the fix, failures and code in /debug/state and doctor', async () => {
    const pod = pods.denied!;
    const session = `${NS}.denied`;
    const roleArn = `${BASE_ARN}${DENIED_ROLE}`;
    for (let i = 0; i < 5; i++) {
      const doc = await document(pod, DENIED_ROLE);
      assert.equal(doc.status, 503, `request ${i}`);
      assert.doesNotMatch(doc.body, /AccessDenied|authorized|AccessKeyId|trust/, 'the pod is told nothing of why');
    }

    // Every warning or error about the role is logged once, not per request; the STS error with its fix.
    const loud = agentLines().filter((j) => Number(j.level) >= 40 && (j.roleArn === roleArn || j.role === roleArn));
    const perMsg = new Map<string, number>();
    for (const j of loud) perMsg.set(String(j.msg), (perMsg.get(String(j.msg)) ?? 0) + 1);
    assert.deepEqual([...perMsg].filter(([, n]) => n > 1), [], `logged more than once: ${JSON.stringify(loud)}`);
    const failed = loud.filter((j) => j.msg === 'assume role failed');
    assert.equal(failed.length, 1, JSON.stringify(loud));
    assert.equal(failed[0]!.level, 50);
    assert.equal(failed[0]!.sessionName, session);
    assert.equal(failed[0]!.code, 'AccessDenied');
    assert.equal(failed[0]!.retryable, false);
    assert.match(String(failed[0]!.fix), /trust policy must allow the agent's role sts:AssumeRole/);

    const callsBefore = (await node.stsCalls()).filter((c) => c.sessionName === session);
    const state = await identity(session);
    const callsAfter = (await node.stsCalls()).filter((c) => c.sessionName === session);
    assert.deepEqual(new Set(callsAfter.map((c) => c.result)), new Set(['AccessDenied']));
    assert.ok(state.consecutiveFailures! >= 1 && state.consecutiveFailures! >= callsBefore.length && state.consecutiveFailures! <= callsAfter.length,
      `consecutiveFailures ${state.consecutiveFailures} for ${callsBefore.length}..${callsAfter.length} calls`);
    assert.equal(state.lastErrorCode, 'AccessDenied');
    assert.equal(state.lastError?.code, 'AccessDenied');
    assert.equal(state.lastError?.retryable, false);
    assert.equal(state.accessKeyId, null);
    assert.equal(state.lastSuccess, null);

    const r = await node.kiam(['doctor', '--json', '--metadata-endpoint', 'http://169.254.169.254', '--timeout', '3s']);
    const report = JSON.parse(r.stdout) as DoctorReport;
    const row = report.checks.find((c: CheckRow) => c.id === `identity.${session}.${roleArn}`);
    assert.ok(row, `no credential row for ${session}: ${r.stdout}`);
    assert.equal(row.status, 'fail');
    assert.match(row.detail, /no credentials; STS AccessDenied: .*\(\d+ failure\(s\), next try .*\); not retryable/);
    assert.match(row.fix!, /trust policy/);
    assert.equal(r.code, 1);
  });

  it('an STS outage: the pod holding credentials is served, a new pod gets a terse 503 at ≤ 0.2 calls/s, then its role within 15 s', async () => {
    const held = pods.held!;
    const heldKey = await issuedKey(`${NS}.held`);
    assert.equal((await document(held, 'sts-held')).accessKeyId, heldKey);

    await node.configureSts({ failNext: 1_000_000, failCode: 'ServiceUnavailable' });
    const outageStart = Date.now();
    let healed = false;
    try {
      let from = node.agent!.lineCount;
      const late = await addPod('late', 'sts-late');
      const first = parse(await sessionLog(/^assume role failed$/, `${NS}.late`, 10_000, from))!;
      assert.equal(first.code, 'ServiceUnavailable');
      assert.equal(first.retryable, true);
      assert.match(String(first.fix), /STS is failing on its side/);

      const answers = { held: new Map<string, number>(), late: new Map<string, number>() };
      const count = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
      while (Date.now() - outageStart < OUTAGE_MS) {
        const [h, l] = await Promise.all([document(held, 'sts-held'), document(late, 'sts-late')]);
        count(answers.held, `${h.status} ${h.accessKeyId ?? h.body}`);
        assert.doesNotMatch(l.body, /ServiceUnavailable|STS|AccessKeyId/, 'terse');
        count(answers.late, String(l.status));
      }
      assert.deepEqual([...answers.held.keys()], [`200 ${heldKey}`], 'the pod holding credentials keeps being served');
      assert.deepEqual([...answers.late.keys()], ['503']);
      assert.ok(answers.late.get('503')! >= 10, `${answers.late.get('503')} requests from the new pod during the outage`);
      const during = await identity(`${NS}.late`);
      assert.ok(during.consecutiveFailures! >= 1);
      assert.equal(during.lastErrorCode, 'ServiceUnavailable');
      assert.equal(during.lastError?.retryable, true);
      // (The refused identity may have been retried into the outage too: at least the new pod's.)
      assert.ok(metricValue(await node.metrics(), 'kiam_sts_failing_identities', { kind: 'retryable' }) >= 1);

      from = node.agent!.lineCount;
      const outageEnd = Date.now();
      await node.configureSts({ failNext: 0 });
      healed = true;
      await sessionLog(/^assumed role/, `${NS}.late`, RECOVERY_MS + 1_000, from).catch((err: Error) => {
        assert.fail(`STS answers again, but the new pod's identity was not fetched within ${RECOVERY_MS} ms: ${err.message.split('\n')[0]}`);
      });
      const after = await document(late, 'sts-late');
      const recoveryMs = Date.now() - outageEnd;
      assert.equal(after.status, 200, after.body);
      assert.equal(after.accessKeyId, await issuedKey(`${NS}.late`));
      assert.ok(recoveryMs <= RECOVERY_MS, `served ${recoveryMs} ms after STS answered again`);

      const calls = await node.stsCalls();
      const lateCalls = calls.filter((c) => c.sessionName === `${NS}.late` && c.time >= outageStart && c.time <= outageEnd);
      const rate = lateCalls.length / ((outageEnd - outageStart) / 1000);
      assert.ok(lateCalls.length >= 2, `the failing identity was retried during the outage: ${lateCalls.length} call(s)`);
      assert.ok(rate <= MAX_CALL_RATE, `${lateCalls.length} calls in ${outageEnd - outageStart} ms: ${rate.toFixed(3)}/s`);
      assert.deepEqual(new Set(lateCalls.map((c) => c.result)), new Set(['ServiceUnavailable']));
      assert.deepEqual(calls.filter((c) => c.sessionName === `${NS}.held` && c.time >= outageStart), [], 'no call for the held identity');
    } finally {
      if (!healed) await node.configureSts({ failNext: 0 }).catch(() => {});
    }
  });
});
