// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Test-only emulation of an eBPF dataplane (Cilium's eBPF host routing, Calico's eBPF mode): a tc program on the
// ingress of a node-side pod veth that sends the pod's packets for the instance metadata service straight out of
// the node's uplink with bpf_redirect(), so they never traverse the node's netfilter (no PREROUTING DNAT, no
// FORWARD filter). Everything else goes on through the normal stack (TC_ACT_OK).
//
// Built by the end-to-end sandbox at test time (test/e2e/sandbox.ts, installBypass()):
//   clang -O2 -g -target bpf -I/usr/include/<multiarch> -DUPLINK_IFINDEX=N -DUPLINK_MAC=0x02… -DPEER_MAC=0x02… -c
// and attached with `tc filter add dev caliX ingress bpf da obj FILE sec tc` (direct action, see tc-bpf(8)).
// bpf_redirect() and the TC_ACT_* codes: https://docs.kernel.org/bpf/redirect.html, include/uapi/linux/bpf.h.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef UPLINK_IFINDEX
#error "define UPLINK_IFINDEX (the node's eth0), UPLINK_MAC (its MAC) and PEER_MAC (the metadata side's), MACs as 48-bit numbers"
#endif

// 169.254.169.254 and fd00:ec2::254 (the EC2 instance metadata service's IPv4 and IPv6 addresses).
#define IMDS_V4 0xa9fea9feU

// MACs are written byte by byte from immediates: no .rodata, so any loader (tc's legacy one too) takes it.
static __always_inline void set_mac(unsigned char *dst, __u64 mac) {
#pragma unroll
  for (int i = 0; i < ETH_ALEN; i++) dst[i] = (mac >> (8 * (ETH_ALEN - 1 - i))) & 0xff;
}

static __always_inline int is_imds_v6(const struct in6_addr *a) {
  return a->in6_u.u6_addr32[0] == bpf_htonl(0xfd000ec2) && a->in6_u.u6_addr32[1] == 0 &&
         a->in6_u.u6_addr32[2] == 0 && a->in6_u.u6_addr32[3] == bpf_htonl(0x254);
}

SEC("tc")
int bypass(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data;
  void *end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > end) return TC_ACT_OK;

  int hit = 0;
  if (eth->h_proto == bpf_htons(ETH_P_IP)) {
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end) return TC_ACT_OK;
    hit = ip->daddr == bpf_htonl(IMDS_V4);
  } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
    struct ipv6hdr *ip6 = (void *)(eth + 1);
    if ((void *)(ip6 + 1) > end) return TC_ACT_OK;
    hit = is_imds_v6(&ip6->daddr);
  }
  if (!hit) return TC_ACT_OK;

  set_mac(eth->h_dest, PEER_MAC);
  set_mac(eth->h_source, UPLINK_MAC);
  return bpf_redirect(UPLINK_IFINDEX, 0);
}

char LICENSE[] SEC("license") = "GPL";
