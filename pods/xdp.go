package pods

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/veth"
)

// XDPAnnotation set to "false" keeps a pod off the XDP fast path: traffic
// from the uplink to it walks the normal path, with netfilter and policy.
const XDPAnnotation = "patu.io/xdp"

// XDPOptedOut reports whether annotations keep a pod off the XDP path.
func XDPOptedOut(annotations map[string]string) bool {
	return annotations[XDPAnnotation] == "false"
}

// HostPort is one of a pod's CNI portMappings: traffic to
// HostIP:HostPort goes to the pod's ContainerPort. A HostIP that is not
// valid means any local address of both families; 0.0.0.0 and :: any of
// theirs.
type HostPort struct {
	HostIP        netip.Addr
	Proto         uint8 // 6 (TCP) or 17 (UDP)
	HostPort      uint16
	ContainerPort uint16
}

// putRoutes makes each of the pod's addresses a route into its host veth,
// when the record knows the veth: the local path's (TCP with other pods)
// and, when the record knows the MACs too, the XDP path's. Without a route
// both leave the pod's traffic to the normal path.
func putRoutes(dp *bpf.Datapath, p bpf.Pod) error {
	if p.HostIfindex == 0 {
		return nil
	}
	var macs [2][]byte
	if len(p.PodMAC) == 6 && len(p.HostMAC) == 6 {
		macs = [2][]byte{p.HostMAC, p.PodMAC}
	}
	var errs []error
	for _, ip := range p.IPs {
		r := bpf.XDPRoute{IP: ip, HostIfindex: p.HostIfindex, HostMAC: macs[0], PodMAC: macs[1], Excluded: p.NoXDP, NoLocal: p.NoRedirect}
		if err := dp.PutXDPRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("xdp route %s: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}

// releaseXDP removes what the packet paths hold for addresses no pod holds
// any more: their routes, the hostPorts that lead to them, and their
// connections on the local path (the pod is gone, and a new pod may get
// the address).
func releaseXDP(dp *bpf.Datapath, released []netip.Addr) error {
	if len(released) == 0 {
		return nil
	}
	var errs []error
	if _, err := dp.DeleteLocalFlows(released); err != nil {
		errs = append(errs, err)
	}
	for _, ip := range released {
		if err := dp.DeleteXDPRoute(ip); err != nil {
			errs = append(errs, err)
		}
	}
	hps, err := dp.HostPorts()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, h := range hps {
		if slices.Contains(released, h.PodIP) {
			if err := dp.DeleteHostPort(h); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// SetHostPorts makes mappings the hostPorts of pod id: each goes to the
// pod's address of the host address's family (both families for a
// mapping on any address), and the pod's earlier mappings that are not
// listed go. A mapping another pod holds is taken over: the runtime
// gives a hostPort to one pod at a time, so the newer one is right.
func SetHostPorts(dp *bpf.Datapath, id string, mappings []HostPort) error {
	p, err := dp.LookupPod(id)
	if err != nil {
		return err
	}
	var want []bpf.HostPort
	for _, m := range mappings {
		for _, ip := range p.IPs {
			if m.HostIP.IsValid() && m.HostIP.Is4() != ip.Is4() {
				continue
			}
			h := bpf.HostPort{HostIP: m.HostIP, Proto: m.Proto, HostPort: m.HostPort, PodIP: ip, PodPort: m.ContainerPort}
			if h.HostIP.IsUnspecified() {
				// Any local address of the pod address's family, as
				// bpf.HostPort has it.
				h.HostIP = netip.Addr{}
			}
			want = append(want, h)
		}
	}
	have, err := dp.HostPorts()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range have {
		if slices.Contains(p.IPs, h.PodIP) && !slices.Contains(want, h) {
			if err := dp.DeleteHostPort(h); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, h := range want {
		if err := dp.PutHostPort(h); err != nil {
			errs = append(errs, fmt.Errorf("hostPort %d/%d → %s: %w", h.HostPort, h.Proto, netip.AddrPortFrom(h.PodIP, h.PodPort), err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("pod %s: %w", p, errors.Join(errs...))
	}
	return nil
}

// PrepareXDP readies one pod for the XDP path while an uplink has it: GRO
// on its own interface, without which the kernel drops what XDP redirects
// into the veth. (The pod program on its host veth, which sends replies of
// flows XDP delivered back out, is there since Register.) Patu notes in
// the record when it turned GRO on, so that UnprepareXDP can turn it off
// again. A pod whose veth is unknown is left to the normal path.
func PrepareXDP(dp *bpf.Datapath, p bpf.Pod) error {
	if p.HostIfindex == 0 || p.NoXDP || len(p.IPs) == 0 || p.Netns == "" {
		return nil
	}
	pair, err := veth.Find(p.Netns, p.IPs[0])
	if err != nil {
		return fmt.Errorf("pod %s: %w", p, err)
	}
	on, err := netns.GROEnabled(p.Netns, pair.PodName)
	if err != nil || on {
		return err
	}
	if err := netns.EnableGRO(p.Netns, pair.PodName); err != nil {
		return fmt.Errorf("pod %s: %w", p, err)
	}
	return setGROSet(dp, p.ID, true)
}

// UnprepareXDP undoes PrepareXDP for one pod: GRO goes back off if Patu
// turned it on.
func UnprepareXDP(dp *bpf.Datapath, p bpf.Pod) error {
	return unprepare(dp, p)
}

func unprepare(dp *bpf.Datapath, p bpf.Pod) error {
	var errs []error
	if p.GROSet && p.Netns != "" && len(p.IPs) > 0 {
		if pair, err := veth.Find(p.Netns, p.IPs[0]); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", p, err))
		} else if err := netns.SetGRO(p.Netns, pair.PodName, false); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", p, err))
		} else {
			errs = append(errs, setGROSet(dp, p.ID, false))
		}
	}
	return errors.Join(errs...)
}

// setGROSet records whether Patu turned the pod's GRO on; a record deleted
// meanwhile stays deleted.
func setGROSet(dp *bpf.Datapath, id string, on bool) error {
	p, err := dp.LookupPod(id)
	if err != nil {
		return err
	}
	p.GROSet = on
	if err := dp.PutPod(p, bpf.PodReplace); err != nil && !errors.Is(err, bpf.ErrPodNotFound) {
		return err
	}
	return nil
}

// SyncXDP prepares every recorded pod for the XDP path when an uplink has
// it, and unprepares them when none has (and opted-out ones always): run
// at attach, detach and daemon start.
func SyncXDP(dp *bpf.Datapath) error {
	ups, err := dp.XDPUplinks()
	if err != nil {
		return err
	}
	all, err := dp.Pods()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range all {
		if len(ups) == 0 || p.NoXDP {
			errs = append(errs, unprepare(dp, p))
			continue
		}
		errs = append(errs, PrepareXDP(dp, p))
	}
	return errors.Join(errs...)
}

// xdpActive reports whether some uplink has the XDP program.
func xdpActive(dp *bpf.Datapath) bool {
	ups, err := dp.XDPUplinks()
	return err == nil && len(ups) > 0
}
