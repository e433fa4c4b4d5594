package pods

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/veth"
)

// OptOutAnnotation set to "false" keeps a pod's connections with other
// pods of the node on the normal path: neither the packet path nor the
// socket path.
const OptOutAnnotation = "patu.io/redirect"

// OptedOut reports whether annotations opt a pod out of redirect.
func OptedOut(annotations map[string]string) bool {
	return annotations[OptOutAnnotation] == "false"
}

// SocketAnnotation set to "true" opts a pod in to the socket path: its
// TCP with another pod that opted in too goes socket to socket, the
// fastest path, where an application can tell (splice(2) and blocking
// reads on several threads break; see the README).
const SocketAnnotation = "patu.io/socket-redirect"

// SocketOptedIn reports whether annotations opt a pod in to the socket path.
func SocketOptedIn(annotations map[string]string) bool {
	return annotations[SocketAnnotation] == "true"
}

// endpointName is what the endpoint map shows for a pod (63 bytes at most).
func endpointName(p bpf.Pod) string {
	n := p.String()
	if len(n) > 63 {
		n = n[:63]
	}
	return n
}

// Register records a pod and registers its addresses as endpoints. The
// record is written first, so that whatever a crash leaves behind is
// reachable from a record that Unregister or a reconcile can undo. The
// fields of an existing record that p leaves empty are kept, and its
// cgroups are never dropped here: SetCgroups owns them.
func Register(dp *bpf.Datapath, p bpf.Pod) (bpf.Pod, error) {
	var dropped []netip.Addr
	if old, err := dp.LookupPod(p.ID); err == nil {
		p = merge(old, p)
		for _, ip := range old.IPs {
			if !slices.Contains(p.IPs, ip) {
				dropped = append(dropped, ip)
			}
		}
	} else if !errors.Is(err, bpf.ErrPodNotFound) {
		return p, err
	}
	if err := dp.PutPod(p, bpf.PodUpsert); err != nil {
		return p, err
	}
	if len(dropped) > 0 {
		// The pod's address changed: its old one goes, unless another
		// pod holds it by now.
		held, err := heldByOthers(dp, p.ID)
		if err != nil {
			return p, err
		}
		var released []netip.Addr
		for _, ip := range dropped {
			if held.ips[ip] {
				continue
			}
			if err := dp.DeleteEndpoint(ip); err != nil && !errors.Is(err, bpf.ErrEndpointNotFound) {
				return p, fmt.Errorf("register pod %s: %w", p, err)
			}
			released = append(released, ip)
		}
		if err := releaseXDP(dp, released); err != nil {
			return p, fmt.Errorf("register pod %s: %w", p, err)
		}
	}
	for _, ip := range p.IPs {
		err := dp.AddEndpoint(bpf.Endpoint{IP: ip, Name: endpointName(p), NoRedirect: p.NoRedirect, Socket: p.Socket})
		if err != nil {
			return p, fmt.Errorf("register pod %s: %w", p, err)
		}
	}
	// The packet paths come last: the socket path must not wait on them.
	if err := putRoutes(dp, p); err != nil {
		return p, fmt.Errorf("register pod %s: %w", p, err)
	}
	if p.HostIfindex != 0 {
		if err := dp.AttachPod(p.HostIfindex); err != nil {
			return p, fmt.Errorf("register pod %s: %w", p, err)
		}
		if err := setBigTCP(dp, p); err != nil {
			return p, fmt.Errorf("register pod %s: %w", p, err)
		}
	}
	if xdpActive(dp) {
		prepare := PrepareXDP
		if p.NoXDP {
			prepare = UnprepareXDP
		}
		if err := prepare(dp, p); err != nil {
			return p, fmt.Errorf("register: %w", err)
		}
	}
	return p, nil
}

// merge returns the record p over old: p's non-empty fields win, sources
// and cgroups accumulate, and the older creation time is kept.
func merge(old, p bpf.Pod) bpf.Pod {
	out := old
	for _, f := range []struct {
		dst *string
		src string
	}{
		{&out.Namespace, p.Namespace}, {&out.Name, p.Name}, {&out.UID, p.UID}, {&out.Netns, p.Netns},
	} {
		if f.src != "" {
			*f.dst = f.src
		}
	}
	if len(p.IPs) > 0 {
		out.IPs = p.IPs
	}
	if p.HostIfindex != 0 {
		out.HostIfindex, out.HostMAC = p.HostIfindex, p.HostMAC
	}
	if p.PodMAC != nil {
		out.PodMAC = p.PodMAC
	}
	out.NoRedirect = p.NoRedirect
	out.NoXDP = p.NoXDP
	out.Socket = p.Socket
	out.Source |= p.Source
	out.Confirmed = out.Confirmed || p.Confirmed
	for _, id := range p.Cgroups {
		if !slices.Contains(out.Cgroups, id) {
			out.Cgroups = append(out.Cgroups, id)
		}
	}
	if out.Created.IsZero() || (!p.Created.IsZero() && p.Created.Before(out.Created)) {
		out.Created = p.Created
	}
	return out
}

// Unregister undoes Register and SetCgroups for one pod: it detaches the
// pod's cgroups, deletes the endpoints no other pod holds, and deletes the
// record. Live connections keep their path. A pod that is not recorded is
// not an error: CNI DEL and stop events repeat. It reports whether a
// record was found.
func Unregister(dp *bpf.Datapath, id string) (bool, error) {
	p, err := dp.LookupPod(id)
	if errors.Is(err, bpf.ErrPodNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var errs []error
	for _, cg := range p.Cgroups {
		if err := dp.DetachID(cg); err != nil {
			errs = append(errs, err)
		}
	}
	held, err := heldByOthers(dp, p.ID)
	if err != nil {
		// Held by nothing, as far as this call knows: keep the record,
		// below, so that a retry decides again.
		errs = append(errs, err)
	}
	var released []netip.Addr
	for _, ip := range p.IPs {
		if held.ips[ip] {
			continue
		}
		if err := dp.DeleteEndpoint(ip); err != nil && !errors.Is(err, bpf.ErrEndpointNotFound) {
			errs = append(errs, err)
		}
		released = append(released, ip)
	}
	if err := releaseXDP(dp, released); err != nil {
		errs = append(errs, err)
	}
	// The containers of a podman pod share one veth: its pod program
	// goes with the last of their records.
	if p.HostIfindex != 0 && err == nil && !held.veths[p.HostIfindex] {
		if err := dp.DetachPod(p.HostIfindex); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// Keep the record: it is what a retry needs to finish the job.
		return true, fmt.Errorf("unregister pod %s: %w", p, errors.Join(errs...))
	}
	if err := dp.DeletePod(id); err != nil && !errors.Is(err, bpf.ErrPodNotFound) {
		return true, err
	}
	return true, nil
}

// holders is what the records other than one hold: addresses, and host
// veths (the containers of a podman pod share one).
type holders struct {
	ips   map[netip.Addr]bool
	veths map[uint32]bool
}

// heldByOthers returns what pods other than id hold, from one pass over
// the records: an address reused by a new pod must survive the removal of
// the old one, and so must a veth another container still uses.
func heldByOthers(dp *bpf.Datapath, id string) (holders, error) {
	h := holders{ips: map[netip.Addr]bool{}, veths: map[uint32]bool{}}
	all, err := dp.Pods()
	if err != nil {
		return h, err
	}
	for _, o := range all {
		if o.ID == id {
			continue
		}
		for _, ip := range o.IPs {
			h.ips[ip] = true
		}
		if o.HostIfindex != 0 {
			h.veths[o.HostIfindex] = true
		}
	}
	return h, nil
}

// SetCgroups makes dirs the pod's complete set of attached cgroups:
// it attaches the new ones and detaches the ones no longer listed. Dirs
// that no longer exist are left out. It
// returns ErrPodNotFound when the record went away meanwhile (the pod was
// removed), after undoing its own attachments.
func SetCgroups(dp *bpf.Datapath, id string, dirs []string) error {
	p, err := dp.LookupPod(id)
	if err != nil {
		return err
	}
	if len(dirs) > bpf.MaxPodCgroups {
		return fmt.Errorf("pod %s: %d cgroups, at most %d are tracked per pod", p, len(dirs), bpf.MaxPodCgroups)
	}
	want := make([]uint64, 0, len(dirs))
	// undo detaches what this call attached and no record owns, so that a
	// failure half-way leaves no attachment behind.
	undo := func() {
		for _, cg := range want {
			if !slices.Contains(p.Cgroups, cg) {
				dp.DetachID(cg)
			}
		}
	}
	for _, dir := range dirs {
		cg, err := cgroup.ID(dir)
		if errors.Is(err, fs.ErrNotExist) {
			// Its container exited and was removed meanwhile: nothing
			// to attach, and its link went with it.
			continue
		}
		if err != nil {
			undo()
			return fmt.Errorf("pod %s: %w", p, err)
		}
		// Attached again even when recorded: it is cheap, and it repairs a
		// link that a crash or a manual detach removed.
		err = dp.Attach(filepath.Clean(dir))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed between the two calls
		}
		if errors.Is(err, bpf.ErrSocketPathOff) {
			// Sockops serves only the socket path: with it off the
			// pod is on the packet path, which needs no cgroup.
			continue
		}
		if err != nil {
			undo()
			return fmt.Errorf("pod %s: %w", p, err)
		}
		if !slices.Contains(want, cg) {
			want = append(want, cg)
		}
	}
	var errs []error
	for _, cg := range p.Cgroups {
		if !slices.Contains(want, cg) {
			if err := dp.DetachID(cg); err != nil {
				errs = append(errs, err)
			}
		}
	}
	p.Cgroups = want
	if err := dp.PutPod(p, bpf.PodReplace); err != nil {
		if errors.Is(err, bpf.ErrPodNotFound) {
			// Unregistered while we attached: do not leave attachments
			// that no record owns.
			for _, cg := range want {
				dp.DetachID(cg)
			}
		} else {
			undo()
		}
		return err
	}
	return errors.Join(errs...)
}

// setBigTCP gives the pod's interface the GSO size patu load set (BIG TCP),
// when one is set: its TCP then builds packets that large, which the
// packet path hands to the other pod whole. The host-side veth gets it too:
// a bulk direction's packets leave through it (bpf/local.h), and a device
// cuts in software what is larger than its size.
func setBigTCP(dp *bpf.Datapath, p bpf.Pod) error {
	size, err := dp.BigTCP()
	if err != nil || size == 0 || p.Netns == "" || len(p.IPs) == 0 {
		return err
	}
	pair, err := veth.Find(p.Netns, p.IPs[0])
	if err != nil {
		return err
	}
	if _, err := netns.SetGSOMaxSize(p.Netns, pair.PodName, size); err != nil {
		return err
	}
	_, err = netns.SetGSOMaxSizeIndex(int(pair.HostIndex), size)
	return err
}
