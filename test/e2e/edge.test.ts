/**
 * The peers' top complaints, end to end: the production bundle runs as `kiam agent --iptables` in its own
 * sandboxed node namespace (default --pod-wait-timeout of 800 ms), and real clients inside pod namespaces reach
 * it through the real DNAT on 169.254.169.254.
 *
 * The agent runs with `--session-name {namespace}.{serviceAccount}`: every pod here has the service account
 * `default`, so pods of one namespace with one role share one identity, unless an external ID sets them apart.
 * That is what makes the external-ID test mean something (kube2iam keeps the external ID out of its cache key).
 * The tests run in order on one node; the last one stops the agent and restarts it on the legacy backend.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BASE_ARN, clientCredentials, curlCredentials, type Json, metricValue, Node, NODE_NAME, parse, podCurl, podEnv, podHttp, REPO } from './harness.ts';
import { Sandbox, type Pod, type TrackedProcess } from './sandbox.ts';

const gate = Sandbox.gate(['curl', 'kubectl', 'conntrack', 'iptables-nft-restore', 'iptables-nft-save', 'iptables-legacy-save', 'iptables-legacy-restore', 'sh']);

const NODE_KEY = /ASIANODE/;
const TOKEN_TTL = 'x-aws-ec2-metadata-token-ttl-seconds';
const TOKEN = 'x-aws-ec2-metadata-token';
const LISTING = '/latest/meta-data/iam/security-credentials/';

describe('kiam agent: pods the API does not know yet, hostNetwork and ambiguous IPs, policy changes, external IDs, IMDSv2, legacy iptables', { skip: gate.skip }, () => {
  let sb: Sandbox;
  let node: Node;
  const pods: Record<string, Pod> = {};
  const uids: Record<string, string> = {};

  /** The access key id STS last issued for a role (name) and session, with or without an external ID. */
  async function issuedKey(role: string, session: string, externalId?: string): Promise<string> {
    const calls = (await node.stsCalls()).filter(
      (c) => c.roleArn === `${BASE_ARN}${role}` && c.sessionName === session && c.externalId === externalId && c.result === 'ok',
    );
    assert.ok(calls.length > 0, `STS issued nothing for ${role} / ${session} / external ID ${externalId}`);
    return calls.at(-1)!.accessKeyId!;
  }

  /** A pod's namespace in the sandbox and, unless apiObject is false, its object in the API. */
  async function addPod(name: string, namespace: string, opts: { role?: string; externalId?: string; apiObject?: boolean } = {}): Promise<Pod> {
    const pod = await sb.addPod({ name });
    pods[name] = pod;
    if (opts.apiObject !== false) uids[name] = await node.createPod({ name, namespace, ip: pod.ip, role: opts.role, externalId: opts.externalId });
    return pod;
  }

  before(async () => {
    gate.assertReady();
    sb = await Sandbox.create();
    node = await Node.start(sb);
    await node.createNamespace('early', `${BASE_ARN}early-role`);
    await node.createNamespace('hosts', `${BASE_ARN}.*`);
    await node.createNamespace('flip');
    await node.createNamespace('ext', `${BASE_ARN}ext-role`);
    await node.createNamespace('v2', `${BASE_ARN}v2-.*`);

    // hostNetwork pods share the node's IP, and their objects may name any IP: none of them may ever be resolved.
    await addPod('h1', 'hosts', { apiObject: false });
    await addPod('h2', 'hosts', { role: 'h2-role' });
    uids['hn-node'] = await node.createPod({ name: 'hn-node', namespace: 'hosts', ip: sb.hostIp, role: 'host-role', hostNetwork: true });
    uids['hn-h1'] = await node.createPod({ name: 'hn-h1', namespace: 'hosts', ip: pods.h1!.ip, role: 'host-role', hostNetwork: true });
    uids['hn-h2'] = await node.createPod({ name: 'hn-h2', namespace: 'hosts', ip: pods.h2!.ip, role: 'host-role', hostNetwork: true });
    // Two live pod objects on one IP: ambiguous.
    await addPod('am', 'hosts', { apiObject: false });
    uids.amb1 = await node.createPod({ name: 'amb1', namespace: 'hosts', ip: pods.am!.ip, role: 'amb-one' });
    uids.amb2 = await node.createPod({ name: 'amb2', namespace: 'hosts', ip: pods.am!.ip, role: 'amb-two' });

    await addPod('f1', 'flip', { role: 'flip-role' });
    await addPod('x-plain', 'ext', { role: 'ext-role' });
    await addPod('x-plain2', 'ext', { role: 'ext-role' });
    await addPod('x-ext', 'ext', { role: 'ext-role', externalId: 'ext-id-0042' });
    await addPod('va', 'v2', { role: 'v2-a' });
    await addPod('vb', 'v2', { role: 'v2-b' });

    // Default --pod-wait-timeout (800 ms) on purpose.
    await node.startAgent(['--reconcile-interval', '1s', '--log-level', 'debug', '--session-name', '{namespace}.{serviceAccount}']);
  });

  after(async () => {
    await sb?.destroy();
  });

  /**
   * Starts the JS SDK's own IMDS provider in a pod and resolves once it has SENT its role listing request. Node's HTTP
   * debug trace (NODE_DEBUG=http, stderr merged into stdout so it can be waited for line by line) logs `outgoing
   * message end.` for each request: PUT token, GET listing, GET document. The second one is the listing, which the
   * agent can only answer once it knows the pod. Returns the client and when the listing was seen going out.
   */
  async function sdkAwaitingListing(pod: Pod): Promise<{ client: TrackedProcess; sentAt: number }> {
    const client = sb.spawn(pod.ns, ['/bin/sh', '-c', 'exec "$0" "$@" 2>&1', process.execPath, join(REPO, 'test/e2e/clients/js-sdk.mjs')], {
      cwd: REPO,
      env: podEnv(sb, { NODE_DEBUG: 'http', NODE_OPTIONS: '--disable-warning=NodeVersionSupportWarning' }),
    });
    let sent = 0;
    await client.waitForLine((line) => /^HTTP \d+: outgoing message end\.$/.test(line) && ++sent === 2, 10_000);
    return { client, sentAt: Date.now() };
  }

  /** The SDK client's outcome: {accessKeyId} or {error}; asserts a clean exit. */
  async function sdkResult(client: TrackedProcess): Promise<Json | undefined> {
    const exit = await client.exited;
    const result = client.lines().map(parse).find((j) => j && ('accessKeyId' in j || 'error' in j));
    assert.deepEqual(exit, { code: 0, signal: null }, `js-sdk client: ${JSON.stringify(result)}`);
    return result;
  }

  /**
   * The pod became known to the agent only after the client had sent its listing request, and that request was
   * answered from the watch within the wait, with no live GET of its own. The SDK's token PUT before it came from a
   * source no pod held yet: it waited, was looked up live (not found) and refused with 403, and the SDK went on
   * without a token (IMDSv1), as the JS SDK v3 does on a 403 to its token request.
   */
  async function assertAnsweredAfterWait(uid: string, sentAt: number, from: number, metricsBefore: string): Promise<void> {
    const indexed = await node.agentLog('pod indexed', { podUid: uid, answer: 'role' }, 5_000, from);
    const waitedMs = Date.parse(String(indexed.time)) - sentAt;
    assert.ok(waitedMs >= 0, `indexed at ${String(indexed.time)}, listing sent at ${new Date(sentAt).toISOString()}`);
    const metricsAfter = await node.metrics();
    const delta = (name: string, labels: Record<string, string> = {}) => metricValue(metricsAfter, name, labels) - metricValue(metricsBefore, name, labels);
    const listing = { handler: 'listing', code: '200' };
    assert.equal(delta('kiam_metadata_request_duration_seconds_count', listing), 1);
    assert.equal(delta('kiam_metadata_request_duration_seconds_count', { handler: 'foreign', code: '403' }), 1, 'the token PUT');
    assert.equal(delta('kiam_pod_ip_unknown_total'), 1, 'the token PUT only');
    assert.equal(delta('kiam_pod_live_lookups_total', { result: 'not-found' }), 1, 'the token PUT only');
    for (const result of ['found', 'watch-caught-up', 'error']) assert.equal(delta('kiam_pod_live_lookups_total', { result }), 0, `live look-up ${result}`);
  }

  it('gives a pod that asks before the API server has it its own role, once the watch reports it', async () => {
    const pod = await addPod('early', 'early', { apiObject: false });
    const metricsBefore = await node.metrics();
    const { client, sentAt } = await sdkAwaitingListing(pod);
    const from = node.agent!.lineCount;
    uids.early = await node.createPod({ name: 'early', namespace: 'early', ip: pod.ip, role: 'early-role' });
    assert.equal((await sdkResult(client))?.accessKeyId, await issuedKey('early-role', 'early.default'));
    await assertAnsweredAfterWait(uids.early, sentAt, from, metricsBefore);
  });

  it('…and when the pod object came first without an IP, and the IP comes with a status update (as from the kubelet)', async () => {
    const pod = await addPod('early2', 'early', { apiObject: false });
    const manifest = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'early2', namespace: 'early', annotations: { 'iam.amazonaws.com/role': 'early-role' } },
      spec: { nodeName: NODE_NAME, containers: [{ name: 'app', image: 'example/app:1' }] },
      status: { phase: 'Pending' },
    };
    uids.early2 = (JSON.parse(await node.kubectl(['create', '-f', '-', '-o', 'json'], JSON.stringify(manifest))) as { metadata: { uid: string } }).metadata.uid;
    const metricsBefore = await node.metrics();
    const { client, sentAt } = await sdkAwaitingListing(pod);
    const from = node.agent!.lineCount;
    const status = { status: { phase: 'Running', podIP: pod.ip, podIPs: [{ ip: pod.ip }] } };
    await node.kubectl(['patch', 'pod', '-n', 'early', 'early2', '--subresource', 'status', '--type', 'merge', '-p', JSON.stringify(status)]);
    // Same role and session name as `early`: one identity, one key.
    assert.equal((await sdkResult(client))?.accessKeyId, await issuedKey('early-role', 'early.default'));
    await assertAnsweredAfterWait(uids.early2, sentAt, from, metricsBefore);
  });

  it('never resolves a hostNetwork pod, whatever IP it claims, and fails closed on two live pods with one IP', async () => {
    const before = await node.metrics();
    // The node itself (a hostNetwork pod's source address is the host IP) asks the agent directly.
    const fromNode = (path: string) =>
      sb.exec(sb.nodeNs, ['curl', '-sS', '--max-time', '5', '--interface', sb.hostIp, '-o', '-', '-w', '\n%{http_code}', `http://${sb.hostIp}:8181${path}`], {
        env: { PATH: process.env.PATH },
      });
    const [listing, doc, h1, h2, am] = await Promise.all([
      fromNode(LISTING),
      fromNode(`${LISTING}host-role`),
      podCurl(sb, pods.h1!, LISTING),
      curlCredentials(sb, pods.h2!),
      podCurl(sb, pods.am!, LISTING),
    ]);
    for (const [what, r] of [['listing', listing], ['document', doc]] as const) {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /\n403$/, `node → agent ${what}: ${r.stdout}`);
      assert.doesNotMatch(r.stdout, /host-role|AccessKeyId|ASIA/);
    }
    assert.equal(h1.status, 403, 'a pod whose IP only a hostNetwork pod object claims');
    assert.doesNotMatch(h1.body, /host-role/);
    // A pod with its own object keeps its own role beside a hostNetwork object on its IP: not ambiguous.
    assert.equal(h2.listing.body, 'h2-role');
    assert.equal(h2.document?.AccessKeyId, await issuedKey('h2-role', 'hosts.default'));
    assert.equal(am.status, 403, 'two live pods on one IP');
    assert.doesNotMatch(am.body, /amb-|AccessKeyId/);

    const after = await node.metrics();
    const delta = (name: string, labels: Record<string, string> = {}) => metricValue(after, name, labels) - metricValue(before, name, labels);
    assert.equal(delta('kiam_pod_ip_ambiguous_total'), 1, 'exactly the one request from the shared IP');
    assert.equal(delta('kiam_pod_ip_unknown_total'), 3, 'the two requests of the node and the one of h1');
    assert.equal(delta('kiam_pod_live_lookups_total', { result: 'found' }), 0, 'the live GET never takes a hostNetwork pod');
    // (The two ambiguous pods' roles are prefetched all the same: each object is live; only the answer is withheld.)
    assert.deepEqual((await node.stsCalls()).filter((c) => c.roleArn.endsWith('/host-role')), [], 'no STS call for a hostNetwork pod');

    // Once one of the two is gone, the IP is the other's.
    const from = node.agent!.lineCount;
    await node.deletePod('hosts', 'amb2');
    await node.agentLog('pod left the index', { podUid: uids.amb2! }, 10_000, from);
    assert.equal((await podCurl(sb, pods.am!, LISTING)).body, 'amb-one');
  });

  it('picks up a namespace annotation added and removed at runtime', async () => {
    const pod = pods.f1!;
    assert.equal((await curlCredentials(sb, pod)).listing.status, 403, 'no policy on the namespace: denied');

    let from = node.agent!.lineCount;
    await node.kubectl(['annotate', 'namespace', 'flip', `iam.amazonaws.com/permitted=${BASE_ARN}flip-role`, '--overwrite']);
    const assumed = await node.agentLog('assumed role', { sessionName: 'flip.default', roleArn: `${BASE_ARN}flip-role` }, 10_000, from);
    const granted = await clientCredentials(sb, pod, 'js-sdk');
    assert.equal(granted.accessKeyId, assumed.accessKeyId, granted.output);
    assert.equal(granted.accessKeyId, await issuedKey('flip-role', 'flip.default'));

    from = node.agent!.lineCount;
    await node.kubectl(['annotate', 'namespace', 'flip', 'iam.amazonaws.com/permitted-']);
    await node.agentLog('pod indexed', { podUid: uids.f1!, answer: 'denied' }, 10_000, from);
    const { listing, document } = await curlCredentials(sb, pod);
    assert.equal(listing.status, 403);
    assert.equal(document, undefined);
    const denied = await podCurl(sb, pod, `${LISTING}flip-role`);
    assert.equal(denied.status, 403, 'the document too');
    assert.doesNotMatch(denied.body, /AccessKeyId/);
    const sdk = await clientCredentials(sb, pod, 'js-sdk');
    assert.equal(sdk.accessKeyId, undefined, sdk.output);
  });

  it('assumes the role with the pod\'s external ID, as an identity of its own', async () => {
    const [plain, plain2, ext] = await Promise.all([curlCredentials(sb, pods['x-plain']!), curlCredentials(sb, pods['x-plain2']!), curlCredentials(sb, pods['x-ext']!)]);
    const calls = (await node.stsCalls()).filter((c) => c.sessionName === 'ext.default' && c.result === 'ok');
    const withId = calls.filter((c) => c.externalId === 'ext-id-0042');
    const without = calls.filter((c) => c.externalId === undefined);
    assert.ok(withId.length >= 1 && without.length >= 1, JSON.stringify(calls));
    assert.deepEqual(calls.filter((c) => c.externalId !== undefined && c.externalId !== 'ext-id-0042'), []);
    assert.equal(ext.document?.AccessKeyId, withId.at(-1)!.accessKeyId, 'the pod with the external ID gets what STS issued for it');
    assert.equal(plain.document?.AccessKeyId, without.at(-1)!.accessKeyId);
    assert.notEqual(ext.document?.AccessKeyId, plain.document?.AccessKeyId, 'same role and session name, but another identity');
    // Without the external ID, the same role and session name is one identity: the difference is the external ID alone.
    assert.equal(plain2.document?.AccessKeyId, plain.document?.AccessKeyId);
    for (const r of [plain, plain2, ext]) assert.equal(r.listing.body, 'ext-role');

    // An external ID added to a running pod makes it an identity of its own from then on.
    const from = node.agent!.lineCount;
    await node.kubectl(['annotate', 'pod', '-n', 'ext', 'x-plain2', 'iam.amazonaws.com/external-id=ext-id-0099', '--overwrite']);
    await node.agentLog('pod indexed', { podUid: uids['x-plain2']!, answer: 'role' }, 10_000, from);
    const changed = await curlCredentials(sb, pods['x-plain2']!);
    assert.equal(changed.document?.AccessKeyId, await issuedKey('ext-role', 'ext.default', 'ext-id-0099'));
    assert.ok(![plain.document?.AccessKeyId, ext.document?.AccessKeyId].includes(changed.document?.AccessKeyId));
  });

  it('answers the IMDSv2 token protocol as the real service does, through the DNAT', async () => {
    const va = pods.va!;
    const vb = pods.vb!;
    const put = (pod: Pod, headers: Record<string, string>) => podHttp(sb, pod, '/latest/api/token', { method: 'PUT', headers });

    assert.equal((await put(va, {})).status, 400, 'PUT without a TTL');
    assert.equal((await put(va, { [TOKEN_TTL]: '0' })).status, 400, 'TTL out of range');
    assert.equal((await put(va, { [TOKEN_TTL]: '60', 'X-Forwarded-For': '10.1.2.3' })).status, 403, 'a proxied PUT');
    const options = await podHttp(sb, va, '/latest/api/token', { method: 'OPTIONS' });
    assert.equal(options.status, 200);
    assert.equal(options.headers.allow, 'OPTIONS, PUT');
    const get = await podHttp(sb, va, '/latest/api/token');
    assert.equal(get.status, 405);
    assert.equal(get.headers.allow, 'OPTIONS, PUT');
    assert.equal(get.headers.server, 'EC2ws');

    const minted = await put(va, { [TOKEN_TTL]: '77' });
    assert.equal(minted.status, 200);
    assert.equal(minted.headers[TOKEN_TTL], '77', 'the TTL is echoed');
    assert.equal(minted.headers.server, 'EC2ws');
    assert.match(minted.body, /^[\w-]{20,}$/);
    const token = minted.body;

    const stolen = await podHttp(sb, vb, LISTING, { headers: { [TOKEN]: token } });
    assert.equal(stolen.status, 401, 'a token minted in pod va, presented from pod vb');
    assert.doesNotMatch(stolen.body, /v2-/);

    const listing = await podHttp(sb, va, LISTING, { headers: { [TOKEN]: token } });
    assert.equal(listing.status, 200);
    assert.equal(listing.body, 'v2-a');
    const doc = await podHttp(sb, va, `${LISTING}v2-a`, { headers: { [TOKEN]: token } });
    assert.equal(doc.status, 200);
    assert.equal(doc.headers.server, 'EC2ws');
    assert.equal(doc.headers['content-type'], 'text/plain');
    const parsed = JSON.parse(doc.body) as Json;
    assert.equal(parsed.Code, 'Success');
    assert.equal(parsed.AccessKeyId, await issuedKey('v2-a', 'v2.default'));
    assert.doesNotMatch(doc.body, NODE_KEY);
  });

  it('runs on the legacy iptables backend, and `kiam iptables remove --iptables-backend legacy` leaves nothing in either', async () => {
    const saves = async () => ({
      nft: await sb.execOrThrow(sb.nodeNs, ['iptables-nft-save', '-t', 'nat']),
      legacy: await sb.execOrThrow(sb.nodeNs, ['iptables-legacy-save', '-t', 'nat']),
    });
    const first = node.agent!;
    first.kill('SIGTERM');
    assert.deepEqual(await first.exited, { code: 0, signal: null });
    const nftRemoved = await node.kiam(['iptables', 'remove', '--iptables-backend', 'nft']);
    assert.equal(nftRemoved.code, 0, nftRemoved.stderr);
    assert.doesNotMatch((await saves()).nft, /KIAM|169\.254\.169\.254/);

    await node.startAgent(['--reconcile-interval', '1s', '--log-level', 'debug', '--session-name', '{namespace}.{serviceAccount}', '--iptables-backend', 'legacy']);
    const installed = await saves();
    assert.match(installed.legacy, /-A PREROUTING -j KIAM-METADATA/);
    assert.match(installed.legacy, /-A KIAM-METADATA -d 169\.254\.169\.254\/32 -i cali\+ -p tcp -m tcp --dport 80 .*-j DNAT --to-destination 10\.77\.0\.1:8181/);
    assert.doesNotMatch(installed.nft, /KIAM|169\.254\.169\.254/, 'nothing in the nft backend');
    const got = await clientCredentials(sb, pods.va!, 'js-sdk');
    assert.equal(got.accessKeyId, await issuedKey('v2-a', 'v2.default'), got.output);
    assert.match(await node.metrics(), /kiam_iptables_rules_present 1/);

    const second = node.agent!;
    second.kill('SIGTERM');
    assert.deepEqual(await second.exited, { code: 0, signal: null });
    const removed = await node.kiam(['iptables', 'remove', '--iptables-backend', 'legacy']);
    assert.equal(removed.code, 0, removed.stderr);
    const left = await saves();
    assert.doesNotMatch(left.legacy, /KIAM|169\.254\.169\.254/, 'iptables-legacy-save');
    assert.doesNotMatch(left.nft, /KIAM|169\.254\.169\.254/, 'iptables-nft-save');
  });
});
