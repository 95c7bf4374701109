# kiam node agent image. Build from the repository root:
#   docker build -t kiam:0.1.0 .
# Two stages: `build` has the full toolchain and the dev dependencies and produces the esbuild bundle and the eBPF
# object; `runtime` is a slim Debian with Node, both iptables backends, conntrack and bpftool, and only the build
# output.
# (Not built on the development machines, which have no Docker engine: test/unit/dockerfile.test.ts checks
# this file's stages, sources and entrypoint against the repository and the build output instead.)

# One Node version for both stages. Bump it here (and check the tag exists); a release pipeline should pin
# the resolved digests (node:<tag>@sha256:…) as well.
ARG NODE_VERSION=22.23.3

# ---- build: npm ci from package-lock.json, then the production bundle ------------------------------------
# The bundle is plain JavaScript, so this stage runs on the build machine's platform even for a
# cross-platform (e.g. arm64) image: no emulation for npm ci and esbuild.
FROM --platform=$BUILDPLATFORM node:${NODE_VERSION}-bookworm AS build
# clang and libbpf-dev: `npm run build` compiles src/netfilter/ebpf/kiam.bpf.c into dist/kiam.bpf.o with
# `clang -target bpf` against the kernel UAPI headers (linux-libc-dev, already in this image) and libbpf's
# bpf_helpers.h. BPF bytecode does not depend on the build machine's CPU, but -target bpf takes its byte order:
# amd64 and arm64 are both little-endian, so one object serves both images. This stage only: the runtime image
# gets the object, not the compiler.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so this layer is reused while only the sources change. --ignore-scripts: the `prepare`
# script would build before the sources are here; esbuild finds its platform binary without its install script.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/build.mjs ./scripts/build.mjs
COPY bin ./bin
COPY src ./src
# Fails the build if the eBPF object is missing (scripts/build.mjs only warns without clang).
RUN npm run build && test -s dist/kiam.bpf.o

# ---- runtime ------------------------------------------------------------------------------------------
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
# iptables: iptables-nft-restore/-save and iptables-legacy-restore/-save (the agent detects which one the node
# uses); conntrack: flushes connections to 169.254.169.254 opened before the rules existed; bpftool: loads, pins,
# attaches, configures and reads the eBPF socket redirect (the agent spawns it; no native addon), ~2.9 MiB
# installed with its one new library, libelf1 (deploy/README.md); iproute2: `ip`, with which --container-credentials
# puts its addresses on a dummy link (src/netfilter/link.ts). Nothing else: --no-install-recommends keeps
# nftables and friends out. Versions float with Debian's security updates.
# npm, npx, corepack and yarn are removed: nothing runs them at run time.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack bpftool iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /opt/yarn-* \
           /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg
ENV NODE_ENV=production
WORKDIR /app
# The production build only. No node_modules: dist/kiam.mjs bundles every runtime dependency (scripts/build.mjs
# leaves out only pino-pretty, the optional development log formatter behind --log-format pretty).
# bin/kiam.mjs imports dist/kiam.mjs when it exists, which it always does here (without it, it would look for tsx,
# which is absent, and exit 1 saying so). package.json: name and version for whoever inspects the image.
# Files stay owned by root and read-only to everyone else.
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/bin/kiam.mjs ./bin/kiam.mjs
# dist/kiam.bpf.o beside the bundle: that is where the agent looks for it (KIAM_BPF_OBJECT overrides).
COPY --from=build /src/dist/kiam.mjs /src/dist/kiam.mjs.map /src/dist/kiam-webhook.mjs /src/dist/kiam-webhook.mjs.map /src/dist/kiam.bpf.o ./dist/
# `kiam` on the PATH, for `kubectl exec ds/kiam -- kiam doctor` and `kiam intercept status|remove` on a node.
RUN ln -s /app/bin/kiam.mjs /usr/local/bin/kiam

# Who runs it. The image defaults to an unprivileged user (the base image's `node`, uid 1000), so a bare
# `docker run` or a pod without a securityContext gets no root. The agent with --intercept needs root inside
# the container, and deploy/base/daemonset.yaml says so explicitly (runAsUser: 0) while dropping every
# capability but NET_ADMIN and NET_RAW for iptables, and BPF, PERFMON and SYS_ADMIN for bpftool (measured:
# deploy/README.md, "Capabilities, measured"); `kiam init` runs in a privileged init container (mount(2)). For
# iptables:
# - iptables-nft-restore/-save talk netlink to nf_tables: CAP_NET_ADMIN.
# - iptables-legacy-restore/-save open a raw socket for the IPT_SO_* socket options: CAP_NET_ADMIN and
#   CAP_NET_RAW (with NET_ADMIN alone: "Permission denied (you must be root)"); the backend detection runs
#   iptables-legacy-save on every node, nft or not.
# - conntrack -D talks netlink: CAP_NET_ADMIN.
# - iptables-legacy takes /run/xtables.lock (created 0600 root); the DaemonSet mounts the node's own lock file
#   so that kiam, kube-proxy and the CNI serialise their legacy updates.
# Why not a non-root uid with those capabilities: Kubernetes gives a non-root container no effective
# capabilities (no ambient capabilities), and file capabilities (setcap) only work with
# allowPrivilegeEscalation: true, and the node's root-owned lock file (and the root-owned pins under
# /sys/fs/bpf/kiam) would stay unwritable. Root with the measured capabilities, no privilege escalation and a
# read-only root filesystem is the smaller grant.
# (Verified with setpriv --bounding-set in a throwaway network namespace: see deploy/README.md.)
USER 1000:1000

# V8 / Node flags: issue 4 (the benchmark) settles these; put them between "node" and the script,
# e.g. "node", "--enable-source-maps", "/app/bin/kiam.mjs" (the source map ships in dist/).
# --enable-experimental-regexp-engine: namespace and route patterns run on V8's linear-time engine (src/config.ts,
# linearRegExp; the agent also enables it at start-up, this makes it part of V8's start).
ENTRYPOINT ["node", "--max-semi-space-size=4", "--enable-experimental-regexp-engine", "/app/bin/kiam.mjs"]
CMD ["--help"]
