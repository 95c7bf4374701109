/**
 * The benchmark's fake cluster: test/fakes' FakeKubeApiServer (HTTPS, list/watch, per-client request log) in a
 * process of its own inside the node namespace, plus a control API on a Unix socket for what kubectl would be far
 * too slow for — creating 20,000 pods, patching 1,000 — and for counting what each client received.
 *
 *   node --import tsx bench/cluster.ts --host 127.0.0.1 --port 0 --control /tmp/…/cluster.sock [--bookmark-interval-ms N]
 *   prints {"url":…,"control":…,"pid":…} once listening; exits 0 on SIGTERM/SIGINT.
 *
 * Control (HTTP over the Unix socket, JSON bodies; a Unix socket is reachable from every network namespace):
 *   POST /namespaces      [{name, annotations?}]           create (existing ones are left alone)
 *   POST /pods            [BenchPod]                       create            → {created, uids}
 *   POST /pods/patch      [{namespace, name, patch}]       merge patches     → {patched}
 *   POST /pods/delete     [{namespace, name}]              delete            → {deleted}
 *   POST /clients         {name}                           a client token    → {token, kubeconfig}
 *   POST /tokens          [{namespace, pod, audience?, expirationSeconds?}]
 *                                                          service-account tokens bound to those pods (what the
 *                                                          kubelet's TokenRequest for a projected volume gets)
 *                                                          → {tokens}
 *   GET  /token-reviews                                    TokenReviews answered so far → {count}
 *   POST /cluster-watch   {name}                           list + watch all pods and namespaces as `name`,
 *                                                          answers once both watches are open
 *   GET  /stats                                            {client: {pods|namespaces|other: ClientCounts}}
 */
import { createServer, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { FakeKubeApiServer, type RequestLogEntry } from '../test/fakes/kube-apiserver.ts';
import { runStandalone } from '../test/fakes/standalone.ts';
import { podObject, type BenchPod } from './lib/pods.ts';

export interface ClientCounts {
  requests: number;
  lists: number;
  watches: number;
  objects: number;
  bytes: number;
}

export type ClusterStats = Record<string, Record<'pods' | 'namespaces' | 'other', ClientCounts>>;

/** Sums a request log per client and per resource (pods, namespaces, anything else). */
export function statsOf(log: readonly RequestLogEntry[]): ClusterStats {
  const out: ClusterStats = {};
  for (const r of log) {
    const resource = /\/pods(\/|$)/.test(r.path) ? 'pods' : /\/namespaces(\/[^/]+)?$/.test(r.path) ? 'namespaces' : 'other';
    const zero = () => ({ requests: 0, lists: 0, watches: 0, objects: 0, bytes: 0 });
    const c = ((out[r.client] ??= { pods: zero(), namespaces: zero(), other: zero() })[resource]);
    c.requests++;
    if (r.watch) c.watches++;
    else if (r.method === 'GET' && /\/(pods|namespaces)$/.test(r.path)) c.lists++;
    c.objects += r.objects;
    c.bytes += r.bytes;
  }
  return out;
}

/** The control API (exported for its unit test). */
export class Cluster {
  private readonly watchers: ClientRequest[] = [];
  constructor(private readonly kube: FakeKubeApiServer) {}

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = chunks.length ? (JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown) : undefined;
    const key = `${req.method} ${req.url}`;
    const list = () => {
      if (!Array.isArray(body)) throw new Error(`${key}: body must be a JSON array`);
      return body as Record<string, any>[]; // eslint-disable-line @typescript-eslint/no-explicit-any
    };
    let answer: unknown;
    switch (key) {
      case 'POST /namespaces': {
        for (const n of list()) {
          try {
            this.kube.createNamespace(n.name, n.annotations);
          } catch (err) {
            if (!/already exists/.test((err as Error).message)) throw err;
          }
        }
        answer = { ok: true };
        break;
      }
      case 'POST /pods': {
        const uids = list().map((p) => this.kube.createPod(podObject(p as BenchPod)).metadata.uid as string);
        answer = { created: uids.length, uids };
        break;
      }
      case 'POST /pods/patch':
        for (const p of list()) this.kube.patchPod(p.namespace, p.name, p.patch);
        answer = { patched: list().length };
        break;
      case 'POST /pods/delete':
        for (const p of list()) this.kube.deletePod(p.namespace, p.name);
        answer = { deleted: list().length };
        break;
      case 'POST /clients': {
        const name = (body as { name?: unknown } | undefined)?.name;
        if (typeof name !== 'string' || !/^[\w.-]+$/.test(name)) throw new Error('POST /clients: {name} required');
        const token = this.kube.addClient(name);
        answer = { token, kubeconfig: this.kube.kubeconfig(token) };
        break;
      }
      case 'POST /tokens':
        answer = {
          tokens: list().map((t) =>
            this.kube.issueToken({
              namespace: String(t.namespace),
              pod: String(t.pod),
              ...(typeof t.audience === 'string' ? { audience: t.audience } : {}),
              ...(typeof t.expirationSeconds === 'number' ? { expirationSeconds: t.expirationSeconds } : {}),
            }),
          ),
        };
        break;
      case 'GET /token-reviews':
        answer = { count: this.kube.tokenReviews };
        break;
      case 'POST /cluster-watch': {
        const name = (body as { name?: unknown } | undefined)?.name;
        if (typeof name !== 'string' || !/^[\w.-]+$/.test(name)) throw new Error('POST /cluster-watch: {name} required');
        const token = this.kube.addClient(name);
        await Promise.all([this.listWatch('pods', token), this.listWatch('namespaces', token)]);
        answer = { ok: true };
        break;
      }
      case 'GET /stats':
        answer = statsOf(this.kube.requests);
        break;
      default:
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no control ${key}` }));
        return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
  }

  /** A cluster-wide informer's traffic: list everything, then watch from the list's resourceVersion. */
  private async listWatch(resource: 'pods' | 'namespaces', token: string): Promise<void> {
    const get = (path: string) =>
      new Promise<IncomingMessage>((resolve, reject) => {
        const req = https.get(`${this.kube.url}${path}`, { ca: this.kube.caPem, headers: { authorization: `Bearer ${token}` } }, resolve);
        req.on('error', reject);
        this.watchers.push(req);
      });
    const listRes = await get(`/api/v1/${resource}`);
    const chunks: Buffer[] = [];
    for await (const c of listRes) chunks.push(c as Buffer);
    const rv = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
    const watchRes = await get(`/api/v1/${resource}?watch=true&allowWatchBookmarks=true&resourceVersion=${rv}`);
    watchRes.on('data', () => {}); // received and dropped, as an informer with nothing to do would
    watchRes.on('error', () => {});
  }

  close(): void {
    for (const w of this.watchers) w.destroy();
  }
}

runStandalone('bench-cluster', import.meta.url, async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      control: { type: 'string' },
      'bookmark-interval-ms': { type: 'string', default: '10000' },
    },
    strict: true,
  });
  if (!values.control) throw new Error('--control <unix socket path> is required');
  const controlPath = values.control;
  const kube = await FakeKubeApiServer.start({
    host: values.host,
    port: Number(values.port),
    bookmarkIntervalMs: Number(values['bookmark-interval-ms']),
    historyLimit: 50_000,
  });
  const cluster = new Cluster(kube);
  rmSync(controlPath, { force: true });
  const control = createServer((req, res) => {
    cluster.handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: err instanceof Error ? err.message : String(err) }));
    });
  });
  await new Promise<void>((resolve, reject) => {
    control.once('error', reject);
    control.listen(controlPath, resolve);
  });
  return {
    announce: { url: kube.url, control: controlPath, pid: process.pid },
    close: async () => {
      cluster.close();
      control.close();
      control.closeAllConnections();
      rmSync(controlPath, { force: true });
      await kube.close();
    },
  };
});
