/**
 * The webhook's Kubernetes adapter: plain HTTPS requests authenticated by a client-node KubeConfig (as
 * src/resolver/kube.ts does for the agent), answering every status to the caller, which decides what 404 and
 * 409 mean. What it calls, all in deploy/webhook/base/rbac.yaml: GET serviceaccounts; GET, POST and PUT of
 * the one Secret; GET and PATCH of the one MutatingWebhookConfiguration.
 */
import http from 'node:http';
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';

export interface KubeResponse {
  status: number;
  /** The parsed JSON body (undefined when it was not JSON). */
  body: unknown;
}

export interface KubeJson {
  request(method: 'GET' | 'POST' | 'PUT' | 'PATCH', path: string, options?: { body?: unknown; contentType?: string; signal?: AbortSignal }): Promise<KubeResponse>;
}

/** The message of a Kubernetes Status body, else a short excerpt of it. */
export function statusMessage(r: KubeResponse): string {
  const b = r.body as { message?: unknown } | undefined;
  return typeof b?.message === 'string' ? b.message : `HTTP ${r.status}`;
}

const MAX_BODY = 16 * 1024 * 1024;

export function kubeJsonClient(kc: KubeConfig, timeoutMs = 10_000): KubeJson {
  return {
    async request(method, path, { body, contentType = 'application/json', signal } = {}) {
      const cluster = kc.getCurrentCluster();
      if (!cluster) throw new Error('kubeconfig has no current cluster');
      const url = new URL(cluster.server.replace(/\/+$/, '') + path);
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const headers: Record<string, string> = { Accept: 'application/json' };
      if (payload) Object.assign(headers, { 'Content-Type': contentType, 'Content-Length': String(payload.length) });
      const options: https.RequestOptions = { method, headers };
      await kc.applyToHTTPSOptions(options);
      options.signal = signal ? AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs);
      const transport = url.protocol === 'http:' ? http : https;
      return new Promise<KubeResponse>((resolve, reject) => {
        const req = transport.request(url, options, (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_BODY) req.destroy(new Error(`${method} ${url.pathname}: response over ${MAX_BODY} bytes`));
            else chunks.push(c);
          });
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = { message: text.slice(0, 200) };
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        });
        req.on('error', reject);
        req.end(payload);
      });
    },
  };
}
