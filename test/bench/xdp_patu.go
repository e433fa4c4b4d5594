package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/patu-dev/patu/bpf"
)

// xdpActive is Patu's XDP path, loaded for one measurement.
type xdpActive struct {
	t    *xdpTopo
	dp   *bpf.Datapath
	mode string
}

// enableXDP loads Patu under the section's pin dir and turns on its XDP
// path for the topology's pod: the program on the node's uplink (native
// mode, veth has it), the pod's routes and hostPorts, the reply program on
// its host-side veth. Everything that resolves an interface runs in the
// node's namespace.
func enableXDP(t *xdpTopo) (a *xdpActive, err error) {
	dp, err := bpf.Load(bpf.Options{PinDir: xdpPinDir})
	if err != nil {
		return nil, fmt.Errorf("load patu: %w", err)
	}
	a = &xdpActive{t: t, dp: dp}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.close())
		}
	}()
	err = t.node.Do(func() error {
		for _, ip := range []netip.Addr{t.pod.IPv4, t.pod.IPv6} {
			if err := dp.PutXDPRoute(bpf.XDPRoute{IP: ip, HostIfindex: uint32(t.pod.HostIfindex),
				HostMAC: t.node.PodMAC, PodMAC: t.pod.PodMAC}); err != nil {
				return err
			}
		}
		for _, h := range t.nodeConfig.HostPorts {
			proto := uint8(6)
			if h.Proto == "udp" {
				proto = 17
			}
			if err := dp.PutHostPort(bpf.HostPort{Proto: proto, HostPort: h.HostPort, PodIP: h.PodIP, PodPort: h.PodPort}); err != nil {
				return err
			}
		}
		if err := dp.AttachPod(uint32(t.pod.HostIfindex)); err != nil {
			return err
		}
		mode, err := dp.AttachXDP(t.uplink, bpf.XDPNative)
		a.mode = string(mode)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("enable XDP: %w", err)
	}
	return a, nil
}

// counters reads the XDP path's counters, flattened.
func (a *xdpActive) counters() (map[string]uint64, error) {
	c, err := a.dp.XDPCounters()
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{
		"redirect_pod": c.RedirectPod, "redirect_hostport": c.RedirectHostPort, "redirect_error": c.RedirectError,
		"flow_insert": c.FlowInsert, "flow_insert_fail": c.FlowInsertFail, "reply_nat": c.ReplyNAT,
		"reply_redirect": c.ReplyRedirect, "reply_redirect_neigh": c.ReplyRedirectNeigh, "reply_pass": c.ReplyPass,
	}
	for k, v := range c.Pass {
		m["pass_"+k] = v
	}
	return m, nil
}

// close detaches and unloads everything enableXDP did: the next normal
// run must find the node as a node without Patu has it.
func (a *xdpActive) close() error {
	var errs []error
	if a.dp != nil {
		errs = append(errs, a.t.node.Do(func() error {
			return errors.Join(a.dp.DetachXDP(a.t.uplink), a.dp.DetachPod(uint32(a.t.pod.HostIfindex)))
		}))
		a.dp.Close()
		a.dp = nil
	}
	errs = append(errs, unloadXDPPins())
	return errors.Join(errs...)
}

// unloadXDPPins removes the section's pins (and what a crashed run left).
func unloadXDPPins() error {
	if _, err := bpf.Unload(xdpPinDir); err != nil {
		return fmt.Errorf("unload %s: %w", xdpPinDir, err)
	}
	return nil
}
