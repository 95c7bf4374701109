/**
 * STS error codes in words, without the AWS SDK (so that `kiam doctor` can use them too): which codes mean
 * "slow down", and what to do about each.
 */
/** Error codes that mean "slow down": backed off harder by the cache. */
export const THROTTLING_CODES: ReadonlySet<string> = new Set([
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'SlowDown',
]);

/**
 * What to do about an STS error code, in words, for the log and `kiam doctor`; undefined when there is nothing
 * more to say than the error itself. AssumeRole's errors: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html
 */
export function stsErrorFix(code: string): string | undefined {
  if (THROTTLING_CODES.has(code)) {
    return "STS throttles the agent: share sessions (--session-name 'kiam-{namespace}', without --session-tags), or ask AWS for a higher quota";
  }
  if (/^(ServiceUnavailable|InternalFailure|InternalError|http-5\d\d)$/.test(code)) {
    return 'STS is failing on its side: the agent retries every 5-12 s and keeps serving cached credentials down to 5 min before they expire';
  }
  return STS_FIXES[code];
}

const STS_FIXES: Readonly<Record<string, string>> = {
  AccessDenied:
    "the agent's own identity may not assume this role: the role's trust policy must allow the agent's role sts:AssumeRole (and sts:TagSession with --session-tags), and the agent's own policy must allow both on the role",
  MalformedPolicyDocument: "STS found a policy document malformed: kiam sends no session policy, so check the role's trust policy (aws iam get-role)",
  PackedPolicyTooLarge: 'the session tags are too large once packed: shorten --cluster-name, or run without --session-tags',
  ValidationError:
    "STS refused the request's parameters: most often --session-duration is above the role's maximum session duration (raise MaxSessionDuration on the role, or lower --session-duration); else check the role ARN and the external ID",
  RegionDisabledException: 'STS is not activated in this region for the account: activate it in the IAM account settings, or give --region an active region',
  InvalidClientTokenId: "STS does not know the agent's own access key: check --region (another partition, or a region not enabled for the account) and the agent's credentials",
  SignatureDoesNotMatch: "the agent's own secret key does not match its access key, or the node's clock is off: check the agent's credentials and NTP",
  ExpiredToken: "the agent's own credentials expired: check their source (IRSA token, instance profile) and the node's clock",
  timeout: 'STS did not answer in time: check egress from the node to STS (or the VPC endpoint given with --sts-endpoint)',
  network: 'STS is unreachable: check egress from the node to STS (or the VPC endpoint given with --sts-endpoint) and --region',
  'no-credentials': "the agent has no AWS identity of its own: give it one (IRSA, the node's instance profile, or environment variables)",
};

