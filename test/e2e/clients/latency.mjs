// The well-behaved pod of test/e2e/fairness.test.ts: `samples` GETs of one path, one after another, each on a new
// connection (as an SDK's credential fetch opens one), one every `intervalMs` at most (so that the pod stays under
// the agent's request rate), after `warmup` unmeasured ones. Prints one JSON line:
// {"samples":n,"errors":k,"statuses":{…},"p50":ms,"p99":ms,"max":ms}; a request that fails or is not 200 is an error.
import http from 'node:http';
import { performance } from 'node:perf_hooks';

const { host, port, path, samples, warmup = 0, intervalMs = 0 } = JSON.parse(process.argv[2]);

let next = 0;
async function paced() {
  const wait = next - performance.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  next = performance.now() + intervalMs;
  return request();
}

function request() {
  return new Promise((resolve) => {
    const start = performance.now();
    const req = http.get({ host, port, path, agent: false, timeout: 5_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ ms: performance.now() - start, status: String(res.statusCode) }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ ms: performance.now() - start, status: err.code ?? err.message }));
  });
}

for (let i = 0; i < warmup; i++) await paced();
const times = [];
const statuses = {};
for (let i = 0; i < samples; i++) {
  const { ms, status } = await paced();
  times.push(ms);
  statuses[status] = (statuses[status] ?? 0) + 1;
}
times.sort((a, b) => a - b);
const at = (q) => times[Math.min(times.length - 1, Math.ceil(q * times.length) - 1)];
const errors = samples - (statuses['200'] ?? 0);
process.stdout.write(`${JSON.stringify({ samples, errors, statuses, p50: at(0.5), p99: at(0.99), max: times.at(-1) })}\n`);
