package bpf

import (
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/patu-dev/patu/internal/testnet"
)

// tcp4 is an Ethernet + IPv4 + TCP packet with no payload.
func tcp4(src, dst [4]byte, sport, dport uint16, seq, ack uint32, flags byte) []byte {
	b := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	ip[8] = 64
	ip[9] = 6
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	return b
}

// TestLocalHandshakeSYNRetransmit runs the pods' program on handshake
// packets (BPF_PROG_TEST_RUN; both pods behind the loopback device, which
// is where a test run's packets enter): a client whose SYN is retransmitted
// after the server answered the first one, and which then acknowledges
// that first SYN-ACK, is admitted. On a slow node (seen in a TCG guest:
// 1 of 2,000 short connections) the retransmitted SYN used to reset the
// handshake state, and that connection stayed on the normal path.
func TestLocalHandshakeSYNRetransmit(t *testing.T) {
	testnet.Privileged(t)
	const pinDir = "/sys/fs/bpf/patu-test-local-handshake"
	Unload(pinDir)
	d, err := Load(Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(); Unload(pinDir) })
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, pinProgFromPod), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	client, server := [4]byte{10, 209, 7, 2}, [4]byte{10, 209, 7, 3}
	for _, ip := range [][4]byte{client, server} {
		if err := d.PutXDPRoute(XDPRoute{IP: netip.AddrFrom4(ip), HostIfindex: 1}); err != nil {
			t.Fatal(err)
		}
	}
	const (
		syn, ackf = 0x02, 0x10
		cport     = 40000
		sport     = 8080
	)
	run := func(what string, pkt []byte) {
		t.Helper()
		if _, err := prog.Run(&ebpf.RunOptions{Data: pkt}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for i, c := range []struct {
		name       string
		retransmit bool
	}{{"plain", false}, {"SYN retransmitted after the SYN-ACK", true}} {
		isn, sisn := uint32(1000+100*i), uint32(5000)
		port := uint16(cport + i)
		before, err := d.LocalCounters()
		if err != nil {
			t.Fatal(err)
		}
		run("SYN", tcp4(client, server, port, sport, isn, 0, syn))
		run("SYN-ACK", tcp4(server, client, sport, port, sisn, isn+1, syn|ackf))
		if c.retransmit {
			run("SYN again", tcp4(client, server, port, sport, isn, 0, syn))
		}
		run("ACK", tcp4(client, server, port, sport, isn+1, sisn+1, ackf))
		after, err := d.LocalCounters()
		if err != nil {
			t.Fatal(err)
		}
		if n := after.Admitted - before.Admitted; n != 1 {
			t.Errorf("%s: %d connections admitted, want 1 (SYNs %d)", c.name, n, after.SYNs-before.SYNs)
		}
	}
}
