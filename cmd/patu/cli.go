package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/hook"
	"github.com/patu-dev/patu/pods"
)

const usage = `usage: patu [--bpffs DIR] COMMAND [ARGS]

commands:
  load [--bp-shift N] [--bp-floor BYTES] [--big-tcp SIZE] [--legacy-tc]
                                           load and pin Patu (idempotent; replaces programs in place)
  unload                                   remove Patu; live connections keep working
  attach CGROUP_DIR                        attach sockops to a cgroup v2 directory (idempotent)
  detach CGROUP_DIR                        detach it (established sockets keep their path)
  endpoint add IP [--name NS/POD] [--veth HOSTVETH] [--socket] [--no-redirect]
  endpoint del IP
  endpoint list [-o json]
  status [-o json] [--state-dir DIR]       pods, attachments, endpoints, counters, hook failures
  daemon [flags]                           load, then follow the container runtime (daemon -h)
  hook [--state-dir DIR] STAGE             OCI hook for podman/CRI-O, state JSON on stdin (hook -h)
  xdp attach|detach IFACE [--mode M]       XDP fast path from an uplink to pods; bypasses netfilter (xdp -h)
  xdp exclude-port|include-port PROTO/PORT keep a destination port off the XDP path
` + installUsageLines + `
global flags:
  --bpffs DIR   pin directory (default /sys/fs/bpf/patu)
`

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func run(ctx context.Context, args []string) error {
	return runTo(ctx, os.Stdout, args)
}

func runTo(ctx context.Context, out io.Writer, args []string) error {
	global := flag.NewFlagSet("patu", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	pinDir := global.String("bpffs", bpf.DefaultPinDir, "pin directory")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, usage)
			return nil
		}
		return usagef("%v", err)
	}
	args = global.Args()
	if len(args) == 0 {
		return usagef("no command")
	}
	cmd, args := args[0], args[1:]
	if cmd == "help" {
		fmt.Fprint(out, usage)
		return nil
	}
	switch cmd {
	case "load", "unload", "attach", "detach", "endpoint", "status", "daemon", "hook", "xdp", "install", "uninstall":
	default:
		return usagef("unknown command %q", cmd)
	}
	// install and uninstall only write files: with --root they are a
	// packaging step that needs no privileges. hook must not fail a
	// rootless container whose runtime runs the system's hooks.d: it
	// reports the missing privileges as a failure inside Patu and exits 0.
	if os.Geteuid() != 0 && cmd != "install" && cmd != "uninstall" && cmd != "hook" {
		return fmt.Errorf("%s needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): run with sudo", cmd)
	}
	switch cmd {
	case "load":
		return cmdLoad(out, *pinDir, args)
	case "unload":
		return cmdUnload(out, *pinDir, args)
	case "attach", "detach":
		return cmdAttach(out, *pinDir, cmd, args)
	case "endpoint":
		return cmdEndpoint(out, *pinDir, args)
	case "status":
		return cmdStatus(out, *pinDir, args)
	case "daemon":
		return cmdDaemon(ctx, out, *pinDir, args)
	case "hook":
		return cmdHook(os.Stdin, out, os.Stderr, *pinDir, args)
	case "xdp":
		return cmdXDP(out, *pinDir, args)
	case "install":
		return cmdInstall(out, args)
	case "uninstall":
		return cmdUninstall(out, *pinDir, args)
	default:
		return usagef("unknown command %q", cmd)
	}
}

func cmdLoad(out io.Writer, pinDir string, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	shift := fs.Uint("bp-shift", 0, "receiver queue mark: rcvbuf << N")
	floor := fs.Uint("bp-floor", 0, "receiver queue mark floor in bytes")
	latePeer := fs.Duration("test-late-peer", 0, "")
	bigTCP := fs.Int("big-tcp", -1, "GSO size to set on each registered pod's interface (BIG TCP), 0 for none; default: keep")
	legacyTC := fs.Bool("legacy-tc", false, "attach pods' programs with clsact + cls_bpf even where the kernel has tcx")
	if err := fs.Parse(args); err != nil {
		return usagef("load: %v", err)
	}
	d, err := bpf.Load(bpf.Options{
		PinDir:            pinDir,
		BackpressureShift: uint32(*shift),
		BackpressureFloor: uint32(*floor),
		TestLatePeer:      *latePeer,
		BigTCP:            *bigTCP,
		LegacyTC:          *legacyTC,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	// The whole table, also what Load does not use (guards' features).
	feats := bpf.ProbeFeatures(bpf.ProbeOptions{ForceLegacyTC: *legacyTC})
	fmt.Fprintf(out, "patu loaded, pinned under %s; pods attach with %s\nkernel features:\n%s", pinDir, d.PodAttachMode(), feats)
	return nil
}

func cmdUnload(out io.Writer, pinDir string, args []string) error {
	if len(args) > 0 {
		return usagef("unload takes no arguments")
	}
	res, err := bpf.Unload(pinDir)
	if err != nil {
		return err
	}
	if res.NotLoaded {
		fmt.Fprintf(out, "patu is not loaded: nothing to unload (nothing pinned under %s)\n", pinDir)
		return nil
	}
	if res.LiveSockets > 0 {
		fmt.Fprintf(out, "patu unloaded; %d sockets are still in the socket map and keep their path until they close (kept: %s; patu unload again cleans up)\n", res.LiveSockets, res.Kept)
		return nil
	}
	fmt.Fprintln(out, "patu unloaded")
	return nil
}

func cmdAttach(out io.Writer, pinDir, cmd string, args []string) error {
	if len(args) != 1 {
		return usagef("%s takes one CGROUP_DIR", cmd)
	}
	d, err := bpf.Open(pinDir)
	if err != nil {
		return err
	}
	defer d.Close()
	if cmd == "attach" {
		return d.Attach(args[0])
	}
	return d.Detach(args[0])
}

func cmdEndpoint(out io.Writer, pinDir string, args []string) error {
	if len(args) == 0 {
		return usagef("endpoint needs add, del or list")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("endpoint "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	name := fs.String("name", "", "NS/POD")
	noRedirect := fs.Bool("no-redirect", false, "opt the endpoint out")
	socket := fs.Bool("socket", false, "opt the endpoint in to the socket path")
	vethName := fs.String("veth", "", "the pod's host-side veth: the packet path's route into the pod")
	format := fs.String("o", "table", "table or json")
	// Flags may follow the IP, as in "endpoint add 10.0.0.2 --name a/b".
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return usagef("endpoint %s: %v", sub, err)
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	d, err := bpf.Open(pinDir)
	if errors.Is(err, bpf.ErrNotLoaded) && sub == "list" {
		// Nothing loaded is an empty list, said plainly.
		if *format == "json" {
			return writeJSON(out, []bpf.Endpoint{})
		}
		fmt.Fprintf(out, "patu is not loaded: no endpoints (nothing pinned under %s)\n", pinDir)
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	switch sub {
	case "add", "del":
		if len(pos) != 1 {
			return usagef("endpoint %s takes one IP", sub)
		}
		ip, err := netip.ParseAddr(pos[0])
		if err != nil {
			return usagef("endpoint %s: %q is not an IP address", sub, pos[0])
		}
		if sub == "del" {
			return deleteEndpoint(d, ip)
		}
		if err := d.AddEndpoint(bpf.Endpoint{IP: ip, Name: *name, NoRedirect: *noRedirect, Socket: *socket}); err != nil {
			return err
		}
		if *vethName == "" {
			return nil
		}
		l, err := net.InterfaceByName(*vethName)
		if err != nil {
			return fmt.Errorf("endpoint add %s: veth %q: %w", ip, *vethName, err)
		}
		if err := d.PutXDPRoute(bpf.XDPRoute{IP: ip, HostIfindex: uint32(l.Index), NoLocal: *noRedirect}); err != nil {
			return err
		}
		return d.AttachPod(uint32(l.Index))
	case "list":
		eps, err := d.Endpoints()
		if err != nil {
			return err
		}
		if *format == "json" {
			return writeJSON(out, eps)
		}
		writeEndpoints(out, eps)
		return nil
	default:
		return usagef("unknown endpoint command %q", sub)
	}
}

// deleteEndpoint removes an address: its endpoint, its packet path route
// and connections, and the pod program of its veth when no other route
// leads there.
func deleteEndpoint(d *bpf.Datapath, ip netip.Addr) error {
	routes, err := d.XDPRoutes()
	if err != nil && !errors.Is(err, bpf.ErrNotLoaded) {
		return err
	}
	var veth uint32
	shared := false
	for _, r := range routes {
		if r.IP == ip {
			veth = r.HostIfindex
		}
	}
	for _, r := range routes {
		shared = shared || (r.IP != ip && r.HostIfindex == veth)
	}
	if veth != 0 {
		if err := d.DeleteXDPRoute(ip); err != nil {
			return err
		}
		if _, err := d.DeleteLocalFlows([]netip.Addr{ip}); err != nil {
			return err
		}
		if !shared {
			if err := d.DetachPod(veth); err != nil {
				return err
			}
		}
	}
	return d.DeleteEndpoint(ip)
}

func writeEndpoints(out io.Writer, eps []bpf.Endpoint) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tNAME\tREDIRECT\tSOCKET PATH")
	for _, ep := range eps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ep.IP, orDash(ep.Name), onOff(!ep.NoRedirect), onOff(ep.Socket && !ep.NoRedirect))
	}
	tw.Flush()
}

// Status is what `patu status -o json` prints.
type Status struct {
	PinDir string `json:"pin_dir"`
	// Loaded is false when nothing of Patu is pinned under PinDir; the
	// other fields are empty then.
	Loaded      bool             `json:"loaded"`
	LiveSockets int              `json:"live_sockets"`
	Attachments []bpf.Attachment `json:"attachments"`
	Endpoints   []bpf.Endpoint   `json:"endpoints"`
	Pods        []PodStatus      `json:"pods"`
	// Local is the local packet path: TCP between pods of the node.
	Local LocalStatus `json:"local"`
	// Counters are the socket path's (opt-in).
	Counters bpf.Counters `json:"counters"`
	// HookFailures are the failures `patu hook` counted, when any.
	HookFailures *hook.Failures `json:"hook_failures,omitempty"`
	XDP          XDPStatus      `json:"xdp"`
	// Features are the kernel features Patu uses, each on or off and
	// why, probed by this command; PodAttach is how pods' programs are
	// attached with the loaded Patu: tcx or tc (clsact + cls_bpf).
	Features  bpf.Features `json:"features"`
	PodAttach string       `json:"pod_attach,omitempty"`
}

// XDPStatus is the XDP fast path: where it is attached and what it holds.
type XDPStatus struct {
	Uplinks       []bpf.XDPUplink `json:"uplinks"`
	Routes        []bpf.XDPRoute  `json:"routes"`
	HostPorts     []bpf.HostPort  `json:"host_ports"`
	ExcludedPorts []bpf.PortKey   `json:"excluded_ports"`
	Flows         int             `json:"flows"`
	Counters      bpf.XDPCounters `json:"counters"`
}

// LocalStatus is the local packet path: its connections and counters.
type LocalStatus struct {
	// Open and Closing count connection directions on the path.
	Open     int               `json:"open"`
	Closing  int               `json:"closing"`
	Counters bpf.LocalCounters `json:"counters"`
}

func localStatus(d *bpf.Datapath) (LocalStatus, error) {
	var st LocalStatus
	flows, err := d.LocalFlows()
	if errors.Is(err, bpf.ErrNotLoaded) {
		return st, nil // pins of a build without it
	}
	if err != nil {
		return st, err
	}
	for _, f := range flows {
		if f.Closing {
			st.Closing++
		} else {
			st.Open++
		}
	}
	st.Counters, err = d.LocalCounters()
	return st, err
}

// PodStatus is a pod record with its live short-circuited sockets.
type PodStatus struct {
	bpf.Pod
	Sockets int `json:"sockets"`
}

func cmdStatus(out io.Writer, pinDir string, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	format := fs.String("o", "table", "table or json")
	stateDir := fs.String("state-dir", hook.DefaultStateDir, "where patu hook counts failures")
	if err := fs.Parse(args); err != nil {
		return usagef("status: %v", err)
	}
	st := Status{PinDir: pinDir, Features: bpf.ProbeFeatures(bpf.ProbeOptions{})}
	// Read first: hook failures matter most when Patu is not loaded.
	if hf, err := hook.ReadFailures(*stateDir); err != nil {
		return err
	} else if hf.Count > 0 {
		st.HookFailures = &hf
	}
	d, err := bpf.Open(pinDir)
	if errors.Is(err, bpf.ErrNotLoaded) {
		return writeNotLoaded(out, st, *format, *stateDir)
	}
	if err != nil {
		if st.HookFailures != nil {
			return fmt.Errorf("%w\n%s", err, hookFailureLine(*stateDir, *st.HookFailures))
		}
		return err
	}
	defer d.Close()
	st.Loaded = true
	st.PodAttach = d.PodAttachMode()
	if st.LiveSockets, err = d.LiveSockets(); err != nil {
		return err
	}
	if st.Attachments, err = d.Attachments(); err != nil {
		return err
	}
	if st.Endpoints, err = d.Endpoints(); err != nil {
		return err
	}
	if st.Counters, err = d.Counters(); err != nil {
		return err
	}
	if st.Pods, err = podStatus(d); err != nil {
		return err
	}
	if st.Local, err = localStatus(d); err != nil {
		return err
	}
	if st.XDP, err = xdpStatus(d); err != nil {
		return err
	}
	if *format == "json" {
		return writeJSON(out, st)
	}
	c := st.Counters
	fmt.Fprintf(out, "pinned under %s; %d connection directions on the packet path, %d sockets in the socket map\n\n",
		pinDir, st.Local.Open, st.LiveSockets)
	fmt.Fprintln(out, "attached cgroups:")
	for _, a := range st.Attachments {
		gone := ""
		if a.Gone {
			gone = " (gone)"
		}
		fmt.Fprintf(out, "  %s%s\n", a.Path, gone)
	}
	fmt.Fprintln(out, "\npods:")
	writePods(out, st.Pods)
	fmt.Fprintln(out, "\nendpoints:")
	writeEndpoints(out, st.Endpoints)
	writeLocal(out, st.Local)
	fmt.Fprintln(out, "\nsocket path (opt-in, "+pods.SocketAnnotation+"): sockets")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  seen\t%d\n  inserted\t%d\n  closed\t%d\n  skipped: not local\t%d\n  skipped: opted out\t%d\n  skipped: not opted in\t%d\n  skipped: mptcp\t%d\n  skipped: ulp/ktls\t%d\n  insert failed: state\t%d\n  insert failed: map\t%d\n  read with recvmsg\t%d\n",
		c.SocketsSeen, c.SocketsInserted, c.SocketsClosed, c.SkipNotLocal, c.SkipOptOut, c.SkipNotSocket, c.SkipMPTCP, c.SkipULP, c.InsertFailState, c.InsertFailMap, c.RecvProven)
	tw.Flush()
	fmt.Fprintln(out, "\nsocket path: traffic")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  redirected\t%d msgs\t%d bytes\n", c.RedirectMsgs, c.RedirectBytes)
	reasons := make([]string, 0, len(c.Fallback))
	for r := range c.Fallback {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		t := c.Fallback[r]
		fmt.Fprintf(tw, "  tcp: %s\t%d msgs\t%d bytes\n", strings.ReplaceAll(r, "_", " "), t.Msgs, t.Bytes)
	}
	fmt.Fprintf(tw, "  promotions to redirect\t%d\n  backpressure trips\t%d\n", c.Promotions, c.BackpressureTrips)
	if err := tw.Flush(); err != nil {
		return err
	}
	writeXDP(out, st.XDP)
	fmt.Fprintf(out, "\nkernel features (pods attach with %s):\n%s", st.PodAttach, st.Features)
	if st.HookFailures != nil {
		fmt.Fprintf(out, "\n%s\n", hookFailureLine(*stateDir, *st.HookFailures))
	}
	return nil
}

// writeNotLoaded is the status of a node where Patu is not loaded: a state
// to report, not an error (the first command on a fresh machine).
func writeNotLoaded(out io.Writer, st Status, format, stateDir string) error {
	if format == "json" {
		return writeJSON(out, st)
	}
	fmt.Fprintf(out, "patu is not loaded: nothing is pinned under %s (start it with patu load or patu daemon)\n", st.PinDir)
	fmt.Fprintf(out, "\nkernel features:\n%s", st.Features)
	if st.HookFailures != nil {
		fmt.Fprintf(out, "\n%s\n", hookFailureLine(stateDir, *st.HookFailures))
	}
	return nil
}

// writeLocal prints the local packet path's part of the status.
func writeLocal(out io.Writer, l LocalStatus) {
	c := l.Counters
	fmt.Fprintln(out, "\npacket path: TCP between pods of this node, pod to pod past the bridge and netfilter once")
	fmt.Fprintln(out, "its handshake went through them")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  connections admitted\t%d\t(of %d opened by pods; %d opted out, %d not admitted: table full)\n",
		c.Admitted, c.SYNs, c.OptedOut, c.AdmitFull)
	fmt.Fprintf(tw, "  through a translation\t%d\t(Services, NodePorts, hostPorts: matched with no Service information)\n", c.AdmittedNAT)
	fmt.Fprintf(tw, "  answers not matched\t%d\t(the client is on another node, the node, or was masqueraded)\n", c.NotMatched)
	fmt.Fprintf(tw, "  directions open / closing\t%d / %d\n", l.Open, l.Closing)
	fmt.Fprintf(tw, "  pod to pod\t%d packets\t%d bytes\t(%d packets over 64 KiB: BIG TCP)\n", c.RedirectPackets, c.RedirectBytes, c.RedirectBig)
	fmt.Fprintf(tw, "  … by the peer's host veth\t%d packets\t%d bytes\t(bulk directions: queued as the bridge path queues them)\n", c.BacklogPackets, c.BacklogBytes)
	fmt.Fprintf(tw, "  closed\t%d FIN, %d RST\t(%d expired after the grace)\n", c.ClosedFIN, c.ClosedRST, c.Expired)
	fmt.Fprintf(tw, "  conntrack\t%d kept alive, %d ended at close, %d without entry\n", c.ConntrackRefresh, c.ConntrackClose, c.ConntrackMissing)
	if c.WrongVeth > 0 {
		fmt.Fprintf(tw, "  packets by another veth\t%d\t(left to the normal path)\n", c.WrongVeth)
	}
	tw.Flush()
}

// hookFailureLine says how often patu hook failed, and the last reason.
func hookFailureLine(stateDir string, hf hook.Failures) string {
	s := fmt.Sprintf("OCI hook failures: %d (containers started without redirect; %s)", hf.Count,
		filepath.Join(stateDir, hook.FailuresFile))
	if n := len(hf.Recent); n > 0 {
		f := hf.Recent[n-1]
		id := f.Container
		if len(id) > 12 {
			id = id[:12]
		}
		s += fmt.Sprintf("\n  last: %s %s %s: %s", f.Time.Format(time.RFC3339), f.Stage, id, f.Error)
	}
	return s
}

func podStatus(d *bpf.Datapath) ([]PodStatus, error) {
	all, err := d.Pods()
	if err != nil {
		return nil, err
	}
	socks, err := d.SocketsByAddr()
	if err != nil {
		return nil, err
	}
	out := make([]PodStatus, 0, len(all))
	for _, p := range all {
		ps := PodStatus{Pod: p}
		for _, ip := range p.IPs {
			ps.Sockets += socks[ip]
		}
		out = append(out, ps)
	}
	return out, nil
}

func writePods(out io.Writer, all []PodStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  POD\tSANDBOX\tIPS\tREDIRECT\tCGROUPS\tSOCKETS\tFROM")
	for _, p := range all {
		ips := make([]string, len(p.IPs))
		for i, ip := range p.IPs {
			ips[i] = ip.String()
		}
		var from []string
		for _, s := range []struct {
			flag bpf.PodSource
			name string
		}{{bpf.PodFromCNI, "cni"}, {bpf.PodFromRuntime, "runtime"}, {bpf.PodFromHook, "hook"}} {
			if p.Source&s.flag != 0 {
				from = append(from, s.name)
			}
		}
		id := p.ID
		if len(id) > 12 {
			id = id[:12]
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%d\t%s\n", p.String(), id, orDash(strings.Join(ips, ",")),
			onOff(!p.NoRedirect), len(p.Cgroups), p.Sockets, strings.Join(from, "+"))
	}
	tw.Flush()
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func onOff(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
