package bpf

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/patu-dev/patu/internal/testnet"
)

// TestClearMap: Unload empties the routes of a drained local path with it.
func TestClearMap(t *testing.T) {
	testnet.Privileged(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 20, MaxEntries: 64, Flags: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		var k [16]byte
		k[0] = byte(i)
		if err := m.Put(k, [20]byte{}); err != nil {
			t.Fatal(err)
		}
	}
	clearMap(m)
	n, _ := countKeys(m)
	if n != 0 {
		t.Errorf("%d keys left after clearMap", n)
	}
}
