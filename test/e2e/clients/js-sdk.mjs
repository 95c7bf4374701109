// Runs inside a pod's network namespace: the AWS JS SDK v3's own instance-metadata provider, default endpoint
// (http://169.254.169.254), so the request takes the real DNAT path. Prints {"accessKeyId", "expiration"} or
// {"error"} and never prints a secret.
import { fromInstanceMetadata } from '@aws-sdk/credential-providers';

try {
  const creds = await fromInstanceMetadata({ timeout: 1000, maxRetries: 0 })();
  process.stdout.write(`${JSON.stringify({ accessKeyId: creds.accessKeyId, expiration: creds.expiration?.toISOString() })}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ error: String(err?.message ?? err) })}\n`);
  process.exitCode = 3;
}
