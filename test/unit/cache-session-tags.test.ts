/**
 * --session-tags: what the policy puts in each pod's identity, how the cache keys and sends it, and the flags.
 * The real SDK against the fake STS is in cache-sts.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { CredentialCache } from '../../src/cache/credentials.ts';
import { sanitizeTagValue, SESSION_TAG_KEYS, sessionTags, tagValueProblem } from '../../src/cache/session-tags.ts';
import type { AssumeRoleRequest } from '../../src/cache/sts.ts';
import { parseCommandLine } from '../../src/cli.ts';
import { buildConfig, ConfigError } from '../../src/config.ts';
import { createMetrics } from '../../src/metrics.ts';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import { Policy } from '../../src/resolver/policy.ts';
import { FakeClock } from '../fakes/clock.ts';
import { ScriptedSts } from '../fakes/sts.ts';

const BASE = 'arn:aws:iam::123456789012:role/';
const ALL = { 'iam.amazonaws.com/permitted': '.*' };

function pod(name: string, over: Partial<PodInfo> = {}): PodInfo {
  return { uid: `uid-${name}`, name, namespace: 'team-a', ip: '10.0.0.1', ips: ['10.0.0.1'], serviceAccount: 'reader', role: 'app', phase: 'Running', hostNetwork: false, deleting: false, ...over };
}

function roleOf(policy: Policy, p: PodInfo) {
  const lookup = policy.evaluate(p, ALL);
  assert.equal(lookup.kind, 'role');
  return (lookup as Extract<typeof lookup, { kind: 'role' }>).identity;
}

describe('session tags', () => {
  it('name the namespace, pod, service account, node and cluster, under the keys EKS Pod Identity uses where it has one', () => {
    assert.deepEqual(sessionTags({ namespace: 'team-a', pod: 'web-1', serviceAccount: 'reader', node: 'ip-10-0-0-1.ec2.internal', clusterName: 'prod' }), [
      { key: 'kubernetes-namespace', value: 'team-a' },
      { key: 'kubernetes-pod-name', value: 'web-1' },
      { key: 'kubernetes-service-account', value: 'reader' },
      { key: 'kubernetes-node-name', value: 'ip-10-0-0-1.ec2.internal' },
      { key: 'kubernetes-cluster-name', value: 'prod' },
    ]);
    // Without --cluster-name, no cluster tag.
    assert.deepEqual(sessionTags({ namespace: 'a', pod: 'b', serviceAccount: 'c', node: 'd' }).map((t) => t.key), [
      SESSION_TAG_KEYS.namespace, SESSION_TAG_KEYS.pod, SESSION_TAG_KEYS.serviceAccount, SESSION_TAG_KEYS.node,
    ]);
  });

  it('sanitise values to the characters and length STS accepts', () => {
    assert.equal(sanitizeTagValue('prod/eu west:1=a+b-c@d_e.f'), 'prod/eu west:1=a+b-c@d_e.f', 'all allowed: letters, digits, spaces and _.:/=+-@');
    assert.equal(sanitizeTagValue('a,b;c*d"e'), 'a-b-c-d-e');
    assert.equal(sanitizeTagValue('zürich-集群'), 'zürich-集群', 'letters of any script are allowed');
    assert.equal(sanitizeTagValue('x'.repeat(300)).length, 256);
    assert.equal(Array.from(sanitizeTagValue('😀'.repeat(300))).length, 256, 'cut by characters, not UTF-16 units');
    assert.equal(sanitizeTagValue(''), '');
    assert.equal(tagValueProblem('prod-eu-1'), undefined);
    assert.match(tagValueProblem('prod,eu')!, /","/);
    assert.match(tagValueProblem('x'.repeat(257))!, /longer than 256/);
  });

  it('are off by default: identities and keys as before', () => {
    const policy = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-1' });
    const identity = roleOf(policy, pod('web-1'));
    assert.equal(identity.tags, undefined);
    assert.equal(identity.key, JSON.stringify([`${BASE}app`, null, 'team-a.web-1']));
  });

  it('are part of the identity and its key: with them a shared session name still means one identity per pod', () => {
    const policy = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: 'kiam-{namespace}', nodeName: 'node-1', sessionTags: { clusterName: 'prod' } });
    const a = roleOf(policy, pod('web-1'));
    const b = roleOf(policy, pod('web-2'));
    assert.equal(a.sessionName, b.sessionName, 'the session name is shared');
    assert.notEqual(a.key, b.key, 'the pod tag differs, so the identities do');
    assert.deepEqual(a.tags, sessionTags({ namespace: 'team-a', pod: 'web-1', serviceAccount: 'reader', node: 'node-1', clusterName: 'prod' }));
    // The same pod evaluated again keeps its key (the cache and the prefetcher key on it).
    assert.equal(roleOf(policy, pod('web-1')).key, a.key);
    // Without tags the two pods share one identity.
    const shared = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: 'kiam-{namespace}', nodeName: 'node-1' });
    assert.equal(roleOf(shared, pod('web-1')).key, roleOf(shared, pod('web-2')).key);
  });

  it('are sent with AssumeRole, and credentials are cached per tag set', async () => {
    const clock = new FakeClock();
    const requests: AssumeRoleRequest[] = [];
    const sts = new ScriptedSts((req, n) => {
      requests.push(req);
      return { accessKeyId: `ASIATEST${n}`, secretAccessKey: 's', sessionToken: 't', expiration: clock.now() + 3600_000 };
    });
    const cache = new CredentialCache({ sts, clock, metrics: createMetrics(), logger: pino({ level: 'silent' }), sessionDurationSec: 3600, stsTimeoutMs: 5000 });
    const policy = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: 'kiam-{namespace}', nodeName: 'node-1', sessionTags: {} });
    const a = await cache.get(roleOf(policy, pod('web-1')));
    const b = await cache.get(roleOf(policy, pod('web-2')));
    const again = await cache.get(roleOf(policy, pod('web-1')));
    assert.notEqual(a.accessKeyId, b.accessKeyId);
    assert.equal(again.accessKeyId, a.accessKeyId);
    assert.equal(requests.length, 2);
    assert.deepEqual(requests[0]!.tags, [
      { key: 'kubernetes-namespace', value: 'team-a' },
      { key: 'kubernetes-pod-name', value: 'web-1' },
      { key: 'kubernetes-service-account', value: 'reader' },
      { key: 'kubernetes-node-name', value: 'node-1' },
    ]);
    assert.deepEqual(cache.snapshot().map((s) => s.tags?.find((t) => t.key === 'kubernetes-pod-name')?.value).sort(), ['web-1', 'web-2']);
    cache.stop();
  });

  it('--session-tags and --cluster-name (env CLUSTER_NAME): off by default, the name checked against STS limits', () => {
    assert.deepEqual([buildConfig({ nodeName: 'n' }, {}).sessionTags, buildConfig({ nodeName: 'n' }, {}).clusterName], [false, undefined]);
    const inv = parseCommandLine(['agent', '--node-name', 'n', '--session-tags', '--cluster-name', 'prod-eu-1'], {});
    assert.equal(inv.kind, 'agent');
    const config = (inv as Extract<typeof inv, { kind: 'agent' }>).config;
    assert.deepEqual([config.sessionTags, config.clusterName], [true, 'prod-eu-1']);
    assert.equal(buildConfig({ nodeName: 'n' }, { CLUSTER_NAME: 'from-env' }).clusterName, 'from-env');
    assert.throws(() => buildConfig({ nodeName: 'n', clusterName: 'prod,eu' }, {}), (e: unknown) => e instanceof ConfigError && /--cluster-name: "prod,eu" holds ","/.test(e.message));
  });
});
