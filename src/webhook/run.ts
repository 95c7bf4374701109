/**
 * `kiam webhook`: composes the webhook (its own small composition root beside src/main.ts, which loads this
 * module only for this subcommand). Start-up: the serving certificate (files, or the self-managed Secret and
 * caBundle) → HTTPS listening. SIGTERM: keep answering for a few seconds while the endpoint is removed from the
 * Service (a request the API server sends meanwhile still gets its patch), then stop accepting, finish what is
 * open, exit 0.
 */
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.ts';
// The agent's service-account reader (one GET per account, remembered 30 s, shared by concurrent callers, a stale
// answer when the API fails): wired here, the webhook's composition root, as main.ts wires the agent's.
import { kubeServiceAccountFetch } from '../resolver/kube.ts';
import { ServiceAccountRoles } from '../resolver/service-accounts.ts';
import { kubeJsonClient, type KubeJson } from './kube.ts';
import type { WebhookOptions } from './options.ts';
import { createWebhookHandler, listenWebhook, type ServiceAccountRoleLookup } from './server.ts';
import { FileTls, SelfManagedTls } from './tls.ts';

/** Time the Service's endpoints take to drop a terminating pod (kube-proxy, the API server's endpoint reader). */
export const SHUTDOWN_DELAY_MS = 5_000;
const HARD_EXIT_MS = 12_000;

export interface WebhookRuntime {
  logger: Logger;
  kubeConfig: KubeConfig;
  serviceAccountRole?: ServiceAccountRoleLookup;
  clock?: Clock;
  /** Resolves when the webhook must stop (default: SIGTERM or SIGINT). */
  stopSignal?: Promise<string>;
  shutdownDelayMs?: number;
  /** Called once the server listens (tests). */
  onListening?: (port: number) => void;
}

function signals(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
}

export async function runWebhook(options: WebhookOptions, runtime: WebhookRuntime): Promise<number> {
  const stop = runtime.stopSignal ?? signals();
  // The clock's timers are unref'd: without this, waiting to retry the first certificate sync (nothing listening
  // yet) would let the process run out of work and exit.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  try {
    return await serve(options, runtime, stop);
  } finally {
    clearInterval(keepAlive);
  }
}

async function serve(options: WebhookOptions, runtime: WebhookRuntime, stop: Promise<string>): Promise<number> {
  const { logger, kubeConfig } = runtime;
  const clock = runtime.clock ?? systemClock;
  const kube: KubeJson = kubeJsonClient(kubeConfig);
  const serviceAccountRole = runtime.serviceAccountRole ?? serviceAccountRoles(kubeConfig, clock);
  const aborter = new AbortController();
  let stopping: string | undefined;
  void stop.then((signal) => {
    stopping = signal;
    aborter.abort(new Error(`stopped by ${signal}`));
  });

  const handler = createWebhookHandler({ logger, mutation: { audience: options.tokenAudience, ipv6: options.ipv6 }, serviceAccountRole });
  let stopTls = () => undefined as void;
  let server;
  try {
    if (options.tlsCertFile && options.tlsKeyFile) {
      const files = new FileTls({ certFile: options.tlsCertFile, keyFile: options.tlsKeyFile, clock, logger });
      server = await listenWebhook(handler, files.load(), options.port);
      const s = server;
      files.watch((pem) => s.setCertificate(pem));
      stopTls = () => files.stop();
    } else {
      const managed = new SelfManagedTls({
        kube,
        clock,
        logger,
        namespace: options.namespace,
        secretName: options.secretName,
        serviceName: options.serviceName,
        webhookConfigName: options.webhookConfigName,
      });
      stopTls = () => managed.stop();
      let current: ((pem: { cert: string; key: string }) => void) | undefined;
      const first = await managed.start((pem) => current?.(pem), aborter.signal);
      server = await listenWebhook(handler, first, options.port);
      const s = server;
      current = (pem) => {
        s.setCertificate(pem);
        logger.info('serving the renewed webhook certificate');
      };
    }
  } catch (err) {
    stopTls();
    if (stopping) {
      logger.info({ signal: stopping }, 'stopped during start-up');
      return 0;
    }
    logger.fatal({ err }, 'webhook start-up failed');
    return 1;
  }
  logger.info({ port: server.port, tls: options.tlsCertFile ? 'files' : `secret ${options.namespace}/${options.secretName}` }, 'webhook listening');
  runtime.onListening?.(server.port);

  const signal = await stop;
  logger.info({ signal }, 'shutting down');
  const hardExit = setTimeout(() => {
    logger.error('shutdown did not finish in time; exiting');
    process.exit(1);
  }, HARD_EXIT_MS).unref();
  await clock.sleep(runtime.shutdownDelayMs ?? SHUTDOWN_DELAY_MS);
  stopTls();
  await server.close();
  clearTimeout(hardExit);
  logger.info('stopped');
  return 0;
}

/** The role annotation of a service account through ServiceAccountRoles (a GET gets 2 s of the 3 s look-up budget). */
function serviceAccountRoles(kubeConfig: KubeConfig, clock: Clock): ServiceAccountRoleLookup {
  const roles = new ServiceAccountRoles({ fetch: kubeServiceAccountFetch(kubeConfig), clock, timeoutMs: 2_000 });
  return async (namespace, name, signal) => (await roles.get(namespace, name, signal)).role;
}
