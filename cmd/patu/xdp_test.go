package main

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/pods"
)

func TestXDPUsage(t *testing.T) {
	for _, args := range [][]string{
		{"xdp"},
		{"xdp", "attach"},
		{"xdp", "attach", "eth0", "--mode", "turbo"},
		{"xdp", "detach", "eth0", "--mode", "native"},
		{"xdp", "exclude-port", "22"},
		{"xdp", "exclude-port", "sctp/22"},
		{"xdp", "include-port", "tcp/0"},
		{"xdp", "frobnicate", "x"},
	} {
		if err := cmdXDP(&bytes.Buffer{}, "/nonexistent", args[1:]); err == nil {
			t.Errorf("%q: no error", args)
		} else if _, ok := err.(usageError); !ok && args[1] != "frobnicate" {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

// TestXDPCommands: `patu xdp attach` on a node's uplink readies the
// recorded pods, status says what it does and that it bypasses netfilter,
// exclude-port shows up, and detach takes the pods' reply programs away.
func TestXDPCommands(t *testing.T) {
	testnet.Privileged(t)
	testnet.Sweep("cxd")
	n, err := testnet.New(testnet.Config{Prefix: "cxd", Pods: 1,
		Subnet4: netip.MustParsePrefix("10.201.70.0/24"), Subnet6: netip.MustParsePrefix("fd00:201:70::/64"),
		Uplink: true, Uplink4: netip.MustParsePrefix("10.201.71.0/24"), Uplink6: netip.MustParsePrefix("fd00:201:71::/64")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	const pin = "/sys/fs/bpf/patu-test-cli-xdp"
	bpf.Unload(pin)
	t.Cleanup(func() { bpf.Unload(pin) })
	// The uplink, the veths and the FIB are the node namespace's.
	patu := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		err := n.Node.Do(func() error { return runTo(context.Background(), &out, append([]string{"--bpffs", pin}, args...)) })
		if err != nil {
			t.Fatalf("patu %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	patu("load")
	dp, err := bpf.Open(pin)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	p := n.Pods[0]
	if err := n.Node.Do(func() error {
		_, err := pods.Register(dp, bpf.Pod{ID: "cli-xdp", Namespace: "ns", Name: "web", Netns: p.NetnsPath,
			IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: uint32(p.HostIfindex), HostMAC: p.HostMAC, PodMAC: p.PodMAC,
			Source: bpf.PodFromCNI, Created: time.Now()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if s := patu("status"); !strings.Contains(s, "off: no uplink attached") {
		t.Errorf("status before attach:\n%s", s)
	}

	if out := patu("xdp", "attach", n.Uplink); !strings.Contains(out, "bypasses netfilter") {
		t.Errorf("attach said %q", out)
	}
	patu("xdp", "exclude-port", "tcp/22")
	s := patu("status")
	for _, want := range []string{"on " + n.Uplink, "mode)", "bypasses netfilter", "pod routes 2 (0 excluded)", "excluded ports: tcp/22"} {
		if !strings.Contains(s, want) {
			t.Errorf("status lacks %q:\n%s", want, s)
		}
	}
	on, err := netns.GROEnabled(p.NetnsPath, p.PodVeth)
	if err != nil || !on {
		t.Errorf("pod's GRO after attach: %v, %v", on, err)
	}
	if err := n.Node.Do(func() error {
		if !dp.PodAttached(uint32(p.HostIfindex)) {
			t.Error("no pod program on the pod's veth after attach")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	patu("xdp", "include-port", "tcp/22")
	patu("xdp", "detach", n.Uplink)
	if s := patu("status"); !strings.Contains(s, "off: no uplink attached") || strings.Contains(s, "excluded ports") {
		t.Errorf("status after detach:\n%s", s)
	}
	if err := n.Node.Do(func() error {
		if !dp.PodAttached(uint32(p.HostIfindex)) {
			t.Error("pod program gone from the pod's veth with the last XDP detach")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if on, err := netns.GROEnabled(p.NetnsPath, p.PodVeth); err != nil || on {
		t.Errorf("pod's GRO after the last detach: %v, %v (want off again)", on, err)
	}
}
