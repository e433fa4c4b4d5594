package bpf

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/patu-dev/patu/internal/testnet"
)

// TestHostPortBitsUnderConcurrentWriters: CNI plugins of pods starting
// together add hostPorts from separate processes at once. The bits that
// let the XDP program skip the hostPort lookup for other ports must end
// up covering every mapping, even when all of them share one 64-port word.
func TestHostPortBitsUnderConcurrentWriters(t *testing.T) {
	testnet.Privileged(t)
	const pinDir = "/sys/fs/bpf/patu-test-xdp-ports"
	Unload(pinDir)
	d, err := Load(Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); Unload(pinDir) })

	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			// Each its own handle, as each plugin process has.
			o, err := Open(pinDir)
			if err != nil {
				errs <- err
				return
			}
			defer o.Close()
			ip := netip.AddrFrom4([4]byte{10, 209, 0, byte(2 + i)})
			errs <- o.PutHostPort(HostPort{Proto: 6, HostPort: uint16(30000 + i), PodIP: ip, PodPort: 80})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	idx, _, _ := portWord(xdpPortKindPORTS_HOSTPORT, 6, 30000)
	var w uint64
	if err := d.xdp.ports.Lookup(idx, &w); err != nil {
		t.Fatal(err)
	}
	for i := range writers {
		if _, bit, _ := portWord(xdpPortKindPORTS_HOSTPORT, 6, uint16(30000+i)); w&bit == 0 {
			t.Errorf("hostPort %d has a mapping but no bit (word %#x)", 30000+i, w)
		}
	}
	// Removing them clears the bits again.
	for i := range writers {
		ip := netip.AddrFrom4([4]byte{10, 209, 0, byte(2 + i)})
		if err := d.DeleteHostPort(HostPort{Proto: 6, HostPort: uint16(30000 + i), PodIP: ip}); err != nil {
			t.Fatal(fmt.Errorf("delete %d: %w", 30000+i, err))
		}
	}
	if err := d.xdp.ports.Lookup(idx, &w); err != nil || w != 0 {
		t.Errorf("after deleting every mapping, word %#x (%v)", w, err)
	}
}
