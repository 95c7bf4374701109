/**
 * The baseline: a bare node:http server answering every request with the same bytes the agent sent for one
 * credential document (status, headers, body), captured from the agent first. Runs in the node namespace on the
 * agent's host IP and port, behind the same DNAT rule.
 *
 *   node --import tsx bench/baseline-server.ts --host 10.77.0.1 --port 8182 --document /tmp/…/doc.json
 *   (doc.json: {"status":200,"headers":[[name,value],…],"body":"<base64>"}) prints {"url":…,"pid":…}.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';
import { runStandalone } from '../test/fakes/standalone.ts';

/** Headers node:http writes itself (or that describe one particular connection), never copied. */
const OWN_HEADERS = new Set(['date', 'connection', 'keep-alive', 'transfer-encoding']);

export interface CapturedDocument {
  status: number;
  headers: [string, string][];
  body: string;
}

runStandalone('bench-baseline', import.meta.url, async (argv) => {
  const { values } = parseArgs({ args: argv, options: { host: { type: 'string' }, port: { type: 'string' }, document: { type: 'string' } }, strict: true });
  if (!values.host || !values.port || !values.document) throw new Error('--host, --port and --document are required');
  const doc = JSON.parse(readFileSync(values.document, 'utf8')) as CapturedDocument;
  const body = Buffer.from(doc.body, 'base64');
  const headers = doc.headers.filter(([k]) => !OWN_HEADERS.has(k.toLowerCase())).flat();
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(doc.status, headers);
    res.end(body);
  });
  // The agent's fastify keeps idle connections for 72 s; node's default of 5 s would not matter for a closed loop.
  server.keepAliveTimeout = 72_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(values.port), values.host, resolve);
  });
  return {
    announce: { url: `http://${values.host}:${values.port}`, pid: process.pid },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
});
