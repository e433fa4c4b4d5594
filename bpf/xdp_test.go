package bpf

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// Prefixes "xd*", 10.221.0.0/16, fd00:221::/32 and pin directories
// /sys/fs/bpf/patu-test-xdp* belong to these tests.

type xdpEnv struct {
	t *testing.T
	n *testnet.Net
	d *Datapath
}

const (
	echoPort     = 8080 // TCP and UDP echo servers in every pod
	hostPortTCP  = 18080
	hostPortUDP  = 18081
	podPortUDP   = 8080
	excludedPort = 8081 // a second UDP echo port, excluded in one test
)

// newXDPEnv builds node + 2 pods + external client, loads Patu under its
// own pin directory, registers both pods (routes, reply programs, GRO) and
// attaches XDP to the uplink in mode. Pod 0 sends with TX checksum offload
// off, so that its replies carry full checksums through the reply
// translation and the client verifies them; pod 1 keeps the default
// (partial checksums, completed by nobody on a veth).
func newXDPEnv(t *testing.T, prefix string, idx int, mode XDPMode) *xdpEnv {
	t.Helper()
	testnet.Privileged(t)
	pinDir := "/sys/fs/bpf/patu-test-" + prefix
	if err := testnet.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	Unload(pinDir)
	n, err := testnet.New(testnet.Config{
		Prefix:  prefix,
		Subnet4: netip.MustParsePrefix(fmt.Sprintf("10.221.%d.0/24", idx)),
		Subnet6: netip.MustParsePrefix(fmt.Sprintf("fd00:221:%d::/64", idx)),
		Pods:    2,
		Uplink:  true,
		Uplink4: netip.MustParsePrefix(fmt.Sprintf("10.221.%d.0/24", 100+idx)),
		Uplink6: netip.MustParsePrefix(fmt.Sprintf("fd00:221:%d::/64", 100+idx)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close topology: %v", err)
		}
	})
	d, err := Load(Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		if _, err := Unload(pinDir); err != nil {
			t.Errorf("unload: %v", err)
		}
		if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin directory %s left after unload: %v", pinDir, err)
		}
	})
	e := &xdpEnv{t: t, n: n, d: d}
	for i, p := range n.Pods {
		if err := netns.EnableGRO(p.NetnsPath, p.PodVeth); err != nil {
			t.Fatal(err)
		}
		if on, err := netns.GROEnabled(p.NetnsPath, p.PodVeth); err != nil || !on {
			t.Fatalf("GRO on %s: %v, %v", p.Name, on, err)
		}
		if i == 0 {
			if err := netns.SetTxChecksum(p.NetnsPath, p.PodVeth, false); err != nil {
				t.Fatal(err)
			}
		}
		e.putRoutes(p, false)
		if err := n.Node.Do(func() error { return d.AttachPod(uint32(p.HostIfindex)) }); err != nil {
			t.Fatal(err)
		}
		e.startEchoServers(p, echoPort)
		e.startUDPEcho(p, excludedPort)
	}
	got := e.attach(mode)
	if mode != "" && got != mode {
		t.Fatalf("attached in %s mode, want %s", got, mode)
	}
	return e
}

func (e *xdpEnv) putRoutes(p *testnet.Pod, excluded bool) {
	e.t.Helper()
	for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
		r := XDPRoute{IP: ip, HostIfindex: uint32(p.HostIfindex), HostMAC: e.n.Node.PodMAC, PodMAC: p.PodMAC, Excluded: excluded}
		if err := e.d.PutXDPRoute(r); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *xdpEnv) attach(mode XDPMode) XDPMode {
	e.t.Helper()
	var got XDPMode
	if err := e.n.Node.Do(func() error {
		var err error
		got, err = e.d.AttachXDP(e.n.Uplink, mode)
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	return got
}

func (e *xdpEnv) detach() {
	e.t.Helper()
	if err := e.n.Node.Do(func() error { return e.d.DetachXDP(e.n.Uplink) }); err != nil {
		e.t.Fatal(err)
	}
}

func (e *xdpEnv) counters() XDPCounters {
	e.t.Helper()
	c, err := e.d.XDPCounters()
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// --------------------------------------------------------------- servers

// startEchoServers runs a TCP and a UDP echo server on port (both
// families) in p until the test ends.
func (e *xdpEnv) startEchoServers(p *testnet.Pod, port int) {
	e.t.Helper()
	var ln net.Listener
	if err := p.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(port))
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			}()
		}
	}()
	e.startUDPEcho(p, port)
}

func (e *xdpEnv) startUDPEcho(p *testnet.Pod, port int) {
	e.t.Helper()
	var pc net.PacketConn
	if err := p.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":"+strconv.Itoa(port))
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// --------------------------------------------------------------- clients

// dialExt connects from the external client.
func (e *xdpEnv) dialExt(network string, dst netip.AddrPort) net.Conn {
	e.t.Helper()
	var c net.Conn
	if err := e.n.Ext.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, dst.String(), 3*time.Second)
		return err
	}); err != nil {
		e.t.Fatalf("dial %s %s: %v", network, dst, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// tcpEcho streams size bytes to an echo server at dst from the client, in
// chunks of random size up to maxChunk, optionally paced, and checks that
// what comes back is what was sent. detachAt, when > 0, is called once
// after that many bytes.
func (e *xdpEnv) tcpEcho(dst netip.AddrPort, size, maxChunk int, pace time.Duration, at int, atFn func()) {
	e.t.Helper()
	c := e.dialExt("tcp", dst).(*net.TCPConn)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.SetNoDelay(true)
	sent := sha256.New()
	done := make(chan error, 1)
	var got []byte
	go func() {
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err == nil && n != int64(size) {
			err = fmt.Errorf("echo returned %d bytes, sent %d", n, size)
		}
		got = h.Sum(nil)
		done <- err
	}()
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	buf := make([]byte, maxChunk)
	for off := 0; off < size; {
		n := min(1+rng.IntN(maxChunk), size-off)
		for i := range buf[:n] {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := c.Write(buf[:n]); err != nil {
			e.t.Fatalf("write to %s after %d bytes: %v", dst, off, err)
		}
		sent.Write(buf[:n])
		if atFn != nil && off < at && off+n >= at {
			atFn()
		}
		off += n
		if pace > 0 {
			time.Sleep(pace)
		}
	}
	c.CloseWrite()
	if err := <-done; err != nil {
		e.t.Fatalf("echo from %s: %v", dst, err)
	}
	if !bytes.Equal(got, sent.Sum(nil)) {
		e.t.Fatalf("echo from %s: stream differs from what was sent", dst)
	}
}

// udpEcho sends one datagram of each size to dst and checks each echo.
// With frag set, the sender may fragment (IPv4 DF off).
func (e *xdpEnv) udpEcho(dst netip.AddrPort, sizes []int, frag bool) {
	e.t.Helper()
	c := e.dialExt("udp", dst).(*net.UDPConn)
	if frag && dst.Addr().Is4() {
		rc, _ := c.SyscallConn()
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DONT)
		})
	}
	rng := rand.New(rand.NewPCG(uint64(len(sizes)), 9))
	buf := make([]byte, 65536)
	for i, size := range sizes {
		msg := make([]byte, size)
		for j := range msg {
			msg[j] = byte(rng.Uint32())
		}
		if size >= 4 {
			binary.BigEndian.PutUint32(msg, uint32(i))
		}
		ok := false
		for try := 0; try < 3 && !ok; try++ {
			if _, err := c.Write(msg); err != nil {
				e.t.Fatalf("udp send %d bytes to %s: %v", size, dst, err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, err := c.Read(buf)
				if err != nil {
					break // timeout: send again
				}
				if bytes.Equal(buf[:n], msg) {
					ok = true
					break
				}
			}
		}
		if !ok {
			e.t.Fatalf("udp %d bytes to %s: no intact echo in 3 tries", size, dst)
		}
	}
}

// udpReaches sends one datagram to dst and says whether an echo came back.
func (e *xdpEnv) udpReaches(dst netip.AddrPort, ttl int) bool {
	e.t.Helper()
	c := e.dialExt("udp", dst).(*net.UDPConn)
	if ttl > 0 {
		rc, _ := c.SyscallConn()
		rc.Control(func(fd uintptr) {
			if dst.Addr().Is4() {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, ttl)
			} else {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_UNICAST_HOPS, ttl)
			}
		})
	}
	msg := []byte("are you there?")
	buf := make([]byte, 64)
	for try := 0; try < 2; try++ {
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && bytes.Equal(buf[:n], msg) {
			return true
		}
	}
	return false
}

// csumErrors sums the checksum error counters (TCP, UDP, UDP6) of p.
func csumErrors(t *testing.T, p *testnet.Pod) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	err := p.Do(func() error {
		// thread-self: /proc/self/net is the thread group leader's netns.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(keys) == 0 || len(keys) != len(vals) || (keys[0] != "Tcp:" && keys[0] != "Udp:") {
				continue
			}
			for j, k := range keys {
				if k == "InCsumErrors" {
					v, _ := strconv.ParseUint(vals[j], 10, 64)
					out[keys[0]+k] = v
				}
			}
		}
		f, err := os.Open("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			fs := strings.Fields(s.Text())
			if len(fs) == 2 && fs[0] == "Udp6InCsumErrors" {
				out[fs[0]], _ = strconv.ParseUint(fs[1], 10, 64)
			}
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *xdpEnv) checkNoCsumErrors() {
	e.t.Helper()
	for _, p := range append([]*testnet.Pod{e.n.Ext}, e.n.Pods...) {
		for k, v := range csumErrors(e.t, p) {
			if v != 0 {
				e.t.Errorf("%s: %s = %d", p.Name, k, v)
			}
		}
	}
}

// flows returns the flow table.
func (e *xdpEnv) flows() map[xdpFlowKey]xdpFlow {
	e.t.Helper()
	out := map[xdpFlowKey]xdpFlow{}
	var (
		k xdpFlowKey
		v xdpFlow
	)
	it := e.d.xdp.flows.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func udpSizes(v4 bool) []int {
	max := 1500 - 40 - 8
	if v4 {
		max = 1500 - 20 - 8
	}
	return []int{1, 2, 3, 17, 64, 200, 511, 1000, max - 1, max}
}

func addr(ip netip.Addr, port int) netip.AddrPort { return netip.AddrPortFrom(ip, uint16(port)) }

// ----------------------------------------------------------------- tests

// TestXDP exercises the XDP fast path end to end in native mode: pod
// addresses and hostPorts over TCP and UDP, IPv4 and IPv6, tiny and
// MTU-sized packets, what must pass to the normal path, exclusions,
// removal of routes and hostPorts, a reload, and detaching mid-stream.
func TestXDP(t *testing.T) {
	e := newXDPEnv(t, "xdp1", 1, XDPNative)
	n, d := e.n, e.d
	p0, p1 := n.Pods[0], n.Pods[1]
	for _, h := range []HostPort{
		{Proto: 6, HostPort: hostPortTCP, PodIP: p0.IPv4, PodPort: echoPort},                             // any address
		{Proto: 6, HostPort: hostPortTCP, PodIP: p0.IPv6, PodPort: echoPort},                             // any address
		{HostIP: n.NodeUplinkIP4, Proto: 17, HostPort: hostPortUDP, PodIP: p0.IPv4, PodPort: podPortUDP}, // exact
		{HostIP: n.NodeUplinkIP6, Proto: 17, HostPort: hostPortUDP, PodIP: p0.IPv6, PodPort: podPortUDP}, // exact
		{Proto: 6, HostPort: hostPortTCP + 1, PodIP: p1.IPv4, PodPort: echoPort},                         // pod with offload on
	} {
		if err := d.PutHostPort(h); err != nil {
			t.Fatal(err)
		}
	}
	hps, err := d.HostPorts()
	if err != nil || len(hps) != 5 {
		t.Fatalf("hostPorts = %+v, %v", hps, err)
	}
	ups, err := d.XDPUplinks()
	if err != nil || len(ups) != 1 || ups[0].Name != n.Uplink || ups[0].Mode != XDPNative || ups[0].Ifindex != n.Ext.HostIfindex {
		t.Fatalf("uplinks = %+v, %v", ups, err)
	}
	// Attaching again is a no-op.
	if got := e.attach(""); got != XDPNative {
		t.Fatalf("attach again: mode %s", got)
	}

	type tc struct {
		name     string
		dst      netip.AddrPort
		hostPort bool
		udp      bool
	}
	cases := []tc{
		{"pod/tcp4", addr(p0.IPv4, echoPort), false, false},
		{"pod/tcp6", addr(p0.IPv6, echoPort), false, false},
		{"pod/udp4", addr(p0.IPv4, echoPort), false, true},
		{"pod/udp6", addr(p0.IPv6, echoPort), false, true},
		{"pod1/tcp4", addr(p1.IPv4, echoPort), false, false},
		{"pod1/udp6", addr(p1.IPv6, echoPort), false, true},
		{"hostport/tcp4", addr(n.NodeUplinkIP4, hostPortTCP), true, false},
		{"hostport/tcp6", addr(n.NodeUplinkIP6, hostPortTCP), true, false},
		{"hostport/udp4", addr(n.NodeUplinkIP4, hostPortUDP), true, true},
		{"hostport/udp6", addr(n.NodeUplinkIP6, hostPortUDP), true, true},
		{"hostport-pod1/tcp4", addr(n.NodeUplinkIP4, hostPortTCP+1), true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := &xdpEnv{t: t, n: n, d: d}
			before := e.counters()
			if c.udp {
				e.udpEcho(c.dst, udpSizes(c.dst.Addr().Is4()), false)
			} else {
				// Tiny writes first (one byte per segment with NODELAY),
				// then a bulk stream of MTU-sized segments.
				e.tcpEcho(c.dst, 200, 1, 0, 0, nil)
				e.tcpEcho(c.dst, 4<<20, 64<<10, 0, 0, nil)
			}
			after := e.counters()
			if c.hostPort {
				if after.RedirectHostPort == before.RedirectHostPort {
					t.Errorf("no hostPort redirect counted")
				}
				if after.ReplyNAT == before.ReplyNAT {
					t.Errorf("no reply translated back")
				}
			} else if after.RedirectPod == before.RedirectPod {
				t.Errorf("no pod redirect counted")
			}
			if after.ReplyRedirect+after.ReplyRedirectNeigh == before.ReplyRedirect+before.ReplyRedirectNeigh {
				t.Errorf("no reply redirected to the uplink")
			}
			if after.RedirectError != 0 || after.FlowInsertFail != 0 {
				t.Errorf("redirect errors %d, flow insert failures %d", after.RedirectError, after.FlowInsertFail)
			}
			e.checkNoCsumErrors()
		})
	}

	t.Run("fragments", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		before := e.counters()
		e.udpEcho(addr(p0.IPv4, echoPort), []int{3000, 9000}, true)
		e.udpEcho(addr(p0.IPv6, echoPort), []int{3000, 9000}, true)
		after := e.counters()
		if after.Pass["fragment"] == before.Pass["fragment"] {
			t.Errorf("IPv4 fragments not passed")
		}
		if after.Pass["ipv6_ext"] == before.Pass["ipv6_ext"] {
			t.Errorf("IPv6 fragments not passed")
		}
		e.checkNoCsumErrors()
	})

	t.Run("pass", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		before := e.counters()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		for _, ip := range []netip.Addr{p0.IPv4, p0.IPv6} {
			if err := n.Ext.Ping(ctx, ip); err != nil {
				t.Errorf("ping %s: %v", ip, err)
			}
		}
		// TTL 1: the kernel must see it (and answer time exceeded).
		if e.udpReaches(addr(p0.IPv4, echoPort), 1) || e.udpReaches(addr(p0.IPv6, echoPort), 1) {
			t.Errorf("a datagram with TTL 1 reached the pod")
		}
		// The node's own address without a hostPort: no match.
		e.udpReaches(addr(n.NodeUplinkIP4, 9), 0)
		after := e.counters()
		for _, r := range []string{"icmp", "ttl", "no_match", "not_ip"} {
			if after.Pass[r] == before.Pass[r] && (r != "not_ip" || after.Pass[r] == 0) {
				t.Errorf("pass %s did not move: %d", r, after.Pass[r])
			}
		}
	})

	t.Run("excluded", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		if err := d.ExcludePort(17, excludedPort); err != nil {
			t.Fatal(err)
		}
		if ps, err := d.ExcludedPorts(); err != nil || len(ps) != 1 || ps[0] != (PortKey{17, excludedPort}) {
			t.Fatalf("excluded ports = %v, %v", ps, err)
		}
		before := e.counters()
		e.udpEcho(addr(p0.IPv4, excludedPort), []int{10, 1000}, false)
		mid := e.counters()
		if mid.RedirectPod != before.RedirectPod || mid.Pass["excluded_port"] == before.Pass["excluded_port"] {
			t.Errorf("excluded port: redirected %d, passed %d", mid.RedirectPod-before.RedirectPod, mid.Pass["excluded_port"]-before.Pass["excluded_port"])
		}
		if err := d.IncludePort(17, excludedPort); err != nil {
			t.Fatal(err)
		}
		if ps, err := d.ExcludedPorts(); err != nil || len(ps) != 0 {
			t.Fatalf("excluded ports after include = %v, %v", ps, err)
		}
		e.putRoutes(p1, true)
		e.udpEcho(addr(p1.IPv6, echoPort), []int{10, 1000}, false)
		after := e.counters()
		if after.RedirectPod != mid.RedirectPod || after.Pass["excluded_pod"] == mid.Pass["excluded_pod"] {
			t.Errorf("excluded pod: redirected %d, passed %d", after.RedirectPod-mid.RedirectPod, after.Pass["excluded_pod"]-mid.Pass["excluded_pod"])
		}
		for k := range e.flows() {
			if netip.AddrFrom16(wordsAddr(k.Src)).Unmap() == p1.IPv6 {
				t.Errorf("a flow of the excluded pod is left")
			}
		}
		e.putRoutes(p1, false)
	})

	t.Run("reload", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		progOf := func() [2]uint32 {
			var ids [2]uint32
			for i, pin := range []string{d.xdpLinkPin(n.Ext.HostIfindex), d.podLinkPin(uint32(p0.HostIfindex))} {
				l, err := loadLinkInfoProg(pin)
				if err != nil {
					t.Fatal(err)
				}
				ids[i] = l
			}
			return ids
		}
		before := progOf()
		d2, err := Load(Options{PinDir: d.PinDir()})
		if err != nil {
			t.Fatal(err)
		}
		d2.Close()
		after := progOf()
		if before[0] == after[0] || before[1] == after[1] {
			t.Errorf("links still run programs %v after a reload (now %v)", before, after)
		}
		if rs, err := d.XDPRoutes(); err != nil || len(rs) != 4 {
			t.Errorf("routes after reload = %v, %v", rs, err)
		}
		c := e.counters()
		e.tcpEcho(addr(n.NodeUplinkIP4, hostPortTCP), 256<<10, 16<<10, 0, 0, nil)
		if e.counters().RedirectHostPort == c.RedirectHostPort {
			t.Errorf("no hostPort redirect after reload")
		}
	})

	t.Run("hostport-not-new", func(t *testing.T) {
		// A TCP segment to a hostPort that is neither a SYN nor of a
		// known flow is left to the normal path.
		e := &xdpEnv{t: t, n: n, d: d}
		c := e.dialExt("tcp", addr(n.NodeUplinkIP4, hostPortTCP))
		if _, err := d.deleteFlows(func(xdpFlowKey, xdpFlow) bool { return true }); err != nil {
			t.Fatal(err)
		}
		before := e.counters()
		c.Write([]byte("hello"))
		deadline := time.Now().Add(2 * time.Second)
		for e.counters().Pass["not_new"] == before.Pass["not_new"] {
			if time.Now().After(deadline) {
				t.Fatal("a segment of an unknown hostPort flow was not passed as not_new")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if e.counters().RedirectHostPort != before.RedirectHostPort {
			t.Error("a segment of an unknown hostPort flow was translated")
		}
	})

	t.Run("delete-hostport", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		dst := addr(n.NodeUplinkIP4, hostPortUDP)
		if !e.udpReaches(dst, 0) {
			t.Fatal("hostPort unreachable before the delete")
		}
		if err := d.DeleteHostPort(HostPort{HostIP: n.NodeUplinkIP4, Proto: 17, HostPort: hostPortUDP}); err != nil {
			t.Fatal(err)
		}
		for k, f := range e.flows() {
			if f.Flags != 0 && k.Proto == 17 && ntohs(f.OrigPort) == hostPortUDP && netip.AddrFrom16(wordsAddr(f.OrigIp)).Is4In6() {
				t.Errorf("a flow of the deleted hostPort is left: %+v", f)
			}
		}
		// No DNAT rule on this node: the normal path must not reach the pod.
		if e.udpReaches(dst, 0) {
			t.Error("deleted hostPort still reaches the pod")
		}
		// The IPv6 mapping of the same port stays.
		if !e.udpReaches(addr(n.NodeUplinkIP6, hostPortUDP), 0) {
			t.Error("the IPv6 hostPort of the same port stopped working")
		}
	})

	t.Run("delete-route", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		for _, ip := range []netip.Addr{p1.IPv4, p1.IPv6} {
			if err := d.DeleteXDPRoute(ip); err != nil {
				t.Fatal(err)
			}
		}
		for k := range e.flows() {
			if a := netip.AddrFrom16(wordsAddr(k.Src)).Unmap(); a == p1.IPv4 || a == p1.IPv6 {
				t.Errorf("a flow of %s is left", a)
			}
		}
		before := e.counters()
		e.tcpEcho(addr(p1.IPv4, echoPort), 256<<10, 16<<10, 0, 0, nil)
		e.udpEcho(addr(p1.IPv6, echoPort), []int{5, 1400}, false)
		after := e.counters()
		if after.RedirectPod != before.RedirectPod || after.ReplyRedirect != before.ReplyRedirect || after.ReplyNAT != before.ReplyNAT {
			t.Errorf("traffic of a removed pod took the XDP path: %+v -> %+v", before, after)
		}
		// The hostPort to it now passes (no route): the kernel has no DNAT.
		if e.udpReaches(addr(n.NodeUplinkIP4, hostPortTCP+1), 0) {
			t.Error("hostPort to a removed pod reaches it")
		}
		e.putRoutes(p1, false)
	})

	t.Run("detach-mid-stream", func(t *testing.T) {
		e := &xdpEnv{t: t, n: n, d: d}
		before := e.counters()
		var (
			mu      sync.Mutex
			flowsAt int
		)
		// ~1.5 s of a paced stream to a pod; detach a third of the way.
		e.tcpEcho(addr(p0.IPv6, echoPort), 3<<20, 8<<10, 3*time.Millisecond, 1<<20, func() {
			mu.Lock()
			defer mu.Unlock()
			flowsAt = len(e.flows())
			e.detach()
		})
		if flowsAt == 0 {
			t.Error("no flow recorded while XDP was attached")
		}
		if c, err := d.FlowCount(); err != nil || c != 0 {
			t.Errorf("flows after detach = %d, %v", c, err)
		}
		if ups, err := d.XDPUplinks(); err != nil || len(ups) != 0 {
			t.Errorf("uplinks after detach = %v, %v", ups, err)
		}
		if _, err := os.Stat(d.xdpLinkPin(n.Ext.HostIfindex)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("XDP link pin left: %v", err)
		}
		mid := e.counters()
		if mid.RedirectPod == before.RedirectPod {
			t.Error("nothing redirected before the detach")
		}
		e.tcpEcho(addr(p0.IPv4, echoPort), 256<<10, 16<<10, 0, 0, nil)
		if c := e.counters(); c.RedirectPod != mid.RedirectPod || c.ReplyRedirect != mid.ReplyRedirect {
			t.Error("XDP path still used after detach")
		}
		// Detaching twice, and replies of unknown veths, are no-ops.
		e.detach()
		if err := n.Node.Do(func() error { return d.DetachPod(uint32(p1.HostIfindex)) }); err != nil {
			t.Fatal(err)
		}
		if err := d.DetachPod(999999); err != nil {
			t.Errorf("detach reply of a missing veth: %v", err)
		}
		e.checkNoCsumErrors()
		t.Logf("counters: %+v", e.counters())
	})
}

// TestXDPGeneric runs pod and hostPort traffic through the XDP program in
// generic (skb) mode, the fallback for drivers without native XDP.
func TestXDPGeneric(t *testing.T) {
	e := newXDPEnv(t, "xdp2", 2, XDPGeneric)
	n, d := e.n, e.d
	p0 := n.Pods[0]
	if err := d.PutHostPort(HostPort{Proto: 17, HostPort: hostPortUDP, PodIP: p0.IPv6, PodPort: podPortUDP}); err != nil {
		t.Fatal(err)
	}
	before := e.counters()
	e.tcpEcho(addr(p0.IPv4, echoPort), 2<<20, 64<<10, 0, 0, nil)
	e.udpEcho(addr(n.NodeUplinkIP6, hostPortUDP), udpSizes(false), false)
	after := e.counters()
	if after.RedirectPod == before.RedirectPod || after.RedirectHostPort == before.RedirectHostPort || after.ReplyNAT == before.ReplyNAT {
		t.Errorf("generic mode did not take the XDP path: %+v -> %+v", before, after)
	}
	e.checkNoCsumErrors()
	// An IPv4 "any" mapping must not match an IPv6 packet, nor a
	// packet the node forwards.
	if e.udpReaches(addr(n.NodeUplinkIP4, hostPortUDP), 0) {
		t.Error("the IPv6 hostPort answered over IPv4")
	}
}

func loadLinkInfoProg(pin string) (uint32, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	return uint32(info.Program), nil
}
