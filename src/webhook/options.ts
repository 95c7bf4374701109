/**
 * `kiam webhook` flags → one validated WebhookOptions (every problem at once, as a ConfigError naming the flag).
 */
import { ConfigError, DEFAULTS } from '../config.ts';

export interface WebhookOptions {
  /** HTTPS port of /mutate and /healthz. */
  port: number;
  /** Both set: serve these files (reloaded on change). Neither: the self-managed CA in `secretName`. */
  tlsCertFile?: string;
  tlsKeyFile?: string;
  /** The webhook's namespace (the Secret's and the Service's). */
  namespace: string;
  serviceName: string;
  secretName: string;
  webhookConfigName: string;
  /** The audience of the projected token: the agent's --token-audience. */
  tokenAudience: string;
  /** Point pods at http://[fd00:ec2::23]/v1/credentials instead of 169.254.170.23. */
  ipv6: boolean;
  kubeconfig?: string;
  logLevel: string;
  logFormat: 'json' | 'pretty';
}

export interface RawWebhookOptions {
  port?: string;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  namespace?: string;
  serviceName?: string;
  secretName?: string;
  webhookConfigName?: string;
  tokenAudience?: string;
  ipv6?: boolean;
  kubeconfig?: string;
  logLevel?: string;
  logFormat?: string;
}

export const WEBHOOK_DEFAULTS = {
  port: '9443',
  namespace: 'kiam',
  serviceName: 'kiam-webhook',
  secretName: 'kiam-webhook-tls',
  webhookConfigName: 'kiam-webhook',
  tokenAudience: DEFAULTS.tokenAudience,
  logLevel: 'info',
  logFormat: 'json',
} as const;

/** RFC 1123 label (namespaces, services) and subdomain (secrets, webhook configurations), as Kubernetes names them. */
const LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function parseWebhookOptions(raw: RawWebhookOptions, env: NodeJS.ProcessEnv = process.env): WebhookOptions {
  const problems: string[] = [];
  const portText = raw.port ?? WEBHOOK_DEFAULTS.port;
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) problems.push(`--port: "${portText}" is not a port number (1-65535)`);

  if ((raw.tlsCertFile === undefined) !== (raw.tlsKeyFile === undefined)) problems.push('--tls-cert-file and --tls-key-file go together (neither: the self-managed CA)');
  if (raw.tlsCertFile === '') problems.push('--tls-cert-file must not be empty');
  if (raw.tlsKeyFile === '') problems.push('--tls-key-file must not be empty');

  const namespace = raw.namespace ?? (env.POD_NAMESPACE || WEBHOOK_DEFAULTS.namespace);
  if (!LABEL.test(namespace)) problems.push(`--namespace: "${namespace}" is not a namespace name`);
  const serviceName = raw.serviceName ?? WEBHOOK_DEFAULTS.serviceName;
  if (!LABEL.test(serviceName)) problems.push(`--service-name: "${serviceName}" is not a service name`);
  const secretName = raw.secretName ?? WEBHOOK_DEFAULTS.secretName;
  if (!SUBDOMAIN.test(secretName)) problems.push(`--secret-name: "${secretName}" is not a secret name`);
  const webhookConfigName = raw.webhookConfigName ?? WEBHOOK_DEFAULTS.webhookConfigName;
  if (!SUBDOMAIN.test(webhookConfigName)) problems.push(`--webhook-config-name: "${webhookConfigName}" is not an object name`);
  const tokenAudience = raw.tokenAudience ?? WEBHOOK_DEFAULTS.tokenAudience;
  // The agent's rule (src/config.ts), so that any audience the agent accepts can be given here too.
  if (!/^[\x21-\x7e]{1,256}$/.test(tokenAudience)) problems.push(`--token-audience: ${JSON.stringify(tokenAudience)} must be 1 to 256 printable characters without blanks`);
  if (raw.kubeconfig === '') problems.push('--kubeconfig must not be empty');

  const logLevel = raw.logLevel ?? WEBHOOK_DEFAULTS.logLevel;
  const logFormat = raw.logFormat ?? WEBHOOK_DEFAULTS.logFormat;
  if (logFormat !== 'json' && logFormat !== 'pretty') problems.push(`--log-format: "${logFormat}" is not one of json, pretty`);

  if (problems.length > 0) throw new ConfigError(problems);
  return {
    port,
    ...(raw.tlsCertFile !== undefined && raw.tlsKeyFile !== undefined ? { tlsCertFile: raw.tlsCertFile, tlsKeyFile: raw.tlsKeyFile } : {}),
    namespace,
    serviceName,
    secretName,
    webhookConfigName,
    tokenAudience,
    ipv6: Boolean(raw.ipv6),
    ...(raw.kubeconfig !== undefined ? { kubeconfig: raw.kubeconfig } : {}),
    logLevel,
    logFormat: logFormat as WebhookOptions['logFormat'],
  };
}
