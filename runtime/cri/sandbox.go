package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime"
)

// Sandbox is a pod sandbox as the runtime lists it.
type Sandbox struct {
	ID        string
	Name      string // pod name
	Namespace string // pod namespace
	UID       string // pod UID
	// Ready is the CRI state SANDBOX_READY: the sandbox's network is set
	// up and its pause process runs.
	Ready bool
	// IPs are status.network.ip followed by additional_ips, only for
	// ready sandboxes and empty for host-network pods. Values that do not
	// parse as an IP address are left out.
	IPs         []netip.Addr
	Annotations map[string]string
	Labels      map[string]string
	CreatedAt   time.Time
}

// Sandboxes lists every pod sandbox, ready or not. For ready sandboxes it
// also asks for their status, which carries the IPs. A sandbox removed
// between the list and its status call is left out of the result.
func (c *Client) Sandboxes(ctx context.Context) ([]Sandbox, error) {
	return c.listSandboxes(ctx, nil)
}

// Sandbox returns one sandbox, as Sandboxes would list it; a sandbox the
// runtime does not know gives an error matching runtime.ErrNotFound.
func (c *Client) Sandbox(ctx context.Context, id string) (Sandbox, error) {
	all, err := c.listSandboxes(ctx, &runtimeapi.PodSandboxFilter{Id: id})
	if err != nil {
		return Sandbox{}, err
	}
	for _, s := range all {
		if s.ID == id {
			return s, nil
		}
	}
	return Sandbox{}, fmt.Errorf("cri pod sandbox %s: %w", id, runtime.ErrNotFound)
}

func (c *Client) listSandboxes(ctx context.Context, filter *runtimeapi.PodSandboxFilter) ([]Sandbox, error) {
	resp, err := c.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("cri list pod sandboxes: %w", err)
	}
	out := make([]Sandbox, 0, len(resp.GetItems()))
	for _, p := range resp.GetItems() {
		s := Sandbox{
			ID:          p.GetId(),
			Name:        p.GetMetadata().GetName(),
			Namespace:   p.GetMetadata().GetNamespace(),
			UID:         p.GetMetadata().GetUid(),
			Ready:       p.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY,
			Annotations: p.GetAnnotations(),
			Labels:      p.GetLabels(),
			CreatedAt:   nanos(p.GetCreatedAt()),
		}
		if s.Ready {
			st, err := c.sandboxStatus(ctx, s.ID, false)
			if errors.Is(err, runtime.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			s.IPs = parseIPs(st.GetStatus().GetNetwork())
			// The status is newer than the list entry.
			s.Ready = st.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_READY
		}
		out = append(out, s)
	}
	return out, nil
}

func (c *Client) sandboxStatus(ctx context.Context, id string, verbose bool) (*runtimeapi.PodSandboxStatusResponse, error) {
	st, err := c.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: verbose})
	if err != nil {
		return nil, fmt.Errorf("cri pod sandbox status %s: %w", id, notFound(err))
	}
	return st, nil
}

// parseIPs returns the network's ip and additional_ips, keeping the values
// that parse as IP addresses.
func parseIPs(n *runtimeapi.PodSandboxNetworkStatus) []netip.Addr {
	var ips []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, a)
		}
	}
	add(n.GetIp())
	for _, ip := range n.GetAdditionalIps() {
		add(ip.GetIp())
	}
	return ips
}

// SandboxInfo is what a runtime's verbose sandbox status says about where
// the sandbox lives on the host.
type SandboxInfo struct {
	// Pid is the sandbox's (pause) process, 0 when it does not run.
	Pid int
	// Netns is the path of the sandbox's network namespace, e.g.
	// /var/run/netns/cni-<uuid>. Empty for host-network pods and once the
	// runtime has closed the namespace (sandbox stopped).
	Netns string
	// CgroupParent is the pod's cgroup_parent from the sandbox config, as
	// kubelet (or crictl) passed it; empty when none was given.
	CgroupParent string
	// CgroupsPath is linux.cgroupsPath of the sandbox's OCI spec: a path
	// for the cgroupfs driver ("/kubepods/pod<uid>/<id>"), "slice:prefix:name"
	// for systemd.
	CgroupsPath string
}

// sandboxInfoJSON is the part of the verbose "info" document read here.
// containerd 1.6 (pkg/cri/server.SandboxInfo), 2.x
// (internal/cri/server/podsandbox/types.SandboxInfo) and, by its
// documentation, CRI-O have "pid" and "runtimeSpec"; "config" is the CRI PodSandboxConfig marshalled
// with encoding/json, so its keys are the proto field names.
type sandboxInfoJSON struct {
	Pid int `json:"pid"`
	// NetNSClosed is set once the runtime has removed the namespace
	// (sandbox stopped); the spec still names the old path then.
	NetNSClosed bool      `json:"netNamespaceClosed"`
	RuntimeSpec *specJSON `json:"runtimeSpec"`
	Config      *struct {
		Linux *struct {
			CgroupParent string `json:"cgroup_parent"`
		} `json:"linux"`
	} `json:"config"`
	// containerd 2.x only, and the only place left with the netns once the
	// sandbox container is gone (the runtime spec is then missing). The
	// store marshals it versioned, {"Version":"v1","Metadata":{...}}, with
	// Go field names (no json tags).
	SandboxMetadata *struct {
		Metadata struct {
			NetNSPath string `json:"NetNSPath"`
		} `json:"Metadata"`
	} `json:"sandboxMetadata"`
}

// specJSON is the part of an OCI runtime spec read here.
type specJSON struct {
	Linux *struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
		CgroupsPath string `json:"cgroupsPath"`
	} `json:"linux"`
}

// SandboxInfo returns the sandbox's pid, network namespace and cgroup from
// its verbose status. A removed sandbox gives an error for which
// errors.Is(err, runtime.ErrNotFound) holds.
func (c *Client) SandboxInfo(ctx context.Context, id string) (SandboxInfo, error) {
	st, err := c.sandboxStatus(ctx, id, true)
	if err != nil {
		return SandboxInfo{}, err
	}
	info, err := parseSandboxInfo(st.GetInfo())
	if err != nil {
		return SandboxInfo{}, fmt.Errorf("cri pod sandbox %s: %w", id, err)
	}
	return info, nil
}

func parseSandboxInfo(m map[string]string) (SandboxInfo, error) {
	raw, ok := m["info"]
	if !ok {
		return SandboxInfo{}, errNoInfo
	}
	var j sandboxInfoJSON
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		return SandboxInfo{}, fmt.Errorf("decode verbose info: %w", err)
	}
	info := SandboxInfo{Pid: j.Pid}
	if j.Config != nil && j.Config.Linux != nil {
		info.CgroupParent = j.Config.Linux.CgroupParent
	}
	spec := j.RuntimeSpec
	if spec != nil && spec.Linux != nil {
		info.CgroupsPath = spec.Linux.CgroupsPath
	}
	switch {
	case j.NetNSClosed:
		// The spec's path would name a namespace that no longer exists.
	case spec != nil && spec.Linux != nil:
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type != "network" {
				continue
			}
			info.Netns = ns.Path
			// An entry without a path asks the OCI runtime for a new
			// namespace: it is the sandbox process's own.
			if info.Netns == "" && j.Pid > 0 {
				info.Netns = fmt.Sprintf("/proc/%d/ns/net", j.Pid)
			}
		}
	case j.SandboxMetadata != nil:
		info.Netns = j.SandboxMetadata.Metadata.NetNSPath
	}
	return info, nil
}
