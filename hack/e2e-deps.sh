#!/usr/bin/env bash
# Installs what Patu's real-runtime tests (internal/rtlab and its users)
# need on Debian 12, and only what is missing, so CI can call it before
# every run:
#   - Debian packages: containerd 1.6 + runc + the reference CNI plugins,
#     busybox-static (the workload image), iproute2 and util-linux;
#   - into the tools dir ${PATU_TOOLS:-/var/cache/patu-e2e}:
#       bin/crictl                                     (cri-tools $CRICTL_VERSION)
#       bin2/{containerd,ctr,containerd-shim-runc-v2}  (containerd $CONTAINERD2_VERSION)
#     built with `go install`. bin2 stays out of PATH on purpose: containerd
#     finds its shim through PATH, and the 1.6 daemon fails with the 2.x shim.
# A binary counts as installed when `go version -m` reports the wanted module
# version, so bumping a version below rebuilds it. Caching the tools dir
# between CI runs saves about 3 minutes of compiling.
set -euo pipefail

CRICTL_VERSION=v1.37.0
CONTAINERD2_VERSION=v2.4.2
TOOLS=${PATU_TOOLS:-/var/cache/patu-e2e}

die() { echo "e2e-deps: $*" >&2; exit 1; }
log() { echo "e2e-deps: $*"; }
t_all=$SECONDS

# ---------------------------------------------------------------- Debian packages
pkgs=(containerd runc containernetworking-plugins busybox-static iproute2 util-linux)
. "$(dirname "$0")/apt.sh"
apt_install_missing e2e-deps "${pkgs[@]}" || exit 1

# ---------------------------------------------------------------- Go tools
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null || die "go not found: install Go 1.26 (https://go.dev/doc/install) and put it on PATH"
# -buildvcs=false: the module cache has no VCS data, and a caller's GOFLAGS
# (e.g. -mod=vendor from a project) must not leak into these installs.
export GOFLAGS=-buildvcs=false GOWORK=off

# has BIN MODULE VERSION: true when BIN exists and was built from MODULE@VERSION.
has() {
	[ -x "$1" ] && go version -m "$1" 2>/dev/null | awk -v m="$2" -v v="$3" '$1 == "mod" && $2 == m && $3 == v { ok = 1 } END { exit !ok }'
}

# goinstall DIR PKG@VERSION...: go install into DIR, timed.
goinstall() {
	local dir=$1 t=$SECONDS
	shift
	mkdir -p "$dir" || die "create $dir failed"
	log "go install $* -> $dir"
	GOBIN=$dir go install "$@" || die "go install $* failed"
	log "installed in $((SECONDS - t)) s"
}

if ! has "$TOOLS/bin/crictl" sigs.k8s.io/cri-tools "$CRICTL_VERSION"; then
	goinstall "$TOOLS/bin" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi

ctrd=()
for b in containerd ctr containerd-shim-runc-v2; do
	if ! has "$TOOLS/bin2/$b" github.com/containerd/containerd/v2 "$CONTAINERD2_VERSION"; then
		ctrd+=("github.com/containerd/containerd/v2/cmd/$b@$CONTAINERD2_VERSION")
	fi
done
if ((${#ctrd[@]})); then
	# One go install for all three: they share most of their packages.
	goinstall "$TOOLS/bin2" "${ctrd[@]}"
fi

log "ready in $((SECONDS - t_all)) s (tools in $TOOLS)"
