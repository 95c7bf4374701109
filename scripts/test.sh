#!/usr/bin/env bash
# The whole suite (`npm test`): type-check, production build, unit tests, then the end-to-end tests in
# network-namespace sandboxes. Run as root: the sandboxes need network namespaces (nothing touches this
# machine's own network). Installs missing Debian packages and node_modules first.
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_EC2_METADATA_DISABLED=true
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
npx tsc --noEmit -p .
node scripts/build.mjs
# One run, one summary. Files run one at a time: the sandboxes and the real-iptables tests are heavy for 2 cores.
node --import tsx --test --test-concurrency=1 test/unit/*.test.ts test/e2e/*.test.ts
