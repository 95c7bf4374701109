// Runs inside a pod's network namespace: the AWS JS SDK v3 against the container-credentials endpoint, configured by
// the environment only (AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, as the
// kiam webhook or EKS Pod Identity set them). `http`: fromHttp, the provider itself; `chain`: the default
// provider chain (fromNodeProviderChain), which reaches fromHttp once the environment, config-file and SSO
// providers have found nothing. No retries, so a refusal shows at once. Prints {"accessKeyId", "expiration"} or
// {"error"} and never prints a secret.
import { fromHttp, fromNodeProviderChain } from '@aws-sdk/credential-providers';

const mode = process.argv[2] ?? 'http';
const options = { timeout: 1000, maxRetries: 0 };
try {
  if (mode !== 'http' && mode !== 'chain') throw new Error(`mode ${mode}: want http or chain`);
  const creds = await (mode === 'http' ? fromHttp(options) : fromNodeProviderChain(options))();
  process.stdout.write(`${JSON.stringify({ accessKeyId: creds.accessKeyId, expiration: creds.expiration?.toISOString() })}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ error: String(err?.message ?? err) })}\n`);
  process.exitCode = 3;
}
