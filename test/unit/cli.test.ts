import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseCommandLine, type Invocation } from '../../src/cli.ts';
import { DEFAULTS } from '../../src/config.ts';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** Every `kiam agent` flag named in issue 2's "Command line" section: a contract. */
const AGENT_FLAGS = [
  '--node-name',
  '--host-ip',
  '--port',
  '--metrics-port',
  '--kubeconfig',
  '--iptables',
  '--host-interface',
  '--iptables-backend',
  '--remove-rules-on-exit',
  '--metadata-endpoint',
  '--allow-route-regexp',
  '--deny-route-regexp',
  '--role-base-arn',
  '--role-base-arn-autodetect',
  '--default-role',
  '--session-duration',
  '--session-name',
  '--region',
  '--sts-endpoint',
  '--namespace-restriction',
  '--log-level',
  '--log-format',
];

/** Defaults the issue states (or the config module owns), as they must appear in help. */
const HELP_DEFAULTS: Record<string, string[]> = {
  '--port': ['8181'],
  '--metrics-port': ['9620'],
  '--kubeconfig': ['in-cluster'],
  '--iptables-backend': ['auto'],
  '--remove-rules-on-exit': ['false'],
  '--metadata-endpoint': ['http://169.254.169.254'],
  '--deny-route-regexp': ['user-data', 'identity-credentials'],
  '--default-role': ['none'],
  '--session-duration': ['1h'],
  '--session-name': [DEFAULTS.sessionName],
  '--reconcile-interval': ['10s'],
  '--pod-wait-timeout': ['800ms'],
  '--log-level': [DEFAULTS.logLevel],
  '--log-format': ['json'],
};

/** The help entry for one flag: from its line to the next option line, whitespace collapsed. */
function helpEntry(help: string, flag: string): string | undefined {
  const lines = help.split('\n');
  const start = lines.findIndex((l) => new RegExp(`^\\s+(-\\w, )?${flag.replace(/-/g, '\\-')}([ ,]|$)`).test(l));
  if (start < 0) return undefined;
  const rest = lines.slice(start + 1);
  const end = rest.findIndex((l) => /^\s+-/.test(l) || l.trim() === '');
  return [lines[start]!, ...rest.slice(0, end < 0 ? rest.length : end)].join(' ').replace(/\s+/g, ' ');
}

function exitOf(inv: Invocation): { code: number; output: string } {
  assert.equal(inv.kind, 'exit', `expected an exit, got ${inv.kind}`);
  return inv as { code: number; output: string };
}

function agentOf(inv: Invocation) {
  assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : inv.kind);
  return (inv as Extract<Invocation, { kind: 'agent' }>).config;
}

function iptablesOf(inv: Invocation) {
  assert.equal(inv.kind, 'intercept', inv.kind === 'exit' ? inv.output : inv.kind);
  const intercept = inv as Extract<Invocation, { kind: 'intercept' }>;
  assert.equal(intercept.command, 'iptables');
  assert.equal(intercept.config.intercept, 'iptables');
  return intercept;
}

describe('help and version', () => {
  for (const argv of [['--help'], ['agent', '--help'], ['help', 'agent']]) {
    test(`kiam ${argv.join(' ')} exits 0 and lists every agent flag with its default`, () => {
      const { code, output } = exitOf(parseCommandLine(argv, {}));
      assert.equal(code, 0);
      for (const flag of AGENT_FLAGS) assert.ok(helpEntry(output, flag), `help lists ${flag}`);
      for (const [flag, words] of Object.entries(HELP_DEFAULTS)) {
        const entry = helpEntry(output, flag);
        assert.ok(entry, `help lists ${flag}`);
        for (const w of words) assert.ok(entry.includes(w), `help for ${flag} shows its default ${w}: ${entry}`);
      }
      for (const env of ['NODE_NAME', 'HOST_IP']) assert.ok(output.includes(env), `help mentions env ${env}`);
    });
  }

  test('iptables subcommand help lists the interception flags and --json', () => {
    for (const action of ['install', 'remove', 'status']) {
      const { code, output } = exitOf(parseCommandLine(['iptables', action, '--help'], {}));
      assert.equal(code, 0);
      for (const flag of ['--host-ip', '--port', '--host-interface', '--iptables-backend', '--json']) {
        assert.ok(helpEntry(output, flag), `iptables ${action} help lists ${flag}`);
      }
      assert.ok(helpEntry(output, '--port')!.includes('8181'));
    }
  });

  test('--version prints the package version and exits 0', () => {
    for (const flag of ['--version', '-V']) {
      const { code, output } = exitOf(parseCommandLine([flag], {}));
      assert.equal(code, 0);
      assert.equal(output.trim(), pkg.version);
    }
  });

  test('no arguments: usage, non-zero exit', () => {
    const { code, output } = exitOf(parseCommandLine([], {}));
    assert.notEqual(code, 0);
    assert.match(output, /Usage: kiam/);
    assert.match(output, /\bagent\b/);
    assert.match(output, /\biptables\b/);
  });

  test('iptables without an action: usage, non-zero exit', () => {
    const { code, output } = exitOf(parseCommandLine(['iptables'], {}));
    assert.notEqual(code, 0);
    for (const action of ['install', 'remove', 'status']) assert.ok(output.includes(action));
  });
});

describe('command line errors name what is wrong', () => {
  const cases: [string[], string][] = [
    [['agent', '--node-name', 'n', '--bogus'], '--bogus'],
    [['agent', '--node-name', 'n', '--namespace-restrictoin'], '--namespace-restrictoin'],
    [['iptables', 'status', '--bogus'], '--bogus'],
    [['agent', '--node-name'], '--node-name'],
    [['frobnicate'], 'frobnicate'],
    [['iptables', 'frobnicate'], 'frobnicate'],
    [['agent', '--node-name', 'n', '--iptables-backend', 'foo'], '--iptables-backend'],
    [['iptables', 'install', '--host-ip', '10.0.0.1', '--host-interface', 'cali+', '--iptables-backend', 'foo'], '--iptables-backend'],
    [['agent', '--node-name', 'n', '--log-format', 'xml'], '--log-format'],
    [['agent', '--node-name', 'n', '--log-level', 'loud'], '--log-level'],
    [['agent', '--node-name', 'n', '--port', 'eighty'], '--port'],
    [['agent', '--node-name', 'n', '--session-duration', '5m'], '--session-duration'],
    [['agent'], '--node-name'],
    [['agent', '--node-name', 'n', '--iptables'], '--host-interface'],
  ];
  for (const [argv, named] of cases) {
    test(`kiam ${argv.join(' ')} → non-zero, names ${named}`, () => {
      const { code, output } = exitOf(parseCommandLine(argv, {}));
      assert.notEqual(code, 0);
      assert.ok(output.includes(named), output);
    });
  }

  test('every config problem is printed, one per line', () => {
    const { code, output } = exitOf(parseCommandLine(['agent', '--port', 'x', '--session-name', '{nope}', '--host-ip', '1.2.3'], {}));
    assert.equal(code, 2);
    const lines = output.trim().split('\n');
    for (const flag of ['--node-name', '--port', '--session-name', '--host-ip']) {
      assert.ok(lines.some((l) => l.startsWith('error:') && l.includes(flag)), `${flag} in:\n${output}`);
    }
  });
});

describe('agent', () => {
  test('minimal invocation gets the defaults', () => {
    const config = agentOf(parseCommandLine(['agent', '--node-name', 'node-a'], {}));
    assert.equal(config.nodeName, 'node-a');
    assert.equal(config.port, 8181);
    assert.equal(config.metricsPort, 9620);
    assert.equal(config.namespaceRestriction, true);
    assert.equal(config.iptables, false);
    assert.ok(config.denyRoutes.some((r) => r.test('latest/user-data')));
  });

  test('every flag reaches the config', () => {
    const config = agentOf(
      parseCommandLine(
        [
          'agent',
          '--node-name', 'node-a',
          '--host-ip', '10.0.0.7',
          '--port', '8282',
          '--metrics-port', '9700',
          '--kubeconfig', '/etc/kube.conf',
          '--iptables',
          '--host-interface', 'cali+',
          '--iptables-backend', 'legacy',
          '--remove-rules-on-exit',
          '--reconcile-interval', '30s',
          '--metadata-endpoint', 'http://127.0.0.1:1234',
          '--allow-route-regexp', '^latest/',
          '--deny-route-regexp', '^latest/user-data',
          '--role-base-arn', 'arn:aws:iam::123456789012:role/',
          '--default-role', 'reader',
          '--session-duration', '2h',
          '--session-name', '{role}-{pod}',
          '--region', 'eu-west-1',
          '--sts-endpoint', 'http://127.0.0.1:4566',
          '--no-namespace-restriction',
          '--pod-wait-timeout', '500ms',
          '--log-level', 'debug',
          '--log-format', 'pretty',
        ],
        {},
      ),
    );
    assert.deepEqual(
      {
        hostIp: config.hostIp, port: config.port, metricsPort: config.metricsPort, kubeconfig: config.kubeconfig, iptables: config.iptables,
        hostInterfaces: config.hostInterfaces, iptablesBackend: config.iptablesBackend, removeRulesOnExit: config.removeRulesOnExit,
        reconcileIntervalMs: config.reconcileIntervalMs, metadataEndpoint: config.metadataEndpoint,
        allow: config.allowRoutes.map((r) => r.source), deny: config.denyRoutes.map((r) => r.source), roleBaseArn: config.roleBaseArn,
        defaultRole: config.defaultRole, sessionDurationSec: config.sessionDurationSec, sessionNameTemplate: config.sessionNameTemplate,
        region: config.region, stsEndpoint: config.stsEndpoint, namespaceRestriction: config.namespaceRestriction, podWaitMs: config.podWaitMs,
        logLevel: config.logLevel, logFormat: config.logFormat,
      },
      {
        hostIp: '10.0.0.7', port: 8282, metricsPort: 9700, kubeconfig: '/etc/kube.conf', iptables: true, hostInterfaces: ['cali+'],
        iptablesBackend: 'legacy', removeRulesOnExit: true, reconcileIntervalMs: 30_000, metadataEndpoint: 'http://127.0.0.1:1234',
        allow: ['^latest\\/'], deny: [...DEFAULTS.denyRouteRegexp.map((p) => new RegExp(p).source), '^latest\\/user-data'], roleBaseArn: 'arn:aws:iam::123456789012:role/', defaultRole: 'reader',
        sessionDurationSec: 7200, sessionNameTemplate: '{role}-{pod}', region: 'eu-west-1', stsEndpoint: 'http://127.0.0.1:4566',
        namespaceRestriction: false, podWaitMs: 500, logLevel: 'debug', logFormat: 'pretty',
      },
    );
  });

  test('--role-base-arn-autodetect is accepted', () => {
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n', '--role-base-arn-autodetect'], {})).roleBaseArnAutodetect, true);
  });

  test('repeatable flags collect every value in order', () => {
    const config = agentOf(
      parseCommandLine(
        [
          'agent', '--node-name', 'n',
          '--host-interface', 'cali+', '--host-interface', 'eni+', '--host-interface', '!eth0',
          '--allow-route-regexp', '^a', '--allow-route-regexp', '^b',
          '--deny-route-regexp', '^c', '--deny-route-regexp', '^d',
        ],
        {},
      ),
    );
    assert.deepEqual(config.hostInterfaces, ['cali+', 'eni+', '!eth0']);
    assert.deepEqual(config.allowRoutes.map((r) => r.source), ['^a', '^b']);
    // The given patterns are added to the default list, never in its place.
    assert.deepEqual(config.denyRoutes.map((r) => r.source), [...DEFAULTS.denyRouteRegexp.map((p) => new RegExp(p).source), '^c', '^d']);
  });

  test('--no-default-deny drops the default deny list; --imdsv2 takes optional or required', () => {
    const bare = agentOf(parseCommandLine(['agent', '--node-name', 'n', '--no-default-deny', '--deny-route-regexp', '^c'], {}));
    assert.deepEqual(bare.denyRoutes.map((r) => r.source), ['^c']);
    assert.equal(bare.imdsv2, 'optional');
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n', '--imdsv2', 'required'], {})).imdsv2, 'required');
    const bad = parseCommandLine(['agent', '--node-name', 'n', '--imdsv2', 'v1'], {});
    assert.equal(bad.kind, 'exit');
    assert.equal((bad as Extract<Invocation, { kind: 'exit' }>).code, 2);
  });

  test("the migration guides' advice still means what it said: --deny-route-regexp '.*' blocks every pass-through path", () => {
    const config = agentOf(parseCommandLine(['agent', '--node-name', 'n', '--deny-route-regexp', '.*'], {}));
    for (const path of ['latest/meta-data/instance-id', 'latest/user-data', '']) assert.ok(config.denyRoutes.some((r) => r.test(path)), path);
  });

  test('repeated parses do not share state', () => {
    agentOf(parseCommandLine(['agent', '--node-name', 'n', '--host-interface', 'cali+', '--deny-route-regexp', '^x'], {}));
    const config = agentOf(parseCommandLine(['agent', '--node-name', 'n'], {}));
    assert.deepEqual(config.hostInterfaces, []);
    assert.ok(config.denyRoutes.some((r) => r.test('latest/user-data')));
  });

  test('namespace restriction: on by default, --namespace-restriction on, --no-namespace-restriction off', () => {
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n'], {})).namespaceRestriction, true);
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n', '--namespace-restriction'], {})).namespaceRestriction, true);
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n', '--no-namespace-restriction'], {})).namespaceRestriction, false);
  });

  test('env NODE_NAME and HOST_IP from the given environment; flags win', () => {
    const fromEnv = agentOf(parseCommandLine(['agent', '--iptables', '--host-interface', 'cali+'], { NODE_NAME: 'env-node', HOST_IP: '10.0.0.9' }));
    assert.equal(fromEnv.nodeName, 'env-node');
    assert.equal(fromEnv.hostIp, '10.0.0.9');
    const flags = agentOf(parseCommandLine(['agent', '--node-name', 'flag-node', '--host-ip', '10.0.0.1'], { NODE_NAME: 'env-node', HOST_IP: '10.0.0.9' }));
    assert.equal(flags.nodeName, 'flag-node');
    assert.equal(flags.hostIp, '10.0.0.1');
  });

  test('only the given environment is consulted, never process.env', () => {
    const saved = { NODE_NAME: process.env.NODE_NAME, HOST_IP: process.env.HOST_IP };
    process.env.NODE_NAME = 'process-node';
    process.env.HOST_IP = '';
    try {
      const { code, output } = exitOf(parseCommandLine(['agent'], {}));
      assert.equal(code, 2);
      assert.match(output, /--node-name/);
      const config = agentOf(parseCommandLine(['agent', '--node-name', 'n'], {}));
      assert.equal(config.nodeName, 'n');
      assert.equal(config.hostIp, undefined);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

describe('iptables subcommands (parsed only: nothing here runs iptables)', () => {
  test('install requires --host-ip and --host-interface, both reported before any iptables call', () => {
    const { code, output } = exitOf(parseCommandLine(['iptables', 'install'], {}));
    assert.equal(code, 2);
    assert.match(output, /--host-ip/);
    assert.match(output, /--host-interface/);
    const noIface = exitOf(parseCommandLine(['iptables', 'install', '--host-ip', '10.0.0.1'], {}));
    assert.notEqual(noIface.code, 0);
    assert.match(noIface.output, /--host-interface/);
    assert.doesNotMatch(noIface.output, /--host-ip/);
  });

  test('install with bad values is an exit, not an iptables invocation', () => {
    for (const [argv, named] of [
      [['--host-ip', '10.0.0', '--host-interface', 'cali+'], '--host-ip'],
      [['--host-ip', '10.0.0.1', '--host-interface', 'eth0;reboot'], '--host-interface'],
      [['--host-ip', '10.0.0.1', '--host-interface', 'cali+', '--port', '0'], '--port'],
    ] as const) {
      const { code, output } = exitOf(parseCommandLine(['iptables', 'install', ...argv], {}));
      assert.notEqual(code, 0);
      assert.ok(output.includes(named), output);
    }
  });

  test('install parses with its flags, repeatable interfaces and HOST_IP from the environment', () => {
    const inv = iptablesOf(
      parseCommandLine(['iptables', 'install', '--host-ip', '10.0.0.1', '--host-interface', 'cali+', '--host-interface', 'eni+', '--port', '8282', '--iptables-backend', 'nft'], {}),
    );
    assert.equal(inv.action, 'install');
    assert.equal(inv.json, false);
    assert.equal(inv.config.hostIp, '10.0.0.1');
    assert.deepEqual(inv.config.hostInterfaces, ['cali+', 'eni+']);
    assert.equal(inv.config.port, 8282);
    assert.equal(inv.config.iptablesBackend, 'nft');
    const viaEnv = iptablesOf(parseCommandLine(['iptables', 'install', '--host-interface', 'cali+'], { HOST_IP: '10.0.0.2' }));
    assert.equal(viaEnv.config.hostIp, '10.0.0.2');
  });

  test('remove and status need neither host ip nor interface, and need no node name', () => {
    for (const action of ['remove', 'status'] as const) {
      const inv = iptablesOf(parseCommandLine(['iptables', action], {}));
      assert.equal(inv.action, action);
      assert.equal(inv.json, false);
      assert.equal(inv.config.hostIp, undefined);
      assert.deepEqual(inv.config.hostInterfaces, []);
      assert.equal(inv.config.iptablesBackend, 'auto');
    }
  });

  test('--json', () => {
    for (const action of ['remove', 'status'] as const) assert.equal(iptablesOf(parseCommandLine(['iptables', action, '--json'], {})).json, true);
    const install = iptablesOf(parseCommandLine(['iptables', 'install', '--json', '--host-ip', '10.0.0.1', '--host-interface', 'cali+'], {}));
    assert.equal(install.json, true);
  });

  test('agent-only flags are refused by the iptables commands', () => {
    const { code, output } = exitOf(parseCommandLine(['iptables', 'status', '--node-name', 'n'], {}));
    assert.notEqual(code, 0);
    assert.match(output, /--node-name/);
  });
});

describe('doctor', () => {
  function doctorOf(inv: Invocation) {
    assert.equal(inv.kind, 'doctor', inv.kind === 'exit' ? inv.output : inv.kind);
    return (inv as Extract<Invocation, { kind: 'doctor' }>).options;
  }

  test('no flags: the agent decides interfaces, backend and kubeconfig; the rest has defaults', () => {
    assert.deepEqual(doctorOf(parseCommandLine(['doctor'], {})), { metricsPort: 9620, metadataEndpoint: 'http://169.254.169.254', json: false, timeoutMs: 3000 });
  });

  test('every flag reaches the options', () => {
    const options = doctorOf(
      parseCommandLine(
        ['doctor', '--metrics-port', '9700', '--host-interface', 'cali+', '--host-interface', '!eth0', '--iptables-backend', 'legacy', '--kubeconfig', '/k',
          '--metadata-endpoint', 'http://127.0.0.1:1234', '--json', '--timeout', '1s'],
        {},
      ),
    );
    assert.deepEqual(options, { metricsPort: 9700, hostInterfaces: ['cali+', '!eth0'], iptablesBackend: 'legacy', kubeconfig: '/k', metadataEndpoint: 'http://127.0.0.1:1234', json: true, timeoutMs: 1000 });
  });

  test('help lists its flags with their defaults', () => {
    const { code, output } = exitOf(parseCommandLine(['doctor', '--help'], {}));
    assert.equal(code, 0);
    for (const flag of ['--metrics-port', '--host-interface', '--iptables-backend', '--kubeconfig', '--metadata-endpoint', '--json', '--timeout']) {
      assert.ok(helpEntry(output, flag), `doctor help lists ${flag}`);
    }
    assert.ok(helpEntry(output, '--metrics-port')!.includes('9620'));
    assert.ok(helpEntry(output, '--timeout')!.includes('3s'));
    assert.match(exitOf(parseCommandLine(['--help'], {})).output, /\bdoctor\b/);
  });

  const bad: [string[], string][] = [
    [['doctor', '--metrics-port', 'x'], '--metrics-port'],
    [['doctor', '--host-interface', 'a b'], '--host-interface'],
    [['doctor', '--iptables-backend', 'xt'], '--iptables-backend'],
    [['doctor', '--metadata-endpoint', 'ftp://x'], '--metadata-endpoint'],
    [['doctor', '--timeout', 'soon'], '--timeout'],
    [['doctor', '--bogus'], '--bogus'],
    [['doctor', 'extra'], 'too many arguments'],
  ];
  for (const [argv, named] of bad) {
    test(`kiam ${argv.join(' ')} → exit 2, names ${named}`, () => {
      const { code, output } = exitOf(parseCommandLine(argv, {}));
      assert.equal(code, 2);
      assert.ok(output.includes(named), output);
    });
  }
});

describe('--intercept and the eBPF flags', () => {
  const agent = (...flags: string[]) => parseCommandLine(['agent', '--node-name', 'n', ...flags], {});
  function interceptOf(inv: Invocation) {
    assert.equal(inv.kind, 'intercept', inv.kind === 'exit' ? inv.output : inv.kind);
    return inv as Extract<Invocation, { kind: 'intercept' }>;
  }

  test('the agent intercepts nothing by default; --iptables is --intercept iptables', () => {
    const none = agentOf(agent());
    assert.deepEqual([none.intercept, none.iptables, none.ebpf], ['none', false, false]);
    assert.equal(none.bpffs, '/sys/fs/bpf');
    assert.equal(none.cgroupRoot, undefined);
    for (const flags of [['--iptables'], ['--intercept', 'iptables'], ['--iptables', '--intercept', 'iptables']]) {
      const c = agentOf(agent(...flags, '--host-ip', '10.0.0.1', '--host-interface', 'cali+'));
      assert.deepEqual([c.intercept, c.iptables, c.ebpf], ['iptables', true, false], flags.join(' '));
    }
  });

  test('auto: both halves; ebpf: the redirect alone', () => {
    const auto = agentOf(agent('--intercept', 'auto', '--host-ip', '10.0.0.1', '--host-interface', 'cali+'));
    assert.deepEqual([auto.intercept, auto.iptables, auto.ebpf], ['auto', true, true]);
    const ebpf = agentOf(agent('--intercept', 'ebpf', '--host-ip', '10.0.0.1'));
    assert.deepEqual([ebpf.intercept, ebpf.iptables, ebpf.ebpf], ['ebpf', false, true]);
  });

  test('--intercept auto requires --host-ip and --host-interface for the agent; ebpf only --host-ip', () => {
    const auto = exitOf(agent('--intercept', 'auto'));
    assert.equal(auto.code, 2);
    assert.match(auto.output, /--host-ip \(or env HOST_IP\) is required with --intercept auto/);
    assert.match(auto.output, /--host-interface is required with --intercept auto/);
    const ebpf = exitOf(agent('--intercept', 'ebpf'));
    assert.match(ebpf.output, /--host-ip \(or env HOST_IP\) is required with --intercept ebpf/);
    assert.doesNotMatch(ebpf.output, /--host-interface/);
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n', '--intercept', 'ebpf'], { HOST_IP: '10.0.0.7' })).hostIp, '10.0.0.7');
  });

  test('--iptables with another --intercept is refused, naming both', () => {
    for (const mode of ['ebpf', 'auto', 'none']) {
      const { code, output } = exitOf(agent('--iptables', '--intercept', mode, '--host-ip', '10.0.0.1', '--host-interface', 'cali+'));
      assert.equal(code, 2);
      assert.match(output, new RegExp(`--iptables means --intercept iptables; it contradicts --intercept ${mode}`));
    }
  });

  test('every error names its flag', () => {
    const cases: Array<[string[], string]> = [
      [['--intercept', 'bpf'], '--intercept'],
      [['--host-ipv6', 'fe80::1'], '--host-ipv6'],
      [['--host-ipv6', '10.0.0.1'], '--host-ipv6'],
      [['--bpffs', '/sys/fs/bpf.d'], '--bpffs'],
      [['--bpffs', 'bpf'], '--bpffs'],
      [['--bpffs', '/sys/fs/bpf dir'], '--bpffs'],
      [['--cgroup-root', 'cgroup'], '--cgroup-root'],
      [['--cgroup-root', '/sys/fs/cgroup/../x'], '--cgroup-root'],
      [['--cgroup-root', '/sys/fs/cgroup/a;b'], '--cgroup-root'],
    ];
    for (const [flags, named] of cases) {
      const { code, output } = exitOf(agent(...flags));
      assert.equal(code, 2, flags.join(' '));
      const errors = output.trim().split('\n').filter((l) => l.startsWith('error'));
      assert.equal(errors.length, 1, output);
      assert.ok(errors[0]!.includes(named), `${flags.join(' ')} → ${output}`);
    }
  });

  test('--bpffs with a dot is refused (libbpf turns it into _ in pin paths); --cgroup-root may have dots', () => {
    assert.match(exitOf(agent('--bpffs', '/run/kiam.bpf')).output, /--bpffs: "\/run\/kiam\.bpf" may hold only letters, digits and \/_:@\+- \(no dots/);
    const c = agentOf(agent('--bpffs', '/run/kiam/bpffs', '--cgroup-root', '/sys/fs/cgroup/kubepods.slice'));
    assert.equal(c.bpffs, '/run/kiam/bpffs');
    assert.equal(c.cgroupRoot, '/sys/fs/cgroup/kubepods.slice');
  });

  test('--host-ipv6, or env HOST_IPV6; the flag wins; a bad HOST_IPV6 is reported against --host-ipv6', () => {
    assert.equal(agentOf(agent('--host-ipv6', '2001:db8::23')).hostIpv6, '2001:db8::23');
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n'], { HOST_IPV6: '2001:db8::24' })).hostIpv6, '2001:db8::24');
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n', '--host-ipv6', '2001:db8::25'], { HOST_IPV6: '2001:db8::24' })).hostIpv6, '2001:db8::25');
    assert.equal(agentOf(parseCommandLine(['agent', '--node-name', 'n'], { HOST_IPV6: '' })).hostIpv6, undefined);
    assert.match(exitOf(parseCommandLine(['agent', '--node-name', 'n'], { HOST_IPV6: 'fe80::1' })).output, /--host-ipv6: host IPv6 "fe80::1" is a link-local address/);
  });

  test('kiam intercept install|remove|status: auto by default; install needs what the mode needs', () => {
    const install = interceptOf(parseCommandLine(['intercept', 'install', '--host-ip', '10.0.0.1', '--host-interface', 'cali+'], {}));
    assert.deepEqual([install.command, install.action, install.config.intercept, install.config.ebpf, install.config.iptables], ['intercept', 'install', 'auto', true, true]);
    const missing = exitOf(parseCommandLine(['intercept', 'install'], {}));
    assert.equal(missing.code, 2);
    assert.match(missing.output, /--host-ip \(or env HOST_IP\) is required for install/);
    assert.match(missing.output, /--host-interface is required for install with --intercept auto/);
    const ebpf = interceptOf(parseCommandLine(['intercept', 'install', '--intercept', 'ebpf', '--bpffs', '/run/b', '--cgroup-root', '/run/c'], { HOST_IP: '10.0.0.2' }));
    assert.deepEqual([ebpf.config.intercept, ebpf.config.hostIp, ebpf.config.bpffs, ebpf.config.cgroupRoot], ['ebpf', '10.0.0.2', '/run/b', '/run/c']);
    assert.match(exitOf(parseCommandLine(['intercept', 'install', '--intercept', 'ebpf'], {})).output, /--host-ip/);
    for (const action of ['remove', 'status'] as const) {
      const inv = interceptOf(parseCommandLine(['intercept', action, '--json'], {}));
      assert.deepEqual([inv.action, inv.json, inv.config.intercept, inv.config.hostIp], [action, true, 'auto', undefined]);
    }
    assert.match(exitOf(parseCommandLine(['intercept', 'status', '--intercept', 'sometimes'], {})).output, /--intercept/);
    assert.match(exitOf(parseCommandLine(['intercept', 'status', '--iptables'], {})).output, /--iptables/, '--iptables is the agent’s flag');
  });

  test('kiam iptables …: the same as kiam intercept … with --intercept iptables, which it does not accept', () => {
    const inv = interceptOf(parseCommandLine(['iptables', 'install', '--host-ip', '10.0.0.1', '--host-interface', 'cali+'], {}));
    assert.deepEqual([inv.command, inv.config.intercept, inv.config.ebpf], ['iptables', 'iptables', false]);
    assert.match(exitOf(parseCommandLine(['iptables', 'status', '--intercept', 'ebpf'], {})).output, /--intercept/);
  });

  test('kiam init: auto by default, the install flags, --json', () => {
    const inv = parseCommandLine(['init', '--host-ip', '10.0.0.1', '--host-interface', 'cali+', '--json'], {});
    assert.equal(inv.kind, 'init', inv.kind === 'exit' ? inv.output : inv.kind);
    const init = inv as Extract<Invocation, { kind: 'init' }>;
    assert.deepEqual([init.config.intercept, init.json, init.config.bpffs], ['auto', true, '/sys/fs/bpf']);
    const ebpf = parseCommandLine(['init', '--intercept', 'ebpf'], { HOST_IP: '10.0.0.3' });
    assert.equal(ebpf.kind, 'init');
    const missing = exitOf(parseCommandLine(['init'], {}));
    assert.equal(missing.code, 2);
    assert.match(missing.output, /--host-ip/);
    assert.match(missing.output, /--host-interface/);
    assert.match(exitOf(parseCommandLine(['init', '--node-name', 'n'], {})).output, /--node-name/);
  });

  test('help: the agent lists --intercept (default none) and the eBPF flags; intercept and init list theirs', () => {
    const help = exitOf(parseCommandLine(['agent', '--help'], {})).output;
    for (const flag of ['--intercept', '--host-ipv6', '--cgroup-root', '--bpffs']) assert.ok(helpEntry(help, flag), `agent help lists ${flag}`);
    assert.match(helpEntry(help, '--intercept')!, /auto.*ebpf.*iptables.*none.*default: none/);
    assert.match(helpEntry(help, '--bpffs')!, /\/sys\/fs\/bpf/);
    assert.match(helpEntry(help, '--host-ipv6')!, /HOST_IPV6/);
    for (const argv of [['intercept', 'install', '--help'], ['init', '--help']]) {
      const out = exitOf(parseCommandLine(argv, {})).output;
      for (const flag of ['--intercept', '--host-ip', '--host-ipv6', '--host-interface', '--cgroup-root', '--bpffs', '--json']) assert.ok(helpEntry(out, flag), `${argv.join(' ')} lists ${flag}`);
      assert.match(helpEntry(out, '--intercept')!, /default: auto/);
    }
    assert.match(exitOf(parseCommandLine([], {})).output, /\bintercept\b[\s\S]*\binit\b/);
  });
});
