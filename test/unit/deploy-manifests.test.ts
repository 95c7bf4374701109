/**
 * The Kubernetes manifests in deploy/, rendered offline with `kubectl kustomize` (the base, every CNI overlay and
 * the clean-up), each object validated against the Kubernetes schemas (kubernetes-models' validate(), plus a check
 * for field names the API does not know, from @kubernetes/client-node's generated models; custom resources, which
 * neither knows, get an explicit check of their own), and the fields that security and correctness depend on
 * asserted. The containers' args (the agent's, `kiam init`'s, the clean-up's) go through the real command line
 * parser with the environment the downward API would give them.
 */
import { after, test, describe } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { dirname, join, relative } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parseCommandLine } from '../../src/cli.ts';
import type { Config } from '../../src/config.ts';
import { DEFAULT_CGROUP_ROOT, FALLBACK_CGROUP_ROOT, resolveCgroupRoot } from '../../src/netfilter/ebpf/support.ts';
import { certificateProblems, imageUser, issuerProblems, kustomize, parseDockerfile, parseYamlObjects, pkg, requireKubectl, ROOT, type K8sObject } from './deploy-support.ts';
import { DEFAULTS as AGENT_DEFAULTS } from '../../src/config.ts';
import { CONTAINER_CREDENTIALS_KEY } from '../../src/webhook/patch.ts';
import { SHUTDOWN_DELAY_MS } from '../../src/webhook/run.ts';

/** Each overlay and the --host-interface it must give the agent. A new overlay needs a line here. */
const OVERLAYS: Record<string, string> = {
  calico: 'cali+',
  'aws-vpc-cni': 'eni+',
  flannel: 'cni0',
  bridge: 'cni0',
  weave: 'weave',
  kindnet: 'veth+',
  cilium: 'lxc+',
  'cilium-lrp': 'lxc+',
};
/** Overlays that change more than the interface (checked on their own below). */
const SPECIAL_OVERLAYS = new Set(['cilium-lrp']);

/**
 * The agent container's capabilities, measured with bpftool 7.1 and iptables 1.8.9 under `setpriv --bounding-set`
 * in a throwaway network namespace, private cgroup2 and bpffs (deploy/README.md, "Capabilities, measured"):
 * iptables needs NET_ADMIN and NET_RAW; bpftool needs SYS_ADMIN to read what is attached (programs and BTF by id),
 * which also covers loading the programs again. bpftool's kernel feature probe (BPF, NET_ADMIN, PERFMON, SYS_ADMIN)
 * runs in the privileged init container only.
 */
const MEASURED_AGENT_CAPABILITIES = ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN'];

/**
 * The kustomize Component that turns on --container-credentials, and what it adds to the agent's capabilities:
 * NET_BIND_SERVICE, for port 80 (measured: as root with only the set above, bind(2) to 169.254.170.23:80 fails with
 * EACCES; deploy/README.md, "Container credentials"). The dummy link and its addresses need NET_ADMIN, already there.
 */
const COMPONENT = 'deploy/components/container-credentials';
const COMPONENT_CAPABILITIES = ['NET_BIND_SERVICE'];

/** What the downward API would give the pod in the test's imaginary node (IPv4 only, as most nodes are). */
const NODE = { name: 'ip-10-0-1-23.eu-west-1.compute.internal', hostIP: '10.0.1.23', hostIPs: '10.0.1.23' };
/** A dual-stack node: status.hostIPs lists both families, the primary (status.hostIP) first. */
const DUAL_STACK_NODE = { ...NODE, hostIPs: '10.0.1.23,2001:db8:0:1::23' };
type TestNode = typeof NODE;

// ---- minimal typed views of what the tests read -----------------------------------------------------------

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  image: string;
  imagePullPolicy?: string;
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
  volumeMounts?: VolumeMount[];
}
interface VolumeMount {
  name: string;
  mountPath: string;
  readOnly?: boolean;
  mountPropagation?: string;
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
    selector: { matchLabels?: Record<string, string> };
    updateStrategy?: { type: string; rollingUpdate?: { maxUnavailable?: string | number; maxSurge?: string | number } };
    template: { metadata: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec: PodSpec };
  };
}
interface PortSelector {
  port: string;
  protocol?: string;
  name?: string;
}
interface LocalRedirectPolicy extends K8sObject {
  spec: {
    redirectFrontend: { addressMatcher?: { ip: string; toPorts: PortSelector[] }; serviceMatcher?: unknown };
    redirectBackend: { localEndpointSelector: { matchLabels?: Record<string, string> }; toPorts: PortSelector[] };
    skipRedirectFromBackend?: boolean;
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
/**
 * An overlay with the container-credentials component, as an operator's kustomization would use them: a throwaway
 * kustomization in a temporary directory (kustomize wants relative paths to both), rendered, then removed.
 */
function renderWithComponent(overlay: string): K8sObject[] {
  const key = `${overlay} + ${COMPONENT}`;
  let objects = renders.get(key);
  if (objects) return objects;
  const dir = mkdtempSync(join(tmpdir(), 'kiam-component-'));
  try {
    const rel = (path: string) => relative(dir, join(ROOT, path));
    writeFileSync(
      join(dir, 'kustomization.yaml'),
      [
        'apiVersion: kustomize.config.k8s.io/v1beta1',
        'kind: Kustomization',
        'resources:',
        `  - ${rel(`deploy/overlays/${overlay}`)}`,
        'components:',
        `  - ${rel(COMPONENT)}`,
        '',
      ].join('\n'),
    );
    objects = kustomize(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  renders.set(key, objects);
  return objects;
}
const agentDaemonSet = (objects: K8sObject[]) => find<DaemonSet>(objects, 'DaemonSet', 'kiam');
const agentContainer = (ds: DaemonSet): Container => {
  const c = ds.spec.template.spec.containers.find((x) => x.name === 'kiam');
  assert.ok(c, 'container kiam');
  return c;
};
const initContainer = (ds: DaemonSet): Container => {
  const c = ds.spec.template.spec.initContainers?.find((x) => x.name === 'init');
  assert.ok(c, 'init container init');
  return c;
};
/** The host path a container sees at `mountPath`, with the mount's settings. */
function hostMount(pod: PodSpec, c: Container, mountPath: string): VolumeMount & { hostPath: string; type?: string } {
  const m = c.volumeMounts?.find((x) => x.mountPath === mountPath);
  assert.ok(m, `${c.name} mounts ${mountPath}`);
  const v = pod.volumes?.find((x) => x.name === m.name);
  assert.ok(v?.hostPath, `${c.name}: ${m.name} is a hostPath volume`);
  return { ...m, hostPath: v.hostPath.path, ...(v.hostPath.type ? { type: v.hostPath.type } : {}) };
}
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

/** The string form of an L4 port in Cilium's CRDs ("80", never 80). */
const CILIUM_PORT = /^([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2]\d|6553[0-5])$/;

/**
 * The fields of a CiliumLocalRedirectPolicy (cilium.io/v2) this repository uses, checked by hand: neither
 * kubernetes-models nor client-node knows Cilium's CRDs. Field names and types follow Cilium's documentation and
 * its example kiam-lrp.yaml (https://docs.cilium.io/en/stable/network/kubernetes/local-redirect-policy/).
 * Returns the problems found, empty when none.
 */
function localRedirectPolicyProblems(obj: unknown): string[] {
  const problems: string[] = [];
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const keys = (v: Record<string, unknown>, path: string, allowed: string[], required: string[] = []) => {
    for (const k of Object.keys(v)) if (!allowed.includes(k)) problems.push(`${path}.${k}: unknown field`);
    for (const k of required) if (!(k in v)) problems.push(`${path}.${k}: missing`);
  };
  const ports = (v: unknown, path: string) => {
    if (!Array.isArray(v) || v.length === 0) return void problems.push(`${path}: must be a non-empty list`);
    v.forEach((p: unknown, i) => {
      const at = `${path}[${i}]`;
      if (!isObject(p)) return void problems.push(`${at}: must be an object`);
      keys(p, at, ['port', 'protocol', 'name'], ['port']);
      if (typeof p.port !== 'string' || !CILIUM_PORT.test(p.port)) problems.push(`${at}.port: must be a port number as a string`);
      if (p.protocol !== undefined && p.protocol !== 'TCP' && p.protocol !== 'UDP') problems.push(`${at}.protocol: must be TCP or UDP`);
      if (p.name !== undefined && typeof p.name !== 'string') problems.push(`${at}.name: must be a string`);
    });
    if (v.length > 1 && !v.every((p: { name?: unknown }) => typeof p?.name === 'string')) problems.push(`${path}: several ports must be named`);
  };
  if (!isObject(obj)) return ['not an object'];
  keys(obj, 'CiliumLocalRedirectPolicy', ['apiVersion', 'kind', 'metadata', 'spec'], ['metadata', 'spec']);
  if (obj.apiVersion !== 'cilium.io/v2') problems.push('apiVersion: must be cilium.io/v2');
  const metadata = obj.metadata;
  if (!isObject(metadata) || typeof metadata.name !== 'string' || typeof metadata.namespace !== 'string') problems.push('metadata: needs a name and a namespace (the policy is namespaced)');
  const spec = obj.spec;
  if (!isObject(spec)) return [...problems, 'spec: must be an object'];
  keys(spec, 'spec', ['redirectFrontend', 'redirectBackend', 'skipRedirectFromBackend', 'description'], ['redirectFrontend', 'redirectBackend']);
  if (spec.skipRedirectFromBackend !== undefined && typeof spec.skipRedirectFromBackend !== 'boolean') problems.push('spec.skipRedirectFromBackend: must be a boolean');
  const front = spec.redirectFrontend;
  if (isObject(front)) {
    keys(front, 'spec.redirectFrontend', ['addressMatcher', 'serviceMatcher']);
    if (('addressMatcher' in front) === ('serviceMatcher' in front)) problems.push('spec.redirectFrontend: exactly one of addressMatcher, serviceMatcher');
    const am = front.addressMatcher;
    if (am !== undefined) {
      if (!isObject(am)) problems.push('spec.redirectFrontend.addressMatcher: must be an object');
      else {
        keys(am, 'spec.redirectFrontend.addressMatcher', ['ip', 'toPorts'], ['ip', 'toPorts']);
        if (typeof am.ip !== 'string' || isIP(am.ip) === 0) problems.push('spec.redirectFrontend.addressMatcher.ip: must be an IP address');
        ports(am.toPorts, 'spec.redirectFrontend.addressMatcher.toPorts');
      }
    }
  } else problems.push('spec.redirectFrontend: must be an object');
  const back = spec.redirectBackend;
  if (isObject(back)) {
    keys(back, 'spec.redirectBackend', ['localEndpointSelector', 'toPorts'], ['localEndpointSelector', 'toPorts']);
    const sel = back.localEndpointSelector;
    if (!isObject(sel)) problems.push('spec.redirectBackend.localEndpointSelector: must be an object');
    else {
      keys(sel, 'spec.redirectBackend.localEndpointSelector', ['matchLabels', 'matchExpressions']);
      const labels = sel.matchLabels;
      if (labels !== undefined && (!isObject(labels) || !Object.values(labels).every((x) => typeof x === 'string'))) {
        problems.push('spec.redirectBackend.localEndpointSelector.matchLabels: must map strings to strings');
      }
    }
    ports(back.toPorts, 'spec.redirectBackend.toPorts');
  } else problems.push('spec.redirectBackend: must be an object');
  return problems;
}

/** Custom resources the repository ships, each with its explicit check (the schema walk below skips them). */
const CUSTOM_RESOURCES: Record<string, (obj: K8sObject) => string[]> = {
  'cilium.io/v2 CiliumLocalRedirectPolicy': localRedirectPolicyProblems,
  'cert-manager.io/v1 Issuer': issuerProblems,
  'cert-manager.io/v1 Certificate': certificateProblems,
};

async function assertValidObjects(objects: K8sObject[], what: string): Promise<void> {
  assert.ok(objects.length > 0, `${what} renders something`);
  for (const obj of objects) {
    const label = `${what}: ${obj.kind}/${obj.metadata?.name}`;
    const custom = CUSTOM_RESOURCES[`${obj.apiVersion} ${obj.kind}`];
    if (custom) {
      assert.deepEqual(custom(obj), [], `${label}: as the CRD expects`);
      continue;
    }
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
/**
 * The container's environment as the kubelet would build it on `node`: status.hostIPs is the node's addresses
 * joined with commas, the primary first (kubelet's podFieldSelectorRuntimeValue; KEP-2681, GA in 1.30).
 */
function containerEnv(c: Container, node: TestNode = NODE): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = expandVars(e.value, env);
    else if (e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName') env[e.name] = node.name;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'status.hostIP') env[e.name] = node.hostIP;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'status.hostIPs') env[e.name] = node.hostIPs;
    else assert.fail(`env ${e.name}: unexpected source ${JSON.stringify(e.valueFrom)}`);
  }
  return env;
}
/** What the agent's parser makes of the container: args expanded as the kubelet does, env from the downward API. */
function parseContainer(c: Container, node: TestNode = NODE) {
  const env = containerEnv(c, node);
  return parseCommandLine((c.args ?? []).map((a) => expandVars(a, env)), env);
}
/** The interception settings, which `kiam init`, the agent and the clean-up must agree on. */
function interception(config: Config) {
  const { hostIp, hostIpv6, port, intercept, iptables, ebpf, hostInterfaces, iptablesBackend, cgroupRoot, bpffs } = config;
  return { hostIp, hostIpv6, port, intercept, iptables, ebpf, hostInterfaces, iptablesBackend, cgroupRoot, bpffs };
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

  test('the CiliumLocalRedirectPolicy check catches a misspelt field, a numeric port and a missing backend (a control)', () => {
    const lrp = find<LocalRedirectPolicy>(render('deploy/overlays/cilium-lrp'), 'CiliumLocalRedirectPolicy', 'kiam-metadata');
    assert.deepEqual(localRedirectPolicyProblems(lrp), []);
    const typo = structuredClone(lrp) as unknown as { spec: Record<string, unknown> };
    typo.spec.skipRedirectFromBackends = true;
    assert.deepEqual(localRedirectPolicyProblems(typo), ['spec.skipRedirectFromBackends: unknown field']);
    const numeric = structuredClone(lrp);
    (numeric.spec.redirectBackend.toPorts[0] as unknown as { port: number }).port = 8181;
    assert.deepEqual(localRedirectPolicyProblems(numeric), ['spec.redirectBackend.toPorts[0].port: must be a port number as a string']);
    const noBackend = structuredClone(lrp) as unknown as { spec: Record<string, unknown> };
    delete noBackend.spec.redirectBackend;
    assert.deepEqual(localRedirectPolicyProblems(noBackend), ['spec.redirectBackend: missing', 'spec.redirectBackend: must be an object']);
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
    const ds = agentDaemonSet(overlay);
    // The kind nodes have only the image loaded by `kind load`: neither container may pull.
    for (const ctr of [initContainer(ds), agentContainer(ds)]) {
      assert.equal(ctr.image, 'kiam:e2e', ctr.name);
      assert.equal(ctr.imagePullPolicy, 'Never', ctr.name);
    }
    const inv = parseContainer(initContainer(ds));
    assert.equal(inv.kind, 'init', inv.kind === 'exit' ? inv.output : '');
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

  test('the ClusterRole reads pods and namespaces, gets service accounts, creates TokenReviews, and nothing else', () => {
    const role = find<K8sObject & { rules: Array<Record<string, string[]>> }>(objects, 'ClusterRole', 'kiam');
    assert.equal(role.rules.length, 3);
    const [rule, serviceAccounts, tokenReviews] = role.rules;
    assert.deepEqual(rule!.apiGroups, ['']);
    assert.deepEqual([...rule!.resources!].sort(), ['namespaces', 'pods']);
    assert.deepEqual([...rule!.verbs!].sort(), ['get', 'list', 'watch']);
    // --container-credentials: a pod's service account (its role annotation) and the TokenReview of a pod's token.
    assert.deepEqual(serviceAccounts, { apiGroups: [''], resources: ['serviceaccounts'], verbs: ['get'] });
    assert.deepEqual(tokenReviews, { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] });
    for (const r of role.rules) assert.deepEqual(Object.keys(r).sort(), ['apiGroups', 'resources', 'verbs'], 'no resourceNames or nonResourceURLs');
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
  const initInvConfig = (): Config => {
    const i = parseContainer(initContainer(ds));
    assert.equal(i.kind, 'init', i.kind === 'exit' ? i.output : '');
    return i.config;
  };

  test('the args the DaemonSet passes are accepted by the real CLI parser, with the expected configuration', () => {
    assert.equal(config.nodeName, NODE.name, 'NODE_NAME from spec.nodeName');
    assert.equal(config.hostIp, NODE.hostIP, 'HOST_IP from status.hostIP');
    assert.equal(config.hostIpv6, undefined, 'an IPv4-only node has no IPv6 address to listen on');
    assert.equal(config.intercept, 'auto', 'the eBPF socket redirect where the kernel allows it, plus the iptables rules');
    assert.equal(config.iptables, true);
    assert.equal(config.ebpf, true);
    assert.equal(config.bpffs, '/sys/fs/bpf');
    assert.equal(config.cgroupRoot, undefined, 'the default: /sys/fs/cgroup where it is cgroup2, else the fallback init mounts');
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

  test('NODE_NAME, HOST_IP and HOST_IPS come from the downward API', () => {
    const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath]));
    assert.equal(env.NODE_NAME, 'spec.nodeName');
    assert.equal(env.HOST_IP, 'status.hostIP');
    // The downward API cannot pick "the IPv6 address": status.hostIPs gives all of them, comma-separated.
    assert.equal(env.HOST_IPS, 'status.hostIPs');
    assert.ok(!c.args?.some((a) => a.startsWith('--host-ipv6')), 'no --host-ipv6=$(…): it would be empty on an IPv4-only node');
  });

  test('on a dual-stack node the agent and kiam init take the IPv6 address from HOST_IPS (status.hostIPs)', () => {
    for (const ctr of [c, initContainer(ds)]) {
      const dual = parseContainer(ctr, DUAL_STACK_NODE);
      assert.ok(dual.kind === 'agent' || dual.kind === 'init', `${ctr.name}: ${dual.kind === 'exit' ? dual.output : dual.kind}`);
      assert.equal(dual.config.hostIp, '10.0.1.23', `${ctr.name}: the IPv4 address stays --host-ip`);
      assert.equal(dual.config.hostIpv6, '2001:db8:0:1::23', `${ctr.name}: the IPv6 entry of HOST_IPS becomes --host-ipv6`);
    }
  });

  test('the init container runs `kiam init` with the agent’s interception flags, privileged, from the same image', () => {
    const init = initContainer(ds);
    assert.deepEqual(pod.initContainers?.map((x) => x.name), ['init'], 'one init container');
    const initInv = parseContainer(init);
    assert.equal(initInv.kind, 'init', initInv.kind === 'exit' ? initInv.output : '');
    assert.deepEqual(interception(initInv.config), interception(config), 'the same pins, cgroup, addresses, port and interfaces');
    assert.equal(initInv.config.intercept, 'auto');
    assert.equal(init.image, c.image);
    assert.equal(init.imagePullPolicy, c.imagePullPolicy);
    // mount(2) needs CAP_SYS_ADMIN past the runtime's seccomp and AppArmor defaults, and Bidirectional mount
    // propagation is only allowed to privileged containers.
    const sc = init.securityContext ?? {};
    assert.equal(sc.privileged, true);
    assert.notEqual(sc.allowPrivilegeEscalation, false, 'the API refuses privileged with allowPrivilegeEscalation: false');
    assert.equal(sc.runAsUser, 0);
    assert.equal(sc.readOnlyRootFilesystem, true, 'it writes only to its host paths');
    assert.ok(init.resources?.requests?.memory && init.resources.limits?.memory, 'init has memory requests and limits');
  });

  test('hostNetwork, with cluster DNS, no host PID or IPC', () => {
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.dnsPolicy, 'ClusterFirstWithHostNet');
    assert.notEqual(pod.hostPID, true);
    assert.notEqual(pod.hostIPC, true);
    assert.equal(pod.automountServiceAccountToken, true, 'the agent needs its token to watch pods');
  });

  test('root in the container with only the measured capabilities, no escalation, read-only root, RuntimeDefault seccomp', () => {
    const sc = c.securityContext ?? {};
    assert.deepEqual(sc.capabilities?.drop, ['ALL']);
    assert.deepEqual([...(sc.capabilities?.add ?? [])].sort(), MEASURED_AGENT_CAPABILITIES);
    // deploy/README.md gives the measurement and states the same set.
    const readme = readFileSync(join(ROOT, 'deploy/README.md'), 'utf8');
    const stated = /^\*\*The agent's capabilities:\*\* (.+)$/m.exec(readme);
    assert.ok(stated, 'deploy/README.md states the agent’s capabilities');
    assert.deepEqual([...stated[1]!.matchAll(/`([A-Z_]+)`/g)].map((m) => m[1]).sort(), MEASURED_AGENT_CAPABILITIES);
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

  test('the node’s xtables lock is mounted in both containers (iptables-legacy locks it; the root filesystem is read-only)', () => {
    for (const ctr of [c, initContainer(ds)]) {
      const lock = hostMount(pod, ctr, '/run/xtables.lock');
      assert.equal(lock.hostPath, '/run/xtables.lock');
      assert.equal(lock.type, 'FileOrCreate');
      assert.notEqual(lock.readOnly, true);
    }
  });

  test('host paths: exactly the xtables lock, the bpffs, the cgroup filesystem and /run/kiam', () => {
    assert.deepEqual(
      (pod.volumes ?? []).map((v) => `${v.hostPath?.path} ${v.hostPath?.type}`).sort(),
      ['/run/kiam DirectoryOrCreate', '/run/xtables.lock FileOrCreate', '/sys/fs/bpf DirectoryOrCreate', '/sys/fs/cgroup Directory'],
    );
  });

  test('bpffs at --bpffs: init may mount one there (Bidirectional, so it reaches the node), the agent re-pins into it', () => {
    const initBpf = hostMount(pod, initContainer(ds), config.bpffs);
    assert.equal(initBpf.hostPath, '/sys/fs/bpf');
    assert.equal(initBpf.mountPropagation, 'Bidirectional');
    assert.notEqual(initBpf.readOnly, true);
    const agentBpf = hostMount(pod, c, config.bpffs);
    assert.equal(agentBpf.hostPath, '/sys/fs/bpf');
    assert.notEqual(agentBpf.readOnly, true, 'writable: the agent loads and pins the programs again when their pins are gone');
    assert.equal(agentBpf.mountPropagation, 'HostToContainer', 'a bpffs init mounted on the node shows in the agent');
  });

  test('the cgroup root resolves to the node’s cgroup2, the same in init and agent, on cgroup v2 and v1/hybrid nodes', () => {
    // Both containers leave --cgroup-root to its default, and see the same mounts, so they resolve it alike:
    // cgroup v2 node, /sys/fs/cgroup is cgroup2 → attach there; cgroup v1 or hybrid node, it is a tmpfs → the
    // fallback, where init mounts cgroup2, under /run/kiam.
    assert.equal(resolveCgroupRoot(undefined, [{ mountPoint: '/', fsType: 'overlay' }, { mountPoint: DEFAULT_CGROUP_ROOT, fsType: 'cgroup2' }]), DEFAULT_CGROUP_ROOT);
    assert.equal(resolveCgroupRoot(undefined, [{ mountPoint: '/', fsType: 'overlay' }, { mountPoint: DEFAULT_CGROUP_ROOT, fsType: 'tmpfs' }]), FALLBACK_CGROUP_ROOT);
    assert.equal(initInvConfig().cgroupRoot, config.cgroupRoot);
    for (const ctr of [initContainer(ds), c]) {
      // The node's /sys/fs/cgroup is mounted over the container's own (a cgroup namespace would show only the
      // container's cgroup there), read-only: attaching needs only a read-only descriptor of the directory.
      const cg = hostMount(pod, ctr, DEFAULT_CGROUP_ROOT);
      assert.equal(cg.hostPath, '/sys/fs/cgroup', ctr.name);
      assert.equal(cg.readOnly, true, ctr.name);
      const run = hostMount(pod, ctr, dirname(FALLBACK_CGROUP_ROOT));
      assert.equal(run.hostPath, dirname(FALLBACK_CGROUP_ROOT), ctr.name);
    }
    const initRun = hostMount(pod, initContainer(ds), dirname(FALLBACK_CGROUP_ROOT));
    assert.equal(initRun.mountPropagation, 'Bidirectional', 'the cgroup2 init mounts there reaches the node');
    assert.notEqual(initRun.readOnly, true);
    const agentRun = hostMount(pod, c, dirname(FALLBACK_CGROUP_ROOT));
    assert.equal(agentRun.mountPropagation, 'HostToContainer', 'and the agent');
    assert.equal(agentRun.readOnly, true, 'the agent only reads it by path');
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

  test('the base alone is refused by the agent and by kiam init: the placeholder interface is no pattern (exit 2)', () => {
    for (const ctr of [agentContainer(base), initContainer(base)]) {
      const inv = parseContainer(ctr);
      assert.equal(inv.kind, 'exit', ctr.name);
      assert.equal(inv.kind === 'exit' && inv.code, 2);
      assert.match(inv.kind === 'exit' ? inv.output : '', /--host-interface: host interface "<CNI-overlay>"/);
    }
  });

  /** Put the base's KIAM_HOST_INTERFACE placeholder back into every container of the render. */
  const revertInterface = (objects: K8sObject[]): K8sObject[] => {
    const placeholder = agentContainer(base).env!.find((e) => e.name === 'KIAM_HOST_INTERFACE')!.value;
    const reverted = structuredClone(objects);
    for (const o of reverted.filter((x) => x.kind === 'DaemonSet') as DaemonSet[]) {
      for (const ctr of [...(o.spec.template.spec.initContainers ?? []), ...o.spec.template.spec.containers]) {
        const env = ctr.env?.find((e) => e.name === 'KIAM_HOST_INTERFACE');
        if (env) env.value = placeholder;
      }
    }
    return reverted;
  };
  // (A strategic merge moves the patched env entry first; env order only matters for $(VAR) references between
  // env entries, and these have none.)
  const sortEnv = (objs: K8sObject[]) => {
    for (const o of objs.filter((x) => x.kind === 'DaemonSet') as DaemonSet[]) {
      for (const ctr of [...(o.spec.template.spec.initContainers ?? []), ...o.spec.template.spec.containers]) {
        ctr.env?.sort((a, b) => a.name.localeCompare(b.name));
      }
    }
    return objs;
  };

  for (const [name, iface] of Object.entries(OVERLAYS)) {
    const special = SPECIAL_OVERLAYS.has(name);
    test(`${name}: --host-interface ${iface} for kiam init and the agent${special ? '' : ', and nothing else differs from the base'}`, () => {
      const objects = render(`deploy/overlays/${name}`);
      const ds = agentDaemonSet(objects);
      const inv = parseContainer(agentContainer(ds));
      assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : '');
      assert.deepEqual(inv.kind === 'agent' && inv.config.hostInterfaces, [iface]);
      if (special) return; // checked in its own describe below
      const init = parseContainer(initContainer(ds));
      assert.equal(init.kind, 'init', init.kind === 'exit' ? init.output : '');
      assert.deepEqual(init.kind === 'init' && init.config.hostInterfaces, [iface]);
      // With the base's placeholder back, the overlay must be the base, object for object.
      assert.deepEqual(sortEnv(revertInterface(objects)), sortEnv(structuredClone(render('deploy'))));
    });
  }

  test('cilium: kiam’s eBPF redirect holds with eBPF host routing; the overlay says when hostLegacyRouting is still needed', () => {
    const text = readFileSync(join(ROOT, 'deploy/overlays/cilium/kustomization.yaml'), 'utf8');
    assert.match(text, /eBPF host routing/);
    assert.match(text, /No bpf\.hostLegacyRouting needed/);
    assert.match(text, /falls back to\s+(#\s+)?the iptables rules alone/, 'the fallback case, where it is still needed, is noted');
    assert.match(text, /bpf\.hostLegacyRouting=true/);
    const ds = agentDaemonSet(render('deploy/overlays/cilium'));
    const inv = parseContainer(agentContainer(ds));
    assert.equal(inv.kind === 'agent' && inv.config.intercept, 'auto');
    assert.equal(initContainer(ds).securityContext?.privileged, true, 'with its init container');
  });
});

describe('cilium-lrp: Cilium’s Local Redirect Policy instead of kiam’s interception', () => {
  const objects = render('deploy/overlays/cilium-lrp');
  const ds = agentDaemonSet(objects);
  const pod = ds.spec.template.spec;
  const c = agentContainer(ds);
  const lrp = find<LocalRedirectPolicy>(objects, 'CiliumLocalRedirectPolicy', 'kiam-metadata');
  const inv = parseContainer(c);
  assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : '');
  const config = inv.config;

  test('the policy redirects TCP 169.254.169.254:80 to the kiam pods of its namespace, on the port the agent listens on', () => {
    assert.equal(lrp.apiVersion, 'cilium.io/v2');
    assert.equal(lrp.metadata.namespace, ds.metadata.namespace, 'an LRP selects backends in its own namespace only');
    assert.deepEqual(lrp.spec.redirectFrontend, { addressMatcher: { ip: '169.254.169.254', toPorts: [{ port: '80', protocol: 'TCP' }] } });
    const selector = lrp.spec.redirectBackend.localEndpointSelector.matchLabels ?? {};
    for (const [k, v] of Object.entries(selector)) assert.equal(ds.spec.template.metadata.labels?.[k], v, `the agent pods carry ${k}=${v}`);
    assert.deepEqual(selector, ds.spec.selector.matchLabels, 'the DaemonSet’s own selector: its pods and nothing else');
    assert.deepEqual(lrp.spec.redirectBackend.toPorts, [{ port: String(config.port), protocol: 'TCP' }]);
  });

  test('the backend port is a declared containerPort of the agent (Cilium 1.18+ ignores backends without one)', () => {
    const declared = (c.ports ?? []).find((p) => p.containerPort === config.port);
    assert.ok(declared, `containerPort ${config.port} declared`);
    assert.equal(declared.protocol ?? 'TCP', 'TCP');
  });

  test('skipRedirectFromBackend: the agent’s own calls to the real metadata service are not sent back to it', () => {
    assert.equal(lrp.spec.skipRedirectFromBackend, true);
    assert.equal(config.metadataEndpoint, 'http://169.254.169.254');
    assert.equal(pod.hostNetwork, true, 'the backend address is the node’s, where the agent listens');
    assert.equal(config.hostIp, NODE.hostIP, 'the agent listens on HOST_IP');
  });

  test('the agent has no interception of its own: no init container, no host paths, no capabilities, not root', () => {
    assert.equal(config.intercept, 'none');
    assert.equal(config.iptables, false);
    assert.equal(config.ebpf, false);
    assert.equal(pod.initContainers, undefined);
    assert.equal(pod.volumes, undefined);
    assert.equal(c.volumeMounts, undefined);
    assert.deepEqual(c.securityContext?.capabilities, { drop: ['ALL'] });
    assert.equal(c.securityContext?.runAsNonRoot, true);
    assert.equal(c.securityContext?.runAsUser, undefined, 'the image’s own uid 1000');
    assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
    assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
  });

  test('apart from that it is the cilium overlay, object for object', () => {
    const cilium = render('deploy/overlays/cilium');
    const ciliumDs = agentDaemonSet(cilium);
    const reverted = structuredClone(objects.filter((o) => o.kind !== 'CiliumLocalRedirectPolicy'));
    const rds = agentDaemonSet(reverted);
    const rc = agentContainer(rds);
    const cc = agentContainer(ciliumDs);
    assert.equal(rc.args?.[1], '--intercept=none');
    assert.equal(cc.args?.[1], '--intercept=auto');
    rc.args![1] = cc.args![1]!;
    rc.securityContext = cc.securityContext;
    rc.volumeMounts = cc.volumeMounts;
    rds.spec.template.spec.volumes = ciliumDs.spec.template.spec.volumes;
    rds.spec.template.spec.initContainers = ciliumDs.spec.template.spec.initContainers;
    assert.deepEqual(reverted, cilium);
  });

  test('its kustomization says what Cilium needs and names the known breakages', () => {
    const text = readFileSync(join(ROOT, 'deploy/overlays/cilium-lrp/kustomization.yaml'), 'utf8');
    assert.match(text, /kube-proxy replacement/);
    assert.match(text, /localRedirectPolicies\.enabled=true/);
    for (const issue of ['#40450', '#36740', '#42751']) assert.ok(text.includes(issue), issue);
  });
});

describe('the container-credentials component (deploy/components/container-credentials)', () => {
  /** Overlays the component serves: all but cilium-lrp, whose agent is non-root without capabilities. */
  const overlays = overlayDirs().filter((o) => !SPECIAL_OVERLAYS.has(o));
  const FLAG = '--container-credentials';
  /** The agent's configuration as the real parser makes it. */
  const agentConfig = (objects: K8sObject[]): Config => {
    const inv = parseContainer(agentContainer(agentDaemonSet(objects)));
    assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : inv.kind);
    return (inv as Extract<typeof inv, { kind: 'agent' }>).config;
  };

  test('a kustomize Component (kustomize.config.k8s.io/v1alpha1) with patches only: no resources of its own', () => {
    const [doc, ...rest] = parseYamlObjects(readFileSync(join(ROOT, COMPONENT, 'kustomization.yaml'), 'utf8'), COMPONENT) as unknown as Array<Record<string, unknown>>;
    assert.equal(rest.length, 0, 'one document');
    assert.equal(doc!.apiVersion, 'kustomize.config.k8s.io/v1alpha1');
    assert.equal(doc!.kind, 'Component');
    assert.deepEqual(Object.keys(doc!).sort(), ['apiVersion', 'kind', 'patches']);
  });

  test('without it no overlay turns the mode on or asks for NET_BIND_SERVICE (the base keeps the flag out)', () => {
    for (const dir of ['deploy', ...overlayDirs().map((o) => `deploy/overlays/${o}`)]) {
      const c = agentContainer(agentDaemonSet(render(dir)));
      assert.ok(!c.args?.includes(FLAG), `${dir}: no ${FLAG}`);
      for (const cap of COMPONENT_CAPABILITIES) assert.ok(!(c.securityContext?.capabilities?.add ?? []).includes(cap), `${dir}: no ${cap}`);
    }
    assert.equal(agentConfig(render('deploy/overlays/calico')).containerCredentials, false);
  });

  for (const name of overlays) {
    test(`${name} + the component: ${FLAG} and NET_BIND_SERVICE for the agent, and nothing else differs from ${name} alone`, async () => {
      const objects = renderWithComponent(name);
      await assertValidObjects(objects, `${name} + ${COMPONENT}`);
      const alone = render(`deploy/overlays/${name}`);
      const config = agentConfig(objects);
      assert.equal(config.containerCredentials, true);
      // (As JSON, patterns as their source: the test runner cannot carry a linear-engine RegExp in a failure report.)
      const plain = (c: Config): unknown => JSON.parse(JSON.stringify(c, (_k, v: unknown) => (v instanceof RegExp ? String(v) : v)));
      assert.deepEqual(plain({ ...config, containerCredentials: false }), plain(agentConfig(alone)), 'every other setting as the overlay gives it');
      const sc = agentContainer(agentDaemonSet(objects)).securityContext ?? {};
      assert.deepEqual([...(sc.capabilities?.add ?? [])].sort(), [...MEASURED_AGENT_CAPABILITIES, ...COMPONENT_CAPABILITIES].sort());
      assert.deepEqual(sc.capabilities?.drop, ['ALL']);
      assert.equal(sc.runAsUser, 0, 'root: added capabilities reach only a root process');
      // Take out the flag and the capability (each once, appended): what remains is the overlay, object for object.
      const reverted = structuredClone(objects);
      const c = agentContainer(agentDaemonSet(reverted));
      assert.equal(c.args?.filter((a) => a === FLAG).length, 1);
      assert.equal(c.args?.at(-1), FLAG, 'appended');
      c.args!.pop();
      const add = c.securityContext!.capabilities!.add!;
      assert.deepEqual(add.slice(-COMPONENT_CAPABILITIES.length), COMPONENT_CAPABILITIES, 'appended');
      add.splice(-COMPONENT_CAPABILITIES.length);
      assert.deepEqual(reverted, alone);
    });
  }

  test('cilium-lrp + the component: the render fails (its agent is non-root, with no capabilities to add to)', () => {
    assert.ok(overlayDirs().includes('cilium-lrp'));
    assert.throws(() => renderWithComponent('cilium-lrp'), /securityContext\/runAsUser/);
  });

  test('the base points to the component, not to hand edits; deploy/README.md shows its `components:` entry', () => {
    const base = readFileSync(join(ROOT, 'deploy/base/daemonset.yaml'), 'utf8');
    assert.ok(base.includes(COMPONENT), `deploy/base/daemonset.yaml names ${COMPONENT}`);
    assert.doesNotMatch(base, /^\s*#\s*- --container-credentials\s*$/m, 'no commented-out flag to uncomment');
    assert.doesNotMatch(base, /add NET_BIND_SERVICE to the capabilities/);
    const readme = readFileSync(join(ROOT, 'deploy/README.md'), 'utf8');
    const section = /^### Container credentials\n([\s\S]*?)(?=^#{2,3} )/m.exec(readme);
    assert.ok(section, 'deploy/README.md has a "Container credentials" section');
    assert.match(section[1]!, /^components:\n\s+- \S*deploy\/components\/container-credentials$/m);
    for (const cap of COMPONENT_CAPABILITIES) assert.ok(section[1]!.includes(`\`${cap}\``), cap);
  });
});

describe('clean-up', () => {
  const objects = render('deploy/cleanup');

  test('renders the namespace and the clean-up DaemonSet but not the agent', () => {
    assert.ok(!objects.some((o) => o.kind === 'DaemonSet' && o.metadata.name === 'kiam'), 'no agent');
    find(objects, 'Namespace', 'kiam');
  });

  test('runs `kiam intercept remove` (eBPF and iptables) on every node, on the agent’s host paths, with no API access', () => {
    const ds = find<DaemonSet>(objects, 'DaemonSet', 'kiam-cleanup');
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.automountServiceAccountToken, false);
    assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
    const remove = pod.initContainers?.find((x) => x.name === 'remove');
    assert.ok(remove);
    const inv = parseContainer(remove);
    assert.equal(inv.kind, 'intercept', inv.kind === 'exit' ? inv.output : '');
    assert.ok(inv.kind === 'intercept');
    assert.equal(inv.action, 'remove');
    assert.equal(inv.config.intercept, 'auto', 'both halves');
    const agentDs = agentDaemonSet(render('deploy/overlays/calico'));
    const agent = agentContainer(agentDs);
    const agentInv = parseContainer(agent);
    assert.ok(agentInv.kind === 'agent');
    assert.equal(inv.config.bpffs, agentInv.config.bpffs, 'the agent’s pins');
    assert.equal(inv.config.cgroupRoot, agentInv.config.cgroupRoot, 'the agent’s cgroup');
    // The agent's host paths, at the same places.
    for (const m of agent.volumeMounts ?? []) {
      const theirs = hostMount(agentDs.spec.template.spec, agent, m.mountPath);
      const ours = hostMount(pod, remove, m.mountPath);
      assert.equal(ours.hostPath, theirs.hostPath, m.mountPath);
      assert.equal(ours.type, theirs.type, m.mountPath);
    }
    // Privileged: without CAP_SYS_ADMIN bpftool does not see what is attached (measured: the removal then reports
    // success and leaves the programs attached), and AppArmor's default profile forbids deleting pins in /sys/fs/bpf.
    assert.equal(remove.securityContext?.privileged, true);
    assert.equal(remove.securityContext?.readOnlyRootFilesystem, true);
    // The container that keeps the pod Running has nothing.
    for (const ctr of pod.containers) {
      assert.deepEqual(ctr.securityContext?.capabilities, { drop: ['ALL'] });
      assert.equal(ctr.securityContext?.runAsNonRoot, true);
      assert.equal(ctr.securityContext?.allowPrivilegeEscalation, false);
    }
  });
});

describe('clean-up: the container-credentials link', () => {
  const ds = find<DaemonSet>(render('deploy/cleanup'), 'DaemonSet', 'kiam-cleanup');
  const ctr = ds.spec.template.spec.initContainers?.find((x) => x.name === 'remove-link');
  const ns = `kiamcl${process.pid}`;
  const ip = (...args: string[]) => spawnSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });
  const script = () => spawnSync('ip', ['netns', 'exec', ns, ...(ctr?.command ?? [])], { encoding: 'utf8' });
  const canNetns = process.getuid?.() === 0 && spawnSync('ip', ['netns', 'add', ns]).status === 0;
  after(() => {
    if (canNetns) spawnSync('ip', ['netns', 'del', ns]);
  });

  test('runs with NET_ADMIN alone, in the node network namespace', () => {
    assert.ok(ctr, 'an init container remove-link');
    assert.equal(ds.spec.template.spec.hostNetwork, true);
    assert.deepEqual(ctr.securityContext?.capabilities, { drop: ['ALL'], add: ['NET_ADMIN'] });
  });

  // Its script, run as written in a throwaway network namespace (the kernel's link kinds: ifb where there is no dummy).
  test('deletes a kiam-link0 of ours with its addresses, says so when there is none, and leaves one of another kind', { skip: canNetns ? false : 'needs root and ip netns' }, () => {
    const made = ['dummy', 'ifb'].find((kind) => ip('link', 'add', 'kiam-link0', 'type', kind).status === 0);
    assert.ok(made, 'a dummy or ifb link');
    assert.equal(ip('address', 'add', '169.254.170.23/32', 'dev', 'kiam-link0').status, 0);
    let r = script();
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /kiam-link0 removed/);
    assert.notEqual(ip('link', 'show', 'kiam-link0').status, 0, 'gone');
    r = script();
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /no kiam-link0 of ours/);
    // A veth of that name is someone else's.
    assert.equal(ip('link', 'add', 'kiam-link0', 'type', 'veth', 'peer', 'name', 'kiamcl-peer').status, 0);
    r = script();
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /no kiam-link0 of ours/);
    assert.equal(ip('link', 'show', 'kiam-link0').status, 0, 'still there');
  });
});

describe('psp.yaml (clusters < 1.25) admits exactly what the DaemonSets ask for', () => {
  const objects = parseYamlObjects(readFileSync(join(ROOT, 'deploy/psp.yaml'), 'utf8'), 'deploy/psp.yaml');
  const psp = find<K8sObject & { spec: Record<string, any> }>(objects, 'PodSecurityPolicy', 'kiam').spec;
  const daemonSets = [
    agentDaemonSet(render('deploy/overlays/calico')),
    agentDaemonSet(renderWithComponent('calico')), // NET_BIND_SERVICE, with the container-credentials component
    find<DaemonSet>(render('deploy/cleanup'), 'DaemonSet', 'kiam-cleanup'),
  ];

  test('privileged init containers, capabilities, escalation, root filesystem, host network and ports, host paths', () => {
    // Privileged: for kiam init and the clean-up's remove. The agent itself is not.
    assert.equal(psp.privileged, true);
    assert.equal(psp.allowPrivilegeEscalation, true);
    assert.equal(psp.defaultAllowPrivilegeEscalation, false, 'containers that do not ask get no escalation');
    assert.deepEqual(psp.requiredDropCapabilities, ['ALL']);
    assert.deepEqual([...psp.allowedCapabilities].sort(), [...MEASURED_AGENT_CAPABILITIES, ...COMPONENT_CAPABILITIES].sort(), 'exactly the agent’s measured set, and the component’s');
    assert.equal(psp.readOnlyRootFilesystem, true);
    for (const ds of daemonSets) {
      const pod = ds.spec.template.spec;
      assert.equal(psp.hostNetwork, pod.hostNetwork);
      for (const ctr of [...(pod.initContainers ?? []), ...pod.containers]) {
        const sc = ctr.securityContext ?? {};
        for (const cap of sc.capabilities?.add ?? []) assert.ok(psp.allowedCapabilities.includes(cap), `${cap} allowed`);
        if (sc.privileged) assert.notEqual(sc.allowPrivilegeEscalation, false, `${ctr.name}: privileged needs escalation allowed`);
        else assert.equal(sc.allowPrivilegeEscalation, false, `${ctr.name}: no escalation unless privileged`);
        assert.equal(sc.readOnlyRootFilesystem, true);
        for (const p of ctr.ports ?? []) {
          assert.ok(psp.hostPorts.some((r: { min: number; max: number }) => r.min <= p.containerPort && p.containerPort <= r.max), `host port ${p.containerPort}`);
        }
        for (const m of ctr.volumeMounts ?? []) {
          const v = pod.volumes?.find((x) => x.name === m.name);
          if (!v?.hostPath) continue;
          const allowed = (psp.allowedHostPaths as Array<{ pathPrefix: string; readOnly?: boolean }>).find((a) => v.hostPath!.path.startsWith(a.pathPrefix));
          assert.ok(allowed, v.hostPath.path);
          if (allowed.readOnly) assert.equal(m.readOnly, true, `${ctr.name}: ${m.mountPath} must be read-only under the PSP`);
        }
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

describe('the webhook: deploy/webhook (self-managed CA) and deploy/webhook/cert-manager', () => {
  interface WebhookConfiguration extends K8sObject {
    webhooks: Array<{
      name: string;
      admissionReviewVersions: string[];
      clientConfig: { service?: { namespace: string; name: string; path?: string; port?: number }; caBundle?: string; url?: string };
      rules: Array<Record<string, unknown>>;
      namespaceSelector?: { matchLabels?: Record<string, string>; matchExpressions?: unknown[] };
      objectSelector?: { matchLabels?: Record<string, string>; matchExpressions?: Array<{ key: string; operator: string; values?: string[] }> };
      matchPolicy?: string;
      failurePolicy?: string;
      sideEffects?: string;
      timeoutSeconds?: number;
      reinvocationPolicy?: string;
    }>;
  }
  interface Deployment extends K8sObject {
    spec: DaemonSet['spec'] & { replicas?: number; strategy?: { type: string; rollingUpdate?: { maxUnavailable?: number | string; maxSurge?: number | string } } };
  }
  type Rules = Array<Record<string, string[]>>;
  type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  const SELF = 'deploy/webhook';
  const CM = 'deploy/webhook/cert-manager';
  const objects = render(SELF);
  const deployment = find<Deployment>(objects, 'Deployment', 'kiam-webhook');
  const pod = deployment.spec.template.spec;
  const c = pod.containers[0]!;
  const config = find<WebhookConfiguration>(objects, 'MutatingWebhookConfiguration', 'kiam-webhook');
  const service = find<K8sObject & { spec: { selector: Record<string, string>; ports: Array<{ name?: string; port: number; targetPort: number | string }> } }>(objects, 'Service', 'kiam-webhook');
  /** The container's args through the real parser, with POD_NAMESPACE as the downward API gives it. */
  const parse = (ctr: Container, ns = deployment.metadata.namespace!) => {
    assert.deepEqual(ctr.env, [{ name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } }]);
    const inv = parseCommandLine(ctr.args ?? [], { POD_NAMESPACE: ns });
    assert.equal(inv.kind, 'webhook', inv.kind === 'exit' ? inv.output : inv.kind);
    return (inv as Extract<typeof inv, { kind: 'webhook' }>).options;
  };
  const options = parse(c);

  test('both render valid objects (cert-manager’s Issuer and Certificate checked by hand), and the custom checks catch mistakes (a control)', async () => {
    await assertValidObjects(objects, SELF);
    await assertValidObjects(render(CM), CM);
    const cert = find(render(CM), 'Certificate', 'kiam-webhook');
    assert.deepEqual(certificateProblems(cert), []);
    const typo = structuredClone(cert) as unknown as { spec: Record<string, unknown> };
    typo.spec.dnsName = ['x'];
    typo.spec.usages = ['server-auth'];
    assert.deepEqual(certificateProblems(typo), ['spec.dnsName: unknown field', 'spec.usages: "server-auth" is not a key usage']);
    const issuer = find(render(CM), 'Issuer', 'kiam-webhook-ca') as unknown as { spec: Record<string, unknown> };
    assert.deepEqual(issuerProblems({ ...issuer, spec: { ...issuer.spec, selfSigned: {} } }), ['spec: exactly one of acme, ca, vault, selfSigned, venafi']);
  });

  test('deploy/webhook renders the webhook alone (the agent’s manifests make its namespace)', () => {
    assert.deepEqual(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      'ClusterRole/kiam-webhook',
      'ClusterRole/kiam-webhook-ca-bundle',
      'ClusterRoleBinding/kiam-webhook',
      'ClusterRoleBinding/kiam-webhook-ca-bundle',
      'Deployment/kiam-webhook',
      'MutatingWebhookConfiguration/kiam-webhook',
      'PodDisruptionBudget/kiam-webhook',
      'Role/kiam-webhook-tls',
      'RoleBinding/kiam-webhook-tls',
      'Service/kiam-webhook',
      'ServiceAccount/kiam-webhook',
    ]);
    for (const o of objects.filter((x) => x.metadata.namespace !== undefined)) assert.equal(o.metadata.namespace, find(render('deploy'), 'Namespace', 'kiam').metadata.name);
  });

  test('the args parse with the real CLI: self-managed TLS in kiam/kiam-webhook-tls for the Service, the agent’s token audience', () => {
    assert.equal(options.port, 9443);
    assert.equal(options.namespace, 'kiam');
    assert.equal(options.tlsCertFile, undefined);
    assert.equal(options.serviceName, service.metadata.name);
    assert.equal(options.webhookConfigName, config.metadata.name);
    assert.equal(options.secretName, 'kiam-webhook-tls');
    assert.equal(options.tokenAudience, AGENT_DEFAULTS.tokenAudience, 'what the agent asks TokenReviews for');
    assert.equal(options.ipv6, false);
    assert.equal(c.image, `kiam:${pkg.version}`);
  });

  test('two replicas, spread over nodes, one kept through disruptions, none lost during a rollout', () => {
    assert.equal(deployment.spec.replicas, 2);
    assert.deepEqual(deployment.spec.strategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } });
    const pdb = find<K8sObject & { spec: { minAvailable?: number; selector: { matchLabels: Record<string, string> } } }>(objects, 'PodDisruptionBudget', 'kiam-webhook');
    assert.equal(pdb.spec.minAvailable, 1);
    assert.deepEqual(pdb.spec.selector.matchLabels, deployment.spec.selector.matchLabels);
    for (const [k, v] of Object.entries(deployment.spec.selector.matchLabels!)) assert.equal(deployment.spec.template.metadata.labels?.[k], v);
    const anti = (pod as unknown as { affinity?: { podAntiAffinity?: { preferredDuringSchedulingIgnoredDuringExecution?: Array<{ podAffinityTerm: { topologyKey: string; labelSelector: unknown } }> } } }).affinity;
    const term = anti?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution?.[0]?.podAffinityTerm;
    assert.equal(term?.topologyKey, 'kubernetes.io/hostname');
    assert.deepEqual(term?.labelSelector, { matchLabels: deployment.spec.selector.matchLabels });
  });

  test('the Service reaches the pods’ HTTPS port; the webhook configuration calls that Service at /mutate', () => {
    for (const [k, v] of Object.entries(service.spec.selector)) assert.equal(deployment.spec.template.metadata.labels?.[k], v);
    const port = service.spec.ports[0]!;
    assert.equal(portNumber(c, port.targetPort), options.port);
    const hook = config.webhooks[0]!;
    assert.equal(config.webhooks.length, 1);
    assert.deepEqual(hook.clientConfig, { service: { namespace: deployment.metadata.namespace, name: service.metadata.name, path: '/mutate', port: port.port } });
    assert.equal(hook.clientConfig.caBundle, undefined, 'written by the webhook (self-managed) or cert-manager');
  });

  test('the webhook configuration: pod CREATE only, opted-in namespaces only, never kiam’s pods, Ignore, 5 s, no side effects, v1', () => {
    const hook = config.webhooks[0]!;
    assert.ok(hook.name.split('.').length >= 3, 'a fully qualified name');
    assert.deepEqual(hook.rules, [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }]);
    assert.deepEqual(hook.namespaceSelector, { matchLabels: { [CONTAINER_CREDENTIALS_KEY]: 'enabled' } });
    assert.equal(hook.failurePolicy, 'Ignore');
    assert.equal(hook.timeoutSeconds, 5);
    assert.equal(hook.sideEffects, 'None');
    assert.deepEqual(hook.admissionReviewVersions, ['v1']);
    assert.equal(hook.reinvocationPolicy, 'Never');
    assert.equal(hook.matchPolicy, 'Equivalent');
    // The objectSelector leaves out the agent's and the webhook's own pods, and only them among these.
    const selects = (labels: Record<string, string> = {}) =>
      (hook.objectSelector?.matchExpressions ?? []).every((e) => (e.operator === 'NotIn' ? !e.values!.includes(labels[e.key]!) : assert.fail(`operator ${e.operator}`)));
    assert.equal(selects(agentDaemonSet(render('deploy/overlays/calico')).spec.template.metadata.labels), false, 'the agent');
    assert.equal(selects(deployment.spec.template.metadata.labels), false, 'the webhook');
    assert.equal(selects({ 'app.kubernetes.io/name': 'report-writer' }), true, 'a workload');
    assert.equal(selects({}), true, 'a pod without labels');
  });

  test('non-root (the image’s uid), no capabilities, read-only root, RuntimeDefault seccomp; HTTPS probes; memory requested and limited, no CPU limit', () => {
    const sc = c.securityContext ?? {};
    assert.equal(sc.runAsNonRoot, true);
    assert.equal(sc.runAsUser, undefined);
    assert.deepEqual(sc.capabilities, { drop: ['ALL'] });
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.equal(sc.privileged, false);
    assert.equal(sc.readOnlyRootFilesystem, true);
    assert.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault');
    assert.notEqual(pod.hostNetwork, true);
    for (const probe of [c.livenessProbe, c.readinessProbe]) {
      const get = probe?.httpGet as { path: string; port: string | number; scheme?: string } | undefined;
      assert.equal(get?.scheme, 'HTTPS');
      assert.equal(get?.path, '/healthz');
      assert.equal(portNumber(c, get!.port), options.port);
    }
    const { requests = {}, limits = {} } = c.resources ?? {};
    assert.ok(requests.cpu && requests.memory && limits.memory);
    assert.equal(limits.cpu, undefined);
    assert.ok((pod.terminationGracePeriodSeconds ?? 30) * 1000 >= SHUTDOWN_DELAY_MS + 5000, 'the grace period outlasts the shutdown delay and the drain');
  });

  test('RBAC: get service accounts; the one Secret (get, update; create in kiam); the one webhook configuration (get, patch); bound to its service account', () => {
    const rulesOf = (kind: string, name: string) => find<K8sObject & { rules: Rules }>(objects, kind, name).rules;
    assert.deepEqual(rulesOf('ClusterRole', 'kiam-webhook'), [{ apiGroups: [''], resources: ['serviceaccounts'], verbs: ['get'] }]);
    assert.deepEqual(rulesOf('ClusterRole', 'kiam-webhook-ca-bundle'), [
      { apiGroups: ['admissionregistration.k8s.io'], resources: ['mutatingwebhookconfigurations'], resourceNames: [options.webhookConfigName], verbs: ['get', 'patch'] },
    ]);
    const role = find<K8sObject & { rules: Rules }>(objects, 'Role', 'kiam-webhook-tls');
    assert.equal(role.metadata.namespace, options.namespace);
    assert.deepEqual(role.rules, [
      { apiGroups: [''], resources: ['secrets'], resourceNames: [options.secretName], verbs: ['get', 'update'] },
      { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
    ]);
    const subject = { kind: 'ServiceAccount', name: pod.serviceAccountName, namespace: deployment.metadata.namespace };
    find(objects, 'ServiceAccount', pod.serviceAccountName!);
    for (const [kind, name, roleKind] of [['ClusterRoleBinding', 'kiam-webhook', 'ClusterRole'], ['ClusterRoleBinding', 'kiam-webhook-ca-bundle', 'ClusterRole'], ['RoleBinding', 'kiam-webhook-tls', 'Role']] as const) {
      const b = find<K8sObject & { roleRef: Record<string, string>; subjects: unknown[] }>(objects, kind, name);
      assert.deepEqual(b.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: roleKind, name });
      assert.deepEqual(b.subjects, [subject]);
    }
  });

  describe('the cert-manager overlay', () => {
    const cm = render(CM);
    const cmDeployment = find<Deployment>(cm, 'Deployment', 'kiam-webhook');
    const cmContainer = cmDeployment.spec.template.spec.containers[0]!;
    const cmOptions = parse(cmContainer);
    const serving = find<K8sObject & { spec: Record<string, any> }>(cm, 'Certificate', 'kiam-webhook');

    test('the webhook serves the mounted Secret of the serving Certificate (files, reloaded)', () => {
      assert.ok(cmOptions.tlsCertFile && cmOptions.tlsKeyFile);
      const mount = cmContainer.volumeMounts?.find((m) => cmOptions.tlsCertFile!.startsWith(`${m.mountPath}/`));
      assert.ok(mount, 'the certificate file is in a mount');
      assert.equal(mount.readOnly, true);
      assert.equal(cmOptions.tlsCertFile, `${mount.mountPath}/tls.crt`);
      assert.equal(cmOptions.tlsKeyFile, `${mount.mountPath}/tls.key`);
      const volume = (cmDeployment.spec.template.spec.volumes as Array<{ name: string; secret?: { secretName: string } }>).find((v) => v.name === mount.name);
      assert.equal(volume?.secret?.secretName, serving.spec.secretName);
    });

    test('the serving Certificate names the Service, is issued by a CA issuer whose CA cert-manager makes self-signed; the CA is injected', () => {
      assert.ok(serving.spec.dnsNames.includes(`${service.metadata.name}.${service.metadata.namespace}.svc`));
      assert.ok(serving.spec.usages.includes('server auth'));
      const caIssuer = find<K8sObject & { spec: { ca: { secretName: string } } }>(cm, 'Issuer', serving.spec.issuerRef.name);
      const caCert = cm.find((o) => o.kind === 'Certificate' && (o as Obj).spec.secretName === caIssuer.spec.ca.secretName) as (K8sObject & { spec: Record<string, any> }) | undefined;
      assert.ok(caCert, 'a Certificate makes the CA issuer’s secret');
      assert.equal(caCert.spec.isCA, true);
      assert.deepEqual(find<K8sObject & { spec: unknown }>(cm, 'Issuer', caCert.spec.issuerRef.name).spec, { selfSigned: {} });
      const hook = find<WebhookConfiguration>(cm, 'MutatingWebhookConfiguration', 'kiam-webhook');
      assert.equal(hook.metadata.annotations?.['cert-manager.io/inject-ca-from'], `${serving.metadata.namespace}/${serving.metadata.name}`);
    });

    test('RBAC: service accounts only (no Secret to write, no caBundle to patch)', () => {
      const kinds = cm.filter((o) => o.apiVersion.startsWith('rbac.')).map((o) => `${o.kind}/${o.metadata.name}`).sort();
      assert.deepEqual(kinds, ['ClusterRole/kiam-webhook', 'ClusterRoleBinding/kiam-webhook']);
    });

    test('apart from that it is deploy/webhook, object for object', () => {
      const reverted = structuredClone(cm.filter((o) => o.apiVersion !== 'cert-manager.io/v1'));
      const d = find<Deployment>(reverted, 'Deployment', 'kiam-webhook');
      const ctr = d.spec.template.spec.containers[0]!;
      ctr.args = ctr.args!.filter((a) => !a.startsWith('--tls-'));
      delete ctr.volumeMounts;
      delete d.spec.template.spec.volumes;
      delete find(reverted, 'MutatingWebhookConfiguration', 'kiam-webhook').metadata.annotations;
      assert.deepEqual(reverted, objects.filter((o) => !['kiam-webhook-ca-bundle', 'kiam-webhook-tls'].includes(o.metadata.name)));
    });
  });
});
