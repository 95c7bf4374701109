/**
 * The fake API server itself: the standalone process with the real kubectl, and wire details
 * (bookmarks, 410, field selectors, auth) the adapter tests rely on.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { FakeKubeApiServer, mergePatch, parseFieldSelector } from '../fakes/kube-apiserver.ts';

const run = promisify(execFile);
const hasKubectl = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0;
// Under CI nothing is skipped: a missing kubectl is a failure there.
const skipKubectl = !hasKubectl && process.env.CI !== 'true' ? 'kubectl is not installed' : false;

/** GET a path as a line stream (watch) or a whole body. */
function get(fake: FakeKubeApiServer, path: string, token = fake.token): Promise<{ status: number; lines: AsyncIterableIterator<string>; close: () => void }> {
  return new Promise((resolve, reject) => {
    const req = https.get(`${fake.url}${path}`, { ca: fake.caPem, headers: { Authorization: `Bearer ${token}` } }, (res) => {
      const rl = createInterface({ input: res });
      resolve({ status: res.statusCode ?? 0, lines: rl[Symbol.asyncIterator](), close: () => req.destroy() });
    });
    req.on('error', reject);
  });
}

async function next(lines: AsyncIterableIterator<string>): Promise<Record<string, any>> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const r = await lines.next();
  assert.equal(r.done, false, 'stream ended early');
  return JSON.parse(r.value as string);
}

describe('fake kube-apiserver: wire protocol', () => {
  let fake: FakeKubeApiServer;
  before(async () => {
    fake = await FakeKubeApiServer.start({ bookmarkIntervalMs: 0 });
    fake.createNamespace('w');
  });
  after(() => fake.close());

  it('rejects requests without a valid token', async () => {
    const r = await get(fake, '/api/v1/pods', 'nope');
    assert.equal(r.status, 401);
    r.close();
  });

  it('watch: initial ADDED for "any" version, selector-filtered MODIFIED/DELETED, bookmarks, resume, 410', async () => {
    fake.createPod({ metadata: { name: 'a', namespace: 'w' }, spec: { nodeName: 'n1' }, status: { podIP: '10.9.0.1' } });
    const w = await get(fake, '/api/v1/pods?watch=true&allowWatchBookmarks=true&fieldSelector=spec.nodeName%3Dn1');
    assert.equal(w.status, 200);
    const first = await next(w.lines);
    assert.equal(first.type, 'ADDED');
    assert.equal(first.object.metadata.name, 'a');
    fake.createPod({ metadata: { name: 'b', namespace: 'w' }, spec: { nodeName: 'n2' } });
    fake.patchPod('w', 'a', { status: { phase: 'Running' } });
    const mod = await next(w.lines);
    assert.deepEqual([mod.type, mod.object.metadata.name, mod.object.status.phase], ['MODIFIED', 'a', 'Running']);
    fake.patchPod('w', 'a', { spec: { nodeName: 'n2' } });
    const left = await next(w.lines);
    assert.deepEqual([left.type, left.object.metadata.name], ['DELETED', 'a'], 'leaving the selector is a DELETED');
    fake.sendBookmarks();
    const bm = await next(w.lines);
    assert.equal(bm.type, 'BOOKMARK');
    assert.equal(bm.object.metadata.resourceVersion, String(fake.resourceVersion));
    w.close();

    const rv = Number(mod.object.metadata.resourceVersion);
    const resumed = await get(fake, `/api/v1/pods?watch=1&resourceVersion=${rv}&fieldSelector=spec.nodeName%3Dn1`);
    const again = await next(resumed.lines);
    assert.deepEqual([again.type, again.object.metadata.name], ['DELETED', 'a'], 'resume replays what came after rv');
    resumed.close();

    fake.compact();
    const gone = await get(fake, `/api/v1/pods?watch=1&resourceVersion=${rv}`);
    const err = await next(gone.lines);
    assert.equal(err.type, 'ERROR');
    assert.equal(err.object.code, 410);
    assert.equal((await gone.lines.next()).done, true, 'the stream ends after 410');
    await fake.waitForWatches(0);
  });

  it('list: field selectors, comma-joined, and 400 for unsupported fields', () => {
    assert.deepEqual(parseFieldSelector('pods', 'spec.nodeName=n1,status.podIP==10.0.0.1,status.phase!=Failed'), [
      { field: 'spec.nodeName', value: 'n1', negate: false },
      { field: 'status.podIP', value: '10.0.0.1', negate: false },
      { field: 'status.phase', value: 'Failed', negate: true },
    ]);
    assert.throws(() => parseFieldSelector('pods', 'spec.bogus=1'), /field label not supported/);
    assert.throws(() => parseFieldSelector('namespaces', 'spec.nodeName=x'), /not supported/);
  });

  it('pods carry podIPs as the API stores them (podIP authoritative, the first of podIPs); status.podIP selects the primary only', async () => {
    const dual = fake.createPod({ metadata: { name: 'dual', namespace: 'w' }, spec: { nodeName: 'n1' }, status: { podIP: '10.9.1.1', podIPs: [{ ip: '10.9.1.1' }, { ip: 'fd00:9:1::1' }] } });
    assert.deepEqual(dual.status.podIPs, [{ ip: '10.9.1.1' }, { ip: 'fd00:9:1::1' }]);
    const single = fake.createPod({ metadata: { name: 'single', namespace: 'w' }, spec: { nodeName: 'n1' }, status: { podIP: '10.9.1.2' } });
    assert.deepEqual(single.status.podIPs, [{ ip: '10.9.1.2' }], 'podIP alone fills podIPs');
    const listOnly = fake.createPod({ metadata: { name: 'list-only', namespace: 'w' }, spec: { nodeName: 'n1' }, status: { podIPs: [{ ip: 'fd00:9:1::3' }, { ip: '10.9.1.3' }] } });
    assert.equal(listOnly.status.podIP, 'fd00:9:1::3', 'podIPs alone sets podIP to its first entry');
    const clash = fake.createPod({ metadata: { name: 'clash', namespace: 'w' }, spec: { nodeName: 'n1' }, status: { podIP: '10.9.1.4', podIPs: [{ ip: '10.9.1.40' }, { ip: 'fd00:9:1::4' }] } });
    assert.deepEqual(clash.status.podIPs, [{ ip: '10.9.1.4' }], 'a podIPs that disagrees with podIP gives way');
    const patched = fake.patchPod('w', 'single', { status: { podIPs: [{ ip: '10.9.1.2' }, { ip: 'fd00:9:1::2' }] } });
    assert.deepEqual(patched.status.podIPs, [{ ip: '10.9.1.2' }, { ip: 'fd00:9:1::2' }]);

    const names = async (selector: string) => {
      const r = await get(fake, `/api/v1/pods?fieldSelector=${encodeURIComponent(selector)}`);
      const body = JSON.parse((await r.lines.next()).value as string) as { items: Array<{ metadata: { name: string } }> };
      r.close();
      return body.items.map((i) => i.metadata.name).sort();
    };
    assert.deepEqual(await names('status.podIP=10.9.1.1'), ['dual']);
    assert.deepEqual(await names('status.podIP=fd00:9:1::1'), [], 'a secondary IP is not selectable');
    assert.deepEqual(await names('status.podIP=fd00:9:1::3'), ['list-only']);
    assert.deepEqual(await names('spec.nodeName=n1,status.podIP=10.9.1.2'), ['single']);
    for (const name of ['dual', 'single', 'list-only', 'clash']) fake.deletePod('w', name);
  });

  it('merge patch follows RFC 7386', () => {
    assert.deepEqual(mergePatch({ a: { b: 1, c: 2 }, d: [1] }, { a: { b: null, e: 3 }, d: [2] }), { a: { c: 2, e: 3 }, d: [2] });
  });

  it('counts objects and bytes per client', async () => {
    const token = fake.addClient('bench-1');
    fake.clearLog();
    const r = await get(fake, '/api/v1/namespaces', token);
    const body = JSON.parse((await r.lines.next()).value as string);
    const stats = fake.stats()['bench-1']!;
    assert.equal(stats.requests, 1);
    assert.equal(stats.lists, 1);
    assert.equal(stats.objects, body.items.length);
    assert.ok(stats.bytes > 0);
  });
});

describe('fake kube-apiserver: standalone process with kubectl', { skip: skipKubectl }, () => {
  let dir: string;
  let child: ChildProcess;
  let info: { url: string; kubeconfig: string; token: string; pid: number };
  let exited: Promise<number | null>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fake-kube-standalone-'));
    const kubeconfig = join(dir, 'kubeconfig');
    child = spawn(process.execPath, ['--import', 'tsx', 'test/fakes/kube-apiserver.ts', '--host', '127.0.0.1', '--port', '0', '--kubeconfig-out', kubeconfig], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    const line = await createInterface({ input: child.stdout! })[Symbol.asyncIterator]().next();
    info = JSON.parse(line.value as string);
  });

  after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  });

  const kubectl = (...args: string[]) => run('kubectl', ['--kubeconfig', info.kubeconfig, ...args], { env: { ...process.env, HOME: dir } });

  it('prints its URL and writes a kubeconfig with the CA and a token', async () => {
    assert.match(info.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(info.pid, child.pid);
    const kc = await readFile(info.kubeconfig, 'utf8');
    assert.match(kc, /certificate-authority-data: /);
    assert.match(kc, new RegExp(`token: ${info.token}`));
  });

  it('kubectl creates, annotates, lists and deletes namespaces and pods', async () => {
    assert.match((await kubectl('create', 'namespace', 'team')).stdout, /namespace\/team created/);
    await kubectl('annotate', 'namespace', 'team', 'iam.amazonaws.com/permitted=.*');
    assert.match((await kubectl('run', '-n', 'team', 'runner', '--image=busybox')).stdout, /pod\/runner created/);
    const manifest = join(dir, 'pod.json');
    await writeFile(
      manifest,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'web', namespace: 'team', annotations: { 'iam.amazonaws.com/role': 'reader' } },
        spec: { nodeName: 'node-a', containers: [{ name: 'c', image: 'busybox' }] },
        status: { phase: 'Running', podIP: '10.7.0.1' },
      }),
    );
    assert.match((await kubectl('create', '-f', manifest)).stdout, /pod\/web created/);
    const all = (await kubectl('get', 'pods', '-A', '-o', 'wide')).stdout;
    assert.match(all, /team\s+runner\s+Pending/);
    assert.match(all, /team\s+web\s+Running\s+10\.7\.0\.1\s+node-a\s+reader/);
    await kubectl('annotate', 'pod', '-n', 'team', 'web', 'iam.amazonaws.com/role=writer', '--overwrite');
    assert.equal((await kubectl('get', 'pod', '-n', 'team', 'web', '-o', 'jsonpath={.metadata.annotations.iam\\.amazonaws\\.com/role}')).stdout, 'writer');
    assert.match((await kubectl('get', 'pods', '-A', '--field-selector', 'status.podIP=10.7.0.1')).stdout, /web/);
    assert.match((await kubectl('delete', 'pod', '-n', 'team', 'web')).stdout, /pod "web" deleted/);
    assert.doesNotMatch((await kubectl('get', 'pods', '-A')).stdout, /\bweb\b/);
    assert.match((await kubectl('get', 'namespaces')).stdout, /team\s+Active/);
  });

  it('exits 0 on SIGTERM', async () => {
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
  });
});
