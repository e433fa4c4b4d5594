#!/usr/bin/env bash
# Installs what Patu's CRI-O end-to-end test (test/crio) needs on Debian 12,
# and only what is missing:
#   - Debian packages: conmon, runc, the reference CNI plugins,
#     busybox-static (the workload image), iproute2, util-linux, and for the
#     build gcc, make, pkg-config and libseccomp-dev;
#   - into ${PATU_TOOLS:-/var/cache/patu-e2e}/crio/bin:
#       crio   CRI-O $CRIO_VERSION, built from its Go module
#       pinns  CRI-O's namespace pinner (C, static), from the same module
# Debian 12 has no cri-o package, hence the build.
#
# Why not `go install github.com/cri-o/cri-o/cmd/crio@VERSION`: go install
# asks the proxy for the module's version list (to report deprecation), and
# the proxy this project uses answers 403 for cri-o's list, while it serves
# the version itself. So the module is fetched with `go mod download` and
# built in place with `go build` (its go.mod has no replace directives).
# Build tags drop what needs C libraries Debian would have to add (gpgme,
# btrfs, devicemapper, ostree); seccomp stays, from libseccomp-dev.
#
# Cold (empty module and build caches) this took 9.5 to 17 minutes on 2
# vCPUs here (the slower with other builds running): the module download
# is ~1.3 GB and the build 7 to 10 min of CPU.
# Caching the tools dir between runs makes it a no-op: a binary counts as
# installed when its stamp file names the wanted version and tags.
set -euo pipefail

CRIO_VERSION=v1.34.0
CRIO_TAGS="containers_image_ostree_stub containers_image_openpgp exclude_graphdriver_btrfs btrfs_noversion exclude_graphdriver_devicemapper seccomp"
TOOLS=${PATU_TOOLS:-/var/cache/patu-e2e}
DIR=$TOOLS/crio
STAMP="cri-o $CRIO_VERSION tags=$CRIO_TAGS"

die() { echo "crio-deps: $*" >&2; exit 1; }
log() { echo "crio-deps: $*"; }
t_all=$SECONDS

# ---------------------------------------------------------------- Debian packages
pkgs=(conmon runc containernetworking-plugins busybox-static iproute2 util-linux gcc make pkg-config libc6-dev libseccomp-dev)
. "$(dirname "$0")/apt.sh"
apt_install_missing crio-deps "${pkgs[@]}" || exit 1

if [ -x "$DIR/bin/crio" ] && [ -x "$DIR/bin/pinns" ] && [ "$(cat "$DIR/bin/.stamp" 2>/dev/null)" = "$STAMP" ]; then
	log "CRI-O $CRIO_VERSION already in $DIR/bin"
	exit 0
fi

# ---------------------------------------------------------------- CRI-O
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=$PATH:/usr/local/go/bin
fi
command -v go >/dev/null || die "go not found: install Go 1.26 (https://go.dev/doc/install) and put it on PATH"
export GOFLAGS=-buildvcs=false GOWORK=off

t=$SECONDS
log "downloading github.com/cri-o/cri-o@$CRIO_VERSION"
json=$(cd / && go mod download -json "github.com/cri-o/cri-o@$CRIO_VERSION") ||
	die "go mod download github.com/cri-o/cri-o@$CRIO_VERSION failed: $json"
src=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -f "$src/go.mod" ] || die "no module directory in: $json"
log "downloaded in $((SECONDS - t)) s: $src"

mkdir -p "$DIR/bin" || die "create $DIR/bin failed"
rm -f "$DIR/bin/.stamp"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

t=$SECONDS
log "building crio (tags: $CRIO_TAGS); the first build compiles ~1500 packages"
# The module cache is read-only, which go build does not mind: it writes
# only to the build cache and -o. Its own dependencies download here.
(cd "$src" && go build -trimpath -tags "$CRIO_TAGS" -o "$work/crio" ./cmd/crio) || die "build crio failed"
log "crio built in $((SECONDS - t)) s"

t=$SECONDS
cp -r "$src/pinns" "$work/pinns" && chmod -R u+w "$work/pinns" || die "copy pinns source failed"
make -s -C "$work/pinns" >/dev/null || die "build pinns failed (needs gcc, make and libc6-dev for -static)"
log "pinns built in $((SECONDS - t)) s"

install -m 0755 "$work/crio" "$DIR/bin/crio" && install -m 0755 "$work/bin/pinns" "$DIR/bin/pinns" ||
	die "install into $DIR/bin failed"
echo "$STAMP" >"$DIR/bin/.stamp"
"$DIR/bin/crio" --version | head -1
log "ready in $((SECONDS - t_all)) s (CRI-O in $DIR/bin)"
