#!/usr/bin/env bash
# The whole suite: type-check, production build, unit tests, then the end-to-end tests in network-namespace
# sandboxes (root; they use the production bundle, exactly what `npx kiam` runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_EC2_METADATA_DISABLED=true
npx tsc --noEmit -p .
node scripts/build.mjs
node --import tsx --test test/unit/*.test.ts
# The sandboxes are heavy (namespaces, iptables, real clients): one file at a time.
node --import tsx --test --test-concurrency=1 test/e2e/*.test.ts
