package bpf

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/patu-dev/patu/internal/testnet"
)

// testPinDir is this package's own pin directory, apart from the default
// one and from other packages' tests.
const testPinDir = "/sys/fs/bpf/patu-test-bpf"

func sockopsLinkProg(t *testing.T, d *Datapath, id uint64) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(d.cgroupPin(id), nil)
	if err != nil {
		t.Fatalf("open cgroup link: %v", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Program
}

// TestLoadIsIdempotentAndUpgradesInPlace: loading again reuses the pinned
// maps and state (no EBUSY), moves attached cgroups to the new program and
// keeps endpoints; attach and detach are idempotent; unload removes every
// pin.
func TestLoadIsIdempotentAndUpgradesInPlace(t *testing.T) {
	testnet.Privileged(t)
	if f := ProbeFeatures(ProbeOptions{SkipRedirectCharged: true}).Get(FeatureSocketPath); !f.On {
		t.Skipf("cgroup attachments serve the socket path, off on this kernel: %s", f.Reason)
	}
	Unload(testPinDir)
	t.Cleanup(func() { Unload(testPinDir) })
	cg := testnet.Cgroup(t, "patu-test-bpf")

	d, err := Load(Options{PinDir: testPinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ip := netip.MustParseAddr("10.201.99.2")
	if err := d.AddEndpoint(Endpoint{IP: ip, Name: "ns/pod"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := d.Attach(cg); err != nil {
			t.Fatalf("attach #%d: %v", i+1, err)
		}
	}
	atts, err := d.Attachments()
	if err != nil || len(atts) != 1 || atts[0].Path != cg || atts[0].Gone {
		t.Fatalf("attachments = %+v, %v; want just %s", atts, err, cg)
	}
	id := atts[0].CgroupID
	before := sockopsLinkProg(t, d, id)

	d2, err := Load(Options{PinDir: testPinDir, BackpressureShift: 3})
	if err != nil {
		t.Fatalf("load again: %v", err)
	}
	defer d2.Close()
	after := sockopsLinkProg(t, d2, id)
	if after == before {
		t.Errorf("cgroup link still runs program %d after an upgrade", before)
	}
	eps, err := d2.Endpoints()
	if err != nil || len(eps) != 1 || eps[0].IP != ip || eps[0].Name != "ns/pod" {
		t.Errorf("endpoints after reload = %+v, %v", eps, err)
	}

	for i := 0; i < 2; i++ {
		if err := d2.Detach(cg); err != nil {
			t.Fatalf("detach #%d: %v", i+1, err)
		}
	}
	if atts, _ := d2.Attachments(); len(atts) != 0 {
		t.Errorf("attachments after detach = %+v", atts)
	}
	if err := d2.DeleteEndpoint(ip); err != nil {
		t.Fatal(err)
	}
	if err := d2.DeleteEndpoint(ip); !errors.Is(err, ErrEndpointNotFound) {
		t.Errorf("deleting twice: %v, want ErrEndpointNotFound", err)
	}
	res, err := Unload(testPinDir)
	if err != nil || res.LiveSockets != 0 {
		t.Fatalf("unload = %+v, %v", res, err)
	}
	if _, err := os.Stat(testPinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin dir left behind: %v", err)
	}
	if _, err := Open(testPinDir); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("open after unload: %v, want ErrNotLoaded", err)
	}
}

func TestAttachRefusesNonCgroup2(t *testing.T) {
	testnet.Privileged(t)
	Unload(testPinDir)
	t.Cleanup(func() { Unload(testPinDir) })
	d, err := Load(Options{PinDir: testPinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Attach(t.TempDir()); err == nil {
		t.Fatal("attached to a directory that is not a cgroup")
	}
}

// TestLoadAfterCgroupRemoved: a cgroup removed while attached leaves a
// severed link behind; loading again (a daemon restart) must not fail on it.
func TestLoadAfterCgroupRemoved(t *testing.T) {
	testnet.Privileged(t)
	Unload(testPinDir)
	t.Cleanup(func() { Unload(testPinDir) })
	cg := testnet.Cgroup(t, "patu-test-bpf-gone")
	d, err := Load(Options{PinDir: testPinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Attach(cg); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	d2, err := Load(Options{PinDir: testPinDir})
	if err != nil {
		t.Fatalf("load with a severed cgroup link: %v", err)
	}
	d2.Close()
	if atts, _ := d.Attachments(); len(atts) != 0 {
		t.Errorf("severed link still pinned: %+v", atts)
	}
}
