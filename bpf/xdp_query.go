package bpf

import (
	"github.com/cilium/ebpf/link"
)

// ReplyAttached reports whether the reply program is attached to the
// host-side veth hostIfindex (in the caller's network namespace).
func (d *Datapath) ReplyAttached(hostIfindex uint32) bool {
	l, err := link.LoadPinnedLink(d.replyPin(hostIfindex), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	return err == nil && info.TCX() != nil && info.TCX().Ifindex == hostIfindex
}
