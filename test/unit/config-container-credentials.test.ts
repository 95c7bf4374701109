/**
 * The container-credentials flags (--container-credentials, -address, -port, -link, --token-audience): defaults,
 * validation naming the flag, and the command line.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseCommandLine } from '../../src/cli.ts';
import { buildConfig, ConfigError, containerAddress, DEFAULTS, linkNameProblem, type Config, type RawOptions } from '../../src/config.ts';

function problemsOf(raw: RawOptions, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    buildConfig(raw, env, 'agent');
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail('expected a ConfigError');
}

function agentOf(argv: string[]): Config {
  const inv = parseCommandLine(['agent', '--node-name', 'node-a', ...argv], {});
  assert.equal(inv.kind, 'agent', inv.kind === 'exit' ? inv.output : '');
  return (inv as { config: Config }).config;
}

describe('container-credentials defaults', () => {
  const cfg = buildConfig({ nodeName: 'node-a' }, {});

  test('off; 169.254.170.23 and fd00:ec2::23 on port 80, link kiam-link0, audience kiam', () => {
    assert.equal(cfg.containerCredentials, false);
    assert.deepEqual(cfg.containerCredentialsAddresses, ['169.254.170.23', 'fd00:ec2::23']);
    assert.equal(cfg.containerCredentialsAddressesGiven, false);
    assert.equal(cfg.containerCredentialsPort, 80);
    assert.equal(cfg.containerCredentialsLink, 'kiam-link0');
    assert.equal(cfg.tokenAudience, 'kiam');
  });

  test('the command line gives the same defaults, and --container-credentials turns it on', () => {
    const viaCli = agentOf([]);
    assert.deepEqual(
      [viaCli.containerCredentials, viaCli.containerCredentialsAddresses, viaCli.containerCredentialsPort, viaCli.containerCredentialsLink, viaCli.tokenAudience],
      [false, ['169.254.170.23', 'fd00:ec2::23'], 80, 'kiam-link0', 'kiam'],
    );
    assert.equal(agentOf(['--container-credentials']).containerCredentials, true);
    assert.equal(DEFAULTS.containerCredentialsPort, '80');
  });

  test('the addresses list is frozen', () => {
    assert.ok(Object.isFrozen(cfg.containerCredentialsAddresses));
  });
});

describe('container-credentials flags', () => {
  test('--container-credentials-address is repeatable, replaces the defaults, IPv6 canonical, duplicates dropped', () => {
    const cfg = agentOf(['--container-credentials', '--container-credentials-address', '169.254.170.23', '--container-credentials-address', 'FD00:EC2:0:0::23', '--container-credentials-address', 'fd00:ec2::23']);
    assert.deepEqual(cfg.containerCredentialsAddresses, ['169.254.170.23', 'fd00:ec2::23']);
    assert.equal(cfg.containerCredentialsAddressesGiven, true);
    assert.deepEqual(agentOf(['--container-credentials-address', '169.254.170.23']).containerCredentialsAddresses, ['169.254.170.23'], 'IPv4 alone');
  });

  test('--container-credentials-port, -link and --token-audience', () => {
    const cfg = agentOf(['--container-credentials', '--container-credentials-port', '8080', '--container-credentials-link', 'kiam-cc', '--token-audience', 'sts.example.com']);
    assert.deepEqual([cfg.containerCredentialsPort, cfg.containerCredentialsLink, cfg.tokenAudience], [8080, 'kiam-cc', 'sts.example.com']);
    assert.equal(agentOf(['--container-credentials-link', 'none']).containerCredentialsLink, undefined, 'none: managed elsewhere');
  });

  test('bad addresses are named, each once', () => {
    assert.deepEqual(problemsOf({ nodeName: 'n', containerCredentialsAddress: ['169.254.170.300', 'localhost', '0.0.0.0', '::', '224.0.0.1', 'ff02::1', '::ffff:169.254.170.23', '169.254.169.254', 'fd00:ec2::254'] }), [
      '--container-credentials-address: "169.254.170.300" is not an IPv4 or IPv6 address (e.g. 169.254.170.23, fd00:ec2::23)',
      '--container-credentials-address: "localhost" is not an IPv4 or IPv6 address (e.g. 169.254.170.23, fd00:ec2::23)',
      '--container-credentials-address: "0.0.0.0" is the unspecified address: give the address pods are told to use',
      '--container-credentials-address: "::" is the unspecified address: give the address pods are told to use',
      '--container-credentials-address: "224.0.0.1" is a multicast or reserved address',
      '--container-credentials-address: "ff02::1" is a multicast address',
      '--container-credentials-address: "::ffff:169.254.170.23" is an IPv4-mapped address: give the IPv4 address itself',
      '--container-credentials-address: "169.254.169.254" is the instance metadata address',
      '--container-credentials-address: "fd00:ec2::254" is the instance metadata address',
    ]);
  });

  test('a loopback address only with --container-credentials-link none (it cannot go on a dummy link)', () => {
    assert.deepEqual(problemsOf({ nodeName: 'n', containerCredentialsAddress: ['127.0.0.1'] }), [
      '--container-credentials-address: 127.0.0.1 is a loopback address, which cannot go on link kiam-link0: give --container-credentials-link none with it',
    ]);
    assert.deepEqual(buildConfig({ nodeName: 'n', containerCredentialsAddress: ['127.0.0.1', '::1'], containerCredentialsLink: 'none' }, {}).containerCredentialsAddresses, ['127.0.0.1', '::1']);
  });

  test('the port: a port number, not the metrics port, not the metadata server\'s own address and port', () => {
    assert.deepEqual(problemsOf({ nodeName: 'n', containerCredentialsPort: '0' }), ['--container-credentials-port: "0" is not a port number (1-65535)']);
    assert.deepEqual(problemsOf({ nodeName: 'n', containerCredentialsPort: '9620' }), ['--container-credentials-port must differ from --metrics-port (which listens on every address)']);
    assert.deepEqual(problemsOf({ nodeName: 'n', hostIp: '10.0.0.5', containerCredentialsAddress: ['10.0.0.5'], containerCredentialsPort: '8181' }), [
      '--container-credentials-port: the metadata server already listens on 10.0.0.5:8181; give another port or address',
    ]);
    assert.equal(buildConfig({ nodeName: 'n', hostIp: '10.0.0.5', containerCredentialsAddress: ['10.0.0.5'], containerCredentialsPort: '80' }, {}).containerCredentialsPort, 80);
  });

  test('the link: a link name or none; not lo', () => {
    for (const ok of ['kiam-link0', 'none', 'a', 'x_y.z-1', '123456789012345']) assert.equal(linkNameProblem(ok), undefined, ok);
    for (const bad of ['', '-x', 'a b', 'a/b', '1234567890123456', '.', '..', 'lo']) assert.ok(linkNameProblem(bad), JSON.stringify(bad));
    assert.deepEqual(problemsOf({ nodeName: 'n', containerCredentialsLink: 'eth0:1' }), [
      '--container-credentials-link: "eth0:1" is not a link name: 1 to 15 characters of [A-Za-z0-9_.-], not starting with \'-\' (or none)',
    ]);
  });

  test('the audience: printable, no blanks, at most 256 characters', () => {
    assert.equal(buildConfig({ nodeName: 'n', tokenAudience: 'https://kiam.example.com' }, {}).tokenAudience, 'https://kiam.example.com');
    for (const bad of ['', 'two words', 'tab\there', 'x'.repeat(257), 'é']) {
      assert.deepEqual(problemsOf({ nodeName: 'n', tokenAudience: bad }), [`--token-audience: ${JSON.stringify(bad)} must be 1 to 256 printable characters without blanks`]);
    }
  });

  test('every problem at once, with the other flags\'', () => {
    const problems = problemsOf({ nodeName: 'n', containerCredentialsAddress: ['nope'], containerCredentialsPort: 'x', tokenAudience: '', idleTimeout: '0s' });
    assert.equal(problems.length, 4);
  });

  test('containerAddress: canonical forms', () => {
    assert.deepEqual(containerAddress('169.254.170.23'), { address: '169.254.170.23' });
    assert.deepEqual(containerAddress('FD00:0EC2::0023'), { address: 'fd00:ec2::23' });
    assert.deepEqual(containerAddress('::1'), { address: '::1' });
    assert.ok('problem' in containerAddress('fe80::1%eth0'), 'a zone is refused');
  });

  test('commander: the flags are listed in kiam agent --help', () => {
    const inv = parseCommandLine(['agent', '--help'], {});
    assert.equal(inv.kind, 'exit');
    const out = (inv as { output: string }).output;
    for (const flag of ['--container-credentials ', '--container-credentials-address', '--container-credentials-port', '--container-credentials-link', '--token-audience']) assert.ok(out.includes(flag), flag);
  });
});
