/**
 * The container-credentials endpoint end to end (issue 10): the production bundle runs as `kiam agent
 * --container-credentials` (beside the iptables interception) in a dual-stack sandboxed node; the fake API server
 * issues projected service-account tokens bound to pods and answers TokenReviews of them; each pod's token is
 * written to a file of its own, as the kubelet mounts it. Real clients in pod namespaces — curl, the AWS CLI,
 * botocore and the JS SDK v3 (fromHttp and the default chain) — are given only AWS_CONTAINER_CREDENTIALS_FULL_URI
 * and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (a clean environment, the instance metadata service disabled) and
 * ask http://169.254.170.23 and http://[fd00:ec2::23]. Which role each got is read from the fake STS: the access
 * key id a client got must be one STS issued for that pod's session and role.
 *
 * The identity is the token, not the address: a token copied into another pod still names the pod it was issued
 * to and gets that pod's role (the documented model, as with EKS Pod Identity: the token file is the credential).
 * A token of another node's pod (403), an expired, forged or wrong-audience token (401), and none (400) get
 * nothing, with a metric and a log line each; no token is ever logged.
 *
 * The agent puts the two addresses on a link of its own, kiam-link0: a dummy link, or an ifb one on a kernel
 * without the dummy driver (CONFIG_DUMMY unset, as on this machine's VM kernel). Only where the kernel makes
 * neither does the sandbox put them on the node's lo and run the agent with `--container-credentials-link none`
 * (Node.containerCredentialsArgs()).
 *
 * botocore and the AWS CLI are the pyenv ones (TOKEN_PYTHON): Debian's are too old for the token file. Without
 * them the suite is skipped with the reason, except with CI=true, where it fails. The tests share one node and
 * run in order; none changes what a later one relies on.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import {
  BASE_ARN,
  curlCredentials,
  type HostNetworkPod,
  metricValue,
  Node,
  parse,
  type ProjectedToken,
  type StsCall,
  TOKEN_CLIENTS,
  type TokenClient,
  containerCurl,
  tokenClientCredentials,
  tokenClientProblems,
} from './harness.ts';
import { CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6, Sandbox, type Pod } from './sandbox.ts';

const gate = Sandbox.gate(['curl', 'kubectl', 'iptables-nft-restore', 'iptables-nft-save']);
const clientProblems = gate.skip ? [] : tokenClientProblems();
const skip =
  gate.skip || (clientProblems.length > 0 && process.env.CI !== 'true' ? `token-file clients missing: ${clientProblems.join('; ')}` : false);

const FAMILIES = ['ipv4', 'ipv6'] as const;
const NODE_KEY = /ASIANODE/;

describe('the container-credentials endpoint: pods identified by their projected service-account token', { skip }, () => {
  let sb: Sandbox;
  let node: Node;
  const pods: Record<string, Pod> = {};
  const tokens: Record<string, ProjectedToken> = {};
  let host: HostNetworkPod;

  /** Asserts that STS issued this key for exactly this session and role. */
  function assertIssued(calls: StsCall[], key: string | undefined, session: string, role: string, what: string): void {
    assert.ok(key, `${what}: no credentials`);
    const call = calls.find((c) => c.accessKeyId === key && c.result === 'ok');
    assert.ok(call, `${what}: ${key} is no key the fake STS issued`);
    assert.deepEqual({ session: call.sessionName, role: call.roleArn }, { session, role: `${BASE_ARN}${role}` }, what);
  }

  /** Runs fn over items, at most `width` at a time (client processes are heavy for 2 cores). */
  async function pool<T, R>(items: readonly T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
    const out: R[] = new Array(items.length);
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(width, items.length) }, async () => {
        while (next < items.length) {
          const i = next++;
          out[i] = await fn(items[i]!);
        }
      }),
    );
    return out;
  }

  before(async () => {
    gate.assertReady();
    assert.deepEqual(clientProblems, [], 'the token-file clients (pyenv botocore and AWS CLI) are required');
    sb = await Sandbox.create({ ipv6: true });
    node = await Node.start(sb);
    await Promise.all([node.createNamespace('team-a', `${BASE_ARN}app-.*`), node.createNamespace('team-b', `${BASE_ARN}b-role`)]);
    await node.createServiceAccount('team-a', 'reporter', { 'iam.amazonaws.com/role': 'app-reporter' });
    const add = async (name: string, namespace: string, opts: { role?: string; serviceAccount?: string } = {}) => {
      const pod = await sb.addPod({ name });
      pods[name] = pod;
      await node.createPod({ name, namespace, ip: pod.ip, ipv6: pod.ipv6, tokenVolume: 'ipv4', ...opts });
    };
    [host] = await Promise.all([
      node.addHostNetworkPod({ name: 'h1', namespace: 'team-a', role: 'app-host' }),
      add('a1', 'team-a', { role: 'app-reader' }),
      add('b1', 'team-b', { role: `${BASE_ARN}b-role` }),
      // No annotation: the role comes from its service account's.
      add('s1', 'team-a', { serviceAccount: 'reporter' }),
      // Neither the pod nor its service account names a role.
      add('c1', 'team-a'),
      // A pod of another node (in the API only: its token is sent from a pod of ours).
      node.createPod({ name: 'x1', namespace: 'team-a', ip: '10.88.0.5', role: 'app-writer', node: 'node-2' }),
    ]);
    const issued = await Promise.all([
      node.projectToken('team-a', 'a1'),
      node.projectToken('team-b', 'b1'),
      node.projectToken('team-a', 's1'),
      node.projectToken('team-a', 'c1'),
      node.projectToken('team-a', 'x1'),
      node.projectToken('team-a', 'h1'),
    ]);
    for (const [i, name] of ['a1', 'b1', 's1', 'c1', 'x1', 'h1'].entries()) tokens[name] = issued[i]!;
    await node.startAgent([...(await node.containerCredentialsArgs()), '--log-level', 'debug']);
  });

  after(async () => {
    await sb?.destroy();
  });

  it("has both addresses on the node (the agent's kiam-link0; the node's lo on a kernel that makes neither dummy nor ifb links), which pods reach by their default routes", async () => {
    const link = node.containerCredentialsLink;
    const shown = await sb.execOrThrow(sb.nodeNs, ['ip', '-j', 'address', 'show', ...(link ? ['dev', link] : [])]);
    const links = JSON.parse(shown) as Array<{ addr_info?: Array<{ local: string }> }>;
    const locals = links.flatMap((l) => (l.addr_info ?? []).map((a) => a.local));
    for (const address of [CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6]) assert.ok(locals.includes(address), `${address}: node has ${locals.join(' ')}`);
    for (const [flag, address] of [['-4', CONTAINER_CREDENTIALS_IP], ['-6', CONTAINER_CREDENTIALS_IPV6]] as const) {
      const route = JSON.parse(await sb.execOrThrow(pods.a1!.ns, ['ip', '-j', flag, 'route', 'get', address])) as Array<{ dev: string }>;
      assert.equal(route[0]?.dev, 'eth0', `${address}: via the pod's default route`);
    }
  });

  it('gives each pod its own role with curl, the AWS CLI, botocore and the JS SDK v3, over IPv4 and IPv6', async () => {
    // Every client over both families, the two pods taking turns; curl and the JS SDK also the other way round.
    const a1 = { name: 'a1', session: 'team-a.a1', role: 'app-reader' };
    const b1 = { name: 'b1', session: 'team-b.b1', role: 'b-role' };
    const cases: Array<typeof a1 & { client: TokenClient; family: (typeof FAMILIES)[number] }> = [];
    for (const client of TOKEN_CLIENTS) {
      cases.push({ ...a1, client, family: 'ipv4' }, { ...b1, client, family: 'ipv6' });
      if (client === 'curl' || client === 'js-sdk') cases.push({ ...b1, client, family: 'ipv4' }, { ...a1, client, family: 'ipv6' });
    }
    const got = await pool(cases, 4, (c) => tokenClientCredentials(sb, pods[c.name]!, c.client, { tokenFile: tokens[c.name]!.file, family: c.family }));
    const calls = await node.stsCalls();
    for (const [i, c] of cases.entries()) {
      assertIssued(calls, got[i]!.accessKeyId, c.session, c.role, `${c.client} in ${c.name} over ${c.family}: ${got[i]!.output.slice(-2000)}`);
    }
    assert.notEqual(got[0]!.accessKeyId, got[1]!.accessKeyId);

    // The document itself, as the SDKs read it; `Bearer ` in front of the token is accepted too.
    for (const authorization of [tokens.a1!.token, `Bearer ${tokens.a1!.token}`]) {
      const answer = await containerCurl(sb, pods.a1!, { authorization });
      assert.equal(answer.status, 200, answer.body);
      assert.match(answer.headers['content-type'] ?? '', /^application\/json/);
      const doc = JSON.parse(answer.body) as Record<string, string>;
      assert.deepEqual(Object.keys(doc).sort(), ['AccessKeyId', 'AccountId', 'Expiration', 'SecretAccessKey', 'Token']);
      assert.equal(doc.AccountId, '123456789012');
      assert.match(doc.Expiration!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.ok(Date.parse(doc.Expiration!) - Date.now() >= 30 * 60_000, 'at least 30 minutes of lifetime');
      assertIssued(calls, doc.AccessKeyId, 'team-a.a1', 'app-reader', authorization.slice(0, 7));
    }
  });

  it('gives a hostNetwork pod, in the node namespace at the node address, its own role', async () => {
    const clients: TokenClient[] = ['curl', 'botocore', 'js-sdk'];
    const got = await Promise.all([
      ...clients.map((client) => tokenClientCredentials(sb, host, client, { tokenFile: tokens.h1!.file })),
      tokenClientCredentials(sb, host, 'curl', { tokenFile: tokens.h1!.file, family: 'ipv6' }),
    ]);
    const calls = await node.stsCalls();
    for (const [i, r] of got.entries()) {
      assertIssued(calls, r.accessKeyId, 'team-a.h1', 'app-host', `${clients[i] ?? 'curl over IPv6'} in the node namespace: ${r.output.slice(-2000)}`);
    }
  });

  it("gives a pod whose service account names the role that role, by token (the address path keeps reading the pod's annotation only)", async () => {
    const clients = ['curl', 'js-sdk-chain', 'botocore'] as const;
    const got = await Promise.all(clients.map((client) => tokenClientCredentials(sb, pods.s1!, client, { tokenFile: tokens.s1!.file })));
    const calls = await node.stsCalls();
    for (const r of got) assertIssued(calls, r.accessKeyId, 'team-a.s1', 'app-reporter', r.output.slice(-2000));
    const { listing } = await curlCredentials(sb, pods.s1!);
    assert.equal(listing.status, 404, `the metadata path: ${listing.body}`);
  });

  it('gives a token copied into another pod the role of the pod it names, not the role of the pod sending it', async () => {
    // b1 (team-b, b-role) sends a1's token: the agent answers for a1, whatever the address. A pod's token file is
    // its credential, as on EKS Pod Identity; the log names both the pod and the source address.
    const from = node.agent!.lineCount;
    const got = await Promise.all((['curl', 'botocore'] as const).map((client) => tokenClientCredentials(sb, pods.b1!, client, { tokenFile: tokens.a1!.file })));
    const calls = await node.stsCalls();
    for (const r of got) assertIssued(calls, r.accessKeyId, 'team-a.a1', 'app-reader', r.output.slice(-2000));
    await node.agentLog('credentials served by token', { pod: 'a1', namespace: 'team-a', ip: pods.b1!.ip }, 10_000, from);
  });

  it('refuses a token of another node\'s pod (403), an expired, forged or wrong-audience one (401), none (400), and the SDKs get nothing', async () => {
    const metricsBefore = await node.metrics();
    const [expired, wrongAudience, otherNodeUnclaimed] = await Promise.all([
      node.issueToken({ namespace: 'team-a', pod: 'a1', issuedAt: Math.floor(Date.now() / 1000) - 7200, expirationSeconds: 600 }),
      node.issueToken({ namespace: 'team-a', pod: 'a1', audience: 'sts.amazonaws.com' }),
      // Before Kubernetes 1.30 a token names no node: the agent must find out from the pod itself.
      node.issueToken({ namespace: 'team-a', pod: 'x1', bindNode: false }),
    ]);
    const [header, payload] = tokens.a1!.token.split('.') as [string, string, string];
    // The same claims signed with another key; and b1's name put in a1's claims under a1's signature.
    const forged = `${header}.${payload}.${createHmac('sha256', randomBytes(32)).update(`${header}.${payload}`).digest('base64url')}`;
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { 'kubernetes.io': { pod: { name: string } } };
    claims['kubernetes.io'].pod.name = 'b1';
    const tampered = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${tokens.a1!.token.split('.')[2]}`;
    const cases: Array<{ what: string; token?: string; status: number; reason: string }> = [
      { what: "another node's pod", token: tokens.x1!.token, status: 403, reason: 'other-node' },
      { what: "another node's pod, no node claim", token: otherNodeUnclaimed, status: 403, reason: 'other-node' },
      { what: 'expired', token: expired, status: 401, reason: 'expired' },
      { what: 'forged (signature)', token: forged, status: 401, reason: 'invalid' },
      { what: 'forged (claims)', token: tampered, status: 401, reason: 'invalid' },
      { what: 'wrong audience', token: wrongAudience, status: 401, reason: 'wrong-audience' },
      { what: 'none', status: 400, reason: 'no-token' },
      { what: 'not a token', token: 'not-a-token', status: 400, reason: 'malformed-token' },
      { what: 'a pod without a role', token: tokens.c1!.token, status: 403, reason: 'no-role' },
    ];

    // curl, over both families: the status, a terse JSON message, no credentials.
    const asked = cases.flatMap((c) => FAMILIES.map((family) => ({ c, family })));
    const answers = await pool(asked, 4, ({ c, family }) => containerCurl(sb, pods.a1!, { family, ...(c.token === undefined ? {} : { authorization: c.token }) }));
    for (const [i, { c, family }] of asked.entries()) {
      const answer = answers[i]!;
      assert.equal(answer.status, c.status, `${c.what} over ${family}: ${answer.body}`);
      assert.equal(typeof parse(answer.body)?.message, 'string', `${c.what}: ${answer.body}`);
      assert.doesNotMatch(answer.body, /AccessKeyId|ASIA/);
    }
    // Other paths and methods.
    assert.equal((await containerCurl(sb, pods.a1!, { authorization: tokens.a1!.token, path: '/v1/other' })).status, 404);
    assert.equal((await containerCurl(sb, pods.a1!, { authorization: tokens.a1!.token, method: 'POST' })).status, 405);

    // The SDKs, given each bad token as their token file (or no token file at all), get nothing: the JS SDK for
    // every case; botocore for one of each status; the default chain and the AWS CLI for one. botocore and the CLI
    // sleep a second between their three attempts (they retry any failure), so they run side by side.
    const runs = cases
      .filter((c) => c.what !== 'not a token')
      .flatMap((c) => {
        const tokenFile = c.token === undefined ? undefined : sb.podFile('a1', `bad/${c.what.replace(/\W+/g, '-')}`, c.token);
        const clients: TokenClient[] = ['js-sdk'];
        if (c.what === "another node's pod" || c.what === 'expired' || c.what === 'none') clients.push('botocore');
        if (c.what === 'none') clients.push('js-sdk-chain');
        if (c.what === "another node's pod") clients.push('aws-cli');
        return clients.map((client) => ({ c, client, tokenFile }));
      });
    const python = (client: TokenClient) => client === 'botocore' || client === 'aws-cli';
    const run = (r: (typeof runs)[number]) => tokenClientCredentials(sb, pods.a1!, r.client, { tokenFile: r.tokenFile });
    const [sleepy, quick] = await Promise.all([Promise.all(runs.filter((r) => python(r.client)).map(run)), pool(runs.filter((r) => !python(r.client)), 3, run)]);
    const results = runs.map((r) => (python(r.client) ? sleepy : quick).shift()!);
    for (const [i, r] of runs.entries()) {
      assert.equal(results[i]!.accessKeyId, undefined, `${r.client} with ${r.c.what}: ${results[i]!.output}`);
      assert.doesNotMatch(results[i]!.output, NODE_KEY, `${r.client} with ${r.c.what} saw the node's credentials`);
    }

    // A metric and a log line for every refusal; no STS call for the refused pods.
    const metrics = await node.metrics();
    const grew = (name: string, labels: Record<string, string>) => metricValue(metrics, name, labels) - metricValue(metricsBefore, name, labels);
    for (const c of cases) {
      const want = cases.filter((o) => o.reason === c.reason).length * FAMILIES.length;
      const refusals = grew('kiam_token_refusals_total', { reason: c.reason });
      assert.ok(refusals >= want, `kiam_token_refusals_total{reason="${c.reason}"} grew by ${refusals}, want ≥ ${want}`);
      const answered = grew('kiam_container_credentials_requests_total', { code: String(c.status) });
      assert.ok(answered >= want, `kiam_container_credentials_requests_total{code="${c.status}"} grew by ${answered}, want ≥ ${want}`);
      await node.agentLog('container credentials refused', { reason: c.reason, status: c.status }, 10_000, 0);
    }
    assert.ok(grew('kiam_token_reviews_total', { result: 'unauthenticated' }) >= 1, 'kiam_token_reviews_total{result="unauthenticated"}');
    assert.deepEqual((await node.stsCalls()).filter((c) => /\.(x1|c1)$/.test(c.sessionName)).map((c) => c.sessionName), []);
  });

  it('never writes a token to its log', () => {
    const log = readFileSync(node.agent!.logFile!, 'utf8');
    assert.ok(log.length > 0);
    for (const [name, { token }] of Object.entries(tokens)) {
      assert.ok(!log.includes(token.split('.')[2]!), `the signature of ${name}'s token is in the agent's log`);
      assert.ok(!log.includes(token.split('.')[1]!), `the claims of ${name}'s token are in the agent's log`);
    }
  });
});
