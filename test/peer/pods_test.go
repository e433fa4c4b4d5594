package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/internal/testnet"
)

// asTool makes the test binary act as patu-testpeer: pods_test starts it
// in pods with this variable set, so the tool under test is this build.
const asTool = "PATU_TESTPEER_AS_TOOL"

func TestMain(m *testing.M) {
	if os.Getenv(asTool) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// tool returns a command running this binary as patu-testpeer in pod p.
func tool(ctx context.Context, t *testing.T, p *testnet.Pod, args ...string) (*bytes.Buffer, *bytes.Buffer, func() error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := p.Command(ctx, self, args...)
	cmd.Env = append(os.Environ(), asTool+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return &stdout, &stderr, cmd.Wait
}

// TestInPods runs the tool between two pods of a real topology, IPv4 and
// IPv6, across a veth and a bridge.
func TestInPods(t *testing.T) {
	testnet.Privileged(t)
	const prefix = "tn3"
	if err := testnet.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	n, err := testnet.New(testnet.Config{
		Prefix:  prefix,
		Subnet4: netip.MustParsePrefix("10.201.250.0/24"),
		Subnet6: netip.MustParsePrefix("fd00:201:250::/64"),
		Pods:    2,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	a, b := n.Pods[0], n.Pods[1]

	startServer := func(listen string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		ready := filepath.Join(t.TempDir(), "ready")
		_, stderr, wait := tool(ctx, t, b, append([]string{"serve", "--listen", listen, "--ready-file", ready}, args...)...)
		exited := make(chan struct{})
		go func() { wait(); close(exited) }()
		t.Cleanup(func() { cancel(); <-exited })
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(ready); err == nil {
				return
			}
			select {
			case <-exited:
				t.Fatalf("server %v exited: %s", args, stderr)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("server %v not ready: %s", args, stderr)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	runClient := func(args ...string) result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stdout, stderr, wait := tool(ctx, t, a, append([]string{"client"}, args...)...)
		err := wait()
		r := parse(t, stdout.String())
		if err != nil || r.Failed != 0 || r.OK != r.Conns {
			t.Fatalf("client %v: %v, %+v, stderr %s", args, err, r, tail(stderr.String()))
		}
		return r
	}

	for _, ip := range []string{b.IPv4.String(), "[" + b.IPv6.String() + "]"} {
		startServer(ip+":7001", "--mode", "echo")
		startServer(ip+":7002", "--mode", "splice-echo")
		startServer(ip+":7003", "--mode", "sink")
		startServer(ip+":7004", "--mode", "stall", "--stall", "2s", "--read-first", "65536")
		startServer(ip+":7005", "--mode", "close-early", "--rst")

		rx0, tx0, err := b.VethPackets()
		if err != nil {
			t.Fatal(err)
		}
		runClient("--connect", ip+":7001", "--mode", "echo", "--conns", "200", "--parallel", "8", "--max", "262144")
		runClient("--connect", ip+":7002", "--mode", "echo", "--conns", "50", "--parallel", "4", "--max", "262144")
		runClient("--connect", ip+":7003", "--mode", "sendfile", "--conns", "10", "--parallel", "4", "--max", "4194304")
		r := runClient("--connect", ip+":7002", "--mode", "stream", "--bytes", "33554432")
		t.Logf("%s: stream %d bytes in %s", ip, r.Bytes, time.Duration(r.DurationNS))
		r = runClient("--connect", ip+":7004", "--mode", "stall-probe", "--probe", "1s", "--report-queued")
		t.Logf("%s: stalled reader: writer accepted %d bytes, queued %v", ip, r.AcceptedBytes, deref(r.QueuedBytes))
		if r.AcceptedBytes == 0 || r.AcceptedBytes > 16<<20 {
			t.Errorf("%s: writer accepted %d bytes to a stalled reader on the bridge path", ip, r.AcceptedBytes)
		}
		r = runClient("--connect", ip+":7005", "--mode", "rst", "--conns", "10", "--parallel", "2")
		t.Logf("%s: rst: %v", ip, r.ErrorKinds)
		rx1, tx1, err := b.VethPackets()
		if err != nil {
			t.Fatal(err)
		}
		if rx1-rx0 < 1000 || tx1-tx0 < 1000 {
			t.Errorf("%s: traffic did not cross the veth: rx %d tx %d packets", ip, rx1-rx0, tx1-tx0)
		}
	}
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 1000 {
		return "…" + s[len(s)-1000:]
	}
	return s
}
