package testnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/netns"
)

// shimArg0 is argv[0] of the shim: the current executable started by
// Command, which enters a namespace and execs the real program.
const shimArg0 = "patu-testnet-exec"

func init() {
	// argv, not the environment, marks the shim: a caller replacing
	// cmd.Env must not turn the shim into a second run of the test binary.
	if len(os.Args) >= 4 && os.Args[0] == shimArg0 {
		os.Exit(shim(os.Args[1], os.Args[2], os.Args[3:]))
	}
}

// shim execs path with argv inside the network namespace nsPath. The
// execve happens on the thread netns.Do moved into the namespace; the new
// program keeps that thread's namespace. It returns only on failure.
func shim(nsPath, path string, argv []string) int {
	err := netns.Do(nsPath, func() error {
		// Pdeathsig was set on the thread the shim started on; the thread
		// that execs becomes the process and needs its own.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			return fmt.Errorf("set parent death signal: %w", err)
		}
		return syscall.Exec(path, argv, os.Environ())
	})
	fmt.Fprintf(os.Stderr, "%s: exec %s in %s: %v\n", shimArg0, path, nsPath, err)
	return 127
}

// Command returns a command that, once started, runs name with args inside
// p's network namespace and p's cgroup from its first instruction: the
// cgroup is set by clone3(CLONE_INTO_CGROUP), and the process execs name
// from a thread that has entered the namespace.
//
// The returned cmd.Path and the first four cmd.Args are those of the shim
// that does this; arguments appended to cmd.Args reach the program. Set
// fields of cmd.SysProcAttr rather than replacing it. The process gets
// SIGKILL when the thread that started it dies (Pdeathsig), so a crashed
// test leaves no servers behind.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	if cmd.Err != nil {
		return cmd // Start reports it
	}
	self, err := os.Executable()
	if err != nil {
		cmd.Err = fmt.Errorf("command in %s: find own executable for the netns shim: %w", p.Name, err)
		return cmd
	}
	target := cmd.Path
	cmd.Path = self
	cmd.Args = append([]string{shimArg0, p.NetnsPath, target}, cmd.Args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(p.cgroupFD.Fd()),
		Pdeathsig:   syscall.SIGKILL,
	}
	return cmd
}

// Do runs fn in p's network namespace (see netns.Do): sockets fn creates
// belong to the pod.
func (p *Pod) Do(fn func() error) error {
	return netns.Do(p.NetnsPath, fn)
}

// VethPackets returns the receive and transmit packet counters of p's
// host-side veth, read in the node namespace. Redirected traffic does not
// move them.
func (p *Pod) VethPackets() (rx, tx uint64, err error) {
	if p.HostVeth == "" {
		return 0, 0, fmt.Errorf("veth packets of %s: the node has no veth", p.Name)
	}
	link, err := p.net.node.LinkByIndex(p.HostIfindex)
	if err != nil {
		return 0, 0, fmt.Errorf("veth packets of %s: %w", p.Name, err)
	}
	st := link.Attrs().Statistics
	if st == nil {
		return 0, 0, fmt.Errorf("veth packets of %s: no statistics for %s", p.Name, p.HostVeth)
	}
	return st.RxPackets, st.TxPackets, nil
}

// Ping sends one ICMP (or ICMPv6) echo request from p to dst and waits for
// the reply until ctx ends (or 2 s without a deadline). This machine's
// images have no ping binary.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr) error {
	network, typ, replyTyp := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() && !dst.Is4In6() {
		network, typ, replyTyp = "ip6:ipv6-icmp", 128, 129
	}
	var c net.PacketConn
	if err := p.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, "")
		return err
	}); err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, p.Name, err)
	}
	defer c.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	id, seq := uint16(rand.Uint32()), uint16(1)
	msg := make([]byte, 8+16)
	msg[0] = typ
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	copy(msg[8:], "patu-testnet-png")
	if typ == 8 {
		// The kernel fills in ICMPv6 checksums, not ICMPv4 ones.
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, p.Name, err)
	}
	buf := make([]byte, 1500)
	for {
		// Raw sockets see every ICMP message to this namespace: wait for
		// the reply to this request.
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				err = errors.Join(err, ctx.Err())
			}
			return fmt.Errorf("ping %s from %s: %w", dst, p.Name, err)
		}
		if n >= 8 && buf[0] == replyTyp && binary.BigEndian.Uint16(buf[4:]) == id &&
			binary.BigEndian.Uint16(buf[6:]) == seq && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
			return nil
		}
	}
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
