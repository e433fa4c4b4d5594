package bpf

import (
	"github.com/cilium/ebpf/link"
)

// PodAttached reports whether the pod program is attached to the
// host-side veth hostIfindex (in the caller's network namespace).
func (d *Datapath) PodAttached(hostIfindex uint32) bool {
	if ns, err := netnsInode(); err == nil && tcAttached(d.tcPin(ns, hostIfindex), hostIfindex) {
		return true
	}
	l, err := link.LoadPinnedLink(d.podLinkPin(hostIfindex), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	return err == nil && info.TCX() != nil && info.TCX().Ifindex == hostIfindex
}
