#!/usr/bin/env bash
# Installs what building and testing Patu needs on Debian 12, and only what
# is missing, so that it is cheap to run before every test run.
set -euo pipefail

pkgs=(
	clang llvm libbpf-dev linux-libc-dev # go generate: eBPF C -> bpf2go
	iproute2 ethtool                     # test topologies
	iptables                             # the XDP benchmark's realistic node path (internal/nodepath)
	conntrack                            # tests: what the packet path leaves in conntrack
	ipvsadm                              # tests: kube-proxy IPVS mode, where the kernel has IPVS (the kernel matrix)
	sockperf iperf3                      # benchmarks
)

. "$(dirname "$0")/apt.sh"
apt_install_missing deps "${pkgs[@]}"

if ! command -v go >/dev/null; then
	echo "go not found: install Go 1.26 (https://go.dev/doc/install) and put it on PATH" >&2
	exit 1
fi
