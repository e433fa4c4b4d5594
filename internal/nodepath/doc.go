// Package nodepath gives a node network namespace the normal path a real
// K3s or containerd edge node has between its uplink and its pods, so that
// benchmarks compare Patu's XDP path against that rather than against a
// bare routed path:
//
//   - bridge netfilter: net.bridge.bridge-nf-call-iptables and
//     -ip6tables = 1, so frames crossing the pods' bridge walk iptables
//     (br_netfilter; built into some kernels, a module in others);
//   - forwarding on, and route_localnet as kube-proxy and the portmap
//     plugin set it;
//   - conntrack in use: kube-proxy's KUBE-FORWARD chain drops ctstate
//     INVALID and accepts RELATED,ESTABLISHED on every forwarded packet;
//   - the CNI portmap plugin's hostPort chains, in its rule shapes:
//     CNI-HOSTPORT-DNAT (from PREROUTING and OUTPUT for --dst-type LOCAL),
//     one CNI-DN-<hash> chain per pod with the hairpin/localhost SETMARK
//     rules and the DNAT to podIP:containerPort, CNI-HOSTPORT-SETMARK and
//     CNI-HOSTPORT-MASQ;
//   - the bridge plugin's ipMasq chain per pod (CNI-<hash> from POSTROUTING);
//   - kube-proxy's iptables mode for a number of synthetic services:
//     KUBE-SERVICES, KUBE-SVC-* with statistic-mode load balancing,
//     KUBE-SEP-* with DNAT, KUBE-NODEPORTS and KUBE-EXT-* for some of them,
//     KUBE-MARK-MASQ, KUBE-POSTROUTING, KUBE-FORWARD, KUBE-FIREWALL,
//     KUBE-PROXY-FIREWALL and KUBE-EXTERNAL-SERVICES, for IPv4 and IPv6.
//
// Rules are loaded with iptables-restore and ip6tables-restore run in the
// namespace (whichever backend the distribution's `iptables` is: nft on
// Debian 12). Apply returns an undo that restores the tables and sysctls it
// changed; everything it does lives in the namespace and goes away with it.
//
// Global state: br_netfilter's sysctls are per network namespace since
// Linux 5.3, so nothing here changes the root namespace. If the module is
// not loaded, Apply loads it (modprobe) and never unloads it: that would
// pull bridge netfilter from under every other bridge on the machine.
package nodepath
