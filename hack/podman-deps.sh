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

die() { echo "podman-deps: $*" >&2; exit 1; }
log() { echo "podman-deps: $*"; }

pkgs=(podman netavark busybox-static iproute2 util-linux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
[ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
log "installing Debian packages: ${missing[*]}"
t=$SECONDS
export DEBIAN_FRONTEND=noninteractive
# podman's package enables podman.socket and friends on a host with an
# init system: the tests start their own podman processes and need none.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
	policy=/usr/sbin/policy-rc.d
	printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
	trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq || die "apt-get update failed"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
	die "apt-get install ${missing[*]} failed"
log "installed in $((SECONDS - t)) s"
