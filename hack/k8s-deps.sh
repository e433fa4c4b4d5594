#!/usr/bin/env bash
# Builds the Kubernetes node of the node tier (internal/k8slab, test/k8s)
# into ${PATU_TOOLS:-/var/cache/patu-e2e}/k8s/bin, once:
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl     from k8s.io/kubernetes $K8S_VERSION, in one go build
#   kine        github.com/k3s-io/kine $KINE_VERSION with SQLite (what K3s
#               uses as its datastore; cgo, needs gcc)
# The stamp file bin/.stamp names what was built; when it says exactly
# $STAMP and every binary is there, nothing is done (warm: < 1 s). Cold it
# takes about 8 minutes on 2 cores.
#
# The k8s.io/kubernetes module zip has no staging/ directory, while its
# go.mod replaces every k8s.io/* staging module with ./staging/src/k8s.io/*:
# the build runs in a writable copy of the module whose replaces point at
# the published modules of the same release (v0.34.2 for v1.34.2).
#
# K3s itself is not built: the Go module proxy refuses github.com/k3s-io/k3s
# (403 for the one exact release tried), so the node is assembled from the
# upstream components K3s embeds.
set -euo pipefail

K8S_VERSION=v1.34.2
STAGING_VERSION=v0.${K8S_VERSION#v1.}
KINE_VERSION=v0.17.5
STAMP="kubernetes $K8S_VERSION kine $KINE_VERSION build=1"
TOOLS=${PATU_TOOLS:-/var/cache/patu-e2e}
OUT=$TOOLS/k8s/bin
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

die() { echo "k8s-deps: $*" >&2; exit 1; }
log() { echo "k8s-deps: $*"; }
t_all=$SECONDS

built() {
	[ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$STAMP" ] || return 1
	local b
	for b in "${K8S_CMDS[@]}" kine; do
		[ -x "$OUT/$b" ] || return 1
	done
}
. "$(dirname "$0")/apt.sh"
# What the node runs, built or not: kube-proxy's nftables mode calls nft.
apt_install_missing k8s-deps nftables || exit 1
if built; then
	log "ready: $STAMP in $OUT"
	exit 0
fi

apt_install_missing k8s-deps gcc libc6-dev || exit 1
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null || die "go not found: install Go 1.26 (https://go.dev/doc/install) and put it on PATH"
# The caller's module settings must not leak into these builds.
export GOFLAGS="-buildvcs=false -mod=mod" GOWORK=off

work=$(mktemp -d /tmp/patu-k8s-deps.XXXXXX)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
staged=$work/bin
mkdir -p "$staged"

# modcopy MODULE@VERSION DIR: a writable copy of a module's source.
modcopy() {
	local src
	src=$(cd "$work" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -d "$src" ] || die "download $1 failed"
	cp -r "$src" "$2"
	chmod -R u+w "$2"
}

# ---------------------------------------------------------------- Kubernetes
t=$SECONDS
log "k8s.io/kubernetes@$K8S_VERSION: ${K8S_CMDS[*]}"
modcopy "k8s.io/kubernetes@$K8S_VERSION" "$work/kubernetes"
cd "$work/kubernetes"
edits=()
for mod in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\1#p' go.mod); do
	edits+=("-replace=$mod=$mod@$STAGING_VERSION")
done
((${#edits[@]})) || die "no staging replaces found in k8s.io/kubernetes@$K8S_VERSION's go.mod"
go mod edit "${edits[@]}"
# What hack/lib/version.sh stamps into a release build: kubelet reports it
# to the API server, kubectl version shows it.
v=k8s.io/component-base/version
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
pkgs=()
for c in "${K8S_CMDS[@]}"; do pkgs+=("./cmd/$c"); done
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$staged/" "${pkgs[@]}" || die "go build of Kubernetes failed"
log "Kubernetes built in $((SECONDS - t)) s"

# ---------------------------------------------------------------- kine
t=$SECONDS
log "github.com/k3s-io/kine@$KINE_VERSION"
modcopy "github.com/k3s-io/kine@$KINE_VERSION" "$work/kine"
cd "$work/kine"
CGO_ENABLED=1 go build -trimpath -ldflags "-s -w" -o "$staged/kine" . || die "go build of kine failed"
log "kine built in $((SECONDS - t)) s"

# ---------------------------------------------------------------- install
mkdir -p "$OUT"
rm -f "$OUT/.stamp"
for b in "${K8S_CMDS[@]}" kine; do
	install -m 0755 "$staged/$b" "$OUT/$b.new" && mv -f "$OUT/$b.new" "$OUT/$b"
done
echo "$STAMP" >"$OUT/.stamp"
log "ready in $((SECONDS - t_all)) s: $STAMP in $OUT"
