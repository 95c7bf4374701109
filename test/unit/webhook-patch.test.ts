/**
 * The webhook's decision (src/webhook/patch.ts) on AdmissionReview v1 requests built from real pod specs (what the
 * API server sends for a ReplicaSet's pod and for `kubectl run`, after its own admission plugins: defaults, the
 * kube-api-access volume, the default tolerations). Each patch is applied with fast-json-patch, validating every
 * operation against the pod as the API server would, and the resulting pod is compared whole.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import jsonpatch from 'fast-json-patch';
import { admit, AdmissionReviewError, parseAdmissionReview, serviceAccountToLookUp, type AdmissionRequest, type AdmissionResult, type MutationOptions } from '../../src/webhook/patch.ts';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const fixture = (name: string): Obj => JSON.parse(readFileSync(new URL(`fixtures/webhook/${name}.json`, import.meta.url), 'utf8')) as Obj;
const OPTIONS: MutationOptions = { audience: 'kiam', ipv6: false };

// What the pods must end up with, written out here rather than imported, so that a change to them shows.
const ENV = [
  { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://169.254.170.23/v1/credentials' },
  { name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: '/var/run/secrets/kiam/serviceaccount/token' },
];
const MOUNT = { name: 'kiam-token', mountPath: '/var/run/secrets/kiam/serviceaccount', readOnly: true };
const VOLUME = { name: 'kiam-token', projected: { sources: [{ serviceAccountToken: { audience: 'kiam', expirationSeconds: 86400, path: 'token' } }] } };

const request = (review: Obj): AdmissionRequest => parseAdmissionReview(review);

/** The response's patch, decoded, applied to the request's pod with every operation validated. */
function patched(review: Obj, result: AdmissionResult): Obj {
  const r = result.review.response;
  assert.equal(r.patchType, 'JSONPatch');
  const ops = JSON.parse(Buffer.from(r.patch!, 'base64').toString('utf8')) as jsonpatch.Operation[];
  assert.deepEqual(ops, result.patch, 'the base64 patch is the operations reported');
  assert.equal(jsonpatch.validate(ops, review.request.object), undefined, 'every operation applies to the pod as sent');
  return jsonpatch.applyPatch(structuredClone(review.request.object), ops, true, false).newDocument as Obj;
}

/** The response carries the request's uid, allows, and (when nothing changes) no patch at all. */
function assertUntouched(review: Obj, result: AdmissionResult): void {
  assert.deepEqual(result.review.apiVersion, 'admission.k8s.io/v1');
  assert.deepEqual(result.review.kind, 'AdmissionReview');
  assert.equal(result.review.response.uid, review.request.uid);
  assert.equal(result.review.response.allowed, true);
  assert.equal(result.review.response.patch, undefined);
  assert.equal(result.review.response.patchType, undefined);
  assert.deepEqual(result.patch, []);
}

describe('a Deployment-created pod with an init container, a role annotation and env of its own', () => {
  const review = fixture('deployment-pod');

  test('every container gets the two variables and the mount, the pod the projected token volume; nothing else', () => {
    const req = request(review);
    assert.equal(serviceAccountToLookUp(req), undefined, 'the pod names its role: no service account look-up');
    const result = admit(req, OPTIONS);
    assert.equal(result.outcome, 'mutated');
    assert.equal(result.roleSource, 'pod');
    assert.equal(result.review.response.uid, review.request.uid);
    assert.equal(result.review.response.allowed, true);
    assert.equal(result.review.response.warnings, undefined);

    const expected = structuredClone(review.request.object);
    expected.spec.initContainers[0].env = ENV; // had none
    expected.spec.initContainers[0].volumeMounts.push(MOUNT);
    expected.spec.containers[0].env.push(...ENV); // after its own three, which stay as they were
    expected.spec.containers[0].volumeMounts.push(MOUNT);
    expected.spec.volumes.push(VOLUME); // beside kube-api-access, which stays
    assert.deepEqual(patched(review, result), expected);
  });

  test('the operations: appends where the lists exist, a new list where they do not', () => {
    const result = admit(request(review), OPTIONS);
    assert.deepEqual(result.patch, [
      { op: 'add', path: '/spec/initContainers/0/env', value: ENV },
      { op: 'add', path: '/spec/initContainers/0/volumeMounts/-', value: MOUNT },
      { op: 'add', path: '/spec/containers/0/env/-', value: ENV[0] },
      { op: 'add', path: '/spec/containers/0/env/-', value: ENV[1] },
      { op: 'add', path: '/spec/containers/0/volumeMounts/-', value: MOUNT },
      { op: 'add', path: '/spec/volumes/-', value: VOLUME },
    ]);
  });

  test('re-admission of the mutated pod: no patch', () => {
    const once = structuredClone(review);
    once.request.object = patched(review, admit(request(review), OPTIONS));
    const again = admit(request(once), OPTIONS);
    assert.equal(again.outcome, 'unchanged');
    assertUntouched(once, again);
  });

  test('re-admission after the API server defaulted the volume (defaultMode 420): still no patch', () => {
    const stored = structuredClone(review);
    stored.request.object = patched(review, admit(request(review), OPTIONS));
    stored.request.object.spec.volumes.at(-1).projected.defaultMode = 420;
    const again = admit(request(stored), OPTIONS);
    assert.equal(again.outcome, 'unchanged');
    assertUntouched(stored, again);
  });

  test('re-admission after another webhook added a sidecar: the sidecar alone is wired, the volume is not added twice', () => {
    const once = structuredClone(review);
    once.request.object = patched(review, admit(request(review), OPTIONS));
    once.request.object.spec.containers.push({ name: 'proxy', image: 'registry.example.com/proxy:2.1', resources: {}, imagePullPolicy: 'IfNotPresent' });
    const result = admit(request(once), OPTIONS);
    assert.equal(result.outcome, 'mutated');
    const expected = structuredClone(once.request.object);
    expected.spec.containers[1].env = ENV;
    expected.spec.containers[1].volumeMounts = [MOUNT];
    assert.deepEqual(patched(once, result), expected);
  });

  test('a dry run gets the same patch as the real request (sideEffects None: the dry run shows what would be created)', () => {
    const dry = structuredClone(review);
    dry.request.dryRun = true;
    const real = admit(request(review), OPTIONS);
    const result = admit(request(dry), OPTIONS);
    assert.equal(result.outcome, 'mutated');
    assert.deepEqual(result.patch, real.patch);
    assert.deepEqual(patched(dry, result), patched(review, real));
  });

  test('--ipv6: the IPv6 endpoint', () => {
    const result = admit(request(review), { ...OPTIONS, ipv6: true });
    const pod = patched(review, result);
    for (const c of [...pod.spec.initContainers, ...pod.spec.containers]) {
      assert.deepEqual(c.env.find((e: Obj) => e.name === 'AWS_CONTAINER_CREDENTIALS_FULL_URI'), { name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://[fd00:ec2::23]/v1/credentials' });
    }
  });

  test('--token-audience: the projected token is issued for that audience', () => {
    const pod = patched(review, admit(request(review), { ...OPTIONS, audience: 'sts.kiam.example.com' }));
    assert.deepEqual(pod.spec.volumes.at(-1), { ...VOLUME, projected: { sources: [{ serviceAccountToken: { audience: 'sts.kiam.example.com', expirationSeconds: 86400, path: 'token' } }] } });
  });

  test('a pod without init containers, volumes or mounts gets new lists', () => {
    const bare = structuredClone(review);
    const pod = bare.request.object;
    delete pod.spec.initContainers;
    delete pod.spec.volumes;
    delete pod.spec.containers[0].volumeMounts;
    const expected = structuredClone(pod);
    expected.spec.containers[0].env.push(...ENV);
    expected.spec.containers[0].volumeMounts = [MOUNT];
    expected.spec.volumes = [VOLUME];
    assert.deepEqual(patched(bare, admit(request(bare), OPTIONS)), expected);
  });
});

describe('pods that already set the variables', () => {
  test('a container that sets either variable keeps its own env untouched; it still gets the mount', () => {
    const review = fixture('deployment-pod');
    const pod = review.request.object;
    pod.spec.containers[0].env.push({ name: 'AWS_CONTAINER_CREDENTIALS_FULL_URI', value: 'http://127.0.0.1:8080/creds' });
    pod.spec.initContainers[0].env = [{ name: 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', value: '/tokens/mine' }];
    const result = admit(request(review), OPTIONS);
    assert.equal(result.outcome, 'mutated');
    const expected = structuredClone(pod);
    expected.spec.initContainers[0].volumeMounts.push(MOUNT);
    expected.spec.containers[0].volumeMounts.push(MOUNT);
    expected.spec.volumes.push(VOLUME);
    assert.deepEqual(patched(review, result), expected);
  });

  test('a pod wired by hand (its own volume of that name, the variables, the mounts) gets no patch', () => {
    const review = fixture('kubectl-run-pod');
    const pod = review.request.object;
    pod.metadata.annotations = { 'iam.amazonaws.com/role': 'reporting-reader' };
    pod.spec.containers[0].env = ENV;
    pod.spec.containers[0].volumeMounts.push(MOUNT);
    pod.spec.volumes.push({ ...VOLUME, projected: { ...VOLUME.projected, defaultMode: 420 } });
    const result = admit(request(review), OPTIONS);
    assert.equal(result.outcome, 'unchanged');
    assertUntouched(review, result);
  });

  test('a container that already mounts something at the token directory keeps it (a second mount there would be refused)', () => {
    const review = fixture('kubectl-run-pod');
    const pod = review.request.object;
    pod.metadata.annotations = { 'iam.amazonaws.com/role': 'reporting-reader' };
    pod.spec.volumes.push({ name: 'my-token', emptyDir: {} });
    pod.spec.containers[0].volumeMounts.push({ name: 'my-token', mountPath: '/var/run/secrets/kiam/serviceaccount/' });
    const expected = structuredClone(pod);
    expected.spec.containers[0].env = ENV;
    assert.deepEqual(patched(review, admit(request(review), OPTIONS)), expected, 'the variables only: no mount, so no volume');
  });
});

describe('a volume name clash', () => {
  test('a pod with a volume named kiam-token of its own is left alone, with a warning', () => {
    const review = fixture('deployment-pod');
    review.request.object.spec.volumes.push({ name: 'kiam-token', secret: { secretName: 'kiam-api-token' } });
    const result = admit(request(review), OPTIONS);
    assert.equal(result.outcome, 'volume-clash');
    assertUntouched(review, result);
    assert.match(result.review.response.warnings?.[0] ?? '', /volume named kiam-token/);
  });

  test('also a projected token volume of that name for another audience', () => {
    const review = fixture('deployment-pod');
    review.request.object.spec.volumes.push({ name: 'kiam-token', projected: { sources: [{ serviceAccountToken: { audience: 'vault', path: 'token' } }] } });
    const result = admit(request(review), OPTIONS);
    assert.equal(result.outcome, 'volume-clash');
    assertUntouched(review, result);
  });
});

describe('the role from the service account', () => {
  const review = fixture('kubectl-run-pod');

  test('a pod without a role annotation: its service account is looked up (ServiceAccount admission has filled in default)', () => {
    assert.deepEqual(serviceAccountToLookUp(request(review)), { namespace: 'reporting', name: 'default' });
    const named = structuredClone(review);
    named.request.object.spec.serviceAccountName = 'report-reader';
    assert.deepEqual(serviceAccountToLookUp(request(named)), { namespace: 'reporting', name: 'report-reader' });
  });

  test('a service account without a role (or none at all): no patch', () => {
    const result = admit(request(review), OPTIONS, { role: undefined });
    assert.equal(result.outcome, 'no-role');
    assertUntouched(review, result);
    assert.equal(admit(request(review), OPTIONS, { role: '  ' }).outcome, 'no-role', 'a blank annotation is none');
  });

  test('a service account naming a role: the pod is wired', () => {
    const result = admit(request(review), OPTIONS, { role: 'reporting-reader' });
    assert.equal(result.outcome, 'mutated');
    assert.equal(result.roleSource, 'service-account');
    const expected = structuredClone(review.request.object);
    expected.spec.containers[0].env = ENV;
    expected.spec.containers[0].volumeMounts.push(MOUNT);
    expected.spec.volumes.push(VOLUME);
    assert.deepEqual(patched(review, result), expected);
  });

  test('a service account that could not be read: admitted untouched, with a warning', () => {
    const result = admit(request(review), OPTIONS, { error: 'GET serviceaccount reporting/default: HTTP 503' });
    assert.equal(result.outcome, 'service-account-unavailable');
    assertUntouched(review, result);
    assert.match(result.review.response.warnings?.[0] ?? '', /could not be read/);
    assert.doesNotMatch(result.review.response.warnings?.[0] ?? '', /503/, 'the detail goes to the log, not to the pod author');
  });
});

describe('pods that opt out, and requests that are not pod creations', () => {
  test('kiam.io/container-credentials: "false" on the pod: no patch, no look-up, whatever the role', () => {
    const review = fixture('deployment-pod');
    review.request.object.metadata.annotations['kiam.io/container-credentials'] = 'false';
    assert.equal(serviceAccountToLookUp(request(review)), undefined);
    const result = admit(request(review), OPTIONS, { role: 'reporting-writer' });
    assert.equal(result.outcome, 'opted-out');
    assertUntouched(review, result);
    const sa = fixture('kubectl-run-pod');
    sa.request.object.metadata.annotations = { 'kiam.io/container-credentials': 'false' };
    assert.equal(serviceAccountToLookUp(request(sa)), undefined, 'nor for a pod whose role would come from its service account');
  });

  test('a ConfigMap (even one carrying the role annotation) is allowed untouched', () => {
    const review = fixture('configmap');
    assert.equal(serviceAccountToLookUp(request(review)), undefined);
    const result = admit(request(review), OPTIONS);
    assert.equal(result.outcome, 'ignored');
    assertUntouched(review, result);
  });

  test('a pod UPDATE, a DELETE, and subresources (pods/ephemeralcontainers, the CREATE of a pods/eviction) are allowed untouched', () => {
    const base = fixture('deployment-pod');
    const update = structuredClone(base);
    update.request.operation = 'UPDATE';
    update.request.oldObject = structuredClone(update.request.object);
    const del = structuredClone(base);
    del.request.operation = 'DELETE';
    del.request.oldObject = del.request.object;
    del.request.object = null;
    const ephemeral = structuredClone(base);
    ephemeral.request.subResource = 'ephemeralcontainers';
    ephemeral.request.operation = 'UPDATE';
    // An eviction is a CREATE of the pods/eviction subresource.
    const eviction = structuredClone(base);
    eviction.request.subResource = 'eviction';
    eviction.request.kind = { group: 'policy', version: 'v1', kind: 'Eviction' };
    eviction.request.object = { apiVersion: 'policy/v1', kind: 'Eviction', metadata: { name: 'report-writer-7d9c6b5f4d-x2x9k', namespace: 'reporting' } };
    for (const review of [update, del, ephemeral, eviction]) {
      assert.equal(serviceAccountToLookUp(request(review)), undefined);
      const result = admit(request(review), OPTIONS, { role: 'r' });
      assert.equal(result.outcome, 'ignored', `${review.request.operation} ${review.request.subResource ?? ''}`);
      assertUntouched(review, result);
    }
  });
});

describe('the envelope', () => {
  test('not an AdmissionReview v1 with a request uid: refused (the server answers 400)', () => {
    const v1beta1 = { ...fixture('deployment-pod'), apiVersion: 'admission.k8s.io/v1beta1' };
    assert.throws(() => parseAdmissionReview(v1beta1), AdmissionReviewError);
    const noUid = fixture('deployment-pod');
    delete noUid.request.uid;
    assert.throws(() => parseAdmissionReview(noUid), /request\.uid/);
    assert.throws(() => parseAdmissionReview([]), AdmissionReviewError);
    assert.throws(() => parseAdmissionReview({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }), /request\.uid/);
  });
});
