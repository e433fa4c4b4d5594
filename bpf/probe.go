package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// lsmPath lists the active LSMs; the splice guard needs "bpf" among them.
var lsmPath = "/sys/kernel/security/lsm"

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
	if err := bpfLSMActive(); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrNotSupported, strings.Join(missing, "; "))
	}
	return nil
}

// bpfLSMActive checks that BPF LSM is on the kernel's active LSM list: the
// splice guard refuses splice(2) on sockets holding redirected bytes, and
// without it such readers would lose data.
func bpfLSMActive() error {
	b, err := os.ReadFile(lsmPath)
	if errors.Is(err, os.ErrNotExist) {
		// Not mounted on minimal hosts; mounting it changes nothing else.
		if unix.Mount("securityfs", filepath.Dir(lsmPath), "securityfs", 0, "") == nil {
			b, err = os.ReadFile(lsmPath)
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("securityfs not mounted, cannot tell whether BPF LSM is active (mount -t securityfs securityfs /sys/kernel/security)")
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", lsmPath, err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if l == "bpf" {
			return nil
		}
	}
	return fmt.Errorf("BPF LSM not active (active: %s; boot with lsm=%s,bpf)", strings.TrimSpace(string(b)), strings.TrimSpace(string(b)))
}
