/**
 * A fake Kubernetes API server speaking the real wire protocol over HTTPS, enough for kubectl and
 * @kubernetes/client-node: discovery, pods and namespaces (list, watch with resourceVersion and bookmarks,
 * 410 Gone, field selectors), create/get/put/patch/delete. Test controls: fail the next list(s), close all
 * watches, compact the history, request log with objects and bytes per client.
 *
 * Also: serviceaccounts and secrets (namespaced) and admissionregistration.k8s.io/v1 mutatingwebhookconfigurations
 * (cluster-scoped) with the same verbs (merge, strategic-as-merge and RFC 6902 JSON patches); service-account tokens
 * the fake issues itself (issueToken, POST /_fake/tokens, and the TokenRequest subresource
 * serviceaccounts/NAME/token), shaped as the real ones (claims below) and signed with HS256 by a key of its own; and
 * authentication.k8s.io/v1 TokenReview of them: signature, issuer, exp/nbf (with the API server's 60 s leeway),
 * the audiences asked for, and that the pod (and service account) the token is bound to still exist with its uid, as
 * the API server checks a bound token (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens).
 *
 * In process:  const kube = await FakeKubeApiServer.start(); … await kube.close();
 * Standalone:  node --import tsx test/fakes/kube-apiserver.ts --host 127.0.0.1 --port 0 --kubeconfig-out PATH
 *              prints {"url":…,"kubeconfig":…,"token":…,"pid":…} on one line, exits 0 on SIGTERM/SIGINT.
 *              Controls over HTTP (bearer token required): POST /_fake/close-watches, /_fake/compact,
 *              /_fake/fail-next-list?status=500&times=1&resource=pods, /_fake/bookmarks,
 *              /_fake/watch-fault?mode=gone|silent|status|none[&status=403], /_fake/outage?on=true|false,
 *              /_fake/tokens (JSON body IssueTokenOptions → {"token":…}),
 *              /_fake/tokenreview-fault?status=503|0|none (0: never answer);
 *              GET /_fake/stats.
 */
import { execFile } from 'node:child_process';
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decodeKubeProtobuf } from './kube-protobuf.ts';
import { runStandalone } from './standalone.ts';

const execFileAsync = promisify(execFile);

export type Resource = 'pods' | 'namespaces' | 'serviceaccounts' | 'secrets' | 'mutatingwebhookconfigurations';
type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface FakeKubeOptions {
  host?: string;
  port?: number;
  /** Interval of BOOKMARK events on watches that asked for them; 0 disables. Default 5000 ms. */
  bookmarkIntervalMs?: number;
  /** Events kept for watch resumption before older ones are compacted away. Default 10000. */
  historyLimit?: number;
  /** Namespaces that exist from the start. Default ['default', 'kube-system']. */
  namespaces?: string[];
  /** Extra subjectAltName entries (e.g. 'IP:10.0.0.1', 'DNS:kube') for the certificate. */
  altNames?: string[];
}

export interface RequestLogEntry {
  time: number;
  client: string;
  method: string;
  path: string;
  query: string;
  status: number;
  watch: boolean;
  /** Objects sent (list items, watch events incl. bookmarks, single objects). */
  objects: number;
  bytes: number;
}

export interface ClientStats {
  requests: number;
  lists: number;
  watches: number;
  objects: number;
  bytes: number;
}

interface Event {
  rv: number;
  resource: Resource;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  old?: Obj;
  obj: Obj;
}

interface Watcher {
  resource: Resource;
  namespace?: string;
  selector: Selector;
  res: ServerResponse;
  log: RequestLogEntry;
  bookmarks: boolean;
  timers: NodeJS.Timeout[];
  /** Stuck: the stream stays open and delivers nothing (setWatchFault('silent')). */
  silent?: boolean;
}

/**
 * How every watch request is answered while set: 'gone' as the watch cache answers a resourceVersion it no longer
 * has (HTTP 200, one ERROR event with a 410 Expired Status, end of stream); 'silent' open and never a byte (open
 * watches stop delivering too); { status } that HTTP status with a Status body (403 after an RBAC change, 429 from
 * API priority and fairness, 410 as an HTTP status).
 */
export type WatchFault = 'gone' | 'silent' | { status: number };

type Requirement = { field: string; value: string; negate: boolean };
type Selector = Requirement[];

const FIELDS: Record<Resource, Record<string, (o: Obj) => string>> = {
  pods: {
    'metadata.name': (o) => o.metadata?.name ?? '',
    'metadata.namespace': (o) => o.metadata?.namespace ?? '',
    'spec.nodeName': (o) => o.spec?.nodeName ?? '',
    'spec.serviceAccountName': (o) => o.spec?.serviceAccountName ?? '',
    'spec.hostNetwork': (o) => String(o.spec?.hostNetwork === true),
    'status.phase': (o) => o.status?.phase ?? '',
    // The real API selects on the first pod IP only (status.podIPs[0], kept equal to status.podIP): a pod's
    // other IPs cannot be selected (kubernetes/kubernetes pkg/registry/core/pod/strategy.go, ToSelectableFields).
    'status.podIP': (o) => o.status?.podIPs?.[0]?.ip ?? o.status?.podIP ?? '',
  },
  namespaces: {
    'metadata.name': (o) => o.metadata?.name ?? '',
    'status.phase': (o) => o.status?.phase ?? '',
  },
  serviceaccounts: {
    'metadata.name': (o) => o.metadata?.name ?? '',
    'metadata.namespace': (o) => o.metadata?.namespace ?? '',
  },
  secrets: {
    'metadata.name': (o) => o.metadata?.name ?? '',
    'metadata.namespace': (o) => o.metadata?.namespace ?? '',
    type: (o) => o.type ?? '',
  },
  mutatingwebhookconfigurations: {
    'metadata.name': (o) => o.metadata?.name ?? '',
  },
};

/** Kind, group/version and scope of each resource the fake serves. */
const RESOURCES: Record<Resource, { kind: string; apiVersion: string; namespaced: boolean }> = {
  pods: { kind: 'Pod', apiVersion: 'v1', namespaced: true },
  namespaces: { kind: 'Namespace', apiVersion: 'v1', namespaced: false },
  serviceaccounts: { kind: 'ServiceAccount', apiVersion: 'v1', namespaced: true },
  secrets: { kind: 'Secret', apiVersion: 'v1', namespaced: true },
  mutatingwebhookconfigurations: { kind: 'MutatingWebhookConfiguration', apiVersion: 'admissionregistration.k8s.io/v1', namespaced: false },
};

/** The issuer of the tokens the fake signs, also the API server's own audience (kubeadm's default). */
export const FAKE_ISSUER = 'https://kubernetes.default.svc.cluster.local';
/** How far past exp (and before nbf) the API server still accepts a token: go-jose's DefaultLeeway, which it uses. */
const TOKEN_LEEWAY_S = 60;

/** What issueToken (and POST /_fake/tokens) takes. */
export interface IssueTokenOptions {
  namespace: string;
  /** Default: the pod's spec.serviceAccountName, else 'default'. */
  serviceAccount?: string;
  /** Bind the token to this pod (it must exist): its name and uid go in the claims, as the kubelet's projected tokens. */
  pod?: string;
  /** Default: the API server's own audience (FAKE_ISSUER). */
  audience?: string | string[];
  /** Default 3600. Any value (the real API asks ≥ 600): tests make short-lived tokens. */
  expirationSeconds?: number;
  /** iat/nbf, Unix seconds; default now (an expired token: a time long past). */
  issuedAt?: number;
  /** Put the node the pod runs on in the claims (Kubernetes ≥ 1.30 does). Default true when the pod has spec.nodeName. */
  bindNode?: boolean;
}

/** status of a TokenReview as the API server answers it. */
export interface TokenReviewStatus {
  authenticated?: boolean;
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  audiences?: string[];
  error?: string;
}

class HttpError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** Parse `a=b,c!=d,e==f` (values may escape `\,` `\=` `\\`). */
export function parseFieldSelector(resource: Resource, text: string): Selector {
  const out: Selector = [];
  if (!text) return out;
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\\' && i + 1 < text.length) {
      cur += c + text[++i];
    } else if (c === ',') {
      parts.push(cur);
      cur = '';
    } else cur += c;
  }
  parts.push(cur);
  for (const part of parts) {
    const m = /^\s*([\w.]+)\s*(==|!=|=)\s*(.*?)\s*$/.exec(part);
    if (!m) throw new HttpError(400, 'BadRequest', `invalid field selector: "${part}"`);
    const field = m[1]!;
    if (!FIELDS[resource][field]) throw new HttpError(400, 'BadRequest', `field label not supported: ${field}`);
    out.push({ field, negate: m[2] === '!=', value: m[3]!.replace(/\\(.)/g, '$1') });
  }
  return out;
}

function matches(resource: Resource, selector: Selector, obj: Obj | undefined): boolean {
  if (!obj) return false;
  return selector.every((r) => (FIELDS[resource][r.field]!(obj) === r.value) !== r.negate);
}

/**
 * status.podIP and status.podIPs as the API server stores a v1 pod: podIP is authoritative and always the first
 * of podIPs (podIP alone gives podIPs [podIP]; podIPs whose first entry differs from podIP becomes [podIP]);
 * podIPs alone gives podIP its first entry (kubernetes/kubernetes pkg/apis/core/v1/conversion.go, PodStatus).
 */
function syncPodIps(obj: Obj): void {
  const status = obj.status;
  if (!isObject(status)) return;
  const listed = Array.isArray(status.podIPs) ? status.podIPs.filter((e: unknown) => isObject(e) && typeof e.ip === 'string' && e.ip !== '') : [];
  if (typeof status.podIP === 'string' && status.podIP !== '') {
    if (listed.length === 0 || listed[0].ip !== status.podIP) status.podIPs = [{ ip: status.podIP }];
    else status.podIPs = listed.map((e: Obj) => ({ ip: e.ip }));
  } else if (listed.length > 0) {
    status.podIP = listed[0].ip;
    status.podIPs = listed.map((e: Obj) => ({ ip: e.ip }));
  } else {
    delete status.podIP;
    delete status.podIPs;
  }
}

function clone<T>(o: T): T {
  return structuredClone(o);
}

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const out: Obj = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function status(code: number, reason: string, message: string, details?: Obj): Obj {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code, ...(details ? { details } : {}) };
}

const POD_RESOURCES = [
  { name: 'pods', singularName: 'pod', namespaced: true, kind: 'Pod', verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'], shortNames: ['po'] },
  { name: 'pods/status', singularName: '', namespaced: true, kind: 'Pod', verbs: ['get', 'patch', 'update'] },
  { name: 'namespaces', singularName: 'namespace', namespaced: false, kind: 'Namespace', verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'], shortNames: ['ns'] },
  { name: 'serviceaccounts', singularName: 'serviceaccount', namespaced: true, kind: 'ServiceAccount', verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'], shortNames: ['sa'] },
  { name: 'serviceaccounts/token', singularName: '', namespaced: true, group: 'authentication.k8s.io', version: 'v1', kind: 'TokenRequest', verbs: ['create'] },
  { name: 'secrets', singularName: 'secret', namespaced: true, kind: 'Secret', verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'] },
];

/** The API groups besides the core one (legacy discovery: /apis, /apis/GROUP, /apis/GROUP/v1). */
const GROUPS: Record<string, Array<Record<string, unknown>>> = {
  'authentication.k8s.io': [{ name: 'tokenreviews', singularName: 'tokenreview', namespaced: false, kind: 'TokenReview', verbs: ['create'] }],
  'admissionregistration.k8s.io': [
    { name: 'mutatingwebhookconfigurations', singularName: 'mutatingwebhookconfiguration', namespaced: false, kind: 'MutatingWebhookConfiguration', verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'] },
  ],
};

function apiGroup(name: string): Obj {
  const version = { groupVersion: `${name}/v1`, version: 'v1' };
  return { name, versions: [version], preferredVersion: version };
}

/**
 * The least OpenAPI v3 documents that tell kubectl the server validates fields itself (a PATCH operation of each
 * kind takes `fieldValidation`), so kubectl skips client-side schema validation (which would need /openapi/v2).
 * TokenReview has no PATCH in the real API; the fake lists one so that `kubectl create -f` of a TokenReview works too.
 */
function openApiDoc(paths: Array<[string, string, string]>): Obj {
  return {
    openapi: '3.0.0',
    info: { title: 'Kubernetes', version: 'v1.32.0-fake' },
    paths: Object.fromEntries(
      paths.map(([p, group, kind]) => [
        p,
        {
          patch: {
            'x-kubernetes-group-version-kind': { group, version: 'v1', kind },
            parameters: [{ name: 'fieldValidation', in: 'query', schema: { type: 'string', uniqueItems: true } }],
            responses: { '200': { description: 'OK' } },
          },
        },
      ]),
    ),
    components: { schemas: {} },
  };
}

const OPENAPI_V3: Record<string, Obj> = {
  'api/v1': openApiDoc([
    ['/api/v1/namespaces/{namespace}/pods/{name}', '', 'Pod'],
    ['/api/v1/namespaces/{name}', '', 'Namespace'],
    ['/api/v1/namespaces/{namespace}/serviceaccounts/{name}', '', 'ServiceAccount'],
    ['/api/v1/namespaces/{namespace}/secrets/{name}', '', 'Secret'],
  ]),
  'apis/authentication.k8s.io/v1': openApiDoc([['/apis/authentication.k8s.io/v1/tokenreviews', 'authentication.k8s.io', 'TokenReview']]),
  'apis/admissionregistration.k8s.io/v1': openApiDoc([
    ['/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}', 'admissionregistration.k8s.io', 'MutatingWebhookConfiguration'],
  ]),
};

export class FakeKubeApiServer {
  readonly url: string;
  /** PEM of the self-signed serving certificate (also its own CA). */
  readonly caPem: string;
  /** Bearer token of the default client ('admin'). */
  readonly token: string;
  /** Every request, in order; watch entries grow as events stream. */
  readonly requests: RequestLogEntry[] = [];

  private readonly tokens = new Map<string, string>();
  private readonly store: Record<Resource, Map<string, Obj>> = { pods: new Map(), namespaces: new Map(), serviceaccounts: new Map(), secrets: new Map(), mutatingwebhookconfigurations: new Map() };
  /** HS256 key of the tokens the fake issues. */
  private readonly signingKey = randomBytes(32);
  /** Uids the fake invented for service accounts that did not exist when a token was issued for them (not checked on review). */
  private readonly inventedSaUids = new Set<string>();
  /** Node name → the uid put in the node claims (the fake has no Node objects). */
  private readonly nodeUids = new Map<string, string>();
  private tlsConnections = 0;
  /** undefined: TokenReviews are answered; a status: every one answered so (0: never answered). */
  private tokenReviewFault: number | undefined;
  private history: Event[] = [];
  private rv = 1;
  /** Events with rv ≤ compactedRv are gone: resuming from before it gets 410. */
  private compactedRv = 0;
  private readonly watchers = new Set<Watcher>();
  /** status 0: never answer (until close). */
  private failLists: Array<{ status: number; resource?: Resource; fieldSelector?: string }> = [];
  private readonly stalled = new Set<ServerResponse>();
  private watchWaiters: Array<() => void> = [];
  private readonly requestWaiters = new Set<() => void>();
  private readonly bookmarkIntervalMs: number;
  private readonly historyLimit: number;
  private watchFault: WatchFault | undefined;
  private outage = false;

  private constructor(
    private readonly server: https.Server,
    url: string,
    caPem: string,
    options: FakeKubeOptions,
  ) {
    this.url = url;
    this.caPem = caPem;
    this.token = this.addClient('admin');
    this.bookmarkIntervalMs = options.bookmarkIntervalMs ?? 5000;
    this.historyLimit = options.historyLimit ?? 10_000;
    for (const ns of options.namespaces ?? ['default', 'kube-system']) this.createNamespace(ns);
  }

  static async start(options: FakeKubeOptions = {}): Promise<FakeKubeApiServer> {
    const host = options.host ?? '127.0.0.1';
    const { key, cert } = await makeCertificate(host, options.altNames ?? []);
    const server = https.createServer({ key, cert });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    const url = `https://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
    const fake = new FakeKubeApiServer(server, url, cert, options);
    server.on('request', (req, res) => fake.handle(req, res));
    server.on('secureConnection', () => fake.tlsConnections++);
    return fake;
  }

  // ---------- clients and kubeconfig ----------

  /** Register a client; returns its bearer token. Stats are kept per client name. */
  addClient(name: string): string {
    const token = `${name}.${randomBytes(16).toString('hex')}`;
    this.tokens.set(token, name);
    return token;
  }

  /** A kubeconfig (YAML; CA embedded, bearer token) for kubectl and client-node. */
  kubeconfig(token = this.token): string {
    const ca = Buffer.from(this.caPem).toString('base64');
    return [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: fake',
      '  cluster:',
      `    server: ${this.url}`,
      `    certificate-authority-data: ${ca}`,
      'users:',
      '- name: fake',
      '  user:',
      `    token: ${token}`,
      'contexts:',
      '- name: fake',
      '  context:',
      '    cluster: fake',
      '    user: fake',
      '    namespace: default',
      'current-context: fake',
      '',
    ].join('\n');
  }

  async writeKubeconfig(path: string, token = this.token): Promise<void> {
    await writeFile(path, this.kubeconfig(token), { mode: 0o600 });
  }

  // ---------- direct state access for tests ----------

  get resourceVersion(): number {
    return this.rv;
  }

  /** TLS connections accepted so far (clients that reuse connections open few). */
  get connections(): number {
    return this.tlsConnections;
  }

  /** Open watch streams. */
  get watchCount(): number {
    return this.watchers.size;
  }

  createNamespace(name: string, annotations?: Record<string, string>): Obj {
    return this.create('namespaces', undefined, { metadata: { name, ...(annotations ? { annotations } : {}) } });
  }

  /** Create a pod: the body is a V1Pod (status.podIP/podIPs/phase honoured); namespace defaults to metadata.namespace. */
  createPod(pod: Obj): Obj {
    const ns = pod.metadata?.namespace ?? 'default';
    if (!this.store.namespaces.has(ns)) throw new Error(`namespace ${ns} does not exist`);
    return this.create('pods', ns, pod);
  }

  patchPod(namespace: string, name: string, patch: Obj): Obj {
    return this.update('pods', namespace, name, (cur) => mergePatch(cur, patch) as Obj);
  }

  patchNamespace(name: string, patch: Obj): Obj {
    return this.update('namespaces', undefined, name, (cur) => mergePatch(cur, patch) as Obj);
  }

  /** Mark a pod as terminating (deletionTimestamp set), as the API does on a graceful delete. */
  markDeleting(namespace: string, name: string): Obj {
    return this.patchPod(namespace, name, { metadata: { deletionTimestamp: new Date().toISOString(), deletionGracePeriodSeconds: 30 } });
  }

  deletePod(namespace: string, name: string): Obj {
    return this.remove('pods', namespace, name);
  }

  deleteNamespace(name: string): Obj {
    return this.remove('namespaces', undefined, name);
  }

  getPod(namespace: string, name: string): Obj | undefined {
    const o = this.store.pods.get(`${namespace}/${name}`);
    return o ? clone(o) : undefined;
  }

  listPods(): Obj[] {
    return [...this.store.pods.values()].map(clone);
  }

  /** Create any object the fake serves (namespace: for namespaced resources, default metadata.namespace). */
  createObject(resource: Resource, obj: Obj): Obj {
    return this.create(resource, RESOURCES[resource].namespaced ? (obj.metadata?.namespace ?? 'default') : undefined, obj);
  }

  getObject(resource: Resource, namespace: string | undefined, name: string): Obj | undefined {
    const o = this.store[resource].get(this.key(RESOURCES[resource].namespaced ? namespace : undefined, name));
    return o ? clone(o) : undefined;
  }

  /** RFC 7386 merge patch of any object. */
  patchObject(resource: Resource, namespace: string | undefined, name: string, patch: Obj): Obj {
    return this.update(resource, RESOURCES[resource].namespaced ? namespace : undefined, name, (cur) => mergePatch(cur, patch) as Obj);
  }

  deleteObject(resource: Resource, namespace: string | undefined, name: string): Obj {
    return this.remove(resource, RESOURCES[resource].namespaced ? namespace : undefined, name);
  }

  listObjects(resource: Resource): Obj[] {
    return [...this.store[resource].values()].map(clone);
  }

  /** A ServiceAccount, with annotations (e.g. iam.amazonaws.com/role). */
  createServiceAccount(namespace: string, name: string, annotations?: Record<string, string>): Obj {
    return this.create('serviceaccounts', namespace, { metadata: { name, namespace, ...(annotations ? { annotations } : {}) } });
  }

  // ---------- service-account tokens ----------

  /**
   * A service-account token signed by the fake, with the claims the API server puts in a projected token
   * (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens):
   * iss, sub, aud, exp, iat, nbf, jti and kubernetes.io {namespace, serviceaccount, pod, node}. Throws when the
   * pod does not exist (it is looked up to bind the token, as the API server does).
   */
  issueToken(options: IssueTokenOptions): string {
    const { namespace } = options;
    let pod: Obj | undefined;
    if (options.pod !== undefined) {
      pod = this.store.pods.get(`${namespace}/${options.pod}`);
      if (!pod) throw new HttpError(404, 'NotFound', `pods "${options.pod}" not found`);
    }
    const saName = options.serviceAccount ?? pod?.spec?.serviceAccountName ?? 'default';
    if (pod && pod.spec?.serviceAccountName !== saName) {
      throw new HttpError(400, 'BadRequest', `the pod ${options.pod} runs as service account ${pod.spec?.serviceAccountName}, not ${saName}`);
    }
    let saUid: string = this.store.serviceaccounts.get(`${namespace}/${saName}`)?.metadata.uid;
    if (!saUid) {
      saUid = randomUUID();
      this.inventedSaUids.add(saUid);
    }
    const iat = Math.floor(options.issuedAt ?? Date.now() / 1000);
    const k8s: Obj = { namespace, serviceaccount: { name: saName, uid: saUid } };
    if (pod) {
      k8s.pod = { name: pod.metadata.name, uid: pod.metadata.uid };
      const nodeName = pod.spec?.nodeName;
      if (typeof nodeName === 'string' && nodeName !== '' && options.bindNode !== false) {
        let nodeUid = this.nodeUids.get(nodeName);
        if (!nodeUid) this.nodeUids.set(nodeName, (nodeUid = randomUUID()));
        k8s.node = { name: nodeName, uid: nodeUid };
      }
    }
    const aud = options.audience === undefined ? [FAKE_ISSUER] : Array.isArray(options.audience) ? options.audience : [options.audience];
    const claims = {
      aud,
      exp: iat + (options.expirationSeconds ?? 3600),
      iat,
      iss: FAKE_ISSUER,
      jti: randomUUID(),
      'kubernetes.io': k8s,
      nbf: iat,
      sub: `system:serviceaccount:${namespace}:${saName}`,
    };
    return signJwt(claims, this.signingKey);
  }

  /**
   * What a TokenReview of token answers (audiences: spec.audiences; empty means the API server's own). Never
   * throws: an invalid token is { authenticated: false, error }.
   */
  reviewToken(token: string, audiences: readonly string[] = []): TokenReviewStatus {
    const fail = (why: string): TokenReviewStatus => ({ user: {}, error: `[invalid bearer token, ${why}]` });
    const claims = verifyJwt(token, this.signingKey);
    if (typeof claims === 'string') return fail(claims);
    if (claims.iss !== FAKE_ISSUER) return fail(`token issuer ${JSON.stringify(claims.iss)} is not trusted`);
    const now = Date.now() / 1000;
    if (typeof claims.exp !== 'number' || now > claims.exp + TOKEN_LEEWAY_S) return fail('service account token has expired');
    if (typeof claims.nbf === 'number' && now < claims.nbf - TOKEN_LEEWAY_S) return fail('service account token is not valid yet');
    const wanted = audiences.length > 0 ? [...audiences] : [FAKE_ISSUER];
    const tokenAud: string[] = Array.isArray(claims.aud) ? claims.aud : typeof claims.aud === 'string' ? [claims.aud] : [];
    const granted = wanted.filter((a) => tokenAud.includes(a));
    if (granted.length === 0) return fail(`token audiences ${JSON.stringify(tokenAud)} is invalid for the target audiences ${JSON.stringify(wanted)}`);
    const k8s = claims['kubernetes.io'];
    if (!isObject(k8s) || typeof k8s.namespace !== 'string' || !isObject(k8s.serviceaccount)) return fail('service account token claims are missing');
    const ns = k8s.namespace;
    const sa = k8s.serviceaccount;
    if (!this.inventedSaUids.has(sa.uid)) {
      const current = this.store.serviceaccounts.get(`${ns}/${sa.name}`);
      if (!current || current.metadata.uid !== sa.uid) return fail('service account token has been invalidated');
    }
    const extra: Record<string, string[]> = {};
    if (isObject(k8s.pod)) {
      const pod = this.store.pods.get(`${ns}/${k8s.pod.name}`);
      if (!pod || pod.metadata.uid !== k8s.pod.uid) return fail('service account token has been invalidated');
      extra['authentication.kubernetes.io/pod-name'] = [k8s.pod.name];
      extra['authentication.kubernetes.io/pod-uid'] = [k8s.pod.uid];
    }
    if (isObject(k8s.node)) {
      extra['authentication.kubernetes.io/node-name'] = [k8s.node.name];
      extra['authentication.kubernetes.io/node-uid'] = [k8s.node.uid];
    }
    if (typeof claims.jti === 'string') extra['authentication.kubernetes.io/credential-id'] = [`JTI=${claims.jti}`];
    return {
      authenticated: true,
      user: {
        username: `system:serviceaccount:${ns}:${sa.name}`,
        uid: sa.uid,
        groups: ['system:serviceaccounts', `system:serviceaccounts:${ns}`, 'system:authenticated'],
        extra,
      },
      audiences: granted,
    };
  }

  /** Answer every TokenReview with HTTP status (a Status body; 0: never answer) until cleared with undefined. */
  setTokenReviewFault(status: number | undefined): void {
    this.tokenReviewFault = status;
  }

  /** TokenReview requests answered so far (any status). */
  get tokenReviews(): number {
    return this.requests.filter((r) => r.method === 'POST' && r.path === '/apis/authentication.k8s.io/v1/tokenreviews').length;
  }

  // ---------- test controls ----------

  /**
   * The next `times` list requests (of `resource`, or any; with `fieldSelector`, only lists asking exactly that
   * selector) answer HTTP `status` (default 500).
   */
  failNextList(options: { status?: number; times?: number; resource?: Resource; fieldSelector?: string } = {}): void {
    for (let i = 0; i < (options.times ?? 1); i++) {
      const entry: { status: number; resource?: Resource; fieldSelector?: string } = { status: options.status ?? 500 };
      if (options.resource) entry.resource = options.resource;
      if (options.fieldSelector !== undefined) entry.fieldSelector = options.fieldSelector;
      this.failLists.push(entry);
    }
  }

  /** The next `times` list requests (of `resource`, or any; with `fieldSelector`, only those) get no answer at all (until close()). */
  stallNextList(options: { times?: number; resource?: Resource; fieldSelector?: string } = {}): void {
    this.failNextList({ ...options, status: 0 });
  }

  /** Resolves with the first logged request (past or future) that satisfies pred, once it has been handled. */
  waitForRequest(pred: (r: RequestLogEntry) => boolean, timeoutMs = 5000): Promise<RequestLogEntry> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = this.requests.find((r) => r.status !== 0 && pred(r));
        if (!hit) return;
        this.requestWaiters.delete(check);
        clearTimeout(timer);
        resolve(hit);
      };
      const timer = setTimeout(() => {
        this.requestWaiters.delete(check);
        reject(new Error('timed out waiting for a request'));
      }, timeoutMs);
      this.requestWaiters.add(check);
      check();
    });
  }

  /** Resolves once exactly n watch streams are open (rejects after timeoutMs). */
  waitForWatches(n: number, timeoutMs = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.watchWaiters = this.watchWaiters.filter((w) => w !== check);
        reject(new Error(`timed out waiting for ${n} watches (have ${this.watchers.size})`));
      }, timeoutMs);
      const check = () => {
        if (this.watchers.size !== n) return;
        clearTimeout(timer);
        this.watchWaiters = this.watchWaiters.filter((w) => w !== check);
        resolve();
      };
      this.watchWaiters.push(check);
      check();
    });
  }

  /** End every open watch stream (clients resume from their last resourceVersion). Returns how many. */
  closeWatches(): number {
    const n = this.watchers.size;
    for (const w of [...this.watchers]) this.endWatch(w);
    return n;
  }

  /** Forget all history: a watch resuming from any resourceVersion before now gets 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv;
    this.history = [];
  }

  /** Answer every watch request as fault says until cleared (undefined); 'silent' also stalls the open ones. */
  setWatchFault(fault: WatchFault | undefined): void {
    this.watchFault = fault;
    if (fault === 'silent') for (const w of this.watchers) w.silent = true;
  }

  /**
   * The API server down for everyone: while on, every connection but the /_fake/ controls' is reset as it asks,
   * and the open watches are cut.
   */
  setOutage(on: boolean): void {
    this.outage = on;
    if (!on) return;
    for (const w of [...this.watchers]) {
      this.watchers.delete(w);
      for (const t of w.timers) clearTimeout(t);
      w.res.destroy();
    }
    this.watchesChanged();
  }

  /** Send a BOOKMARK now on every watch that allows them. */
  sendBookmarks(): void {
    for (const w of this.watchers) if (w.bookmarks) this.bookmark(w);
  }

  /** Objects, bytes and requests per client name. */
  stats(): Record<string, ClientStats> {
    const out: Record<string, ClientStats> = {};
    for (const r of this.requests) {
      const s = (out[r.client] ??= { requests: 0, lists: 0, watches: 0, objects: 0, bytes: 0 });
      s.requests++;
      if (r.watch) s.watches++;
      else if (r.method === 'GET' && r.status === 200 && /\/(pods|namespaces)$/.test(r.path)) s.lists++;
      s.objects += r.objects;
      s.bytes += r.bytes;
    }
    return out;
  }

  clearLog(): void {
    this.requests.length = 0;
  }

  async close(): Promise<void> {
    this.closeWatches();
    for (const res of this.stalled) res.destroy();
    this.stalled.clear();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  // ---------- store ----------

  private key(namespace: string | undefined, name: string): string {
    return namespace === undefined ? name : `${namespace}/${name}`;
  }

  private nextRv(): string {
    return String(++this.rv);
  }

  private record(resource: Resource, type: Event['type'], obj: Obj, old?: Obj): void {
    const ev: Event = { rv: Number(obj.metadata.resourceVersion), resource, type, obj, ...(old ? { old } : {}) };
    this.history.push(ev);
    if (this.history.length > this.historyLimit) {
      const dropped = this.history.splice(0, this.history.length - this.historyLimit);
      this.compactedRv = dropped[dropped.length - 1]!.rv;
    }
    for (const w of this.watchers) this.dispatch(w, ev);
  }

  private create(resource: Resource, namespace: string | undefined, body: Obj): Obj {
    if (!isObject(body)) throw new HttpError(400, 'BadRequest', 'body must be a JSON object');
    const obj = clone(body);
    obj.metadata = isObject(obj.metadata) ? obj.metadata : {};
    if (!obj.metadata.name && obj.metadata.generateName) obj.metadata.name = `${obj.metadata.generateName}${randomBytes(3).toString('hex').slice(0, 5)}`;
    const name = obj.metadata.name;
    if (typeof name !== 'string' || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) {
      throw new HttpError(422, 'Invalid', `${resource} "${name ?? ''}" is invalid: metadata.name: Invalid value`);
    }
    const info = RESOURCES[resource];
    if (info.namespaced) {
      if (namespace === undefined) throw new HttpError(400, 'BadRequest', `${resource} are namespaced`);
      if (obj.metadata.namespace && obj.metadata.namespace !== namespace) {
        throw new HttpError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request');
      }
      if (!this.store.namespaces.has(namespace)) throw new HttpError(404, 'NotFound', `namespaces "${namespace}" not found`);
      obj.metadata.namespace = namespace;
    } else delete obj.metadata.namespace;
    obj.kind = info.kind;
    if (resource === 'pods') {
      obj.spec = isObject(obj.spec) ? obj.spec : {};
      obj.spec.serviceAccountName ??= obj.spec.serviceAccount ?? 'default';
      obj.status = isObject(obj.status) ? obj.status : {};
      obj.status.phase ??= 'Pending';
      syncPodIps(obj);
    } else if (resource === 'namespaces') {
      obj.spec ??= { finalizers: ['kubernetes'] };
      obj.status = { phase: 'Active' };
    } else if (resource === 'secrets') normalizeSecret(obj);
    obj.apiVersion = info.apiVersion;
    const k = this.key(namespace, name);
    if (this.store[resource].has(k)) throw new HttpError(409, 'AlreadyExists', `${resource} "${name}" already exists`);
    obj.metadata.uid = randomUUID();
    obj.metadata.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    obj.metadata.resourceVersion = this.nextRv();
    delete obj.metadata.deletionTimestamp;
    this.store[resource].set(k, obj);
    this.record(resource, 'ADDED', obj);
    return clone(obj);
  }

  private update(resource: Resource, namespace: string | undefined, name: string, change: (cur: Obj) => Obj, expectRv?: string): Obj {
    const k = this.key(namespace, name);
    const cur = this.store[resource].get(k);
    if (!cur) throw new HttpError(404, 'NotFound', `${resource} "${name}" not found`);
    if (expectRv && expectRv !== cur.metadata.resourceVersion) {
      throw new HttpError(409, 'Conflict', `Operation cannot be fulfilled on ${resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
    }
    const next = change(clone(cur));
    if (!isObject(next)) throw new HttpError(400, 'BadRequest', 'patched object is not a JSON object');
    next.metadata = isObject(next.metadata) ? next.metadata : {};
    // Immutable identity.
    next.metadata.name = cur.metadata.name;
    next.metadata.uid = cur.metadata.uid;
    next.metadata.creationTimestamp = cur.metadata.creationTimestamp;
    if (namespace !== undefined) next.metadata.namespace = namespace;
    next.kind = cur.kind;
    next.apiVersion = RESOURCES[resource].apiVersion;
    if (resource === 'pods') syncPodIps(next);
    if (resource === 'secrets') normalizeSecret(next);
    next.metadata.resourceVersion = this.nextRv();
    this.store[resource].set(k, next);
    this.record(resource, 'MODIFIED', next, cur);
    return clone(next);
  }

  private remove(resource: Resource, namespace: string | undefined, name: string): Obj {
    const k = this.key(namespace, name);
    const cur = this.store[resource].get(k);
    if (!cur) throw new HttpError(404, 'NotFound', `${resource} "${name}" not found`);
    if (resource === 'namespaces') {
      for (const r of Object.keys(RESOURCES) as Resource[]) {
        if (!RESOURCES[r].namespaced) continue;
        for (const o of [...this.store[r].values()]) if (o.metadata.namespace === name) this.remove(r, name, o.metadata.name);
      }
    }
    this.store[resource].delete(k);
    const gone = clone(cur);
    gone.metadata.resourceVersion = this.nextRv();
    this.record(resource, 'DELETED', gone);
    return clone(gone);
  }

  // ---------- HTTP ----------

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://fake');
    const auth = req.headers.authorization ?? '';
    const client = auth.startsWith('Bearer ') ? this.tokens.get(auth.slice(7)) : undefined;
    const log: RequestLogEntry = {
      time: Date.now(),
      client: client ?? 'anonymous',
      method: req.method ?? 'GET',
      path: url.pathname,
      query: url.search,
      status: 0,
      watch: false,
      objects: 0,
      bytes: 0,
    };
    this.requests.push(log);
    if (this.outage && !url.pathname.startsWith('/_fake/')) {
      log.status = -2;
      req.socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', () => res.destroy());
    req.on('end', () => {
      try {
        if (!client) throw new HttpError(401, 'Unauthorized', 'Unauthorized');
        this.route(req, res, url, Buffer.concat(chunks), log);
      } catch (err) {
        if (err instanceof HttpError) this.send(res, log, err.code, status(err.code, err.reason, err.message));
        else this.send(res, log, 500, status(500, 'InternalError', err instanceof Error ? err.message : String(err)));
      }
      for (const check of [...this.requestWaiters]) check();
    });
  }

  private send(res: ServerResponse, log: RequestLogEntry, code: number, body: unknown, objects = 0): void {
    const text = JSON.stringify(body);
    log.status = code;
    log.objects += objects;
    log.bytes += Buffer.byteLength(text);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.end(text);
  }

  private route(req: IncomingMessage, res: ServerResponse, url: URL, rawBody: Buffer, log: RequestLogEntry): void {
    const method = req.method ?? 'GET';
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const q = url.searchParams;
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
    const body = () => parseBody(rawBody, contentType);

    if (path.startsWith('/_fake/')) return this.control(res, log, method, path, q, rawBody);
    if (method === 'GET') {
      if (path === '/version') {
        return this.send(res, log, 200, { major: '1', minor: '32', gitVersion: 'v1.32.0-fake', gitCommit: 'fake', gitTreeState: 'clean', buildDate: '2026-01-01T00:00:00Z', goVersion: 'go1.23', compiler: 'gc', platform: 'linux/amd64' });
      }
      if (path === '/healthz' || path === '/readyz' || path === '/livez') {
        log.status = 200;
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('ok');
        return;
      }
      if (path === '/api') {
        const [host, port] = [req.socket.localAddress ?? '127.0.0.1', req.socket.localPort ?? 0];
        return this.send(res, log, 200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `${host}:${port}` }] });
      }
      if (path === '/openapi/v3') {
        return this.send(res, log, 200, { paths: Object.fromEntries(Object.keys(OPENAPI_V3).map((gv) => [gv, { serverRelativeURL: `/openapi/v3/${gv}?hash=FAKE` }])) });
      }
      const doc = path.startsWith('/openapi/v3/') ? OPENAPI_V3[path.slice('/openapi/v3/'.length)] : undefined;
      if (doc) return this.send(res, log, 200, doc);
      if (path === '/apis') return this.send(res, log, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: Object.keys(GROUPS).map(apiGroup) });
      if (path === '/api/v1') return this.send(res, log, 200, { kind: 'APIResourceList', groupVersion: 'v1', resources: POD_RESOURCES });
      const g = /^\/apis\/([^/]+)(\/v1)?$/.exec(path);
      if (g && GROUPS[g[1]!]) {
        if (!g[2]) return this.send(res, log, 200, { kind: 'APIGroup', apiVersion: 'v1', ...apiGroup(g[1]!) });
        return this.send(res, log, 200, { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: `${g[1]}/v1`, resources: GROUPS[g[1]!] });
      }
    }
    if (path === '/apis/authentication.k8s.io/v1/tokenreviews') {
      if (method !== 'POST') throw new HttpError(405, 'MethodNotAllowed', `method ${method} not allowed`);
      return this.tokenReview(res, log, body());
    }

    const adm = /^\/apis\/admissionregistration\.k8s\.io\/v1\/(mutatingwebhookconfigurations)(?:\/([^/]+))?$/.exec(path);
    const m = adm ? [path, undefined, adm[1], adm[2], undefined] : /^\/api\/v1\/(?:namespaces\/([^/]+)\/)?(pods|namespaces|serviceaccounts|secrets)(?:\/([^/]+))?(?:\/(status|token))?$/.exec(path);
    if (!m) throw new HttpError(404, 'NotFound', 'the server could not find the requested resource');
    const [, nsPart, resource, name, sub] = m as unknown as [string, string | undefined, Resource, string | undefined, string | undefined];
    let namespace = nsPart === undefined ? undefined : decodeURIComponent(nsPart);
    const objName = name === undefined ? undefined : decodeURIComponent(name);
    const notFound = () => new HttpError(404, 'NotFound', 'the server could not find the requested resource');
    const { namespaced } = RESOURCES[resource];
    // /api/v1/namespaces/NAME is the namespace NAME itself.
    if (!namespaced && namespace !== undefined) throw notFound();
    if (namespaced && objName !== undefined && namespace === undefined) throw notFound();
    if (sub === 'status' && resource !== 'pods') throw notFound();
    if (sub === 'token') {
      if (resource !== 'serviceaccounts' || objName === undefined) throw notFound();
      if (method !== 'POST') throw new HttpError(405, 'MethodNotAllowed', `method ${method} not allowed`);
      return this.tokenRequest(res, log, namespace!, objName, body());
    }
    if (!namespaced) namespace = undefined;

    if (objName === undefined) {
      if (method === 'GET') {
        const selector = parseFieldSelector(resource, q.get('fieldSelector') ?? '');
        if (q.get('watch') === '1' || q.get('watch') === 'true') return this.watch(res, log, resource, namespace, selector, q);
        return this.list(res, log, resource, namespace, selector, wantsTable(req), q.get('fieldSelector') ?? '');
      }
      if (method === 'POST') {
        const obj = this.create(resource, namespace, body());
        return this.send(res, log, 201, obj, 1);
      }
      throw new HttpError(405, 'MethodNotAllowed', `method ${method} not allowed`);
    }

    const k = this.key(namespace, objName);
    switch (method) {
      case 'GET': {
        const obj = this.store[resource].get(k);
        if (!obj) throw new HttpError(404, 'NotFound', `${resource} "${objName}" not found`);
        return this.send(res, log, 200, wantsTable(req) ? toTable(resource, [obj], obj.metadata.resourceVersion) : obj, 1);
      }
      case 'PUT': {
        const next = body();
        const obj = this.update(resource, namespace, objName, (cur) => (sub ? { ...cur, status: next.status } : next), next.metadata?.resourceVersion);
        return this.send(res, log, 200, obj, 1);
      }
      case 'PATCH': {
        if (contentType === 'application/json-patch+json') {
          const ops = parseJson(rawBody);
          if (!Array.isArray(ops)) throw new HttpError(400, 'BadRequest', 'a JSON patch is a JSON array of operations');
          const obj = this.update(resource, namespace, objName, (cur) => {
            const next = jsonPatch(cur, ops) as Obj;
            return sub ? { ...cur, status: next.status } : next;
          });
          return this.send(res, log, 200, obj, 1);
        }
        if (contentType !== 'application/merge-patch+json' && contentType !== 'application/strategic-merge-patch+json' && contentType !== 'application/json') {
          throw new HttpError(
            415,
            'UnsupportedMediaType',
            `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`,
          );
        }
        const patch = body();
        const obj = this.update(resource, namespace, objName, (cur) => mergePatch(cur, sub ? { status: patch.status } : patch) as Obj);
        return this.send(res, log, 200, obj, 1);
      }
      case 'DELETE': {
        const obj = this.remove(resource, namespace, objName);
        return this.send(res, log, 200, obj, 1);
      }
      default:
        throw new HttpError(405, 'MethodNotAllowed', `method ${method} not allowed`);
    }
  }

  private list(res: ServerResponse, log: RequestLogEntry, resource: Resource, namespace: string | undefined, selector: Selector, table = false, rawSelector = ''): void {
    const fail = this.failLists.findIndex((f) => (!f.resource || f.resource === resource) && (f.fieldSelector === undefined || f.fieldSelector === rawSelector));
    if (fail >= 0) {
      const [f] = this.failLists.splice(fail, 1);
      if (f!.status === 0) {
        log.status = -1;
        this.stalled.add(res);
        res.on('close', () => this.stalled.delete(res));
        return;
      }
      throw new HttpError(f!.status, 'InternalError', 'injected failure');
    }
    const items = [...this.store[resource].values()].filter(
      (o) => (namespace === undefined || o.metadata.namespace === namespace) && matches(resource, selector, o),
    );
    if (table) return this.send(res, log, 200, toTable(resource, items, String(this.rv)), items.length);
    const { kind, apiVersion } = RESOURCES[resource];
    this.send(res, log, 200, { kind: `${kind}List`, apiVersion, metadata: { resourceVersion: String(this.rv) }, items }, items.length);
  }

  private watch(res: ServerResponse, log: RequestLogEntry, resource: Resource, namespace: string | undefined, selector: Selector, q: URLSearchParams): void {
    log.watch = true;
    const fault = this.watchFault;
    if (fault !== undefined && fault !== 'gone' && fault !== 'silent') {
      const reason = fault.status === 403 ? 'Forbidden' : fault.status === 429 ? 'TooManyRequests' : fault.status === 410 ? 'Expired' : 'InternalError';
      throw new HttpError(fault.status, reason, `injected watch fault ${fault.status}`);
    }
    log.status = 200;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const w: Watcher = { resource, selector, res, log, bookmarks: q.get('allowWatchBookmarks') === 'true', timers: [] };
    if (namespace !== undefined) w.namespace = namespace;
    const rvParam = q.get('resourceVersion') ?? '';
    const from = rvParam === '' || rvParam === '0' ? undefined : Number(rvParam);
    if (fault === 'gone' || (from !== undefined && (!Number.isFinite(from) || from < this.compactedRv))) {
      this.write(w, {
        type: 'ERROR',
        object: status(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedRv + 1})`),
      });
      res.end();
      return;
    }
    if (fault === 'silent') w.silent = true;
    this.watchers.add(w);
    this.watchesChanged();
    res.on('close', () => this.endWatch(w));
    if (w.silent) {
      // Stuck from the start: nothing is replayed, nothing delivered, until the client gives up.
    } else if (from === undefined) {
      // "Any" resource version: the current state as ADDED events, then changes.
      for (const o of this.store[resource].values()) if (this.visible(w, o)) this.write(w, { type: 'ADDED', object: o });
    } else {
      for (const ev of this.history) if (ev.rv > from) this.dispatch(w, ev);
    }
    const timeout = Number(q.get('timeoutSeconds') ?? '');
    if (timeout > 0) w.timers.push(setTimeout(() => this.endWatch(w), timeout * 1000));
    // As the watch cache does: a bookmark 2 s before the watch's deadline (cache_watcher.go, nextBookmarkTime).
    if (timeout > 2 && w.bookmarks) w.timers.push(setTimeout(() => this.bookmark(w), (timeout - 2) * 1000));
    if (w.bookmarks && this.bookmarkIntervalMs > 0) w.timers.push(setInterval(() => this.bookmark(w), this.bookmarkIntervalMs));
  }

  private visible(w: Watcher, o: Obj | undefined): boolean {
    return !!o && (w.namespace === undefined || o.metadata?.namespace === w.namespace) && matches(w.resource, w.selector, o);
  }

  private dispatch(w: Watcher, ev: Event): void {
    if (ev.resource !== w.resource || w.silent) return;
    const was = this.visible(w, ev.old);
    const is = this.visible(w, ev.obj);
    if (ev.type === 'DELETED') {
      if (is) this.write(w, { type: 'DELETED', object: ev.obj });
    } else if (ev.type === 'ADDED') {
      if (is) this.write(w, { type: 'ADDED', object: ev.obj });
    } else if (was && is) this.write(w, { type: 'MODIFIED', object: ev.obj });
    else if (is) this.write(w, { type: 'ADDED', object: ev.obj });
    else if (was) this.write(w, { type: 'DELETED', object: ev.obj });
  }

  private bookmark(w: Watcher): void {
    if (w.silent) return;
    const { kind, apiVersion } = RESOURCES[w.resource];
    this.write(w, { type: 'BOOKMARK', object: { kind, apiVersion, metadata: { resourceVersion: String(this.rv) } } });
  }

  private write(w: Watcher, event: Obj): void {
    const line = `${JSON.stringify(event)}\n`;
    w.log.objects++;
    w.log.bytes += Buffer.byteLength(line);
    w.res.write(line);
  }

  private endWatch(w: Watcher): void {
    if (!this.watchers.delete(w)) return;
    for (const t of w.timers) clearTimeout(t);
    w.res.end();
    this.watchesChanged();
  }

  private watchesChanged(): void {
    for (const check of [...this.watchWaiters]) check();
  }

  private tokenReview(res: ServerResponse, log: RequestLogEntry, review: Obj): void {
    const fault = this.tokenReviewFault;
    if (fault === 0) {
      log.status = -1;
      this.stalled.add(res);
      res.on('close', () => this.stalled.delete(res));
      return;
    }
    if (fault !== undefined) throw new HttpError(fault, fault === 429 ? 'TooManyRequests' : fault === 403 ? 'Forbidden' : 'InternalError', `injected TokenReview fault ${fault}`);
    const spec = isObject(review.spec) ? review.spec : {};
    if (typeof spec.token !== 'string' || spec.token === '') throw new HttpError(422, 'Invalid', 'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value');
    const audiences = Array.isArray(spec.audiences) ? spec.audiences.filter((a: unknown): a is string => typeof a === 'string') : [];
    const status = this.reviewToken(spec.token, audiences);
    this.send(res, log, 201, { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec, status }, 1);
  }

  /** The TokenRequest subresource (POST serviceaccounts/NAME/token), as the kubelet asks for projected tokens. */
  private tokenRequest(res: ServerResponse, log: RequestLogEntry, namespace: string, saName: string, request: Obj): void {
    if (!this.store.serviceaccounts.has(`${namespace}/${saName}`)) throw new HttpError(404, 'NotFound', `serviceaccounts "${saName}" not found`);
    const spec = isObject(request.spec) ? request.spec : {};
    const ref = isObject(spec.boundObjectRef) ? spec.boundObjectRef : undefined;
    if (ref && ref.kind !== 'Pod') throw new HttpError(400, 'BadRequest', `cannot bind token to object of kind ${String(ref.kind)}: the fake binds to pods only`);
    if (ref && ref.uid) {
      const pod = this.store.pods.get(`${namespace}/${ref.name}`);
      if (pod && pod.metadata.uid !== ref.uid) throw new HttpError(409, 'Conflict', `the UID in the bound object reference (${ref.uid}) does not match the UID in record`);
    }
    const expirationSeconds = typeof spec.expirationSeconds === 'number' ? spec.expirationSeconds : 3600;
    const audiences = Array.isArray(spec.audiences) && spec.audiences.length > 0 ? spec.audiences : undefined;
    const issuedAt = Math.floor(Date.now() / 1000);
    const token = this.issueToken({ namespace, serviceAccount: saName, ...(ref ? { pod: String(ref.name) } : {}), ...(audiences ? { audience: audiences } : {}), expirationSeconds, issuedAt });
    const expirationTimestamp = new Date((issuedAt + expirationSeconds) * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
    this.send(res, log, 201, { kind: 'TokenRequest', apiVersion: 'authentication.k8s.io/v1', metadata: { name: saName, namespace }, spec: { ...spec, expirationSeconds }, status: { token, expirationTimestamp } }, 1);
  }

  private control(res: ServerResponse, log: RequestLogEntry, method: string, path: string, q: URLSearchParams, rawBody: Buffer): void {
    if (method === 'GET' && path === '/_fake/stats') return this.send(res, log, 200, { stats: this.stats(), watches: this.watchCount, resourceVersion: this.rv });
    if (method !== 'POST') throw new HttpError(405, 'MethodNotAllowed', 'POST only');
    switch (path) {
      case '/_fake/close-watches':
        return this.send(res, log, 200, { closed: this.closeWatches() });
      case '/_fake/compact':
        this.compact();
        return this.send(res, log, 200, { compactedRv: this.compactedRv });
      case '/_fake/bookmarks':
        this.sendBookmarks();
        return this.send(res, log, 200, { ok: true });
      case '/_fake/watch-fault': {
        const mode = q.get('mode') ?? 'none';
        if (mode === 'none') this.setWatchFault(undefined);
        else if (mode === 'gone' || mode === 'silent') this.setWatchFault(mode);
        else if (mode === 'status') this.setWatchFault({ status: Number(q.get('status') ?? 403) });
        else throw new HttpError(400, 'BadRequest', 'mode must be gone, silent, status or none');
        return this.send(res, log, 200, { ok: true });
      }
      case '/_fake/outage':
        this.setOutage(q.get('on') === 'true');
        return this.send(res, log, 200, { ok: true });
      case '/_fake/tokens': {
        const o = parseBody(rawBody, 'application/json');
        if (typeof o.namespace !== 'string') throw new HttpError(400, 'BadRequest', 'namespace is required');
        return this.send(res, log, 200, { token: this.issueToken(o as IssueTokenOptions) });
      }
      case '/_fake/tokenreview-fault': {
        const st = q.get('status') ?? 'none';
        if (st === 'none') this.setTokenReviewFault(undefined);
        else if (/^\d+$/.test(st) && (Number(st) === 0 || (Number(st) >= 400 && Number(st) < 600))) this.setTokenReviewFault(Number(st));
        else throw new HttpError(400, 'BadRequest', 'status must be an HTTP error status (400-599), 0 (never answer) or none');
        return this.send(res, log, 200, { ok: true });
      }
      case '/_fake/fail-next-list': {
        const resource = q.get('resource');
        if (resource !== null && resource !== 'pods' && resource !== 'namespaces') throw new HttpError(400, 'BadRequest', 'resource must be pods or namespaces');
        this.failNextList({
          status: Number(q.get('status') ?? 500),
          times: Number(q.get('times') ?? 1),
          ...(resource ? { resource } : {}),
        });
        return this.send(res, log, 200, { ok: true });
      }
      default:
        throw new HttpError(404, 'NotFound', `no control ${path}`);
    }
  }
}

function wantsTable(req: IncomingMessage): boolean {
  return /as=Table/.test(req.headers.accept ?? '');
}

function age(created: string | undefined): string {
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(created ?? '')) / 1000)) || 0;
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

/** The server-side printing kubectl asks for (`kubectl get` columns). */
function toTable(resource: Resource, items: Obj[], resourceVersion: string): Obj {
  const col = (name: string, priority = 0, format = '') => ({ name, type: 'string', format, description: name, priority });
  if (resource !== 'pods' && resource !== 'namespaces') {
    const secrets = resource === 'secrets';
    const columnDefinitions = secrets ? [col('Name', 0, 'name'), col('Type'), col('Data'), col('Age')] : [col('Name', 0, 'name'), col('Age')];
    const rows = items.map((o) => ({
      cells: secrets ? [o.metadata.name, o.type ?? '', Object.keys(o.data ?? {}).length, age(o.metadata.creationTimestamp)] : [o.metadata.name, age(o.metadata.creationTimestamp)],
      object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata },
    }));
    return { kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion }, columnDefinitions, rows };
  }
  const columnDefinitions =
    resource === 'pods'
      ? [col('Name', 0, 'name'), col('Status'), col('IP', 1), col('Node', 1), col('Role', 1), col('Age')]
      : [col('Name', 0, 'name'), col('Status'), col('Permitted', 1), col('Age')];
  const rows = items.map((o) => ({
    cells:
      resource === 'pods'
        ? [
            o.metadata.name,
            o.metadata.deletionTimestamp ? 'Terminating' : (o.status?.phase ?? ''),
            o.status?.podIP ?? '<none>',
            o.spec?.nodeName ?? '<none>',
            o.metadata.annotations?.['iam.amazonaws.com/role'] ?? '<none>',
            age(o.metadata.creationTimestamp),
          ]
        : [o.metadata.name, o.status?.phase ?? 'Active', o.metadata.annotations?.['iam.amazonaws.com/permitted'] ?? '<none>', age(o.metadata.creationTimestamp)],
    object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata },
  }));
  return { kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion }, columnDefinitions, rows };
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, 'BadRequest', `invalid JSON body: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** As the API server stores a Secret: stringData merged into data (base64), type defaulting to Opaque. */
function normalizeSecret(obj: Obj): void {
  if (isObject(obj.stringData)) {
    obj.data = isObject(obj.data) ? obj.data : {};
    for (const [k, v] of Object.entries(obj.stringData)) obj.data[k] = Buffer.from(String(v)).toString('base64');
  }
  delete obj.stringData;
  if (typeof obj.type !== 'string' || obj.type === '') obj.type = 'Opaque';
}

/** RFC 6901 JSON pointer → its unescaped reference tokens. */
function pointer(path: unknown): string[] {
  if (typeof path !== 'string' || (path !== '' && !path.startsWith('/'))) throw new HttpError(422, 'Invalid', `invalid JSON pointer ${JSON.stringify(path)}`);
  return path === '' ? [] : path.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a as Obj);
  const kb = Object.keys(b as Obj);
  return ka.length === kb.length && ka.every((k) => deepEqual((a as Obj)[k], (b as Obj)[k]));
}

/** RFC 6902 JSON patch (add, remove, replace, move, copy, test); all or nothing. A failed op is a 422, as the API server answers. */
export function jsonPatch(doc: unknown, ops: unknown[]): unknown {
  let root: unknown = clone(doc);
  const parentOf = (tokens: string[], op: string): { parent: any; key: string } => { // eslint-disable-line @typescript-eslint/no-explicit-any
    let cur: any = root; // eslint-disable-line @typescript-eslint/no-explicit-any
    for (const t of tokens.slice(0, -1)) {
      if (cur === null || typeof cur !== 'object' || !(t in cur)) throw new HttpError(422, 'Invalid', `${op}: path /${tokens.join('/')} does not exist`);
      cur = cur[t];
    }
    if (cur === null || typeof cur !== 'object') throw new HttpError(422, 'Invalid', `${op}: path /${tokens.join('/')} does not exist`);
    return { parent: cur, key: tokens[tokens.length - 1]! };
  };
  const get = (tokens: string[], op: string): unknown => {
    if (tokens.length === 0) return root;
    const { parent, key } = parentOf(tokens, op);
    if (!(key in parent)) throw new HttpError(422, 'Invalid', `${op}: path /${tokens.join('/')} does not exist`);
    return parent[key];
  };
  const remove = (tokens: string[], op: string): unknown => {
    if (tokens.length === 0) throw new HttpError(422, 'Invalid', `${op}: cannot remove the whole document`);
    const { parent, key } = parentOf(tokens, op);
    if (!(key in parent) || (Array.isArray(parent) && !/^\d+$/.test(key))) throw new HttpError(422, 'Invalid', `${op}: path /${tokens.join('/')} does not exist`);
    const old = parent[key];
    if (Array.isArray(parent)) parent.splice(Number(key), 1);
    else delete parent[key];
    return old;
  };
  const add = (tokens: string[], value: unknown, op: string): void => {
    if (tokens.length === 0) {
      root = value;
      return;
    }
    const { parent, key } = parentOf(tokens, op);
    if (Array.isArray(parent)) {
      const i = key === '-' ? parent.length : /^\d+$/.test(key) ? Number(key) : NaN;
      if (!(i >= 0 && i <= parent.length)) throw new HttpError(422, 'Invalid', `${op}: index ${key} out of range`);
      parent.splice(i, 0, value);
    } else parent[key] = value;
  };
  for (const raw of ops) {
    if (!isObject(raw)) throw new HttpError(400, 'BadRequest', 'a JSON patch operation is an object');
    const tokens = pointer(raw.path);
    switch (raw.op) {
      case 'add':
        add(tokens, clone(raw.value), 'add');
        break;
      case 'remove':
        remove(tokens, 'remove');
        break;
      case 'replace':
        if (tokens.length === 0) root = clone(raw.value);
        else {
          remove(tokens, 'replace');
          add(tokens, clone(raw.value), 'replace');
        }
        break;
      case 'move': {
        const from = pointer(raw.from);
        add(tokens, remove(from, 'move'), 'move');
        break;
      }
      case 'copy':
        add(tokens, clone(get(pointer(raw.from), 'copy')), 'copy');
        break;
      case 'test':
        if (!deepEqual(get(tokens, 'test'), raw.value)) throw new HttpError(422, 'Invalid', `test: the value at ${String(raw.path)} differs`);
        break;
      default:
        throw new HttpError(422, 'Invalid', `unknown JSON patch operation ${JSON.stringify(raw.op)}`);
    }
  }
  return root;
}

const b64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

/** A compact JWS (RFC 7515) of claims with HS256 (RFC 7518 §3.2). */
export function signJwt(claims: Obj, key: Buffer, header: Obj = { alg: 'HS256', kid: 'fake-kube', typ: 'JWT' }): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(createHmac('sha256', key).update(input).digest())}`;
}

/** The claims of an HS256 JWT signed with key, or why it is not one. */
function verifyJwt(token: string, key: Buffer): Obj | string {
  const parts = token.split('.');
  if (parts.length !== 3) return 'token is not a JWT';
  let header: unknown;
  let claims: unknown;
  try {
    header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
  } catch {
    return 'token is malformed';
  }
  if (!isObject(header) || header.alg !== 'HS256' || !isObject(claims)) return 'token is malformed';
  const expected = createHmac('sha256', key).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2]!, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return 'token signature is invalid';
  return claims;
}

function parseBody(body: Buffer, contentType: string): Obj {
  if (contentType === 'application/vnd.kubernetes.protobuf') {
    try {
      return decodeKubeProtobuf(body);
    } catch (err) {
      throw new HttpError(415, 'UnsupportedMediaType', `protobuf body: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    if (!isObject(parsed)) throw new Error('not an object');
    return parsed;
  } catch (err) {
    throw new HttpError(400, 'BadRequest', `invalid JSON body: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** A self-signed P-256 certificate for host (+ localhost, 127.0.0.1, ::1 and extra alt names). */
async function makeCertificate(host: string, extra: string[]): Promise<{ key: string; cert: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'fake-kube-'));
  try {
    const sans = new Set(['DNS:localhost', 'IP:127.0.0.1', 'IP:::1', ...extra]);
    if (isIP(host)) sans.add(`IP:${host}`);
    else if (host) sans.add(`DNS:${host}`);
    const keyPath = join(dir, 'key.pem');
    const certPath = join(dir, 'cert.pem');
    await execFileAsync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=fake-kube', '-addext', `subjectAltName=${[...sans].join(',')}`,
      '-keyout', keyPath, '-out', certPath,
    ]);
    const [key, cert] = await Promise.all([readFile(keyPath, 'utf8'), readFile(certPath, 'utf8')]);
    return { key, cert };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------- standalone ----------

runStandalone('fake-kube-apiserver', import.meta.url, async (argv) => {
  const args = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const [k, inline] = a.slice(2).split('=', 2) as [string, string | undefined];
    const v = inline ?? argv[++i];
    if (v === undefined) throw new Error(`--${k} needs a value`);
    args.set(k, v);
  }
  for (const k of args.keys()) {
    if (!['host', 'port', 'kubeconfig-out', 'bookmark-interval-ms', 'alt-names'].includes(k)) throw new Error(`unknown flag --${k}`);
  }
  const port = Number(args.get('port') ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port: invalid port ${args.get('port')}`);
  const options: FakeKubeOptions = { host: args.get('host') ?? '127.0.0.1', port };
  if (args.has('bookmark-interval-ms')) options.bookmarkIntervalMs = Number(args.get('bookmark-interval-ms'));
  if (args.has('alt-names')) options.altNames = args.get('alt-names')!.split(',').filter(Boolean);
  const fake = await FakeKubeApiServer.start(options);
  const kubeconfig = args.get('kubeconfig-out');
  if (kubeconfig) await fake.writeKubeconfig(kubeconfig);
  return { announce: { url: fake.url, kubeconfig: kubeconfig ?? null, token: fake.token, pid: process.pid }, close: () => fake.close() };
});
