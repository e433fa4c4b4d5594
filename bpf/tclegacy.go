package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/netns"
)

// Legacy tc: kernels without tcx (before 6.6) run the pod program as a
// cls_bpf filter in direct-action mode on the veth's clsact qdisc. Such a
// filter is no bpf_link: it holds the program until it is deleted with
// netlink in the network namespace of its device, and nothing pinned can
// detach it. So for each veth the pod program's directory holds a pin of
// the program itself, named tc_<netns inode>_<ifindex>: the program tells
// which filter is Patu's, and the namespace where to find it (Unload may
// run in another one than the attach did).
const (
	// pinTCLegacy marks a load that attaches pods with legacy tc.
	pinTCLegacy   = "patu_tc_legacy"
	tcLegacyPin   = "tc_"
	tcFilterName  = "patu_from_pod"
	tcFilterPrio  = 1
	tcFilterHandl = 1
)

// legacyTC reports whether this load attaches pods with legacy tc.
func (d *Datapath) legacyTC() bool {
	_, err := os.Stat(filepath.Join(d.pinDir, pinTCLegacy))
	return err == nil
}

// PodAttachMode is "tcx" or "tc" (clsact + cls_bpf): how AttachPod
// attaches the pod program with this load.
func (d *Datapath) PodAttachMode() string {
	if d.legacyTC() {
		return "tc"
	}
	return "tcx"
}

func netnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("stat own network namespace: %w", err)
	}
	return st.Ino, nil
}

func (d *Datapath) tcPin(ns uint64, ifindex uint32) string {
	return filepath.Join(d.pinDir, dirPodLinks, fmt.Sprintf("%s%d_%d", tcLegacyPin, ns, ifindex))
}

// parseTCPin returns the namespace inode and ifindex of a legacy pin.
func parseTCPin(pin string) (ns uint64, ifindex uint32, ok bool) {
	name := filepath.Base(pin)
	if !strings.HasPrefix(name, tcLegacyPin) {
		return 0, 0, false
	}
	a, b, found := strings.Cut(strings.TrimPrefix(name, tcLegacyPin), "_")
	if !found {
		return 0, 0, false
	}
	n, err1 := strconv.ParseUint(a, 10, 64)
	i, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return n, uint32(i), true
}

func ingressFilter(ifindex uint32, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: int(ifindex),
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    tcFilterHandl,
			Priority:  tcFilterPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         tcFilterName,
		DirectAction: true,
	}
}

// attachPodTC attaches prog to the ingress of ifindex (caller's netns)
// with clsact + cls_bpf, replacing Patu's filter there, and pins prog.
func (d *Datapath) attachPodTC(ifindex uint32, prog *ebpf.Program) error {
	ns, err := netnsInode()
	if err != nil {
		return err
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: int(ifindex), Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	if err := netlink.FilterReplace(ingressFilter(ifindex, prog.FD())); err != nil {
		return fmt.Errorf("attach cls_bpf filter to ifindex %d: %w", ifindex, err)
	}
	pin := d.tcPin(ns, ifindex)
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return err
	}
	if err := pinCopy(prog, pin); err != nil {
		return err
	}
	// A tcx link on the same veth from a load before would run first.
	detachPins([]string{d.podLinkPin(ifindex)})
	return nil
}

// tcAttached reports whether Patu's filter on ifindex (caller's netns)
// runs the program pinned at pin.
func tcAttached(pin string, ifindex uint32) bool {
	prog, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		return false
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return false
	}
	id, _ := info.ID()
	filters, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: int(ifindex)}}, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return false
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == tcFilterName && bf.Id == int(id) {
			return true
		}
	}
	return false
}

// inNetns runs fn in the network namespace whose inode is ns: the
// caller's when it is that one, else one found under /run/netns or among
// the processes' namespaces. Found none: the namespace, and with it the
// veth and its filter, is gone.
func inNetns(ns uint64, fn func() error) error {
	own, err := netnsInode()
	if err != nil {
		return err
	}
	if own == ns {
		return fn()
	}
	path := findNetns(ns)
	if path == "" {
		return errNetnsGone
	}
	return netns.Do(path, fn)
}

var errNetnsGone = errors.New("network namespace is gone")

func findNetns(ns uint64) string {
	var cands []string
	if ents, err := os.ReadDir(netns.RunDir); err == nil {
		for _, e := range ents {
			cands = append(cands, filepath.Join(netns.RunDir, e.Name()))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	cands = append(cands, procs...)
	// A test process may hold a namespace only on one of its threads.
	tasks, _ := filepath.Glob("/proc/self/task/[0-9]*/ns/net")
	cands = append(cands, tasks...)
	for _, c := range cands {
		var st unix.Stat_t
		if unix.Stat(c, &st) == nil && st.Ino == ns {
			return c
		}
	}
	return ""
}

// detachTCPin deletes Patu's filter that the legacy pin names, if it is
// still there, and removes the pin.
func detachTCPin(pin string) error {
	ns, ifindex, ok := parseTCPin(pin)
	if !ok {
		return nil
	}
	err := inNetns(ns, func() error {
		if !tcAttached(pin, ifindex) {
			return nil
		}
		err := netlink.FilterDel(ingressFilter(ifindex, -1))
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete cls_bpf filter on ifindex %d: %w", ifindex, err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errNetnsGone) {
		return err
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// updateTCPin moves Patu's filter named by a legacy pin to prog (an
// upgrade); a filter whose veth or namespace is gone is forgotten.
func updateTCPin(pin string, prog *ebpf.Program) error {
	ns, ifindex, ok := parseTCPin(pin)
	if !ok {
		return nil
	}
	err := inNetns(ns, func() error {
		if !tcAttached(pin, ifindex) {
			return errNetnsGone
		}
		if err := netlink.FilterReplace(ingressFilter(ifindex, prog.FD())); err != nil {
			return fmt.Errorf("update cls_bpf filter on ifindex %d: %w", ifindex, err)
		}
		return pinCopy(prog, pin)
	})
	if errors.Is(err, errNetnsGone) {
		os.Remove(pin)
		return nil
	}
	return err
}

// tcVeth returns the ifindex a legacy pin's filter runs on, if it still
// does.
func tcVeth(pin string) (uint32, bool) {
	ns, ifindex, ok := parseTCPin(pin)
	if !ok {
		return 0, false
	}
	attached := false
	inNetns(ns, func() error {
		attached = tcAttached(pin, ifindex)
		return nil
	})
	return ifindex, attached
}

// pinCopy pins prog at path (replacing what is there) through a new
// handle: pinning a handle that is already pinned moves its pin instead.
func pinCopy(prog *ebpf.Program, path string) error {
	c, err := prog.Clone()
	if err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	defer c.Close()
	return replacePin(c, path)
}
