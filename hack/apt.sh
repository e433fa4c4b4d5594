# Sourced by the hack/*-deps.sh scripts: installs the Debian packages that
# are missing, and only those, so that every test run can call it cheaply.
#
# apt_install_missing TAG PACKAGE...
#   TAG prefixes the messages. Installing needs root; without it the
#   function names what is missing and how to install it, and fails.
#   Packages that ship services (containerd, podman) must not start them:
#   the tests run private instances, so a policy-rc.d that refuses every
#   start is in place while apt runs, unless the host already has one.
apt_install_missing() {
	local tag=$1
	shift
	local p missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	if [ "$(id -u)" != 0 ]; then
		echo "$tag: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
		return 1
	fi
	echo "$tag: installing Debian packages: ${missing[*]}"
	local t=$SECONDS policy="" rc=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
	fi
	if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
		echo "$tag: apt-get update failed" >&2
		rc=1
	elif ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
		echo "$tag: apt-get install ${missing[*]} failed" >&2
		rc=1
	fi
	[ -z "$policy" ] || rm -f "$policy"
	((rc == 0)) && echo "$tag: Debian packages installed in $((SECONDS - t)) s"
	return $rc
}
