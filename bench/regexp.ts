/**
 * Namespace and route patterns: V8's linear-time RegExp engine (the `l` flag, what the agent uses) against its
 * default backtracking engine, and against the `re2` package when one is installed (README, design decisions).
 *
 *   node --import tsx bench/regexp.ts [--re2 <directory holding node_modules/re2>]
 *
 * Prints figures only, asserts nothing (the unit tests assert the behaviour):
 *   1. typical patterns against typical inputs, per test, for each engine;
 *   2. `^(?:arn:…:role/(a+)+b)$` against a role ARN of n `a`s: the backtracking time doubles with each `a`
 *      (stopped once one test passes 0.5 s); the linear engine at n = 50,000;
 *   3. Policy.evaluate for 100 ordinary pods, alone and with a pathological pod evaluated between any two of them
 *      (p50 / p99 of the ordinary pods' evaluations), and what each pathological evaluation blocks the thread for;
 *   4. evaluations of several pathological patterns over the longest role ARN IAM allows, a new ARN each time: the
 *      first, then the next ones (the match budget has stopped the worst by then).
 */
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { linearRegExp } from '../src/config.ts';
import type { PodInfo } from '../src/resolver/pod-index.ts';
import { MATCH_BUDGET_MS, Policy } from '../src/resolver/policy.ts';

const BASE = 'arn:aws:iam::123456789012:role/';

type Engine = { name: string; compile(source: string): { test(s: string): boolean } };

function engines(re2Dir: string | undefined): Engine[] {
  const list: Engine[] = [
    { name: 'backtracking', compile: (s) => new RegExp(s) },
    { name: 'linear (l)', compile: (s) => linearRegExp(s) },
  ];
  if (re2Dir !== undefined) {
    const RE2 = createRequire(`${re2Dir}/`)('re2') as new (source: string) => { test(s: string): boolean };
    list.push({ name: 're2', compile: (s) => new RE2(s) });
  }
  return list;
}

/** Nanoseconds per call of fn, over enough calls to last about 200 ms. */
function nsPerCall(fn: () => void): number {
  let n = 1;
  for (;;) {
    const start = performance.now();
    for (let i = 0; i < n; i++) fn();
    const ms = performance.now() - start;
    if (ms > 200) return (ms * 1e6) / n;
    n *= 4;
  }
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

const args = process.argv.slice(2);
const re2Dir = args[0] === '--re2' ? args[1] : undefined;
const all = engines(re2Dir);
console.log(`# RegExp engines, Node ${process.version}${re2Dir ? ', re2 from ' + re2Dir : ''}\n`);

// 1. Typical patterns.
const typical: Array<[string, string, string]> = [
  ['permitted', `^(?:${BASE}reporting-.*)$`, `${BASE}reporting-db-reader`],
  ['permitted, alternation', `^(?:${BASE}(team-a|team-b)/[a-z]+-(reader|writer))$`, `${BASE}team-b/app-writer`],
  ['allowed-roles glob', `^${BASE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}(?:my-path/.*)$`, `${BASE}my-path/app/reader`],
  ['default deny (user-data)', '^[^/]+/user-data(/|$)', 'latest/meta-data/placement/availability-zone'],
];
console.log('## 1. Typical patterns: ns per test\n');
console.log(`| pattern | ${all.map((e) => e.name).join(' | ')} |`);
console.log(`|---|${all.map(() => '---:').join('|')}|`);
for (const [name, source, input] of typical) {
  const cells = all.map((e) => {
    const re = e.compile(source);
    return nsPerCall(() => re.test(input)).toFixed(0);
  });
  console.log(`| ${name} | ${cells.join(' | ')} |`);
}

// 2. A catastrophic pattern.
console.log('\n## 2. `(a+)+b` anchored, against `…:role/` + n × `a` + `c`: ms per test\n');
const catastrophic = `^(?:${BASE}(a+)+b)$`;
console.log('| n | backtracking | linear (l) |' + (re2Dir ? ' re2 |' : ''));
console.log('|---:|---:|---:|' + (re2Dir ? '---:|' : ''));
const backtracking = new RegExp(catastrophic);
const linear = linearRegExp(catastrophic);
const re2 = re2Dir ? all[2]!.compile(catastrophic) : undefined;
/** Milliseconds one call of fn takes. */
const ms = (fn: () => unknown) => {
  const start = performance.now();
  fn();
  return performance.now() - start;
};
let stopped = false;
for (const n of [16, 18, 20, 22, 24, 26, 28, 30, 50_000]) {
  const input = `${BASE}${'a'.repeat(n)}c`;
  const b = stopped ? 'not run' : ms(() => backtracking.test(input)).toFixed(3);
  if (!stopped && Number(b) > 500) stopped = true;
  const l = ms(() => linear.test(input)).toFixed(3);
  console.log(`| ${n} | ${b} | ${l} |${re2 ? ` ${ms(() => re2.test(input)).toFixed(3)} |` : ''}`);
}

// 3. The policy: ordinary pods, alone and between pathological ones; the cost of a pathological evaluation.
console.log('\n## 3. Policy.evaluate: 100 ordinary pods (µs), alone and with a pathological pod between any two\n');
const policy = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-a' });
const pod = (i: number, namespace: string, role: string): PodInfo => ({
  uid: `u${i}`, name: `p-${i}`, namespace, ip: `10.0.${i >> 8}.${i & 255}`, ips: [], serviceAccount: 'sa', phase: 'Running', hostNetwork: false, deleting: false, role,
});
const ordinary = Array.from({ length: 100 }, (_, i) => pod(i, `team-${i % 10}`, `team-${i % 10}-reader`));
const nsOf = (name: string) => ({ 'iam.amazonaws.com/permitted': `${BASE}${name}-.*` });
// The longest role IAM allows (a 512-character path, a 64-character name), new for every evaluation so that no
// cached answer helps: what a pod owner changing the annotation again and again can cost.
let fresh = 0;
const longest = () => `${BASE}${'a'.repeat(510)}/${'a'.repeat(57)}${String(fresh++).padStart(6, '0')}c`;
const evilNs = { 'iam.amazonaws.com/permitted': `${BASE}(a+/?)+b` };
for (const withEvil of [false, true]) {
  const samples: number[] = [];
  let evilMs = 0;
  for (let round = 0; round < 50; round++) {
    for (const p of ordinary) {
      if (withEvil) evilMs = Math.max(evilMs, ms(() => policy.evaluate(pod(1000, 'evil', longest()), evilNs)));
      const start = performance.now();
      policy.evaluate(p, nsOf(p.namespace));
      samples.push((performance.now() - start) * 1000);
    }
  }
  samples.sort((a, b) => a - b);
  const extra = withEvil ? `; each pathological evaluation (\`(a+/?)+b\`, a new ${longest().length}-character ARN each time): at most ${evilMs.toFixed(2)} ms` : '';
  console.log(`- ${withEvil ? 'with' : 'alone'}: p50 ${quantile(samples, 0.5).toFixed(2)} µs, p99 ${quantile(samples, 0.99).toFixed(2)} µs${extra}`);
}

console.log('\n## 4. Evaluations of a pathological pattern over the longest ARN IAM allows, a new ARN each time: ms\n');
console.log(`A match over MATCH_BUDGET_MS (${MATCH_BUDGET_MS} ms) twice in a row denies the namespace from then on without running.\n`);
console.log('| permitted (after the base ARN) | first | then (median of 4) | answer |');
console.log('|---|---:|---:|---|');
for (const tail of ['(a+)+b', '(a|a)*$x', '(.*a){8}b', '(.*a){16}b', `(?:${'.*a'.repeat(18)}){16}b`]) {
  const own = new Policy({ roleBaseArn: BASE, namespaceRestriction: true, sessionNameTemplate: '{namespace}.{pod}', nodeName: 'node-a' });
  const ns = { 'iam.amazonaws.com/permitted': `${BASE}${tail}` };
  let answer = '';
  const first = ms(() => {
    const l = own.evaluate(pod(2000, 'evil', longest()), ns);
    answer = l.kind === 'denied' ? l.code : l.kind;
  });
  const then = Array.from({ length: 4 }, () => ms(() => own.evaluate(pod(2000, 'evil', longest()), ns))).sort((a, b) => a - b);
  const shown = (tail.length > 40 ? `${tail.slice(0, 37)}…` : tail).replace(/\|/g, '\\|');
  console.log(`| \`${shown}\` | ${first.toFixed(2)} | ${then[2]!.toFixed(2)} | ${answer} |`);
}

if (re2) {
  console.log('\n## 5. The many-state pattern over the longest ARN IAM allows, per engine: ms (median of 5)\n');
  const source = `^(?:${BASE}(?:${'.*a'.repeat(18)}){16}b)$`;
  console.log('| engine | ms |');
  console.log('|---|---:|');
  for (const e of all.slice(1)) {
    const re = e.compile(source);
    const times = Array.from({ length: 5 }, () => {
      const input = longest();
      return ms(() => re.test(input));
    }).sort((a, b) => a - b);
    console.log(`| ${e.name} | ${times[2]!.toFixed(2)} |`);
  }
}
