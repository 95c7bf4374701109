/**
 * The server-side CPU cost of one new connection with and without the per-source limits of src/server/fairness.ts
 * (issue 9): the same node:http server answering a fixed 200, once plain (node's default options, as before the
 * limits) and once with SourceLimits' server options and connection listener, alternating, one client process
 * opening connections one after another (one GET each, Connection: close) on loopback.
 *
 *   node --import tsx bench/connection-cost.ts [--connections 4000] [--rounds 6]
 *
 * Prints the server's CPU time per connection (process.cpuUsage, user+system) of each round and the medians. On a
 * busy machine CPU time is noisy; instruction counts are not:
 *
 *   valgrind --tool=callgrind --callgrind-out-file=/dev/null node --import tsx bench/connection-cost.ts --serve limits --connections N
 *
 * runs one server of one kind for N connections (the client is another process, not counted); the difference of the
 * totals ("Collected") for two values of N, divided by their difference, is the instructions per connection.
 */
import { fork } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { systemClock } from '../src/clock.ts';
import { createMetrics } from '../src/metrics.ts';
import { DEFAULT_CLIENT_LIMITS, SourceLimits } from '../src/server/fairness.ts';

const CLIENT = process.argv[2] === '--client';

async function client(port: number, n: number): Promise<void> {
  const agent = new http.Agent({ keepAlive: false, maxSockets: 1 });
  for (let i = 0; i < n; i++) {
    await new Promise<void>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/', agent, headers: { connection: 'close' } }, (res) => {
        res.resume();
        res.on('end', resolve);
      }).on('error', reject);
    });
  }
}

async function round(kind: 'plain' | 'limits', n: number, clientExecPath = process.execPath): Promise<number> {
  const body = 'x'.repeat(300);
  const listener = (req: http.IncomingMessage, res: http.ServerResponse) => {
    // The agent reads every request's peer address (its warm path looks the pod up by it), so the plain server
    // does too: node caches it per socket, and the limits read the same cached value at accept.
    if (req.socket.remoteAddress === undefined) res.setHeader('x-no-peer', '1');
    res.writeHead(200, ['content-type', 'text/plain', 'content-length', String(body.length)]);
    res.end(body);
  };
  let server: http.Server;
  if (kind === 'plain') {
    server = http.createServer(listener);
  } else {
    const limits = new SourceLimits(DEFAULT_CLIENT_LIMITS, { clock: systemClock, metrics: createMetrics(), logger: pino({ level: 'silent' }) });
    server = http.createServer(limits.serverOptions(), (req, res) => {
      if (limits.admit(req, res)) listener(req, res);
    });
    limits.attach(server);
  }
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const child = fork(new URL(import.meta.url), ['--client', String(port), String(n)], { execArgv: ['--import', 'tsx'], execPath: clientExecPath });
  const ready = new Promise<void>((r) => child.once('message', () => r()));
  await ready;
  const before = process.cpuUsage();
  child.send('go');
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  const used = process.cpuUsage(before);
  await new Promise<void>((r) => server.close(() => r()));
  if (code !== 0) throw new Error(`client exited ${code}`);
  return (used.user + used.system) / n;
}

if (CLIENT) {
  const [port, n] = [Number(process.argv[3]), Number(process.argv[4])];
  process.send?.('ready');
  process.once('message', () => {
    client(port, n).then(() => process.exit(0), (err) => {
      console.error(err);
      process.exit(1);
    });
  });
} else {
  const { values } = parseArgs({ options: { connections: { type: 'string', default: '4000' }, rounds: { type: 'string', default: '6' }, serve: { type: 'string' }, 'client-node': { type: 'string' } } });
  const n = Number(values.connections);
  if (values.serve === 'plain' || values.serve === 'limits') {
    await round(values.serve, n, values['client-node']);
    process.exit(0);
  }
  const results: Record<'plain' | 'limits', number[]> = { plain: [], limits: [] };
  await round('plain', 500); // warm-up: JIT, both paths
  await round('limits', 500);
  for (let i = 0; i < Number(values.rounds); i++) {
    for (const kind of i % 2 === 0 ? (['plain', 'limits'] as const) : (['limits', 'plain'] as const)) {
      const us = await round(kind, n);
      results[kind].push(us);
      console.log(`round ${i + 1} ${kind.padEnd(6)} ${us.toFixed(1)} µs CPU/connection`);
    }
  }
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  console.log(`median: plain ${median(results.plain).toFixed(1)} µs, limits ${median(results.limits).toFixed(1)} µs per connection (${n} connections × ${values.rounds} rounds)`);
}
