#!/usr/bin/env bash
# The local demo (as root): a whole node in network namespaces — fake metadata service, fake STS, fake
# Kubernetes API, the real `kiam agent --iptables` and four pods — then pods asking for credentials through
# the real DNAT path. Everything is torn down at the end; this machine's own network is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the demo creates network namespaces and iptables rules inside them: run it as root (sudo $0)" >&2
  exit 1
fi
export AWS_EC2_METADATA_DISABLED=true
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build.mjs
exec node --import tsx scripts/demo.ts "$@"
