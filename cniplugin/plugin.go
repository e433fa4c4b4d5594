package cniplugin

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/pods"
)

// Versions are the CNI spec versions the plugin supports. STATUS and GC
// exist from 1.1.0; skel refuses them for older configurations.
var Versions = version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0")

// GCGrace is how old a record must be before GC may remove it. A runtime
// builds its list of valid attachments before it calls GC; an ADD that
// finishes in between is missing from the list but must not be undone.
const GCGrace = time.Minute

// Plugin runs the CNI commands; New returns one on the process's standard
// output and error, tests set their own writers.
type Plugin struct {
	// Stdout gets the result ADD prints; it must not be nil.
	Stdout io.Writer
	// Stderr gets failures, which the runtime keeps in its log (nil:
	// discarded).
	Stderr io.Writer
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// New returns a plugin on the process's standard output and error.
func New() *Plugin {
	return &Plugin{Stdout: os.Stdout, Stderr: os.Stderr}
}

// Funcs returns the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

func (p *Plugin) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Add registers the pod with Patu and prints prevResult unchanged.
//
// Input that cannot be right (no prevResult, undecodable JSON or CNI_ARGS)
// fails the ADD before anything is changed. Anything that goes wrong
// inside Patu is logged and the ADD succeeds anyway: the pod's network is
// complete without Patu, whose redirect is only a shortcut for it.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, true)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errNoPrevResult("ADD")
	}
	res, err := currentResult(conf)
	if err != nil {
		return err
	}
	pa, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	// Converted up front: a version the result cannot be printed in is bad
	// input, and must fail before the pod is registered.
	out, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "patu: prevResult cannot be printed as CNI "+conf.CNIVersion, err.Error())
	}

	log := p.logger(conf, "ADD", args.ContainerID)
	defer log.close()
	pod := bpf.Pod{
		ID:         args.ContainerID,
		Namespace:  string(pa.K8S_POD_NAMESPACE),
		Name:       string(pa.K8S_POD_NAME),
		UID:        string(pa.K8S_POD_UID),
		Netns:      args.Netns,
		NoRedirect: pods.OptedOut(conf.RuntimeConfig.PodAnnotations),
		NoXDP:      pods.XDPOptedOut(conf.RuntimeConfig.PodAnnotations),
		Socket:     pods.SocketOptedIn(conf.RuntimeConfig.PodAnnotations),
		Source:     bpf.PodFromCNI,
		Created:    p.now(),
	}
	p.register(log, conf.pinDir(), args, res, pod, conf.RuntimeConfig)

	// What types.PrintResult does, on p.Stdout.
	return out.PrintTo(p.Stdout)
}

// register fills in pod from prevResult and the kernel and records it.
// It reports failures to log only.
func (p *Plugin) register(log *logger, pinDir string, args *skel.CmdArgs, res *current.Result, pod bpf.Pod, rc RuntimeConfig) {
	dp, err := openDatapath(pinDir)
	if errors.Is(err, bpf.ErrNotLoaded) {
		log.Info("patu not loaded: pod not registered", "bpffs", pinDir, "error", err)
		return
	}
	if err != nil {
		log.Warn("open patu datapath: pod not registered", "bpffs", pinDir, "error", err)
		return
	}
	defer dp.Close()

	var total int
	pod.IPs, total = podIPs(res, args.IfName)
	l := lookupLinks(args.Netns, args.IfName, res, len(pod.IPs) == 0)
	for _, err := range l.problems {
		log.Warn("netlink lookup", "netns", args.Netns, "error", err)
	}
	if len(pod.IPs) == 0 && len(l.addrs) > 0 {
		log.Warn("prevResult names no address of the pod interface: using the interface's addresses",
			"ifname", args.IfName, "ips", l.addrs)
		total = len(l.addrs)
		pod.IPs = l.addrs[:min(len(l.addrs), bpf.MaxPodIPs)]
	}
	switch {
	case len(pod.IPs) == 0:
		log.Warn("pod has no address: recorded without endpoints", "ifname", args.IfName)
	case total > len(pod.IPs):
		log.Warn("pod has more addresses than a record holds: the first ones are registered",
			"ips", pod.IPs, "addresses", total)
	}
	pod.PodMAC, pod.HostIfindex, pod.HostMAC = l.podMAC, l.hostIndex, l.hostMAC
	if pod.HostIfindex == 0 {
		pod.HostMAC = nil
	}
	if dropped := fitLabels(&pod); len(dropped) > 0 {
		log.Warn("labels too long for the pod record: left out", "fields", strings.Join(dropped, ", "))
	}

	// Other writers (the daemon, another pod's DEL) wait: see pods.Lock.
	unlock, err := pods.Lock(dp, pods.DefaultLockTimeout)
	if err != nil {
		log.Warn("pod not registered", "error", err)
		return
	}
	defer unlock()
	got, err := pods.Register(dp, pod)
	if err != nil {
		// A record may be left without all its endpoints; DEL, GC and the
		// watcher's reconcile remove it, and CHECK reports what is missing.
		log.Warn("register pod", "pod", got.String(), "error", err)
		return
	}
	log.Info("registered", "pod", got.String(), "ips", got.IPs, "ifindex", got.HostIfindex,
		"host_mac", got.HostMAC.String(), "pod_mac", got.PodMAC.String(), "no_redirect", got.NoRedirect)

	hps, problems := rc.hostPorts()
	for _, err := range problems {
		log.Warn("hostPort left to the normal path", "error", err)
	}
	if len(hps) > 0 {
		if err := pods.SetHostPorts(dp, got.ID, hps); err != nil {
			log.Warn("record hostPorts", "error", err)
			return
		}
		log.Info("hostPorts recorded", "count", len(hps))
	}
}

// Del unregisters the pod. It is called twice per pod under containerd,
// the second time without netns and prevResult, and may come for a pod
// never registered: a missing record is success.
//
// A failure inside Patu is logged, and DEL still succeeds: a failed DEL
// keeps the pod from being removed, and the runtime retries it without end
// while Patu stays broken. What is left (Unregister keeps the record when
// it could not finish) is removed by GC and by the watcher's reconcile.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	// prevResult is not needed, and a broken one must not block DEL.
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	log := p.logger(conf, "DEL", args.ContainerID)
	defer log.close()
	dp, err := openDatapath(conf.pinDir())
	if errors.Is(err, bpf.ErrNotLoaded) {
		log.Info("patu not loaded: nothing to unregister", "bpffs", conf.pinDir())
		return nil
	}
	if err != nil {
		log.Warn("open patu datapath: pod not unregistered", "bpffs", conf.pinDir(), "error", err)
		return nil
	}
	defer dp.Close()
	unlock, err := pods.Lock(dp, pods.DefaultLockTimeout)
	if err != nil {
		log.Warn("pod not unregistered", "error", err)
		return nil
	}
	defer unlock()
	found, err := pods.Unregister(dp, args.ContainerID)
	switch {
	case err != nil:
		log.Warn("unregister pod", "error", err)
	case found:
		log.Info("unregistered")
	default:
		log.Info("not registered: nothing to unregister")
	}
	return nil
}

// Check verifies that ADD's registration is in place: the pod's record
// exists and holds the pod's addresses, and each of them is an endpoint.
//
// When Patu is not loaded it succeeds: ADD then passed the pod through
// without registering it, and the pod's network, which is what CHECK is
// about, is complete without Patu. Once Patu is loaded, the watcher
// registers such pods from the runtime's sandbox list.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, true)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errNoPrevResult("CHECK")
	}
	res, err := currentResult(conf)
	if err != nil {
		return err
	}
	dp, err := openDatapath(conf.pinDir())
	if errors.Is(err, bpf.ErrNotLoaded) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("patu: open datapath in %s: %w", conf.pinDir(), err)
	}
	defer dp.Close()
	return checkPod(dp, args.ContainerID, res, args.IfName)
}

func checkPod(dp *bpf.Datapath, id string, res *current.Result, ifName string) error {
	rec, err := dp.LookupPod(id)
	if errors.Is(err, bpf.ErrPodNotFound) {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("patu: sandbox %s is not registered: no pod record in the patu datapath", id), "")
	}
	if err != nil {
		return fmt.Errorf("patu: %w", err)
	}
	var missing []string
	want, _ := podIPs(res, ifName)
	for _, ip := range want {
		if !slices.Contains(rec.IPs, ip) {
			missing = append(missing, fmt.Sprintf("address %s not in the pod record (record has %v)", ip, rec.IPs))
		}
	}
	eps, err := dp.Endpoints()
	if err != nil {
		return fmt.Errorf("patu: %w", err)
	}
	have := make(map[netip.Addr]bool, len(eps))
	for _, ep := range eps {
		have[ep.IP] = true
	}
	for _, ip := range rec.IPs {
		if !have[ip] {
			missing = append(missing, fmt.Sprintf("address %s is not a registered endpoint", ip))
		}
	}
	if len(missing) > 0 {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("patu: pod %s is registered incompletely: %s", rec, strings.Join(missing, "; ")), "")
	}
	return nil
}

// Status reports the plugin ready, whether Patu is loaded or not.
//
// A STATUS error makes the runtime report NetworkReady=false, and the
// kubelet then creates no pod at all on the node. ADD succeeds and the pod
// network works without Patu (ADD only passes through), so Patu not being
// loaded, or being broken, is no reason to stop pods; it is logged by ADD
// and shown by the watcher and `patu status`.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	return nil
}

// GC unregisters the pods the CNI plugin registered whose sandbox is not
// among the runtime's valid attachments to this network.
//
// The runtime is authoritative for its attachments to this network, so a
// CNI-made record missing from its list is stale even when the watcher has
// confirmed it. Records only the watcher or an OCI hook made are left to
// them: they do not come from an attachment. Records younger than GCGrace
// are kept: the runtime's list may predate their ADD. Without a list at
// all (the runtime sent no cni.dev/valid-attachments) nothing is removed,
// rather than everything.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	log := p.logger(conf, "GC", "")
	defer log.close()
	valid, ok := conf.validAttachments()
	if !ok {
		log.Info("no cni.dev/valid-attachments: nothing removed")
		return nil
	}
	dp, err := openDatapath(conf.pinDir())
	if errors.Is(err, bpf.ErrNotLoaded) {
		log.Info("patu not loaded: nothing to collect", "bpffs", conf.pinDir())
		return nil
	}
	if err != nil {
		return fmt.Errorf("patu: open datapath in %s: %w", conf.pinDir(), err)
	}
	defer dp.Close()
	unlock, err := pods.Lock(dp, pods.DefaultLockTimeout)
	if err != nil {
		return fmt.Errorf("patu: gc: %w", err)
	}
	defer unlock()
	all, err := dp.Pods()
	if err != nil {
		return fmt.Errorf("patu: %w", err)
	}
	now := p.now()
	var errs []error
	for _, rec := range all {
		if rec.Source&bpf.PodFromCNI == 0 || valid[rec.ID] {
			continue
		}
		if now.Sub(rec.Created) < GCGrace {
			log.Info("stale candidate younger than the GC grace period: kept", "sandbox", rec.ID, "pod", rec.String())
			continue
		}
		if _, err := pods.Unregister(dp, rec.ID); err != nil {
			errs = append(errs, err)
			log.Warn("unregister stale pod", "sandbox", rec.ID, "pod", rec.String(), "error", err)
			continue
		}
		log.Info("unregistered stale pod", "sandbox", rec.ID, "pod", rec.String())
	}
	if len(errs) > 0 {
		return fmt.Errorf("patu: gc: %w", errors.Join(errs...))
	}
	return nil
}

// openDatapath opens the pinned maps, and returns bpf.ErrNotLoaded without
// touching bpffs when the pin directory does not exist: that is the case
// on every node where Patu is not in use, and the cheapest to tell.
func openDatapath(pinDir string) (*bpf.Datapath, error) {
	if _, err := os.Stat(pinDir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", bpf.ErrNotLoaded, pinDir)
	}
	return bpf.Open(pinDir)
}

// logger writes decisions to the configured log file and failures to it
// and to stderr, one line each.
type logger struct {
	*slog.Logger
	file *os.File
}

func (p *Plugin) logger(conf *NetConf, cmd, sandbox string) *logger {
	stderr := p.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	l := &logger{}
	hs := []slog.Handler{slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})}
	var openErr error
	if conf.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(conf.LogFile), 0o755); err != nil {
			openErr = err
		} else if l.file, err = os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err != nil {
			openErr = err
		} else {
			hs = append(hs, slog.NewTextHandler(l.file, nil))
		}
	}
	l.Logger = slog.New(slog.NewMultiHandler(hs...)).With("cmd", cmd)
	if sandbox != "" {
		l.Logger = l.Logger.With("sandbox", sandbox)
	}
	if openErr != nil {
		l.Warn("open log file", "path", conf.LogFile, "error", openErr)
	}
	return l
}

func (l *logger) close() {
	if l.file != nil {
		l.file.Close()
	}
}
