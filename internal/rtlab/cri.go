package rtlab

import (
	"bufio"
	"bytes"
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

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodSpec describes a pod sandbox.
type PodSpec struct {
	// Name and Namespace are the pod's metadata; Namespace defaults to
	// "default".
	Name, Namespace string
	// Annotations and Labels are the sandbox's. A chained CNI plugin
	// receives the annotations in runtimeConfig.
	Annotations, Labels map[string]string
	// PodCgroup puts the pod's containers under a per-pod cgroup, as
	// kubelet does with linux.cgroup_parent: Pod.CgroupParent, a directory
	// in every cgroup hierarchy, cgroup v2 included. Without it each
	// container has its own cgroup under /k8s.io and there is no pod level.
	PodCgroup bool
	// HostPorts are the sandbox's port mappings (kubelet's hostPort). A
	// chained CNI plugin receives them in runtimeConfig.portMappings.
	HostPorts []HostPort
}

// HostPort maps HostPort on the node to ContainerPort in the pod.
type HostPort struct {
	Protocol      string // "tcp" or "udp"
	HostPort      int32
	ContainerPort int32
	HostIP        string // "" for every address
}

// Pod is a running pod sandbox.
type Pod struct {
	// ID is the sandbox id.
	ID string
	// Name, Namespace and UID are the pod's metadata.
	Name, Namespace, UID string
	// IP is the pod's primary address (IPv4), IPs all of them (IPv4 first,
	// then IPv6 for dual-stack labs).
	IP  netip.Addr
	IPs []netip.Addr
	// Netns is the path of the pod's network namespace (a bind mount under
	// the lab directory).
	Netns string
	// Pid is the pid of the sandbox's pause process.
	Pid int
	// CgroupParent is the pod's cgroup path relative to the root of each
	// hierarchy (join it with the cgroup v2 mount point for the directory),
	// or "" without PodSpec.PodCgroup. Its containers' cgroups are
	// CgroupParent/<container id>.
	CgroupParent string
}

// ContainerSpec describes a container of the workload image.
type ContainerSpec struct {
	// Name is the container's name within the pod.
	Name string
	// Command replaces the image's entrypoint (default: sh), e.g.
	// {"sh", "-c", "nc -l -p 8080"}.
	Command []string
}

// podRecord is what the lab keeps about a pod it started.
type podRecord struct {
	config       *runtimeapi.PodSandboxConfig
	cgroupParent string
	containers   []string // ids
}

// RunPod starts a pod sandbox: the pause container in a new network
// namespace, set up by the CNI chain. It returns once the sandbox is ready
// and its address known.
func (l *Lab) RunPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	pod, err := l.runPod(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("rtlab %s: run pod %s: %w%s", l.cfg.Prefix, spec.Name, err, l.logHint())
	}
	return pod, nil
}

func (l *Lab) runPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	if spec.Name == "" {
		return nil, errors.New("no name")
	}
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	uid := newUID()
	logDir := filepath.Join(l.l.podsDir, uid)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	rec := &podRecord{}
	hostname := spec.Name
	if len(hostname) > 63 {
		hostname = hostname[:63]
	}
	rec.config = &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: spec.Name, Namespace: spec.Namespace, Uid: uid},
		Hostname:     hostname,
		LogDirectory: logDir,
		Labels:       spec.Labels,
		Annotations:  spec.Annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: namespaces()},
		},
	}
	for _, hp := range spec.HostPorts {
		proto := runtimeapi.Protocol_TCP
		if hp.Protocol == "udp" {
			proto = runtimeapi.Protocol_UDP
		}
		rec.config.PortMappings = append(rec.config.PortMappings, &runtimeapi.PortMapping{
			Protocol: proto, ContainerPort: hp.ContainerPort, HostPort: hp.HostPort, HostIp: hp.HostIP})
	}
	if spec.PodCgroup {
		rec.cgroupParent = l.PodCgroupParent(uid)
		rec.config.Linux.CgroupParent = rec.cgroupParent
	}
	rt, _ := l.clients()
	resp, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: rec.config})
	if err != nil {
		l.removeCgroupParent(rec.cgroupParent)
		os.RemoveAll(logDir)
		return nil, fmt.Errorf("RunPodSandbox: %w", err)
	}
	id := resp.GetPodSandboxId()
	l.mu.Lock()
	l.pods[id] = rec
	l.seenIDs[id] = true
	l.mu.Unlock()
	pod, err := l.podStatus(ctx, rt, id)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := l.RemovePod(rctx, id); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}
	pod.CgroupParent = rec.cgroupParent
	return pod, nil
}

// namespaces are kubelet's defaults: network and IPC shared in the pod,
// a pid namespace per container.
func namespaces() *runtimeapi.NamespaceOption {
	return &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD,
		Pid:     runtimeapi.NamespaceMode_CONTAINER,
		Ipc:     runtimeapi.NamespaceMode_POD,
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

// podStatus reads a ready sandbox's addresses, netns and pid.
func (l *Lab) podStatus(ctx context.Context, rt runtimeapi.RuntimeServiceClient, id string) (*Pod, error) {
	resp, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("PodSandboxStatus %s: %w", id, err)
	}
	st := resp.GetStatus()
	if st.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("sandbox %s is %s", id, st.GetState())
	}
	pod := &Pod{
		ID: id, Name: st.GetMetadata().GetName(), Namespace: st.GetMetadata().GetNamespace(), UID: st.GetMetadata().GetUid(),
	}
	ips := []string{st.GetNetwork().GetIp()}
	for _, a := range st.GetNetwork().GetAdditionalIps() {
		ips = append(ips, a.GetIp())
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: address %q: %w", id, s, err)
		}
		pod.IPs = append(pod.IPs, a)
	}
	pod.IP = pod.IPs[0]
	// The verbose "info" is containerd's own JSON (not part of CRI), the
	// same in 1.6 and 2.x for these fields.
	var info struct {
		Pid         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil {
		return nil, fmt.Errorf("sandbox %s: verbose info: %w", id, err)
	}
	pod.Pid = info.Pid
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			pod.Netns = ns.Path
		}
	}
	if pod.Netns == "" {
		return nil, fmt.Errorf("sandbox %s: no network namespace in its spec", id)
	}
	return pod, nil
}

// StartContainer creates and starts a container of WorkloadImage in pod
// and returns its id.
func (l *Lab) StartContainer(ctx context.Context, pod *Pod, spec ContainerSpec) (string, error) {
	id, err := l.startContainer(ctx, pod, spec)
	if err != nil {
		return "", fmt.Errorf("rtlab %s: start container %s in pod %s: %w%s", l.cfg.Prefix, spec.Name, pod.Name, err, l.logHint())
	}
	return id, nil
}

func (l *Lab) startContainer(ctx context.Context, pod *Pod, spec ContainerSpec) (string, error) {
	if spec.Name == "" {
		return "", errors.New("no name")
	}
	l.mu.Lock()
	rec := l.pods[pod.ID]
	l.mu.Unlock()
	if rec == nil {
		return "", fmt.Errorf("pod %s was not started by this lab", pod.ID)
	}
	rt, _ := l.clients()
	resp, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.ID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: spec.Name},
			Image:    &runtimeapi.ImageSpec{Image: WorkloadImage},
			Command:  spec.Command,
			LogPath:  spec.Name + ".log",
			Linux: &runtimeapi.LinuxContainerConfig{
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: namespaces()},
			},
		},
		SandboxConfig: rec.config,
	})
	if err != nil {
		return "", fmt.Errorf("CreateContainer: %w", err)
	}
	id := resp.GetContainerId()
	l.mu.Lock()
	l.logs[id] = filepath.Join(rec.config.GetLogDirectory(), spec.Name+".log")
	l.seenIDs[id] = true
	rec.containers = append(rec.containers, id)
	l.mu.Unlock()
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, rerr := rt.RemoveContainer(rctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove: %w", rerr))
		}
		return "", fmt.Errorf("StartContainer %s: %w", id, err)
	}
	return id, nil
}

// Exec runs cmd in the container ctrID through CRI ExecSync and returns
// its output and exit code; err reports only a failure to run it. The
// process is started by runc, so it is in the container's namespaces and
// cgroup. timeout bounds the command (0: none).
func (l *Lab) Exec(ctx context.Context, ctrID string, timeout time.Duration, cmd ...string) (stdout, stderr []byte, exit int, err error) {
	req := &runtimeapi.ExecSyncRequest{ContainerId: ctrID, Cmd: cmd}
	if timeout > 0 {
		// CRI counts whole seconds; round up so a short timeout is not 0
		// (which means none).
		req.Timeout = int64((timeout + time.Second - 1) / time.Second)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout+10*time.Second)
		defer cancel()
	}
	rt, _ := l.clients()
	resp, err := rt.ExecSync(ctx, req)
	if err != nil {
		return nil, nil, -1, fmt.Errorf("rtlab %s: exec %q in %s: %w%s", l.cfg.Prefix, cmd, ctrID, err, l.logHint())
	}
	return resp.GetStdout(), resp.GetStderr(), int(resp.GetExitCode()), nil
}

// StopPod stops the pod's containers and its sandbox, which tears down its
// network. A pod that is already stopped or gone is not an error.
func (l *Lab) StopPod(ctx context.Context, id string) error {
	rt, _ := l.clients()
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("rtlab %s: stop pod %s: %w%s", l.cfg.Prefix, id, err, l.logHint())
	}
	return nil
}

// RemovePod stops the pod if needed, removes it with its containers, and
// removes its per-pod cgroup. A pod that is gone is not an error.
func (l *Lab) RemovePod(ctx context.Context, id string) error {
	// containerd refuses to remove a sandbox that is still ready.
	if err := l.StopPod(ctx, id); err != nil {
		return err
	}
	rt, _ := l.clients()
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("rtlab %s: remove pod %s: %w%s", l.cfg.Prefix, id, err, l.logHint())
	}
	l.mu.Lock()
	rec := l.pods[id]
	delete(l.pods, id)
	l.mu.Unlock()
	if rec != nil {
		l.mu.Lock()
		for _, c := range rec.containers {
			delete(l.logs, c)
		}
		l.mu.Unlock()
		l.removeCgroupParent(rec.cgroupParent)
		os.RemoveAll(rec.config.GetLogDirectory())
	}
	return nil
}

// removeCgroupParent removes a pod's cgroup directory from every
// hierarchy. runc removes the containers' cgroups but leaves the parent.
// Best effort: Close tries again.
func (l *Lab) removeCgroupParent(cg string) {
	if cg == "" {
		return
	}
	mnts, err := cgroupMounts()
	if err != nil {
		return
	}
	for _, m := range mnts {
		removeEmptyTree(filepath.Join(m, cg))
	}
}

// ContainerLog returns what the container ctrID wrote to stdout and
// stderr, interleaved as it was written, from its CRI log file. The log
// goes with its pod (RemovePod).
func (l *Lab) ContainerLog(ctrID string) ([]byte, error) {
	l.mu.Lock()
	p, ok := l.logs[ctrID]
	l.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("rtlab %s: log of %s: container not started by this lab", l.cfg.Prefix, ctrID)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("rtlab %s: log of %s: %w", l.cfg.Prefix, ctrID, err)
	}
	return parseCRILog(data), nil
}

// parseCRILog extracts the payload of a CRI log file, whose lines are
// "<RFC 3339 time> <stdout|stderr> <F|P> <text>": F ends a line, P is a
// part of a longer one.
func parseCRILog(data []byte) []byte {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) < 3 {
			continue
		}
		if len(f) == 4 {
			out.WriteString(f[3])
		}
		if f[2] != "P" {
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// removeEmptyTree removes the directory dir and the empty directories
// below it, deepest first. Used on cgroup trees: rmdir removes an empty
// cgroup and fails (EBUSY) for one still in use, which is left alone.
func removeEmptyTree(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			removeEmptyTree(filepath.Join(dir, e.Name()))
		}
	}
	unix.Rmdir(dir)
}
