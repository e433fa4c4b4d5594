package bpf

import (
	"errors"
	"fmt"
	"net"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// RedirectCharged reports whether this kernel charges bytes an sk_msg
// program redirects into a socket's receive queue to that socket's
// sk_rmem_alloc (Linux 6.13 does, and stable kernels that took the fix, such as
// Debian's 6.1.192 and 6.12.95; older ones do not), by
// trying it: two TCP sockets on the loopback of the caller's network
// namespace, one message redirected from one to the other with nobody
// reading, and the receiver's SO_MEMINFO read back. The socket path's
// backpressure reads sk_rmem_alloc where it is charged and counts the
// redirected bytes itself where it is not.
func RedirectCharged() (bool, error) {
	sockmap, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockMap, KeySize: 4, ValueSize: 4, MaxEntries: 2})
	if err != nil {
		return false, fmt.Errorf("probe redirect accounting: sockmap: %w", err)
	}
	defer sockmap.Close()
	// return bpf_msg_redirect_map(msg, sockmap, 1, BPF_F_INGRESS)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SkMsg,
		License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.LoadMapPtr(asm.R2, sockmap.FD()),
			asm.Mov.Imm(asm.R3, 1),
			asm.Mov.Imm(asm.R4, int32(unix.BPF_F_INGRESS)),
			asm.FnMsgRedirectMap.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		return false, fmt.Errorf("probe redirect accounting: sk_msg program: %w", err)
	}
	defer prog.Close()
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: sockmap.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict}); err != nil {
		return false, fmt.Errorf("probe redirect accounting: attach sk_msg: %w", err)
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return false, fmt.Errorf("probe redirect accounting: %w", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return false, fmt.Errorf("probe redirect accounting: %w", err)
	}
	defer client.Close()
	var server net.Conn
	select {
	case c, ok := <-accepted:
		if !ok {
			return false, errors.New("probe redirect accounting: accept failed")
		}
		server = c
	case <-time.After(5 * time.Second):
		return false, errors.New("probe redirect accounting: no connection accepted")
	}
	defer server.Close()

	for i, c := range []net.Conn{client, server} {
		f, err := c.(*net.TCPConn).File()
		if err != nil {
			return false, fmt.Errorf("probe redirect accounting: %w", err)
		}
		err = sockmap.Put(uint32(i), uint32(f.Fd()))
		f.Close()
		if err != nil {
			return false, fmt.Errorf("probe redirect accounting: sockmap insert: %w", err)
		}
	}
	const size = 64 << 10
	if _, err := client.Write(make([]byte, size)); err != nil {
		return false, fmt.Errorf("probe redirect accounting: write: %w", err)
	}
	raw, err := server.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false, err
	}
	// linux/sock_diag.h: SK_MEMINFO_RMEM_ALLOC is the first of 9 values.
	const skMeminfoRmemAlloc, skMeminfoVars = 0, 9
	var mem [skMeminfoVars]uint32
	var serr error
	err = raw.Control(func(fd uintptr) {
		l := uint32(len(mem) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err = errors.Join(err, serr); err != nil {
		return false, fmt.Errorf("probe redirect accounting: SO_MEMINFO: %w", err)
	}
	return mem[skMeminfoRmemAlloc] >= size, nil
}
