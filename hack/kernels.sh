#!/usr/bin/env bash
# The kernel matrix: boots Debian's kernels in QEMU (TCG: this VM has no
# /dev/kvm) and runs Patu's privileged tests inside each, then the same
# selection on the host's own kernel, and prints one line per kernel:
#
#   kernel 6.1.0-57-amd64: N passed, M failed, K skipped (reasons)
#
# usage: hack/kernels.sh [amd64|arm64]        (as root; make kernels / kernels-arm64)
#
# The kernels come from Debian's apt (bookworm: 6.1; bookworm-backports:
# 6.12; arm64: bookworm's 6.1) through a private apt state, fetched with
# apt-get download and unpacked with dpkg-deb -x into the cache, never into
# the tree. A guest is an initramfs of busybox-static (this script's
# hack/kernels/init) that mounts the host's / read-only over 9p and runs
# the test binaries built here (go test -c, static) in a chroot of it: the
# guest sees the host's tools (ip, iptables, conntrack) and its kernel's
# own modules, nothing else is installed. Guests are killed and their
# scratch removed on any exit.
#
# Environment: KX_CACHE (default $PATU_TOOLS/kernels, /var/cache/patu-e2e/kernels), KX_TIMEOUT
# (s per guest, default 900), KX_REFRESH=1 (look for newer kernels with apt),
# KX_HOST=0 (skip the host's line), KX_ONLY=6.1 (only kernels whose release
# starts so), KX_RUNLIST=file (another run list; @BIN@ is the binaries' dir),
# KX_FETCH_ONLY=1 (download and unpack the kernels, run nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
ARCH=${1:-amd64}
CACHE=${KX_CACHE:-${PATU_TOOLS:-/var/cache/patu-e2e}/kernels}
TIMEOUT=${KX_TIMEOUT:-900}
REPO=$PWD

case $ARCH in
amd64) SUITES=(bookworm bookworm-backports) QEMU=qemu-system-x86_64 GOARCH_=amd64 ;;
arm64) SUITES=(bookworm) QEMU=qemu-system-aarch64 GOARCH_=arm64 ;;
*)
	echo "kernels: unknown arch $ARCH (amd64 or arm64)" >&2
	exit 2
	;;
esac

[ "$(id -u)" = 0 ] || {
	echo "kernels: needs root (apt, 9p shares, the host's privileged tests)" >&2
	exit 1
}

need() {
	local pkgs=()
	command -v "$QEMU" >/dev/null || pkgs+=("$([ "$ARCH" = amd64 ] && echo qemu-system-x86 || echo qemu-system-arm)")
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || pkgs+=(busybox-static)
	command -v cpio >/dev/null || pkgs+=(cpio)
	command -v file >/dev/null || pkgs+=(file)
	# A kernel package's modules: unpacked, then indexed here (its postinst
	# is never run).
	command -v depmod >/dev/null || pkgs+=(kmod)
	command -v unxz >/dev/null || pkgs+=(xz-utils)
	command -v zstd >/dev/null || pkgs+=(zstd)
	if [ ${#pkgs[@]} -gt 0 ]; then
		echo "kernels: installing ${pkgs[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
	fi
}

# A private apt: Debian's archive, bookworm with backports, for $ARCH, its
# state under the cache so the host's apt is not touched.
APT_DIR=$CACHE/apt$([ "$ARCH" = amd64 ] || echo "-$ARCH")
apt_opts=(-o "Dir::State=$APT_DIR" -o "Dir::State::status=$APT_DIR/status" -o "Dir::Cache=$APT_DIR/cache"
	-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=$APT_DIR/sources.list.d"
	-o "Dir::Etc::Preferences=$APT_DIR/preferences" -o "Dir::Etc::PreferencesParts=$APT_DIR/preferences.d"
	-o "APT::Architecture=$ARCH" -o "APT::Architectures=$ARCH" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt_setup() {
	mkdir -p "$APT_DIR"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
	touch "$APT_DIR/status"
	local k=/usr/share/keyrings/debian-archive-keyring.gpg
	cat >"$APT_DIR/sources.list" <<-EOF
		deb [signed-by=$k] http://deb.debian.org/debian bookworm main
		deb [signed-by=$k] http://deb.debian.org/debian-security bookworm-security main
		deb [signed-by=$k] http://deb.debian.org/debian bookworm-backports main
	EOF
	if [ ! -e "$APT_DIR/updated" ] || [ "${KX_REFRESH:-0}" = 1 ]; then
		apt-get "${apt_opts[@]}" update -qq
		touch "$APT_DIR/updated"
	fi
}

# resolve SUITE: the deb file name (without .deb) of the kernel that
# Debian's linux-image-$ARCH meta-package points to in SUITE. Remembered,
# so a warm run needs no network.
resolve() {
	local suite=$1 memo=$CACHE/resolved-$1-$ARCH pkg ver
	if [ -s "$memo" ] && [ "${KX_REFRESH:-0}" != 1 ] && [ -e "$CACHE/$(cat "$memo")/.kx-ready" ]; then
		cat "$memo"
		return
	fi
	apt_setup
	# bookworm's candidate comes from main or security, whichever is newer;
	# backports only when asked for.
	local t=()
	[ "$suite" = bookworm ] || t=(-t "$suite")
	pkg=$(apt-cache "${apt_opts[@]}" "${t[@]}" depends "linux-image-$ARCH" |
		awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	[ -n "$pkg" ] || {
		echo "kernels: no kernel behind linux-image-$ARCH in $suite" >&2
		return 1
	}
	ver=$(apt-cache "${apt_opts[@]}" "${t[@]}" policy "$pkg" | awk '/Candidate:/ {print $2}')
	echo "${pkg}_${ver//:/%3a}_$ARCH" >"$memo"
	cat "$memo"
}

# fetch NAME: the unpacked kernel package in $CACHE/NAME, modules
# decompressed (busybox modprobe reads plain .ko) and depmod run on them.
fetch() {
	local name=$1 dir=$CACHE/$1
	[ -e "$dir/.kx-ready" ] && return
	if [ ! -d "$dir/boot" ]; then
		local pkg=${name%%_*} ver=${name#*_}
		ver=${ver%_*}
		mkdir -p "$CACHE/debs"
		echo "kernels: downloading $pkg $ver"
		(cd "$CACHE/debs" && apt-get "${apt_opts[@]}" download -qq "$pkg=${ver//%3a/:}")
		rm -rf "$dir.partial"
		dpkg-deb -x "$CACHE/debs/$name.deb" "$dir.partial"
		mv "$dir.partial" "$dir"
		rm -f "$CACHE/debs/$name.deb"
	fi
	local mods
	mods=$(echo "$dir"/lib/modules/*)
	find "$mods" -name '*.ko.xz' -print0 | xargs -0 -r -P "$(nproc)" -n 64 unxz -f
	find "$mods" -name '*.ko.zst' -print0 | xargs -0 -r -P "$(nproc)" -n 64 zstd -q -d --rm
	# The package leaves modules.dep to its postinst: make it here.
	depmod -b "$dir" "$(basename "$mods")"
	touch "$dir/.kx-ready"
}

# busybox_for_guest: a static busybox of $ARCH: the host's, or for another
# architecture Debian's busybox-static of it, unpacked into the cache.
busybox_for_guest() {
	if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
		echo /bin/busybox
		return
	fi
	local dir=$CACHE/busybox-$ARCH
	if [ ! -x "$dir/bin/busybox" ]; then
		apt_setup
		mkdir -p "$CACHE/debs"
		(cd "$CACHE/debs" && rm -f busybox-static_*_"$ARCH".deb && apt-get "${apt_opts[@]}" download -qq "busybox-static:$ARCH")
		rm -rf "$dir" && dpkg-deb -x "$CACHE"/debs/busybox-static_*_"$ARCH".deb "$dir"
		rm -f "$CACHE"/debs/busybox-static_*_"$ARCH".deb
	fi
	echo "$dir/bin/busybox"
}

# guest_root: the tree a guest chroots into, shared read-only. For the
# host's architecture the host's / (its ip, iptables, conntrack); for
# another one a tree of that architecture's busybox and the test binaries
# (static), so tests that need the node's tools are left out there.
guest_root() {
	if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
		echo /
		return
	fi
	local root=$RUN/root-$ARCH bb a
	if [ ! -d "$root" ]; then
		bb=$(busybox_for_guest)
		mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,var/tmp,etc} "$root$RUN"
		cp "$bb" "$root/bin/busybox"
		for a in $("$(busybox_for_host)" --list); do [ "$a" = busybox ] || ln -sf /bin/busybox "$root/bin/$a"; done
		ln -sf /bin/busybox "$root/usr/bin/env"
		cp -r "$RUN/bin" "$root$RUN/bin"
	fi
	echo "$root"
}

# busybox_for_host lists applets: the host's busybox can name them for any.
busybox_for_host() { echo /bin/busybox; }

RUN=
QPIDS=()
cleanup() {
	local p
	# QPIDS are timeout(1)'s: QEMU is its child.
	for p in "${QPIDS[@]}"; do
		pkill -9 -P "$p" 2>/dev/null || true
		kill -9 "$p" 2>/dev/null || true
	done
	[ -n "$RUN" ] && rm -rf "$RUN"
	if [ "${KX_HOST:-1}" != 0 ]; then
		local d
		for d in /sys/fs/bpf/patu-kx* /sys/fs/bpf/patu-it-kx*; do
			if [ -e "$d" ]; then rm -rf "$d"; fi
		done
	fi
}
# An EXIT trap's last status becomes the script's: keep the run's own.
trap 'st=$?; cleanup; exit $st' EXIT
trap 'exit 130' INT TERM

# What runs in each guest, and on the host: name, binary, go test flags.
# TCG runs a guest ~20-50x slower than the host, so this is the subset that
# proves load/attach/upgrade/unload, both tc attach modes, the packet path
# (IPv4 and IPv6, short connections, half-close and RST, late peer, splice,
# load/unload during a stream, conntrack upkeep, Services on iptables and
# IPVS) and the socket path where the kernel has it (stalled reader).
# Left out: XDP uplinks (TestXDP*), BIG TCP, MPTCP, the other packages'
# privileged tests, the e2e tier (runtimes) and benchmarks, and the bridge
# path's subtests (-test.skip): they run no Patu code, only show that the
# test's traffic works without Patu (the privileged tier shows that here);
# TestLatePeer, whose late peer is a test hook's delay of the opt-in
# socket path's records, not something a kernel changes (41 s on 6.12);
# and the 2000 short connections on the socket path (34 s on 6.12): the
# packet path's run them on every amd64 kernel, the socket path's on
# the host.
# Guests run one after the other: two side by side took longer than in
# turn (TCG's threads contend; one guest's short-connection test ran 3x
# slower).
write_runlist() {
	if [ -n "${KX_RUNLIST:-}" ]; then
		sed "s#@BIN@#$RUN/bin#g" "$KX_RUNLIST" >"$1"
		return
	fi
	if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
		# No iptables or conntrack tool in that guest: no Services or
		# conntrack cases. What another architecture can get wrong is the
		# programs' loading and JIT, which one of each kind of traffic
		# shows: the 2000 short connections (and the late peer, a socket
		# path case, off on 6.1) are left to amd64.
		cat >"$1" <<-EOF
			bpf $RUN/bin/bpf.test -test.run ^(TestFeatures|TestRedirectCharged)$ -test.timeout 10m
			integration $RUN/bin/integration.test -test.run ^(TestRedirect|TestRedirectLegacyTC|TestCloseSemantics|TestSplice|TestLifecycleDuringStream)$ -test.skip /^bridge$ -test.timeout 12m
		EOF
		return
	fi
	cat >"$1" <<-EOF
		bpf $RUN/bin/bpf.test -test.run ^(TestFeatures|TestLoadIsIdempotentAndUpgradesInPlace|TestRedirectCharged)$ -test.timeout 10m
		integration $RUN/bin/integration.test -test.run ^(TestRedirect|TestRedirectLegacyTC|TestCloseSemantics|TestSplice|TestLifecycleDuringStream|TestStalledReader|TestConntrack|TestServices|TestServicesIPVS)$ -test.skip /^bridge$ -test.timeout 12m
		short $RUN/bin/integration.test -test.run ^TestShortConnections$/^packet$ -test.timeout 12m
	EOF
}

build() {
	mkdir -p "$RUN/bin"
	local env=(CGO_ENABLED=0 GOOS=linux GOARCH=$GOARCH_)
	env "${env[@]}" go test -c -trimpath -o "$RUN/bin/bpf.test" ./bpf
	env "${env[@]}" go test -c -trimpath -o "$RUN/bin/integration.test" ./test/integration
	env "${env[@]}" go build -trimpath -o "$RUN/bin/patu-testpeer" ./test/peer
	go build -o "$RUN/bin/summarize" ./hack/kernels/summarize
}

# deps MODDIR MOD...: the module files (relative to MODDIR) that MODs need,
# in load order, from modules.dep (built-ins are not in it).
deps() {
	local dir=$1
	shift
	local m line
	for m in "$@"; do
		line=$(grep -E "(^|/)$m\.ko:" "$dir/modules.dep" || true)
		[ -n "$line" ] || continue
		# modules.dep lists a module's dependencies so that the last
		# one loads first.
		echo "${line#*:}" | tr ' ' '\n' | grep . | tac
		echo "${line%%:*}"
	done | awk '!seen[$0]++'
}

initramfs() { # kdir out
	local kdir=$1 out=$2 root mods
	root=$(mktemp -d "$RUN/initrd.XXXX")
	mods=$(echo "$kdir"/lib/modules/*)
	mkdir -p "$root"/{bin,sbin,proc,sys,dev,boot-mods,lib/modules}
	cp "$(busybox_for_guest)" "$root/bin/busybox"
	local a
	for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
	for a in modprobe insmod poweroff; do ln -sf ../bin/busybox "$root/sbin/$a"; done
	cp "$REPO/hack/kernels/init" "$root/init"
	echo "$RUN/$(basename "$out" .cpio.gz)" >"$root/scratch"
	local f
	: >"$root/boot-modules"
	for f in $(deps "$mods" virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio netfs fscache 9pnet 9pnet_virtio 9p); do
		cp "$mods/$f" "$root/boot-mods/"
		basename "$f" >>"$root/boot-modules"
	done
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
	rm -rf "$root"
}

# The modules the tests need that the kernel does not request itself.
GUEST_MODULES="veth bridge br_netfilter nf_conntrack nf_conntrack_netlink nf_nat sch_ingress cls_bpf
	nf_tables nft_compat nft_chain_nat nft_ct ip_tables iptable_filter iptable_nat ip6_tables ip6table_filter ip6table_nat
	xt_conntrack xt_comment xt_mark xt_nat xt_MASQUERADE xt_multiport xt_statistic xt_addrtype xt_tcpudp
	dummy ip_vs ip_vs_rr"

# guest NAME: boots kernel package NAME and runs the run list in it.
guest() {
	local name=$1 kdir=$CACHE/$1 kver scratch t0 root
	kver=$(basename "$(echo "$kdir"/lib/modules/*)")
	scratch=$RUN/$kver
	root=$(guest_root)
	mkdir -p "$scratch/out" "$root$scratch/out"
	write_runlist "$root$scratch/run.list"
	echo "$GUEST_MODULES" | tr -s ' \t\n' '\n' | grep . >"$root$scratch/modules"
	initramfs "$kdir" "$scratch.cpio.gz"
	# A soft lockup panics the guest (and ends QEMU at once) instead of
	# holding the run until the timeout.
	local qemu_args=(-nographic -no-reboot -m 2048 -smp 2 -nic none
		-kernel "$kdir/boot/vmlinuz-$kver" -initrd "$scratch.cpio.gz"
		-virtfs "local,path=$root,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
		-virtfs "local,path=$kdir/lib/modules/$kver,mount_tag=mods,security_model=none,readonly=on"
		-virtfs "local,path=$scratch/out,mount_tag=out,security_model=none")
	if [ "$ARCH" = amd64 ]; then
		qemu_args+=(-machine q35 -accel tcg,thread=multi -cpu max -append "console=ttyS0 panic=-1 softlockup_panic=1 quiet")
	else
		# pauth-impdef: TCG's architected pointer auth is very slow.
		qemu_args+=(-machine virt -accel tcg,thread=multi -cpu max,pauth-impdef=on -append "console=ttyAMA0 panic=-1 softlockup_panic=1 quiet")
	fi
	t0=$SECONDS
	echo "kernels: booting $kver ($QEMU, TCG)"
	timeout -k 10 "$TIMEOUT" "$QEMU" "${qemu_args[@]}" </dev/null >"$scratch/console.log" 2>&1 &
	QPIDS+=($!)
	wait $! || true
	grep -a 'kx-guest:' "$scratch/console.log" | sed 's/^/  /' || true
	[ -e "$scratch/out/done" ] || {
		echo "  guest did not finish in ${TIMEOUT} s; console tail:"
		tail -n 20 "$scratch/console.log" | sed 's/^/    /'
	}
	summarize "$kver" "$scratch/out" $((SECONDS - t0)) "QEMU/TCG $ARCH"
}

# summarize KVER OUTDIR SECONDS WHERE: one line for a kernel from the test
# logs (hack/kernels/summarize).
summarize() {
	local kver=$1 out=$2 took=$3 where=$4 log line
	for log in "$out"/*.log; do
		[ -e "$log" ] || continue
		[ "$(basename "$log")" = modprobe.log ] && continue
		go tool test2json -t <"$log" >"${log%.log}.json"
	done
	# The last run's logs stay for a look (the features each kernel has
	# are in bpf.log); the rest of the scratch goes.
	mkdir -p "$CACHE/last-run"
	rm -rf "$CACHE/last-run/$kver"
	cp -r "$out" "$CACHE/last-run/$kver"
	if line=$("$RUN/bin/summarize" -kernel "$kver" -where "$where, ${took} s" "$out"); then
		LINES+=("$line")
	else
		LINES+=("$line")
		STATUS=1
		echo "kernels: $kver failed; its logs are kept in $CACHE/last-run/$kver"
	fi
}

STATUS=0
LINES=()
t_all=$SECONDS
need
mkdir -p "$CACHE"
RUN=$(mktemp -d "$CACHE/run.XXXX")
chmod 755 "$RUN"
if [ "${KX_FETCH_ONLY:-0}" != 1 ]; then
	echo "kernels: building the test binaries (linux/$GOARCH_, static)"
	build
fi
for suite in "${SUITES[@]}"; do
	name=$(resolve "$suite")
	[ -z "${KX_ONLY:-}" ] || [[ $name == linux-image-$KX_ONLY[.-]* ]] || continue
	fetch "$name"
	[ "${KX_FETCH_ONLY:-0}" = 1 ] && continue
	guest "$name"
done
if [ "${KX_HOST:-1}" != 0 ] && [ "${KX_FETCH_ONLY:-0}" != 1 ] && [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
	hout=$RUN/host/out
	mkdir -p "$hout"
	write_runlist "$RUN/host/run.list"
	t0=$SECONDS
	echo "kernels: the host's kernel $(uname -r)"
	while read -r name bin args; do
		# Own names on the shared host: test topologies, pins and cgroups
		# carry the kx prefix.
		rc=0
		PATU_TEST_PREFIX=kx PATU_TESTPEER=$RUN/bin/patu-testpeer "$bin" -test.v=test2json -test.count=1 $args >"$hout/$name.log" 2>&1 || rc=$?
		echo $rc >"$hout/$name.exit"
	done <"$RUN/host/run.list"
	summarize "$(uname -r)" "$hout" $((SECONDS - t0)) "host"
fi
echo
echo "kernel matrix ($ARCH; this machine: $(nproc) CPUs, $((SECONDS - t_all)) s):"
printf '%s\n' "${LINES[@]}"
exit $STATUS
