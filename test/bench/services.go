package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/internal/testnet"
)

// The services section: the two pods on a node path as kube-proxy (iptables
// mode) writes it, the client dialing a ClusterIP. Patu is told nothing of
// the Services: it matches the two ends after kube-proxy's DNAT. A second
// Service has its backend on another node (the uplink's far end), which
// Patu must leave alone at no measurable cost.
const servicesPrefix = "bns"

var (
	servicesSubnet4 = netip.MustParsePrefix("10.201.241.0/24")
	servicesSubnet6 = netip.MustParsePrefix("fd00:201:241::/64")
)

// servicesConfig is the node path in front of the services section's pods.
type servicesConfig struct {
	uplink4, uplink6 netip.Prefix
	// local4 is the ClusterIP whose backend is the server pod, remote4 the
	// one whose backend is on the other node. Both take any port and keep
	// it, so the tools can use a fresh port each run.
	local4, remote4 netip.Addr
}

func defaultServices() *servicesConfig {
	return &servicesConfig{
		uplink4: netip.MustParsePrefix("10.201.242.0/24"), uplink6: netip.MustParsePrefix("fd00:201:242::/64"),
		local4: netip.MustParseAddr("10.201.243.10"), remote4: netip.MustParseAddr("10.201.243.20"),
	}
}

// apply writes kube-proxy's and the bridge plugin's rules into the node:
// bridge netfilter, conntrack with kube-proxy's INVALID drop, 200 synthetic
// Services per family and the two the section dials.
func (sc *servicesConfig) apply(nt *testnet.Net) (func() error, error) {
	srv, ext := nt.Pods[1], nt.Ext
	undo, err := nodepath.Apply(nt.Node.NetnsPath, nodepath.Config{Bridge: nt.Bridge,
		PodSubnet4: servicesSubnet4, PodSubnet6: servicesSubnet6,
		ServiceCIDR4: netip.MustParsePrefix("10.201.244.0/22"), ServiceCIDR6: netip.MustParsePrefix("fd00:201:244::/112"),
		RemotePods4: netip.MustParsePrefix("10.201.248.0/22"), RemotePods6: netip.MustParsePrefix("fd00:201:248::/112"),
		Services: 200,
		Extra: []nodepath.Service{
			{Name: "bench/local:any", ClusterIP: sc.local4, Endpoints: []netip.Addr{srv.IPv4}},
			{Name: "bench/remote:any", ClusterIP: sc.remote4, Endpoints: []netip.Addr{ext.IPv4}},
		},
		Pods: []nodepath.Pod{{ID: "bench-client", IPs: []netip.Addr{nt.Pods[0].IPv4, nt.Pods[0].IPv6}},
			{ID: "bench-server", IPs: []netip.Addr{srv.IPv4, srv.IPv6}}},
	})
	if err != nil {
		return nil, fmt.Errorf("node path: %w", err)
	}
	return undo, nil
}

// servicesCells: request/response and bulk through a ClusterIP whose
// backend is on this node, and the same to a backend on another node.
func servicesCells(quick bool) []cell {
	verify := 1 << 30
	if quick {
		verify = 256 << 20
	}
	var out []cell
	for _, v := range []via{viaClusterIP, viaRemote} {
		out = append(out, cell{Kind: kindRR, Size: 64, CPU: -1, Via: v}, cell{Kind: kindRR, Size: 1024, CPU: -1, Via: v},
			cell{Kind: kindBulk, Size: 64 << 10, CPU: -1, Via: v})
	}
	return append(out, cell{Kind: kindVerify, Size: verify, CPU: -1, Via: viaClusterIP})
}

// servicesOut is where the section writes its JSON: beside the main
// report, or the -o file when the section runs alone.
func servicesOut(cfg config) string {
	if cfg.out == "" || cfg.only == "services" {
		return cfg.out
	}
	return strings.TrimSuffix(cfg.out, ".json") + "-services.json"
}

// servicesSection runs the services cells on the bridge (kube-proxy) path
// and on Patu, interleaved as the main comparison is.
func servicesSection(ctx context.Context, w io.Writer, log *slog.Logger, cfg config, peerBin string) (rep report, err error) {
	bn := &bench{log: log, duration: cfg.duration, pinDir: cfg.pinDir + "-services", keepOutput: cfg.keep, peerBin: peerBin,
		prefix: servicesPrefix, subnet4: servicesSubnet4, subnet6: servicesSubnet6, services: defaultServices()}
	defer func() {
		if terr := bn.teardown(); terr != nil {
			log.Error("services cleanup", "error", terr)
		}
	}()
	if err := bn.setupTopology(); err != nil {
		return report{}, fmt.Errorf("services: %w", err)
	}
	fmt.Fprintln(w, "\nServices: the client dials a ClusterIP (kube-proxy iptables rules, bridge netfilter, conntrack); Patu knows no Service")
	rep, err = comparePlan(ctx, w, log, bn, cfg, plan{cells: servicesCells(cfg.quick), paths: []path{pathBridge, pathPatu}, out: servicesOut(cfg)})
	if err != nil {
		return rep, fmt.Errorf("services: %w", err)
	}
	return rep, nil
}

// buildPeer builds patu-testpeer for the verify cells into a temporary
// directory, removed by the returned func.
func buildPeer(ctx context.Context) (string, func(), error) {
	dir, err := os.MkdirTemp("", "patu-bench-peer-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "patu-testpeer")
	if err := goBuild(ctx, bin, "github.com/patu-dev/patu/test/peer"); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build patu-testpeer: %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}
