/**
 * `kiam webhook` on the command line: its flags through the real parser (src/cli.ts, src/webhook/options.ts), and
 * the entry point (src/main.ts) run as a child: a kubeconfig that does not load, and SIGTERM while the self-managed
 * certificate is still waiting for an API server that does not answer (the child never listens: it has no
 * certificate to serve yet).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCommandLine } from '../../src/cli.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

const webhook = (args: string[], env: NodeJS.ProcessEnv = {}) => parseCommandLine(['webhook', ...args], env);

describe('flags', () => {
  test('defaults: port 9443, self-managed TLS in kiam/kiam-webhook-tls for kiam-webhook, audience kiam, IPv4', () => {
    const inv = webhook([]);
    assert.equal(inv.kind, 'webhook', inv.kind === 'exit' ? inv.output : '');
    assert.deepEqual(inv.kind === 'webhook' && inv.options, {
      port: 9443,
      namespace: 'kiam',
      serviceName: 'kiam-webhook',
      secretName: 'kiam-webhook-tls',
      webhookConfigName: 'kiam-webhook',
      tokenAudience: 'kiam',
      ipv6: false,
      logLevel: 'info',
      logFormat: 'json',
    });
  });

  test('the namespace from POD_NAMESPACE (the downward API), unless --namespace says otherwise', () => {
    const fromEnv = webhook([], { POD_NAMESPACE: 'security' });
    assert.equal(fromEnv.kind === 'webhook' && fromEnv.options.namespace, 'security');
    const fromFlag = webhook(['--namespace', 'other'], { POD_NAMESPACE: 'security' });
    assert.equal(fromFlag.kind === 'webhook' && fromFlag.options.namespace, 'other');
  });

  test('file mode, IPv6, another audience', () => {
    const inv = webhook(['--tls-cert-file=/tls/tls.crt', '--tls-key-file=/tls/tls.key', '--ipv6', '--token-audience', 'sts.example.com', '--port', '8443']);
    assert.ok(inv.kind === 'webhook');
    assert.equal(inv.options.tlsCertFile, '/tls/tls.crt');
    assert.equal(inv.options.tlsKeyFile, '/tls/tls.key');
    assert.equal(inv.options.ipv6, true);
    assert.equal(inv.options.tokenAudience, 'sts.example.com');
    assert.equal(inv.options.port, 8443);
  });

  test('every mistake at once, each naming its flag, exit 2', () => {
    const inv = webhook(['--port', '70000', '--tls-key-file', 'k', '--namespace', 'Kiam', '--service-name', 'a.b', '--secret-name', 'x_y', '--token-audience', 'two words']);
    assert.equal(inv.kind, 'exit');
    assert.equal(inv.kind === 'exit' && inv.code, 2);
    const lines = (inv.kind === 'exit' ? inv.output : '').trim().split('\n');
    assert.deepEqual(lines, [
      'error: --port: "70000" is not a port number (1-65535)',
      'error: --tls-cert-file and --tls-key-file go together (neither: the self-managed CA)',
      'error: --namespace: "Kiam" is not a namespace name',
      'error: --service-name: "a.b" is not a service name',
      'error: --secret-name: "x_y" is not a secret name',
      'error: --token-audience: "two words" must be 1 to 256 printable characters without blanks',
    ]);
  });

  test('the agent’s flags are not the webhook’s (and no peer-flag translation applies to it)', () => {
    const inv = webhook(['--node-name', 'n1']);
    assert.equal(inv.kind, 'exit');
    assert.match(inv.kind === 'exit' ? inv.output : '', /unknown option '--node-name'/);
  });

  test('kiam --help lists the subcommand', () => {
    const inv = parseCommandLine(['--help']);
    assert.match(inv.kind === 'exit' ? inv.output : '', /^\s+webhook\b.*admission webhook/m);
  });
});

describe('the entry point', () => {
  /** src/main.ts as a child, with no cluster hints from this environment. */
  function run(args: string[], onStdout?: (text: string, child: ReturnType<typeof spawn>) => void, entry: 'sources' | 'bundle' = 'sources') {
    const env: NodeJS.ProcessEnv = { ...process.env, AWS_EC2_METADATA_DISABLED: 'true' };
    for (const k of ['KUBERNETES_SERVICE_HOST', 'KUBERNETES_SERVICE_PORT', 'KUBECONFIG', 'NODE_OPTIONS', 'POD_NAMESPACE']) delete env[k];
    const main = entry === 'bundle' ? [join(ROOT, 'dist/kiam.mjs')] : ['--import', 'tsx', join(ROOT, 'src/main.ts')];
    const child = spawn(process.execPath, [...main, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      onStdout?.(stdout, child);
    });
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      }),
    );
  }

  test('a kubeconfig that does not load: exit 1, saying so', async () => {
    const r = await run(['webhook', '--kubeconfig', '/nonexistent/kubeconfig']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^kiam: --kubeconfig \/nonexistent\/kubeconfig: cannot load/);
  });

  test('the production bundle runs the webhook from its own bundle, dist/kiam-webhook.mjs (not carried by the agent)', async () => {
    const agent = join(ROOT, 'dist/kiam.mjs');
    const webhook = join(ROOT, 'dist/kiam-webhook.mjs');
    assert.ok(existsSync(agent) && existsSync(webhook), 'dist/ is built by `npm run build` (npm ci and npm test run it)');
    assert.doesNotMatch(readFileSync(agent, 'latin1'), /createServing|@peculiar\/(?:utils|asn1)/, 'the agent bundle has no X.509 code');
    const r = await run(['webhook', '--kubeconfig', '/nonexistent/kubeconfig'], undefined, 'bundle');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^kiam: --kubeconfig \/nonexistent\/kubeconfig: cannot load/);
  });

  test('SIGTERM while waiting for the API server for its certificate: exit 0, having never listened', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiam-webhook-cli-'));
    try {
      // An API server address nothing listens on (port 1 of loopback): every request is refused at once.
      const kubeconfig = join(dir, 'kubeconfig');
      writeFileSync(
        kubeconfig,
        ['apiVersion: v1', 'kind: Config', 'clusters:', '- name: c', '  cluster:', '    server: https://127.0.0.1:1', 'users:', '- name: u', '  user:', '    token: t',
          'contexts:', '- name: x', '  context:', '    cluster: c', '    user: u', 'current-context: x', ''].join('\n'),
      );
      let signalled = false;
      const r = await run(['webhook', '--kubeconfig', kubeconfig, '--port', '1'], (out, child) => {
        if (!signalled && out.includes('webhook certificate not ready')) {
          signalled = true;
          child.kill('SIGTERM');
        }
      });
      assert.ok(signalled, r.stdout + r.stderr);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /"msg":"stopped during start-up"/);
      assert.doesNotMatch(r.stdout, /webhook listening/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
