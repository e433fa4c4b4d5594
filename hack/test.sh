#!/usr/bin/env bash
# Runs every test tier of `make test`, one after the other, and prints
# what each took at the end (also when one failed): CI has 90 minutes on a
# 2-core machine, and a cold run (empty Go and tool caches) must stay under
# 60 min, a warm one under 20.
#
#   setup       install missing packages, build the runtimes (cached)
#   static      generated files match their sources; go vet
#   unit        every package, PATU_SKIP_PRIVILEGED=1
#   privileged  real netns, veth, bridge, cgroups and BPF
#   e2e         real runtimes (containerd 1.6/2.x, CRI-O, podman) and programs
#   node        a real Kubernetes node (K3s-shaped, internal/k8slab) with Patu
#               installed by kubectl apply (test/k8s)
#   kernels     the privileged subset on Debian's 6.1, 6.12 (and arm64 6.1) in QEMU
#
# A tier that fails does not stop the later ones (their results are worth
# having), except setup, which they need. TIERS="unit privileged" runs
# only those; GOTESTFLAGS adds flags to every go test.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# Packages with real runtimes and applications; everything else that needs
# root is the privileged tier. Longest first, so that the two go test runs
# at a time end together. (Three at a time were no faster: the time they
# spend off CPU is mostly namespace and veth teardown, which the kernel
# serializes.)
E2E_PKGS=(./test/apps ./test/e2e ./test/podman ./test/crio ./test/demo ./internal/rtlab)
# The Kubernetes node tier.
NODE_PKGS=(./internal/k8slab ./test/k8s)

all_tiers=(setup static unit privileged e2e node kernels)
read -r -a tiers <<<"${TIERS:-${all_tiers[*]}}"
declare -A took status
failed=0
t_all=$SECONDS

privileged_pkgs() {
	local skip
	skip=$(printf '%s\n' "${E2E_PKGS[@]}" "${NODE_PKGS[@]}" | sed 's#^\./#github.com/patu-dev/patu/#')
	go list ./... | grep -vxF "$skip"
}

run_tier() {
	case $1 in
	setup) make --no-print-directory test-deps ;;
	static) make --no-print-directory check-generated && go vet ./... ;;
	unit) PATU_SKIP_PRIVILEGED=1 go test -count=1 ${GOTESTFLAGS:-} ./... ;;
	privileged) go test -count=1 -timeout 20m ${GOTESTFLAGS:-} $(privileged_pkgs) ;;
	e2e) PATU_REQUIRE_CRIO=1 go test -count=1 -timeout 25m ${GOTESTFLAGS:-} "${E2E_PKGS[@]}" ;;
	node) go test -count=1 -p 1 -timeout 30m ${GOTESTFLAGS:-} "${NODE_PKGS[@]}" ;;
	kernels)
		# arm64 too: its guest fits (~2 min warm); a failure of one
		# arch does not skip the other. No host line (KX_HOST=0): the
		# privileged tier ran all of it, and more, on this kernel.
		local rc=0
		KX_HOST=0 hack/kernels.sh amd64 || rc=1
		hack/kernels.sh arm64 || rc=1
		return $rc
		;;
	*)
		echo "test: unknown tier $1 (tiers: ${all_tiers[*]})" >&2
		return 2
		;;
	esac
}

summary() {
	echo
	echo "test tiers (this machine: $(nproc) CPUs):"
	local t
	for t in "${tiers[@]}"; do
		[ -n "${status[$t]:-}" ] || status[$t]="not run"
		printf '  %-11s %-8s %6s s\n' "$t" "${status[$t]}" "${took[$t]:--}"
	done
	printf '  %-11s %-8s %6s s\n' total "$([ $failed = 0 ] && echo ok || echo FAILED)" $((SECONDS - t_all))
}
trap summary EXIT

for t in "${tiers[@]}"; do
	echo "== tier $t"
	t0=$SECONDS
	if run_tier "$t"; then
		status[$t]=ok
	else
		status[$t]=FAILED
		failed=1
	fi
	took[$t]=$((SECONDS - t0))
	echo "== tier $t: ${status[$t]} in ${took[$t]} s"
	if [ "$t" = setup ] && [ "${status[$t]}" != ok ]; then
		break
	fi
done
exit $failed
