// Production build: one tree-shaken ESM bundle of the agent (dist/kiam.mjs), so the node runs the same code
// without tsx and without loading all of client-node's generated API at start-up.
import { build } from 'esbuild';

await build({
  entryPoints: ['src/main.ts'],
  outfile: 'dist/kiam.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  legalComments: 'none',
  logLevel: 'warning',
  // pino-pretty is an optional, development-time log formatter loaded on demand.
  external: ['pino-pretty'],
  // Some CommonJS dependencies call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __kiamCreateRequire } from 'node:module'; const require = __kiamCreateRequire(import.meta.url);" },
});
