import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalIp, isLive, matchLive, PodIndex, toPodInfo, type PodInfo, type PodLike } from '../../src/resolver/pod-index.ts';

let seq = 0;
function pod(overrides: Partial<PodInfo> = {}): PodInfo {
  seq++;
  const ip = overrides.ip ?? overrides.ips?.[0] ?? `10.0.0.${seq}`;
  return {
    uid: `uid-${seq}`,
    name: `pod-${seq}`,
    namespace: 'ns',
    serviceAccount: 'default',
    phase: 'Running',
    hostNetwork: false,
    deleting: false,
    ...overrides,
    ip,
    ips: overrides.ips ?? (ip ? [ip] : []),
  };
}

describe('toPodInfo', () => {
  it('keeps only the fields the agent uses', () => {
    const raw: PodLike & Record<string, unknown> = {
      metadata: {
        uid: 'u1',
        name: 'web',
        namespace: 'dev',
        annotations: { 'iam.amazonaws.com/role': ' reader ', 'iam.amazonaws.com/external-id': 'ext-1', other: 'x'.repeat(1000) },
      },
      spec: { serviceAccountName: 'sa', hostNetwork: false, containers: [{ name: 'c' }] } as never,
      status: { phase: 'Running', podIP: '10.1.2.3' },
    };
    const info = toPodInfo(raw);
    assert.deepEqual(info, {
      uid: 'u1',
      name: 'web',
      namespace: 'dev',
      ip: '10.1.2.3',
      ips: ['10.1.2.3'],
      serviceAccount: 'sa',
      role: 'reader',
      externalId: 'ext-1',
      phase: 'Running',
      hostNetwork: false,
      deleting: false,
    });
  });

  it('tolerates a pod with almost nothing set, and blank annotations', () => {
    const info = toPodInfo({ metadata: { uid: 'u', annotations: { 'iam.amazonaws.com/role': '  ' } }, spec: null, status: null });
    assert.equal(info.ip, '');
    assert.equal(info.role, undefined);
    assert.equal(info.phase, 'Unknown');
    assert.equal(info.serviceAccount, 'default');
    assert.equal(isLive(info), false, 'no IP: not live');
  });

  it('marks a pod with a deletionTimestamp (string or Date) as deleting', () => {
    assert.equal(toPodInfo({ metadata: { deletionTimestamp: '2026-01-01T00:00:00Z' } }).deleting, true);
    assert.equal(toPodInfo({ metadata: { deletionTimestamp: new Date() } }).deleting, true);
    assert.equal(toPodInfo({ metadata: {} }).deleting, false);
  });
});

describe('isLive', () => {
  it('excludes finished, hostNetwork and IP-less pods; a terminating pod is live until its phase is terminal', () => {
    assert.equal(isLive(pod()), true);
    assert.equal(isLive(pod({ phase: 'Pending' })), true);
    assert.equal(isLive(pod({ phase: 'Succeeded' })), false);
    assert.equal(isLive(pod({ phase: 'Failed' })), false);
    assert.equal(isLive(pod({ deleting: true })), true, 'terminating: preStop hooks and drains still need credentials');
    assert.equal(isLive(pod({ deleting: true, phase: 'Succeeded' })), false);
    assert.equal(isLive(pod({ deleting: true, phase: 'Failed' })), false);
    assert.equal(isLive(pod({ hostNetwork: true })), false);
    assert.equal(isLive(pod({ ip: '' })), false);
  });
});

describe('PodIndex', () => {
  it('finds a live pod by IP and counts it', () => {
    const index = new PodIndex();
    const p = pod();
    assert.equal(index.upsert(p), true);
    assert.deepEqual(index.byIp(p.ip), { kind: 'pod', pod: p });
    assert.equal(index.size, 1);
    assert.deepEqual(index.byIp('10.9.9.9'), { kind: 'none' });
  });

  it('IP reuse: an old Succeeded pod and a new pod on the same IP resolve to the new one', () => {
    const index = new PodIndex();
    const old = pod({ ip: '10.0.5.5' });
    index.upsert(old);
    index.upsert({ ...old, phase: 'Succeeded' });
    const fresh = pod({ ip: '10.0.5.5' });
    index.upsert(fresh);
    assert.deepEqual(index.byIp('10.0.5.5'), { kind: 'pod', pod: fresh });
    assert.equal(index.size, 1);
  });

  it('a terminating pod keeps its IP; a new pod beside it on that IP is ambiguous until the old one is terminal or gone', () => {
    const index = new PodIndex();
    const old = pod({ ip: '10.0.5.6' });
    const terminating = { ...old, deleting: true };
    index.upsert(old);
    assert.equal(index.upsert(terminating), true);
    assert.deepEqual(index.byIp('10.0.5.6'), { kind: 'pod', pod: terminating }, 'still served while it drains');
    const fresh = pod({ ip: '10.0.5.6' });
    index.upsert(fresh);
    assert.deepEqual(index.byIp('10.0.5.6'), { kind: 'ambiguous' }, 'two live pods on one IP: nothing');
    assert.equal(index.upsert({ ...terminating, phase: 'Failed' }), false);
    assert.deepEqual(index.byIp('10.0.5.6'), { kind: 'pod', pod: fresh });
    index.upsert(terminating);
    assert.equal(index.remove(terminating.uid), true, 'or gone');
    assert.deepEqual(index.byIp('10.0.5.6'), { kind: 'pod', pod: fresh });
  });

  it('two live pods on one IP are ambiguous; removing one resolves it', () => {
    const index = new PodIndex();
    const a = pod({ ip: '10.0.6.1' });
    const b = pod({ ip: '10.0.6.1' });
    index.upsert(a);
    index.upsert(b);
    assert.deepEqual(index.byIp('10.0.6.1'), { kind: 'ambiguous' });
    assert.equal(index.remove(a.uid), true);
    assert.deepEqual(index.byIp('10.0.6.1'), { kind: 'pod', pod: b });
    assert.equal(index.remove(a.uid), false, 'second remove is a no-op');
  });

  it('hostNetwork pods are never indexed (they share the node IP)', () => {
    const index = new PodIndex();
    const host = pod({ ip: '192.168.1.10', hostNetwork: true });
    assert.equal(index.upsert(host), false);
    assert.deepEqual(index.byIp('192.168.1.10'), { kind: 'none' });
    assert.equal(index.size, 0);
  });

  it('an IP change moves the pod', () => {
    const index = new PodIndex();
    const p = pod({ ip: '10.0.7.1' });
    index.upsert(p);
    const moved = { ...p, ip: '10.0.7.2', ips: ['10.0.7.2'] };
    index.upsert(moved);
    assert.deepEqual(index.byIp('10.0.7.1'), { kind: 'none' });
    assert.deepEqual(index.byIp('10.0.7.2'), { kind: 'pod', pod: moved });
    assert.equal(index.size, 1);
  });

  it('a pod that stops being live leaves the index', () => {
    const index = new PodIndex();
    const p = pod();
    index.upsert(p);
    assert.equal(index.upsert({ ...p, phase: 'Failed' }), false);
    assert.equal(index.size, 0);
    assert.equal(index.get(p.uid), undefined);
  });

  it('waitForIp resolves when the IP appears, without polling', async () => {
    const index = new PodIndex();
    const ac = new AbortController();
    const waiting = index.waitForIp('10.0.8.1', ac.signal);
    assert.equal(index.pendingWaits, 1);
    index.upsert(pod({ ip: '10.0.8.2' }));
    assert.equal(index.pendingWaits, 1, 'another IP does not wake it');
    index.upsert(pod({ ip: '10.0.8.1' }));
    assert.equal(await waiting, true);
    assert.equal(index.pendingWaits, 0);
  });

  it('waitForIp resolves at once for a known IP and false on abort, cleaning up', async () => {
    const index = new PodIndex();
    const p = pod();
    index.upsert(p);
    assert.equal(await index.waitForIp(p.ip, new AbortController().signal), true);
    const ac = new AbortController();
    const waiting = index.waitForIp('10.0.9.9', ac.signal);
    ac.abort();
    assert.equal(await waiting, false);
    assert.equal(index.pendingWaits, 0);
    assert.equal(await index.waitForIp('10.0.9.9', AbortSignal.abort()), false);
  });

  it('waitForIp ignores pods that are not live', async () => {
    const index = new PodIndex();
    const ac = new AbortController();
    const waiting = index.waitForIp('10.0.10.1', ac.signal);
    index.upsert(pod({ ip: '10.0.10.1', phase: 'Succeeded' }));
    assert.equal(index.pendingWaits, 1);
    ac.abort();
    assert.equal(await waiting, false);
  });
});

describe('matchLive', () => {
  it('classifies a live GET answer with the same liveness rules', () => {
    const live = pod({ ip: '10.0.11.1' });
    assert.deepEqual(matchLive([]), { kind: 'none' });
    assert.deepEqual(matchLive([pod({ phase: 'Succeeded' }), live]), { kind: 'pod', pod: live });
    assert.deepEqual(matchLive([live, pod({ ip: '10.0.11.1' })]), { kind: 'ambiguous' });
    assert.deepEqual(matchLive([pod({ hostNetwork: true })]), { kind: 'none' });
    const draining = pod({ ip: '10.0.11.2', deleting: true });
    assert.deepEqual(matchLive([draining]), { kind: 'pod', pod: draining }, 'a terminating pod is still the one asking');
    assert.deepEqual(matchLive([draining, pod({ ip: '10.0.11.2' })]), { kind: 'ambiguous' });
  });
});

describe('dual-stack pods (status.podIPs)', () => {
  it('canonicalIp: IPv6 compressed and lower case, IPv4-mapped to IPv4, IPv4 and non-addresses untouched', () => {
    const cases: Array<[string, string]> = [
      ['10.0.0.5', '10.0.0.5'],
      ['fd00:10:244::1a', 'fd00:10:244::1a'],
      ['FD00:0010:0244:0000:0000:0000:0000:001A', 'fd00:10:244::1a'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['::ffff:10.0.0.5', '10.0.0.5'],
      ['::FFFF:10.0.0.5', '10.0.0.5'],
      ['::ffff:a00:5', '10.0.0.5'],
      ['0:0:0:0:0:ffff:10.0.0.5', '10.0.0.5'],
      ['::1', '::1'],
      ['fe80::1%eth0', 'fe80::1'],
      ['', ''],
      ['not-an-ip', 'not-an-ip'],
      ['fd00::zz', 'fd00::zz'],
    ];
    for (const [input, want] of cases) assert.equal(canonicalIp(input), want, input);
  });

  it('toPodInfo keeps every pod IP, canonical, primary first, without duplicates or invalid entries', () => {
    const info = toPodInfo({
      metadata: { uid: 'u' },
      status: { phase: 'Running', podIP: '10.1.2.3', podIPs: [{ ip: '10.1.2.3' }, { ip: 'FD00:1:2::0003' }, { ip: 'bogus' }, null, {}, { ip: 'fd00:1:2::3' }] },
    });
    assert.equal(info.ip, '10.1.2.3');
    assert.deepEqual(info.ips, ['10.1.2.3', 'fd00:1:2::3']);
    const v6first = toPodInfo({ metadata: { uid: 'v' }, status: { podIPs: [{ ip: 'fd00::9' }, { ip: '10.9.9.9' }] } });
    assert.equal(v6first.ip, 'fd00::9', 'podIPs alone: its first entry is the primary');
    assert.deepEqual(v6first.ips, ['fd00::9', '10.9.9.9']);
    assert.deepEqual(toPodInfo({ metadata: { uid: 'w' }, status: { podIP: '', podIPs: [] } }).ips, []);
  });

  it('maps each IP of a pod to it; a pod is found by either, in any spelling and IPv4-mapped', () => {
    const index = new PodIndex();
    const p = pod({ ips: ['10.0.20.1', 'fd00:20::1'] });
    index.upsert(p);
    for (const ip of ['10.0.20.1', 'fd00:20::1', 'FD00:20:0::0001', '::ffff:10.0.20.1']) assert.deepEqual(index.byIp(ip), { kind: 'pod', pod: p }, ip);
    assert.equal(index.size, 1);
    index.remove(p.uid);
    assert.deepEqual(index.byIp('10.0.20.1'), { kind: 'none' });
    assert.deepEqual(index.byIp('fd00:20::1'), { kind: 'none' });
  });

  it('ambiguity holds per IP: a shared IPv4 is ambiguous while each pod keeps its own IPv6', () => {
    const index = new PodIndex();
    const a = pod({ ips: ['10.0.21.1', 'fd00:21::a'] });
    const b = pod({ ips: ['10.0.21.1', 'fd00:21::b'] });
    index.upsert(a);
    index.upsert(b);
    assert.deepEqual(index.byIp('10.0.21.1'), { kind: 'ambiguous' });
    assert.deepEqual(index.byIp('fd00:21::a'), { kind: 'pod', pod: a });
    assert.deepEqual(index.byIp('fd00:21::b'), { kind: 'pod', pod: b });
    index.remove(b.uid);
    assert.deepEqual(index.byIp('10.0.21.1'), { kind: 'pod', pod: a });
  });

  it('an IPv6 change moves only that IP; a hostNetwork pod is indexed on neither', () => {
    const index = new PodIndex();
    const p = pod({ ips: ['10.0.22.1', 'fd00:22::1'] });
    index.upsert(p);
    const moved = { ...p, ips: ['10.0.22.1', 'fd00:22::2'] };
    index.upsert(moved);
    assert.deepEqual(index.byIp('fd00:22::1'), { kind: 'none' });
    assert.deepEqual(index.byIp('fd00:22::2'), { kind: 'pod', pod: moved });
    assert.deepEqual(index.byIp('10.0.22.1'), { kind: 'pod', pod: moved });
    index.upsert(pod({ ips: ['10.0.22.9', 'fd00:22::9'], hostNetwork: true }));
    assert.deepEqual(index.byIp('fd00:22::9'), { kind: 'none' });
  });

  it('waitForIp wakes for a secondary IP, asked in any spelling', async () => {
    const index = new PodIndex();
    const waiting = index.waitForIp('FD00:23::0001', new AbortController().signal);
    index.upsert(pod({ ips: ['10.0.23.1', 'fd00:23::1'] }));
    assert.equal(await waiting, true);
    assert.equal(index.pendingWaits, 0);
  });

  it('matchLive with an IP counts only the candidates holding it', () => {
    const a = pod({ ips: ['10.0.24.1', 'fd00:24::1'] });
    const other = pod({ ips: ['10.0.24.2', 'fd00:24::2'] });
    assert.deepEqual(matchLive([a, other], 'fd00:24::1'), { kind: 'pod', pod: a });
    assert.deepEqual(matchLive([a, other], 'FD00:24::2'), { kind: 'pod', pod: other });
    assert.deepEqual(matchLive([a, other], 'fd00:24::3'), { kind: 'none' });
  });
});
