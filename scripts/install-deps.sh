#!/usr/bin/env bash
# Installs the Debian packages the demo and the tests need, only those missing (needs root and apt).
# iptables (nft + legacy), conntrack, iproute2, curl, openssl for the fake API server's certificate, and the
# real clients the end-to-end tests drive: the AWS CLI v2 (Debian awscli) and botocore; shellcheck for the
# test that lints every shell script; clang, llvm, libbpf-dev (headers) and bpftool to build, load and attach the
# eBPF programs (the interception and the sandbox's emulated eBPF dataplane).
set -euo pipefail
need=()
for cmd in ip:iproute2 iptables-nft-restore:iptables iptables-legacy-restore:iptables conntrack:conntrack \
           curl:curl openssl:openssl /usr/bin/aws:awscli /usr/bin/python3:python3 shellcheck:shellcheck \
           clang:clang llvm-strip:llvm bpftool:bpftool; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
/usr/bin/python3 -c 'import botocore' >/dev/null 2>&1 || need+=(python3-botocore)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} — install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v kubectl >/dev/null 2>&1 || echo "note: kubectl not found; the end-to-end tests drive the fake API server with it" >&2
