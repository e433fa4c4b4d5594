package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
)

// Limits of a pod record; longer values are refused rather than cut, so a
// record never names the wrong thing.
const (
	MaxPodIDLen   = 64
	MaxPodIPs     = 4
	MaxPodCgroups = 16
	mapPods       = "patu_pods"
	maxPods       = 4096
)

// Who recorded a pod. A record may carry several.
const (
	PodFromCNI     PodSource = 1 << iota // the chained CNI plugin, at ADD
	PodFromRuntime                       // the watcher, from the runtime's sandbox list
	PodFromHook                          // an OCI hook
)

// PodSource is a set of Pod* flags naming who recorded a pod.
type PodSource uint8

// Pod is the address plumbing and attachments Patu keeps for one pod
// sandbox (or, for OCI hooks, one container). It lives in a pinned map, so
// the CNI plugin can write it while the daemon is down, and a restarted
// daemon finds it.
type Pod struct {
	ID        string       `json:"id"`
	Namespace string       `json:"namespace,omitempty"`
	Name      string       `json:"name,omitempty"`
	UID       string       `json:"uid,omitempty"`
	Netns     string       `json:"netns,omitempty"`
	IPs       []netip.Addr `json:"ips"`
	// HostIfindex and HostMAC are the host-side veth; PodMAC is the pod's
	// interface. Zero when unknown.
	HostIfindex uint32           `json:"host_ifindex,omitempty"`
	HostMAC     net.HardwareAddr `json:"host_mac,omitempty"`
	PodMAC      net.HardwareAddr `json:"pod_mac,omitempty"`
	// Cgroups are the cgroup ids Patu attached sockops to for this pod.
	Cgroups    []uint64 `json:"cgroups,omitempty"`
	NoRedirect bool     `json:"no_redirect,omitempty"`
	// Socket opts the pod in to the socket path (see Endpoint.Socket).
	Socket bool `json:"socket,omitempty"`
	// NoXDP keeps traffic from the uplink to the pod on the normal path
	// (netfilter, policy) even where the XDP fast path is on.
	NoXDP bool `json:"no_xdp,omitempty"`
	// GROSet: Patu turned GRO on for the pod's interface for the XDP
	// path (it was off), and turns it off again when that path goes.
	GROSet bool      `json:"gro_set,omitempty"`
	Source PodSource `json:"source"`
	// Confirmed is set once the runtime has listed the sandbox as ready;
	// an unconfirmed record may belong to a sandbox still being created.
	Confirmed bool      `json:"confirmed,omitempty"`
	Created   time.Time `json:"created"`
}

// String names the pod the way logs and status show it.
func (p Pod) String() string {
	if p.Name == "" {
		return shortID(p.ID)
	}
	return p.Namespace + "/" + p.Name
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

type podKey [MaxPodIDLen]byte

// podValue is the fixed-size map value; only user space reads it.
type podValue struct {
	Created     int64
	HostIfindex uint32
	Flags       uint8
	Source      uint8
	NIPs        uint8
	NCgroups    uint8
	HostMAC     [6]byte
	PodMAC      [6]byte
	_           [4]byte
	IPs         [MaxPodIPs][16]byte
	Cgroups     [MaxPodCgroups]uint64
	Namespace   [64]byte
	Name        [64]byte
	UID         [48]byte
	Netns       [192]byte
}

const (
	podNoRedirect = 1 << iota
	podConfirmed
	podNoXDP
	podGROSet
	podSocket
)

func putString(dst []byte, field, s string) error {
	if len(s) > len(dst) {
		return fmt.Errorf("%s longer than %d bytes", field, len(dst))
	}
	copy(dst, s)
	return nil
}

func getString(b []byte) string { return string(bytes.TrimRight(b, "\x00")) }

func encodePod(p Pod) (podKey, podValue, error) {
	var (
		k podKey
		v podValue
	)
	if p.ID == "" || len(p.ID) > MaxPodIDLen {
		return k, v, fmt.Errorf("pod id must be 1 to %d bytes", MaxPodIDLen)
	}
	copy(k[:], p.ID)
	if len(p.IPs) > MaxPodIPs {
		return k, v, fmt.Errorf("more than %d IPs", MaxPodIPs)
	}
	if len(p.Cgroups) > MaxPodCgroups {
		return k, v, fmt.Errorf("more than %d cgroups", MaxPodCgroups)
	}
	for _, f := range []struct {
		dst        []byte
		name, text string
	}{
		{v.Namespace[:], "namespace", p.Namespace},
		{v.Name[:], "name", p.Name},
		{v.UID[:], "uid", p.UID},
		{v.Netns[:], "netns path", p.Netns},
	} {
		if err := putString(f.dst, f.name, f.text); err != nil {
			return k, v, err
		}
	}
	for i, ip := range p.IPs {
		v.IPs[i] = endpointKey(ip)
	}
	v.NIPs = uint8(len(p.IPs))
	copy(v.Cgroups[:], p.Cgroups)
	v.NCgroups = uint8(len(p.Cgroups))
	copy(v.HostMAC[:], p.HostMAC)
	copy(v.PodMAC[:], p.PodMAC)
	v.HostIfindex = p.HostIfindex
	v.Source = uint8(p.Source)
	if p.NoRedirect {
		v.Flags |= podNoRedirect
	}
	if p.Socket {
		v.Flags |= podSocket
	}
	if p.Confirmed {
		v.Flags |= podConfirmed
	}
	if p.NoXDP {
		v.Flags |= podNoXDP
	}
	if p.GROSet {
		v.Flags |= podGROSet
	}
	if !p.Created.IsZero() {
		v.Created = p.Created.UnixNano()
	}
	return k, v, nil
}

func decodePod(k podKey, v podValue) Pod {
	p := Pod{
		ID:          getString(k[:]),
		Namespace:   getString(v.Namespace[:]),
		Name:        getString(v.Name[:]),
		UID:         getString(v.UID[:]),
		Netns:       getString(v.Netns[:]),
		HostIfindex: v.HostIfindex,
		Source:      PodSource(v.Source),
		NoRedirect:  v.Flags&podNoRedirect != 0,
		Socket:      v.Flags&podSocket != 0,
		Confirmed:   v.Flags&podConfirmed != 0,
		NoXDP:       v.Flags&podNoXDP != 0,
		GROSet:      v.Flags&podGROSet != 0,
	}
	if v.Created != 0 {
		p.Created = time.Unix(0, v.Created)
	}
	for i := 0; i < int(v.NIPs) && i < MaxPodIPs; i++ {
		p.IPs = append(p.IPs, netip.AddrFrom16(v.IPs[i]).Unmap())
	}
	for i := 0; i < int(v.NCgroups) && i < MaxPodCgroups; i++ {
		p.Cgroups = append(p.Cgroups, v.Cgroups[i])
	}
	if v.HostMAC != [6]byte{} {
		p.HostMAC = net.HardwareAddr(bytes.Clone(v.HostMAC[:]))
	}
	if v.PodMAC != [6]byte{} {
		p.PodMAC = net.HardwareAddr(bytes.Clone(v.PodMAC[:]))
	}
	return p
}

// openPods opens, or creates and pins, the pod record map.
func openPods(pinDir string) (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name:       mapPods,
		Type:       ebpf.Hash,
		KeySize:    MaxPodIDLen,
		ValueSize:  uint32(binary.Size(podValue{})),
		MaxEntries: maxPods,
		Pinning:    ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pinDir})
	if err != nil {
		return nil, fmt.Errorf("open pod map: %w", err)
	}
	return m, nil
}

// PutMode says whether PutPod may create or replace a record.
type PutMode int

const (
	// PodUpsert creates the record or replaces it.
	PodUpsert PutMode = iota
	// PodCreate fails with ErrPodExists when the record exists.
	PodCreate
	// PodReplace fails with ErrPodNotFound when the record is gone, so a
	// slow writer never brings back a record someone else deleted.
	PodReplace
)

// Sentinel errors of the pod record map.
var (
	ErrPodNotFound = errors.New("pod record not found")
	ErrPodExists   = errors.New("pod record exists")
)

// PutPod writes a pod record.
func (d *Datapath) PutPod(p Pod, mode PutMode) error {
	k, v, err := encodePod(p)
	if err != nil {
		return fmt.Errorf("put pod %s: %w", shortID(p.ID), err)
	}
	flags := ebpf.UpdateAny
	switch mode {
	case PodCreate:
		flags = ebpf.UpdateNoExist
	case PodReplace:
		flags = ebpf.UpdateExist
	}
	err = d.pods.Update(k, v, flags)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ebpf.ErrKeyExist):
		return fmt.Errorf("put pod %s: %w", shortID(p.ID), ErrPodExists)
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("put pod %s: %w", shortID(p.ID), ErrPodNotFound)
	}
	return fmt.Errorf("put pod %s: %w", shortID(p.ID), err)
}

// LookupPod reads one pod record.
func (d *Datapath) LookupPod(id string) (Pod, error) {
	var (
		k podKey
		v podValue
	)
	if id == "" || len(id) > MaxPodIDLen {
		return Pod{}, fmt.Errorf("lookup pod %q: %w", id, ErrPodNotFound)
	}
	copy(k[:], id)
	if err := d.pods.Lookup(k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Pod{}, fmt.Errorf("lookup pod %s: %w", shortID(id), ErrPodNotFound)
		}
		return Pod{}, fmt.Errorf("lookup pod %s: %w", shortID(id), err)
	}
	return decodePod(k, v), nil
}

// DeletePod removes a pod record; a missing record is ErrPodNotFound.
func (d *Datapath) DeletePod(id string) error {
	var k podKey
	if id == "" || len(id) > MaxPodIDLen {
		return fmt.Errorf("delete pod %q: %w", id, ErrPodNotFound)
	}
	copy(k[:], id)
	if err := d.pods.Delete(k); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete pod %s: %w", shortID(id), ErrPodNotFound)
		}
		return fmt.Errorf("delete pod %s: %w", shortID(id), err)
	}
	return nil
}

// Pods lists the pod records, sorted by namespace, name and id.
func (d *Datapath) Pods() ([]Pod, error) {
	var (
		k   podKey
		v   podValue
		out []Pod
	)
	it := d.pods.Iterate()
	for it.Next(&k, &v) {
		out = append(out, decodePod(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ID < b.ID
	})
	return out, nil
}
