import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_PATHS, ebpfRedirects, interceptArgs, parsePaths, usesEbpf } from '../../bench/lib/intercept.ts';
import { comparePaths, generatorCpuUsPerReq, headline, markdown, medianRuns, pathOf, targets, type Sections } from '../../bench/report.ts';
import type { FirstVariant } from '../../bench/first.ts';
import type { WarmRun } from '../../bench/warm.ts';

const place = { cgroupPath: '/tmp/kiam-e2e-x/cgroup2/kiambench-pods', bpffsPath: '/tmp/kiam-e2e-x/bpffs' };

describe('bench interception paths', () => {
  it('parses --intercept lists, in the order given, and refuses unknown or repeated names', () => {
    assert.deepEqual(parsePaths('iptables,ebpf'), ['iptables', 'ebpf']);
    assert.deepEqual(parsePaths(' ebpf , auto '), ['ebpf', 'auto']);
    assert.deepEqual(DEFAULT_PATHS, ['iptables', 'ebpf']);
    assert.throws(() => parsePaths('nft'), /unknown path "nft"/);
    assert.throws(() => parsePaths('ebpf,ebpf'), /given twice/);
    assert.throws(() => parsePaths(' , '), /no path given/);
  });

  it('gives the agent and `kiam intercept` the flags of each path, eBPF only in the sandbox cgroup', () => {
    assert.deepEqual(interceptArgs('none', place), ['--intercept', 'none']);
    assert.deepEqual(interceptArgs('iptables', place), ['--intercept', 'iptables', '--host-interface', 'cali+']);
    assert.deepEqual(interceptArgs('ebpf', place), ['--intercept', 'ebpf', '--cgroup-root', place.cgroupPath, '--bpffs', place.bpffsPath]);
    assert.deepEqual(interceptArgs('auto', place), ['--intercept', 'auto', '--host-interface', 'cali+', '--cgroup-root', place.cgroupPath, '--bpffs', place.bpffsPath]);
    // Without the sandbox's child cgroup there is nowhere the bench may attach: never a default such as /sys/fs/cgroup.
    assert.throws(() => interceptArgs('ebpf', { cgroupPath: undefined, bpffsPath: '/x' }), /child cgroup/);
    assert.throws(() => interceptArgs('auto', { cgroupPath: undefined, bpffsPath: '/x' }), /child cgroup/);
    assert.deepEqual(interceptArgs('iptables', { cgroupPath: undefined, bpffsPath: '/x' }), ['--intercept', 'iptables', '--host-interface', 'cali+']);
    assert.deepEqual([usesEbpf('iptables'), usesEbpf('ebpf'), usesEbpf('auto')], [false, true, true]);
  });

  it('counts the connects the program rewrote from `kiam intercept status --json`', () => {
    const status = { mode: 'ebpf', ebpf: { active: true, stats: { redirect4: 10, redirect6: 2, redirect6Mapped: '3', hostSkipped: 99 } } };
    assert.equal(ebpfRedirects(status), 15, 'host-namespace skips are not redirects');
    assert.equal(ebpfRedirects({ ebpf: { active: true, stats: null } }), 0);
    assert.equal(ebpfRedirects({ ebpf: { active: false, reason: 'x' } }), 0);
    assert.equal(ebpfRedirects(null), 0);
  });
});

describe('bench report with two interception paths', () => {
  const run = (path: WarmRun['path'], server: WarmRun['server'], mode: WarmRun['mode'], connections: number, rps: number, p99: number, cpu: number, genPct = 50): WarmRun => ({
    ...(path ? { path } : {}), server, mode, connections, rps, p99_ms: p99, server_cpu_us_per_req: cpu,
    requests: rps * 10, ok: rps * 10, errors: 0, errorDetail: { status: {}, net: {}, protocol: 0 }, p50_ms: 0, p999_ms: 0, mean_ms: 0, max_ms: 0, byKind: {}, windowS: 10,
    generators: [{ slots: 1, requests: rps * 5, cpu_pct: genPct, late_ms: -1000, connections: 1 }, { slots: 1, requests: rps * 5, cpu_pct: genPct, late_ms: -1000, connections: 1 }],
  });
  const warm = (): Sections['warm'] => ({
    document_bytes: 332,
    document_headers: [],
    runs: [
      run('iptables', 'agent', 'keep-alive', 1, 8000, 0.3, 80),
      run('iptables', 'agent', 'keep-alive', 64, 30000, 5, 33),
      run('iptables', 'baseline', 'keep-alive', 64, 29000, 5, 34),
      run('ebpf', 'agent', 'keep-alive', 1, 8100, 0.6, 78),
      run('ebpf', 'agent', 'keep-alive', 64, 20000, 9, 36),
      run('ebpf', 'baseline', 'keep-alive', 64, 31000, 4, 32),
      { ...run('iptables', 'agent', 'new-connection', 64, 8000, 14, 100, 50), conntrack_entries: 160_000 },
      { ...run('ebpf', 'agent', 'new-connection', 64, 10000, 12, 80, 50), conntrack_entries: 0 },
    ],
  });

  it('reads runs recorded before the eBPF path as DNAT runs', () => {
    assert.equal(pathOf({}), 'iptables');
    assert.equal(pathOf({ path: 'ebpf' }), 'ebpf');
    const old: Sections = { warm: { document_bytes: 1, document_headers: [], runs: [run(undefined, 'agent', 'keep-alive', 64, 9000, 3, 40), run(undefined, 'baseline', 'keep-alive', 64, 10000, 2.5, 30)] } };
    assert.equal((headline(old).warm as Record<string, number>).ratio, 0.9);
    assert.equal(headline(old).warm_ebpf, undefined);
  });

  it('judges each path against the baseline of its own path, and says which path a target is about', () => {
    const s: Sections = { warm: warm() };
    const h = headline(s);
    assert.equal((h.warm as Record<string, number>).agent_rps, 30000);
    assert.equal((h.warm_ebpf as Record<string, number>).agent_rps, 20000);
    assert.equal((h.warm_ebpf as Record<string, number>).baseline_rps, 31000);
    const t = targets(s);
    const byName = Object.fromEntries(t.map((x) => [x.what, x.pass]));
    assert.equal(byName['warm req/s vs baseline, 64 conn keep-alive, DNAT'], true);
    assert.equal(byName['warm req/s vs baseline, 64 conn keep-alive, eBPF'], false, '20000 / 31000 < 0.75');
    assert.equal(byName['warm p99 vs baseline p99, 64 conn keep-alive, eBPF'], false, '9 / 4 > 1.5');
    assert.equal(byName['warm p99, 1 connection keep-alive, eBPF'], false);
    assert.equal(byName['warm p99, 1 connection keep-alive, DNAT'], true);
    assert.equal(t.filter((x) => x.what.startsWith('warm: non-200')).length, 1, 'one error target over all paths');
  });

  it('compares each eBPF run with the DNAT run of the same variant, generator CPU included', () => {
    const w = warm()!;
    const rows = comparePaths(w, 'ebpf');
    assert.deepEqual(rows.map((r) => `${r.mode}/${r.connections}/${r.server}`), ['keep-alive/1/agent', 'keep-alive/64/agent', 'keep-alive/64/baseline', 'new-connection/64/agent']);
    const nc = rows.find((r) => r.mode === 'new-connection')!;
    assert.equal(nc.rps_ratio, 1.25);
    assert.equal(nc.server_cpu_ratio, 0.8);
    // Two generators at 50 % of a core for 10 s = 10 s of CPU over 80,000 vs 100,000 requests.
    assert.equal(generatorCpuUsPerReq(nc.dnat), 125);
    assert.equal(generatorCpuUsPerReq(nc.other), 100);
    assert.equal(nc.generator_cpu_ratio, 0.8);
    assert.ok(Number.isNaN(generatorCpuUsPerReq({ generators: [], windowS: 1, requests: 0 })));
    assert.deepEqual(comparePaths(w, 'iptables'), []);
    assert.deepEqual(comparePaths(w, 'auto'), []);
  });

  it('prints a path column, the eBPF-against-DNAT table and the first credential per path', () => {
    const variant = (path: FirstVariant['path'], p99: number): FirstVariant => ({ ...(path ? { path } : {}), delay_ms: 1000, pods: 2, ok: 2, p50_ms: 5, p99_ms: p99, max_ms: p99, samples: [] });
    const s: Sections = { warm: warm(), first: { sts_delay_ms: 500, variants: [variant('iptables', 16), variant('ebpf', 25)] } };
    const meta = { date: 'd', quick: false, intercept: ['iptables', 'ebpf'], machine: { cpus: 2, cpu_model: 'x', node: '20', kernel: 'k', commit: 'c', dirty_files: 0, loadavg_start: [0, 0, 0] }, agent_log_level: 'info', command: 'c' };
    const md = markdown(s, meta);
    assert.match(md, /interception paths: DNAT, eBPF/);
    assert.match(md, /\| keep-alive \| 64 \| eBPF \| agent \| 20000 \| 0\.65 \|/);
    assert.match(md, /### eBPF against the DNAT/);
    assert.match(md, /\| new-connection \| 64 \| agent \| 8000 → 10000 \| 1\.25 \|/);
    assert.match(md, /\| new-connection \| 64 \| agent \| 8000 → 10000 \| 1\.25 \|.* \| 160000 → 0 \|\n/, 'the conntrack entries each path left in the node');
    assert.match(md, /\| keep-alive \| 64 \| agent \| 30000 → 20000 \|.* \| — → — \|\n/, 'no count without conntrack-tools');
    assert.match(md, /\| eBPF \| 1000 ms after the pod appeared \| 2 \| 2 \|/);
    const h = headline(s);
    assert.deepEqual(h.first_credential_ebpf, { p50_ms: 5, p99_ms: 25, ok: 2, pods: 2 });
    const t = Object.fromEntries(targets(s).map((x) => [x.what, x.pass]));
    assert.equal(t["new pod's first credential, request after 1 s, p99, DNAT"], true);
    assert.equal(t["new pod's first credential, request after 1 s, p99, eBPF"], false);
  });

  it('takes the median round of each variant, so that one noisy round decides nothing', () => {
    const rounds = [30000, 12000, 29000].map((rps, i) => ({ ...run('ebpf', 'agent', 'keep-alive', 64, rps, 5 + i, 30 + i), round: i + 1 }));
    const w = { document_bytes: 1, document_headers: [], runs: [...warm()!.runs.filter((r) => !(r.path === 'ebpf' && r.server === 'agent' && r.connections === 64 && r.mode === 'keep-alive')), ...rounds] };
    const med = medianRuns(w.runs);
    assert.equal(med.length, warm()!.runs.length, 'one row per variant');
    const picked = med.find((r) => r.path === 'ebpf' && r.server === 'agent' && r.connections === 64 && r.mode === 'keep-alive')!;
    assert.equal(picked.rps, 29000);
    assert.equal(picked.p99_ms, 7, 'p99 and CPU come from the same round as the req/s');
    assert.equal((headline({ warm: w }).warm_ebpf as Record<string, number>).agent_rps, 29000);
    // An even count takes the lower of the two middle rounds.
    assert.equal(medianRuns(rounds.slice(0, 2))[0]!.rps, 12000);
    const md = markdown({ warm: w }, { date: 'd', quick: false, machine: { cpus: 2, cpu_model: 'x', node: '20', kernel: 'k', commit: 'c', dirty_files: 0, loadavg_start: [0, 0, 0] }, agent_log_level: 'info', command: 'c' });
    assert.match(md, /ran in 3 rounds/);
    assert.match(md, /\| keep-alive \| 64 \| eBPF \| agent \| 29000 \| 12000–30000 \|/);
  });
});
