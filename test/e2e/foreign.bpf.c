// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A "foreign" cgroup/connect4 program for the end-to-end tests, standing in for Cilium's or Calico's own connect
 * hooks: it counts every connect() it sees and changes nothing. The tests attach it beside kiam's (multi) and check
 * that both keep working and that `kiam intercept remove` leaves it attached.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} foreign_count SEC(".maps");

SEC("cgroup/connect4")
int foreign_c4(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&foreign_count, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
