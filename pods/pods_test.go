package pods

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/testnet"
)

const testPinDir = "/sys/fs/bpf/patu-test-pods"

func TestOptedOut(t *testing.T) {
	for _, tc := range []struct {
		ann  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"patu.io/redirect": "false"}, true},
		{map[string]string{"patu.io/redirect": "true"}, false},
		{map[string]string{"patu.io/redirect": "no"}, false},
	} {
		if got := OptedOut(tc.ann); got != tc.want {
			t.Errorf("OptedOut(%v) = %v, want %v", tc.ann, got, tc.want)
		}
	}
}

func TestMergeKeepsWhatTheNewRecordLacks(t *testing.T) {
	t0 := time.Unix(100, 0)
	old := bpf.Pod{ID: "a", Name: "web", Namespace: "ns", HostIfindex: 7, Cgroups: []uint64{1},
		Source: bpf.PodFromCNI, Created: t0}
	got := merge(old, bpf.Pod{ID: "a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")},
		Cgroups: []uint64{2}, Source: bpf.PodFromRuntime, Confirmed: true, Created: t0.Add(time.Second)})
	if got.Name != "web" || got.HostIfindex != 7 || len(got.IPs) != 1 || !got.Confirmed ||
		got.Source != bpf.PodFromCNI|bpf.PodFromRuntime || !got.Created.Equal(t0) || len(got.Cgroups) != 2 {
		t.Errorf("merge = %+v", got)
	}
}

func load(t *testing.T) *bpf.Datapath {
	t.Helper()
	testnet.Privileged(t)
	bpf.Unload(testPinDir)
	t.Cleanup(func() { bpf.Unload(testPinDir) })
	dp, err := bpf.Load(bpf.Options{PinDir: testPinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// TestRegisterCgroupsUnregister: a pod's record, endpoints and attachments
// come and go together; an address reused by another pod survives the
// removal of the first; unregistering twice is fine.
func TestRegisterCgroupsUnregister(t *testing.T) {
	dp := load(t)
	cg1 := testnet.Cgroup(t, "patu-test-pods-1")
	cg2 := testnet.Cgroup(t, "patu-test-pods-2")
	ip := netip.MustParseAddr("10.205.0.2")
	ip6 := netip.MustParseAddr("fd00:205::2")

	a, err := Register(dp, bpf.Pod{ID: "sandbox-a", Namespace: "ns", Name: "a", IPs: []netip.Addr{ip, ip6},
		Source: bpf.PodFromCNI, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := SetCgroups(dp, a.ID, []string{cg1, cg2}); err != nil {
		t.Fatal(err)
	}
	if n := attached(t, dp); n != 2 {
		t.Fatalf("%d cgroups attached, want 2", n)
	}
	if err := SetCgroups(dp, a.ID, []string{cg2}); err != nil {
		t.Fatal(err)
	}
	if n := attached(t, dp); n != 1 {
		t.Fatalf("%d cgroups attached after dropping one, want 1", n)
	}
	eps, _ := dp.Endpoints()
	if len(eps) != 2 || eps[0].Name != "ns/a" {
		t.Fatalf("endpoints %+v", eps)
	}

	// The address moves to pod b before a's record is cleaned up.
	if _, err := Register(dp, bpf.Pod{ID: "sandbox-b", Name: "b", Namespace: "ns", IPs: []netip.Addr{ip},
		NoRedirect: true, Source: bpf.PodFromRuntime}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		found, err := Unregister(dp, a.ID)
		if err != nil || found != (i == 0) {
			t.Fatalf("unregister #%d: found=%v err=%v", i+1, found, err)
		}
	}
	eps, _ = dp.Endpoints()
	if len(eps) != 1 || eps[0].IP != ip || !eps[0].NoRedirect {
		t.Fatalf("after removing a, endpoints %+v, want only b's %s (opted out)", eps, ip)
	}
	if n := attached(t, dp); n != 0 {
		t.Fatalf("%d cgroups still attached", n)
	}
	if err := SetCgroups(dp, a.ID, []string{cg1}); !errors.Is(err, bpf.ErrPodNotFound) {
		t.Fatalf("SetCgroups on a removed pod: %v", err)
	}
	if n := attached(t, dp); n != 0 {
		t.Fatalf("SetCgroups on a removed pod left %d attachments", n)
	}
}

func attached(t *testing.T, dp *bpf.Datapath) int {
	t.Helper()
	atts, err := dp.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	return len(atts)
}

// TestRegisterNewAddressDropsTheOld: a re-registered pod whose address
// changed leaves no endpoint for its old address.
func TestRegisterNewAddressDropsTheOld(t *testing.T) {
	dp := load(t)
	old, cur := netip.MustParseAddr("10.205.1.2"), netip.MustParseAddr("10.205.1.3")
	for _, ip := range []netip.Addr{old, cur} {
		if _, err := Register(dp, bpf.Pod{ID: "sb", IPs: []netip.Addr{ip}, Source: bpf.PodFromCNI}); err != nil {
			t.Fatal(err)
		}
	}
	eps, _ := dp.Endpoints()
	if len(eps) != 1 || eps[0].IP != cur {
		t.Fatalf("endpoints %+v, want only %s", eps, cur)
	}
}

// TestConcurrentWritersUnderLock: a pod's DEL (patu-cni) and a late
// registration of the same pod (the daemon) race, as they do under churn.
// Each writer holds the pin directory's lock, as every caller does, so
// afterwards the record and its endpoint exist together or not at all: no
// endpoint is left that no record holds. (Without the lock this fails
// within a few hundred rounds on two CPUs.)
func TestConcurrentWritersUnderLock(t *testing.T) {
	dp := load(t)
	ip := netip.MustParseAddr("10.205.1.9")
	pod := bpf.Pod{ID: "sb-race", IPs: []netip.Addr{ip}, Source: bpf.PodFromCNI}
	locked := func(f func() error) error {
		unlock, err := Lock(dp, DefaultLockTimeout)
		if err != nil {
			return err
		}
		defer unlock()
		return f()
	}
	for i := range 300 {
		if _, err := Register(dp, pod); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Add(2)
		go func() {
			defer wg.Done()
			errs[0] = locked(func() error { _, err := Unregister(dp, pod.ID); return err })
		}()
		go func() {
			defer wg.Done()
			p := pod
			p.Source = bpf.PodFromRuntime
			errs[1] = locked(func() error { _, err := Register(dp, p); return err })
		}()
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		_, recErr := dp.LookupPod(pod.ID)
		eps, _ := dp.Endpoints()
		if (recErr == nil) != (len(eps) == 1) {
			t.Fatalf("round %d: record found %v, endpoints %+v: one without the other", i, recErr == nil, eps)
		}
		if _, err := Unregister(dp, pod.ID); err != nil {
			t.Fatal(err)
		}
	}
}
