package bpf

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
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
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrNotSupported, strings.Join(missing, "; "))
	}
	return nil
}
