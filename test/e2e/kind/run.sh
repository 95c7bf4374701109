#!/usr/bin/env bash
# kiam end to end on a real Kubernetes cluster (kind), with no AWS account: a fake STS and a fake instance
# metadata service run in the cluster, kiam runs as the kindnet overlay deploys it, and client pods ask
# http://169.254.169.254 for credentials with the AWS CLI and curl. Prints a PASS/FAIL line per check and a
# summary; exits 0 only when every check passed. See test/e2e/kind/README.md.
#
#   test/e2e/kind/run.sh                   # build, create a cluster, test, delete the cluster
#   KEEP_CLUSTER=1 test/e2e/kind/run.sh    # keep the cluster afterwards (the script prints how to use and delete it)
#
# Needs docker (a running engine), kind and kubectl. Environment (all optional):
#   CLUSTER_NAME      kind cluster name (default kiam-e2e-<time>-<pid>; must not exist yet)
#   KEEP_CLUSTER=1    keep the cluster on exit (default: delete it, also on failure or Ctrl-C)
#   KIND_NODE_IMAGE   node image for `kind create cluster --image` (default: kind's own)
#   KIAM_IMAGE        use this already-built kiam image instead of building the repository's Dockerfile
#   AWS_CLI_IMAGE     default amazon/aws-cli:2.17.0
#   CURL_IMAGE        default curlimages/curl:8.11.1
#   TIMEOUT           how long each wait may take (default 180s)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"

CLUSTER_NAME="${CLUSTER_NAME:-kiam-e2e-$(date +%s)-$$}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
KIAM_IMAGE="${KIAM_IMAGE:-}"
AWS_CLI_IMAGE="${AWS_CLI_IMAGE:-amazon/aws-cli:2.17.0}"
CURL_IMAGE="${CURL_IMAGE:-curlimages/curl:8.11.1}"
TIMEOUT="${TIMEOUT:-180s}"

# Fixed by the manifests in this directory.
readonly E2E_KIAM_IMAGE=kiam:e2e            # overlay/kustomization.yaml `images`
readonly E2E_FAKES_IMAGE=kiam-e2e-fakes:e2e # fakes.yaml
readonly KIAM_NS=kiam                       # deploy/base/namespace.yaml
readonly FAKES_NS=kiam-e2e-fakes
readonly SECRET=kiam-e2e-aws
readonly ROLE=e2e-reader
# The fake metadata service's instance profile is arn:aws:iam::111122223333:instance-profile/node-role, and the
# base manifests use --role-base-arn-autodetect: role names resolve in that account.
readonly ROLE_ARN="arn:aws:iam::111122223333:role/$ROLE"
readonly STS_URL="http://fake-sts.$FAKES_NS.svc.cluster.local"
readonly METADATA_URL="http://fake-metadata.$FAKES_NS.svc.cluster.local"
readonly IMDS=http://169.254.169.254
readonly KIAM_CLI=(node /app/bin/kiam.mjs) # the image's entrypoint

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiam-kind-e2e.XXXXXX")"
KUBECONFIG_FILE="$WORK/kubeconfig" # the cluster's own kubeconfig: the user's ~/.kube/config is never touched
CLUSTER_CREATED=0
PASSED=()
FAILED=()

log() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
k() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

pass() {
  PASSED+=("$1")
  printf 'PASS  %s\n' "$1"
}
fail() {
  FAILED+=("$1")
  printf 'FAIL  %s\n' "$1"
  if [ -n "${2:-}" ]; then printf '      %s\n' "$2"; fi
}
# expect NAME ACTUAL WANTED: exact comparison.
expect() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2', wanted '$3'"; fi
}
# expect_match NAME TEXT ERE
expect_match() {
  if grep -Eq -- "$3" <<<"$2"; then pass "$1"; else fail "$1" "no match for /$3/ in: $(head -c 600 <<<"$2")"; fi
}
# expect_no_match NAME TEXT ERE
expect_no_match() {
  if grep -Eq -- "$3" <<<"$2"; then fail "$1" "unexpected match for /$3/ in: $(head -c 600 <<<"$2")"; else pass "$1"; fi
}

diagnostics() {
  [ "$CLUSTER_CREATED" = 1 ] || return 0
  log "diagnostics"
  k get nodes -o wide || true
  k get pods -A -o wide || true
  k -n "$KIAM_NS" describe daemonset kiam || true
  k -n "$KIAM_NS" logs -l app.kubernetes.io/name=kiam --all-containers --prefix --tail=200 || true
  k -n "$FAKES_NS" logs deploy/fake-sts --tail=50 || true
  k -n "$FAKES_NS" logs deploy/fake-metadata --tail=50 || true
  docker exec "$CLUSTER_NAME-worker" sh -c 'iptables-save -t nat | grep -E "KIAM|169.254.169.254"' || true
}

cleanup() {
  local status=$?
  set +e
  if [ "$status" != 0 ] || [ "${#FAILED[@]}" -gt 0 ]; then diagnostics; fi
  if [ "$CLUSTER_CREATED" = 1 ]; then
    if [ "$KEEP_CLUSTER" = 1 ]; then
      local kc="$PWD/$CLUSTER_NAME.kubeconfig"
      printf '\nkept cluster %s. Use it with:\n  kind export kubeconfig --name %s --kubeconfig %s\n  export KUBECONFIG=%s\nDelete it with:\n  kind delete cluster --name %s\n' \
        "$CLUSTER_NAME" "$CLUSTER_NAME" "$kc" "$kc" "$CLUSTER_NAME"
    else
      log "deleting cluster $CLUSTER_NAME"
      kind delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE"
    fi
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

random_upper() { # N characters of [A-Z0-9]
  LC_ALL=C tr -dc 'A-Z0-9' </dev/urandom | head -c "$1" || true
}
random_secret() { # N characters of [A-Za-z0-9]
  LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1" || true
}

# curl from inside a client pod: imds_code NS POD PATH [curl args…] prints the HTTP status.
imds_code() {
  local ns=$1 pod=$2 path=$3
  shift 3
  k -n "$ns" exec "$pod" -- curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$IMDS/$path" || true
}
imds_body() {
  local ns=$1 pod=$2 path=$3
  shift 3
  k -n "$ns" exec "$pod" -- curl -s --max-time 5 "$@" "$IMDS/$path" || true
}
# The value of a JSON string field, from text without nested quotes (the documents here): json_field TEXT NAME
json_field() {
  grep -o "\"$2\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" <<<"$1" | head -n 1 | sed 's/.*:[[:space:]]*"\([^"]*\)"$/\1/' || true
}
# One JSON object per line from a compact JSON array of flat objects.
json_objects() {
  tr -d '\n' <<<"$1" | sed 's/},[[:space:]]*{/}\n{/g'
}

# ---------------------------------------------------------------------------------------------------------------
log "prerequisites"
for cmd in docker kind kubectl; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed (see test/e2e/kind/README.md)"
done
docker info >/dev/null 2>&1 || die "docker cannot reach a Docker engine (is it running? may this user use it?)"
if kind get clusters 2>/dev/null | grep -qx -- "$CLUSTER_NAME"; then die "a kind cluster named $CLUSTER_NAME exists already"; fi
printf 'docker %s; %s; kubectl: %s\n' "$(docker version --format '{{.Server.Version}}' || true)" "$(kind version || true)" \
  "$(kubectl version --client 2>/dev/null | head -n 1 || true)"

log "images"
if [ -n "$KIAM_IMAGE" ]; then
  docker image inspect "$KIAM_IMAGE" >/dev/null || die "KIAM_IMAGE=$KIAM_IMAGE is not a local image"
  docker tag "$KIAM_IMAGE" "$E2E_KIAM_IMAGE"
else
  docker build -t "$E2E_KIAM_IMAGE" -f "$REPO/Dockerfile" "$REPO"
fi
docker build -t "$E2E_FAKES_IMAGE" -f "$HERE/Dockerfile.fakes" "$REPO"

log "cluster $CLUSTER_NAME"
create_args=(create cluster --name "$CLUSTER_NAME" --config "$HERE/kind-config.yaml" --kubeconfig "$KUBECONFIG_FILE" --wait 120s)
if [ -n "$KIND_NODE_IMAGE" ]; then create_args+=(--image "$KIND_NODE_IMAGE"); fi
CLUSTER_CREATED=1 # set before: a half-created cluster is deleted too
kind "${create_args[@]}"
k wait --for=condition=Ready nodes --all --timeout="$TIMEOUT"
kind load docker-image "$E2E_KIAM_IMAGE" "$E2E_FAKES_IMAGE" --name "$CLUSTER_NAME"
WORKER="$CLUSTER_NAME-worker"

log "fakes: STS and instance metadata in namespace $FAKES_NS"
# The agent's own AWS identity, random for this run. The fake STS checks every SigV4 signature against it.
AGENT_KEY_ID="AKIAE2E$(random_upper 13)"
AGENT_SECRET="$(random_secret 40)"
if [ "${#AGENT_KEY_ID}" != 20 ] || [ "${#AGENT_SECRET}" != 40 ]; then die "could not generate random test keys"; fi
create_secret() {
  k -n "$1" create secret generic "$SECRET" \
    --from-literal=AWS_ACCESS_KEY_ID="$AGENT_KEY_ID" --from-literal=AWS_SECRET_ACCESS_KEY="$AGENT_SECRET" >/dev/null
}
k create namespace "$FAKES_NS"
create_secret "$FAKES_NS"
# kiam's namespace and its copy of the keys exist before its pods do (`apply -k` below adds the namespace's
# Pod Security labels from deploy/).
k create namespace "$KIAM_NS" --dry-run=client -o yaml | k apply -f -
create_secret "$KIAM_NS"
k apply -f "$HERE/fakes.yaml"
k -n "$FAKES_NS" rollout status deploy/fake-sts --timeout="$TIMEOUT"
k -n "$FAKES_NS" rollout status deploy/fake-metadata --timeout="$TIMEOUT"

log "kiam (deploy/overlays/kindnet + test/e2e/kind/overlay)"
k apply -k "$HERE/overlay"
k -n "$KIAM_NS" rollout status daemonset/kiam --timeout="$TIMEOUT"

log "client pods"
k apply -f "$HERE/clients.yaml"
sleep_cmd=(--restart=Never --command -- sleep 3600)
k -n e2e-permitted run awscli --image="$AWS_CLI_IMAGE" --annotations="iam.amazonaws.com/role=$ROLE" "${sleep_cmd[@]}"
k -n e2e-permitted run curl-reader --image="$CURL_IMAGE" --annotations="iam.amazonaws.com/role=$ROLE" "${sleep_cmd[@]}"
k -n e2e-permitted run curl-plain --image="$CURL_IMAGE" "${sleep_cmd[@]}"
k -n e2e-forbidden run curl-forbidden --image="$CURL_IMAGE" --annotations="iam.amazonaws.com/role=$ROLE" "${sleep_cmd[@]}"
k -n e2e-permitted wait --for=condition=Ready pod/awscli pod/curl-reader pod/curl-plain --timeout="$TIMEOUT"
k -n e2e-forbidden wait --for=condition=Ready pod/curl-forbidden --timeout="$TIMEOUT"

# ---------------------------------------------------------------------------------------------------------------
log "checks"

nodes=$(k get nodes --no-headers | wc -l | tr -d ' ' || true)
ready=$(k -n "$KIAM_NS" get daemonset kiam -o jsonpath='{.status.numberReady}' || true)
expect "an agent is ready on every node ($nodes)" "$ready" "$nodes"

veths=$(docker exec "$WORKER" ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ' || true)
expect_match "kindnet names the pods' host-side interfaces veth* (what --host-interface veth+ matches): $veths" "$veths" '(^| )veth'

# 1. An annotated pod in a permitted namespace gets its role, through a real SDK client (the AWS CLI v2 asks
#    for an IMDSv2 token, lists the role, fetches the document).
cli_out=$(k -n e2e-permitted exec awscli -- aws configure export-credentials --format process 2>&1 || true)
cli_key=$(json_field "$cli_out" AccessKeyId)
expect_match "AWS CLI in an annotated pod gets credentials issued by the fake STS (AccessKeyId $cli_key)" "$cli_key" '^ASIAFAKE[0-9]{12}$'
expect_match "AWS CLI credentials carry an expiration" "$(json_field "$cli_out" Expiration)" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T'

expect "curl (IMDSv1) in an annotated pod: the role listing names its role" \
  "$(imds_body e2e-permitted curl-reader latest/meta-data/iam/security-credentials/)" "$ROLE"
token=$(k -n e2e-permitted exec curl-reader -- curl -s --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS/latest/api/token" || true)
doc=$(imds_body e2e-permitted curl-reader "latest/meta-data/iam/security-credentials/$ROLE" -H "X-aws-ec2-metadata-token: $token")
expect_match "curl (IMDSv2 token) in an annotated pod: a credential document from the fake STS" "$(json_field "$doc" AccessKeyId)" '^ASIAFAKE[0-9]{12}$'
expect_match "the credential document says Code Success" "$(json_field "$doc" Code)" '^Success$'
expect "IMDSv2: a token from another pod is refused (401)" \
  "$(imds_code e2e-permitted curl-plain latest/meta-data/iam/security-credentials/ -H "X-aws-ec2-metadata-token: $token")" 401

# What the fake STS saw: the role ARN and per-pod session name for the very key the AWS CLI got, and every
# call signed with the agent's static test keys.
calls=$(k -n e2e-permitted exec curl-plain -- curl -s --max-time 5 "$STS_URL/_fake/calls" || true)
cli_call=$(json_objects "$calls" | grep -F "\"accessKeyId\":\"$cli_key\"" || true)
expect_match "fake STS issued the AWS CLI's key for $ROLE_ARN" "$cli_call" "\"roleArn\":\"$ROLE_ARN\""
expect_match "fake STS: session name {namespace}.{pod} = e2e-permitted.awscli" "$cli_call" '"sessionName":"e2e-permitted\.awscli"'
results=$(grep -o '"result":"[^"]*"' <<<"$calls" || true)
not_ok=$(grep -vxF '"result":"ok"' <<<"$results" | sort | uniq -c | tr -s ' ' || true)
ok_count=$(grep -cxF '"result":"ok"' <<<"$results" || true)
if [ -z "$not_ok" ] && [ "${ok_count:-0}" -gt 0 ]; then
  pass "fake STS: every AssumeRole call ($ok_count) was SigV4-signed with the agent's keys and succeeded"
else
  fail "fake STS: every AssumeRole call was SigV4-signed with the agent's keys and succeeded" "ok: ${ok_count:-0}; others: ${not_ok:-none}"
fi
expect_no_match "fake STS: no AssumeRole for the forbidden namespace's pod" "$calls" '"sessionName":"e2e-forbidden\.'

# 2. An unannotated pod gets 404, never the node's role.
expect "unannotated pod: role listing → 404" "$(imds_code e2e-permitted curl-plain latest/meta-data/iam/security-credentials/)" 404
expect "unannotated pod: the node's role by name → 404" "$(imds_code e2e-permitted curl-plain latest/meta-data/iam/security-credentials/node-role)" 404
plain_cli=$(k -n e2e-permitted exec curl-plain -- curl -s --max-time 5 "$IMDS/latest/meta-data/iam/security-credentials/node-role" || true)
expect_no_match "unannotated pod: no node credentials (ASIANODE…) in the answer" "$plain_cli" 'ASIANODE'

# 3. A pod whose namespace does not permit its role gets 403.
expect "forbidden namespace: role listing → 403" "$(imds_code e2e-forbidden curl-forbidden latest/meta-data/iam/security-credentials/)" 403
expect "forbidden namespace: credential document → 403" "$(imds_code e2e-forbidden curl-forbidden "latest/meta-data/iam/security-credentials/$ROLE")" 403

# 4. Other paths pass through to the (fake) real metadata service; user-data is denied by default.
expect "pass-through: instance-id from the node's metadata service" \
  "$(imds_body e2e-permitted curl-plain latest/meta-data/instance-id)" i-0123456789abcdef0
expect "pass-through: user-data is denied by default (404)" "$(imds_code e2e-permitted curl-plain latest/user-data)" 404
seen=$(k -n e2e-permitted exec curl-plain -- curl -s --max-time 5 "$METADATA_URL/_fake/requests" || true)
expect_match "the real metadata service saw the pass-through request (its log was read)" "$seen" '"path":"[^"]*meta-data/instance-id"'
expect_no_match "the real metadata service never saw a request for security credentials (no node role leaked)" "$seen" 'security-credentials'
expect_no_match "the real metadata service never saw user-data requested" "$seen" '"path":"[^"]*user-data'

# 5. The worker's agent metrics.
host_ip=$(k -n e2e-permitted get pod curl-plain -o jsonpath='{.status.hostIP}' || true)
metrics=$(k -n e2e-permitted exec curl-plain -- curl -s --max-time 5 "http://$host_ip:9620/metrics" || true)
expect_match "metrics: kiam_iptables_rules_present 1" "$metrics" '^kiam_iptables_rules_present 1$'
expect_match "metrics: a not-permitted denial was counted" "$metrics" '^kiam_credential_denials_total\{reason="not-permitted"\} [1-9]'
expect_match "metrics: a no-role answer was counted" "$metrics" '^kiam_credential_denials_total\{reason="no-role"\} [1-9]'
expect_match "metrics: pods indexed on the worker" "$metrics" '^kiam_pods_indexed [1-9]'

# 6. kiam doctor inside the worker's agent pod, when this build has it.
agent_pod=$(k -n "$KIAM_NS" get pods -l app.kubernetes.io/name=kiam --field-selector "spec.nodeName=$WORKER" -o jsonpath='{.items[0].metadata.name}' || true)
kiam_help=$(k -n "$KIAM_NS" exec "$agent_pod" -c kiam -- "${KIAM_CLI[@]}" --help 2>&1 || true)
if grep -qw doctor <<<"$kiam_help"; then
  if doctor_out=$(k -n "$KIAM_NS" exec "$agent_pod" -c kiam -- "${KIAM_CLI[@]}" doctor --metadata-endpoint "$METADATA_URL" 2>&1); then
    printf '%s\n' "$doctor_out"
    pass "kiam doctor in $agent_pod exits 0"
  else
    printf '%s\n' "$doctor_out"
    fail "kiam doctor in $agent_pod exits 0" "see its table above"
  fi
else
  printf 'SKIP  kiam doctor: this image has no doctor subcommand\n'
fi

# ---------------------------------------------------------------------------------------------------------------
log "summary: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf 'FAIL  %s\n' "${FAILED[@]}"
  exit 1
fi
printf 'all checks passed\n'
