import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { parseCommandLine, type Invocation } from '../../src/cli.ts';
import { PEER_FLAGS } from '../../src/cli-aliases.ts';
import type { Config } from '../../src/config.ts';
import { routeAllowed } from '../../src/server/paths.ts';

const ENV = { NODE_NAME: 'ip-10-0-1-23.ec2.internal', HOST_IP: '10.0.1.23' };
const BASE = 'arn:aws:iam::123456789012:role/';

function agent(argv: string[], env: NodeJS.ProcessEnv = ENV): { config: Config; warnings: string[] } {
  const inv = parseCommandLine(argv, env);
  assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : inv.kind);
  const a = inv as Extract<Invocation, { kind: 'agent' }>;
  return { config: a.config, warnings: a.warnings };
}

function exit(argv: string[], env: NodeJS.ProcessEnv = ENV): { code: number; output: string } {
  const inv = parseCommandLine(argv, env);
  assert.equal(inv.kind, 'exit', `expected exit 2 for ${argv.join(' ')}, got ${inv.kind}`);
  return inv as Extract<Invocation, { kind: 'exit' }>;
}

/** Config as plain data: RegExps by source and by class (kiam's leading-slash patterns differ from ours). */
function plain(config: Config): unknown {
  const re = (r: RegExp) => `${r.constructor.name}:${r.source}`;
  return { ...config, allowRoutes: config.allowRoutes.map(re), denyRoutes: config.denyRoutes.map(re) };
}

describe('peer flags: aliases give the same Config as our own flags', () => {
  const cases: Array<[string, string[], string[]]> = [
    ['kube2iam --base-role-arn', [`--base-role-arn=${BASE}`], ['--role-base-arn', BASE]],
    ['kube2iam --base-role-arn without the trailing slash', ['--base-role-arn', BASE.slice(0, -1)], ['--role-base-arn', BASE]],
    ['kube2iam --auto-discover-base-arn', ['--auto-discover-base-arn'], ['--role-base-arn-autodetect']],
    ['kube2iam --auto-discover-base-arn=true', ['--auto-discover-base-arn=true'], ['--role-base-arn-autodetect']],
    ['kube2iam --auto-discover-base-arn=false', ['--auto-discover-base-arn=false'], []],
    ['kube2iam --app-port', ['--app-port=8282'], ['--port', '8282']],
    ['kube2iam --node', ['--node=node-b'], ['--node-name', 'node-b']],
    ['kube2iam --iam-role-session-ttl (STS was asked for twice the TTL)', ['--iam-role-session-ttl=30m'], ['--session-duration', '1h']],
    ['kube2iam --iam-role-session-ttl as Go prints it', ['--iam-role-session-ttl', '15m0s'], ['--session-duration', '30m']],
    ['kube2iam --namespace-restrictions', ['--namespace-restrictions'], ['--namespace-restriction']],
    ['kube2iam --namespace-restrictions=false', ['--namespace-restrictions=false'], ['--no-namespace-restriction']],
    ['kube2iam --metadata-addr host:port', ['--metadata-addr=127.0.0.1:18080'], ['--metadata-endpoint', 'http://127.0.0.1:18080']],
    ['kube2iam --metadata-addr default', ['--metadata-addr', '169.254.169.254'], ['--metadata-endpoint', 'http://169.254.169.254']],
    ['kube2iam --verbose', ['--verbose'], ['--log-level', 'debug']],
    ['kube2iam --verbose beats --log-level, as in kube2iam', ['--verbose', '--log-level=error'], ['--log-level', 'debug']],
    ['logrus level names', ['--log-level=warning'], ['--log-level', 'warn']],
    ['kube2iam --iptables=true', ['--iptables=true', '--host-interface=eni+'], ['--iptables', '--host-interface', 'eni+']],
    ['kube2iam --iptables=false', ['--iptables=false'], []],
    ['kube2iam --log-format=json', ['--log-format=json'], ['--log-format', 'json']],
    ['kube2iam --namespace-restriction-format', ['--namespace-restriction-format=regexp'], ['--namespace-restriction-format', 'regexp']],
    ['kiam --host', ['--host=10.0.2.2', '--iptables', '--host-interface=cali+'], ['--host-ip', '10.0.2.2', '--iptables', '--host-interface', 'cali+']],
    ['kiam --level', ['--level=warn'], ['--log-level', 'warn']],
    ['kiam --json-log', ['--json-log'], ['--log-format', 'json']],
    ['kiam --iptables-remove', ['--iptables-remove'], ['--remove-rules-on-exit']],
    ['kiam --no-iptables-remove', ['--no-iptables-remove'], []],
    ['kiam --prometheus-listen-addr', ['--prometheus-listen-addr=0.0.0.0:9621'], ['--metrics-port', '9621']],
    ['kiam --prometheus-listen-addr :port', ['--prometheus-listen-addr', ':9621'], ['--metrics-port', '9621']],
    ['kiam server --session', ['--session=prod'], ['--session-name', 'kiam-prod']],
    ['kiam --port, same name and meaning', ['--port=3100'], ['--port', '3100']],
  ];
  for (const [name, peer, ours] of cases) {
    test(name, () => {
      const viaPeer = agent(['agent', ...peer]).config;
      const viaOurs = agent(['agent', ...ours]).config;
      assert.deepEqual(plain(viaPeer), plain(viaOurs));
    });
  }

  test('the aliases really change the config (the comparison above is not vacuous)', () => {
    const base = plain(agent(['agent']).config);
    let checked = 0;
    for (const [name, peer, ours] of cases) {
      if (isDeepStrictEqual(plain(agent(['agent', ...ours]).config), base)) continue; // e.g. 30m TTL = our 1h default
      assert.notDeepEqual(plain(agent(['agent', ...peer]).config), base, name);
      checked++;
    }
    assert.ok(checked >= 20, `only ${checked} cases change the config`);
  });

  test('pure renames warn about nothing', () => {
    assert.deepEqual(agent(['agent', '--host=10.0.2.2', '--level=debug', '--json-log', '--iptables-remove', '--whitelist-route-regexp=^$']).warnings, []);
    assert.deepEqual(agent(['agent', '--app-port=8282', '--node=node-b', '--namespace-restrictions', '--verbose']).warnings, []);
  });

  test("kiam's --whitelist-route-regexp keeps meaning what it meant: kiam matched the path with its leading slash", () => {
    const { config } = agent(['agent', '--whitelist-route-regexp', '^/latest/meta-data/placement/availability-zone$']);
    const allowed = (path: string) => routeAllowed(path, config.allowRoutes, config.denyRoutes);
    assert.equal(allowed('latest/meta-data/placement/availability-zone'), true);
    assert.equal(allowed('latest/meta-data/instance-id'), false);
    assert.equal(allowed('latest/user-data'), false, 'our default deny list still applies');
    // The same pattern through our own flag matches nothing: ours see no leading slash.
    const ours = agent(['agent', '--allow-route-regexp', '^/latest/meta-data/placement/availability-zone$']).config;
    assert.equal(routeAllowed('latest/meta-data/placement/availability-zone', ours.allowRoutes, ours.denyRoutes), false);
    // Unanchored kiam patterns (aws-node-termination-handler's docs) still work.
    const nth = agent(['agent', '--whitelist-route-regexp=\\/latest\\/dynamic\\/instance-identity\\/document']).config;
    assert.equal(routeAllowed('latest/dynamic/instance-identity/document', nth.allowRoutes, nth.denyRoutes), true);
  });

  test('an invalid whitelist pattern is a config error naming the flag', () => {
    const { code, output } = exit(['agent', '--whitelist-route-regexp', '(']);
    assert.equal(code, 2);
    assert.match(output, /--whitelist-route-regexp: "\(" is not a valid regular expression/);
  });

  test("kube2iam's metrics port on the app port (its chart's default) moves to our metrics port, with a warning", () => {
    const { config, warnings } = agent(['agent', '--app-port=8181', '--metrics-port=8181']);
    assert.equal(config.port, 8181);
    assert.equal(config.metricsPort, 9620);
    assert.ok(warnings.some((w) => w.startsWith('--metrics-port 8181 is the metadata port')), warnings.join('\n'));
    // Our own flags keep refusing the clash.
    assert.match(exit(['agent', '--port=8181', '--metrics-port=8181']).output, /--metrics-port must differ from --port/);
  });

  test('a kube2iam manifest without a subcommand runs the agent', () => {
    const { config } = agent(['--node=node-b', '--base-role-arn', BASE]);
    assert.equal(config.nodeName, 'node-b');
    assert.equal(config.roleBaseArn, BASE);
    assert.equal(agent(['--port', '8282']).config.port, 8282, 'our own flags too');
  });
});

describe('peer flags: accepted and ignored with a warning', () => {
  const ignored: Array<[string, string[]]> = [
    ['--cert', ['--cert=/etc/kiam/tls/agent.pem']],
    ['--key', ['--key', '/etc/kiam/tls/agent-key.pem']],
    ['--ca', ['--ca=/etc/kiam/tls/ca.pem']],
    ['--server-address', ['--server-address=kiam-server:443']],
    ['--server-address-refresh', ['--server-address-refresh=0s']],
    ['--gateway-timeout-creation', ['--gateway-timeout-creation=1s']],
    ['--grpc-keepalive-time-duration', ['--grpc-keepalive-time-duration=10s']],
    ['--grpc-keepalive-timeout-duration', ['--grpc-keepalive-timeout-duration=2s']],
    ['--grpc-keepalive-permit-without-stream', ['--grpc-keepalive-permit-without-stream']],
    ['--grpc-keepalive-time-ms', ['--grpc-keepalive-time-ms=10000']],
    ['--grpc-keepalive-timeout-ms', ['--grpc-keepalive-timeout-ms=2000']],
    ['--prometheus-sync-interval', ['--prometheus-sync-interval=5s']],
    ['--pprof-listen-addr', ['--pprof-listen-addr=localhost:9990']],
    ['--statsd', ['--statsd=127.0.0.1:8125']],
    ['--statsd-prefix', ['--statsd-prefix=kiam']],
    ['--statsd-interval', ['--statsd-interval=100ms']],
    ['--session-refresh', ['--session-refresh=5m']],
    ['--fetchers', ['--fetchers=8']],
    ['--prefetch-buffer-size', ['--prefetch-buffer-size=1000']],
    ['--sync', ['--sync=1m']],
    ['--bind', ['--bind=0.0.0.0:443']],
    ['--iam-role-error-ttl', ['--iam-role-error-ttl=1m']],
    ['--iam-role-session-name-key', ['--iam-role-session-name-key=iam.amazonaws.com/session-name']],
    ['--eks-cluster-arn', ['--eks-cluster-arn=arn:aws:eks:eu-west-1:123456789012:cluster/c']],
    ['--eks-cluster-name', ['--eks-cluster-name=c']],
    ['--debug', ['--debug']],
    ['--backoff-max-interval', ['--backoff-max-interval=1s']],
    ['--backoff-max-elapsed-time', ['--backoff-max-elapsed-time=2s']],
    ['--cache-resync-period', ['--cache-resync-period=30m']],
    ['--cache-sync-attempts', ['--cache-sync-attempts=10']],
    ['--healthcheck-interval', ['--healthcheck-interval=30s']],
    ['--resolve-duplicate-cache-ips', ['--resolve-duplicate-cache-ips']],
    ['--use-regional-sts-endpoint', ['--use-regional-sts-endpoint=true']],
  ];
  const baseline = agent(['agent', '--whitelist-route-regexp=^$', '--namespace-restrictions']).config;

  for (const [flag, args] of ignored) {
    test(flag, () => {
      // Flags that mark the manifest as kiam's or kube2iam's keep the mode warnings quiet for the comparison.
      const { config, warnings } = agent(['agent', '--whitelist-route-regexp=^$', '--namespace-restrictions', ...args]);
      assert.deepEqual(plain(config), plain(baseline), 'the config does not change');
      assert.equal(warnings.length, 1, warnings.join('\n'));
      assert.ok(warnings[0]!.startsWith(`${flag} is ignored: `), warnings[0]);
    });
  }

  test('a value after an ignored flag is consumed, not taken for a flag of ours', () => {
    const { config } = agent(['agent', '--cert', '/tls/agent.pem', '--port', '8282']);
    assert.equal(config.port, 8282);
  });

  test('a boolean peer flag set to false warns about nothing', () => {
    assert.deepEqual(agent(['agent', '--debug=false', '--namespace-restrictions']).warnings, []);
    assert.deepEqual(agent(['agent', '--allow-ip-query=false', '--whitelist-route-regexp=^$']).warnings, []);
    assert.deepEqual(agent(['agent', '--no-allow-ip-query', '--whitelist-route-regexp=^$']).warnings, []);
  });

  test("kube2iam's text logs and kiam's --no-json-log become JSON, with a warning", () => {
    for (const args of [['--log-format=text'], ['--no-json-log', '--whitelist-route-regexp=^$']]) {
      const { config, warnings } = agent(['agent', ...args]);
      assert.equal(config.logFormat, 'json');
      assert.equal(warnings.length, 1, warnings.join('\n'));
    }
  });

  test('--prometheus-listen-addr on a single address warns that metrics listen on all of them', () => {
    const { config, warnings } = agent(['agent', '--prometheus-listen-addr=localhost:9620', '--whitelist-route-regexp=^$']);
    assert.equal(config.metricsPort, 9620);
    assert.match(warnings.join('\n'), /the host part "localhost" is ignored/);
  });

  test('kube2iam flags without --namespace-restrictions warn that the restriction is on here', () => {
    const { config, warnings } = agent(['agent', '--node=node-b']);
    assert.equal(config.namespaceRestriction, true);
    assert.deepEqual(warnings.length, 1);
    assert.match(warnings[0]!, /kiam always applies the namespace restriction/);
    assert.match(agent(['agent', '--namespace-restrictions=false']).warnings.join('\n'), /namespace restriction is OFF/);
  });

  test("kiam flags without --whitelist-route-regexp warn that kiam's deny-all default is not ours", () => {
    const { config, warnings } = agent(['agent', '--json-log']);
    assert.deepEqual(config.allowRoutes, []);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /--deny-route-regexp '\.\*'/);
  });

  test('our own flags alone warn about nothing', () => {
    assert.deepEqual(agent(['agent', '--iptables', '--host-interface', 'cali+', '--log-level', 'debug']).warnings, []);
  });
});

describe('peer flags: refused (exit 2, naming the flag)', () => {
  const rejected: Array<[string[], RegExp]> = [
    [['--iam-role-key=example.com/role'], /^error: --iam-role-key "example\.com\/role" is not supported: .*iam\.amazonaws\.com\/role only$/m],
    [['--iam-external-id', 'example.com/external-id'], /^error: --iam-external-id "example\.com\/external-id" is not supported/m],
    [['--namespace-key=example.com/roles'], /^error: --namespace-key "example\.com\/roles" is not supported/m],
    [['--auto-discover-default-role'], /^error: --auto-discover-default-role is not supported: .*node's own role/m],
    [['--auto-discover-default-role=true'], /^error: --auto-discover-default-role is not supported/m],
    [['--allow-ip-query'], /^error: --allow-ip-query is not supported: .*source address/m],
    [['--insecure'], /^error: --insecure is not supported/m],
    [['--api-server=https://10.0.0.1'], /^error: --api-server is not supported: .*--kubeconfig/m],
    [['--api-token', 'abc'], /^error: --api-token is not supported/m],
    [['--iam-enable-pod-identity-tags'], /^error: --iam-enable-pod-identity-tags is not supported: .*session tags/m],
    [['--assume-role-arn=arn:aws:iam::123456789012:role/kiam-server'], /^error: --assume-role-arn is not supported: .*default chain/m],
    [['--role-alias', 'a=b'], /^error: --role-alias is not supported/m],
    [['--iam-role-session-ttl=5m'], /^error: --iam-role-session-ttl "5m": kube2iam asked STS for sessions of twice this TTL/m],
    [['--iam-role-session-ttl=soon'], /^error: --iam-role-session-ttl "soon"/m],
    [['--prometheus-listen-addr=9620'], /^error: --prometheus-listen-addr "9620" is not host:port/m],
    [['--iptables=maybe'], /^error: --iptables: "maybe" is not true or false$/m],
    [['--verbose=loud'], /^error: --verbose: "loud" is not true or false$/m],
    [['--no-iptables-remove=true'], /^error: --no-iptables-remove takes no value$/m],
    [['--node'], /^error: --node needs a value$/m],
  ];
  for (const [args, message] of rejected) {
    test(args.join(' '), () => {
      const { code, output } = exit(['agent', ...args]);
      assert.equal(code, 2);
      assert.match(output, message);
    });
  }

  test('every refusal is reported at once', () => {
    const { output } = exit(['agent', '--insecure', '--iam-role-key=x/y', '--allow-ip-query']);
    assert.equal(output.trim().split('\n').length, 3, output);
  });

  test("the peers' default annotation keys are what we read anyway: accepted silently", () => {
    const { warnings } = agent([
      'agent',
      '--namespace-restrictions',
      '--iam-role-key=iam.amazonaws.com/role',
      '--iam-external-id=iam.amazonaws.com/external-id',
      '--namespace-key=iam.amazonaws.com/allowed-roles',
    ]);
    assert.deepEqual(warnings, []);
  });

  test('an unknown flag is still refused by name', () => {
    assert.match(exit(['agent', '--no-such-flag']).output, /unknown option '--no-such-flag'/);
  });

  test('without the node name (kiam agents never had one) the error says how to give it', () => {
    assert.match(exit(['agent', '--json-log'], { HOST_IP: '10.0.1.23' }).output, /--node-name \(or env NODE_NAME\) is required/);
  });
});

describe("peer flags: the peers' own manifests", () => {
  test('kube2iam README "RBAC Setup" DaemonSet args', () => {
    // github.com/jtblin/kube2iam README.md, section "RBAC Setup" (kubelet expands $(HOST_IP); the account ID is ours).
    const { config, warnings } = agent(
      ['--app-port=8181', `--base-role-arn=${BASE}`, '--iptables=true', '--host-ip=10.0.1.23', '--host-interface=weave', '--verbose'],
      { NODE_NAME: 'ip-10-0-1-23.ec2.internal' },
    );
    assert.deepEqual(
      { port: config.port, roleBaseArn: config.roleBaseArn, iptables: config.iptables, hostIp: config.hostIp, hostInterfaces: config.hostInterfaces, logLevel: config.logLevel, metricsPort: config.metricsPort, namespaceRestriction: config.namespaceRestriction },
      { port: 8181, roleBaseArn: BASE, iptables: true, hostIp: '10.0.1.23', hostInterfaces: ['weave'], logLevel: 'debug', metricsPort: 9620, namespaceRestriction: true },
    );
    assert.equal(warnings.length, 1, 'only the namespace restriction warning');
  });

  test('kube2iam Helm chart DaemonSet args (iptables on, eni+, base ARN and namespace restrictions as extraArgs)', () => {
    // github.com/jtblin/kube2iam charts/kube2iam/templates/daemonset.yaml rendered with host.iptables=true,
    // host.interface=eni+, host.port=8181, no prometheus.metricsPort (so --metrics-port={{ host.port }}),
    // extraArgs {base-role-arn: <BASE>, namespace-restrictions: "", iam-role-session-ttl: 30m}.
    const { config, warnings } = agent([
      '--host-interface=eni+',
      '--node=ip-10-0-1-23.ec2.internal',
      '--host-ip=10.0.1.23',
      '--iptables=true',
      `--base-role-arn=${BASE}`,
      '--iam-role-session-ttl=30m',
      '--namespace-restrictions',
      '--app-port=8181',
      '--metrics-port=8181',
    ], {});
    assert.deepEqual(
      { nodeName: config.nodeName, hostIp: config.hostIp, iptables: config.iptables, hostInterfaces: config.hostInterfaces, roleBaseArn: config.roleBaseArn, sessionDurationSec: config.sessionDurationSec, namespaceRestriction: config.namespaceRestriction, port: config.port, metricsPort: config.metricsPort },
      { nodeName: 'ip-10-0-1-23.ec2.internal', hostIp: '10.0.1.23', iptables: true, hostInterfaces: ['eni+'], roleBaseArn: BASE, sessionDurationSec: 3600, namespaceRestriction: true, port: 8181, metricsPort: 9620 },
    );
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0]!, /^--metrics-port 8181 is the metadata port/);
  });

  test('uswitch/kiam deploy/agent.yaml args (with NODE_NAME added to its env, as the guide says)', () => {
    // github.com/uswitch/kiam deploy/agent.yaml: command /kiam, args agent …; env HOST_IP from status.podIP.
    const { config, warnings } = agent([
      'agent',
      '--iptables',
      '--host-interface=cali+',
      '--json-log',
      '--port=8181',
      '--cert=/etc/kiam/tls/agent.pem',
      '--key=/etc/kiam/tls/agent-key.pem',
      '--ca=/etc/kiam/tls/ca.pem',
      '--server-address=kiam-server:443',
      '--prometheus-listen-addr=0.0.0.0:9620',
      '--prometheus-sync-interval=5s',
      '--gateway-timeout-creation=1s',
    ]);
    assert.deepEqual(
      { iptables: config.iptables, hostIp: config.hostIp, hostInterfaces: config.hostInterfaces, port: config.port, metricsPort: config.metricsPort, logFormat: config.logFormat, allowRoutes: config.allowRoutes, removeRulesOnExit: config.removeRulesOnExit },
      { iptables: true, hostIp: '10.0.1.23', hostInterfaces: ['cali+'], port: 8181, metricsPort: 9620, logFormat: 'json', allowRoutes: [], removeRulesOnExit: false },
    );
    const flags = warnings.map((w) => w.split(' ')[0]);
    assert.deepEqual(flags, ['--cert', '--key', '--ca', '--server-address', '--prometheus-sync-interval', '--gateway-timeout-creation', 'kiam']);
  });

  test('uswitch/kiam Helm chart v3.6/v4 agent args (route allow list, rules kept, gRPC keepalive)', () => {
    // github.com/uswitch/kiam helm/kiam/templates/agent-daemonset.yaml rendered with host.iptables=true,
    // host.interface=cali+, log.jsonOutput=true, log.level=info, host.port=8181, prometheus.scrape=true,
    // whiteListRouteRegexp as in aws-node-termination-handler's README, host.iptablesRemoveOnShutdown=false
    // (--no-iptables-remove) and the v4 keepalive flags.
    const whitelist = '^\\/latest\\/meta-data\\/(spot\\/instance-action|instance-(id|type)|placement\\/availability-zone)|\\/latest\\/dynamic\\/instance-identity\\/document$';
    const { config, warnings } = agent([
      'agent',
      '--iptables',
      '--no-iptables-remove',
      '--host-interface=cali+',
      '--json-log',
      '--level=info',
      '--port=8181',
      '--cert=/etc/kiam/tls/cert',
      '--key=/etc/kiam/tls/key',
      '--ca=/etc/kiam/tls/ca',
      '--server-address=kiam-server:443',
      '--prometheus-listen-addr=0.0.0.0:9620',
      '--prometheus-sync-interval=5s',
      `--whitelist-route-regexp=${whitelist}`,
      '--gateway-timeout-creation=1s',
      '--grpc-keepalive-time-duration=10s',
      '--grpc-keepalive-timeout-duration=2s',
    ]);
    assert.equal(config.removeRulesOnExit, false);
    assert.equal(config.logLevel, 'info');
    const allowed = (path: string) => routeAllowed(path, config.allowRoutes, config.denyRoutes);
    assert.equal(allowed('latest/meta-data/instance-id'), true);
    assert.equal(allowed('latest/meta-data/spot/instance-action'), true);
    assert.equal(allowed('latest/dynamic/instance-identity/document'), true);
    assert.equal(allowed('latest/meta-data/hostname'), false);
    assert.equal(warnings.length, 8, warnings.join('\n'));
    assert.ok(warnings.every((w) => w.includes(' is ignored: ')));
  });
});

describe('peer flags: help and bookkeeping', () => {
  test('no peer flag clutters `kiam agent --help`', () => {
    const inv = parseCommandLine(['agent', '--help'], ENV) as Extract<Invocation, { kind: 'exit' }>;
    assert.equal(inv.code, 0);
    for (const flag of [...PEER_FLAGS.keys(), '--whitelist-route-regexp', '--namespace-restriction-format']) {
      assert.ok(!new RegExp(`\\s${flag}[\\s,=]`).test(inv.output), `${flag} is in the help`);
    }
    assert.match(inv.output, /--role-base-arn/, 'our own flags are');
  });

  test('`kiam --help` and `kiam --version` are not taken for the agent', () => {
    assert.equal(exit(['--help']).code, 0);
    assert.equal(exit(['--version']).code, 0);
  });

  test('the iptables commands are left alone', () => {
    const inv = parseCommandLine(['iptables', 'status', '--json'], ENV);
    assert.equal(inv.kind, 'intercept');
    assert.equal(inv.kind === 'intercept' && inv.command, 'iptables');
  });
});
