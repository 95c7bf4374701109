/**
 * The Kubernetes manifests in deploy/, rendered offline with `kubectl kustomize` (the base, every CNI overlay and
 * the clean-up), each object validated against the Kubernetes schemas (kubernetes-models' validate(), plus a check
 * for field names the API does not know, from @kubernetes/client-node's generated models), and the fields that
 * security and correctness depend on asserted. The DaemonSet's args go through the agent's real command line
 * parser with the environment the downward API would give it.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parseCommandLine } from '../../src/cli.ts';
import { imageUser, kustomize, parseDockerfile, parseYamlObjects, pkg, requireKubectl, ROOT, type K8sObject } from './deploy-support.ts';

/** Each overlay and the --host-interface it must give the agent. A new overlay needs a line here. */
const OVERLAYS: Record<string, string> = {
  calico: 'cali+',
  'aws-vpc-cni': 'eni+',
  flannel: 'cni0',
  bridge: 'cni0',
  weave: 'weave',
  kindnet: 'veth+',
  cilium: 'lxc+',
};
/** What the downward API would give the pod in the test's imaginary node. */
const NODE = { name: 'ip-10-0-1-23.eu-west-1.compute.internal', hostIP: '10.0.1.23' };

// ---- minimal typed views of what the tests read -----------------------------------------------------------

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  env?: EnvVar[];
  ports?: Array<{ name?: string; containerPort: number; hostPort?: number; protocol?: string }>;
  livenessProbe?: { httpGet?: { path: string; port: number | string } };
  readinessProbe?: { httpGet?: { path: string; port: number | string } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: {
    runAsUser?: number;
    runAsNonRoot?: boolean;
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
    seccompProfile?: { type: string };
  };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface PodSpec {
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  dnsPolicy?: string;
  priorityClassName?: string;
  terminationGracePeriodSeconds?: number;
  tolerations?: Array<Record<string, unknown>>;
  securityContext?: { seccompProfile?: { type: string } };
  initContainers?: Container[];
  containers: Container[];
  volumes?: Array<{ name: string; hostPath?: { path: string; type?: string } }>;
}
interface DaemonSet extends K8sObject {
  spec: {
    updateStrategy?: { type: string; rollingUpdate?: { maxUnavailable?: string | number; maxSurge?: string | number } };
    template: { metadata: { annotations?: Record<string, string> }; spec: PodSpec };
  };
}

// ---- helpers ----------------------------------------------------------------------------------------------

requireKubectl();
const renders = new Map<string, K8sObject[]>();
function render(dir: string): K8sObject[] {
  let objects = renders.get(dir);
  if (!objects) renders.set(dir, (objects = kustomize(dir)));
  return objects;
}
function find<T extends K8sObject>(objects: K8sObject[], kind: string, name: string): T {
  const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
  assert.equal(found.length, 1, `exactly one ${kind} ${name} (found ${found.length})`);
  return found[0] as T;
}
const agentDaemonSet = (objects: K8sObject[]) => find<DaemonSet>(objects, 'DaemonSet', 'kiam');
const agentContainer = (ds: DaemonSet): Container => {
  const c = ds.spec.template.spec.containers.find((x) => x.name === 'kiam');
  assert.ok(c, 'container kiam');
  return c;
};
const overlayDirs = () => readdirSync(join(ROOT, 'deploy/overlays'), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();

/** Load the kubernetes-models class for an object, e.g. kubernetes-models/apps/v1/DaemonSet. */
async function modelClass(obj: K8sObject): Promise<new (data: unknown) => { validate(): void }> {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion];
  const path = `kubernetes-models/${group ? `${group}/` : ''}${version}/${obj.kind}`;
  const mod = (await import(path)) as Record<string, new (data: unknown) => { validate(): void }>;
  const cls = mod[obj.kind];
  assert.ok(cls, `${path} exports ${obj.kind}`);
  return cls;
}

type AttributeMap = Array<{ name: string; baseName: string; type: string }>;
const models = k8s as unknown as Record<string, { getAttributeTypeMap?: () => AttributeMap } | undefined>;

/**
 * Field names that the Kubernetes API does not have (a misspelt `hostNetwrok` passes JSON-schema validation,
 * which allows unknown properties), found by walking the object along client-node's generated model types.
 * Returns undefined when client-node has no model for the kind (e.g. PodSecurityPolicy, gone since 1.25).
 */
function unknownFields(obj: K8sObject): string[] | undefined {
  const root = `${obj.apiVersion.split('/').at(-1)!.replace(/^./, (c) => c.toUpperCase())}${obj.kind}`;
  if (!models[root]?.getAttributeTypeMap) return undefined;
  const problems: string[] = [];
  const walk = (value: unknown, type: string, path: string): void => {
    if (value === null || value === undefined) return;
    const array = /^Array<(.+)>$/.exec(type);
    if (array) {
      if (Array.isArray(value)) value.forEach((v, i) => walk(v, array[1]!, `${path}[${i}]`));
      return;
    }
    const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
    if (map) {
      for (const [k, v] of Object.entries(value as object)) walk(v, map[1]!, `${path}.${k}`);
      return;
    }
    const attrs = models[type]?.getAttributeTypeMap?.();
    if (!attrs || typeof value !== 'object' || Array.isArray(value)) return; // a scalar, IntOrString, Quantity…
    for (const [k, v] of Object.entries(value)) {
      const attr = attrs.find((a) => a.baseName === k);
      if (!attr) problems.push(`${path}.${k}`);
      else walk(v, attr.type, `${path}.${k}`);
    }
  };
  walk(obj, root, `${obj.kind}/${obj.metadata.name}`);
  return problems;
}

async function assertValidObjects(objects: K8sObject[], what: string): Promise<void> {
  assert.ok(objects.length > 0, `${what} renders something`);
  for (const obj of objects) {
    const label = `${what}: ${obj.kind}/${obj.metadata?.name}`;
    const Model = await modelClass(obj);
    assert.doesNotThrow(() => new Model(obj).validate(), label);
    const unknown = unknownFields(obj);
    if (unknown) assert.deepEqual(unknown, [], `${label}: fields the API does not know`);
  }
}

/** Kubernetes' $(VAR) expansion in command and args: defined variables are replaced, $$ is a literal $. */
function expandVars(arg: string, env: Record<string, string>): string {
  return arg.replace(/\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)/g, (m, name: string | undefined) => (name === undefined ? '$' : (env[name] ?? m)));
}
/** The container's environment as the kubelet would build it on NODE. */
function containerEnv(c: Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = expandVars(e.value, env);
    else if (e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName') env[e.name] = NODE.name;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'status.hostIP') env[e.name] = NODE.hostIP;
    else assert.fail(`env ${e.name}: unexpected source ${JSON.stringify(e.valueFrom)}`);
  }
  return env;
}
/** What the agent's parser makes of the container: args expanded as the kubelet does, env from the downward API. */
function parseContainer(c: Container) {
  const env = containerEnv(c);
  return parseCommandLine((c.args ?? []).map((a) => expandVars(a, env)), env);
}
function portNumber(c: Container, port: number | string): number {
  if (typeof port === 'number') return port;
  const p = c.ports?.find((x) => x.name === port);
  assert.ok(p, `named port ${port} exists`);
  return p.containerPort;
}
/** A constant from src/main.ts, which cannot be imported (importing it starts the program). */
function mainConstant(name: string): number {
  const m = new RegExp(`const ${name} = ([\\d_]+);`).exec(readFileSync(join(ROOT, 'src/main.ts'), 'utf8'));
  assert.ok(m, `src/main.ts defines ${name}: update this test if the shutdown timing moved`);
  return Number(m[1]!.replace(/_/g, ''));
}

// ---- tests ------------------------------------------------------------------------------------------------

describe('every render is valid Kubernetes', () => {
  test('the validators catch a wrong type and a misspelt field (a control for the tests below)', async () => {
    const ds = structuredClone(agentDaemonSet(render('deploy/overlays/calico')));
    const bad = structuredClone(ds);
    (bad.spec.template.spec as unknown as Record<string, unknown>).hostNetwork = 'yes';
    const Model = await modelClass(bad);
    assert.throws(() => new Model(bad).validate(), /hostNetwork must be boolean/);
    const typo = structuredClone(ds);
    (typo.spec.template.spec.containers[0] as unknown as Record<string, unknown>).imagePullPolicyy = 'Always';
    assert.deepEqual(unknownFields(typo), ['DaemonSet/kiam.spec.template.spec.containers[0].imagePullPolicyy']);
    assert.deepEqual(unknownFields(ds), []);
  });

  test('kubectl kustomize deploy/ renders the base: namespace, RBAC and the agent, nothing else', async () => {
    const objects = render('deploy');
    await assertValidObjects(objects, 'deploy');
    assert.deepEqual(
      objects.map((o) => `${o.kind}/${o.metadata.name}`).sort(),
      ['ClusterRole/kiam', 'ClusterRoleBinding/kiam', 'DaemonSet/kiam', 'Namespace/kiam', 'ServiceAccount/kiam'],
    );
  });

  test('one overlay per supported CNI, each valid', async () => {
    assert.deepEqual(overlayDirs(), Object.keys(OVERLAYS).sort());
    for (const name of overlayDirs()) await assertValidObjects(render(`deploy/overlays/${name}`), name);
  });

  test('the clean-up renders valid objects', async () => {
    await assertValidObjects(render('deploy/cleanup'), 'cleanup');
  });

  test('the kind end-to-end manifests (its overlay, the fakes, the client pods) are valid too', async () => {
    const overlay = render('test/e2e/kind/overlay');
    await assertValidObjects(overlay, 'kind overlay');
    assert.ok(agentDaemonSet(overlay), 'the kind overlay deploys the agent');
    for (const file of ['fakes.yaml', 'clients.yaml']) {
      const objects = parseYamlObjects(readFileSync(join(ROOT, 'test/e2e/kind', file), 'utf8'), file);
      assert.ok(objects.length > 0, `${file} holds objects`);
      await assertValidObjects(objects, file);
    }
  });

  test('psp.yaml validates against policy/v1beta1 and is in no render', async () => {
    const psp = parseYamlObjects(readFileSync(join(ROOT, 'deploy/psp.yaml'), 'utf8'), 'deploy/psp.yaml');
    await assertValidObjects(psp, 'psp.yaml');
    assert.match(readFileSync(join(ROOT, 'deploy/psp.yaml'), 'utf8').split('\n')[0]!, /^# ONLY for clusters older than Kubernetes 1\.25/);
    for (const dir of ['deploy', 'deploy/cleanup', ...overlayDirs().map((o) => `deploy/overlays/${o}`)]) {
      const names = render(dir).map((o) => `${o.kind}/${o.metadata.name}`);
      assert.ok(!names.some((n) => n.startsWith('PodSecurityPolicy/') || n.endsWith('/kiam-psp')), `${dir} leaves the PSP out`);
    }
  });
});

describe('namespace and RBAC', () => {
  const objects = render('deploy');

  test('the namespace is labelled privileged for all three Pod Security Admission modes', () => {
    const ns = find(objects, 'Namespace', 'kiam');
    for (const mode of ['enforce', 'audit', 'warn']) assert.equal(ns.metadata.labels?.[`pod-security.kubernetes.io/${mode}`], 'privileged', mode);
  });

  test('the ClusterRole reads pods and namespaces and nothing else', () => {
    const role = find<K8sObject & { rules: Array<Record<string, string[]>> }>(objects, 'ClusterRole', 'kiam');
    assert.equal(role.rules.length, 1);
    const rule = role.rules[0]!;
    assert.deepEqual(rule.apiGroups, ['']);
    assert.deepEqual([...rule.resources!].sort(), ['namespaces', 'pods']);
    assert.deepEqual([...rule.verbs!].sort(), ['get', 'list', 'watch']);
    assert.deepEqual(Object.keys(rule).sort(), ['apiGroups', 'resources', 'verbs'], 'no resourceNames or nonResourceURLs');
  });

  test('the agent writes nothing to the API (so no events create): no write calls in src/', () => {
    const files = readdirSync(join(ROOT, 'src'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
    for (const f of files) {
      const text = readFileSync(join(ROOT, 'src', f), 'utf8');
      assert.doesNotMatch(text, /\b(create|patch|replace|delete)Namespaced\w*\(|CoreV1Event|EventsV1Event|events\.k8s\.io/, `${f}: an API write needs an RBAC rule`);
    }
  });

  test('the binding gives that role to the service account the DaemonSet uses', () => {
    const binding = find<K8sObject & { roleRef: Record<string, string>; subjects: Array<Record<string, string>> }>(objects, 'ClusterRoleBinding', 'kiam');
    assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'kiam' });
    const ds = agentDaemonSet(objects);
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: ds.spec.template.spec.serviceAccountName, namespace: ds.metadata.namespace }]);
    find(objects, 'ServiceAccount', ds.spec.template.spec.serviceAccountName!);
  });
});

describe('the agent DaemonSet', () => {
  const objects = render('deploy/overlays/calico');
  const ds = agentDaemonSet(objects);
  const pod = ds.spec.template.spec;
  const c = agentContainer(ds);
  const inv = parseContainer(c);
  assert.equal(inv.kind, 'agent', `the calico overlay's args parse: ${inv.kind === 'exit' ? inv.output : ''}`);
  const config = inv.config;

  test('the args the DaemonSet passes are accepted by the real CLI parser, with the expected configuration', () => {
    assert.equal(config.nodeName, NODE.name, 'NODE_NAME from spec.nodeName');
    assert.equal(config.hostIp, NODE.hostIP, 'HOST_IP from status.hostIP');
    assert.equal(config.iptables, true);
    assert.deepEqual(config.hostInterfaces, ['cali+']);
    assert.equal(config.iptablesBackend, 'auto');
    assert.equal(config.roleBaseArnAutodetect, true, 'role names resolve against the node’s own account');
    assert.equal(config.roleBaseArn, undefined);
    assert.equal(config.removeRulesOnExit, false, 'rules stay while the agent restarts: pods fail closed');
    assert.equal(config.namespaceRestriction, true);
    assert.equal(config.kubeconfig, undefined, 'in-cluster service account');
    assert.equal(c.image.split('@')[0]!.split(':')[0], 'kiam', 'image name kiam, so kustomize `images:` can retarget it');
  });

  test('the arg positions deploy/README.md patches by index are where it says (its JSON patches test them too)', () => {
    assert.equal(pod.containers[0]?.name, 'kiam', 'containers/0');
    assert.equal(c.args?.[3], '--role-base-arn-autodetect', 'args/3');
  });

  test('NODE_NAME and HOST_IP come from the downward API', () => {
    const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    assert.equal(env.NODE_NAME, 'spec.nodeName');
    assert.equal(env.HOST_IP, 'status.hostIP');
  });

  test('hostNetwork, with cluster DNS, no host PID or IPC', () => {
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.dnsPolicy, 'ClusterFirstWithHostNet');
    assert.notEqual(pod.hostPID, true);
    assert.notEqual(pod.hostIPC, true);
    assert.equal(pod.automountServiceAccountToken, true, 'the agent needs its token to watch pods');
  });

  test('root in the container with only NET_ADMIN and NET_RAW, no escalation, read-only root, RuntimeDefault seccomp', () => {
    const sc = c.securityContext ?? {};
    assert.deepEqual(sc.capabilities?.drop, ['ALL']);
    assert.deepEqual([...(sc.capabilities?.add ?? [])].sort(), ['NET_ADMIN', 'NET_RAW']);
    assert.equal(sc.privileged, false);
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.equal(sc.readOnlyRootFilesystem, true);
    assert.equal(sc.seccompProfile?.type ?? pod.securityContext?.seccompProfile?.type, 'RuntimeDefault');
    // The image defaults to a non-root uid; added capabilities only take effect for uid 0 (no ambient caps).
    const user = imageUser(parseDockerfile().stages.at(-1)!);
    assert.ok(user && !user.startsWith('0'), 'the image itself is non-root');
    assert.equal(sc.runAsUser, 0, 'so the DaemonSet asks for root explicitly');
    assert.equal(sc.runAsNonRoot, false);
  });

  test('the node’s xtables lock is mounted (iptables-legacy locks it; the root filesystem is read-only)', () => {
    const mount = c.volumeMounts?.find((m) => m.mountPath === '/run/xtables.lock');
    assert.ok(mount, 'mounted at /run/xtables.lock');
    const volume = pod.volumes?.find((v) => v.name === mount.name);
    assert.deepEqual(volume?.hostPath, { path: '/run/xtables.lock', type: 'FileOrCreate' });
    assert.deepEqual(pod.volumes?.map((v) => v.name), [mount.name], 'no other host path');
  });

  test('metadata and metrics ports are the ones the agent listens on; probes and Prometheus use the metrics port', () => {
    const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p]));
    assert.equal(ports.metadata?.containerPort, config.port);
    assert.equal(ports.metrics?.containerPort, config.metricsPort);
    for (const p of c.ports ?? []) assert.ok(p.hostPort === undefined || p.hostPort === p.containerPort, 'hostNetwork: host port = container port');
    assert.equal(c.livenessProbe?.httpGet?.path, '/healthz');
    assert.equal(portNumber(c, c.livenessProbe!.httpGet!.port), config.metricsPort);
    assert.equal(c.readinessProbe?.httpGet?.path, '/readyz');
    assert.equal(portNumber(c, c.readinessProbe!.httpGet!.port), config.metricsPort);
    const annotations = ds.spec.template.metadata.annotations ?? {};
    assert.equal(annotations['prometheus.io/scrape'], 'true');
    assert.equal(annotations['prometheus.io/port'], String(config.metricsPort));
    assert.equal(annotations['prometheus.io/path'], '/metrics');
  });

  test('requests CPU and memory, limits memory only (no CPU throttling of a latency-critical server)', () => {
    const { requests = {}, limits = {} } = c.resources ?? {};
    assert.ok(requests.cpu && requests.memory, 'cpu and memory requests');
    assert.ok(limits.memory, 'a memory limit');
    assert.equal(limits.cpu, undefined, 'no CPU limit');
    const mi = (q: string) => Number(/^(\d+)Mi$/.exec(q)?.[1] ?? Number.NaN);
    assert.ok(mi(limits.memory) >= mi(requests.memory), 'limit ≥ request (both in Mi)');
  });

  test('memory follows the measured footprint (bench/last-run.json): request ≥ RSS after load, limit ≥ 2× the peak', () => {
    const run = JSON.parse(readFileSync(new URL('../../bench/last-run.json', import.meta.url), 'utf8')) as {
      rss_mb_after_load: number;
      footprint: { peak_rss_mb: number };
    };
    const mi = (q: string | undefined) => Number(/^(\d+)Mi$/.exec(q ?? '')?.[1] ?? Number.NaN);
    const { requests = {}, limits = {} } = c.resources ?? {};
    assert.ok(mi(requests.memory) >= run.rss_mb_after_load, `request ${requests.memory} < measured ${run.rss_mb_after_load} MiB after load`);
    assert.ok(mi(limits.memory) >= 2 * run.footprint.peak_rss_mb, `limit ${limits.memory} < 2 × measured peak ${run.footprint.peak_rss_mb} MiB`);
  });

  test('runs on every node: tolerates every taint, system-node-critical, Linux nodes only', () => {
    assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
    assert.equal(pod.priorityClassName, 'system-node-critical');
  });

  test('rolling update a fraction of nodes at a time, never a surge (host ports)', () => {
    const strategy = ds.spec.updateStrategy;
    assert.equal(strategy?.type, 'RollingUpdate');
    const max = strategy?.rollingUpdate?.maxUnavailable;
    assert.match(String(max), /^([1-9]|[1-4]\d)%$/, `maxUnavailable ${max}: a percentage, at most half the nodes`);
    assert.equal(strategy?.rollingUpdate?.maxSurge ?? 0, 0);
  });

  test('the grace period outlasts the agent’s own shutdown (stop hooks, then the hard exit)', () => {
    const grace = pod.terminationGracePeriodSeconds;
    assert.ok(grace !== undefined);
    const hardExitMs = mainConstant('HARD_EXIT_MS');
    assert.ok(mainConstant('SHUTDOWN_DEADLINE_MS') < hardExitMs);
    assert.ok(grace * 1000 >= hardExitMs + 2000, `${grace} s leaves ≥ 2 s after the hard exit at ${hardExitMs} ms`);
  });

  test('the image is kiam at the package version', () => {
    for (const dir of ['deploy', 'deploy/cleanup', ...overlayDirs().map((o) => `deploy/overlays/${o}`)]) {
      for (const obj of render(dir).filter((o) => o.kind === 'DaemonSet') as DaemonSet[]) {
        for (const ctr of [...(obj.spec.template.spec.initContainers ?? []), ...obj.spec.template.spec.containers]) {
          assert.equal(ctr.image, `kiam:${pkg.version}`, `${dir} ${obj.metadata.name}/${ctr.name}`);
        }
      }
    }
  });
});

describe('overlays', () => {
  const base = agentDaemonSet(render('deploy'));

  test('the base alone is refused by the agent: the placeholder interface is no pattern (exit 2)', () => {
    const inv = parseContainer(agentContainer(base));
    assert.equal(inv.kind, 'exit');
    assert.equal(inv.kind === 'exit' && inv.code, 2);
    assert.match(inv.kind === 'exit' ? inv.output : '', /--host-interface: host interface "<CNI-overlay>"/);
  });

  for (const [name, iface] of Object.entries(OVERLAYS)) {
    test(`${name}: --host-interface ${iface}, and nothing else differs from the base`, () => {
      const objects = render(`deploy/overlays/${name}`);
      const ds = agentDaemonSet(objects);
      const inv = parseContainer(agentContainer(ds));
      assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : '');
      assert.deepEqual(inv.kind === 'agent' && inv.config.hostInterfaces, [iface]);
      // Put the base's placeholder back: the overlay must then be the base, object for object.
      const reverted = structuredClone(objects);
      const env = agentContainer(agentDaemonSet(reverted)).env!.find((e) => e.name === 'KIAM_HOST_INTERFACE')!;
      env.value = agentContainer(base).env!.find((e) => e.name === 'KIAM_HOST_INTERFACE')!.value;
      // (A strategic merge moves the patched env entry first; env order only matters for $(VAR) references
      // between env entries, and these have none.)
      const sortEnv = (objs: K8sObject[]) => {
        for (const o of objs.filter((x) => x.kind === 'DaemonSet') as DaemonSet[]) {
          for (const ctr of o.spec.template.spec.containers) ctr.env?.sort((a, b) => a.name.localeCompare(b.name));
        }
        return objs;
      };
      assert.deepEqual(sortEnv(reverted), sortEnv(structuredClone(render('deploy'))));
    });
  }

  test('cilium: its overlay warns that eBPF host routing bypasses netfilter', () => {
    const text = readFileSync(join(ROOT, 'deploy/overlays/cilium/kustomization.yaml'), 'utf8');
    assert.match(text, /eBPF host routing/);
    assert.match(text, /bpf\.hostLegacyRouting=true/);
  });
});

describe('clean-up', () => {
  const objects = render('deploy/cleanup');

  test('renders the namespace and the clean-up DaemonSet but not the agent', () => {
    assert.ok(!objects.some((o) => o.kind === 'DaemonSet' && o.metadata.name === 'kiam'), 'no agent');
    find(objects, 'Namespace', 'kiam');
  });

  test('runs `kiam iptables remove` on every node with the agent’s network privileges and no API access', () => {
    const ds = find<DaemonSet>(objects, 'DaemonSet', 'kiam-cleanup');
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.automountServiceAccountToken, false);
    assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
    const remove = pod.initContainers?.find((x) => x.name === 'remove');
    assert.ok(remove);
    const inv = parseContainer(remove);
    assert.equal(inv.kind, 'iptables', inv.kind === 'exit' ? inv.output : '');
    assert.equal(inv.kind === 'iptables' && inv.action, 'remove');
    const agent = agentContainer(agentDaemonSet(render('deploy/overlays/calico')));
    assert.deepEqual(remove.securityContext, agent.securityContext, 'the same privileges as the agent, no more');
    assert.deepEqual(remove.volumeMounts, agent.volumeMounts);
    // The container that keeps the pod Running has nothing.
    for (const ctr of pod.containers) {
      assert.deepEqual(ctr.securityContext?.capabilities, { drop: ['ALL'] });
      assert.equal(ctr.securityContext?.runAsNonRoot, true);
      assert.equal(ctr.securityContext?.allowPrivilegeEscalation, false);
    }
  });
});

describe('psp.yaml (clusters < 1.25) admits exactly what the DaemonSets ask for', () => {
  const objects = parseYamlObjects(readFileSync(join(ROOT, 'deploy/psp.yaml'), 'utf8'), 'deploy/psp.yaml');
  const psp = find<K8sObject & { spec: Record<string, any> }>(objects, 'PodSecurityPolicy', 'kiam').spec;
  const daemonSets = [agentDaemonSet(render('deploy/overlays/calico')), find<DaemonSet>(render('deploy/cleanup'), 'DaemonSet', 'kiam-cleanup')];

  test('capabilities, escalation, root filesystem, host network and ports, host paths', () => {
    assert.equal(psp.privileged, false);
    assert.equal(psp.allowPrivilegeEscalation, false);
    assert.deepEqual(psp.requiredDropCapabilities, ['ALL']);
    assert.equal(psp.readOnlyRootFilesystem, true);
    for (const ds of daemonSets) {
      const pod = ds.spec.template.spec;
      assert.equal(psp.hostNetwork, pod.hostNetwork);
      for (const ctr of [...(pod.initContainers ?? []), ...pod.containers]) {
        for (const cap of ctr.securityContext?.capabilities?.add ?? []) assert.ok(psp.allowedCapabilities.includes(cap), `${cap} allowed`);
        assert.equal(ctr.securityContext?.readOnlyRootFilesystem, true);
        for (const p of ctr.ports ?? []) {
          assert.ok(psp.hostPorts.some((r: { min: number; max: number }) => r.min <= p.containerPort && p.containerPort <= r.max), `host port ${p.containerPort}`);
        }
      }
      for (const v of pod.volumes ?? []) {
        if (v.hostPath) assert.ok(psp.allowedHostPaths.some((a: { pathPrefix: string }) => v.hostPath!.path.startsWith(a.pathPrefix)), v.hostPath.path);
      }
      assert.ok(psp.volumes.includes('hostPath') && psp.volumes.includes('projected'), 'hostPath and the projected token volume');
    }
    assert.equal(psp.runAsUser.rule, 'RunAsAny', 'the agent runs as uid 0');
  });

  test('use is granted to the service accounts of both DaemonSets, in the kiam namespace only', () => {
    const role = find<K8sObject & { rules: Array<Record<string, string[]>> }>(objects, 'ClusterRole', 'kiam-psp');
    assert.deepEqual(role.rules, [{ apiGroups: ['policy'], resources: ['podsecuritypolicies'], resourceNames: ['kiam'], verbs: ['use'] }]);
    const binding = find<K8sObject & { subjects: Array<Record<string, string>> }>(objects, 'RoleBinding', 'kiam-psp');
    assert.equal(binding.metadata.namespace, 'kiam');
    for (const ds of daemonSets) {
      const sa = ds.spec.template.spec.serviceAccountName ?? 'default';
      assert.ok(binding.subjects.some((s) => s.kind === 'ServiceAccount' && s.name === sa && s.namespace === ds.metadata.namespace), `${ds.metadata.name} (${sa})`);
    }
  });
});
