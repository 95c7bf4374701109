/**
 * The STS port and its one adapter: the only file in src/ that imports the AWS SDK.
 *
 * The SDK accepts an empty or malformed AssumeRole response as success (with `Credentials` null), so every
 * field is validated here. Failures become a StsError with a short `code` (the AWS error code such as
 * AccessDenied or Throttling, or one of 'timeout', 'network', 'invalid-response', 'no-credentials',
 * 'aborted', 'unknown') and whether trying again later may help.
 */
import { AssumeRoleCommand, STSClient, type STSClientConfig } from '@aws-sdk/client-sts';
import { raceAbort } from '../clock.ts';
import { THROTTLING_CODES } from './sts-errors.ts';

export { THROTTLING_CODES, stsErrorFix } from './sts-errors.ts';

export interface AssumeRoleRequest {
  roleArn: string;
  sessionName: string;
  externalId?: string;
  durationSeconds: number;
  /** STS session tags (--session-tags), passed as not transitive. */
  tags?: readonly SessionTag[];
}

/** One STS session tag (see session-tags.ts for what kiam sends). */
export interface SessionTag {
  readonly key: string;
  readonly value: string;
}

export interface StsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** Epoch milliseconds, as STS answered (it may be sooner than asked). */
  expiration: number;
}

export interface StsGateway {
  /** Rejects with a StsError (other errors are possible from fakes; the cache wraps them). */
  assumeRole(req: AssumeRoleRequest, signal: AbortSignal): Promise<StsCredentials>;
}

export class StsError extends Error {
  override readonly name = 'StsError';
  constructor(
    /** AWS error code (AccessDenied, Throttling, …) or timeout, network, invalid-response, no-credentials, aborted, unknown. */
    readonly code: string,
    message: string,
    readonly retryable: boolean,
    /** HTTP status of STS's answer, when there was one. */
    readonly status?: number,
  ) {
    super(message);
  }
}

const RETRYABLE_CODES: ReadonlySet<string> = new Set([
  ...THROTTLING_CODES,
  'ServiceUnavailable',
  'InternalFailure',
  'InternalError',
  'IDPCommunicationError',
  'ExpiredToken', // the agent's own credentials: the default chain refreshes them
  'RequestTimeout',
  'RequestTimeoutException',
]);

const NETWORK_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNABORTED',
  'EPROTO',
  'ERR_SOCKET_CONNECTION_TIMEOUT',
]);

export interface AwsStsGatewayOptions {
  region: string;
  /** Endpoint override (private VPC endpoints, tests), e.g. http://127.0.0.1:4566. */
  endpoint?: string;
  /** Default: the SDK's default provider chain (the agent's own identity). */
  credentials?: STSClientConfig['credentials'];
  /** Deadline for one AssumeRole call, credential resolution included. */
  timeoutMs: number;
  /** SDK attempts per call (default 1: the cache retries with its own backoff). */
  maxAttempts?: number;
}

/** StsGateway over @aws-sdk/client-sts. */
export class AwsStsGateway implements StsGateway {
  private readonly client: STSClient;
  private readonly timeoutMs: number;

  constructor(options: AwsStsGatewayOptions) {
    if (!options.region) throw new Error('AwsStsGateway: region is required');
    if (!(options.timeoutMs > 0)) throw new Error('AwsStsGateway: timeoutMs must be a positive number');
    this.timeoutMs = options.timeoutMs;
    this.client = new STSClient({
      region: options.region,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      maxAttempts: options.maxAttempts ?? 1,
      requestHandler: {
        connectionTimeout: Math.min(options.timeoutMs, 3000),
        requestTimeout: options.timeoutMs,
      },
    });
  }

  async assumeRole(req: AssumeRoleRequest, signal: AbortSignal): Promise<StsCredentials> {
    const deadline = AbortSignal.timeout(this.timeoutMs);
    const combined = AbortSignal.any([signal, deadline]);
    const command = new AssumeRoleCommand({
      RoleArn: req.roleArn,
      RoleSessionName: req.sessionName,
      DurationSeconds: req.durationSeconds,
      ...(req.externalId !== undefined ? { ExternalId: req.externalId } : {}),
      // Not transitive (no TransitiveTagKeys): the tags describe the pod these credentials are for, not a role it chains to.
      ...(req.tags && req.tags.length > 0 ? { Tags: req.tags.map((t) => ({ Key: t.key, Value: t.value })) } : {}),
    });
    let output;
    try {
      // Race the abort too: the SDK does not abort everything (e.g. resolving its own credentials).
      output = await raceAbort(this.client.send(command, { abortSignal: combined }), combined);
    } catch (err) {
      throw toStsError(err, { timedOut: deadline.aborted && !signal.aborted, aborted: signal.aborted, timeoutMs: this.timeoutMs });
    }
    return validate(output.Credentials);
  }

  /** Close the SDK's sockets. */
  destroy(): void {
    this.client.destroy();
  }
}

interface RawCredentials {
  AccessKeyId?: string | undefined;
  SecretAccessKey?: string | undefined;
  SessionToken?: string | undefined;
  Expiration?: Date | undefined;
}

/** Check every field of STS's answer: the SDK lets an empty body through as success. */
export function validate(raw: RawCredentials | null | undefined): StsCredentials {
  const bad = (what: string) => new StsError('invalid-response', `STS answered without ${what}`, true);
  if (!raw) throw bad('Credentials');
  if (!nonEmpty(raw.AccessKeyId)) throw bad('an AccessKeyId');
  if (!nonEmpty(raw.SecretAccessKey)) throw bad('a SecretAccessKey');
  if (!nonEmpty(raw.SessionToken)) throw bad('a SessionToken');
  const exp = raw.Expiration;
  const ms = exp instanceof Date ? exp.getTime() : NaN;
  if (!Number.isFinite(ms)) throw bad('a valid Expiration');
  return { accessKeyId: raw.AccessKeyId, secretAccessKey: raw.SecretAccessKey, sessionToken: raw.SessionToken, expiration: ms };
}

function nonEmpty(s: unknown): s is string {
  return typeof s === 'string' && s.trim().length > 0;
}

interface SdkErrorLike {
  name?: unknown;
  message?: unknown;
  code?: unknown;
  Code?: unknown;
  $fault?: unknown;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
  $response?: unknown;
}

/** Map anything the SDK throws to a StsError with a short code. Exported for tests. */
export function toStsError(
  err: unknown,
  ctx: { timedOut?: boolean; aborted?: boolean; timeoutMs?: number } = {},
): StsError {
  if (err instanceof StsError) return err;
  const e = (typeof err === 'object' && err !== null ? err : {}) as SdkErrorLike;
  const name = typeof e.name === 'string' ? e.name : '';
  // The SDK's deserialisation errors run over several lines: the first says what went wrong.
  const message = (typeof e.message === 'string' && e.message ? e.message : String(err)).split('\n')[0] ?? '';
  if (ctx.timedOut || name === 'TimeoutError' || (e.code === 'ETIMEDOUT' && !e.$metadata)) {
    return new StsError('timeout', `STS did not answer within ${ctx.timeoutMs ?? '?'} ms`, true);
  }
  if (ctx.aborted || name === 'AbortError') return new StsError('aborted', 'STS call aborted', true);
  if (typeof e.code === 'string' && NETWORK_CODES.has(e.code)) {
    return new StsError('network', `cannot reach STS: ${e.code}`, true);
  }
  if (name === 'CredentialsProviderError') {
    return new StsError('no-credentials', `the agent has no credentials of its own: ${message}`, true);
  }
  const status = e.$metadata?.httpStatusCode;
  if (typeof status === 'number') {
    const awsCode = typeof e.Code === 'string' && e.Code ? e.Code : name;
    if (status >= 200 && status < 300) {
      // A 2xx the SDK could not deserialise.
      return new StsError('invalid-response', `unreadable STS response: ${message}`, true, status);
    }
    const known = awsCode && awsCode !== 'Error' && awsCode !== 'Unknown' && awsCode !== 'UnknownError';
    const code = known ? awsCode : `http-${status}`;
    const retryable = RETRYABLE_CODES.has(code) || status >= 500 || status === 429 || e.$retryable != null;
    return new StsError(code, message, retryable, status);
  }
  if (e.$response !== undefined || /deserializ|xml|parse/i.test(message)) {
    return new StsError('invalid-response', `unreadable STS response: ${message}`, true);
  }
  return new StsError('unknown', message, true);
}
