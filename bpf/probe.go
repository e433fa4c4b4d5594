package bpf

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Probe checks that the running kernel has everything the socket path
// needs and names what is missing.
func Probe() error {
	var missing []string
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		missing = append(missing, "kernel BTF (CONFIG_DEBUG_INFO_BTF)")
	} else {
		// The receive proof hooks this tracepoint (Linux 6.6+); without it
		// no receiver could be proven safe from splice(2).
		var tp *btf.Typedef
		if err := kspec.TypeByName("btf_trace_sock_recv_length", &tp); err != nil {
			missing = append(missing, "tracepoint sock:sock_recv_length (Linux 6.6 or newer)")
		}
	}
	for _, pt := range []struct {
		t    ebpf.ProgramType
		name string
	}{
		{ebpf.SockOps, "sockops programs (CONFIG_CGROUP_BPF)"},
		{ebpf.SkMsg, "sk_msg programs (CONFIG_BPF_STREAM_PARSER)"},
	} {
		if err := features.HaveProgramType(pt.t); err != nil {
			missing = append(missing, pt.name)
		}
	}
	for _, mt := range []struct {
		t    ebpf.MapType
		name string
	}{
		{ebpf.SockHash, "SOCKHASH maps"},
		{ebpf.SkStorage, "socket-local storage"},
	} {
		if err := features.HaveMapType(mt.t); err != nil {
			missing = append(missing, mt.name)
		}
	}
	if err := kernelAtLeast(6, 13); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrNotSupported, strings.Join(missing, "; "))
	}
	return nil
}

// kernelAtLeast checks the running kernel's release. Before 6.13 the kernel
// did not charge redirected bytes to the receiver's sk_rmem_alloc, so the
// backpressure mark would never trip and a stalled reader could make a
// writer queue without bound.
func kernelAtLeast(major, minor int) error {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	ok, err := releaseAtLeast(release, major, minor)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("kernel %s is older than %d.%d (redirected bytes are not charged to the receiver there, so backpressure cannot work)", release, major, minor)
	}
	return nil
}

func releaseAtLeast(release string, major, minor int) (bool, error) {
	var maj, min int
	if _, err := fmt.Sscanf(release, "%d.%d", &maj, &min); err != nil {
		return false, fmt.Errorf("parse kernel release %q: %w", release, err)
	}
	return maj > major || (maj == major && min >= minor), nil
}
