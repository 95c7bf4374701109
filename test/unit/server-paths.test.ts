import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { classify, normalisePath, routeAllowed } from '../../src/server/paths.ts';

describe('normalisePath', () => {
  it('collapses slashes, resolves dot segments and decodes once', () => {
    const cases: Array<[string, string]> = [
      ['/latest/meta-data/instance-id', 'latest/meta-data/instance-id'],
      ['/latest/meta-data/', 'latest/meta-data/'],
      ['//latest///meta-data//', 'latest/meta-data/'],
      ['/latest/./meta-data/.', 'latest/meta-data/'],
      ['/latest/a/b/../../meta-data', 'latest/meta-data'],
      ['/../../latest', 'latest'],
      ['/latest/meta-data/%69nstance-id', 'latest/meta-data/instance-id'],
      ['/latest%2Fmeta-data', 'latest/meta-data'],
      ['/latest/meta-data?x=1#y', 'latest/meta-data'],
      ['http://169.254.169.254/latest/user-data', 'latest/user-data'],
      ['HTTP://169.254.169.254', ''],
      ['/', ''],
    ];
    for (const [raw, path] of cases) assert.equal(normalisePath(raw)?.path, path, raw);
  });

  it('rejects malformed or doubly encoded targets, control characters and backslashes', () => {
    for (const raw of ['/latest/%zz', '/latest/%2569am', '/latest/a%00b', '/latest/a\\b', '/latest/%5C', 'latest/x', '*', '/a\tb']) {
      assert.equal(normalisePath(raw), undefined, raw);
    }
  });
});

describe('classify', () => {
  it('finds meta-data/iam in every spelling', () => {
    const cases: Array<[string, string[]]> = [
      ['/latest/meta-data/iam/security-credentials/role', ['security-credentials', 'role']],
      ['/latest/meta-data/IAM/', []],
      ['/2016-09-02/meta-data/iam/info', ['info']],
      ['/meta-data/iam/info', ['info']],
      ['/latest/x/../meta-data/%69%61%6d/info', ['info']],
      ['http://h/latest/meta-data/iam', []],
    ];
    for (const [raw, rest] of cases) assert.deepEqual(classify(raw), { kind: 'iam', rest }, raw);
  });

  it('never offers a decorated spelling of meta-data/iam to the upstream', () => {
    for (const raw of ['/latest/meta-data/iam;a/', '/latest/meta-data/iam./', '/latest/meta-data/IAM~', '/latest/meta-data/i-a-m/info', '/meta-data/iam./', '/v1/meta-data/iam/', '/latest/meta-data/%49AM%20/']) {
      assert.deepEqual(classify(raw), { kind: 'refused' }, raw);
    }
  });

  it('treats a segment that merely contains iam, anywhere else, as an ordinary path', () => {
    for (const path of [
      'latest/meta-data/tags/instance/William',
      'latest/meta-data/tags/instance/iam',
      'latest/meta-data/tags/instance/Team-IAM',
      'latest/meta-data/placement/iam/',
      'latest/meta-data/xiamx',
      'latest/dynamic/iam',
      'latest/dynamic/iam/security-credentials/',
    ]) {
      assert.deepEqual(classify(`/${path}`), { kind: 'passthrough', path }, path);
    }
  });

  it('recognises the token path only under a version', () => {
    assert.deepEqual(classify('/latest/api/token'), { kind: 'token' });
    assert.deepEqual(classify('/latest//api/token/'), { kind: 'token' });
    assert.deepEqual(classify('/api/token'), { kind: 'refused' });
    assert.deepEqual(classify('/latest/api/other'), { kind: 'refused' });
  });

  it('offers versioned paths of safe characters to the upstream', () => {
    assert.deepEqual(classify('/latest/meta-data/instance-id'), { kind: 'passthrough', path: 'latest/meta-data/instance-id' });
    assert.deepEqual(classify('/latest/meta-data/placement/'), { kind: 'passthrough', path: 'latest/meta-data/placement/' });
    assert.deepEqual(classify('/'), { kind: 'passthrough', path: '' });
    assert.deepEqual(classify('/meta-data/instance-id'), { kind: 'refused' });
    assert.deepEqual(classify('/latest/meta-data/tags/instance/a%20b'), { kind: 'refused' });
    assert.deepEqual(classify('/latest/%zz'), { kind: 'bad' });
  });
});

describe('routeAllowed', () => {
  const deny = [/^[^/]+\/user-data/, /^[^/]+\/meta-data\/identity-credentials(\/|$)/];
  it('allows everything not denied when the allow list is empty', () => {
    assert.equal(routeAllowed('latest/meta-data/instance-id', [], deny), true);
    assert.equal(routeAllowed('latest/user-data', [], deny), false);
    assert.equal(routeAllowed('latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance', [], deny), false);
  });
  it('applies deny rules to the lower-case form too', () => {
    assert.equal(routeAllowed('latest/User-Data', [], deny), false);
  });
  it('requires a match in a non-empty allow list, and deny wins', () => {
    const allow = [/^latest\/meta-data\/instance-id$/, /user-data/];
    assert.equal(routeAllowed('latest/meta-data/instance-id', allow, deny), true);
    assert.equal(routeAllowed('latest/meta-data/local-ipv4', allow, deny), false);
    assert.equal(routeAllowed('latest/user-data', allow, deny), false);
  });
  it('is not fooled by global regexps', () => {
    const g = [/instance-id/g];
    for (let i = 0; i < 3; i++) assert.equal(routeAllowed('latest/meta-data/instance-id', g, []), true);
  });
});
