/**
 * The local demo: one node in network namespaces, the real agent with `--intercept auto` (the eBPF socket redirect
 * plus the iptables rules), pods asking for credentials with the AWS CLI over IPv4 and IPv6, and an emulated eBPF
 * dataplane that would bypass the DNAT; then, with `--container-credentials`, a pod getting its role by its
 * projected service-account token instead of its address. Built from the same sandbox and fakes as the end-to-end tests: the eBPF
 * programs attach only to the sandbox's own child cgroup. Run as root, through scripts/demo.sh (which installs what
 * it needs first).
 */
import {
  BASE_ARN, clientCredentials, containerCurl, CONTAINER_CREDENTIALS_URI, curlCredentials, Node, type PodSpec, tokenClientCredentials,
  tokenClientProblems,
} from '../test/e2e/harness.ts';
import { Sandbox, type Pod } from '../test/e2e/sandbox.ts';

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s = '') => process.stdout.write(`${s}\n`);

interface DemoPod extends Omit<PodSpec, 'ip'> {
  story: string;
}

const PODS: DemoPod[] = [
  { name: 'web', namespace: 'team-a', role: 'app-reader', story: 'annotated, namespace permits app-*' },
  { name: 'batch', namespace: 'team-b', role: 'b-role', story: 'annotated, namespace permits b-role' },
  { name: 'plain', namespace: 'team-a', story: 'no role annotation' },
  { name: 'sneaky', namespace: 'locked', role: 'app-reader', story: 'namespace permits nothing' },
];

async function main(): Promise<void> {
  const missing = [...Sandbox.prerequisites(['curl', 'kubectl', 'iptables-nft-save', '/usr/bin/aws', 'bpftool']), ...Sandbox.bpfPrerequisites()];
  if (missing.length) throw new Error(`missing: ${missing.join('; ')}`);
  const sb = await Sandbox.create({ prefix: `kiamdemo${Math.random().toString(16).slice(2, 6)}`, cgroup: true, upstreamNetns: true, ipv6: true });
  try {
    say(bold('kiam demo') + ` — a node in network namespaces ${sb.prefix}-*; this machine's own network is not touched.`);
    say(`  node namespace: host IP ${sb.hostIp} and ${sb.hostIpv6}; fake STS and fake Kubernetes API on its loopback;`);
    say(`  behind its eth0, as on EC2, the fake metadata service (holding the NODE's role) on 169.254.169.254 and fd00:ec2::254;`);
    say('  dual-stack pods behind cali… veths, as with Calico; every process in a child cgroup of our own, where the');
    say(`  eBPF programs attach (${sb.cgroupPath}).`);
    say();

    say(bold('1. Starting the fakes and `kiam agent --intercept auto --container-credentials` (eBPF socket redirect + iptables rules on cali+)'));
    const node = await Node.start(sb);
    await node.createNamespace('team-a', `${BASE_ARN}app-.*`);
    await node.createNamespace('team-b', `${BASE_ARN}b-role`);
    await node.createNamespace('locked');
    const pods: { spec: DemoPod; pod: Pod }[] = [];
    for (const spec of PODS) {
      const pod = await sb.addPod({ name: spec.name });
      await node.createPod({ ...spec, ip: pod.ip, ipv6: pod.ipv6 });
      pods.push({ spec, pod });
    }
    const started = Date.now();
    await node.startAgent(await node.containerCredentialsArgs(), {}, node.interceptArgs('auto'));
    say(`   agent ready in ${Date.now() - started} ms (watches synced, server listening, eBPF programs attached, rules installed)`);
    say(`   namespaces: team-a permits ${BASE_ARN}app-.*, team-b permits ${BASE_ARN}b-role, locked permits nothing`);
    say();

    say(bold('2. What the agent installed: `kiam intercept status` in the node namespace'));
    const status = await node.kiam(['intercept', 'status', ...node.interceptArgs('auto'), '--host-ip', sb.hostIp]);
    for (const line of status.stdout.trimEnd().split('\n')) say(`   ${line}`);
    say();

    say(bold('3. Each pod runs `aws configure export-credentials` (AWS CLI v2) against http://169.254.169.254'));
    for (const { spec, pod } of pods) {
      const got = await clientCredentials(sb, pod, 'aws-cli');
      const { listing } = await curlCredentials(sb, pod);
      const who = `${spec.namespace}/${spec.name}`.padEnd(14);
      const role = (spec.role ? `role ${spec.role}` : 'no annotation').padEnd(18);
      const result = got.accessKeyId
        ? `→ ${got.accessKeyId} (its own session ${spec.namespace}.${spec.name})`
        : `→ no credentials (listing answered ${listing.status}); never the node's ASIANODE… key`;
      say(`   ${who} ${role} ${result}`);
      say(`   ${''.padEnd(14)} ${''.padEnd(18)}   ${spec.story}`);
    }
    say();

    say(bold('3b. Over IPv6: the AWS CLI with AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6 dials [fd00:ec2::254]'));
    const v6 = await clientCredentials(sb, pods[0]!.pod, 'aws-cli', 'ipv6');
    say(`   team-a/web → ${v6.accessKeyId ?? `nothing: ${v6.output.trim()}`}`);
    say();

    say(bold('3c. An eBPF dataplane (emulated: a tc program sends pod metadata packets out of eth0, past netfilter)'));
    await sb.installBypass();
    const bypassed = await clientCredentials(sb, pods[0]!.pod, 'aws-cli');
    say(`   team-a/web → ${bypassed.accessKeyId ?? 'nothing'}: still its own role, the connect was redirected before any packet existed.`);
    say('   (With iptables alone the same pod gets the node role here; test/e2e/ebpf.test.ts shows it.)');
    await sb.removeBypass();
    say();

    say(bold('3d. By token, not by address: the container-credentials endpoint (EKS Pod Identity\'s protocol)'));
    say(`   the pod gets only AWS_CONTAINER_CREDENTIALS_FULL_URI=${CONTAINER_CREDENTIALS_URI.ipv4} and`);
    say('   AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: its projected service-account token (audience kiam), checked with a TokenReview');
    const web = pods[0]!;
    const webToken = await node.projectToken(web.spec.namespace, web.spec.name);
    const byToken = await tokenClientCredentials(sb, web.pod, 'curl', { tokenFile: webToken.file });
    say(`   team-a/web  curl -H "Authorization: $(cat $AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)" $AWS_CONTAINER_CREDENTIALS_FULL_URI`);
    say(`               → ${byToken.accessKeyId ?? `nothing: ${byToken.output.trim()}`} (its own session team-a.web, as by address)`);
    if (tokenClientProblems().length === 0) {
      const cli = await tokenClientCredentials(sb, web.pod, 'aws-cli', { tokenFile: webToken.file, family: 'ipv6' });
      say(`   team-a/web  the AWS CLI over IPv6 ([fd00:ec2::23]) → ${cli.accessKeyId ?? 'nothing'}`);
    }
    const copied = await tokenClientCredentials(sb, pods[1]!.pod, 'curl', { tokenFile: webToken.file });
    say(`   team-b/batch with web's token copied into it → ${copied.accessKeyId ?? 'nothing'}: the token names the pod, not the address`);
    const [head, claims] = webToken.token.split('.');
    const forged = await containerCurl(sb, web.pod, { authorization: `${head}.${claims}.${'A'.repeat(43)}` });
    say(`   team-a/web with a forged token → ${forged.status} ${forged.body}`);
    say();

    say(bold('4. A pod scheduled now is prefetched before its first request'));
    const from = node.agent!.lineCount;
    const ip = '10.77.1.99';
    await node.createPod({ name: 'late', namespace: 'team-a', ip, role: 'app-writer' });
    await node.agentLog('assumed role', { sessionName: 'team-a.late' }, 10_000, from);
    const calls = (await node.stsCalls()).length;
    const late = await sb.addPod({ name: 'late', ip });
    const t0 = Date.now();
    const got = await clientCredentials(sb, late, 'curl');
    say(`   team-a/late got ${got.accessKeyId} in ${Date.now() - t0} ms (token PUT + listing + document, with curl);`);
    say(`   STS calls made by that request: ${(await node.stsCalls()).length - calls}`);
    say();

    say(bold('5. A few of the metrics on :9620/metrics'));
    const metrics = await sb.execOrThrow(sb.nodeNs, ['curl', '-sS', 'http://127.0.0.1:9620/metrics']);
    for (const line of metrics.split('\n')) {
      if (/^kiam_(pods_indexed|credentials_cached_identities|credentials_cache_(hits|misses)_total|iptables_rules_present|ebpf_redirect_present|ebpf_redirected_connections|credential_denials_total|container_credentials_requests_total|token_reviews_total)/.test(line)) say(`   ${line}`);
    }
    say();

    say(bold('6. `kiam doctor` on the node: the rules, the interfaces, the metadata service, the API server, what the agent sees'));
    const doctor = await node.kiam(['doctor', '--metadata-endpoint', 'http://169.254.169.254']);
    for (const line of doctor.stdout.trimEnd().split('\n')) say(`   ${line}`);
    say(`   (exit ${doctor.code}: 0 means nothing failed)`);
    say();

    say(bold('7. SIGTERM: the agent drains and exits; the interception stays, so pods fail closed'));
    node.agent!.kill('SIGTERM');
    const exit = await node.agent!.exited;
    const after = await curlCredentials(sb, pods[0]!.pod);
    say(`   agent exit code ${exit.code}; team-a/web now gets ${after.listing.status === 0 ? 'connection refused' : after.listing.status}, not the node role`);
    const removed = await node.kiam(['intercept', 'remove', ...node.interceptArgs('auto')]);
    say(`   \`kiam intercept remove\` detached the programs and removed the rules (exit ${removed.code})`);
  } finally {
    await sb.destroy();
    say();
    say(`Torn down: namespaces ${sb.prefix}-* and every process are gone.`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
