#!/usr/bin/env bash
# Installs what Patu's real-application suite (internal/apps: test/apps,
# test/bench -only apps) runs on Debian 12, and only what is missing, so CI
# can call it before every run: the applications themselves (HAProxy 2.6,
# nginx 1.22, curl, wget, openbsd netcat, socat, Python 3, Java 17,
# PostgreSQL 15 with pgbench, redis 7, memcached and libmemcached's
# memccp/memccat), conntrack and iptables for the node's netfilter, and
# util-linux (setpriv, nsenter) and iproute2 (ss).
#
# Packages that ship services (nginx, haproxy, postgresql, redis,
# memcached) are not started: apt.sh keeps a policy-rc.d in place while apt
# runs, and the suite starts private instances in its own pods.
set -euo pipefail

pkgs=(
	haproxy nginx curl wget netcat-openbsd socat
	python3 openjdk-17-jre-headless
	postgresql postgresql-contrib redis-server redis-tools memcached libmemcached-tools
	conntrack iptables util-linux iproute2
)
. "$(dirname "$0")/apt.sh"
apt_install_missing apps-deps "${pkgs[@]}"
