import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BUCKETS, Histogram, bucketOf, bucketRange } from '../../bench/lib/histogram.ts';
import { ProtocolError, ResponseParser, headerPairs, parseHead, type Response } from '../../bench/lib/http-response.ts';
import { parseStat, parseStatus } from '../../bench/lib/procfs.ts';
import { statsOf } from '../../bench/cluster.ts';

describe('bench histogram', () => {
  it('is exact below 256 and within 1/128 above, over the whole range', () => {
    for (const v of [0, 1, 255]) assert.deepEqual(bucketRange(bucketOf(v)), [v, v]);
    for (const v of [256, 257, 1000, 12_345, 999_999, 2 ** 31 + 5, 2 ** 32 - 1]) {
      const [lo, hi] = bucketRange(bucketOf(v));
      assert.ok(lo <= v && v <= hi, `${v} in [${lo}, ${hi}]`);
      assert.ok((hi - lo + 1) / lo <= 1 / 128, `bucket of ${v} is ${hi - lo + 1} wide`);
    }
    assert.equal(bucketOf(2 ** 40), BUCKETS - 1);
    assert.equal(bucketOf(-5), 0);
    // buckets tile the range without gaps
    for (let i = 1; i < BUCKETS; i++) assert.equal(bucketRange(i)[0], bucketRange(i - 1)[1] + 1);
  });

  it('gives percentiles by rank, capped at the largest value', () => {
    const h = new Histogram();
    for (let v = 1; v <= 100; v++) h.record(v);
    assert.equal(h.percentile(50), 50);
    assert.equal(h.percentile(99), 99);
    assert.equal(h.percentile(100), 100);
    assert.equal(h.mean, 50.5);
    const big = new Histogram();
    for (let i = 0; i < 999; i++) big.record(100);
    big.record(50_000);
    assert.equal(big.percentile(99.9), 100);
    assert.equal(big.percentile(100), 50_000);
    assert.ok(Number.isNaN(new Histogram().percentile(50)));
    assert.throws(() => h.percentile(0), RangeError);
  });

  it('merges two generators exactly and round-trips through JSON', () => {
    const a = new Histogram();
    const b = new Histogram();
    for (let i = 0; i < 900; i++) a.record(200);
    for (let i = 0; i < 100; i++) b.record(20_000);
    const m = Histogram.fromJSON(JSON.parse(JSON.stringify(a.toJSON())) as never).merge(Histogram.fromJSON(b.toJSON()));
    assert.equal(m.count, 1000);
    assert.equal(m.percentile(90), 200);
    const p99 = m.percentile(99);
    assert.ok(p99 >= 20_000 && p99 <= 20_000 * (1 + 1 / 128), String(p99));
    assert.equal(m.min, 200);
    assert.equal(m.max, 20_000);
    assert.throws(() => Histogram.fromJSON({ buckets: [[1, 2]], count: 3, sum: 0, min: 0, max: 0 }), /count says 3/);
  });
});

describe('bench HTTP response parser', () => {
  const resp = (status: number, body: string, extra = '') => `HTTP/1.1 ${status} X\r\ncontent-type: text/plain\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

  it('parses pipelined responses split at every byte', () => {
    const wire = Buffer.from(resp(200, '{"Code":"Success"}') + resp(404, 'nope', 'Connection: close\r\n') + resp(204, '').replace('Content-Length: 0\r\n', ''));
    for (const step of [1, 3, 7, wire.length]) {
      const got: Response[] = [];
      const p = new ResponseParser(true);
      for (let i = 0; i < wire.length; i += step) p.push(wire.subarray(i, i + step), (r) => got.push(r));
      assert.deepEqual(got.map((r) => [r.status, r.length, r.close, r.body?.toString()]), [
        [200, 18, false, '{"Code":"Success"}'],
        [404, 4, true, 'nope'],
        [204, 0, false, ''],
      ]);
      assert.ok(p.idle);
    }
  });

  it('refuses what it cannot frame', () => {
    const p = new ResponseParser();
    assert.throws(() => p.push(Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), () => {}), ProtocolError);
    assert.throws(() => parseHead('HTTP/1.1 200 OK\r\nContent-Type: text/plain'), /without Content-Length/);
    assert.throws(() => parseHead('SSH-2.0-OpenSSH'), /not an HTTP/);
    assert.throws(() => new ResponseParser().push(Buffer.alloc(20_000, 'a'), () => {}), /longer than/);
    assert.deepEqual(headerPairs('HTTP/1.1 200 OK\r\nServer: EC2ws\r\nX-A:  b '), [['Server', 'EC2ws'], ['X-A', 'b']]);
  });
});

describe('bench /proc parsing', () => {
  it('reads CPU ticks after the last parenthesis and memory in bytes', () => {
    const stat = '1234 (node (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 11 0 999 1000000 5000 18446744073709551615';
    assert.deepEqual(parseStat(stat), { self: 300, children: 10 });
    assert.throws(() => parseStat('garbage'), /no "\)"/);
    assert.deepEqual(parseStatus('Name:\tnode\nVmHWM:\t   81920 kB\nVmRSS:\t   65536 kB\n'), { rss: 65536 * 1024, hwm: 81920 * 1024 });
    assert.throws(() => parseStatus('Name: x\n'), /no VmRSS/);
  });
});

describe('bench API stats', () => {
  it('sums objects and bytes per client and resource', () => {
    const e = (client: string, path: string, watch: boolean, objects: number, bytes: number) => ({ time: 0, client, method: 'GET', path, query: '', status: 200, watch, objects, bytes });
    const s = statsOf([e('agent', '/api/v1/pods', false, 110, 1000), e('agent', '/api/v1/pods', true, 5, 50), e('agent', '/api/v1/namespaces', false, 3, 30), e('all', '/api/v1/pods', false, 20_000, 9_000), e('agent', '/api/v1/namespaces/a/pods/b', false, 1, 9)]);
    assert.deepEqual(s.agent!.pods, { requests: 3, lists: 1, watches: 1, objects: 116, bytes: 1059 });
    assert.deepEqual(s.agent!.namespaces, { requests: 1, lists: 1, watches: 0, objects: 3, bytes: 30 });
    assert.equal(s.all!.pods.objects, 20_000);
  });
});
