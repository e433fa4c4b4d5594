package testnet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/testnet"
)

// Prefixes "tn*" and 10.201.250.0/24, fd00:201:250::/64 belong to this
// package's tests.
var (
	subnet4 = netip.MustParsePrefix("10.201.250.0/24")
	subnet6 = netip.MustParsePrefix("fd00:201:250::/64")
)

func newNet(t *testing.T, prefix string, pods int) *testnet.Net {
	t.Helper()
	testnet.Privileged(t)
	if err := testnet.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	n, err := testnet.New(testnet.Config{Prefix: prefix, Subnet4: subnet4, Subnet6: subnet6, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return n
}

func TestValidate(t *testing.T) {
	ok := testnet.Config{Prefix: "tnv", Subnet4: subnet4, Subnet6: subnet6, Pods: 2}
	for name, mod := range map[string]func(*testnet.Config){
		"long prefix":    func(c *testnet.Config) { c.Prefix = "tnvalid" },
		"empty prefix":   func(c *testnet.Config) { c.Prefix = "" },
		"dash in prefix": func(c *testnet.Config) { c.Prefix = "tn-1" },
		"v6 as v4":       func(c *testnet.Config) { c.Subnet4 = subnet6 },
		"v4 as v6":       func(c *testnet.Config) { c.Subnet6 = subnet4 },
		"no v4":          func(c *testnet.Config) { c.Subnet4 = netip.Prefix{} },
		"v4 too small":   func(c *testnet.Config) { c.Subnet4 = netip.MustParsePrefix("10.201.250.0/30") },
		"v6 too small":   func(c *testnet.Config) { c.Subnet6 = netip.MustParsePrefix("fd00:201:250::/127") },
		"negative pods":  func(c *testnet.Config) { c.Pods = -1 },
	} {
		cfg := ok
		mod(&cfg)
		if _, err := testnet.New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

// TestTopology builds three pods and checks addresses, reachability over
// IPv4 and IPv6, veth counters, Command's namespace and cgroup, and that
// Close leaves nothing behind.
func TestTopology(t *testing.T) {
	const prefix = "tn0"
	n := newNet(t, prefix, 3)
	if len(n.Pods) != 3 || n.Node == nil {
		t.Fatalf("got %d pods, node %v", len(n.Pods), n.Node)
	}
	wantIP := func(p *testnet.Pod, v4, v6 string) {
		if p.IPv4 != netip.MustParseAddr(v4) || p.IPv6 != netip.MustParseAddr(v6) {
			t.Errorf("%s has %s %s, want %s %s", p.Name, p.IPv4, p.IPv6, v4, v6)
		}
	}
	wantIP(n.Node, "10.201.250.1", "fd00:201:250::1")
	wantIP(n.Pods[0], "10.201.250.2", "fd00:201:250::2")
	wantIP(n.Pods[2], "10.201.250.4", "fd00:201:250::4")
	for _, p := range n.Pods {
		if p.HostVeth == "" || p.HostIfindex == 0 || p.PodVeth != "eth0" {
			t.Errorf("%s: veth %q ifindex %d pod side %q", p.Name, p.HostVeth, p.HostIfindex, p.PodVeth)
		}
	}

	t.Run("ping", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, dst := range []*testnet.Pod{n.Pods[1], n.Node} {
			for _, ip := range []netip.Addr{dst.IPv4, dst.IPv6} {
				if err := n.Pods[0].Ping(ctx, ip); err != nil {
					t.Error(err)
				}
			}
		}
		if err := n.Node.Ping(ctx, n.Pods[2].IPv6); err != nil {
			t.Error(err)
		}
	})

	t.Run("tcp", func(t *testing.T) {
		a, b := n.Pods[0], n.Pods[1]
		for _, ip := range []netip.Addr{b.IPv4, b.IPv6} {
			rx0, tx0, err := b.VethPackets()
			if err != nil {
				t.Fatal(err)
			}
			got := echoOnce(t, a, b, netip.AddrPortFrom(ip, 7100))
			if got.Addr() != a.IPv4 && got.Addr() != a.IPv6 {
				t.Errorf("server saw the client as %s, want one of %s's addresses", got, a.Name)
			}
			rx1, tx1, err := b.VethPackets()
			if err != nil {
				t.Fatal(err)
			}
			// The veth's view from the bridge: it transmits what the pod
			// receives. A connection takes at least 3 packets each way.
			if rx1-rx0 < 3 || tx1-tx0 < 3 {
				t.Errorf("%s: veth counters moved rx %d tx %d", ip, rx1-rx0, tx1-tx0)
			}
		}
		if _, _, err := n.Node.VethPackets(); err == nil {
			t.Error("VethPackets on the node succeeded")
		}
	})

	t.Run("command", func(t *testing.T) {
		mnt, err := cgroup.Mount2()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []*testnet.Pod{n.Pods[2], n.Node} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// The program reports its own view: netns inode and cgroup.
			cmd := p.Command(ctx, "sh", "-c", `stat -L -c %i /proc/self/ns/net; grep '^0::' /proc/self/cgroup; echo "$0"`)
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s: %v: %s", p.Name, err, stderr.String())
			}
			var st syscall.Stat_t
			if err := syscall.Stat(p.NetnsPath, &st); err != nil {
				t.Fatal(err)
			}
			rel, err := filepath.Rel(mnt, p.CgroupDir)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("%d\n0::/%s\nsh\n", st.Ino, rel)
			if out.String() != want {
				t.Errorf("%s: process reports\n%s\nwant\n%s", p.Name, out.String(), want)
			}
		}
	})

	t.Run("command first instruction", func(t *testing.T) {
		// A long-running process is in the cgroup and the namespace as
		// seen from outside, and Close kills it.
		p := n.Pods[1]
		cmd := p.Command(context.Background(), "sleep", "300")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		pids, err := cgroup.Procs(p.CgroupDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) != 1 || pids[0] != cmd.Process.Pid {
			t.Fatalf("cgroup %s holds %v, want [%d]", p.CgroupDir, pids, cmd.Process.Pid)
		}
		var want syscall.Stat_t
		if err := syscall.Stat(p.NetnsPath, &want); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			// The shim execs right away; until then /proc shows the shim.
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm")
			var got syscall.Stat_t
			err := syscall.Stat("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/net", &got)
			if err == nil && strings.TrimSpace(string(comm)) == "sleep" {
				if got.Ino != want.Ino {
					t.Fatalf("sleep runs in netns %d, want %d", got.Ino, want.Ino)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("process is %q (err %v) after 5s", comm, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	t.Run("missing program", func(t *testing.T) {
		cmd := n.Pods[0].Command(context.Background(), "patu-no-such-program")
		if err := cmd.Run(); !errors.Is(err, os.ErrNotExist) && !errors.Is(err, exec.ErrNotFound) {
			t.Fatalf("got %v, want not found", err)
		}
	})

	t.Run("close", func(t *testing.T) {
		p := n.Pods[0]
		cmd := p.Command(context.Background(), "sleep", "300")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		cgParent := filepath.Dir(p.CgroupDir)
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			t.Fatal("Close left a process running in a pod")
		}
		requireGone(t, prefix, cgParent)
		if err := n.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
	})
}

// echoOnce accepts one connection in server (a listener created inside its
// namespace) and connects to it from client, sending a message and reading
// it back. It returns the client address the server saw.
func echoOnce(t *testing.T, client, server *testnet.Pod, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	if err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(peer)
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		io.Copy(c, c)
	}()
	var c net.Conn
	if err := client.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("hello from " + client.Name)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, %v", got, err)
	}
	ap := <-peer
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// requireGone fails when anything named by prefix is left: namespace
// files, mounts, or the cgroup tree.
func requireGone(t *testing.T, prefix, cgParent string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join("/run/netns", prefix+"-*"))
	if len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), "/run/netns/"+prefix+"-") {
		t.Errorf("namespace mounts left")
	}
	if _, err := os.Stat(cgParent); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left: %v", cgParent, err)
	}
}

// TestRollback: a New that fails half-way removes what it created.
func TestRollback(t *testing.T) {
	const prefix = "tn1"
	testnet.Privileged(t)
	if err := testnet.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testnet.Sweep(prefix) })
	// A leftover pod namespace makes New fail after node and pod 0.
	if _, err := os.Stat("/run/netns"); err == nil {
		f, err := os.Create("/run/netns/" + prefix + "-p1")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	mnt, err := cgroup.Mount2()
	if err != nil {
		t.Fatal(err)
	}
	_, err = testnet.New(testnet.Config{Prefix: prefix, Subnet4: subnet4, Subnet6: subnet6, Pods: 3})
	if err == nil {
		t.Fatal("New succeeded over a leftover namespace")
	}
	if !strings.Contains(err.Error(), "Sweep") {
		t.Errorf("error does not say how to clean up: %v", err)
	}
	t.Log(err)
	for _, name := range []string{"node", "p0", "p2"} {
		if _, err := os.Stat("/run/netns/" + prefix + "-" + name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s-%s left after a failed New: %v", prefix, name, err)
		}
	}
	if _, err := os.Stat("/run/netns/" + prefix + "-p1"); err != nil {
		t.Errorf("New removed a namespace it did not create: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "patu-test-"+prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup left after a failed New: %v", err)
	}
}

// TestSweep: a topology abandoned without Close, with a process still
// running in a pod, is removed by Sweep.
func TestSweep(t *testing.T) {
	const prefix = "tn2"
	testnet.Privileged(t)
	if err := testnet.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	n, err := testnet.New(testnet.Config{Prefix: prefix, Subnet4: subnet4, Subnet6: subnet6, Pods: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	cmd := n.Pods[1].Command(context.Background(), "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	if _, err := testnet.New(testnet.Config{Prefix: prefix, Subnet4: subnet4, Subnet6: subnet6, Pods: 1}); err == nil {
		t.Fatal("second topology with the same prefix succeeded")
	}
	cgParent := filepath.Dir(n.Pods[0].CgroupDir)
	if err := testnet.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("Sweep left a process running")
	}
	requireGone(t, prefix, cgParent)
	// The abandoned Net still closes cleanly (its node handle kept the
	// node namespace alive until now).
	if err := n.Close(); err != nil {
		t.Fatalf("close after sweep: %v", err)
	}
	// The same prefix works again.
	n2 := newNet(t, prefix, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n2.Pods[0].Ping(ctx, n2.Node.IPv4); err != nil {
		t.Fatal(err)
	}
}
