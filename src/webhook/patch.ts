/**
 * The webhook's decision, pure: an AdmissionReview v1 request (a pod CREATE) → the AdmissionReview v1 response,
 * with a base64 JSONPatch (RFC 6902) that wires the pod to the agent's container-credentials endpoint:
 *  - every container and initContainer gets AWS_CONTAINER_CREDENTIALS_FULL_URI and
 *    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (not a container that already sets either: its own wiring wins), and a
 *    read-only mount of the volume `kiam-token` at /var/run/secrets/kiam/serviceaccount (not where the container
 *    already mounts something at that path: the API would refuse a second mount there);
 *  - the pod gets the projected volume `kiam-token`: a service-account token for the agent's audience, valid for
 *    a day (the kubelet renews it at 80 % of its life), at path `token`.
 * Nothing else. Only pods whose own annotation or service account names a role, in namespaces the
 * MutatingWebhookConfiguration's namespaceSelector lets through; a pod annotated
 * `kiam.io/container-credentials: "false"` is left alone. Re-admitting a pod this produced yields no patch.
 * https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#response
 */
import { CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6 } from '../config.ts';
import { ROLE_ANNOTATION } from '../resolver/pod-index.ts';

/** The role annotation, on the pod or on its service account: the same key the agent reads. */
export { ROLE_ANNOTATION };
/** On a pod, "false" opts it out; on a namespace (as a label), "enabled" opts it in (namespaceSelector). */
export const CONTAINER_CREDENTIALS_KEY = 'kiam.io/container-credentials';
export const URI_ENV = 'AWS_CONTAINER_CREDENTIALS_FULL_URI';
export const TOKEN_FILE_ENV = 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE';
/** The agent's container-credentials addresses (the two the SDKs accept over plain HTTP besides loopback). */
export const CREDENTIALS_URI = `http://${CONTAINER_CREDENTIALS_IP}/v1/credentials`;
export const CREDENTIALS_URI_IPV6 = `http://[${CONTAINER_CREDENTIALS_IPV6}]/v1/credentials`;
export const TOKEN_VOLUME = 'kiam-token';
export const TOKEN_DIR = '/var/run/secrets/kiam/serviceaccount';
export const TOKEN_PATH = 'token';
export const TOKEN_FILE = `${TOKEN_DIR}/${TOKEN_PATH}`;
/** A day: the kubelet refreshes a projected token once 80 % of its life has passed (or after 24 h). */
export const TOKEN_EXPIRATION_SECONDS = 86_400;

export interface MutationOptions {
  /** The token's audience: the agent's --token-audience. */
  audience: string;
  /** The IPv6 endpoint instead of 169.254.170.23 (IPv6-only clusters). */
  ipv6: boolean;
}

/** What the webhook did with one request (a metric label and the log line's `result`). */
export type AdmissionOutcome =
  | 'mutated'
  /** Everything is in place already (re-admission, or a pod wired by hand). */
  | 'unchanged'
  | 'no-role'
  | 'opted-out'
  /** The pod has a volume named kiam-token of its own: left alone, with a warning. */
  | 'volume-clash'
  /** The pod names no role but its service account could not be read: admitted as is, with a warning. */
  | 'service-account-unavailable'
  /** Not a pod CREATE (another resource, a subresource, another operation): admitted untouched. */
  | 'ignored';

export interface JsonPatchOp {
  op: 'add';
  path: string;
  value: unknown;
}

/** Just the parts of AdmissionReview v1 the webhook reads. */
export interface AdmissionRequest {
  uid: string;
  kind?: { group: string; version: string; kind: string };
  resource?: { group: string; version: string; resource: string };
  subResource?: string;
  namespace?: string;
  name?: string;
  operation?: string;
  dryRun?: boolean;
  object?: unknown;
}

export interface AdmissionReviewResponse {
  apiVersion: 'admission.k8s.io/v1';
  kind: 'AdmissionReview';
  response: {
    uid: string;
    allowed: true;
    patchType?: 'JSONPatch';
    /** base64 of the JSON array of operations. */
    patch?: string;
    warnings?: string[];
  };
}

/** A request body the webhook cannot answer (HTTP 400): not an AdmissionReview v1 with a request and a uid. */
export class AdmissionReviewError extends Error {
  override name = 'AdmissionReviewError';
}

type Obj = Record<string, unknown>;
const isObject = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Validate the envelope (apiVersion, kind, request.uid); the object inside is read defensively later. */
export function parseAdmissionReview(body: unknown): AdmissionRequest {
  if (!isObject(body)) throw new AdmissionReviewError('body is not a JSON object');
  if (body.apiVersion !== 'admission.k8s.io/v1' || body.kind !== 'AdmissionReview') {
    throw new AdmissionReviewError(`expected admission.k8s.io/v1 AdmissionReview, got ${String(body.apiVersion)} ${String(body.kind)}`);
  }
  const request = body.request;
  if (!isObject(request) || typeof request.uid !== 'string' || request.uid === '') throw new AdmissionReviewError('request.uid is missing');
  return request as unknown as AdmissionRequest;
}

interface PodView {
  metadata?: { name?: string; generateName?: string; namespace?: string; annotations?: Record<string, string> };
  spec?: {
    serviceAccountName?: string;
    serviceAccount?: string;
    containers?: ContainerView[];
    initContainers?: ContainerView[];
    volumes?: Array<{ name?: string; projected?: { sources?: Array<{ serviceAccountToken?: { audience?: string; path?: string } }> } }>;
  };
}
interface ContainerView {
  name?: string;
  env?: Array<{ name?: string }>;
  volumeMounts?: Array<{ name?: string; mountPath?: string }>;
}

/** A pod CREATE (the core v1 pods resource itself, not a subresource); otherwise undefined. */
function podOf(request: AdmissionRequest): PodView | undefined {
  const r = request.resource;
  if (request.operation !== 'CREATE' || !r || r.group !== '' || r.resource !== 'pods' || request.subResource) return undefined;
  return isObject(request.object) ? (request.object as PodView) : undefined;
}

const nonEmpty = (v: unknown): v is string => typeof v === 'string' && v.trim() !== '';

/** The pod's role annotation, if it names one. */
function podRole(pod: PodView): string | undefined {
  const role = pod.metadata?.annotations?.[ROLE_ANNOTATION];
  return nonEmpty(role) ? role.trim() : undefined;
}
const optedOut = (pod: PodView) => pod.metadata?.annotations?.[CONTAINER_CREDENTIALS_KEY]?.trim().toLowerCase() === 'false';

/**
 * The service account whose annotation decides, when the pod itself names no role (and is not opted out);
 * undefined when the answer does not depend on it. The ServiceAccount admission plugin, which runs before
 * webhooks, has filled in `default` already; the fallback is for requests that did not pass it.
 */
export function serviceAccountToLookUp(request: AdmissionRequest): { namespace: string; name: string } | undefined {
  const pod = podOf(request);
  if (!pod || optedOut(pod) || podRole(pod)) return undefined;
  const namespace = request.namespace || pod.metadata?.namespace;
  if (!nonEmpty(namespace)) return undefined;
  const name = pod.spec?.serviceAccountName || pod.spec?.serviceAccount || 'default';
  return { namespace, name };
}

/** What the caller learnt about the service account serviceAccountToLookUp named. */
export type ServiceAccountFacts = { role: string | undefined } | { error: string };

export interface AdmissionResult {
  review: AdmissionReviewResponse;
  outcome: AdmissionOutcome;
  /** The operations sent (base64 in review.response.patch), for logs and tests. */
  patch: JsonPatchOp[];
  /** Where the role came from, when the pod was looked at. */
  roleSource?: 'pod' | 'service-account';
}

/** The projected volume the patch adds (also how a volume of that name is recognised as ours). */
export function tokenVolume(audience: string): Obj {
  return {
    name: TOKEN_VOLUME,
    projected: { sources: [{ serviceAccountToken: { audience, expirationSeconds: TOKEN_EXPIRATION_SECONDS, path: TOKEN_PATH } }] },
  };
}

/**
 * Ours: a projected volume with a service-account token for our audience at `token` (the API server adds
 * defaultMode on the way in, so the volume is not compared whole).
 */
function isOurVolume(v: NonNullable<NonNullable<PodView['spec']>['volumes']>[number], audience: string): boolean {
  const sources = v.projected?.sources;
  return Array.isArray(sources) && sources.some((s) => s?.serviceAccountToken?.audience === audience && (s.serviceAccountToken.path ?? '') === TOKEN_PATH);
}

/**
 * The answer to one request. `serviceAccount` is what the caller found for serviceAccountToLookUp(request)
 * (undefined when that was undefined). Pure: the same inputs give the same patch.
 */
export function admit(request: AdmissionRequest, options: MutationOptions, serviceAccount?: ServiceAccountFacts): AdmissionResult {
  const answer = (outcome: AdmissionOutcome, extra: { patch?: JsonPatchOp[]; warnings?: string[]; roleSource?: 'pod' | 'service-account' } = {}): AdmissionResult => {
    const patch = extra.patch ?? [];
    const response: AdmissionReviewResponse['response'] = { uid: request.uid, allowed: true };
    if (patch.length > 0) {
      response.patchType = 'JSONPatch';
      response.patch = Buffer.from(JSON.stringify(patch)).toString('base64');
    }
    if (extra.warnings?.length) response.warnings = extra.warnings;
    return {
      review: { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response },
      outcome,
      patch,
      ...(extra.roleSource ? { roleSource: extra.roleSource } : {}),
    };
  };

  const pod = podOf(request);
  if (!pod) return answer('ignored');
  if (optedOut(pod)) return answer('opted-out');
  let roleSource: 'pod' | 'service-account';
  if (podRole(pod)) roleSource = 'pod';
  else if (serviceAccount && 'error' in serviceAccount) {
    // Admitted as is, as failurePolicy Ignore would; the warning reaches whoever created the pod.
    return answer('service-account-unavailable', { warnings: ['kiam: the service account could not be read; the pod is not wired to container credentials'] });
  } else if (nonEmpty(serviceAccount?.role)) roleSource = 'service-account';
  else return answer('no-role');

  const volumes = Array.isArray(pod.spec?.volumes) ? pod.spec.volumes : [];
  const existing = volumes.find((v) => isObject(v) && v.name === TOKEN_VOLUME);
  if (existing && !isOurVolume(existing, options.audience)) {
    return answer('volume-clash', {
      roleSource,
      warnings: [`kiam: the pod has a volume named ${TOKEN_VOLUME} of its own; it is not wired to container credentials`],
    });
  }

  const uri = options.ipv6 ? CREDENTIALS_URI_IPV6 : CREDENTIALS_URI;
  const patch: JsonPatchOp[] = [];
  let mounted = false;
  for (const field of ['initContainers', 'containers'] as const) {
    const containers = pod.spec?.[field];
    (Array.isArray(containers) ? containers : []).forEach((c, i) => {
      if (!isObject(c)) return;
      const base = `/spec/${field}/${i}`;
      const env = Array.isArray(c.env) ? c.env : undefined;
      if (!env?.some((e) => isObject(e) && (e.name === URI_ENV || e.name === TOKEN_FILE_ENV))) {
        const vars = [
          { name: URI_ENV, value: uri },
          { name: TOKEN_FILE_ENV, value: TOKEN_FILE },
        ];
        if (env) for (const v of vars) patch.push({ op: 'add', path: `${base}/env/-`, value: v });
        else patch.push({ op: 'add', path: `${base}/env`, value: vars });
      }
      const mounts = Array.isArray(c.volumeMounts) ? c.volumeMounts : undefined;
      if (!mounts?.some((m) => isObject(m) && String(m.mountPath ?? '').replace(/\/+$/, '') === TOKEN_DIR)) {
        const mount = { name: TOKEN_VOLUME, mountPath: TOKEN_DIR, readOnly: true };
        patch.push(mounts ? { op: 'add', path: `${base}/volumeMounts/-`, value: mount } : { op: 'add', path: `${base}/volumeMounts`, value: [mount] });
        mounted = true;
      }
    });
  }
  if (mounted && !existing) {
    const volume = tokenVolume(options.audience);
    patch.push(Array.isArray(pod.spec?.volumes) ? { op: 'add', path: '/spec/volumes/-', value: volume } : { op: 'add', path: '/spec/volumes', value: [volume] });
  }
  return answer(patch.length > 0 ? 'mutated' : 'unchanged', { patch, roleSource });
}
