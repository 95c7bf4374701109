#!/usr/bin/env node
// Runs the production bundle (built by `npm ci` through the prepare script, or `npm run build`).
// In a development checkout without a build, falls back to the TypeScript sources through tsx.
import { existsSync } from 'node:fs';

const bundle = new URL('../dist/kiam.mjs', import.meta.url);
if (existsSync(bundle)) {
  await import(bundle.href);
} else {
  let register;
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    process.stderr.write('kiam: dist/kiam.mjs is missing; run `npm run build`\n');
    process.exit(1);
  }
  register();
  await import(new URL('../src/main.ts', import.meta.url).href);
}
