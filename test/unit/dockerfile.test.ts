/**
 * The container image, checked without a Docker engine (none exists on these machines): the Dockerfile's stages
 * and base images, a reproducible `npm ci`, build inputs that the build context really holds, the eBPF toolchain
 * in the build stage and bpftool in the runtime stage, a runtime stage that copies only what `npm run build`
 * produces (the eBPF object beside the bundle) and needs no node_modules, the entrypoint, and the user.
 * hadolint is not installable here (not packaged by Debian, and its releases come from outside the registries
 * these machines reach), so the checks it would make that matter to this image are made below.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import {
  copies,
  dockerIgnored,
  dockerIgnorePatterns,
  execForm,
  imageUser,
  instructions,
  parseDockerfile,
  pkg,
  ROOT,
  type Stage,
} from './deploy-support.ts';

const dockerfile = parseDockerfile();
const stage = (name: string): Stage => {
  const s = dockerfile.stages.find((st) => st.name === name);
  assert.ok(s, `Dockerfile has no stage named ${name}`);
  return s;
};
const runs = (s: Stage): string[] => instructions(s, 'RUN').map((i) => (i.getArgumentsContent() ?? '').replace(/\s+/g, ' '));
/** WORKDIR in effect at the end of a stage (absolute paths only, which is all this Dockerfile uses). */
const workdir = (s: Stage): string => instructions(s, 'WORKDIR').at(-1)?.getArgumentsContent()?.trim() ?? '/';
/** Where a COPY destination lands, resolved against the stage's WORKDIR. */
const resolveDest = (s: Stage, dest: string, source: string): string => {
  const abs = posix.resolve(workdir(s), dest);
  return dest.endsWith('/') ? posix.join(abs, posix.basename(source)) : abs;
};

describe('Dockerfile: stages and base images', () => {
  test('two stages: build (full toolchain) then runtime (slim), runtime last so it is the default target', () => {
    assert.deepEqual(dockerfile.stages.map((s) => s.name), ['build', 'runtime']);
  });

  test('both stages use the same pinned Node release on Debian bookworm; full image to build, slim to run', () => {
    const version = dockerfile.globalArgs.get('NODE_VERSION');
    assert.ok(version, 'ARG NODE_VERSION with a default before the first FROM');
    assert.match(version, /^\d+\.\d+\.\d+$/, 'NODE_VERSION is an exact release (major.minor.patch), not a floating major');
    assert.equal(stage('build').image, `node:${version}-bookworm`);
    assert.equal(stage('runtime').image, `node:${version}-bookworm-slim`);
    for (const s of dockerfile.stages) assert.doesNotMatch(s.image, /:latest$|^[^:]+$/, `${s.name}: pinned by tag`);
  });

  test('the Node release satisfies package.json engines and is 22 or newer (Node 20 is past end of life)', () => {
    const [major, minor] = dockerfile.globalArgs.get('NODE_VERSION')!.split('.').map(Number) as [number, number];
    const engines = /^>=(\d+)\.(\d+)$/.exec(pkg.engines.node);
    assert.ok(engines, `package.json engines.node ${pkg.engines.node} is of the form >=X.Y`);
    const [minMajor, minMinor] = [Number(engines[1]), Number(engines[2])];
    assert.ok(major > minMajor || (major === minMajor && minor >= minMinor), `${major}.${minor} satisfies ${pkg.engines.node}`);
    assert.ok(major >= 22, `Node ${major}: the image ships 22 or newer`);
  });

  test('the build stage runs on the build platform (the bundle is platform-independent JavaScript)', () => {
    assert.equal(stage('build').platformFlag, '--platform=$BUILDPLATFORM');
    assert.equal(stage('runtime').platformFlag, undefined, 'the runtime stage is the target platform');
  });
});

/** The packages of the stage's `apt-get install` (one per stage), with its flags; asserts the lists are dropped. */
function aptInstall(s: Stage): { packages: string[]; flags: string[] } {
  const cmds = runs(s).join(' && ');
  const installs = [...cmds.matchAll(/apt-get install ([^&;]*)/g)];
  assert.equal(installs.length, 1, `${s.name}: one apt-get install`);
  const words = installs[0]![1]!.trim().split(/\s+/);
  assert.match(cmds, /apt-get update/);
  assert.match(cmds, /rm -rf \/var\/lib\/apt\/lists\/\*/, `${s.name}: the apt lists are dropped`);
  return { packages: words.filter((w) => !w.startsWith('-')).sort(), flags: words.filter((w) => w.startsWith('-')) };
}

describe('Dockerfile: build stage', () => {
  const build = stage('build');

  test('installs clang and libbpf-dev (for the eBPF object), without recommends, before npm run build', () => {
    const { packages, flags } = aptInstall(build);
    assert.deepEqual(packages, ['clang', 'libbpf-dev']);
    assert.ok(flags.includes('--no-install-recommends') && flags.includes('-y'));
    const cmds = runs(build);
    const apt = cmds.findIndex((c) => /apt-get install/.test(c));
    const bundle = cmds.findIndex((c) => /\bnpm run build\b/.test(c));
    assert.ok(apt >= 0 && apt < bundle, 'the compiler is there when npm run build runs');
    // scripts/build.mjs only warns when clang is missing (outside CI): the image build must fail instead.
    assert.match(cmds[bundle]!, /npm run build && test -s dist\/kiam\.bpf\.o$/);
    assert.match(readFileSync(join(ROOT, 'scripts/build.mjs'), 'utf8'), /'-target', 'bpf'[\s\S]*'dist\/kiam\.bpf\.o'/, 'the build compiles the object there');
  });

  test('installs from package-lock.json with npm ci (never npm install), then runs npm run build', () => {
    const cmds = runs(build);
    assert.ok(!cmds.some((c) => /\bnpm (install|i|add)\b/.test(c)), `no npm install: ${cmds.join(' | ')}`);
    const ci = cmds.findIndex((c) => /\bnpm ci\b/.test(c));
    const bundle = cmds.findIndex((c) => /\bnpm run build\b/.test(c));
    assert.ok(ci >= 0 && bundle > ci, `npm ci, then npm run build: ${cmds.join(' | ')}`);
    const copiedBeforeCi = copies(build).slice(0, 1).flatMap((c) => c.sources);
    assert.deepEqual(copiedBeforeCi.sort(), ['package-lock.json', 'package.json'], 'only the manifests before npm ci (a cached dependency layer)');
  });

  test('copies every input of scripts/build.mjs, each present in the build context and not excluded by .dockerignore', () => {
    const patterns = dockerIgnorePatterns();
    const sources = copies(build).flatMap((c) => c.sources);
    for (const src of sources) {
      assert.ok(existsSync(join(ROOT, src)), `${src} exists in the repository`);
      assert.equal(dockerIgnored(patterns, src), false, `${src} is not excluded by .dockerignore`);
    }
    // What the build reads: its script, the entry point it names (and so all of src/), and the bin wrapper shipped.
    const script = readFileSync(join(ROOT, 'scripts/build.mjs'), 'utf8');
    const entries = [...script.matchAll(/entryPoints:\s*\[([^\]]*)\]/g)].flatMap((m) => [...m[1]!.matchAll(/'([^']+)'/g)].map((e) => e[1]!));
    assert.ok(entries.length > 0, 'scripts/build.mjs names its entry points');
    for (const needed of ['package.json', 'package-lock.json', 'scripts/build.mjs', 'bin', ...entries]) {
      assert.ok(
        sources.some((s) => needed === s || needed.startsWith(`${s}/`)),
        `the build stage copies ${needed} (copied: ${sources.join(', ')})`,
      );
    }
  });
});

describe('Dockerfile: runtime stage', () => {
  const runtime = stage('runtime');

  test('installs exactly iptables, conntrack, bpftool and iproute2, without recommends, and drops the apt lists', () => {
    const { packages, flags } = aptInstall(runtime);
    assert.ok(flags.includes('--no-install-recommends'), 'apt-get install --no-install-recommends');
    assert.ok(flags.includes('-y'), 'non-interactive');
    // bpftool: the agent loads, attaches and reads the eBPF socket redirect by spawning it (Debian's package).
    // iproute2: `ip`, for the container-credentials link (src/netfilter/link.ts).
    assert.deepEqual(packages, ['bpftool', 'conntrack', 'iproute2', 'iptables']);
  });

  test('takes only build output from the build stage: dist/kiam.mjs, dist/kiam-webhook.mjs, their maps and kiam.bpf.o, bin/kiam.mjs, package.json; no node_modules', () => {
    const build = stage('build');
    const buildDir = workdir(build);
    const shipped = copies(runtime);
    assert.ok(shipped.length > 0);
    const files = new Map<string, string>(); // image path → repository path
    for (const c of shipped) {
      assert.equal(c.from, 'build', `runtime COPY takes from the build stage only: ${c.sources.join(' ')}`);
      for (const src of c.sources) {
        assert.ok(src.startsWith(`${buildDir}/`), `${src} is inside the build stage's WORKDIR ${buildDir}`);
        const rel = src.slice(buildDir.length + 1);
        assert.doesNotMatch(rel, /node_modules/, 'no node_modules in the runtime image');
        files.set(resolveDest(runtime, c.dest, src), rel);
      }
    }
    assert.deepEqual([...files.values()].sort(), ['bin/kiam.mjs', 'dist/kiam-webhook.mjs', 'dist/kiam-webhook.mjs.map', 'dist/kiam.bpf.o', 'dist/kiam.mjs', 'dist/kiam.mjs.map', 'package.json']);
    for (const rel of files.values()) {
      // dist/ is produced by `npm run build` (npm ci runs it too, through the prepare script).
      assert.ok(existsSync(join(ROOT, rel)), `${rel} exists after npm run build (run it if dist/ is missing)`);
    }
    // Same layout under /app as in the repository, so bin/kiam.mjs finds ../dist/kiam.mjs.
    for (const [imagePath, rel] of files) assert.equal(imagePath, `/app/${rel}`);
  });

  test('the eBPF object lands beside the bundle, where the bundle looks for it, and is a BPF ELF object', () => {
    const shipped = copies(runtime).flatMap((c) => c.sources.map((src) => resolveDest(runtime, c.dest, src)));
    const object = shipped.find((f) => f.endsWith('/kiam.bpf.o'));
    const bundle = shipped.find((f) => f.endsWith('/dist/kiam.mjs'));
    assert.ok(object && bundle);
    assert.equal(posix.dirname(object), posix.dirname(bundle), 'dist/kiam.bpf.o next to dist/kiam.mjs');
    // src/intercept.ts resolves it as new URL('./kiam.bpf.o', import.meta.url): relative to the bundle.
    assert.match(readFileSync(join(ROOT, 'dist/kiam.mjs'), 'utf8'), /new URL\("\.\/kiam\.bpf\.o",\s*import\.meta\.url\)/);
    // ELF (\x7fELF), 64-bit, little-endian (amd64 and arm64 nodes), e_machine EM_BPF (247).
    const head = readFileSync(join(ROOT, 'dist/kiam.bpf.o')).subarray(0, 20);
    assert.deepEqual([...head.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
    assert.equal(head[4], 2, 'ELFCLASS64');
    assert.equal(head[5], 1, 'ELFDATA2LSB');
    assert.equal(head.readUInt16LE(18), 247, 'EM_BPF');
  });

  test('ENTRYPOINT is exec form: node, then the shipped bin/kiam.mjs; CMD is a harmless default', () => {
    const entrypoints = instructions(runtime, 'ENTRYPOINT');
    assert.equal(entrypoints.length, 1);
    const argv = execForm(entrypoints[0]!);
    assert.equal(argv[0], 'node');
    assert.equal(argv.at(-1), '/app/bin/kiam.mjs');
    for (const flag of argv.slice(1, -1)) assert.match(flag, /^--/, `only Node flags between node and the script: ${flag}`);
    const shipped = copies(runtime).flatMap((c) => c.sources.map((s) => resolveDest(runtime, c.dest, s)));
    assert.ok(shipped.includes(argv.at(-1)!), 'the entrypoint script is a file the runtime stage copies');
    assert.deepEqual(execForm(instructions(runtime, 'CMD').at(-1)!), ['--help']);
  });

  test('runs as a numeric non-root user by default (the DaemonSet opts into root explicitly)', () => {
    const user = imageUser(runtime);
    assert.ok(user, 'USER is set in the runtime stage');
    assert.match(user, /^\d+(:\d+)?$/, 'numeric, so runAsNonRoot can verify it');
    assert.notEqual(Number(user.split(':')[0]), 0);
  });
});

describe('the runtime file set runs on its own', () => {
  const runtime = stage('runtime');
  let dir: string;

  before(() => {
    // The files the runtime stage copies, laid out as in the image, in a directory with no node_modules above it.
    dir = mkdtempSync(join(tmpdir(), 'kiam-image-'));
    const buildDir = workdir(stage('build'));
    for (const c of copies(runtime)) {
      for (const src of c.sources) {
        const rel = src.slice(buildDir.length + 1);
        const target = join(dir, rel);
        mkdirSync(dirname(target), { recursive: true });
        copyFileSync(join(ROOT, rel), target);
      }
    }
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the bundle imports only Node built-ins and the declared optional external (pino-pretty)', () => {
    const bundle = readFileSync(join(ROOT, 'dist/kiam.mjs'), 'utf8');
    const specifiers = new Set<string>();
    // What esbuild emits for a module it leaves out of the bundle (minified or not): an import statement,
    // __require("x") for require() calls, import("x") for dynamic imports.
    for (const re of [/(?:^|[;}\n])\s*import\s*(?:[\w$*{}\s,]+?from\s*)?["']([^"']+)["']/g, /\b__require\("([^"]+)"\)/g, /\bimport\("([^"]+)"\)/g]) {
      for (const m of bundle.matchAll(re)) specifiers.add(m[1]!);
    }
    assert.ok(specifiers.has('node:module') && specifiers.has('pino-pretty'), 'the scanner finds the banner import and the dynamic pino-pretty import');
    const builtins = new Set(builtinModules);
    const external = [...specifiers].filter((s) => !s.startsWith('node:') && !builtins.has(s) && !builtins.has(s.split('/')[0]!));
    // pino-pretty: left out by scripts/build.mjs, imported only for --log-format pretty (with a clear error).
    assert.ok(external.includes('pino-pretty'));
    assert.match(readFileSync(join(ROOT, 'scripts/build.mjs'), 'utf8'), /external:\s*\['pino-pretty'\]/, 'the build declares it');
    // Anything else must be an optional dependency its library probes for inside try/catch (debug's
    // supports-color, ws's bufferutil and utf-8-validate), so its absence costs nothing.
    for (const name of external.filter((s) => s !== 'pino-pretty')) {
      for (const m of bundle.matchAll(new RegExp(`__require\\("${name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}"\\)`, 'g'))) {
        const before = bundle.slice(Math.max(0, m.index - 200), m.index);
        assert.match(before, /\btry\s*\{[^}]*$/, `${name} is required outside a try block: the image would need it in node_modules`);
      }
    }
  });

  test('bin/kiam.mjs runs the bundle with no node_modules anywhere (agent --help, iptables remove --help)', () => {
    for (let d = dir; ; d = dirname(d)) {
      assert.equal(existsSync(join(d, 'node_modules')), false, `no node_modules at ${d}`);
      if (dirname(d) === d) break;
    }
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir };
    for (const [args, expect] of [
      [['agent', '--help'], /--host-interface <pattern>/],
      [['iptables', 'remove', '--help'], /--json/],
    ] as const) {
      const r = spawnSync(process.execPath, [join(dir, 'bin/kiam.mjs'), ...args], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, 0, `kiam ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, expect);
    }
    // And the sources are really absent: without the bundle, bin/kiam.mjs would need tsx, which is not there.
    assert.equal(existsSync(join(dir, 'src')), false);
    rmSync(join(dir, 'dist/kiam.mjs'));
    const r = spawnSync(process.execPath, [join(dir, 'bin/kiam.mjs'), '--help'], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /dist\/kiam\.mjs is missing/);
  });
});

describe('.dockerignore', () => {
  const patterns = dockerIgnorePatterns();

  test('keeps host-built and private things out of the context', () => {
    for (const path of ['node_modules', 'node_modules/fastify/package.json', 'src/node_modules/x', 'dist/kiam.mjs', '.git/HEAD', '.tmp/notes.md', 'agent.log', '.env']) {
      assert.equal(dockerIgnored(patterns, path), true, `${path} is excluded`);
    }
  });

  test('keeps what the build and the end-to-end images need', () => {
    for (const path of ['package.json', 'package-lock.json', 'tsconfig.json', 'scripts/build.mjs', 'bin/kiam.mjs', 'src/main.ts', 'test/fakes/sts.ts']) {
      assert.equal(dockerIgnored(patterns, path), false, `${path} stays in the context`);
    }
  });

  test('excludes no COPY source of any Dockerfile built from the repository root (this one, the kind e2e fakes’)', () => {
    const found: string[] = [];
    const walk = (rel: string): void => {
      for (const e of readdirSync(join(ROOT, rel), { withFileTypes: true })) {
        if (e.name === 'node_modules' || e.name.startsWith('.')) continue;
        const path = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) walk(path);
        else if (/^Dockerfile(\.[\w-]+)?$/.test(e.name)) found.push(path);
      }
    };
    walk('');
    assert.ok(found.includes('Dockerfile'));
    for (const file of found) {
      for (const st of parseDockerfile(join(ROOT, file)).stages) {
        for (const c of copies(st).filter((x) => x.from === undefined)) {
          for (const src of c.sources) assert.equal(dockerIgnored(patterns, src.replace(/^\.\//, '')), false, `${file}: COPY ${src}`);
        }
      }
    }
  });

  test('the matcher follows Docker’s rules (a control for the tests above)', () => {
    assert.equal(dockerIgnored(['dist'], 'dist/a/b'), true, 'a directory pattern excludes what is below it');
    assert.equal(dockerIgnored(['dist'], 'distribution'), false, 'but not a longer name');
    assert.equal(dockerIgnored(['*.log'], 'a/b.log'), false, '* does not cross /');
    assert.equal(dockerIgnored(['**/*.log'], 'a/b.log'), true);
    assert.equal(dockerIgnored(['**/*.log'], 'b.log'), true, '**/ matches zero directories');
    assert.equal(dockerIgnored(['test', '!test/fakes'], 'test/fakes/sts.ts'), false, 'the last matching pattern wins');
  });

  test('the Dockerfile’s mode bits are sane (a regular file, not executable by accident)', () => {
    const mode = statSync(join(ROOT, 'Dockerfile')).mode;
    assert.equal(mode & 0o111, 0);
  });
});
