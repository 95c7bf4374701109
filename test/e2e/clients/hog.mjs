// The misbehaving pod of test/e2e/fairness.test.ts: tries to hold `connections` connections to the metadata
// service, each sending the start of a request and then one more header byte every `dribbleMs` (never a whole
// request), and opens a new one `reopenMs` (±50 %) after the agent closes one. Prints {"steady":true,…} once every
// connection has been tried and a second has passed, and {"final":true,…} on SIGTERM, then exits 0.
import net from 'node:net';

const { host, port, connections, dribbleMs, reopenMs } = JSON.parse(process.argv[2]);
const stats = { attempts: 0, connected: 0, refused429: 0, timedOut408: 0, otherAnswers: 0, errors: 0, peakOpen: 0 };
const live = new Set();
let stopping = false;

function open() {
  stats.attempts++;
  const socket = net.connect({ host, port });
  let answered = false;
  socket.on('connect', () => {
    stats.connected++;
    live.add(socket);
    stats.peakOpen = Math.max(stats.peakOpen, live.size);
    socket.write('GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Slow: ');
  });
  socket.on('data', (d) => {
    if (answered) return;
    answered = true;
    const head = d.toString('latin1', 0, 12);
    if (head === 'HTTP/1.1 429') stats.refused429++;
    else if (head === 'HTTP/1.1 408') stats.timedOut408++;
    else stats.otherAnswers++;
  });
  socket.on('error', () => stats.errors++);
  socket.on('close', () => {
    live.delete(socket);
    if (!stopping) setTimeout(open, reopenMs * (0.5 + Math.random()));
  });
}

// In batches, so that the listen backlog is not what turns them away.
let started = 0;
const opener = setInterval(() => {
  for (let i = 0; i < 100 && started < connections; i++, started++) open();
  if (started < connections) return;
  clearInterval(opener);
  setTimeout(() => process.stdout.write(`${JSON.stringify({ steady: true, ...stats, open: live.size })}\n`), 1_000);
}, 20);
const drip = setInterval(() => {
  for (const s of live) if (s.writable) s.write('a');
}, dribbleMs);

process.on('SIGTERM', () => {
  stopping = true;
  clearInterval(opener);
  clearInterval(drip);
  process.stdout.write(`${JSON.stringify({ final: true, ...stats, open: live.size })}\n`);
  for (const s of live) s.destroy();
  process.exit(0);
});
