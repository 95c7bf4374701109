/**
 * Real clients against the metadata app listening on 127.0.0.1:0: the JS SDK v3 instance-metadata
 * provider in-process and botocore (Debian python3-botocore) in a clean child environment. They only
 * ever talk to this loopback server; the node's own metadata is a loopback fake behind it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { fromInstanceMetadata } from '@aws-sdk/credential-providers';
import { pino } from 'pino';
import type { FastifyInstance } from 'fastify';
import { systemClock } from '../../src/clock.ts';
import { createMetrics, type Metrics } from '../../src/metrics.ts';
import { buildApp } from '../../src/server/app.ts';
import type { CredentialProvider, Credentials, IdentityLookup, Lookup, RoleIdentity } from '../../src/server/ports.ts';
import { createTokenService } from '../../src/server/tokens.ts';
import { createUpstream, type UpstreamClient } from '../../src/server/upstream.ts';
import { FakeMetadataService } from '../fakes/metadata.ts';

const run = promisify(execFile);
const ROLE: RoleIdentity = {
  key: 'arn:aws:iam::123456789012:role/sdk-role|sdk',
  roleArn: 'arn:aws:iam::123456789012:role/sdk-role',
  roleName: 'sdk-role',
  sessionName: 'sdk',
};

describe('real SDK clients', () => {
  let app: FastifyInstance;
  let fake: FakeMetadataService;
  let upstream: UpstreamClient;
  let metrics: Metrics;
  let endpoint: string;
  let creds: Credentials;

  before(async () => {
    const now = Date.now();
    creds = {
      accessKeyId: 'ASIAPODSDKTEST000001',
      secretAccessKey: 'pod-secret-key/abc+def',
      sessionToken: 'pod-session-token==',
      expiration: Math.floor(now / 1000) * 1000 + 3600_000,
      lastUpdated: now,
    };
    const lookup: IdentityLookup = {
      // Every request here comes from loopback: the test plays one pod with the role.
      async lookup(ip: string): Promise<Lookup> {
        return ip === '127.0.0.1' ? { kind: 'role', pod: { uid: 'uid-sdk', ip, namespace: 'sdk', name: 'sdk-pod' }, identity: ROLE } : { kind: 'unknown' };
      },
    };
    const credentials: CredentialProvider = { get: async (id) => (id.key === ROLE.key ? creds : Promise.reject(new Error('no'))) };
    const logger = pino({ level: 'silent' });
    fake = new FakeMetadataService();
    upstream = createUpstream({ endpoint: await fake.start(), clock: systemClock, logger });
    metrics = createMetrics();
    app = buildApp({ lookup, credentials, upstream, tokens: createTokenService({ clock: systemClock }), metrics, logger, clock: systemClock, allowRoutes: [], denyRoutes: [] });
    await app.listen({ host: '127.0.0.1', port: 0 });
    endpoint = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/`;
  });

  after(async () => {
    await app.close();
    upstream.close();
    await fake.close();
  });

  async function tokenPuts(): Promise<number> {
    const data = await metrics.requestDuration.get();
    return data.values.find((v) => v.metricName === 'kiam_metadata_request_duration_seconds_count' && v.labels.handler === 'token' && v.labels.code === '200')?.value ?? 0;
  }

  it('the JS SDK v3 fromInstanceMetadata gets the pod role credentials over IMDSv2', async () => {
    const saved = { disabled: process.env.AWS_EC2_METADATA_DISABLED, endpoint: process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT };
    const putsBefore = await tokenPuts();
    let got;
    try {
      delete process.env.AWS_EC2_METADATA_DISABLED;
      process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = endpoint;
      got = await fromInstanceMetadata({ timeout: 2000, maxRetries: 0 })();
    } finally {
      if (saved.disabled === undefined) delete process.env.AWS_EC2_METADATA_DISABLED;
      else process.env.AWS_EC2_METADATA_DISABLED = saved.disabled;
      if (saved.endpoint === undefined) delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
      else process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = saved.endpoint;
    }
    assert.equal(got.accessKeyId, creds.accessKeyId);
    assert.equal(got.secretAccessKey, creds.secretAccessKey);
    assert.equal(got.sessionToken, creds.sessionToken);
    assert.equal(got.expiration?.getTime(), creds.expiration);
    assert.ok((await tokenPuts()) > putsBefore, 'used IMDSv2');
    assert.deepEqual(fake.requests, [], 'nothing reached the node metadata');
  });

  it('botocore gets the pod role credentials', async (t) => {
    const python = '/usr/bin/python3';
    const script = [
      'import json, botocore.session',
      'c = botocore.session.get_session().get_credentials()',
      'f = c.get_frozen_credentials()',
      'print(json.dumps({"method": c.method, "key": f.access_key, "secret": f.secret_key, "token": f.token}))',
    ].join('\n');
    if (!existsSync(python)) {
      if (process.env.CI === 'true') assert.fail('/usr/bin/python3 is missing (apt-get install python3-botocore)');
      t.skip('/usr/bin/python3 not installed');
      return;
    }
    const probe = await run(python, ['-c', 'import botocore'], { timeout: 10_000 }).then(() => true, () => false);
    if (!probe) {
      if (process.env.CI === 'true') assert.fail('botocore is missing (apt-get install python3-botocore)');
      t.skip('python3-botocore not installed');
      return;
    }
    const putsBefore = await tokenPuts();
    const { stdout } = await run(python, ['-c', script], {
      timeout: 20_000,
      env: {
        PATH: '/usr/bin:/bin',
        HOME: '/nonexistent',
        AWS_CONFIG_FILE: '/nonexistent',
        AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
        AWS_EC2_METADATA_SERVICE_ENDPOINT: endpoint,
      },
    });
    const got = JSON.parse(stdout) as { method: string; key: string; secret: string; token: string };
    assert.deepEqual(got, { method: 'iam-role', key: creds.accessKeyId, secret: creds.secretAccessKey, token: creds.sessionToken });
    assert.ok((await tokenPuts()) > putsBefore, 'used IMDSv2');
    assert.deepEqual(fake.requests, []);
  });
});
