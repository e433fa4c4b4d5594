package cniplugin

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/pods"
)

// AnnotationsCapability is the capability through which containerd and
// CRI-O pass the pod's annotations in runtimeConfig. A runtime sends them
// only to a plugin whose configuration declares it.
const AnnotationsCapability = "io.kubernetes.cri.pod-annotations"

// NetConf is the plugin's configuration, as the runtime passes it on stdin.
type NetConf struct {
	types.PluginConf
	// BPFFS is the pin directory of a loaded Patu (bpf.DefaultPinDir when
	// empty).
	BPFFS string `json:"bpffs,omitempty"`
	// LogFile, when set, gets one line per decision and failure, appended.
	LogFile string `json:"logFile,omitempty"`
	// RuntimeConfig holds what the runtime passes for declared
	// capabilities.
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitzero"`
	// LegacyAttachments is the GC list under the key that libcni before
	// CNI #1101 used; libcni still sends both.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// PortMappingsCapability is the capability through which runtimes pass a
// pod's hostPorts (the portmap plugin declares it too); the XDP path
// translates them.
const PortMappingsCapability = "portMappings"

// RuntimeConfig is the runtimeConfig object of NetConf.
type RuntimeConfig struct {
	// PodAnnotations are the pod's annotations, sent with the
	// AnnotationsCapability; pods.OptedOut reads the opt-out from them.
	PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
	// PortMappings are the pod's hostPorts, sent with the
	// PortMappingsCapability.
	PortMappings []PortMapping `json:"portMappings,omitempty"`
}

// PortMapping is one entry of the portMappings capability, as the portmap
// plugin reads it.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// hostPorts converts the port mappings for package pods. Mappings it
// cannot translate (SCTP, port 0, a host address that does not parse) are
// returned as problems and left to portmap's normal path.
func (rc RuntimeConfig) hostPorts() (out []pods.HostPort, problems []error) {
	for _, m := range rc.PortMappings {
		var proto uint8
		switch strings.ToLower(m.Protocol) {
		case "", "tcp":
			proto = 6
		case "udp":
			proto = 17
		default:
			problems = append(problems, fmt.Errorf("hostPort %d/%s: only tcp and udp take the XDP path", m.HostPort, m.Protocol))
			continue
		}
		if m.HostPort <= 0 || m.HostPort > 65535 || m.ContainerPort <= 0 || m.ContainerPort > 65535 {
			problems = append(problems, fmt.Errorf("hostPort %d → %d: port out of range", m.HostPort, m.ContainerPort))
			continue
		}
		// No host IP: every local address of both families; 0.0.0.0 and
		// :: are every local address of theirs.
		var ip netip.Addr
		if m.HostIP != "" {
			var err error
			if ip, err = netip.ParseAddr(m.HostIP); err != nil {
				problems = append(problems, fmt.Errorf("hostPort %d: host IP: %w", m.HostPort, err))
				continue
			}
			ip = ip.Unmap()
		}
		out = append(out, pods.HostPort{HostIP: ip, Proto: proto, HostPort: uint16(m.HostPort), ContainerPort: uint16(m.ContainerPort)})
	}
	return out, problems
}

// pinDir returns the pin directory the configuration names.
func (c *NetConf) pinDir() string {
	if c.BPFFS == "" {
		return bpf.DefaultPinDir
	}
	return c.BPFFS
}

// validAttachments returns the sandbox ids GC must keep, and whether the
// runtime sent a list at all.
func (c *NetConf) validAttachments() (map[string]bool, bool) {
	list := c.ValidAttachments
	if list == nil {
		list = c.LegacyAttachments
	}
	if list == nil {
		return nil, false
	}
	valid := make(map[string]bool, len(list))
	for _, a := range list {
		valid[a.ContainerID] = true
	}
	return valid, true
}

// parseConf decodes the configuration on stdin and, when withPrev is set
// and it is present, its prevResult (in the configuration's cniVersion, as
// the spec has it).
func parseConf(stdin []byte, withPrev bool) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "patu: parse network configuration", err.Error())
	}
	if withPrev && conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "patu: parse prevResult", err.Error())
		}
	}
	return conf, nil
}

// errNoPrevResult is what a chained-only command says without prevResult.
func errNoPrevResult(cmd string) error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		"patu: "+cmd+" needs prevResult: patu is a chained plugin and must follow an interface plugin such as bridge in a conflist", "")
}

// currentResult converts the configuration's prevResult to the current
// result type, for reading only: what ADD prints is the original.
func currentResult(conf *NetConf) (*current.Result, error) {
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "patu: convert prevResult to CNI "+current.ImplementedSpecVersion, err.Error())
	}
	return res, nil
}

// PodArgs are the Kubernetes names a runtime passes in CNI_ARGS. The
// field names are the keys: types.LoadArgs matches them literally.
type PodArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// parseArgs decodes CNI_ARGS. Keys other than the K8S_POD_* ones are
// refused unless the runtime sets IgnoreUnknown, as every CNI plugin does;
// containerd, CRI-O and podman all set it.
func parseArgs(s string) (PodArgs, error) {
	var a PodArgs
	if err := types.LoadArgs(s, &a); err != nil {
		return a, types.NewError(types.ErrInvalidEnvironmentVariables, "patu: parse CNI_ARGS", err.Error())
	}
	return a, nil
}

// podInterface returns the index in res.Interfaces of the pod's interface:
// the one named ifName inside a sandbox. -1 when there is none.
func podInterface(res *current.Result, ifName string) int {
	for i, iface := range res.Interfaces {
		if iface != nil && iface.Name == ifName && iface.Sandbox != "" {
			return i
		}
	}
	return -1
}

// podIPs returns the pod's addresses in res, IPv4 and IPv6, in the order of
// the result, without duplicates, and at most bpf.MaxPodIPs of them (the
// count before the cut is returned too). An address belongs to the pod
// when its interface index names ifName in a sandbox, or when it names no
// interface (optional in results before 1.0.0): a plugin gives host-side
// addresses, such as bridge's gateway, an interface index.
func podIPs(res *current.Result, ifName string) (ips []netip.Addr, total int) {
	seen := map[netip.Addr]bool{}
	for _, c := range res.IPs {
		if c == nil {
			continue
		}
		if c.Interface != nil {
			i := *c.Interface
			if i < 0 || i >= len(res.Interfaces) || res.Interfaces[i] == nil ||
				res.Interfaces[i].Name != ifName || res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		ip, ok := netip.AddrFromSlice(c.Address.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !ip.IsValid() || ip.IsUnspecified() || seen[ip] {
			continue
		}
		seen[ip] = true
		total++
		if len(ips) < bpf.MaxPodIPs {
			ips = append(ips, ip)
		}
	}
	return ips, total
}

// hostInterfaces returns the candidates for the host side of the pod's
// veth in res: interfaces outside any sandbox that carry a name.
func hostInterfaces(res *current.Result) []*current.Interface {
	var out []*current.Interface
	for _, iface := range res.Interfaces {
		if iface != nil && iface.Sandbox == "" && iface.Name != "" {
			out = append(out, iface)
		}
	}
	return out
}

// parseMAC parses a MAC address from a result; "" and bad ones give nil.
func parseMAC(s string) net.HardwareAddr {
	if s == "" {
		return nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil
	}
	return mac
}

// Field sizes of a pod record (bpf.podValue). A label longer than its
// field is left out of the record, so that a long pod name costs the pod
// its name in `patu pods`, not its registration.
const (
	maxNamespaceLen = 64
	maxNameLen      = 64
	maxUIDLen       = 48
	maxNetnsLen     = 192
)

// fitLabels empties the labels of p that the record cannot hold and
// returns the names of those it emptied.
func fitLabels(p *bpf.Pod) []string {
	var dropped []string
	for _, f := range []struct {
		name string
		s    *string
		max  int
	}{
		{"namespace", &p.Namespace, maxNamespaceLen},
		{"name", &p.Name, maxNameLen},
		{"uid", &p.UID, maxUIDLen},
		{"netns", &p.Netns, maxNetnsLen},
	} {
		if len(*f.s) > f.max {
			dropped = append(dropped, fmt.Sprintf("%s (%d bytes, at most %d)", f.name, len(*f.s), f.max))
			*f.s = ""
		}
	}
	return dropped
}
