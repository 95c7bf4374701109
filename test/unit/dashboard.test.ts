/**
 * deploy/grafana-dashboard.json against the agent's real metrics: every metric named in every PromQL
 * expression exists in the registry createMetrics() builds (histograms through their _bucket/_sum/_count
 * series), every label in `by (…)`, in a `{…}` matcher or in a legend exists on the metrics it applies to,
 * and every agent metric has a panel. A renamed metric or label fails here, not on someone's screen.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createMetrics } from '../../src/metrics.ts';

const DASHBOARD = new URL('../../deploy/grafana-dashboard.json', import.meta.url);

/** Labels Prometheus adds to every scraped series (not in the agent's registry). */
const TARGET_LABELS = new Set(['instance', 'job']);

const FUNCTIONS = new Set([
  'sum', 'avg', 'min', 'max', 'count', 'topk', 'bottomk', 'quantile', 'stddev', 'stdvar', 'group', 'count_values',
  'rate', 'irate', 'increase', 'delta', 'idelta', 'deriv', 'changes', 'resets',
  'avg_over_time', 'min_over_time', 'max_over_time', 'sum_over_time', 'count_over_time', 'last_over_time', 'quantile_over_time',
  'histogram_quantile', 'clamp_min', 'clamp_max', 'clamp', 'abs', 'ceil', 'floor', 'round', 'vector', 'scalar', 'absent', 'label_replace', 'time',
]);
const KEYWORDS = new Set(['bool', 'and', 'or', 'unless', 'offset']);
/** Keywords followed by a list of label names. */
const LABEL_LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
const GROUPING = new Set(['by', 'without']);

interface MetricInfo {
  type: string;
  labels: ReadonlySet<string>;
}
export type Registry = ReadonlyMap<string, MetricInfo>;

async function agentRegistry(): Promise<Registry> {
  const metrics = createMetrics({ defaultMetrics: true });
  const out = new Map<string, MetricInfo>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    // prom-client keeps the label names on the metric object; its types do not declare them.
    const labelNames = (metrics.registry.getSingleMetric(m.name) as unknown as { labelNames?: unknown }).labelNames;
    assert.ok(Array.isArray(labelNames), `prom-client no longer exposes labelNames on ${m.name}: update this test`);
    out.set(m.name, { type: String(m.type), labels: new Set(labelNames as string[]) });
  }
  return out;
}

type Token =
  | { kind: 'ident'; value: string }
  | { kind: 'matchers'; labels: string[] }
  | { kind: 'punct'; value: string }
  | { kind: 'other' };

function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < expr.length) {
    const c = expr[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '"' || c === "'" || c === '`') {
      const end = expr.indexOf(c, i + 1);
      if (end < 0) throw new Error(`unterminated string in ${expr}`);
      tokens.push({ kind: 'other' });
      i = end + 1;
    } else if (c === '[') {
      const end = expr.indexOf(']', i);
      if (end < 0) throw new Error(`unterminated range in ${expr}`);
      tokens.push({ kind: 'other' });
      i = end + 1;
    } else if (c === '{') {
      const end = expr.indexOf('}', i);
      if (end < 0) throw new Error(`unterminated matcher in ${expr}`);
      const body = expr.slice(i + 1, end);
      const labels = [...body.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"/g)].map((m) => m[1]!);
      tokens.push({ kind: 'matchers', labels });
      i = end + 1;
    } else if (/[0-9.]/.test(c)) {
      const m = /^(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?/i.exec(expr.slice(i));
      tokens.push({ kind: 'other' });
      i += m ? m[0].length : 1;
    } else if (/[a-zA-Z_:]/.test(c)) {
      const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(expr.slice(i))!;
      tokens.push({ kind: 'ident', value: m[0] });
      i += m[0].length;
    } else {
      tokens.push({ kind: 'punct', value: c });
      i++;
    }
  }
  return tokens;
}

interface Use {
  metric: string;
  matcherLabels: string[];
}
interface Grouping {
  labels: string[];
  /** Metrics inside the aggregated expression. */
  metrics: string[];
}

/** The metrics an expression reads (with their matcher labels) and its `by (…)` groupings with the metrics they cover. */
export function analyze(expr: string): { uses: Use[]; groupings: Grouping[] } {
  const tokens = tokenize(expr);
  const uses: Use[] = [];
  const metricAt = new Map<number, string>();
  const isPunct = (j: number, value: string) => {
    const t = tokens[j];
    return t?.kind === 'punct' && t.value === value;
  };
  const isIdent = (j: number, values: ReadonlySet<string>) => {
    const t = tokens[j];
    return t?.kind === 'ident' && values.has(t.value);
  };
  const close = (open: number): number => {
    let depth = 0;
    for (let j = open; j < tokens.length; j++) {
      const t = tokens[j]!;
      if (t.kind !== 'punct') continue;
      if (t.value === '(') depth++;
      if (t.value === ')' && --depth === 0) return j;
    }
    throw new Error(`unbalanced parentheses in ${expr}`);
  };
  const open = (closing: number): number => {
    let depth = 0;
    for (let j = closing; j >= 0; j--) {
      const t = tokens[j]!;
      if (t.kind !== 'punct') continue;
      if (t.value === ')') depth++;
      if (t.value === '(' && --depth === 0) return j;
    }
    throw new Error(`unbalanced parentheses in ${expr}`);
  };
  for (let j = 0; j < tokens.length; j++) {
    const t = tokens[j]!;
    if (t.kind === 'matchers') {
      if (!metricAt.has(j - 1)) throw new Error(`a {…} matcher without a metric name is not supported: ${expr}`);
      uses[uses.length - 1]!.matcherLabels.push(...t.labels);
      continue;
    }
    if (t.kind !== 'ident') continue;
    if (LABEL_LIST_KEYWORDS.has(t.value)) {
      if (isPunct(j + 1, '(')) j = close(j + 1); // the label list names no metric
      continue;
    }
    if (KEYWORDS.has(t.value)) continue;
    if (isPunct(j + 1, '(') || isIdent(j + 1, GROUPING)) {
      if (!FUNCTIONS.has(t.value)) throw new Error(`unknown PromQL function ${t.value}( in ${expr}: add it to FUNCTIONS if it is real`);
      continue;
    }
    metricAt.set(j, t.value);
    uses.push({ metric: t.value, matcherLabels: [] });
  }

  const metricsIn = (from: number, to: number) => [...metricAt].filter(([j]) => j > from && j < to).map(([, m]) => m);

  const groupings: Grouping[] = [];
  for (let j = 0; j < tokens.length; j++) {
    const t = tokens[j]!;
    if (t.kind !== 'ident' || t.value !== 'by') continue;
    if (!isPunct(j + 1, '(')) throw new Error(`"by" without a label list in ${expr}`);
    const labelsEnd = close(j + 1);
    const labels = tokens.slice(j + 2, labelsEnd).flatMap((x) => (x.kind === 'ident' ? [x.value] : []));
    let scope: [number, number];
    if (isPunct(labelsEnd + 1, '(')) scope = [labelsEnd + 1, close(labelsEnd + 1)]; // sum by (x) (…)
    else if (isPunct(j - 1, ')')) scope = [open(j - 1), j - 1]; // sum(…) by (x)
    else throw new Error(`cannot find what "by" groups in ${expr}`);
    groupings.push({ labels, metrics: metricsIn(scope[0], scope[1]) });
  }
  return { uses, groupings };
}

/** Problems with one expression against the registry: unknown metrics, unknown labels. */
export function check(expr: string, registry: Registry, legendFormat = ''): string[] {
  const problems: string[] = [];
  const resolve = (name: string): { info: MetricInfo; extra: string[] } | undefined => {
    const direct = registry.get(name);
    if (direct) return { info: direct, extra: [] };
    const m = /^(.*)_(bucket|sum|count)$/.exec(name);
    const base = m ? registry.get(m[1]!) : undefined;
    if (!base || (base.type !== 'histogram' && base.type !== 'summary')) return undefined;
    return { info: base, extra: m![2] === 'bucket' ? ['le'] : [] };
  };
  const hasLabel = (metric: string, label: string) => {
    const r = resolve(metric);
    return r !== undefined && (r.info.labels.has(label) || r.extra.includes(label) || TARGET_LABELS.has(label));
  };
  let analysis: ReturnType<typeof analyze>;
  try {
    analysis = analyze(expr);
  } catch (err) {
    return [(err as Error).message];
  }
  if (analysis.uses.length === 0) problems.push(`no metric in ${expr}`);
  for (const use of analysis.uses) {
    if (!resolve(use.metric)) {
      problems.push(`metric ${use.metric} is not in the agent's registry (${expr})`);
      continue;
    }
    for (const label of use.matcherLabels) if (!hasLabel(use.metric, label)) problems.push(`metric ${use.metric} has no label "${label}" (matcher in ${expr})`);
  }
  for (const g of analysis.groupings) {
    if (g.metrics.length === 0) problems.push(`"by (${g.labels.join(', ')})" groups no metric in ${expr}`);
    for (const label of g.labels) {
      for (const metric of g.metrics) {
        if (resolve(metric) && !hasLabel(metric, label)) problems.push(`metric ${metric} has no label "${label}" (by clause in ${expr})`);
      }
    }
  }
  for (const [, label] of legendFormat.matchAll(/\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g)) {
    if (!analysis.uses.some((u) => hasLabel(u.metric, label!))) problems.push(`legend {{${label}}} is no label of any metric in ${expr}`);
  }
  return problems;
}

interface Target {
  expr?: string;
  legendFormat?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: Target[];
}
interface Dashboard {
  schemaVersion: number;
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: unknown; definition?: string }> };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const dataPanels = dashboard.panels.filter((p) => p.type !== 'row');

describe('grafana dashboard', () => {
  it('is an importable dashboard: schema version, unique ids, a datasource variable every panel uses, a grid that fits', () => {
    assert.ok(dashboard.schemaVersion >= 36 && dashboard.schemaVersion <= 41, `schemaVersion ${dashboard.schemaVersion}`);
    assert.equal(typeof dashboard.uid, 'string');
    assert.ok(dashboard.title.length > 0);
    const ids = dashboard.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
    const ds = dashboard.templating.list.find((v) => v.type === 'datasource');
    assert.ok(ds, 'a datasource template variable');
    assert.equal(ds.query, 'prometheus');
    assert.ok(dataPanels.length >= 10, `${dataPanels.length} panels`);
    for (const p of dataPanels) {
      assert.deepEqual(p.datasource, { type: 'prometheus', uid: `\${${ds.name}}` }, `panel "${p.title}" uses the datasource variable`);
      assert.ok(p.targets && p.targets.length > 0, `panel "${p.title}" has queries`);
      for (const t of p.targets) assert.deepEqual(t.datasource, p.datasource, `panel "${p.title}" targets use the datasource variable`);
      assert.ok(p.gridPos.x >= 0 && p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `panel "${p.title}" fits the 24-column grid`);
    }
    // No two panels overlap.
    for (const [i, a] of dataPanels.entries()) {
      for (const b of dataPanels.slice(i + 1)) {
        const overlap =
          a.gridPos.x < b.gridPos.x + b.gridPos.w && b.gridPos.x < a.gridPos.x + a.gridPos.w &&
          a.gridPos.y < b.gridPos.y + b.gridPos.h && b.gridPos.y < a.gridPos.y + a.gridPos.h;
        assert.ok(!overlap, `panels "${a.title}" and "${b.title}" overlap`);
      }
    }
  });

  it('every metric and label in every query and variable exists in the agent registry', async () => {
    const registry = await agentRegistry();
    const problems: string[] = [];
    let exprs = 0;
    for (const p of dataPanels) {
      for (const t of p.targets ?? []) {
        assert.equal(typeof t.expr, 'string', `panel "${p.title}" target has an expr`);
        exprs++;
        for (const problem of check(t.expr!, registry, t.legendFormat)) problems.push(`panel "${p.title}": ${problem}`);
      }
    }
    for (const v of dashboard.templating.list.filter((x) => x.type === 'query')) {
      const q = typeof v.query === 'string' ? v.query : (v.query as { query: string }).query;
      const m = /^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$/.exec(q);
      assert.ok(m, `variable ${v.name}: label_values(metric, label), got ${q}`);
      const metric = registry.get(m[1]!);
      if (!metric) problems.push(`variable ${v.name}: metric ${m[1]} is not in the registry`);
      else if (!metric.labels.has(m[2]!) && !TARGET_LABELS.has(m[2]!)) problems.push(`variable ${v.name}: ${m[1]} has no label ${m[2]}`);
    }
    assert.ok(exprs >= dataPanels.length);
    assert.deepEqual(problems, []);
  });

  it('every metric the agent defines has a panel', async () => {
    const own = await createMetrics().registry.getMetricsAsJSON();
    const text = JSON.stringify(dataPanels.map((p) => p.targets));
    const missing = own.map((m) => m.name).filter((name) => !new RegExp(`\\b${name}(_bucket|_sum|_count)?\\b`).test(text));
    assert.deepEqual(missing, [], 'metrics with no panel in deploy/grafana-dashboard.json');
    assert.ok(own.length >= 14);
  });

  it('the panel for missing interception rules alarms on kiam_iptables_rules_present == 0', () => {
    const alarm = dataPanels.find((p) => p.targets?.some((t) => /kiam_iptables_rules_present\{[^}]*\}\s*==\s*0/.test(t.expr ?? '')));
    assert.ok(alarm, 'a panel counting nodes whose rules are missing');
    assert.match(alarm.title, /rules/i);
  });
});

describe('dashboard checker', () => {
  const registry: Registry = new Map([
    ['kiam_metadata_request_duration_seconds', { type: 'histogram', labels: new Set(['handler', 'code']) }],
    ['kiam_sts_errors_total', { type: 'counter', labels: new Set(['code']) }],
    ['kiam_pods_indexed', { type: 'gauge', labels: new Set<string>() }],
  ]);

  it('accepts histogram series, target labels, le on buckets, both by-clause forms', () => {
    assert.deepEqual(check('histogram_quantile(0.99, sum by (le, handler) (rate(kiam_metadata_request_duration_seconds_bucket{instance=~"$i"}[$__rate_interval])))', registry, 'p99 {{handler}}'), []);
    assert.deepEqual(check('sum(rate(kiam_sts_errors_total[5m])) by (code, instance)', registry, '{{code}}'), []);
    assert.deepEqual(check('count(kiam_pods_indexed{job="kiam"} == 0) or vector(0)', registry), []);
    assert.deepEqual(check('sum(rate(kiam_metadata_request_duration_seconds_count{code=~"5.."}[1m])) / clamp_min(sum(rate(kiam_metadata_request_duration_seconds_count[1m])), 1e-9)', registry), []);
  });

  it('rejects a renamed metric, a missing label, a bad suffix and an unknown function', () => {
    assert.match(check('rate(kiam_sts_error_total[5m])', registry).join(), /kiam_sts_error_total is not in the agent's registry/);
    assert.match(check('sum by (reason) (rate(kiam_sts_errors_total[5m]))', registry).join(), /no label "reason"/);
    assert.match(check('sum(rate(kiam_sts_errors_total{result="x"}[5m]))', registry).join(), /no label "result"/);
    assert.match(check('rate(kiam_sts_errors_total_count[5m])', registry).join(), /not in the agent's registry/);
    assert.match(check('sum by (le) (kiam_pods_indexed)', registry).join(), /no label "le"/);
    assert.match(check('sum(rate(kiam_sts_errors_total[5m])) by (handler)', registry).join(), /kiam_sts_errors_total has no label "handler"/);
    assert.match(check('rate(kiam_sts_errors_total[5m])', registry, '{{handler}}').join(), /legend \{\{handler\}\}/);
    assert.match(check('predict_linear(kiam_pods_indexed[5m], 60)', registry).join(), /unknown PromQL function predict_linear/);
    assert.match(check('vector(1)', registry).join(), /no metric/);
  });
});
