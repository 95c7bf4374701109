#!/usr/bin/env bash
# The local demo (as root): a whole node in network namespaces — fake metadata service, fake STS, fake
# Kubernetes API, the real `kiam agent --intercept auto --container-credentials` and four pods — then pods asking
# for credentials through the eBPF socket redirect and the DNAT, and by their service-account token at
# 169.254.170.23. The eBPF programs attach only to a child cgroup the demo creates under a private cgroup2
# mount. Everything is torn down at the end; this machine's own network is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the demo creates network namespaces, iptables rules inside them, a cgroup and eBPF programs: run it as root (e.g. sudo $0)" >&2
  exit 1
fi
export AWS_EC2_METADATA_DISABLED=true
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci --no-audit --no-fund
node scripts/build.mjs
exec node --import tsx scripts/demo.ts "$@"
