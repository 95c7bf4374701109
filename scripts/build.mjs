// Production build: one tree-shaken, minified ESM bundle of the agent (dist/kiam.mjs). Memory is paid on every
// node, and V8 keeps the whole bundle source in the heap, so the bundle is kept small:
//  - @kubernetes/client-node declares no `sideEffects`, so esbuild keeps every module its index re-exports. Its
//    modules have none (bar polyfill.js, a Node 18 `File` polyfill), so they are marked side-effect free.
//  - client-node's cache.js (ListWatch) imports the generated ObjectSerializer, which pulls in every API model
//    (~700 classes built at start-up), only to "serialize" its label and field selectors as strings, which is
//    the identity. That one import is served by a stub; the build checks that this is still all cache.js uses.
//  - @fastify/under-pressure samples the event-loop delay with a 10 ms libuv timer (hard-coded): 100 wake-ups a
//    second, ~1 % of a core on an idle agent. Its only use here is maxEventLoopDelay (1 s), so the bundle samples
//    every 100 ms instead (10 wake-ups a second); the build fails if that line of the plugin changes.
//  - Whitespace and syntax are minified, identifiers kept (readable stack traces and error names in the logs).
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const CLIENT_NODE = '/@kubernetes/client-node/';
const SERIALIZER_STUB = 'kiam-stub:client-node-serializer';

/** Fail the build if client-node's ListWatch starts using its serializer for anything but string selectors. */
function checkSerializerUse() {
  const require = createRequire(import.meta.url);
  const dist = dirname(require.resolve('@kubernetes/client-node/package.json'));
  const cache = readFileSync(join(dist, 'dist/cache.js'), 'utf8');
  const uses = cache.match(/ObjectSerializer\.[^\n;]*/g) ?? [];
  const unexpected = uses.filter((u) => !/^ObjectSerializer\.serialize\(this\.(label|field)Selector, 'string'\)$/.test(u));
  if (uses.length === 0 || unexpected.length > 0) {
    throw new Error(`client-node's cache.js uses ObjectSerializer differently than the stub assumes: ${unexpected.join('; ') || 'not at all'}`);
  }
}

const slimClientNode = {
  name: 'slim-client-node',
  setup(b) {
    checkSerializerUse();
    b.onResolve({ filter: /^\.\/serializer\.js$/ }, (args) =>
      args.importer.includes(CLIENT_NODE) && args.importer.endsWith('/dist/cache.js') ? { path: SERIALIZER_STUB, namespace: 'kiam-stub' } : undefined,
    );
    // serialize(value, 'string') of the generated ObjectSerializer returns the value as it is.
    b.onLoad({ filter: /.*/, namespace: 'kiam-stub' }, () => ({ contents: 'export const ObjectSerializer = { serialize: (value) => value };', loader: 'js' }));
    b.onResolve({ filter: /.*/ }, async (args) => {
      if (args.pluginData === 'slim' || !(args.path.startsWith('@kubernetes/client-node') || args.importer.includes(CLIENT_NODE))) return undefined;
      const resolved = await b.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, importer: args.importer, pluginData: 'slim' });
      if (resolved.errors.length > 0) return undefined;
      if (resolved.path.includes(CLIENT_NODE) && !resolved.path.endsWith('/polyfill.js')) return { ...resolved, sideEffects: false };
      return resolved;
    });
  },
};

const UNDER_PRESSURE_RESOLUTION = 'const resolution = 10\n';
const coarseUnderPressure = {
  name: 'coarse-under-pressure',
  setup(b) {
    b.onLoad({ filter: /[\\/]@fastify[\\/]under-pressure[\\/]index\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      if (source.split(UNDER_PRESSURE_RESOLUTION).length !== 2) throw new Error(`@fastify/under-pressure no longer has exactly one '${UNDER_PRESSURE_RESOLUTION.trim()}'`);
      return { contents: source.replace(UNDER_PRESSURE_RESOLUTION, 'const resolution = 100\n'), loader: 'js' };
    });
  },
};

// Two bundles: the agent and every other subcommand (dist/kiam.mjs), and `kiam webhook` (dist/kiam-webhook.mjs),
// which main.ts imports at run time for that subcommand only. The webhook's X.509 stack (@peculiar/x509 and its
// ASN.1 and DI libraries, ~1.2 MB of source) would otherwise sit in every agent's heap: 8–11 MB of RSS, measured.
const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  legalComments: 'none',
  minifyWhitespace: true,
  minifySyntax: true,
  // ASCII only: V8 then holds the source (kept in the heap) one byte per character instead of two.
  charset: 'ascii',
  logLevel: 'warning',
  plugins: [slimClientNode, coarseUnderPressure],
  // pino-pretty is an optional, development-time log formatter loaded on demand.
  external: ['pino-pretty'],
  // Some CommonJS dependencies call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __kiamCreateRequire } from 'node:module'; const require = __kiamCreateRequire(import.meta.url);" },
};
await build({ ...common, entryPoints: ['src/main.ts'], outfile: 'dist/kiam.mjs' });
await build({ ...common, entryPoints: ['src/webhook/run.ts'], outfile: 'dist/kiam-webhook.mjs' });

// The eBPF socket redirect (src/netfilter/ebpf/kiam.bpf.c) → dist/kiam.bpf.o, with clang's BPF target against the
// kernel UAPI and libbpf headers (Debian: clang, libbpf-dev). Without clang the agent still builds and runs
// (`--intercept iptables|none`), with a warning; CI and the image build need it.
await compileBpf();

async function compileBpf() {
  const { spawnSync } = await import('node:child_process');
  const { arch } = await import('node:os');
  const source = 'src/netfilter/ebpf/kiam.bpf.c';
  const multiarch = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' }[arch()] ?? `${arch()}-linux-gnu`;
  const argv = ['-O2', '-g', '-target', 'bpf', '-Wall', '-Werror', `-I/usr/include/${multiarch}`, '-c', source, '-o', 'dist/kiam.bpf.o'];
  const result = spawnSync(process.env.CLANG ?? 'clang', argv, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (result.error?.code === 'ENOENT') {
    const message = 'clang not found: dist/kiam.bpf.o not built, so `--intercept ebpf|auto` cannot load the socket redirect (apt-get install clang libbpf-dev)';
    if (process.env.CI === 'true') throw new Error(message);
    process.stderr.write(`warning: ${message}\n`);
    return;
  }
  if (result.status !== 0) throw new Error(`clang ${argv.join(' ')} failed (exit ${result.status})`);
}
