/**
 * `npm run bench` (= `node --import tsx bench/run.ts`, as root): the benchmark suite of issue 4, in a network
 * namespace sandbox, through the real interception: the DNAT and (issue 8) the eBPF socket redirect, attached to a
 * child cgroup of a private cgroup2 mount that holds every process of the sandbox. Progress on stderr, the markdown table on stdout, the summary in
 * bench/last-run.json and bench/last-run.md (a --quick or --only run writes quick-run.* / partial-run.* instead,
 * unless --out says otherwise).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULTS } from '../src/config.ts';
import { REPO } from '../test/e2e/harness.ts';
import { findBinary, Sandbox } from '../test/e2e/sandbox.ts';
import { apiSection } from './api.ts';
import { firstSection } from './first.ts';
import { footprintSection } from './footprint.ts';
import { DEFAULT_PATHS, interceptArgs, parsePaths, PATH_LABEL, usesEbpf, type InterceptPath } from './lib/intercept.ts';
import { AGENT_TOKEN_ARGS } from './lib/token-path.ts';
import { headline, markdown, targets, type Sections } from './report.ts';
import { stsSection } from './sts.ts';
import { warmSection } from './warm.ts';
import { configureRuntime } from './runtime.ts';
import { createWorld, PREFIX } from './world.ts';

const SECTIONS = ['warm', 'first', 'sts', 'footprint', 'api'] as const;
type Section = (typeof SECTIONS)[number];

const HELP = `Usage: sudo npm run bench -- [options]      (or: sudo node --import tsx bench/run.ts [options])

The kiam benchmark suite (issue 4): runs as root in a network-namespace sandbox (prefix ${PREFIX}), through the
real interception, against the production bundle (it runs \`node scripts/build.mjs\` first).

Sections:
  warm       warm credential requests vs a bare node:http baseline behind the same interception, for each path
             of --intercept: keep-alive and new connections, 1/16/64 connections, req/s, p50/p99/p99.9, server
             and generator CPU per request; then the token path with the same connections (GET /v1/credentials
             on 169.254.170.23 with each pod's service-account token, every token reviewed once before its run)
  first      a new pod's first credentials (STS answers after 500 ms), for each path of --intercept: request 1 s
             after the pod appears, and immediately; full IMDSv2 flow; then by token (pod created, token issued,
             GET /v1/credentials with it until the first 200)
  sts        AssumeRole calls for 200 pods of one role appearing at once, then one refresh cycle (~75 s each)
  footprint  RSS and idle CPU with 110 pods, then after 10 minutes of mixed load with pod churn
  api        objects and bytes from the API server for a 20,000-pod cluster: the agent vs a cluster-wide watch

Interception paths (--intercept): iptables = the nat PREROUTING DNAT (--intercept iptables); ebpf = the cgroup
connect4/6 socket redirect (--intercept ebpf), attached only to the sandbox's child cgroup of a private cgroup2
mount, pinned in a private bpffs; auto = both. sts, footprint and api always run through the DNAT.

Options:
  --only <list>   comma-separated sections (default: all)
  --intercept <list>
                  comma-separated paths for warm and first: iptables, ebpf, auto (default: ${DEFAULT_PATHS.join(',')})
  --rounds <n>    run the warm section's whole sequence n times and report each variant's median round
                  (default 1; on a shared machine, 3 keeps one noisy minute from deciding a comparison)
  --no-token      skip the token path's rows in warm and first (the agent then runs without
                  --container-credentials, as before issue 10)
  --quick         short durations for development (results in bench/quick-run.*)
  --out <file>    where to write the JSON summary (the .md goes beside it)
  --no-build      do not run the production build first
  --node <path>   the Node binary that runs the agent (default: this one); the V8 flags always come from the
                  Dockerfile's ENTRYPOINT, so the agent runs as the image runs it
  -h, --help      this help

Environment: KIAM_BENCH_AGENT_CPUS and KIAM_BENCH_LOAD_CPUS (taskset CPU lists, e.g. 1 and 0) pin the agent and
the baseline servers, and the load generators and pod clients, to separate CPUs; unset (the default), nothing is
pinned.

Full run: about 20 minutes. Don't run it on a busy machine: the figures are ratios against a baseline of the
same run, but the load generators and the servers share the same cores.`;

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n\n${HELP}\n`);
  process.exit(2);
}

const LOCK = '/run/kiam-bench.pid';
/** A taskset CPU list: numbers and ranges, comma-separated. */
const CPU_LIST = /^\d+(-\d+)?(,\d+(-\d+)?)*$/;

/** One bench at a time: a second run would sweep the first one's namespaces (same fixed prefix). */
function takeLock(): void {
  let other = 0;
  try {
    other = Number(readFileSync(LOCK, 'utf8').trim());
  } catch {
    // no lock
  }
  if (other > 0 && other !== process.pid) {
    let alive = false;
    try {
      alive = readFileSync(`/proc/${other}/cmdline`, 'utf8').includes('bench/run.ts');
    } catch {
      // gone
    }
    if (alive) fail(`another benchmark run (pid ${other}) is in progress; wait for it (its sandbox would be swept)`);
  }
  writeFileSync(LOCK, String(process.pid));
  process.on('exit', () => {
    try {
      if (readFileSync(LOCK, 'utf8').trim() === String(process.pid)) rmSync(LOCK);
    } catch {
      // already gone
    }
  });
}

function machine(): Record<string, unknown> {
  const git = (args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: REPO, encoding: 'utf8' }).trim();
    } catch {
      return '';
    }
  };
  return {
    cpus: cpus().length,
    cpu_model: cpus()[0]?.model.trim() ?? 'unknown',
    node: process.versions.node,
    kernel: release(),
    commit: git(['rev-parse', '--short', 'HEAD']) || 'unknown',
    dirty_files: git(['status', '--porcelain']).split('\n').filter(Boolean).length,
    loadavg_start: loadavg(),
  };
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        only: { type: 'string' },
        intercept: { type: 'string' },
        rounds: { type: 'string' },
        quick: { type: 'boolean', default: false },
        out: { type: 'string' },
        'no-build': { type: 'boolean', default: false },
        'no-token': { type: 'boolean', default: false },
        node: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    fail((err as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const only = values.only ? values.only.split(',').map((s) => s.trim()).filter(Boolean) : [...SECTIONS];
  const unknown = only.filter((s) => !(SECTIONS as readonly string[]).includes(s));
  if (unknown.length || only.length === 0) fail(`--only: unknown section(s) ${unknown.join(', ') || '(none given)'}; choose from ${SECTIONS.join(', ')}`);
  const want = (s: Section) => only.includes(s);
  let paths: InterceptPath[];
  try {
    paths = values.intercept ? parsePaths(values.intercept) : [...DEFAULT_PATHS];
  } catch (err) {
    fail(`--intercept: ${(err as Error).message}`);
  }
  const ebpf = paths.some(usesEbpf) && (want('warm') || want('first'));
  const rounds = values.rounds === undefined ? 1 : Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) fail(`--rounds: "${values.rounds}" is not a whole number from 1 to 20`);
  const quick = values.quick;
  const token = !values['no-token'];
  for (const name of ['KIAM_BENCH_AGENT_CPUS', 'KIAM_BENCH_LOAD_CPUS']) {
    const v = process.env[name];
    if (v && !CPU_LIST.test(v)) fail(`${name}: "${v}" is not a taskset CPU list (e.g. 1, 0,2 or 2-3)`);
    if (v && !findBinary('taskset')) fail(`${name} needs taskset (util-linux)`);
  }
  let agentRuntime;
  try {
    agentRuntime = configureRuntime(REPO, values.node);
  } catch (err) {
    fail(`--node / Dockerfile: ${(err as Error).message}`);
  }
  const missing = [...Sandbox.prerequisites(['curl']), ...(ebpf ? Sandbox.bpfPrerequisites() : [])];
  if (missing.length) fail(`cannot run here: ${missing.join('; ')}${ebpf ? ' (--intercept iptables runs without the eBPF path)' : ''}`);

  takeLock();
  process.env.AWS_EC2_METADATA_DISABLED = 'true'; // nothing here uses the AWS SDK; the agent gets it from its env too
  const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
  const partial = only.length < SECTIONS.length || DEFAULT_PATHS.some((p) => !paths.includes(p)) || !token;
  const outJson = values.out ?? join(REPO, 'bench', quick ? 'quick-run.json' : partial ? 'partial-run.json' : 'last-run.json');
  const outMd = outJson.replace(/\.json$/, '') + '.md';

  if (!values['no-build']) {
    log('building the production bundle (node scripts/build.mjs)');
    execFileSync(process.execPath, ['scripts/build.mjs'], { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'] });
  }
  if (ebpf && !existsSync(join(REPO, 'dist', 'kiam.bpf.o'))) fail('the eBPF path needs dist/kiam.bpf.o: the build compiles it with clang (apt-get install clang libbpf-dev)');
  const meta: Record<string, unknown> = {
    date: new Date().toISOString(),
    quick,
    sections: only,
    intercept: paths,
    warm_rounds: rounds,
    token,
    ...(process.env.KIAM_BENCH_AGENT_CPUS || process.env.KIAM_BENCH_LOAD_CPUS
      ? { pinned: { ...(process.env.KIAM_BENCH_AGENT_CPUS ? { agent: process.env.KIAM_BENCH_AGENT_CPUS } : {}), ...(process.env.KIAM_BENCH_LOAD_CPUS ? { load: process.env.KIAM_BENCH_LOAD_CPUS } : {}) } }
      : {}),
    command: `node --import tsx bench/run.ts${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}`,
    agent_node: agentRuntime.version,
    agent_command: `node${agentRuntime.flags.map((f) => ` ${f}`).join('')} bin/kiam.mjs agent --node-name node-1 --host-ip 10.77.0.1 --port 8181 --kubeconfig … <interception> --role-base-arn … --sts-endpoint … --region eu-west-1`,
    ...(token ? { agent_token_flags: `${AGENT_TOKEN_ARGS.join(' ')} (warm: the whole section; first: the token path's own agent, --intercept none); link: see token_link` } : {}),
    // The flags of each path (warm: the agent runs with --intercept none and `kiam intercept install` places these).
    interception: Object.fromEntries(
      paths.map((p) => [p, { label: PATH_LABEL[p], flags: interceptArgs(p, { cgroupPath: '<sandbox>/cgroup2/kiambench-pods', bpffsPath: '<sandbox>/bpffs' }).join(' ') }]),
    ),
    agent_log_level: `${DEFAULTS.logLevel} (the production default, DEFAULTS.logLevel in src/config.ts; no --log-level flag given)`,
    machine: machine(),
  };

  const sections: Sections = {};
  const errors: Record<string, string> = {};
  const world = await createWorld(log, { cgroup: ebpf });
  if (token && (want('warm') || want('first'))) {
    meta.token_link = (await world.sb.canCreateAgentLink().catch(() => false)) ? 'kiam-link0 (the agent\'s own link)' : 'none (this kernel makes neither dummy nor ifb links: the address on the node namespace\'s lo)';
  }
  try {
    const run = async <K extends Section>(name: K, fn: () => Promise<NonNullable<Sections[K & keyof Sections]>>) => {
      if (!want(name)) return;
      log(`── ${name} ──`);
      const t0 = Date.now();
      try {
        (sections as Record<string, unknown>)[name] = await fn();
      } catch (err) {
        errors[name] = err instanceof Error ? (err.stack ?? err.message) : String(err);
        log(`${name} FAILED: ${errors[name]}`);
        await world.node.stopAgent().catch(() => {});
      }
      log(`${name} took ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    };
    await run('warm', () =>
      warmSection(world, { ...(quick ? { warmupMs: 1_000, durationMs: 3_000 } : { warmupMs: 3_000, durationMs: 15_000 }), connections: [1, 16, 64], paths, rounds, token }, log),
    );
    await run('first', () => firstSection(world, { ...(quick ? { pods: 10, batch: 5 } : { pods: 40, batch: 10 }), delays: [1_000, 0], paths, token }, log));
    await run('sts', () => stsSection(world, { refresh: true }, log));
    await run('footprint', () => footprintSection(world, quick ? { idleMs: 10_000, loadMs: 20_000 } : { idleMs: 60_000, loadMs: 600_000 }, log));
    await run('api', () => apiSection(world, {}, log));
  } finally {
    await world.sb.destroy();
  }
  (meta.machine as Record<string, unknown>).loadavg_end = loadavg();

  // Headline fields first (the shape issue 4 asks for); the warm section's details go inside `warm` beside them.
  const head = headline(sections);
  const { warm, ...rest } = sections;
  const summary = {
    ...head,
    ...(warm ? { warm: { ...(head.warm as object | undefined), ...warm } } : {}),
    targets: targets(sections),
    meta,
    ...rest,
    ...(Object.keys(errors).length ? { errors } : {}),
  };
  const md = markdown(sections, meta) + (Object.keys(errors).length ? `\n## Failed sections\n\n${Object.entries(errors).map(([k, v]) => `- ${k}: ${v.split('\n')[0]}`).join('\n')}\n` : '');
  writeFileSync(outJson, `${JSON.stringify(summary, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`);
  writeFileSync(outMd, md);
  process.stdout.write(md);
  log(`wrote ${outJson} and ${outMd}`);
  return Object.keys(errors).length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
