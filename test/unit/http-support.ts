/**
 * Small HTTP helpers for the server tests that talk to a real listening socket (warm path, listenOn, fairness).
 */
import http from 'node:http';
import type { Metrics } from '../../src/metrics.ts';

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  /** Default false: a fresh connection per request. */
  agent?: http.Agent | false;
  /** Source address to bind (a second "pod" on loopback). */
  from?: string;
}

/** One request to host:port; resolves with the whole answer (body as UTF-8). */
export function request(host: string, port: number, path: string, options: RequestOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port, path, method: options.method ?? 'GET', headers: options.headers ?? {}, agent: options.agent ?? false, ...(options.from ? { localAddress: options.from } : {}) },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The headers a client sees, without the ones node adds by itself. */
export function own(headers: http.IncomingHttpHeaders | Record<string, unknown>): Record<string, unknown> {
  const { date: _d, connection: _c, 'keep-alive': _k, ...rest } = headers as Record<string, unknown>;
  return rest;
}

/** How many requests kiam_metadata_request_duration_seconds counted for handler and code. */
export async function observed(metrics: Metrics, handler: string, code: string): Promise<number> {
  const { values } = await metrics.requestDuration.get();
  return values.find((v) => v.metricName === 'kiam_metadata_request_duration_seconds_count' && v.labels.handler === handler && v.labels.code === code)?.value ?? 0;
}
