package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Names of the kernel features Patu probes. Each is found by trying it
// (a program type or helper the verifier takes, an attachment that holds,
// a type in the kernel's BTF), never by the kernel's version: distribution
// kernels backport and configure away what a version number promises.
const (
	FeatureBTF             = "btf"
	FeatureTCX             = "tcx"
	FeatureTCLegacy        = "tc_legacy"
	FeatureRedirectPeer    = "redirect_peer"
	FeatureXDPLink         = "xdp_link"
	FeatureConntrackKfuncs = "conntrack_kfuncs"
	FeatureSockops         = "sockops"
	FeatureSkMsg           = "sk_msg"
	FeatureSockhash        = "sockhash"
	FeatureSkStorage       = "sk_storage"
	FeatureRecvTracepoint  = "tp_sock_recv_length"
	FeatureSyscallTP       = "syscall_tracepoints"
	FeatureRedirectCharged = "redirect_charged"
	FeatureFentry          = "fentry"
	FeatureFexit           = "fexit"
	FeatureLSM             = "bpf_lsm"
	FeatureKprobe          = "kprobe"
	// The two paths, from the features above.
	FeaturePacketPath = "packet_path"
	FeatureSocketPath = "socket_path"
)

// Feature is one kernel capability: on or off, and why.
type Feature struct {
	Name   string `json:"name"`
	On     bool   `json:"on"`
	Reason string `json:"reason"`
}

// Features is the outcome of ProbeFeatures, in a fixed order.
type Features []Feature

// Get returns the named feature (off, "not probed", when absent).
func (fs Features) Get(name string) Feature {
	for _, f := range fs {
		if f.Name == name {
			return f
		}
	}
	return Feature{Name: name, Reason: "not probed"}
}

// On reports whether the named feature is on.
func (fs Features) On(name string) bool { return fs.Get(name).On }

// String is one line per feature: name, on/off, reason.
func (fs Features) String() string {
	var b strings.Builder
	for _, f := range fs {
		state := "off"
		if f.On {
			state = "on"
		}
		fmt.Fprintf(&b, "  %-20s %-3s  %s\n", f.Name, state, f.Reason)
	}
	return b.String()
}

// ProbeOptions changes what ProbeFeatures reports.
type ProbeOptions struct {
	// ForceLegacyTC reports tcx off, so that the pod program is attached
	// with clsact + cls_bpf where tcx would do (to test that mode).
	ForceLegacyTC bool
	// SkipRedirectCharged leaves out the accounting probe (it opens two
	// loopback sockets in the caller's network namespace).
	SkipRedirectCharged bool
	// OnlyUsed leaves out what Load does not use (syscall tracepoints,
	// fentry/fexit, BPF LSM, kprobes): reported by status, not needed to
	// load, and each a program the verifier must check.
	OnlyUsed bool
}

// ProbeFeatures probes every kernel feature the data plane uses, and
// derives from them which of its two paths can run: the packet path needs
// a tc attachment (tcx or clsact) and bpf_redirect_peer; the socket path
// (opt-in) sockops, sk_msg, SOCKHASH, socket storage and the receive
// tracepoint that proves a receiver reads with recvmsg.
func ProbeFeatures(opts ProbeOptions) Features {
	var fs Features
	add := func(name string, err error, on string) {
		if err != nil {
			fs = append(fs, Feature{Name: name, Reason: err.Error()})
			return
		}
		fs = append(fs, Feature{Name: name, On: true, Reason: on})
	}
	ensureTracefs()
	kspec, kerr := btf.LoadKernelSpec()
	if kerr != nil {
		kerr = fmt.Errorf("no kernel BTF (CONFIG_DEBUG_INFO_BTF): %w", kerr)
	}
	add(FeatureBTF, kerr, "/sys/kernel/btf/vmlinux")

	tcx := btfEnumValue(kspec, "bpf_attach_type", "BPF_TCX_INGRESS")
	if tcx == nil && opts.ForceLegacyTC {
		tcx = errors.New("tcx is there, but legacy tc was asked for")
	}
	add(FeatureTCX, tcx, "tc programs attach as bpf_links (tcx)")
	add(FeatureTCLegacy, features.HaveProgramType(ebpf.SchedCLS), "clsact + cls_bpf direct-action (needs sch_ingress, cls_bpf)")
	add(FeatureRedirectPeer, features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectPeer), "bpf_redirect_peer from tc")
	add(FeatureXDPLink, errors.Join(features.HaveProgramType(ebpf.XDP), btfEnumValue(kspec, "bpf_attach_type", "BPF_XDP")), "XDP programs attach as bpf_links")
	add(FeatureConntrackKfuncs, conntrackKfuncs(kspec), "bpf_skb_ct_lookup, bpf_ct_change_timeout")

	add(FeatureSockops, features.HaveProgramType(ebpf.SockOps), "cgroup sockops programs")
	add(FeatureSkMsg, features.HaveProgramType(ebpf.SkMsg), "sk_msg programs")
	add(FeatureSockhash, features.HaveMapType(ebpf.SockHash), "SOCKHASH maps")
	add(FeatureSkStorage, features.HaveMapType(ebpf.SkStorage), "socket-local storage")
	add(FeatureRecvTracepoint, btfTypedef(kspec, "btf_trace_sock_recv_length"), "the receive proof's tracepoint")
	if !opts.OnlyUsed {
		add(FeatureSyscallTP, trySyscallTP(), "syscall tracepoints (syscalls:sys_enter_splice) exist and their programs load")
	}
	if !opts.SkipRedirectCharged {
		charged, err := RedirectCharged()
		switch {
		case err != nil:
			add(FeatureRedirectCharged, fmt.Errorf("could not tell: %w", err), "")
		case !charged:
			add(FeatureRedirectCharged, errors.New("redirected bytes are not charged to the receiver: the socket path counts them itself"), "")
		default:
			add(FeatureRedirectCharged, nil, "redirected bytes are charged to the receiver's sk_rmem_alloc")
		}
	}
	if !opts.OnlyUsed {
		probeGuards(kspec, add)
	}
	return derivePaths(fs)
}

// probeGuards probes what guards could use. These four are loaded, not
// attached: attaching patches kernel text (a trampoline, a breakpoint),
// which a probe on every load has no business doing on a node, and which
// livelocked a TCG guest of the kernel matrix. Loading is where this VM's
// kernel refuses them.
func probeGuards(kspec *btf.Spec, add func(string, error, string)) {
	add(FeatureFentry, tryTracing(kspec, ebpf.AttachTraceFEntry), "an fentry program on tcp_sendmsg loads")
	add(FeatureFexit, tryTracing(kspec, ebpf.AttachTraceFExit), "an fexit program on tcp_sendmsg loads")
	add(FeatureLSM, tryLSM(kspec), "a BPF LSM program on socket_connect loads and bpf is an active LSM")
	add(FeatureKprobe, tryKprobe(), "kprobe programs load and the kernel has kprobe events")
}

// derivePaths adds the two paths, from the features they need.
func derivePaths(fs Features) Features {
	var packet []string
	if !fs.On(FeatureTCX) && !fs.On(FeatureTCLegacy) {
		packet = append(packet, "no tc attachment (tcx or clsact)")
	}
	if !fs.On(FeatureRedirectPeer) {
		packet = append(packet, "no bpf_redirect_peer")
	}
	if !fs.On(FeatureBTF) {
		packet = append(packet, "no kernel BTF")
	}
	how := "tcx"
	if !fs.On(FeatureTCX) {
		how = "legacy tc (clsact + cls_bpf)"
	}
	fs = append(fs, derived(FeaturePacketPath, packet, "attached with "+how+", redirect_peer"))
	var socket []string
	for _, n := range []string{FeatureBTF, FeatureSockops, FeatureSkMsg, FeatureSockhash, FeatureSkStorage, FeatureRecvTracepoint} {
		if !fs.On(n) {
			socket = append(socket, n+": "+fs.Get(n).Reason)
		}
	}
	bound := "queues bounded by the receiver's charged memory"
	if !fs.On(FeatureRedirectCharged) {
		bound = "queues bounded by counting redirected bytes"
	}
	fs = append(fs, derived(FeatureSocketPath, socket, "opt-in per pod; "+bound))
	return fs
}

func derived(name string, missing []string, on string) Feature {
	if len(missing) > 0 {
		return Feature{Name: name, Reason: strings.Join(missing, "; ")}
	}
	return Feature{Name: name, On: true, Reason: on}
}

func btfTypedef(kspec *btf.Spec, name string) error {
	if kspec == nil {
		return errors.New("no kernel BTF to look in")
	}
	var td *btf.Typedef
	if err := kspec.TypeByName(name, &td); err != nil {
		return fmt.Errorf("%s not in the kernel's BTF: the tracepoint does not exist here", name)
	}
	return nil
}

func btfEnumValue(kspec *btf.Spec, enum, value string) error {
	if kspec == nil {
		return errors.New("no kernel BTF to look in")
	}
	var e *btf.Enum
	if err := kspec.TypeByName(enum, &e); err != nil {
		return fmt.Errorf("enum %s not in the kernel's BTF", enum)
	}
	for _, v := range e.Values {
		if v.Name == value {
			return nil
		}
	}
	return fmt.Errorf("the kernel does not know %s", value)
}

// conntrackKfuncs: the kfuncs are in nf_conntrack's BTF, the kernel's or
// its module's (then only while the module is loaded).
func conntrackKfuncs(kspec *btf.Spec) error {
	if kspec == nil {
		return errors.New("no kernel BTF to look in")
	}
	specs := []*btf.Spec{kspec}
	if m, err := btf.LoadKernelModuleSpec("nf_conntrack"); err == nil {
		specs = append(specs, m)
	}
	var missing []string
	for _, name := range []string{"bpf_skb_ct_lookup", "bpf_ct_change_timeout"} {
		found := false
		for _, s := range specs {
			var fn *btf.Func
			if s.TypeByName(name, &fn) == nil {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := os.Stat("/sys/module/nf_conntrack"); err != nil {
		return fmt.Errorf("%s not found: nf_conntrack is not loaded (nothing to keep alive; modprobe nf_conntrack before patu load if the node uses it)", strings.Join(missing, ", "))
	}
	return fmt.Errorf("%s not found (conntrack entries of packet-path flows are not kept alive)", strings.Join(missing, ", "))
}

// trySyscallTP: the tracepoint's event is there and a tracepoint program
// loads. Not attached: enabling a tracepoint patches kernel text.
func trySyscallTP() error {
	if err := features.HaveProgramType(ebpf.TracePoint); err != nil {
		return fmt.Errorf("the kernel refuses tracepoint programs: %w", err)
	}
	if _, err := os.Stat("/sys/kernel/tracing/events/syscalls/sys_enter_splice/id"); err != nil {
		return errors.New("no syscalls:sys_enter_splice event (CONFIG_FTRACE_SYSCALLS, tracefs)")
	}
	return nil
}

func tryTracing(kspec *btf.Spec, at ebpf.AttachType) error {
	if kspec == nil {
		return errors.New("no kernel BTF")
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   at,
		AttachTo:     "tcp_sendmsg",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("the kernel refuses the program: %w", err)
	}
	return p.Close()
}

func tryLSM(kspec *btf.Spec) error {
	if kspec == nil {
		return errors.New("no kernel BTF")
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.LSM,
		AttachType:   ebpf.AttachLSMMac,
		AttachTo:     "socket_connect",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("the kernel refuses the program: %w", err)
	}
	p.Close()
	const lsmList = "/sys/kernel/security/lsm"
	if _, err := os.Stat(lsmList); err != nil {
		unix.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, "")
	}
	lsms, err := os.ReadFile(lsmList)
	if err != nil {
		return fmt.Errorf("the program loads, but the active LSMs are unknown: %w", err)
	}
	if !slices.Contains(strings.Split(strings.TrimSpace(string(lsms)), ","), "bpf") {
		return fmt.Errorf("the program loads, but bpf is not among the active LSMs (%s; boot with lsm=...,bpf)", strings.TrimSpace(string(lsms)))
	}
	return nil
}

func tryKprobe() error {
	if err := features.HaveProgramType(ebpf.Kprobe); err != nil {
		return fmt.Errorf("the kernel refuses kprobe programs: %w", err)
	}
	if _, err := os.Stat("/sys/kernel/tracing/kprobe_events"); err != nil {
		return errors.New("the kernel has no kprobe events (CONFIG_KPROBES, CONFIG_KPROBE_EVENTS)")
	}
	return nil
}

// ensureTracefs mounts tracefs where it is not mounted, as patu load
// mounts bpffs: kprobes and tracepoints are attached through it.
func ensureTracefs() {
	const dir = "/sys/kernel/tracing"
	if _, err := os.Stat(dir + "/events"); err == nil {
		return
	}
	if _, err := os.Stat(dir); err == nil {
		unix.Mount("tracefs", dir, "tracefs", 0, "")
	}
}
