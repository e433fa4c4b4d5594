package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/pods"
)

const xdpUsage = `usage: patu xdp attach IFACE [--mode native|generic]
       patu xdp detach IFACE
       patu xdp exclude-port PROTO/PORT     e.g. tcp/22: never on the XDP path
       patu xdp include-port PROTO/PORT

The XDP fast path for traffic entering the node on an uplink: packets for a
registered pod address, or for a hostPort, go straight into the pod's veth.
They skip the bridge, netfilter and conntrack: iptables/nftables rules,
network policy and kube-proxy never see them. Turn it on only for uplinks
where that is what you want; exclude pods with the annotation
patu.io/xdp: "false" and ports with exclude-port. Everything else (ARP/ND,
fragments, IP options, other destinations, the node's own traffic) takes
the normal path. --mode: native (the driver's XDP; the default, falling back
to generic where the driver has none) or generic.
`

func cmdXDP(out io.Writer, pinDir string, args []string) error {
	if len(args) == 0 {
		return usagef("xdp needs attach, detach, exclude-port or include-port")
	}
	sub, args := args[0], args[1:]
	if sub == "-h" || sub == "--help" || sub == "help" {
		fmt.Fprint(out, xdpUsage)
		return nil
	}
	fs := flag.NewFlagSet("xdp "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	mode := fs.String("mode", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, xdpUsage)
			return nil
		}
		return usagef("xdp %s: %v", sub, err)
	}
	if fs.NArg() != 1 {
		return usagef("xdp %s takes one argument, got %q", sub, fs.Args())
	}
	arg := fs.Arg(0)
	if *mode != "" && sub != "attach" {
		return usagef("xdp %s: --mode is for attach", sub)
	}
	var m bpf.XDPMode
	switch *mode {
	case "":
	case string(bpf.XDPNative), string(bpf.XDPGeneric):
		m = bpf.XDPMode(*mode)
	default:
		return usagef("xdp attach: --mode %q: want native or generic", *mode)
	}
	var pk bpf.PortKey
	if sub == "exclude-port" || sub == "include-port" {
		var err error
		if pk, err = parsePortKey(arg); err != nil {
			return usagef("xdp %s: %v", sub, err)
		}
	}
	d, err := bpf.Open(pinDir)
	if errors.Is(err, bpf.ErrNotLoaded) && sub == "detach" {
		fmt.Fprintf(out, "patu is not loaded: nothing attached to %s\n", arg)
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	switch sub {
	case "attach":
		got, err := attachXDP(d, arg, m)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "xdp attached to %s (%s mode); traffic it redirects bypasses netfilter\n", arg, got)
		return nil
	case "detach":
		if err := detachXDP(d, arg); err != nil {
			return err
		}
		fmt.Fprintf(out, "xdp detached from %s\n", arg)
		return nil
	case "exclude-port":
		return d.ExcludePort(pk.Proto, pk.Port)
	case "include-port":
		return d.IncludePort(pk.Proto, pk.Port)
	}
	return usagef("xdp: unknown subcommand %q", sub)
}

// attachXDP attaches the uplink program and readies the recorded pods for
// it (reply programs, GRO on their veths).
func attachXDP(d *bpf.Datapath, iface string, mode bpf.XDPMode) (bpf.XDPMode, error) {
	got, err := d.AttachXDP(iface, mode)
	if err != nil {
		return "", err
	}
	if err := pods.SyncXDP(d); err != nil {
		// The uplink works for the pods that are ready; the others stay
		// on the normal path until a later sync.
		slog.Warn("xdp: some pods are not ready for it", "error", err)
	}
	return got, nil
}

// detachXDP detaches the uplink program and, with the last uplink, the
// reply programs of the pods.
func detachXDP(d *bpf.Datapath, iface string) error {
	if err := d.DetachXDP(iface); err != nil {
		return err
	}
	return pods.SyncXDP(d)
}

// parsePortKey parses PROTO/PORT (tcp/22, udp/53).
func parsePortKey(s string) (bpf.PortKey, error) {
	proto, port, ok := strings.Cut(s, "/")
	if !ok {
		return bpf.PortKey{}, fmt.Errorf("%q: want PROTO/PORT, e.g. tcp/22", s)
	}
	var k bpf.PortKey
	switch strings.ToLower(proto) {
	case "tcp":
		k.Proto = 6
	case "udp":
		k.Proto = 17
	default:
		return k, fmt.Errorf("%q: protocol must be tcp or udp", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return k, fmt.Errorf("%q: port must be 1-65535", s)
	}
	k.Port = uint16(n)
	return k, nil
}

// protoName names an IP protocol number of the XDP path.
func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

func xdpStatus(d *bpf.Datapath) (XDPStatus, error) {
	var (
		x   XDPStatus
		err error
	)
	if x.Uplinks, err = d.XDPUplinks(); err != nil {
		return x, err
	}
	if x.Routes, err = d.XDPRoutes(); err != nil {
		return x, err
	}
	if x.HostPorts, err = d.HostPorts(); err != nil {
		return x, err
	}
	if x.ExcludedPorts, err = d.ExcludedPorts(); err != nil {
		return x, err
	}
	if x.Flows, err = d.FlowCount(); err != nil {
		return x, err
	}
	x.Counters, err = d.XDPCounters()
	return x, err
}

// writeXDP prints the XDP part of patu status.
func writeXDP(out io.Writer, x XDPStatus) {
	fmt.Fprintln(out, "\nxdp fast path (uplink → pod):")
	if len(x.Uplinks) == 0 {
		fmt.Fprintln(out, "  off: no uplink attached (patu xdp attach IFACE, or patu daemon --xdp-iface)")
		return
	}
	for _, u := range x.Uplinks {
		fmt.Fprintf(out, "  on %s (ifindex %d, %s mode)\n", u.Name, u.Ifindex, u.Mode)
	}
	fmt.Fprintln(out, "  NOTE: what it redirects bypasses netfilter (iptables/nftables, network policy, kube-proxy)")
	excluded := 0
	for _, r := range x.Routes {
		if r.Excluded {
			excluded++
		}
	}
	fmt.Fprintf(out, "  pod routes %d (%d excluded), hostPorts %d, live flows %d\n", len(x.Routes), excluded, len(x.HostPorts), x.Flows)
	for _, h := range x.HostPorts {
		host := "*"
		if h.HostIP.IsValid() && !h.HostIP.IsUnspecified() {
			host = h.HostIP.String()
		}
		fmt.Fprintf(out, "    %s:%d/%s → %s\n", host, h.HostPort, protoName(h.Proto), netipPort(h.PodIP, h.PodPort))
	}
	if len(x.ExcludedPorts) > 0 {
		var ps []string
		for _, p := range x.ExcludedPorts {
			ps = append(ps, fmt.Sprintf("%s/%d", protoName(p.Proto), p.Port))
		}
		fmt.Fprintf(out, "  excluded ports: %s\n", strings.Join(ps, " "))
	}
	c := x.Counters
	fmt.Fprintf(out, "  redirected to pods %d, to hostPorts %d, redirect errors %d\n", c.RedirectPod, c.RedirectHostPort, c.RedirectError)
	fmt.Fprintf(out, "  replies: translated %d, redirected %d, passed %d\n", c.ReplyNAT, c.ReplyRedirect, c.ReplyPass)
	reasons := make([]string, 0, len(c.Pass))
	for r := range c.Pass {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(out, "  passed to the normal path: %s %d\n", strings.ReplaceAll(r, "_", " "), c.Pass[r])
	}
}

func netipPort(ip netip.Addr, port uint16) string { return netip.AddrPortFrom(ip, port).String() }
