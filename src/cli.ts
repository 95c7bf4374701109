import { Command, CommanderError, Option } from 'commander';
import pkg from '../package.json' with { type: 'json' };
import { translatePeerArgs } from './cli-aliases.ts';
import { buildConfig, CONTAINER_CREDENTIALS_IP, CONTAINER_CREDENTIALS_IPV6, ConfigError, DEFAULTS, NO_LINK, type Config, type RawOptions } from './config.ts';
import { DOCTOR_DEFAULTS, parseDoctorOptions, type DoctorOptions, type RawDoctorOptions } from './doctor/options.ts';
import { parseWebhookOptions, WEBHOOK_DEFAULTS, type RawWebhookOptions, type WebhookOptions } from './webhook/options.ts';

export type Invocation =
  /** warnings: peer (kiam, kube2iam) flags accepted but ignored, for the agent to log at start-up. */
  | { kind: 'agent'; config: Config; warnings: string[] }
  /** `kiam intercept …`, and `kiam iptables …` (the same with --intercept iptables). */
  | { kind: 'intercept'; command: 'intercept' | 'iptables'; action: 'install' | 'remove' | 'status'; config: Config; json: boolean }
  /** `kiam init`: the privileged start-up phase (mounts, kernel checks, one install). */
  | { kind: 'init'; config: Config; json: boolean }
  | { kind: 'doctor'; options: DoctorOptions }
  /** `kiam webhook`: the mutating admission webhook that wires pods to container credentials. */
  | { kind: 'webhook'; options: WebhookOptions }
  /** Help, version, or a command line error: print `output` (to stderr when code ≠ 0) and exit with `code`. */
  | { kind: 'exit'; code: number; output: string };

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

function interceptionOptions(cmd: Command, forAgent: boolean): Command {
  return cmd
    // Environment fallbacks (HOST_IP, NODE_NAME) are applied by buildConfig from parseCommandLine's `env`, not by
    // commander's .env(), which would read process.env behind the caller's back (and take an empty HOST_IP as a value).
    .addOption(new Option('--host-ip <ip>', 'node IP the DNAT sends metadata traffic to, and the metadata server binds to (env: HOST_IP)'))
    .addOption(new Option('--host-ipv6 <ip>', "the node's IPv6 address: the server listens there too, and fd00:ec2::254 is sent there (env: HOST_IPV6, else the IPv6 entry of HOST_IPS)"))
    .addOption(new Option('--port <port>', 'metadata server port on the host IP').default(DEFAULTS.port))
    .addOption(
      new Option('--host-interface <pattern>', `pod-facing interface(s), repeatable; iptables wildcards (cali+) and negation (!eth0)${forAgent ? '; required with --iptables' : ''}`).argParser(collect),
    )
    .addOption(new Option('--iptables-backend <backend>', 'iptables backend').choices(['auto', 'nft', 'legacy']).default(DEFAULTS.iptablesBackend))
    .addOption(new Option('--cgroup-root <path>', 'cgroup v2 directory the eBPF programs attach to (default: /sys/fs/cgroup when it is cgroup2, else /run/kiam/cgroupv2)'))
    .addOption(new Option('--bpffs <path>', 'bpffs mount the eBPF programs and maps are pinned in').default(DEFAULTS.bpffs));
}

function interceptModeOption(cmd: Command, fallback: string): Command {
  return cmd.addOption(
    // The agent's default stays undefined (so that --iptables alone is not a contradiction): say it in words.
    new Option('--intercept <mode>', `auto: the eBPF socket redirect where the kernel allows it plus the iptables rules; ebpf; iptables; none${fallback === 'none' ? ' (default: none)' : ''}`)
      .choices(['auto', 'ebpf', 'iptables', 'none'])
      .default(fallback === 'none' ? undefined : fallback, fallback),
  );
}

function buildProgram(): Command {
  const program = new Command('kiam')
    .description('Gives Kubernetes pods their own AWS IAM role credentials through the instance metadata endpoint')
    .version(pkg.version)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  const agent = program
    .command('agent')
    .description('run the node agent: intercept, resolve pods, serve and prefetch credentials')
    .addOption(new Option('--node-name <name>', 'this node; only its pods are watched (env: NODE_NAME)'))
    .addOption(new Option('--metrics-port <port>', 'port for /metrics, /healthz and /readyz (never reachable through the DNAT)').default(DEFAULTS.metricsPort))
    .option('--kubeconfig <path>', 'kubeconfig file (default: in-cluster service account)')
    .option('--iptables', 'the same as --intercept iptables', false)
    .option('--remove-rules-on-exit', 'remove the interception on shutdown (default keeps it: pods fail closed while the agent is away)', false)
    .addOption(new Option('--reconcile-interval <duration>', 'how often the interception is checked and repaired').default(DEFAULTS.reconcileInterval))
    .addOption(new Option('--metadata-endpoint <url>', 'the real metadata service, for pass-through').default(DEFAULTS.metadataEndpoint))
    .addOption(new Option('--allow-route-regexp <regexp>', 'pass-through only paths matching one of these (repeatable; default: all not denied)').argParser(collect))
    // uswitch/kiam's name: its patterns saw the path with its leading slash (docs/migrate-from-kiam.md).
    .addOption(new Option('--whitelist-route-regexp <regexp>').argParser(collect).hideHelp())
    .addOption(
      new Option('--deny-route-regexp <regexp>', `never pass through paths matching these (repeatable; added to the default list: ${DEFAULTS.denyRouteRegexp.join(' ')})`).argParser(collect),
    )
    .option('--no-default-deny', 'drop the default deny list (user-data and meta-data/identity-credentials pass through unless --deny-route-regexp says otherwise)')
    .addOption(
      new Option('--imdsv2 <mode>', 'required: a GET without an IMDSv2 token gets 401, as on an instance with HttpTokens=required').choices(['optional', 'required']).default(DEFAULTS.imdsv2),
    )
    .option('--role-base-arn <arn>', 'prefix for role names in annotations, e.g. arn:aws:iam::123456789012:role/')
    .option('--role-base-arn-autodetect', "derive the base ARN from the node's own instance profile", false)
    .option('--default-role <role>', 'role for pods without the annotation (default: none, they get 404)')
    .addOption(new Option('--session-duration <duration>', 'STS session duration (15m to 12h)').default(DEFAULTS.sessionDuration))
    .addOption(
      new Option('--session-name <template>', 'STS session name; placeholders {namespace} {pod} {serviceAccount} {node} {role}').default(DEFAULTS.sessionName),
    )
    .addOption(new Option('--region <region>', 'AWS region for STS (default: AWS_REGION, else the node metadata, else us-east-1)'))
    .option('--sts-endpoint <url>', 'STS endpoint override (private endpoints, tests)')
    .option('--session-tags', 'STS session tags kubernetes-namespace, -pod-name, -service-account, -node-name (and -cluster-name): each pod gets a session of its own; the roles must trust the agent with sts:TagSession', false)
    .addOption(new Option('--cluster-name <name>', 'value of the kubernetes-cluster-name session tag with --session-tags (env: CLUSTER_NAME)'))
    .option('--namespace-restriction', 'require the namespace annotation iam.amazonaws.com/permitted to allow the role (default: on)')
    .option('--no-namespace-restriction', 'do not require the namespace annotation iam.amazonaws.com/permitted')
    // kube2iam's: how the namespace annotation iam.amazonaws.com/allowed-roles is matched (docs/migrate-from-kube2iam.md).
    .addOption(new Option('--namespace-restriction-format <format>').choices(['glob', 'regexp']).default(DEFAULTS.namespaceRestrictionFormat).hideHelp())
    .addOption(new Option('--pod-wait-timeout <duration>', 'how long a request from an unknown IP waits for the watch').default(DEFAULTS.podWaitTimeout))
    .addOption(new Option('--max-connections-per-ip <n>', 'open connections to the metadata server per source IP; one more gets 429 and is closed (0: no cap)').default(DEFAULTS.maxConnectionsPerIp))
    .addOption(new Option('--max-requests-per-second <n>', "metadata requests a second per source IP, bursts of 3 s' worth; beyond: 429 with Retry-After (0: no cap)").default(DEFAULTS.maxRequestsPerSecond))
    .addOption(new Option('--idle-timeout <duration>', "close a metadata connection idle this long between requests, or whose request's headers take longer").default(DEFAULTS.idleTimeout))
    .option('--container-credentials', "also serve the container-credentials protocol (AWS_CONTAINER_CREDENTIALS_FULL_URI): pods identified by their projected service-account token, not their address", false)
    .addOption(
      new Option('--container-credentials-address <ip>', `address(es) it listens on, repeatable (default: ${CONTAINER_CREDENTIALS_IP}, and ${CONTAINER_CREDENTIALS_IPV6} when the node has IPv6)`).argParser(collect),
    )
    .addOption(new Option('--container-credentials-port <port>', 'port it listens on').default(DEFAULTS.containerCredentialsPort))
    .addOption(
      new Option('--container-credentials-link <name>', `dummy link (ifb where the kernel has no dummy driver) the agent creates (if missing) and puts the addresses on; ${NO_LINK}: they are put in place by something else`).default(DEFAULTS.containerCredentialsLink),
    )
    .addOption(new Option('--token-audience <audience>', "audience the pods' projected service-account tokens must be issued for").default(DEFAULTS.tokenAudience))
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default(DEFAULTS.logLevel))
    .addOption(new Option('--log-format <format>', 'log format').choices(['json', 'pretty']).default(DEFAULTS.logFormat));
  interceptionOptions(agent, true);
  interceptModeOption(agent, 'none');
  // `kiam --help` lists every flag too, not only the subcommands.
  program.addHelpText('after', () => `\nkiam agent options:\n${agent.helpInformation().split('\nOptions:\n')[1] ?? ''}`);

  const intercept = program.command('intercept').description('install, remove or show the interception once (preStop hooks, clean-up)');
  const iptables = program.command('iptables').description('the same as `kiam intercept … --intercept iptables`');
  for (const parent of [intercept, iptables]) {
    for (const action of ['install', 'remove', 'status'] as const) {
      const sub = parent.command(action).description(
        { install: 'install the interception once and exit', remove: 'remove every trace of ours (idempotent; foreign programs and rules stay)', status: 'print what is present' }[action],
      );
      interceptionOptions(sub, false);
      if (parent === intercept) interceptModeOption(sub, 'auto');
      sub.option('--json', 'machine-readable output', false);
    }
  }
  const init = program
    .command('init')
    .description('privileged start-up (an init container): mount bpffs and cgroup2 where missing, check the kernel, install the interception once');
  interceptionOptions(init, false);
  interceptModeOption(init, 'auto');
  init.option('--json', 'machine-readable output', false);

  program
    .command('doctor')
    .description("check this node's kiam set-up and what the running agent sees (run on the node or in the agent pod); exit 1 when something is wrong")
    .addOption(new Option('--metrics-port <port>', "the running agent's metrics port, read on 127.0.0.1 (/debug/state)").default(DOCTOR_DEFAULTS.metricsPort))
    .addOption(new Option('--host-interface <pattern>', 'pattern(s) to check against this node\'s interfaces, repeatable (default: the running agent\'s)').argParser(collect))
    .addOption(new Option('--iptables-backend <backend>', "backend to read the rules with (default: the running agent's, else auto)").choices(['auto', 'nft', 'legacy']))
    .option('--kubeconfig <path>', "kubeconfig for the API server check (default: the running agent's, else in-cluster)")
    .option('--cgroup-root <path>', "cgroup v2 directory to read the eBPF programs from (default: the running agent's)")
    .option('--bpffs <path>', "bpffs holding the eBPF pins (default: the running agent's)")
    .addOption(new Option('--metadata-endpoint <url>', 'the instance metadata service to check').default(DOCTOR_DEFAULTS.metadataEndpoint))
    .addOption(new Option('--timeout <duration>', 'time budget of each network check').default(DOCTOR_DEFAULTS.timeout))
    .option('--json', 'machine-readable output', false);

  program
    .command('webhook')
    .description('run the mutating admission webhook that wires pods of opted-in namespaces to the container-credentials endpoint')
    .addOption(new Option('--port <port>', 'HTTPS port of /mutate and /healthz').default(WEBHOOK_DEFAULTS.port))
    .option('--tls-cert-file <path>', 'serving certificate (PEM), reloaded when it changes; with --tls-key-file (default: a self-managed CA kept in --secret-name)')
    .option('--tls-key-file <path>', 'its private key (PEM)')
    .addOption(new Option('--namespace <name>', `the webhook's namespace, where its Secret and Service are (env: POD_NAMESPACE, else ${WEBHOOK_DEFAULTS.namespace})`))
    .addOption(new Option('--service-name <name>', 'the Service the API server calls: the serving certificate names <service>.<namespace>.svc').default(WEBHOOK_DEFAULTS.serviceName))
    .addOption(new Option('--secret-name <name>', 'Secret holding the self-managed CA and serving certificate').default(WEBHOOK_DEFAULTS.secretName))
    .addOption(new Option('--webhook-config-name <name>', 'MutatingWebhookConfiguration whose caBundle the self-managed CA is written to').default(WEBHOOK_DEFAULTS.webhookConfigName))
    .addOption(new Option('--token-audience <audience>', "audience of the projected token the pods get: the agent's --token-audience").default(WEBHOOK_DEFAULTS.tokenAudience))
    .option('--ipv6', 'point pods at http://[fd00:ec2::23]/v1/credentials instead of http://169.254.170.23/v1/credentials', false)
    .option('--kubeconfig <path>', 'kubeconfig file (default: in-cluster service account)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default(WEBHOOK_DEFAULTS.logLevel))
    .addOption(new Option('--log-format <format>', 'log format').choices(['json', 'pretty']).default(WEBHOOK_DEFAULTS.logFormat));
  return program;
}

/** Parse argv (without node and script) into what to do. Never exits the process itself. */
export function parseCommandLine(argv: string[], env: NodeJS.ProcessEnv = process.env): Invocation {
  const program = buildProgram();
  let out = '';
  let err = '';
  const capture = { writeOut: (s: string) => void (out += s), writeErr: (s: string) => void (err += s) };
  program.configureOutput(capture);
  for (const sub of program.commands) {
    sub.exitOverride().configureOutput(capture);
    for (const leaf of sub.commands) leaf.exitOverride().configureOutput(capture);
  }

  let result: Invocation | undefined;
  const agent = program.commands.find((c) => c.name() === 'agent')!;
  // kiam's and kube2iam's flag names → ours (src/cli-aliases.ts).
  const peer = translatePeerArgs(argv, new Map(agent.options.map((o) => [o.long!, { takesValue: !o.isBoolean() }])));
  if (peer.errors.length) return { kind: 'exit', code: 2, output: peer.errors.map((p) => `error: ${p}`).join('\n') + '\n' };
  argv = peer.argv;
  agent.action((opts: RawOptions) => {
    result = { kind: 'agent', config: buildConfig(opts, env, 'agent'), warnings: peer.warnings };
  });
  const installProblems = (config: Config): string[] => {
    const problems: string[] = [];
    if (config.intercept !== 'none' && !config.hostIp) problems.push('--host-ip (or env HOST_IP) is required for install');
    if (config.iptables && config.hostInterfaces.length === 0) problems.push(`--host-interface is required for install with --intercept ${config.intercept}`);
    return problems;
  };
  for (const name of ['intercept', 'iptables'] as const) {
    for (const leaf of program.commands.find((c) => c.name() === name)!.commands) {
      leaf.action((opts: RawOptions & { json: boolean }) => {
        const action = leaf.name() as 'install' | 'remove' | 'status';
        const config = buildConfig(opts, env, name === 'iptables' ? 'iptables' : 'intercept');
        const problems = action === 'install' ? installProblems(config) : [];
        if (problems.length) throw new ConfigError(problems);
        result = { kind: 'intercept', command: name, action, config, json: Boolean(opts.json) };
      });
    }
  }
  program.commands.find((c) => c.name() === 'init')!.action((opts: RawOptions & { json: boolean }) => {
    const config = buildConfig(opts, env, 'intercept');
    const problems = installProblems(config);
    if (problems.length) throw new ConfigError(problems);
    result = { kind: 'init', config, json: Boolean(opts.json) };
  });

  program.commands.find((c) => c.name() === 'doctor')!.action((opts: RawDoctorOptions) => {
    result = { kind: 'doctor', options: parseDoctorOptions(opts) };
  });
  program.commands.find((c) => c.name() === 'webhook')!.action((opts: RawWebhookOptions) => {
    result = { kind: 'webhook', options: parseWebhookOptions(opts, env) };
  });

  try {
    if (argv.length === 0) return { kind: 'exit', code: 2, output: program.helpInformation() };
    program.parse(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof ConfigError) return { kind: 'exit', code: 2, output: e.problems.map((p) => `error: ${p}`).join('\n') + '\n' };
    if (e instanceof CommanderError) {
      const code = e.exitCode === 0 ? 0 : 2;
      return { kind: 'exit', code, output: code === 0 ? out : err || e.message };
    }
    throw e;
  }
  if (!result) return { kind: 'exit', code: 2, output: err || program.helpInformation() };
  return result;
}
