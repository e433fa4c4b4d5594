package bpf

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/patu-dev/patu/internal/testnet"
)

// TestFeatures: every feature off says why; the paths agree with their
// parts; the tcx probe agrees with attaching a tcx program; and Load does
// what the probes say: pods attach with tcx exactly where it is there, and
// the socket path's cgroup attach works exactly where that path is on
// (else ErrSocketPathOff, and the packet path still loads).
func TestFeatures(t *testing.T) {
	testnet.Privileged(t)
	fs := ProbeFeatures(ProbeOptions{})
	t.Logf("kernel features:\n%s", fs)
	for _, f := range fs {
		if !f.On && f.Reason == "" {
			t.Errorf("%s is off without a reason", f.Name)
		}
	}
	tc := (fs.On(FeatureTCX) || fs.On(FeatureTCLegacy)) && fs.On(FeatureRedirectPeer) && fs.On(FeatureBTF)
	if fs.On(FeaturePacketPath) != tc {
		t.Errorf("packet path on = %v, but its parts say %v", fs.On(FeaturePacketPath), tc)
	}
	sock := true
	for _, n := range []string{FeatureBTF, FeatureSockops, FeatureSkMsg, FeatureSockhash, FeatureSkStorage, FeatureRecvTracepoint} {
		sock = sock && fs.On(n)
	}
	if fs.On(FeatureSocketPath) != sock {
		t.Errorf("socket path on = %v, but its parts say %v", fs.On(FeatureSocketPath), sock)
	}
	if f := ProbeFeatures(ProbeOptions{ForceLegacyTC: true, SkipRedirectCharged: true}); f.On(FeatureTCX) {
		t.Error("tcx on although legacy tc was forced")
	}

	n, err := testnet.New(testnet.Config{Prefix: "kxf", Pods: 1,
		Subnet4: netip.MustParsePrefix("10.230.1.0/24"), Subnet6: netip.MustParsePrefix("fd00:230::/64")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var tcxErr error
	err = n.Node.Do(func() error {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
		if err != nil {
			return err
		}
		defer p.Close()
		l, err := link.AttachTCX(link.TCXOptions{Interface: 1, Program: p, Attach: ebpf.AttachTCXIngress})
		tcxErr = err
		if err == nil {
			l.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if (tcxErr == nil) != fs.On(FeatureTCX) {
		t.Errorf("tcx probe says %v, attaching a tcx program: %v", fs.On(FeatureTCX), tcxErr)
	}

	const pin = "/sys/fs/bpf/patu-kx-features"
	Unload(pin)
	t.Cleanup(func() { Unload(pin) })
	d, err := Load(Options{PinDir: pin})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer d.Close()
	want := "tc"
	if fs.On(FeatureTCX) {
		want = "tcx"
	}
	if got := d.PodAttachMode(); got != want {
		t.Errorf("pods attach with %s, want %s", got, want)
	}
	if err := n.Node.Do(func() error { return d.AttachPod(uint32(n.Pods[0].HostIfindex)) }); err != nil {
		t.Fatalf("attach pod: %v", err)
	}
	var attached bool
	n.Node.Do(func() error { attached = d.PodAttached(uint32(n.Pods[0].HostIfindex)); return nil })
	if !attached {
		t.Error("pod program not attached after AttachPod")
	}
	cg := testnet.Cgroup(t, "patu-kx-features")
	err = d.Attach(cg)
	switch {
	case fs.On(FeatureSocketPath) && err != nil:
		t.Errorf("socket path on, attach sockops: %v", err)
	case !fs.On(FeatureSocketPath) && !errors.Is(err, ErrSocketPathOff):
		t.Errorf("socket path off, attach sockops: %v, want ErrSocketPathOff", err)
	}
	if fs.On(FeatureSocketPath) {
		if err := d.Detach(cg); err != nil {
			t.Error(err)
		}
	}
}
