package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/netns"
)

// pod is a pod the demo started with crictl, with one container.
type pod struct {
	name    string
	id, ctr string // sandbox and container ids
	ip      netip.Addr
	netns   string // path of the pod's network namespace
	ctrPid  int    // the container's main process
	cgroup  string // cgroup v2 directory of the container
	// hostVeth is the pod's veth in the lab's namespace, the far end of
	// its eth0.
	hostVeth    string
	hostIfindex int
}

// startPods starts the server and client pods the way a user (or kubelet)
// would: crictl runp, create, start.
func (d *demo) startPods(ctx context.Context) error {
	d.section("Start two pods with crictl, the way kubelet asks the runtime for them. Each pod has\n"+
		"a cgroup of its own (linux.cgroup_parent), as kubelet gives it; Patu attaches there.\n"+
		"(crictl here is %s --config %s, in the lab's namespace.)", crictlPath(), d.lab.CrictlConfig())
	var err error
	echo := []string{"/bin/patu-testpeer", "serve", "--listen", fmt.Sprintf("0.0.0.0:%d", echoPort), "--mode", "echo"}
	if d.server, err = d.startPod(ctx, "server", "echo", echo, true); err != nil {
		return err
	}
	if d.client, err = d.startPod(ctx, "client", "shell", []string{"sleep", "86400"}, false); err != nil {
		return err
	}
	mnt, _ := cgroup.Mount2()
	for _, p := range []*pod{d.server, d.client} {
		// The container's cgroup, below the pod's, shortened: the pod
		// directory and the container id.
		rel, _ := filepath.Rel(mnt, p.cgroup)
		d.printf("   pod %-6s  %-10s  host veth %-12s  container cgroup %s\n", p.name, p.ip, p.hostVeth, shortCgroup(rel))
	}
	// The echo server must listen before the first transfer.
	return waitListening(ctx, d.server.ctrPid, echoPort, nil)
}

// startPod writes the pod's and its container's configurations, starts
// them with crictl and reads back what the runtime made of them. With
// show, it prints the pod configuration.
func (d *demo) startPod(ctx context.Context, name, ctrName string, command []string, show bool) (*pod, error) {
	uid := newUID()
	logDir := filepath.Join(d.lab.Dir(), "pods", uid)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	// Structs rather than maps: the fields print in kubelet's order.
	var pc podConfig
	pc.Metadata.Name, pc.Metadata.Namespace, pc.Metadata.UID = name, "demo", uid
	pc.Hostname, pc.LogDirectory = name, logDir
	// Where kubelet puts a pod with the cgroupfs driver; under the lab's
	// tree, so that the lab's clean-up finds it.
	pc.Linux.CgroupParent = d.lab.PodCgroupParent(uid)
	podJSON, err := json.MarshalIndent(pc, "", "  ")
	if err != nil {
		return nil, err
	}
	var cc containerConfig
	cc.Metadata.Name, cc.Image.Image, cc.Command, cc.LogPath = ctrName, rtlab.WorkloadImage, command, ctrName+".log"
	ctrJSON, err := json.MarshalIndent(cc, "", "  ")
	if err != nil {
		return nil, err
	}
	podFile, ctrFile := filepath.Join(d.tmp, name+"-pod.json"), filepath.Join(d.tmp, name+"-container.json")
	for f, data := range map[string][]byte{podFile: podJSON, ctrFile: ctrJSON} {
		if err := os.WriteFile(f, append(data, '\n'), 0o644); err != nil {
			return nil, err
		}
	}
	if show {
		d.printf("   %s:\n%s\n", filepath.Base(podFile), indent(string(podJSON), "     "))
	}

	p := &pod{name: name}
	d.printf("   $ crictl runp %s\n", filepath.Base(podFile))
	if p.id, err = d.crictl(ctx, "runp", podFile); err != nil {
		return nil, err
	}
	d.printf("   %s\n", short(p.id))
	d.printf("   $ crictl create %s %s %s        (%s)\n", short(p.id), filepath.Base(ctrFile), filepath.Base(podFile), strings.Join(command, " "))
	if p.ctr, err = d.crictl(ctx, "create", p.id, ctrFile, podFile); err != nil {
		return nil, err
	}
	d.printf("   %s\n", short(p.ctr))
	d.printf("   $ crictl start %s\n", short(p.ctr))
	if _, err = d.crictl(ctx, "start", p.ctr); err != nil {
		return nil, err
	}
	if err := d.inspect(ctx, p); err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	return p, nil
}

// podConfig is the part of CRI's PodSandboxConfig the demo sets, in the
// JSON form crictl runp reads.
type podConfig struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
		UID       string `json:"uid"`
	} `json:"metadata"`
	Hostname     string `json:"hostname"`
	LogDirectory string `json:"log_directory"`
	Linux        struct {
		CgroupParent string `json:"cgroup_parent"`
	} `json:"linux"`
}

// containerConfig is the part of CRI's ContainerConfig the demo sets, in
// the JSON form crictl create reads.
type containerConfig struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Image struct {
		Image string `json:"image"`
	} `json:"image"`
	Command []string `json:"command"`
	LogPath string   `json:"log_path"`
}

// crictl runs crictl and returns its trimmed standard output.
func (d *demo) crictl(ctx context.Context, args ...string) (string, error) {
	out, err := d.lab.Crictl(ctx, args...)
	return strings.TrimSpace(string(out)), err
}

// inspect fills in what the runtime decided for p: address, network
// namespace, the container's pid and cgroup, and the host end of its veth.
func (d *demo) inspect(ctx context.Context, p *pod) error {
	out, err := d.crictl(ctx, "inspectp", p.id)
	if err != nil {
		return err
	}
	var sandbox struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &sandbox); err != nil {
		return fmt.Errorf("crictl inspectp: %w", err)
	}
	if p.ip, err = netip.ParseAddr(sandbox.Status.Network.IP); err != nil {
		return fmt.Errorf("crictl inspectp: address: %w", err)
	}
	for _, ns := range sandbox.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			p.netns = ns.Path
		}
	}
	if p.netns == "" {
		return fmt.Errorf("crictl inspectp: no network namespace")
	}

	if out, err = d.crictl(ctx, "inspect", p.ctr); err != nil {
		return err
	}
	var ctr struct {
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &ctr); err != nil {
		return fmt.Errorf("crictl inspect: %w", err)
	}
	if p.ctrPid = ctr.Info.Pid; p.ctrPid == 0 {
		return fmt.Errorf("crictl inspect: container %s has no pid", p.ctr)
	}
	mnt, err := cgroup.Mount2()
	if err != nil {
		return err
	}
	if p.cgroup, err = cgroup.OfPid(mnt, p.ctrPid); err != nil {
		return err
	}

	// The pod's eth0 names its peer's ifindex, which lives in the lab's
	// namespace.
	var peer int
	if err := netns.Do(p.netns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		peer = l.Attrs().ParentIndex
		return nil
	}); err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	return netns.Do(d.lab.Netns(), func() error {
		l, err := netlink.LinkByIndex(peer)
		if err != nil {
			return fmt.Errorf("host veth: %w", err)
		}
		p.hostVeth, p.hostIfindex = l.Attrs().Name, peer
		return nil
	})
}

// vethPackets returns the packets the node handed both pods through their
// host veths: on the bridge path every packet the pods receive; Patu hands
// them over past the veths (the packet path) or socket to socket.
func (d *demo) vethPackets() (uint64, error) {
	var total uint64
	err := netns.Do(d.lab.Netns(), func() error {
		for _, p := range []*pod{d.server, d.client} {
			l, err := netlink.LinkByIndex(p.hostIfindex)
			if err != nil {
				return fmt.Errorf("veth of pod %s: %w", p.name, err)
			}
			s := l.Attrs().Statistics
			if s == nil {
				return fmt.Errorf("veth of pod %s: no statistics", p.name)
			}
			total += s.TxPackets
		}
		return nil
	})
	return total, err
}

// waitRegistered waits until the pod's record is confirmed by the runtime
// and at least one of its cgroups is attached.
func waitRegistered(ctx context.Context, pinDir, sandbox string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	dp, err := bpf.Open(pinDir)
	if err != nil {
		return err
	}
	defer dp.Close()
	for {
		rec, err := dp.LookupPod(sandbox)
		if err == nil && rec.Confirmed && len(rec.Cgroups) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				return fmt.Errorf("not registered by patu after 20 s: record %+v (%v)", rec, err)
			}
			return context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newUID returns a random UUID (version 4), the form of pod UIDs.
func newUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// shortCgroup shortens the ids in a cgroup path for display:
// patu-rtlab-demo/pod168ee398…/23a4e876b5e5…
func shortCgroup(rel string) string {
	parts := strings.Split(rel, "/")
	for i, p := range parts {
		if len(p) > 16 {
			parts[i] = p[:12] + "…"
		}
	}
	return strings.Join(parts, "/")
}

// crictlPath is where hack/e2e-deps.sh installs crictl, which the lab runs.
func crictlPath() string {
	tools := os.Getenv("PATU_TOOLS")
	if tools == "" {
		tools = rtlab.DefaultTools
	}
	return filepath.Join(tools, "bin", "crictl")
}
