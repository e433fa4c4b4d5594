#!/usr/bin/env bash
# Installs what Patu's podman e2e tests (test/podman) need on Debian 12, and
# only what is missing, so CI can call it before every run: podman 4.3 (with
# conmon and runc) and netavark, named because without recommends a host
# that has containernetworking-plugins would not get it; busybox-static (the
# workload image), iproute2 and util-linux (nsenter). apt-get install podman
# took 10 to 70 s on the test machines.
#
# Installing podman also drops /etc/cni/net.d/87-podman-bridge.conflist; the
# tests run podman with their own configuration (netavark, their own
# network_config_dir), so nothing else on the host changes.
set -euo pipefail


pkgs=(podman netavark busybox-static iproute2 util-linux)
. "$(dirname "$0")/apt.sh"
apt_install_missing podman-deps "${pkgs[@]}"
