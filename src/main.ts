/**
 * Composition root: builds every component from the Config, wires them together, owns the signals.
 * Nothing imports this file. Start-up order: metrics/health port → pod and namespace watches synced →
 * metadata server listening → (--container-credentials: its link, then its listener) → interception rules installed
 * (only once we can answer) → ready. Shutdown runs the same steps backwards under a hard deadline (the link, like the
 * interception, is kept).
 */
import { readdirSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import pkg from '../package.json' with { type: 'json' };
import { AwsStsGateway } from './cache/sts.ts';
import { CredentialCache } from './cache/credentials.ts';
import { Prefetcher } from './cache/prefetch.ts';
import { resolveRegion } from './cache/region.ts';
import { parseCommandLine } from './cli.ts';
import { systemClock } from './clock.ts';
import type { Config } from './config.ts';
import { Lifecycle, Startup } from './lifecycle.ts';
import { createMetrics } from './metrics.ts';
import { spawnRunner } from './netfilter/exec.ts';
import { DEFAULT_CHAIN } from './netfilter/rules.ts';
import { realNodeFacts } from './netfilter/ebpf/support.ts';
import { buildInterception, installInterception, renderInterceptReport, runInterceptCommand } from './intercept.ts';
import { createKubeSources, loadKubeConfig } from './resolver/kube.ts';
import { Resolver } from './resolver/lookup.ts';
import { Policy } from './resolver/policy.ts';
import { buildApp, listenOn } from './server/app.ts';
import { buildOpsApp } from './server/ops.ts';
import { createTokenService } from './server/tokens.ts';
import { autodetectRoleBaseArn, createUpstream } from './server/upstream.ts';
import { collectDebugState, type DebugSources } from './doctor/state.ts';
import { exitCode as doctorExitCode, fetchHttp, renderText, runDoctor } from './doctor/run.ts';
import type { DoctorOptions } from './doctor/options.ts';
import { kubeGetJson } from './resolver/kube.ts';
import { kubeServiceAccountFetch } from './resolver/kube.ts';
import { ServiceAccountRoles } from './resolver/service-accounts.ts';
import { KubeTokenReviewer } from './identity/token-review.ts';
import { TokenIdentity } from './identity/token-identity.ts';
import { ServiceAccountPrefetch } from './identity/service-account-prefetch.ts';
import { ipv6Enabled, LinkManager } from './netfilter/link.ts';
import { createContainerCredentialsServer } from './server/container-credentials.ts';
import type { DebugContainerCredentials } from './doctor/state.ts';

/** The agent must be gone within 10 s of SIGTERM; stop hooks get a little less, the hard exit the rest. */
const SHUTDOWN_DEADLINE_MS = 8_000;
const HARD_EXIT_MS = 9_500;
const STS_TIMEOUT_MS = 5_000;

async function createLogger(config: Pick<Config, 'logLevel' | 'logFormat' | 'nodeName'>): Promise<Logger> {
  const options = {
    level: config.logLevel,
    base: { node: config.nodeName || undefined },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Belt and braces: no component logs these, and none ever reaches the output if one did.
    redact: { paths: ['secretAccessKey', 'sessionToken', 'token', '*.secretAccessKey', '*.sessionToken', '*.SecretAccessKey', '*.Token'], censor: '[redacted]' },
  };
  if (config.logFormat !== 'pretty') return pino(options);
  let pretty: (opts: object) => NodeJS.WritableStream;
  try {
    ({ default: pretty } = (await import('pino-pretty')) as unknown as { default: typeof pretty });
  } catch {
    throw new Error('--log-format pretty needs the pino-pretty package (npm install pino-pretty)');
  }
  return pino(options, pretty({ colorize: process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
}

async function runAgent(config: Config, warnings: readonly string[] = []): Promise<number> {
  const logger = await createLogger(config);
  for (const warning of warnings) logger.warn(warning);
  const clock = systemClock;
  const metrics = createMetrics({ defaultMetrics: true });
  const lifecycle = new Lifecycle(logger, SHUTDOWN_DEADLINE_MS);
  // SIGTERM during start-up: no further step starts, the agent is never marked serving, and the stop hooks run
  // once the step in flight has ended (lifecycle.ts, Startup).
  const startup = new Startup(lifecycle, logger);
  const state = { serving: false };
  let resolverReady = () => false;
  let podIndexFresh = () => false;
  /** Without interception there is nothing to wait for; with it, whether every interceptor last found itself in place. */
  let rulesReady = () => config.intercept === 'none';

  let exitCode = 0;
  const stopped = new Promise<void>((resolve) => {
    let shuttingDown = false;
    const shutdown = (signal: string) => {
      if (shuttingDown || lifecycle.stopped) return;
      shuttingDown = true;
      logger.info({ signal }, 'shutting down');
      state.serving = false; // not ready first, so the node stops routing to us before we drain
      setTimeout(() => {
        logger.error('shutdown did not finish in time; exiting');
        process.exit(1);
      }, HARD_EXIT_MS).unref();
      void startup.stop(new Error(`stopped by ${signal} during start-up`)).then((clean) => {
        if (!clean) exitCode = 1;
        resolve();
      });
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
  });

  const readiness = () => {
    const checks = { watch: resolverReady(), serving: state.serving, rules: rulesReady(), podIndex: podIndexFresh() };
    return { ready: checks.watch && checks.serving && checks.rules && checks.podIndex, checks };
  };
  /** What /debug/state reports; the sources are filled in as the components start. */
  const debug: DebugSources = {
    version: pkg.version,
    startedAt: clock.now(),
    now: () => clock.now(),
    config,
    readiness,
    rules: () => ({ enabled: config.iptables, backend: null, backendReason: null, chain: DEFAULT_CHAIN, present: false }),
  };

  try {
    const ops = buildOpsApp({ metrics, logger, readiness, debugState: () => collectDebugState(debug) });
    await startup.step('metrics server', () => ops.listen({ host: '0.0.0.0', port: config.metricsPort }));
    lifecycle.onStop('metrics server', () => ops.close());

    const upstream = createUpstream({ endpoint: config.metadataEndpoint, clock, logger });
    lifecycle.onStop('upstream metadata client', () => upstream.close());

    const roleBaseArn = config.roleBaseArnAutodetect ? await autodetectRoleBaseArn(upstream) : config.roleBaseArn;
    if (config.roleBaseArnAutodetect) logger.info({ roleBaseArn }, 'role base ARN detected from the node instance profile');
    const { region, source: regionSource } = await resolveRegion({ configured: config.region, metadata: upstream, roleArns: [roleBaseArn, config.defaultRole], logger });
    debug.sts = () => ({ region, regionSource });

    const sts = new AwsStsGateway({ region, endpoint: config.stsEndpoint, timeoutMs: STS_TIMEOUT_MS });
    const cache = new CredentialCache({ sts, clock, metrics, logger, sessionDurationSec: config.sessionDurationSec, stsTimeoutMs: STS_TIMEOUT_MS });
    lifecycle.onStop('credential cache', () => {
      cache.stop();
      sts.destroy();
    });
    const prefetcher = new Prefetcher({ cache, logger });
    debug.identities = () => cache.snapshot();

    const policy = new Policy({
      roleBaseArn,
      defaultRole: config.defaultRole,
      namespaceRestriction: config.namespaceRestriction,
      allowedRolesFormat: config.allowedRolesFormat,
      sessionNameTemplate: config.sessionNameTemplate,
      nodeName: config.nodeName,
      ...(config.sessionTags ? { sessionTags: { clusterName: config.clusterName } } : {}),
    });
    if (config.sessionTags && !config.sessionNameTemplate.includes('{pod}')) {
      logger.warn({ sessionName: config.sessionNameTemplate }, '--session-tags name the pod: each pod gets an STS session of its own, so the session name no longer shares sessions');
    }
    const kubeConfig = loadKubeConfig(config.kubeconfig);
    const { pods, namespaces } = createKubeSources({ kubeConfig, nodeName: config.nodeName, metrics, logger, clock });
    const resolver = new Resolver({ pods, namespaces, policy, clock, metrics, logger, podWaitMs: config.podWaitMs });
    // With --container-credentials, a pod's role may come from its service account: prefetched too (read once per
    // account, cached 30 s: ServiceAccountRoles).
    const serviceAccounts = config.containerCredentials ? new ServiceAccountRoles({ fetch: kubeServiceAccountFetch(kubeConfig), clock }) : undefined;
    if (serviceAccounts) {
      const saPrefetch = new ServiceAccountPrefetch({ resolver, serviceAccounts, policy, target: (uid, identity) => prefetcher.podIdentity(uid, identity), logger });
      resolver.onIdentity((podUid, lookup) => saPrefetch.podIdentity(podUid, lookup));
    } else {
      resolver.onIdentity((podUid, lookup) => prefetcher.podIdentity(podUid, lookup?.kind === 'role' ? lookup.identity : undefined));
    }
    resolverReady = () => resolver.ready();
    podIndexFresh = () => resolver.freshness().fresh;
    debug.podIndex = () => ({ ...resolver.freshness(), namespaces: resolver.namespaceSync() });
    debug.pods = () => resolver.currentIdentities().values();
    resolver.start();
    lifecycle.onStop('pod watch', async () => {
      prefetcher.stop();
      await resolver.stop();
    });
    logger.info({ node: config.nodeName }, 'waiting for the pod and namespace watches to sync');
    await startup.step('watches synced', (signal) => resolver.whenReady(signal));
    logger.info({ pods: resolver.podsIndexed }, 'watches synced');

    const app = buildApp({
      lookup: resolver,
      credentials: cache,
      upstream,
      tokens: createTokenService({ clock }),
      metrics,
      logger,
      clock,
      allowRoutes: config.allowRoutes,
      denyRoutes: config.denyRoutes,
      limits: { maxConnectionsPerIp: config.maxConnectionsPerIp, maxRequestsPerSecond: config.maxRequestsPerSecond, idleTimeoutMs: config.idleTimeoutMs },
      imdsv2: config.imdsv2,
    });
    const hosts = [config.hostIp ?? '127.0.0.1', ...(config.hostIpv6 ? [config.hostIpv6] : [])];
    lifecycle.onStop('metadata server', await startup.step('metadata server', () => listenOn(app, hosts, config.port)));
    logger.info({ addresses: hosts.map((h) => (h.includes(':') ? `[${h}]:${config.port}` : `${h}:${config.port}`)) }, 'metadata server listening');

    if (config.containerCredentials && serviceAccounts) {
      // The container-credentials listener: its addresses on the dummy link (kept when the agent stops, like the
      // interception: pods get "connection refused" meanwhile), then the listener; stopped before the metadata server.
      const skipped: DebugContainerCredentials['skipped'] = [];
      let addresses = [...config.containerCredentialsAddresses];
      if (!config.containerCredentialsAddressesGiven) {
        const v6 = ipv6Enabled();
        if (!v6.enabled) {
          for (const address of addresses.filter((a) => a.includes(':'))) skipped.push({ address, reason: v6.reason ?? 'IPv6 is disabled' });
          addresses = addresses.filter((a) => !a.includes(':'));
          for (const s of skipped) logger.info(s, 'container credentials: IPv6 address left out, the node has no IPv6');
        }
      }
      const linkName = config.containerCredentialsLink;
      const link = linkName === undefined ? undefined : new LinkManager({ name: linkName, addresses }, { runner: spawnRunner(), clock, logger, intervalMs: config.reconcileIntervalMs });
      if (link) {
        const ran = await startup.step('container credentials link', () => link.ensure());
        if (ran.length > 0) logger.info({ link: link.spec.name, ran: ran.map((argv) => argv.join(' ')) }, 'container-credentials link set up');
        // Registered once the link is in place: a start-up that failed to make it says so, not that it was kept.
        lifecycle.onStop('container credentials link', async () => {
          await link.stop();
          logger.info({ link: link.spec.name }, 'container-credentials link kept (its addresses answer "connection refused" until the agent is back)');
        });
        link.start();
      }
      const reviewer = new KubeTokenReviewer({ kubeConfig });
      lifecycle.onStop('token reviewer', () => reviewer.close());
      const tokenIdentity = new TokenIdentity({
        reviewer,
        resolver,
        serviceAccounts,
        policy,
        audiences: [config.tokenAudience],
        nodeName: config.nodeName,
        clock,
        metrics,
        logger,
      });
      const server = createContainerCredentialsServer({
        identity: tokenIdentity,
        credentials: cache,
        metrics,
        logger,
        clock,
        limits: { maxConnectionsPerIp: config.maxConnectionsPerIp, maxRequestsPerSecond: config.maxRequestsPerSecond, idleTimeoutMs: config.idleTimeoutMs },
        underPressure: () => app.isUnderPressure(),
      });
      debug.containerCredentials = () => ({
        enabled: true,
        addresses: server.addresses().map(({ host, port }) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`)),
        skipped,
        link: link ? { name: link.spec.name, present: link.present, error: link.error ?? null } : null,
        audience: config.tokenAudience,
        identity: tokenIdentity.snapshot(),
      });
      lifecycle.onStop('container credentials server', () => server.close());
      await startup.step('container credentials server', () => server.listen(addresses, config.containerCredentialsPort));
      logger.info({ addresses: debug.containerCredentials().addresses, audience: config.tokenAudience }, 'container credentials server listening');
    } else {
      debug.containerCredentials = () => ({ enabled: false, addresses: [], skipped: [], link: null, audience: config.tokenAudience, identity: null });
    }

    if (config.intercept !== 'none') {
      const interception = await startup.step('interception', () => buildInterception(config, { runner: spawnRunner(), clock, metrics, logger, facts: realNodeFacts }));
      const { interceptors, iptables, backend, ebpf, ebpfInterceptor } = interception;
      // Registered before install so that a failed install still stops the timers.
      lifecycle.onStop('interception', async () => {
        for (const interceptor of interceptors) {
          if (config.removeRulesOnExit) await interceptor.remove();
          else await interceptor.stop();
        }
        if (!config.removeRulesOnExit) logger.info('interception kept: pods fail closed until the agent is back (--remove-rules-on-exit to change)');
      });
      await startup.step('interception install', (signal) => installInterception(interception, config.intercept, logger, signal));
      rulesReady = () => interceptors.every((i) => i.present);
      if (iptables && backend) {
        debug.rules = () => ({ enabled: true, backend: backend.name, backendReason: backend.reason, chain: DEFAULT_CHAIN, present: iptables.present });
      }
      if (ebpf) {
        debug.ebpf = () => ({
          enabled: true,
          active: ebpf.active,
          reason: ebpf.reason,
          cgroupRoot: ebpf.spec.cgroupRoot,
          bpffs: ebpf.spec.bpffs,
          present: ebpfInterceptor?.present ?? false,
        });
      }
    }
    startup.ready(() => {
      state.serving = true;
    });
    logger.info('ready');
  } catch (err) {
    if (!startup.signal.aborted) {
      logger.fatal({ err }, 'start-up failed');
      exitCode = 1;
      await lifecycle.stop();
      logger.flush();
      return exitCode;
    }
    logger.info({ reason: err instanceof Error ? err.message : String(err) }, 'start-up stopped');
  } finally {
    startup.finished();
  }
  await stopped;
  logger.info({ exitCode }, 'stopped');
  logger.flush();
  return exitCode;
}

/** `kiam intercept …`, `kiam iptables …` (the iptables half alone, printed as before) and `kiam init`. */
async function runIntercept(action: 'install' | 'remove' | 'status' | 'init', config: Config, json: boolean, command: 'intercept' | 'iptables' | 'init'): Promise<number> {
  const logger = pino({ level: json ? 'silent' : 'info', base: undefined, timestamp: false }, pino.destination(2));
  const { report, code } = await runInterceptCommand(action, config, { runner: spawnRunner(), clock: systemClock, metrics: createMetrics(), logger, facts: realNodeFacts });
  if (command === 'iptables' && report.iptables) {
    const status = report.iptables;
    if (json) process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
    else process.stdout.write(renderInterceptReport({ ...report, ebpf: null }).replace(/^mode:.*\n/, ''));
    if (action === 'status') return status.rulesWanted.length && !status.inSync ? 1 : 0;
    return code;
  }
  process.stdout.write(json ? `${JSON.stringify(report, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v), 2)}\n` : renderInterceptReport(report));
  return code;
}

/** `kiam doctor`: the real ports (iptables, fetch, /sys/class/net, the kubeconfig) around runDoctor. */
async function runDoctorCommand(options: DoctorOptions): Promise<number> {
  const report = await runDoctor(options, {
    runner: spawnRunner(),
    http: fetchHttp,
    listInterfaces: () => readdirSync('/sys/class/net'),
    kube: (path) => {
      const kc = loadKubeConfig(path);
      return { server: kc.getCurrentCluster()!.server, get: (p, timeoutMs) => kubeGetJson(kc, p, AbortSignal.timeout(timeoutMs)) };
    },
    facts: realNodeFacts,
    now: () => systemClock.now(),
  });
  process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : renderText(report));
  return doctorExitCode(report);
}

async function main(): Promise<void> {
  const inv = parseCommandLine(process.argv.slice(2));
  switch (inv.kind) {
    case 'exit':
      (inv.code === 0 ? process.stdout : process.stderr).write(inv.output);
      process.exitCode = inv.code;
      return;
    case 'intercept':
      process.exitCode = await runIntercept(inv.action, inv.config, inv.json, inv.command);
      return;
    case 'init':
      process.exitCode = await runIntercept('init', inv.config, inv.json, 'init');
      return;
    case 'doctor':
      process.exitCode = await runDoctorCommand(inv.options);
      return;
    case 'webhook': {
      // Loaded for this subcommand only, from a bundle of its own (scripts/build.mjs): the agent never carries the
      // webhook's X.509 library. From the sources (tsx), the module itself.
      const { runWebhook } = (await import(webhookModule())) as typeof import('./webhook/run.ts');
      const logger = await createLogger({ ...inv.options, nodeName: '' });
      process.exitCode = await runWebhook(inv.options, { logger, kubeConfig: loadKubeConfig(inv.options.kubeconfig) });
      process.exit();
    }
    case 'agent':
      process.exitCode = await runAgent(inv.config, inv.warnings);
      // Sockets, watches and timers are closed; exit now rather than wait on a straggling handle.
      process.exit();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`kiam: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

/** Where `kiam webhook`'s code is: dist/kiam-webhook.mjs beside the agent's bundle, or src/webhook/run.ts. */
function webhookModule(): string {
  const self = import.meta.url;
  return new URL(self.endsWith('.mjs') ? './kiam-webhook.mjs' : './webhook/run.ts', self).href;
}
