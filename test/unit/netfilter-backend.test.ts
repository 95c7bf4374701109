import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backendCommands, countRules, detectBackend, netfilterBypassWarnings } from '../../src/netfilter/backend.ts';
import { ScriptedRunner } from '../fakes/runner.ts';

const MANGLE_EMPTY = '*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n';
const MANGLE_KUBELET = MANGLE_EMPTY.replace('COMMIT', ':KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT');
const NOT_FOUND = { code: 127, stderr: 'iptables-legacy-save: command not found' };

function rules(n: number): string {
  return `*filter\n:INPUT ACCEPT [0:0]\n${Array.from({ length: n }, (_, i) => `-A INPUT -s 10.0.0.${i}/32 -j ACCEPT\n`).join('')}COMMIT\n`;
}

describe('detectBackend', () => {
  it('takes an explicit choice without running anything', async () => {
    const runner = new ScriptedRunner();
    assert.deepEqual(await detectBackend(runner, 'legacy'), backendCommands('legacy', 'chosen with --iptables-backend=legacy'));
    const nft = await detectBackend(runner, 'nft');
    assert.deepEqual([nft.name, nft.save, nft.restore], ['nft', 'iptables-nft-save', 'iptables-nft-restore']);
    assert.equal(runner.calls.length, 0);
  });

  it('carries the ip6tables binaries of the same backend', () => {
    const nft = backendCommands('nft', 'x');
    assert.deepEqual([nft.save6, nft.restore6], ['ip6tables-nft-save', 'ip6tables-nft-restore']);
    const legacy = backendCommands('legacy', 'x');
    assert.deepEqual([legacy.save6, legacy.restore6], ['ip6tables-legacy-save', 'ip6tables-legacy-restore']);
  });

  it('chooses nft when kubelet chains are in the nft mangle table', async () => {
    const runner = new ScriptedRunner().expect(['iptables-nft-save', '-t', 'mangle'], { stdout: MANGLE_KUBELET });
    const backend = await detectBackend(runner, 'auto');
    assert.equal(backend.name, 'nft');
    assert.match(backend.reason, /kubelet chains/);
    assert.equal(runner.calls[0]?.timeoutMs, 5000);
    runner.assertDone();
  });

  it('chooses legacy when kubelet chains are in the legacy tables', async () => {
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: MANGLE_EMPTY })
      .expect(['iptables-legacy-save'], { stdout: MANGLE_KUBELET });
    const backend = await detectBackend(runner, 'auto');
    assert.deepEqual(
      [backend.name, backend.save, backend.restore, backend.save6, backend.restore6],
      ['legacy', 'iptables-legacy-save', 'iptables-legacy-restore', 'ip6tables-legacy-save', 'ip6tables-legacy-restore'],
    );
    runner.assertDone();
  });

  const countCases: Array<[string, number, number, 'nft' | 'legacy']> = [
    ['more legacy rules', 12, 3, 'legacy'],
    ['more nft rules', 3, 12, 'nft'],
    ['a tie', 4, 4, 'nft'],
    ['nothing anywhere', 0, 0, 'nft'],
  ];
  for (const [label, legacyRules, nftRules, expected] of countCases) {
    it(`compares rule counts: ${label} → ${expected}`, async () => {
      const runner = new ScriptedRunner()
        .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: MANGLE_EMPTY })
        .expect(['iptables-legacy-save'], { stdout: rules(legacyRules) })
        .expect(['iptables-nft-save'], { stdout: rules(nftRules) });
      const backend = await detectBackend(runner, 'auto');
      assert.equal(backend.name, expected);
      assert.match(backend.reason, new RegExp(`legacy ${legacyRules} rule\\(s\\), nft ${nftRules}`));
      runner.assertDone();
    });
  }

  it('counts a missing backend binary as zero rules', async () => {
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { stdout: MANGLE_EMPTY })
      .expect(['iptables-legacy-save'], NOT_FOUND)
      .expect(['iptables-nft-save'], { stdout: rules(1) });
    const chosen = await detectBackend(runner, 'auto');
    assert.equal(chosen.name, 'nft');
    assert.match(chosen.warning ?? '', /^iptables-legacy-save failed \(exit 127: iptables-legacy-save: command not found\).*CAP_NET_RAW/);
    const other = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { code: 127, stderr: 'iptables-nft-save: command not found' })
      .expect(['iptables-legacy-save'], { stdout: rules(1) })
      .expect(['iptables-nft-save'], { code: 127, stderr: 'iptables-nft-save: command not found' });
    const legacy = await detectBackend(other, 'auto');
    assert.equal(legacy.name, 'legacy');
    assert.match(legacy.warning ?? '', /^iptables-nft-save failed \(exit 127/);
    runner.assertDone();
    other.assertDone();
  });

  it('fails clearly when no iptables runs at all', async () => {
    const runner = new ScriptedRunner()
      .expect(['iptables-nft-save', '-t', 'mangle'], { code: 127, stderr: 'iptables-nft-save: command not found' })
      .expect(['iptables-legacy-save'], NOT_FOUND)
      .expect(['iptables-nft-save'], { code: 127, stderr: 'iptables-nft-save: command not found' });
    await assert.rejects(detectBackend(runner, 'auto'), /cannot detect the iptables backend: iptables-legacy-save exited 127 \(iptables-legacy-save: command not found\)/);
    runner.assertDone();
  });

  it('rejects an unknown choice', async () => {
    await assert.rejects(detectBackend(new ScriptedRunner(), 'bogus' as 'auto'), /unknown iptables backend "bogus"/);
  });

  it('countRules counts rule lines only', () => {
    assert.equal(countRules(rules(3)), 3);
    assert.equal(countRules(MANGLE_KUBELET), 0);
  });
});

describe('netfilterBypassWarnings', () => {
  it('warns for Cilium and Calico eBPF interfaces only', () => {
    assert.deepEqual(netfilterBypassWarnings(() => ['lo', 'eth0', 'cali123']), []);
    const cilium = netfilterBypassWarnings(() => ['lo', 'cilium_host', 'cilium_net']);
    assert.equal(cilium.length, 1);
    assert.match(cilium[0] ?? '', /Cilium.*bypasses netfilter/);
    assert.match(netfilterBypassWarnings(() => ['bpfin.cali', 'bpfout.cali'])[0] ?? '', /Calico eBPF/);
  });

  it('gives no warning when the interfaces cannot be listed', () => {
    assert.deepEqual(
      netfilterBypassWarnings(() => {
        throw new Error('EACCES');
      }),
      [],
    );
  });

  it('reads /sys/class/net by default without throwing', () => {
    assert.ok(Array.isArray(netfilterBypassWarnings()));
  });
});
