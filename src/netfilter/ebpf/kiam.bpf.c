// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * kiam's socket redirect: cgroup sock_addr hooks that send a pod's TCP connects to the instance metadata
 * service to the kiam agent on its node, at connect() time, before any packet exists. This holds on eBPF
 * dataplanes (Cilium eBPF host routing, Calico eBPF) that forward pod packets past the host's netfilter, where
 * an iptables DNAT never runs. The same mechanism as Cilium's socket-based load balancing
 * (https://docs.cilium.io/en/stable/network/kubernetes/kubeproxy-free/#socket-loadbalancer-bypass-in-pod-namespace).
 *
 *   connect4:     TCP 169.254.169.254:80          -> HOST_IP:PORT
 *   connect6:     TCP [fd00:ec2::254]:80          -> [HOST_IPV6]:PORT (or [::ffff:HOST_IP]:PORT without one)
 *                 TCP [::ffff:169.254.169.254]:80 -> [::ffff:HOST_IP]:PORT
 *   getpeername4/6: a redirected socket reports the address it dialled.
 *
 * Sockets in the node's own network namespace are never rewritten (hostNetwork pods, the kubelet, the agent's own
 * pass-through). The node's namespace is init_net unless the agent taught us another one (nested nodes such as
 * kind): it sets a random probe address in the config, connects a UDP socket to it (which sends nothing), and this
 * program records the caller's netns cookie. Program types and context fields: the kernel's UAPI
 * (include/uapi/linux/bpf.h, struct bpf_sock_addr) and https://docs.kernel.org/bpf/prog_cgroup_sockaddr.html
 * is not the reference; see https://www.kernel.org/doc/html/latest/bpf/libbpf/program_types.html for the
 * section names. getpeername hooks need Linux 5.8, bpf_get_netns_cookie for sock_addr programs 5.7.
 *
 * The configuration is one entry of a pinned array map that the agent writes with bpftool; every field is in
 * network byte order except `port` and `probe_port` (host order) and the cookies.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define METADATA_PORT 80
/* 169.254.169.254 */
#define METADATA_IP4 0xa9fea9feU
/* fd00:ec2::254, as four big-endian 32-bit words */
#define METADATA_IP6_0 0xfd000ec2U
#define METADATA_IP6_3 0x00000254U

/* Must match the layout the agent writes (encodeConfig in src/netfilter/ebpf/plan.ts): 48 bytes, little-endian host. */
struct kiam_config {
	__u32 host_ip4;          /* network order; 0: interception off (the agent has not configured us yet) */
	__u32 port;              /* host order */
	__u32 host_ip6[4];       /* network order; all zero: no node IPv6, fd00:ec2::254 goes to ::ffff:HOST_IP */
	__u64 host_netns_cookie; /* 0: the node is init_net */
	__u32 probe_ip4;         /* network order; 0: no probe in progress */
	__u32 probe_port;        /* host order */
	__u64 learned_cookie;    /* written by this program when the probe arrives */
};

struct kiam_orig {
	__u32 ip6[4]; /* network order; ip6[3] holds the IPv4 address for family AF_INET */
	__u32 port;   /* network order, as in user_port */
	__u32 family;
};

enum kiam_stat {
	STAT_REDIRECT4 = 0,
	STAT_REDIRECT6 = 1,
	STAT_REDIRECT6_MAPPED = 2,
	STAT_HOST_SKIPPED = 3,
	STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kiam_config);
} kiam_config SEC(".maps");

/* socket cookie -> what it dialled, for getpeername. Cookies are never reused within a boot; LRU evicts. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct kiam_orig);
} kiam_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} kiam_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *value = bpf_map_lookup_elem(&kiam_stats, &stat);
	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline struct kiam_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&kiam_config, &zero);
}

/* True for sockets of the node's own network namespace, which are never rewritten. */
static __always_inline int in_host_netns(struct bpf_sock_addr *ctx, struct kiam_config *cfg)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	__u64 host = cfg->host_netns_cookie ? cfg->host_netns_cookie : bpf_get_netns_cookie(NULL);
	if (cookie != host)
		return 0;
	count(STAT_HOST_SKIPPED);
	return 1;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, __u32 family, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct kiam_orig orig = {
		.ip6 = { w0, w1, w2, w3 },
		.port = ctx->user_port,
		.family = family,
	};
	bpf_map_update_elem(&kiam_orig, &cookie, &orig, BPF_ANY);
}

SEC("cgroup/connect4")
int kiam_connect4(struct bpf_sock_addr *ctx)
{
	struct kiam_config *cfg = config();
	if (!cfg)
		return 1;
	if (ctx->protocol == IPPROTO_UDP) {
		if (cfg->probe_port && ctx->user_ip4 == cfg->probe_ip4 && ctx->user_port == bpf_htons((__u16)cfg->probe_port))
			cfg->learned_cookie = bpf_get_netns_cookie(ctx);
		return 1;
	}
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	if (ctx->user_ip4 != bpf_htonl(METADATA_IP4) || ctx->user_port != bpf_htons(METADATA_PORT))
		return 1;
	if (!cfg->host_ip4 || in_host_netns(ctx, cfg))
		return 1;
	remember(ctx, AF_INET, 0, 0, 0, ctx->user_ip4);
	ctx->user_ip4 = cfg->host_ip4;
	ctx->user_port = bpf_htons((__u16)cfg->port);
	count(STAT_REDIRECT4);
	return 1;
}

SEC("cgroup/connect6")
int kiam_connect6(struct bpf_sock_addr *ctx)
{
	struct kiam_config *cfg = config();
	if (!cfg || ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	if (ctx->user_port != bpf_htons(METADATA_PORT))
		return 1;
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	int metadata6 = w0 == bpf_htonl(METADATA_IP6_0) && w1 == 0 && w2 == 0 && w3 == bpf_htonl(METADATA_IP6_3);
	int mapped4 = w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffffU) && w3 == bpf_htonl(METADATA_IP4);
	if (!metadata6 && !mapped4)
		return 1;
	if (!cfg->host_ip4 || in_host_netns(ctx, cfg))
		return 1;
	remember(ctx, AF_INET6, w0, w1, w2, w3);
	int have6 = cfg->host_ip6[0] | cfg->host_ip6[1] | cfg->host_ip6[2] | cfg->host_ip6[3];
	if (metadata6 && have6) {
		ctx->user_ip6[0] = cfg->host_ip6[0];
		ctx->user_ip6[1] = cfg->host_ip6[1];
		ctx->user_ip6[2] = cfg->host_ip6[2];
		ctx->user_ip6[3] = cfg->host_ip6[3];
		count(STAT_REDIRECT6);
	} else {
		/* A dual-stack socket reaches the agent over IPv4; an IPv6-only one fails (ENETUNREACH): closed. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffffU);
		ctx->user_ip6[3] = cfg->host_ip4;
		count(STAT_REDIRECT6_MAPPED);
	}
	ctx->user_port = bpf_htons((__u16)cfg->port);
	return 1;
}

SEC("cgroup/getpeername4")
int kiam_getpeer4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct kiam_orig *orig = bpf_map_lookup_elem(&kiam_orig, &cookie);
	if (orig && orig->family == AF_INET) {
		ctx->user_ip4 = orig->ip6[3];
		ctx->user_port = orig->port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int kiam_getpeer6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct kiam_orig *orig = bpf_map_lookup_elem(&kiam_orig, &cookie);
	if (orig && orig->family == AF_INET6) {
		ctx->user_ip6[0] = orig->ip6[0];
		ctx->user_ip6[1] = orig->ip6[1];
		ctx->user_ip6[2] = orig->ip6[2];
		ctx->user_ip6[3] = orig->ip6[3];
		ctx->user_port = orig->port;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
