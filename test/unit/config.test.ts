import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig, ConfigError, DEFAULTS, hostIpv6Problem, parseDuration, pathProblem, type RawOptions } from '../../src/config.ts';

/** Build expecting failure; returns the problems (and asserts the thrown error is a well-formed ConfigError). */
function problemsOf(raw: RawOptions, env: NodeJS.ProcessEnv = {}, mode: 'agent' | 'iptables' | 'intercept' = 'agent'): string[] {
  let caught: unknown;
  try {
    buildConfig(raw, env, mode);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.name, 'ConfigError');
  assert.equal(caught.message, caught.problems.join('\n'));
  assert.ok(caught.problems.length > 0);
  return caught.problems;
}

const denied = (cfg: { denyRoutes: RegExp[] }, path: string) => cfg.denyRoutes.some((r) => r.test(path));

describe('buildConfig defaults', () => {
  const cfg = buildConfig({ nodeName: 'node-a' }, {});

  test('ports: metadata 8181, metrics 9620', () => {
    assert.equal(cfg.port, 8181);
    assert.equal(cfg.metricsPort, 9620);
  });

  test('durations: session 1h, pod wait 800ms, reconcile 10s', () => {
    assert.equal(cfg.sessionDurationSec, 60 * 60);
    assert.equal(cfg.podWaitMs, 800);
    assert.equal(cfg.reconcileIntervalMs, 10_000);
  });

  test('everything else has its documented default', () => {
    assert.equal(cfg.nodeName, 'node-a');
    assert.equal(cfg.hostIp, undefined);
    assert.equal(cfg.kubeconfig, undefined);
    assert.equal(cfg.iptables, false);
    assert.deepEqual(cfg.hostInterfaces, []);
    assert.equal(cfg.iptablesBackend, 'auto');
    assert.equal(cfg.removeRulesOnExit, false);
    assert.equal(cfg.metadataEndpoint, 'http://169.254.169.254');
    assert.deepEqual(cfg.allowRoutes, []);
    assert.equal(cfg.roleBaseArn, undefined);
    assert.equal(cfg.roleBaseArnAutodetect, false);
    assert.equal(cfg.defaultRole, undefined);
    assert.equal(cfg.sessionNameTemplate, DEFAULTS.sessionName);
    for (const p of ['{namespace}', '{pod}']) assert.ok(cfg.sessionNameTemplate.includes(p), `default session name uses ${p}`);
    assert.equal(cfg.region, '');
    assert.equal(cfg.stsEndpoint, undefined);
    assert.equal(cfg.namespaceRestriction, true);
    assert.equal(cfg.logLevel, 'info');
    assert.equal(cfg.logFormat, 'json');
  });

  test('default deny list blocks user-data and the instance identity credentials, not ordinary metadata', () => {
    assert.equal(denied(cfg, 'latest/user-data'), true);
    assert.equal(denied(cfg, 'latest/user-data/'), true);
    assert.equal(denied(cfg, '2021-07-15/user-data'), true);
    assert.equal(denied(cfg, 'latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance'), true);
    assert.equal(denied(cfg, 'latest/meta-data/identity-credentials'), true);
    assert.equal(denied(cfg, 'latest/meta-data/instance-id'), false);
    assert.equal(denied(cfg, 'latest/meta-data/placement/region'), false);
    assert.equal(denied(cfg, 'latest/dynamic/instance-identity/document'), false);
  });

  test('--deny-route-regexp adds to the default list: one added pattern never re-exposes user-data', () => {
    const custom = buildConfig({ nodeName: 'n', denyRouteRegexp: ['^latest/meta-data/hostname$'] }, {});
    assert.equal(custom.denyRoutes.length, DEFAULTS.denyRouteRegexp.length + 1);
    assert.equal(denied(custom, 'latest/meta-data/hostname'), true);
    assert.equal(denied(custom, 'latest/user-data'), true);
    assert.equal(denied(custom, 'latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance'), true);
    assert.equal(denied(custom, 'latest/meta-data/instance-id'), false);
  });

  test('--no-default-deny drops the default list, keeping only what is given', () => {
    const none = buildConfig({ nodeName: 'n', defaultDeny: false }, {});
    assert.deepEqual(none.denyRoutes, []);
    const own = buildConfig({ nodeName: 'n', defaultDeny: false, denyRouteRegexp: ['^latest/meta-data/hostname$'] }, {});
    assert.deepEqual(own.denyRoutes.map((r) => r.source), ['^latest\\/meta-data\\/hostname$']);
    assert.equal(denied(own, 'latest/user-data'), false);
  });

  test('--imdsv2: optional by default, required when asked, nothing else', () => {
    assert.equal(cfg.imdsv2, 'optional');
    assert.equal(buildConfig({ nodeName: 'n', imdsv2: 'required' }, {}).imdsv2, 'required');
    assert.deepEqual(problemsOf({ nodeName: 'n', imdsv2: 'v2' }), ['--imdsv2: "v2" is not one of optional, required']);
  });

  test('the defaults the command line passes in produce the same config', () => {
    const viaCli = buildConfig({ ...DEFAULTS, denyRouteRegexp: [...DEFAULTS.denyRouteRegexp], nodeName: 'node-a' }, {});
    assert.deepEqual(viaCli, cfg);
  });
});

describe('buildConfig environment', () => {
  test('NODE_NAME and HOST_IP fill in missing flags', () => {
    const cfg = buildConfig({}, { NODE_NAME: 'env-node', HOST_IP: '10.1.2.3' });
    assert.equal(cfg.nodeName, 'env-node');
    assert.equal(cfg.hostIp, '10.1.2.3');
  });

  test('flags win over the environment', () => {
    const cfg = buildConfig(
      { nodeName: 'flag-node', hostIp: '10.9.9.9', region: 'eu-west-1' },
      { NODE_NAME: 'env-node', HOST_IP: '10.1.2.3', AWS_REGION: 'us-west-2', AWS_DEFAULT_REGION: 'ap-south-1' },
    );
    assert.equal(cfg.nodeName, 'flag-node');
    assert.equal(cfg.hostIp, '10.9.9.9');
    assert.equal(cfg.region, 'eu-west-1');
  });

  test('region falls back to AWS_REGION, then AWS_DEFAULT_REGION', () => {
    assert.equal(buildConfig({ nodeName: 'n' }, { AWS_REGION: 'us-west-2', AWS_DEFAULT_REGION: 'ap-south-1' }).region, 'us-west-2');
    assert.equal(buildConfig({ nodeName: 'n' }, { AWS_DEFAULT_REGION: 'ap-south-1' }).region, 'ap-south-1');
  });

  test('an empty HOST_IP counts as unset', () => {
    assert.equal(buildConfig({ nodeName: 'n' }, { HOST_IP: '' }).hostIp, undefined);
  });

  test('a bad HOST_IP from the environment is reported against --host-ip', () => {
    const problems = problemsOf({ nodeName: 'n' }, { HOST_IP: 'not-an-ip' });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /--host-ip/);
    assert.match(problems[0]!, /not-an-ip/);
  });
});

describe('buildConfig validation', () => {
  test('every problem is reported at once, each naming its flag', () => {
    const problems = problemsOf({
      port: 'eighty',
      hostIp: '300.1.1.1',
      sessionDuration: '5m',
      allowRouteRegexp: ['('],
      roleBaseArn: 'arn:aws:iam::12:role/',
      sessionName: '{bogus}',
      logFormat: 'xml',
    });
    const flags = ['--node-name', '--port', '--host-ip', '--session-duration', '--allow-route-regexp', '--role-base-arn', '--session-name', '--log-format'];
    assert.equal(problems.length, flags.length, problems.join('\n'));
    for (const flag of flags) assert.ok(problems.some((p) => p.includes(flag)), `a problem names ${flag}:\n${problems.join('\n')}`);
  });

  test('the node name is required for the agent but not for the iptables commands', () => {
    const problems = problemsOf({});
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /--node-name/);
    assert.match(problems[0]!, /NODE_NAME/);
    const cfg = buildConfig({}, {}, 'iptables');
    assert.equal(cfg.nodeName, '');
    assert.equal(cfg.iptables, true);
  });

  test('--iptables requires --host-ip and --host-interface, both reported', () => {
    const problems = problemsOf({ nodeName: 'n', iptables: true });
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.ok(problems.some((p) => p.includes('--host-ip')));
    assert.ok(problems.some((p) => p.includes('--host-interface')));

    const onlyIface = problemsOf({ nodeName: 'n', iptables: true, hostInterface: ['cali+'] });
    assert.equal(onlyIface.length, 1);
    assert.match(onlyIface[0]!, /--host-ip/);

    const cfg = buildConfig({ nodeName: 'n', iptables: true, hostInterface: ['cali+', '!eth0'] }, { HOST_IP: '10.0.0.5' });
    assert.equal(cfg.iptables, true);
    assert.equal(cfg.hostIp, '10.0.0.5');
    assert.deepEqual(cfg.hostInterfaces, ['cali+', '!eth0']);
  });

  test('without --iptables neither host ip nor interface is required', () => {
    const cfg = buildConfig({ nodeName: 'n' }, {});
    assert.equal(cfg.iptables, false);
    assert.equal(cfg.hostIp, undefined);
  });

  test('host interface patterns: wildcards and negation accepted, junk rejected', () => {
    const ok = buildConfig({ nodeName: 'n', hostInterface: ['cali+', 'eni+', 'cni0', '!eth0', 'veth.1@if2'] }, {});
    assert.equal(ok.hostInterfaces.length, 5);
    for (const bad of ['a b', 'averyveryverylongname0', 'eth0;reboot', '', '!+', '-eth0', 'ca+li']) {
      const problems = problemsOf({ nodeName: 'n', hostInterface: [bad] });
      assert.equal(problems.length, 1, `"${bad}": ${problems.join('\n')}`);
      assert.match(problems[0]!, /--host-interface/);
    }
  });

  test('session duration is bounded to 15m..12h inclusive', () => {
    assert.equal(buildConfig({ nodeName: 'n', sessionDuration: '15m' }, {}).sessionDurationSec, 15 * 60);
    assert.equal(buildConfig({ nodeName: 'n', sessionDuration: '12h' }, {}).sessionDurationSec, 12 * 3600);
    assert.equal(buildConfig({ nodeName: 'n', sessionDuration: '1h30m' }, {}).sessionDurationSec, 90 * 60);
    assert.equal(buildConfig({ nodeName: 'n', sessionDuration: '3600' }, {}).sessionDurationSec, 3600);
    for (const bad of ['14m59s', '12h1s', '90', '0', 'forever', '']) {
      const problems = problemsOf({ nodeName: 'n', sessionDuration: bad });
      assert.equal(problems.length, 1, `"${bad}": ${problems.join('\n')}`);
      assert.match(problems[0]!, /--session-duration/);
    }
  });

  test('other durations are validated and named', () => {
    assert.equal(buildConfig({ nodeName: 'n', podWaitTimeout: '0' }, {}).podWaitMs, 0);
    assert.equal(buildConfig({ nodeName: 'n', reconcileInterval: '1m' }, {}).reconcileIntervalMs, 60_000);
    for (const [raw, flag] of [
      [{ podWaitTimeout: '11s' }, '--pod-wait-timeout'],
      [{ podWaitTimeout: 'soon' }, '--pod-wait-timeout'],
      [{ reconcileInterval: '500ms' }, '--reconcile-interval'],
      [{ reconcileInterval: 'often' }, '--reconcile-interval'],
    ] as const) {
      const problems = problemsOf({ nodeName: 'n', ...raw });
      assert.equal(problems.length, 1, problems.join('\n'));
      assert.ok(problems[0]!.includes(flag), problems[0]);
    }
  });

  test('bad regular expressions are reported for both lists, naming the pattern', () => {
    const problems = problemsOf({ nodeName: 'n', allowRouteRegexp: ['^ok$', '(unclosed'], denyRouteRegexp: ['[z-a]'] });
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.ok(problems.some((p) => p.includes('--allow-route-regexp') && p.includes('(unclosed')));
    assert.ok(problems.some((p) => p.includes('--deny-route-regexp') && p.includes('[z-a]')));
  });

  test('route patterns run on the linear-time engine: what it cannot run is refused, naming the flag', () => {
    // First what only the linear engine refuses (so that, on a backtracking engine, this test fails instead of hanging).
    const problems = problemsOf({ nodeName: 'n', allowRouteRegexp: ['^(a)\\1'], whitelistRouteRegexp: ['^/(?=latest)'], denyRouteRegexp: ['(?!x)'] });
    assert.equal(problems.length, 3, problems.join('\n'));
    for (const flag of ['--allow-route-regexp', '--whitelist-route-regexp', '--deny-route-regexp']) {
      assert.ok(problems.some((p) => p.startsWith(`${flag}:`) && p.includes('the linear-time engine cannot run it')), flag);
    }
    // A catastrophic pattern in each list, over a long path a pod chose, still answers.
    const cfg = buildConfig({ nodeName: 'n', allowRouteRegexp: ['^latest/(a+)+$'], whitelistRouteRegexp: ['^/latest/(a|a)*$'], denyRouteRegexp: ['^latest/(a+)+$'] }, {});
    const path = `latest/${'a'.repeat(50_000)}!`;
    assert.equal(denied(cfg, path), false);
    assert.equal(cfg.allowRoutes.some((r) => r.test(path)), false);
    assert.equal(cfg.allowRoutes.some((r) => r.test(`latest/${'a'.repeat(50_000)}`)), true);
  });

  test('good regular expressions are compiled', () => {
    const cfg = buildConfig({ nodeName: 'n', allowRouteRegexp: ['^latest/meta-data/', '^latest/dynamic/'] }, {});
    assert.equal(cfg.allowRoutes.length, 2);
    assert.ok(cfg.allowRoutes.every((r) => r instanceof RegExp));
    assert.ok(cfg.allowRoutes[0]!.test('latest/meta-data/instance-id'));
  });

  test('role base ARN must be a role prefix ending in /', () => {
    for (const good of ['arn:aws:iam::123456789012:role/', 'arn:aws:iam::123456789012:role/kiam/', 'arn:aws-cn:iam::123456789012:role/']) {
      assert.equal(buildConfig({ nodeName: 'n', roleBaseArn: good }, {}).roleBaseArn, good);
    }
    for (const bad of ['arn:aws:iam::123456789012:role', 'arn:aws:iam::12345:role/', 'arn:aws:s3:::bucket/', 'my-role', 'arn:aws:iam::123456789012:user/']) {
      const problems = problemsOf({ nodeName: 'n', roleBaseArn: bad });
      assert.equal(problems.length, 1, `"${bad}": ${problems.join('\n')}`);
      assert.match(problems[0]!, /--role-base-arn/);
    }
  });

  test('role base ARN and autodetect are mutually exclusive', () => {
    const problems = problemsOf({ nodeName: 'n', roleBaseArn: 'arn:aws:iam::123456789012:role/', roleBaseArnAutodetect: true });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /--role-base-arn-autodetect/);
    assert.equal(buildConfig({ nodeName: 'n', roleBaseArnAutodetect: true }, {}).roleBaseArnAutodetect, true);
  });

  test('session name: known placeholders accepted, an unknown one named', () => {
    const tpl = '{namespace}-{pod}-{serviceAccount}-{node}-{role}';
    assert.equal(buildConfig({ nodeName: 'n', sessionName: tpl }, {}).sessionNameTemplate, tpl);
    const problems = problemsOf({ nodeName: 'n', sessionName: '{namespace}.{podname}' });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /--session-name/);
    assert.ok(problems[0]!.includes('{podname}'), problems[0]);
    assert.match(problemsOf({ nodeName: 'n', sessionName: '  ' })[0]!, /--session-name/);
  });

  test('ports must be 1..65535 and distinct; each bad port reported once', () => {
    assert.equal(buildConfig({ nodeName: 'n', port: '1', metricsPort: '65535' }, {}).port, 1);
    const same = problemsOf({ nodeName: 'n', port: '9000', metricsPort: '9000' });
    assert.equal(same.length, 1);
    assert.match(same[0]!, /--metrics-port/);
    const bad = problemsOf({ nodeName: 'n', port: '0', metricsPort: '65536' });
    assert.equal(bad.length, 2, bad.join('\n'));
    assert.ok(bad.some((p) => p.startsWith('--port')));
    assert.ok(bad.some((p) => p.startsWith('--metrics-port')));
    assert.match(problemsOf({ nodeName: 'n', port: '80.5' })[0]!, /--port/);
  });

  test('metadata endpoint: trailing slash dropped, only plain http base URLs accepted', () => {
    assert.equal(buildConfig({ nodeName: 'n', metadataEndpoint: 'http://127.0.0.1:9/' }, {}).metadataEndpoint, 'http://127.0.0.1:9');
    for (const bad of ['https://169.254.169.254', 'http://169.254.169.254/latest', 'http://x/?a=1', 'not a url']) {
      const problems = problemsOf({ nodeName: 'n', metadataEndpoint: bad });
      assert.equal(problems.length, 1, `"${bad}": ${problems.join('\n')}`);
      assert.match(problems[0]!, /--metadata-endpoint/);
    }
  });

  test('region, STS endpoint, default role, backend, log level and format are checked', () => {
    for (const [raw, flag] of [
      [{ region: 'Europe' }, '--region'],
      [{ stsEndpoint: 'ftp://sts' }, '--sts-endpoint'],
      [{ defaultRole: 'has space' }, '--default-role'],
      [{ iptablesBackend: 'foo' }, '--iptables-backend'],
      [{ logLevel: 'loud' }, '--log-level'],
      [{ logFormat: 'xml' }, '--log-format'],
    ] as const) {
      const problems = problemsOf({ nodeName: 'n', ...raw });
      assert.equal(problems.length, 1, problems.join('\n'));
      assert.ok(problems[0]!.includes(flag), problems[0]);
    }
    const cfg = buildConfig(
      { nodeName: 'n', region: 'us-gov-west-1', stsEndpoint: 'http://127.0.0.1:4566', defaultRole: 'reader', iptablesBackend: 'nft', logLevel: 'debug', logFormat: 'pretty' },
      {},
    );
    assert.deepEqual(
      [cfg.region, cfg.stsEndpoint, cfg.defaultRole, cfg.iptablesBackend, cfg.logLevel, cfg.logFormat],
      ['us-gov-west-1', 'http://127.0.0.1:4566', 'reader', 'nft', 'debug', 'pretty'],
    );
  });

  test('namespace restriction is on by default and off with --no-namespace-restriction', () => {
    assert.equal(buildConfig({ nodeName: 'n' }, {}).namespaceRestriction, true);
    assert.equal(buildConfig({ nodeName: 'n', namespaceRestriction: true }, {}).namespaceRestriction, true);
    assert.equal(buildConfig({ nodeName: 'n', namespaceRestriction: false }, {}).namespaceRestriction, false);
  });
});

describe('buildConfig result', () => {
  test('is frozen', () => {
    const cfg = buildConfig({ nodeName: 'n' }, {});
    assert.ok(Object.isFrozen(cfg));
    assert.throws(() => {
      (cfg as { port: number }).port = 1;
    }, TypeError);
    assert.equal(cfg.port, 8181);
  });

  test('its lists are frozen and not shared with the raw options', () => {
    const raw: RawOptions = { nodeName: 'n', hostInterface: ['cali+'], allowRouteRegexp: ['^a'], denyRouteRegexp: ['^b'] };
    const cfg = buildConfig(raw, {});
    for (const list of [cfg.hostInterfaces, cfg.allowRoutes, cfg.denyRoutes]) assert.ok(Object.isFrozen(list));
    assert.throws(() => cfg.hostInterfaces.push('eth0; rm -rf /'), TypeError);
    raw.hostInterface!.push('eni+');
    assert.deepEqual(cfg.hostInterfaces, ['cali+']);
  });
});

describe('parseDuration', () => {
  const cases: [string, number][] = [
    ['800ms', 800],
    ['10s', 10_000],
    ['15m', 15 * 60_000],
    ['1h', 3_600_000],
    ['1h30m', 90 * 60_000],
    ['2h3m4s5ms', 2 * 3_600_000 + 3 * 60_000 + 4_000 + 5],
    ['1.5s', 1500],
    ['90', 90_000],
    ['0', 0],
    [' 10s ', 10_000],
  ];
  for (const [text, ms] of cases) test(`"${text}" → ${ms} ms`, () => assert.equal(parseDuration(text), ms));

  for (const bad of ['', 'garbage', '10x', 's', '-5s', '1h 30m', '10s!', 'ms10', '1d']) {
    test(`"${bad}" → NaN`, () => assert.ok(Number.isNaN(parseDuration(bad)), String(parseDuration(bad))));
  }
});

describe('--host-ip', () => {
  for (const good of ['10.0.0.1', '192.168.1.10', '172.31.255.254']) test(`${good} is accepted`, () => assert.equal(buildConfig({ nodeName: 'n', hostIp: good }, {}).hostIp, good));
  for (const bad of ['256.0.0.1', '10.0.0', '10.0.0.1.2', '010.0.0.1', 'a.b.c.d', '::1', '10.0.0.1 ', '0.0.0.0', '127.0.0.1', '169.254.169.254', '224.0.0.1']) {
    test(`"${bad}" is refused, naming the flag`, () => assert.match(problemsOf({ nodeName: 'n', hostIp: bad }).join('\n'), /^--host-ip: /));
  }
});

describe('--intercept', () => {
  test('defaults: none for the agent, auto for `kiam intercept …` and `kiam init`, iptables for `kiam iptables …`', () => {
    const agent = buildConfig({ nodeName: 'n' }, {});
    assert.deepEqual([agent.intercept, agent.iptables, agent.ebpf, agent.bpffs, agent.cgroupRoot, agent.hostIpv6], ['none', false, false, '/sys/fs/bpf', undefined, undefined]);
    const intercept = buildConfig({}, {}, 'intercept');
    assert.deepEqual([intercept.intercept, intercept.iptables, intercept.ebpf], ['auto', true, true]);
    const iptables = buildConfig({}, {}, 'iptables');
    assert.deepEqual([iptables.intercept, iptables.iptables, iptables.ebpf], ['iptables', true, false]);
  });

  test('each mode and what it turns on', () => {
    const flags = { nodeName: 'n', hostIp: '10.0.0.1', hostInterface: ['cali+'] };
    for (const [mode, iptables, ebpf] of [['auto', true, true], ['ebpf', false, true], ['iptables', true, false], ['none', false, false]] as const) {
      const c = buildConfig({ ...flags, intercept: mode }, {});
      assert.deepEqual([c.intercept, c.iptables, c.ebpf], [mode, iptables, ebpf], mode);
    }
  });

  test('an unknown mode is named', () => {
    assert.deepEqual(problemsOf({ nodeName: 'n', intercept: 'bpf' }), ['--intercept: "bpf" is not one of auto, ebpf, iptables, none']);
  });

  test('--iptables is --intercept iptables; with any other --intercept it is refused', () => {
    const flags = { nodeName: 'n', hostIp: '10.0.0.1', hostInterface: ['cali+'] };
    assert.equal(buildConfig({ ...flags, iptables: true, intercept: 'iptables' }, {}).intercept, 'iptables');
    for (const mode of ['ebpf', 'auto', 'none']) {
      assert.deepEqual(problemsOf({ ...flags, iptables: true, intercept: mode }), [`--iptables means --intercept iptables; it contradicts --intercept ${mode}`]);
    }
  });

  test('auto needs --host-ip and --host-interface for the agent, ebpf only --host-ip, none neither', () => {
    const auto = problemsOf({ nodeName: 'n', intercept: 'auto' });
    assert.equal(auto.length, 2, auto.join('\n'));
    assert.ok(auto.some((p) => p.startsWith('--host-ip (or env HOST_IP) is required with --intercept auto')));
    assert.ok(auto.some((p) => p.startsWith('--host-interface is required with --intercept auto')));
    assert.deepEqual(problemsOf({ nodeName: 'n', intercept: 'ebpf' }), ['--host-ip (or env HOST_IP) is required with --intercept ebpf']);
    assert.equal(buildConfig({ nodeName: 'n', intercept: 'ebpf' }, { HOST_IP: '10.0.0.1' }).hostIp, '10.0.0.1');
    assert.equal(buildConfig({ nodeName: 'n', intercept: 'none' }, {}).intercept, 'none');
    // The one-shot commands check what install needs themselves (cli.ts): remove and status need nothing.
    assert.equal(buildConfig({}, {}, 'intercept').hostIp, undefined);
  });
});

describe('--bpffs and --cgroup-root', () => {
  test('absolute paths of plain characters; --bpffs without dots', () => {
    assert.equal(buildConfig({ nodeName: 'n', bpffs: '/run/kiam/bpffs', cgroupRoot: '/run/kiam/cgroupv2' }, {}).bpffs, '/run/kiam/bpffs');
    assert.equal(buildConfig({ nodeName: 'n', cgroupRoot: '/sys/fs/cgroup/kubepods.slice' }, {}).cgroupRoot, '/sys/fs/cgroup/kubepods.slice');
    assert.deepEqual(problemsOf({ nodeName: 'n', bpffs: '/sys/fs/bpf.d' }), [
      '--bpffs: "/sys/fs/bpf.d" may hold only letters, digits and /_:@+- (no dots: libbpf turns them into _ in pin paths)',
    ]);
    for (const bad of ['sys/fs/bpf', '', '/sys/fs/bpf/kiam x', '/a/../b', '/a\nb']) {
      const problems = problemsOf({ nodeName: 'n', bpffs: bad });
      assert.equal(problems.length, 1, `${JSON.stringify(bad)}: ${problems.join('\n')}`);
      assert.match(problems[0]!, /^--bpffs: /);
    }
    for (const bad of ['cgroup', '/sys/fs/cgroup/a b', '/sys/fs/cgroup/../../etc', '/sys/fs/cgroup/$(x)']) {
      assert.deepEqual(problemsOf({ nodeName: 'n', cgroupRoot: bad }).map((p) => p.split(':')[0]), ['--cgroup-root'], bad);
    }
  });

  test('pathProblem: the flag in every message', () => {
    assert.equal(pathProblem('--x', '/a/b_c-d:e@f+g', false), undefined);
    assert.equal(pathProblem('--x', '/a.b', true), undefined);
    assert.match(pathProblem('--x', '/a.b', false) ?? '', /^--x: /);
    assert.match(pathProblem('--x', 'a', true) ?? '', /^--x: "a" must be an absolute path$/);
    assert.match(pathProblem('--x', '/a/..', true) ?? '', /^--x: "\/a\/\.\." must not contain '\.\.'$/);
  });
});

describe('--host-ipv6', () => {
  for (const good of ['2001:db8::23', '2600:1f18:abc:1::5', 'fd12:3456:789a::1', '2001:0db8:0000:0000:0000:0000:0000:0023', '2001:DB8::23']) {
    test(`${good} is accepted`, () => {
      assert.equal(hostIpv6Problem(good), undefined);
      assert.ok(buildConfig({ nodeName: 'n', hostIpv6: good }, {}).hostIpv6);
    });
  }
  const bad: Array<[string, RegExp]> = [
    ['::', /unspecified/],
    ['::1', /loopback/],
    ['fd00:ec2::254', /the metadata address itself/],
    ['FD00:EC2:0::254', /the metadata address itself/],
    ['fe80::1', /link-local/],
    ['febf::1', /link-local/],
    ['ff02::1', /multicast/],
    ['::ffff:10.0.0.1', /IPv4-mapped or IPv4-compatible/],
    ['::ffff:a00:1', /IPv4-mapped or IPv4-compatible/],
    ['::10.0.0.1', /IPv4-mapped or IPv4-compatible/],
    ['fe80::1%eth0', /must be an IPv6 address/],
    ['10.0.0.1', /must be an IPv6 address/],
    ['2001:db8::1::2', /must be an IPv6 address/],
    ['2001:db8::g', /must be an IPv6 address/],
    ['[2001:db8::1]', /must be an IPv6 address/],
    ['2001:db8::1 ', /must be an IPv6 address/],
    ['', /must be an IPv6 address/],
  ];
  for (const [ip, why] of bad) {
    test(`${JSON.stringify(ip)} is refused, naming the flag`, () => {
      const problems = problemsOf({ nodeName: 'n', hostIpv6: ip });
      assert.equal(problems.length, 1, problems.join('\n'));
      assert.match(problems[0]!, /^--host-ipv6: host IPv6 /);
      assert.match(problems[0]!, why);
    });
  }

  test('HOST_IPV6 fills in a missing flag; the flag wins; empty counts as unset; a bad one is reported against --host-ipv6', () => {
    assert.equal(buildConfig({ nodeName: 'n' }, { HOST_IPV6: '2001:db8::24' }).hostIpv6, '2001:db8::24');
    assert.equal(buildConfig({ nodeName: 'n', hostIpv6: '2001:db8::25' }, { HOST_IPV6: '2001:db8::24' }).hostIpv6, '2001:db8::25');
    assert.equal(buildConfig({ nodeName: 'n' }, { HOST_IPV6: '' }).hostIpv6, undefined);
    assert.deepEqual(problemsOf({ nodeName: 'n' }, { HOST_IPV6: '::1' }).map((p) => p.split(':')[0]), ['--host-ipv6']);
  });

  test('is optional in every mode', () => {
    assert.equal(buildConfig({ nodeName: 'n', intercept: 'ebpf', hostIp: '10.0.0.1' }, {}).hostIpv6, undefined);
  });

  test("HOST_IPS (the downward API's status.hostIPs, comma-separated) gives the IPv6 entry when HOST_IPV6 is unset", () => {
    assert.equal(buildConfig({ nodeName: 'n' }, { HOST_IPS: '10.0.1.23,2600:1f14::17' }).hostIpv6, '2600:1f14::17');
    assert.equal(buildConfig({ nodeName: 'n' }, { HOST_IPS: '10.0.1.23' }).hostIpv6, undefined, 'an IPv4-only node');
    assert.equal(buildConfig({ nodeName: 'n' }, { HOST_IPS: '10.0.1.23,2600:1f14::17', HOST_IPV6: '2600:1f14::18' }).hostIpv6, '2600:1f14::18');
    assert.equal(buildConfig({ nodeName: 'n', hostIpv6: '2600:1f14::19' }, { HOST_IPS: '10.0.1.23,2600:1f14::17' }).hostIpv6, '2600:1f14::19');
  });
});
