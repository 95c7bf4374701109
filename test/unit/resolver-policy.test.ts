import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PodInfo } from '../../src/resolver/pod-index.ts';
import { MATCH_BUDGET_MS, parseRoleArn, Policy, PolicyConfigError, sanitizeSessionName, type PolicyOptions } from '../../src/resolver/policy.ts';
import type { Lookup } from '../../src/resolver/types.ts';
import { slimNamespace } from '../../src/resolver/kube.ts';

const BASE = 'arn:aws:iam::123456789012:role/';

function pod(overrides: Partial<PodInfo> = {}): PodInfo {
  return { uid: 'u1', name: 'web-1', namespace: 'dev', ip: '10.0.0.1', ips: ['10.0.0.1'], serviceAccount: 'sa', phase: 'Running', hostNetwork: false, deleting: false, ...overrides };
}

function policy(options: Partial<PolicyOptions> = {}): Policy {
  return new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-a', ...options });
}

const permitAll = { 'iam.amazonaws.com/permitted': '.*' };

function role(l: Lookup) {
  assert.equal(l.kind, 'role', `expected a role, got ${JSON.stringify(l)}`);
  return (l as Extract<Lookup, { kind: 'role' }>).identity;
}

function denial(l: Lookup) {
  assert.equal(l.kind, 'denied', `expected a denial, got ${JSON.stringify(l)}`);
  return l as Extract<Lookup, { kind: 'denied' }>;
}

describe('Policy: role annotation', () => {
  it('appends a role name to the base ARN', () => {
    const id = role(policy().evaluate(pod({ role: 'reader' }), permitAll));
    assert.equal(id.roleArn, `${BASE}reader`);
    assert.equal(id.roleName, 'reader');
  });

  it('accepts a name with a path (leading slash optional) and lists the last segment', () => {
    const id = role(policy().evaluate(pod({ role: '/team/app/reader' }), permitAll));
    assert.equal(id.roleArn, `${BASE}team/app/reader`);
    assert.equal(id.roleName, 'reader');
  });

  it('adds the missing slash of a base ARN, and a base ARN may carry a path', () => {
    assert.equal(role(policy({ roleBaseArn: 'arn:aws:iam::123456789012:role' }).evaluate(pod({ role: 'r' }), permitAll)).roleArn, `${BASE}r`);
    assert.equal(role(policy({ roleBaseArn: `${BASE}kiam/` }).evaluate(pod({ role: 'r' }), permitAll)).roleArn, `${BASE}kiam/r`);
  });

  it('accepts a full ARN in any partition, with a path', () => {
    const arn = 'arn:aws-cn:iam::210987654321:role/svc/writer';
    const id = role(policy({ roleBaseArn: undefined }).evaluate(pod({ role: arn }), permitAll));
    assert.equal(id.roleArn, arn);
    assert.equal(id.roleName, 'writer');
  });

  it('denies malformed ARNs and names', () => {
    for (const bad of ['arn:aws:iam::123:role/x', 'arn:aws:iam::123456789012:user/x', 'arn:aws:s3:::bucket', 'has space', 'a//b', 'x'.repeat(65)]) {
      const d = denial(policy().evaluate(pod({ role: bad }), permitAll));
      assert.equal(d.code, 'invalid-role', bad);
    }
  });

  it('denies a role name when there is no base ARN', () => {
    const d = denial(policy({ roleBaseArn: undefined }).evaluate(pod({ role: 'reader' }), permitAll));
    assert.equal(d.code, 'no-base-arn');
    assert.match(d.reason, /role-base-arn/);
  });

  it('no annotation and no default role → no-role', () => {
    const l = policy().evaluate(pod(), permitAll);
    assert.deepEqual(l, { kind: 'no-role', pod: { uid: 'u1', namespace: 'dev', name: 'web-1', ip: '10.0.0.1' } });
  });

  it('parseRoleArn', () => {
    assert.deepEqual(parseRoleArn(`${BASE}a/b`), { arn: `${BASE}a/b`, name: 'b' });
    assert.equal(parseRoleArn('arn:aws:iam::123456789012:role/'), undefined);
  });
});

describe('Policy: namespace restriction', () => {
  it('anchors the regex at both ends: "dev" does not permit "dev-admin"', () => {
    const p = policy({ roleBaseArn: undefined });
    const ns = { 'iam.amazonaws.com/permitted': `${BASE}dev` };
    assert.equal(p.evaluate(pod({ role: `${BASE}dev` }), ns).kind, 'role');
    const d = denial(p.evaluate(pod({ role: `${BASE}dev-admin` }), ns));
    assert.equal(d.code, 'not-permitted');
    assert.match(d.reason, /dev-admin/);
    assert.equal(d.role, `${BASE}dev-admin`);
  });

  it('matches the FULL role ARN, not the name', () => {
    const p = policy();
    assert.equal(denial(p.evaluate(pod({ role: 'reader' }), { 'iam.amazonaws.com/permitted': 'reader' })).code, 'not-permitted');
    assert.equal(p.evaluate(pod({ role: 'reader' }), { 'iam.amazonaws.com/permitted': '.*:role/reader' }).kind, 'role');
  });

  it('alternation stays anchored', () => {
    const p = policy();
    const ns = { 'iam.amazonaws.com/permitted': '.*/a|.*/b' };
    assert.equal(p.evaluate(pod({ role: 'a' }), ns).kind, 'role');
    assert.equal(p.evaluate(pod({ role: 'b' }), ns).kind, 'role');
    assert.equal(denial(p.evaluate(pod({ role: 'ab' }), ns)).code, 'not-permitted');
  });

  it('no annotation, unknown namespace and an invalid regex all deny, with distinct codes', () => {
    const p = policy();
    assert.equal(denial(p.evaluate(pod({ role: 'r' }), {})).code, 'namespace-no-policy');
    assert.equal(denial(p.evaluate(pod({ role: 'r' }), undefined)).code, 'namespace-unknown');
    const d = denial(p.evaluate(pod({ role: 'r' }), { 'iam.amazonaws.com/permitted': '(' }));
    assert.equal(d.code, 'namespace-invalid-policy');
    assert.match(d.reason, /valid regular expression/);
  });

  it('caches compiled regexes (same answer on repeat, invalid one included)', () => {
    const p = policy();
    for (let i = 0; i < 3; i++) {
      assert.equal(p.evaluate(pod({ role: 'r' }), { 'iam.amazonaws.com/permitted': '.*' }).kind, 'role');
      assert.equal(denial(p.evaluate(pod({ role: 'r' }), { 'iam.amazonaws.com/permitted': '[' })).code, 'namespace-invalid-policy');
    }
  });

  it('restriction off: any namespace, even unknown, permits', () => {
    const p = policy({ namespaceRestriction: false });
    assert.equal(p.evaluate(pod({ role: 'r' }), undefined).kind, 'role');
    assert.equal(p.evaluate(pod({ role: 'r' }), {}).kind, 'role');
  });
});

describe('Policy: default role', () => {
  it('applies to unannotated pods and is subject to the namespace restriction', () => {
    const p = policy({ defaultRole: 'fallback' });
    assert.equal(role(p.evaluate(pod(), permitAll)).roleArn, `${BASE}fallback`);
    assert.equal(denial(p.evaluate(pod(), { 'iam.amazonaws.com/permitted': '.*/other' })).code, 'not-permitted');
    assert.equal(role(p.evaluate(pod({ role: 'own' }), permitAll)).roleArn, `${BASE}own`, 'an annotation wins');
  });

  it('bad options fail at construction, naming the flag', () => {
    assert.throws(() => policy({ roleBaseArn: undefined, defaultRole: 'fallback' }), (e: Error) => e instanceof PolicyConfigError && /--default-role/.test(e.message));
    assert.throws(() => policy({ roleBaseArn: 'arn:aws:iam::1:role/' }), /--role-base-arn/);
    assert.throws(() => policy({ sessionNameTemplate: '{namespace}-{bogus}' }), /--session-name: unknown placeholder \{bogus\}/);
  });
});

describe('Policy: external ID and identity key', () => {
  it('takes the external ID from the annotation', () => {
    const id = role(policy().evaluate(pod({ role: 'r', externalId: 'ext-123' }), permitAll));
    assert.equal(id.externalId, 'ext-123');
    assert.equal('externalId' in role(policy().evaluate(pod({ role: 'r' }), permitAll)), false);
  });

  it('denies an external ID STS would reject', () => {
    assert.equal(denial(policy().evaluate(pod({ role: 'r', externalId: 'bad id!' }), permitAll)).code, 'invalid-external-id');
  });

  it('the key separates role, external ID and session name unambiguously', () => {
    const p = policy({ sessionNameTemplate: 'fixed' });
    const keys = new Set([
      role(p.evaluate(pod({ role: 'r' }), permitAll)).key,
      role(p.evaluate(pod({ role: 'r', externalId: 'e1' }), permitAll)).key,
      role(p.evaluate(pod({ role: 'r', externalId: 'e2' }), permitAll)).key,
      role(p.evaluate(pod({ role: 'r2' }), permitAll)).key,
      role(policy({ sessionNameTemplate: 'other' }).evaluate(pod({ role: 'r' }), permitAll)).key,
    ]);
    assert.equal(keys.size, 5);
    // Same inputs → same key (prefetch and request hit the same cache entry).
    assert.equal(role(p.evaluate(pod({ role: 'r', externalId: 'e1' }), permitAll)).key, role(p.evaluate(pod({ uid: 'x', role: 'r', externalId: 'e1' }), permitAll)).key);
  });
});

describe('Policy: session names', () => {
  it('fills every placeholder', () => {
    const p = policy({ sessionNameTemplate: '{namespace}.{pod}.{serviceAccount}.{node}.{role}' });
    assert.equal(role(p.evaluate(pod({ role: 'team/reader' }), permitAll)).sessionName, 'dev.web-1.sa.node-a.reader');
  });

  it('sanitises to [\\w+=,.@-] and truncates to 64', () => {
    const p = policy({ sessionNameTemplate: 'kiam:{pod}' });
    const long = 'a'.repeat(100);
    const name = role(p.evaluate(pod({ role: 'r', name: long }), permitAll)).sessionName;
    assert.equal(name.length, 64);
    assert.match(name, /^kiam-a+$/);
    assert.equal(sanitizeSessionName('ns/pod é#1'), 'ns-pod---1');
  });

  it('is at least 2 characters', () => {
    assert.ok(sanitizeSessionName('').length >= 2);
    assert.ok(sanitizeSessionName('x').length >= 2);
    assert.match(sanitizeSessionName('x'), /^[\w+=,.@-]{2,64}$/);
  });
});

describe("Policy: kube2iam's iam.amazonaws.com/allowed-roles", () => {
  const allowed = (list: unknown) => ({ 'iam.amazonaws.com/allowed-roles': typeof list === 'string' ? list : JSON.stringify(list) });

  it('a role name entry is prefixed with the base ARN and matches the whole ARN (glob by default)', () => {
    const p = policy();
    assert.equal(role(p.evaluate(pod({ role: 'reader' }), allowed(['reader']))).roleArn, `${BASE}reader`);
    assert.equal(denial(p.evaluate(pod({ role: 'reader-admin' }), allowed(['reader']))).code, 'not-permitted');
    assert.equal(denial(p.evaluate(pod({ role: 'team/reader' }), allowed(['reader']))).code, 'not-permitted');
  });

  it('glob: `*` spans any characters, paths included; regex characters are literal', () => {
    const p = policy();
    const ns = allowed(['my-custom-path/*', 'read.r']);
    assert.equal(role(p.evaluate(pod({ role: 'my-custom-path/app/reader' }), ns)).roleName, 'reader');
    assert.equal(denial(p.evaluate(pod({ role: 'other-path/reader' }), ns)).code, 'not-permitted');
    assert.equal(role(p.evaluate(pod({ role: 'read.r' }), ns)).roleName, 'read.r');
    assert.equal(denial(p.evaluate(pod({ role: 'readxr' }), ns)).code, 'not-permitted');
  });

  it('an ARN entry is taken whole, in any account', () => {
    const other = 'arn:aws:iam::210987654321:role/shared-*';
    const p = policy();
    assert.equal(role(p.evaluate(pod({ role: 'arn:aws:iam::210987654321:role/shared-logs' }), allowed([other]))).roleName, 'shared-logs');
    assert.equal(denial(p.evaluate(pod({ role: 'shared-logs' }), allowed([other]))).code, 'not-permitted', 'not the same ARN in our account');
  });

  it('regexp format: entries are regular expressions, anchored at both ends (kube2iam did not anchor)', () => {
    const p = policy({ allowedRolesFormat: 'regexp' });
    const ns = allowed(['my-custom-path/.*', 'reader']);
    assert.equal(role(p.evaluate(pod({ role: 'my-custom-path/app' }), ns)).roleName, 'app');
    assert.equal(role(p.evaluate(pod({ role: 'reader' }), ns)).roleName, 'reader');
    assert.equal(denial(p.evaluate(pod({ role: 'reader-admin' }), ns)).code, 'not-permitted');
    assert.equal(denial(p.evaluate(pod({ role: 'x-my-custom-path/app' }), ns)).code, 'not-permitted');
  });

  it('`permitted` wins when a namespace has both annotations', () => {
    const p = policy();
    const both = { 'iam.amazonaws.com/permitted': `${BASE}writer`, ...allowed(['reader']) };
    assert.equal(denial(p.evaluate(pod({ role: 'reader' }), both)).code, 'not-permitted');
    assert.equal(role(p.evaluate(pod({ role: 'writer' }), both)).roleName, 'writer');
  });

  it('a malformed annotation denies, saying why', () => {
    const p = policy();
    for (const bad of ['reader', '{"reader": true}', '["reader", 3]', '[""]', '"reader"']) {
      const d = denial(p.evaluate(pod({ role: 'reader' }), allowed(bad)));
      assert.equal(d.code, 'namespace-invalid-policy', bad);
      assert.match(d.reason, /iam\.amazonaws\.com\/allowed-roles is not a JSON list of role names or ARNs/);
    }
    const re = denial(policy({ allowedRolesFormat: 'regexp' }).evaluate(pod({ role: 'reader' }), allowed(['read('])));
    assert.equal(re.code, 'namespace-invalid-policy');
    assert.match(re.reason, /entry "read\(" is not a valid regular expression/);
  });

  it('an empty list permits nothing', () => {
    assert.equal(denial(policy().evaluate(pod({ role: 'reader' }), allowed([]))).code, 'not-permitted');
  });

  it('a role name entry without a base ARN denies, saying so', () => {
    const d = denial(policy({ roleBaseArn: undefined }).evaluate(pod({ role: `${BASE}reader` }), allowed(['reader'])));
    assert.equal(d.code, 'namespace-invalid-policy');
    assert.match(d.reason, /entry "reader" is a role name, which needs --role-base-arn/);
    assert.equal(role(policy({ roleBaseArn: undefined }).evaluate(pod({ role: `${BASE}reader` }), allowed([`${BASE}reader`]))).roleName, 'reader');
  });

  it('a namespace with neither annotation still permits nothing, and the reason names both', () => {
    const d = denial(policy().evaluate(pod({ role: 'reader' }), {}));
    assert.equal(d.code, 'namespace-no-policy');
    assert.match(d.reason, /iam\.amazonaws\.com\/permitted \(or iam\.amazonaws\.com\/allowed-roles\)/);
  });

  it('the default role is held to the list too (kube2iam exempted it)', () => {
    const p = policy({ defaultRole: 'fallback' });
    assert.equal(denial(p.evaluate(pod(), allowed(['reader']))).code, 'not-permitted');
    assert.equal(role(p.evaluate(pod(), allowed(['reader', 'fallback']))).roleName, 'fallback');
  });

  it('the namespace watch keeps the annotation', () => {
    const slim = slimNamespace({ metadata: { name: 'dev', annotations: { 'iam.amazonaws.com/allowed-roles': '["reader"]', other: 'x' } } });
    assert.deepEqual(slim.metadata.annotations, { 'iam.amazonaws.com/allowed-roles': '["reader"]' });
  });
});

describe('Policy: namespace patterns run in linear time', () => {
  const PERMITTED = 'iam.amazonaws.com/permitted';
  const ALLOWED = 'iam.amazonaws.com/allowed-roles';

  it('refuses what the linear-time engine cannot run (backreferences, lookahead, repetition above 16): deny, saying why', () => {
    const p = policy();
    // Each would permit the role on a backtracking engine.
    for (const pattern of [`${BASE}(r)\\1`, `(?=arn:).*`, `(?!x)${BASE}rr`, `${BASE}[a-z]{1,64}`]) {
      const d = denial(p.evaluate(pod({ role: 'rr' }), { [PERMITTED]: pattern }));
      assert.equal(d.code, 'namespace-invalid-policy', pattern);
      assert.match(d.reason, /the linear-time engine cannot run it: no backreferences, no lookarounds, no counted repetition above 16/, pattern);
    }
    const re = denial(policy({ allowedRolesFormat: 'regexp' }).evaluate(pod({ role: 'rr' }), { [ALLOWED]: JSON.stringify(['(r)\\1']) }));
    assert.equal(re.code, 'namespace-invalid-policy');
    assert.match(re.reason, /entry "\(r\)\\1" is not a valid regular expression: the linear-time engine cannot run it/);
  });

  it('catastrophic patterns answer, over the longest ARN IAM allows, and every other pod keeps its answer', () => {
    // The guard first: on a backtracking engine this test would never end, so prove the linear engine is in use.
    assert.equal(denial(policy().evaluate(pod({ role: 'rr' }), { [PERMITTED]: `${BASE}(r)\\1` })).code, 'namespace-invalid-policy');
    assert.equal(denial(policy({ allowedRolesFormat: 'regexp' }).evaluate(pod({ role: 'rr' }), { [ALLOWED]: '["(r)\\\\1"]' })).code, 'namespace-invalid-policy');

    // IAM's limits: a 512-character path and a 64-character name. Beyond them no pattern runs at all.
    const longest = `${BASE}${'a'.repeat(510)}/${'a'.repeat(63)}c`;
    const namespaces: Record<string, Record<string, string>> = {
      good: { [PERMITTED]: `${BASE}reader` },
      // Exponential on a backtracking engine for a role of 'a's that does not end in b.
      nested: { [PERMITTED]: `${BASE}(a+)+b` },
      path: { [PERMITTED]: `${BASE}(a+/?)+b` },
      alternation: { [PERMITTED]: `${BASE}(a|a)*$x` },
      stars: { [ALLOWED]: JSON.stringify([`${BASE}(.*a){16}b`]) },
      globs: { [ALLOWED]: JSON.stringify([`${BASE}*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b`]) },
    };
    const pods: Array<{ p: PodInfo; expect: string }> = [
      { p: pod({ uid: 'g1', namespace: 'good', role: 'reader' }), expect: 'role' },
      { p: pod({ uid: 'e1', namespace: 'nested', role: `${'a'.repeat(63)}c` }), expect: 'not-permitted' },
      { p: pod({ uid: 'e2', namespace: 'nested', role: longest }), expect: 'not-permitted' },
      { p: pod({ uid: 'e3', namespace: 'path', role: longest }), expect: 'not-permitted' },
      { p: pod({ uid: 'e4', namespace: 'alternation', role: longest }), expect: 'not-permitted' },
      { p: pod({ uid: 'g2', namespace: 'good', role: 'reader' }), expect: 'role' },
      { p: pod({ uid: 'e5', namespace: 'stars', role: longest }), expect: 'not-permitted' },
      { p: pod({ uid: 'e6', namespace: 'globs', role: longest }), expect: 'not-permitted' },
      // 50,000 characters: refused as no IAM role before any pattern sees it.
      { p: pod({ uid: 'e7', namespace: 'nested', role: `${BASE}${'a'.repeat(50_000)}/c` }), expect: 'invalid-role' },
      { p: pod({ uid: 'e8', namespace: 'nested', role: `${'a/'.repeat(25_000)}c` }), expect: 'invalid-role' },
      { p: pod({ uid: 'g3', namespace: 'good', role: 'reader' }), expect: 'role' },
    ];
    for (const engine of [policy(), policy({ allowedRolesFormat: 'regexp' })]) {
      for (let round = 0; round < 2; round++) {
        for (const { p, expect } of pods) {
          const answer = engine.evaluate(p, namespaces[p.namespace]);
          if (expect === 'role') assert.equal(role(answer).roleArn, `${BASE}reader`, p.uid);
          else assert.equal(denial(answer).code, expect, p.uid);
        }
      }
    }
  });

  it("holds role ARNs to IAM's limits: a path of 512 characters, an ARN of 2048", () => {
    const p = policy();
    assert.equal(role(p.evaluate(pod({ role: `${'p'.repeat(510)}/r` }), permitAll)).roleName, 'r');
    assert.equal(role(p.evaluate(pod({ role: `${BASE}${'p'.repeat(510)}/r` }), permitAll)).roleName, 'r');
    const longPath = denial(p.evaluate(pod({ role: `${'p'.repeat(511)}/r` }), permitAll));
    assert.equal(longPath.code, 'invalid-role');
    assert.match(longPath.reason, /path is 513 characters long, IAM allows at most 512/);
    const huge = denial(p.evaluate(pod({ role: `${BASE}${'p/'.repeat(1100)}r` }), permitAll));
    assert.equal(huge.code, 'invalid-role');
    assert.match(huge.reason, /IAM role ARNs have at most 2048/);
    assert.ok(huge.reason.length < 200, 'the reason does not repeat the annotation');
  });

  it('the engine also matches what the backtracking one did', () => {
    const p = policy({ allowedRolesFormat: 'regexp' });
    const ns = { [PERMITTED]: `${BASE}(team-a|team-b)/[a-z]+-(reader|writer)` };
    assert.equal(role(p.evaluate(pod({ role: 'team-b/app-writer' }), ns)).roleName, 'app-writer');
    assert.equal(denial(p.evaluate(pod({ role: 'team-c/app-writer' }), ns)).code, 'not-permitted');
    assert.equal(role(p.evaluate(pod({ role: 'x1' }), { [ALLOWED]: JSON.stringify(['x\\d{1,2}']) })).roleName, 'x1');
  });
});

describe('Policy: the match budget', () => {
  const PERMITTED = 'iam.amazonaws.com/permitted';
  /** A clock that says every match took `ms[i]` milliseconds, in turn (then 0). */
  function clockOf(...ms: number[]): { now: () => number; reads: () => number } {
    let t = 0;
    let reads = 0;
    let started = false;
    return {
      now: () => {
        reads++;
        if (started) t += ms.shift() ?? 0;
        started = !started;
        return t;
      },
      reads: () => reads,
    };
  }

  it(`a pattern slower than ${MATCH_BUDGET_MS} ms twice in a row denies from then on, without running again`, () => {
    const clock = clockOf(MATCH_BUDGET_MS + 1, MATCH_BUDGET_MS + 1);
    const p = policy({ now: clock.now });
    const ns = { [PERMITTED]: `${BASE}(.*a){16}b` };
    const d = denial(p.evaluate(pod({ role: 'reader' }), ns));
    assert.equal(d.code, 'namespace-invalid-policy');
    assert.match(d.reason, /permitted took over 25 ms of CPU to match, twice: it is no longer evaluated; write a simpler pattern/);
    const reads = clock.reads();
    assert.equal(denial(p.evaluate(pod({ uid: 'u2', role: 'writer' }), ns)).code, 'namespace-invalid-policy');
    assert.equal(clock.reads(), reads, 'not run again');
    // Other namespaces' patterns are untouched.
    assert.equal(role(p.evaluate(pod({ role: 'reader' }), { [PERMITTED]: `${BASE}reader` })).roleName, 'reader');
  });

  it('one slow match (a garbage collection) is forgiven: the second run decides', () => {
    const p = policy({ now: clockOf(MATCH_BUDGET_MS + 100, 0).now });
    assert.equal(role(p.evaluate(pod({ role: 'reader' }), { [PERMITTED]: `${BASE}reader` })).roleName, 'reader');
    const regexp = policy({ allowedRolesFormat: 'regexp', now: clockOf(MATCH_BUDGET_MS + 1, MATCH_BUDGET_MS + 1).now });
    assert.match(denial(regexp.evaluate(pod({ role: 'reader' }), { 'iam.amazonaws.com/allowed-roles': '["reader"]' })).reason, /allowed-roles took over 25 ms of CPU/);
  });

  it('answers are remembered per pattern and role ARN: a re-evaluated pod runs no match', () => {
    const clock = clockOf();
    const p = policy({ now: clock.now });
    const ns = { [PERMITTED]: `${BASE}(reader|writer)` };
    assert.equal(p.evaluate(pod({ role: 'reader' }), ns).kind, 'role');
    const reads = clock.reads();
    for (let i = 0; i < 3; i++) assert.equal(p.evaluate(pod({ uid: `u${i}`, role: 'reader' }), ns).kind, 'role');
    assert.equal(clock.reads(), reads);
    assert.equal(denial(p.evaluate(pod({ role: 'admin' }), ns)).code, 'not-permitted');
    assert.equal(clock.reads(), reads + 2);
  });
});
