package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"
)

// Endpoint is a local pod address whose sockets may be redirected.
type Endpoint struct {
	IP   netip.Addr `json:"ip"`
	Name string     `json:"name,omitempty"`
	// NoRedirect opts the endpoint out: its sockets always use TCP.
	NoRedirect bool `json:"no_redirect,omitempty"`
	// Socket opts the endpoint in to the socket path: its connections
	// with another such endpoint are short-circuited socket to socket,
	// where the application can tell (see the README).
	Socket bool `json:"socket,omitempty"`
}

func endpointKey(ip netip.Addr) [16]byte {
	// IPv4 as IPv4-mapped IPv6, as the programs store it.
	return ip.Unmap().As16()
}

// AddEndpoint registers or updates a local endpoint. Only connections
// established afterwards follow the new state.
func (d *Datapath) AddEndpoint(ep Endpoint) error {
	if !ep.IP.IsValid() {
		return fmt.Errorf("add endpoint: invalid IP")
	}
	if len(ep.Name) >= 64 {
		return fmt.Errorf("add endpoint %s: name longer than 63 bytes", ep.IP)
	}
	var v redirectEndpoint
	if ep.NoRedirect {
		v.Flags |= uint32(redirectEndpointFlagsENDPOINT_NO_REDIRECT)
	}
	if ep.Socket {
		v.Flags |= uint32(redirectEndpointFlagsENDPOINT_SOCKET)
	}
	for i := 0; i < len(ep.Name); i++ {
		v.Name[i] = int8(ep.Name[i])
	}
	if err := d.endpoints.Put(endpointKey(ep.IP), v); err != nil {
		return fmt.Errorf("add endpoint %s: %w", ep.IP, err)
	}
	return nil
}

// DeleteEndpoint unregisters an endpoint. Live connections keep their path.
func (d *Datapath) DeleteEndpoint(ip netip.Addr) error {
	err := d.endpoints.Delete(endpointKey(ip))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", ip, ErrEndpointNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// Endpoints lists the registered endpoints, sorted by address.
func (d *Datapath) Endpoints() ([]Endpoint, error) {
	var (
		key [16]byte
		val redirectEndpoint
		out []Endpoint
	)
	it := d.endpoints.Iterate()
	for it.Next(&key, &val) {
		name := make([]byte, 0, len(val.Name))
		for _, c := range val.Name {
			name = append(name, byte(c))
		}
		out = append(out, Endpoint{
			IP:         netip.AddrFrom16(key).Unmap(),
			Name:       string(bytes.TrimRight(name, "\x00")),
			NoRedirect: val.Flags&uint32(redirectEndpointFlagsENDPOINT_NO_REDIRECT) != 0,
			Socket:     val.Flags&uint32(redirectEndpointFlagsENDPOINT_SOCKET) != 0,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}
