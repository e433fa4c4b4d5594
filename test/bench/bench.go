package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/sockperf"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/pods"
)

// path is one of the data paths compared side by side.
type path string

const (
	pathBridge   path = "bridge"   // pod A → veth → bridge → veth → pod B, Patu not loaded
	pathPatu     path = "patu"     // the same pods registered with Patu: its default, the local packet path
	pathBigTCP   path = "bigtcp"   // the packet path with BIG TCP on the pods' interfaces (opt-in)
	pathSocket   path = "socket"   // the same, both pods opted in to the socket path
	pathLoopback path = "loopback" // client and server in pod A over 127.0.0.1, Patu not loaded
)

var allPaths = []path{pathBridge, pathPatu, pathBigTCP, pathSocket, pathLoopback}

func (p path) patu() bool { return p == pathPatu || p == pathBigTCP || p == pathSocket }

// bigTCPSize is the GSO size of the bigtcp path, Cilium's default.
const bigTCPSize = 196608

// kind is the kind of measurement a cell makes.
type kind string

const (
	kindRR   kind = "rr"   // sockperf TCP ping-pong
	kindBulk kind = "bulk" // iperf3, one stream
	// kindVerify: a stream of a fixed size to a reader that verifies
	// every byte (patu-testpeer); with a Rate, the reader is capped at
	// that many MB/s, as one that does work on the bytes.
	kindVerify kind = "verify"
)

// cell is one measurement configuration, run on every path in every round.
type cell struct {
	Kind kind `json:"kind"`
	Size int  `json:"size"` // message size (rr), write size (bulk) or stream size (verify), bytes
	// Rate caps a verify cell's reader, MB/s (0: no cap).
	Rate int `json:"rate,omitempty"`
	// CPU pins client and server to one CPU; -1 lets the scheduler place them.
	CPU int `json:"cpu"`
	// Via is how the client reaches the server: "" its pod address, or
	// through a Service (the services section).
	Via via `json:"via,omitempty"`
}

// via is the address a cell's client dials.
type via string

const (
	viaPod       via = ""          // the server pod's own address
	viaClusterIP via = "clusterip" // a ClusterIP whose backend is the server pod, on this node
	viaRemote    via = "remote"    // a ClusterIP whose backend is on another node (over the uplink)
)

func (v via) suffix() string {
	switch v {
	case viaClusterIP:
		return " via ClusterIP"
	case viaRemote:
		return " via ClusterIP to another node"
	}
	return ""
}

func (c cell) placement() string {
	if c.CPU < 0 {
		return "sched"
	}
	return fmt.Sprintf("cpu%d", c.CPU)
}

func (c cell) String() string {
	switch c.Kind {
	case kindRR:
		return fmt.Sprintf("rr %s %s%s", sizeName(c.Size), c.placement(), c.Via.suffix())
	case kindVerify:
		if c.Rate > 0 {
			return fmt.Sprintf("verify %s capped %d MB/s%s", sizeName(c.Size), c.Rate, c.Via.suffix())
		}
		return fmt.Sprintf("verify %s%s", sizeName(c.Size), c.Via.suffix())
	}
	return fmt.Sprintf("bulk %s%s", sizeName(c.Size), c.Via.suffix())
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// sample is one run of one cell on one path, with everything needed to
// check it afterwards.
type sample struct {
	Round   int       `json:"round"`
	Cell    string    `json:"cell"`
	Path    path      `json:"path"`
	Start   time.Time `json:"start"`
	Error   string    `json:"error,omitempty"`
	LoadAvg string    `json:"loadavg"` // /proc/loadavg before the run: others' load shows here

	RR   *sockperf.Result `json:"rr,omitempty"`
	Bulk *iperfResult     `json:"bulk,omitempty"`

	// CPUSec is busy time over all CPUs (/proc/stat user+nice+system+irq+
	// softirq) during the measured window, which lasts WindowSec.
	CPUSec    float64 `json:"cpu_s"`
	WindowSec float64 `json:"window_s"`
	// KernelCPUSec is the part of CPUSec in the kernel: system + irq +
	// softirq, all CPUs.
	KernelCPUSec   float64 `json:"kernel_cpu_s"`
	KernelCPUPerGB float64 `json:"kernel_cpu_s_per_gb,omitempty"`
	// Verify is a verify cell's result.
	Verify *verifyResult `json:"verify,omitempty"`
	// Window says what bounds it: the tool's own "Starting test" and
	// "Test end" lines, or the client process's lifetime.
	Window     string  `json:"window"`
	CPUPer1kTx float64 `json:"cpu_s_per_1k_tx,omitempty"`
	CPUPerGB   float64 `json:"cpu_s_per_gb,omitempty"`
	// PodsCPUSec is the part of it charged to the two pods' cgroups. The
	// machine is shared: CPUSec also counts whatever else ran, PodsCPUSec
	// misses softirq work done in ksoftirqd or on an idle CPU. The gap
	// between the two, compared across paths, shows how clean a run was.
	PodsCPUSec     float64 `json:"pods_cpu_s"`
	PodsCPUPer1kTx float64 `json:"pods_cpu_s_per_1k_tx,omitempty"`
	PodsCPUPerGB   float64 `json:"pods_cpu_s_per_gb,omitempty"`

	// Veth is the packet count the bridge handed both pods' host-side
	// veths during the run: the bridge path moves every segment over
	// them, a redirected connection little more than its handshake (what
	// the packet path hands a veth itself, a bulk direction's, is not
	// counted).
	Veth uint64 `json:"veth_packets"`
	// Patu is the counter delta of the run (patu path only).
	Patu *patuDelta `json:"patu,omitempty"`

	Output string `json:"output,omitempty"` // raw tool output, kept when the run failed (or with -keep-output)
}

func (s sample) ok() bool { return s.Error == "" }

// patuDelta is what Patu's counters say about one run.
type patuDelta struct {
	// The local packet path: connections admitted, what it carried.
	Admitted     uint64 `json:"admitted"`
	LocalPackets uint64 `json:"local_packets"`
	LocalBytes   uint64 `json:"local_bytes"`
	// BacklogPackets of them went through the peer's host veth.
	BacklogPackets uint64 `json:"backlog_packets"`

	SocketsInserted uint64                 `json:"sockets_inserted"`
	RedirectMsgs    uint64                 `json:"redirect_msgs"`
	RedirectBytes   uint64                 `json:"redirect_bytes"`
	FallbackMsgs    uint64                 `json:"fallback_msgs"`
	Fallback        map[string]bpf.Traffic `json:"fallback"`
	Backpressure    uint64                 `json:"backpressure_trips"`
	// LeftInMap is what Unload found still in the socket map after the
	// tools had exited: it should be 0.
	LeftInMap int `json:"left_in_map"`
}

func diffCounters(a, b bpf.Counters, la, lb bpf.LocalCounters) *patuDelta {
	d := &patuDelta{
		Admitted:        lb.Admitted - la.Admitted,
		LocalPackets:    lb.RedirectPackets - la.RedirectPackets,
		LocalBytes:      lb.RedirectBytes - la.RedirectBytes,
		BacklogPackets:  lb.BacklogPackets - la.BacklogPackets,
		SocketsInserted: b.SocketsInserted - a.SocketsInserted,
		RedirectMsgs:    b.RedirectMsgs - a.RedirectMsgs,
		RedirectBytes:   b.RedirectBytes - a.RedirectBytes,
		FallbackMsgs:    b.FallbackMsgs() - a.FallbackMsgs(),
		Backpressure:    b.BackpressureTrips - a.BackpressureTrips,
		Fallback:        map[string]bpf.Traffic{},
	}
	for r, t := range b.Fallback {
		d.Fallback[r] = bpf.Traffic{Msgs: t.Msgs - a.Fallback[r].Msgs, Bytes: t.Bytes - a.Fallback[r].Bytes}
	}
	return d
}

// Topology and pins of the benchmark. Other suites use other prefixes and
// subnets, so they can run at the same time.
const (
	topoPrefix  = "bn"
	pinDirBench = "/sys/fs/bpf/patu-bench"
	basePort    = 21000
)

var (
	subnet4 = netip.MustParsePrefix("10.201.240.0/24")
	subnet6 = netip.MustParsePrefix("fd00:201:240::/64")
)

// bench runs measurements on a two-pod topology.
type bench struct {
	log      *slog.Logger
	net      *testnet.Net
	a, b     *testnet.Pod // client pod, server pod
	duration time.Duration
	pinDir   string
	port     int
	// keepOutput keeps every tool output in the samples, not only failed
	// ones: for debugging, and for capturing parser test data.
	keepOutput bool
	// peerBin is patu-testpeer, for the verify cells.
	peerBin string
	// prefix, subnets and uplink make the topology; services, when set,
	// puts a node's netfilter with these Services in front of it (the
	// services section).
	prefix           string
	subnet4, subnet6 netip.Prefix
	uplink           bool
	services         *servicesConfig
	undoNode         func() error
}

// setupTopology sweeps what a crashed run may have left, then builds the
// two pods. The caller must call teardown, also when this fails.
func (bn *bench) setupTopology() error {
	if bn.prefix == "" {
		bn.prefix, bn.subnet4, bn.subnet6 = topoPrefix, subnet4, subnet6
	}
	if err := testnet.Sweep(bn.prefix); err != nil {
		return fmt.Errorf("sweep stale topology %q: %w", bn.prefix, err)
	}
	if _, err := bpf.Unload(bn.pinDir); err != nil {
		return fmt.Errorf("remove stale pins in %s: %w", bn.pinDir, err)
	}
	tc := testnet.Config{Prefix: bn.prefix, Subnet4: bn.subnet4, Subnet6: bn.subnet6, Pods: 2}
	if bn.services != nil {
		tc.Uplink, tc.Uplink4, tc.Uplink6 = true, bn.services.uplink4, bn.services.uplink6
	}
	nt, err := testnet.New(tc)
	if err != nil {
		return fmt.Errorf("build topology: %w", err)
	}
	bn.net = nt
	bn.a, bn.b = nt.Pods[0], nt.Pods[1]
	if bn.services != nil {
		if bn.undoNode, err = bn.services.apply(nt); err != nil {
			return err
		}
	}
	return nil
}

// teardown removes the pins and the topology; safe to call more than once.
func (bn *bench) teardown() error {
	var errs []error
	if _, err := bpf.Unload(bn.pinDir); err != nil {
		errs = append(errs, fmt.Errorf("unload %s: %w", bn.pinDir, err))
	}
	if bn.undoNode != nil {
		if err := bn.undoNode(); err != nil {
			errs = append(errs, fmt.Errorf("remove the node's rules: %w", err))
		}
		bn.undoNode = nil
	}
	if bn.net != nil {
		if err := bn.net.Close(); err != nil {
			errs = append(errs, fmt.Errorf("remove topology: %w", err))
		}
		bn.net = nil
	}
	return errors.Join(errs...)
}

// loadPatu loads Patu under the benchmark's pin dir and registers both
// pods as its CNI plugin does; socket opts them in to the socket path.
func (bn *bench) loadPatu(socket bool, bigTCP int) (*bpf.Datapath, error) {
	dp, err := bpf.Load(bpf.Options{PinDir: bn.pinDir, BigTCP: bigTCP})
	if err != nil {
		return nil, fmt.Errorf("load patu: %w", err)
	}
	if err := bn.register(dp, socket); err != nil {
		// Roll back: the next bridge run must not find Patu loaded.
		if _, uerr := bn.unloadPatu(dp); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return nil, err
	}
	return dp, nil
}

func (bn *bench) register(dp *bpf.Datapath, socket bool) error {
	for _, p := range []*testnet.Pod{bn.a, bn.b} {
		rec := bpf.Pod{ID: "bench-" + p.Name, Namespace: "bench", Name: p.Name, Netns: p.NetnsPath,
			IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: uint32(p.HostIfindex), HostMAC: p.HostMAC, PodMAC: p.PodMAC,
			Socket: socket, Source: bpf.PodFromCNI, Confirmed: true, Created: time.Now()}
		// From the node's namespace, where the pod's host veth is.
		err := bn.net.Node.Do(func() error {
			if _, err := pods.Register(dp, rec); err != nil {
				return err
			}
			return pods.SetCgroups(dp, rec.ID, []string{p.CgroupDir})
		})
		if err != nil {
			return fmt.Errorf("register %s: %w", p.Name, err)
		}
	}
	return nil
}

// unloadPatu removes Patu and returns how many sockets were still in its
// socket map (they would keep their path until they close).
func (bn *bench) unloadPatu(dp *bpf.Datapath) (int, error) {
	dp.Close()
	res, err := bpf.Unload(bn.pinDir)
	if err != nil {
		return 0, fmt.Errorf("unload patu: %w", err)
	}
	return res.LiveSockets, nil
}

func (bn *bench) nextPort() int {
	bn.port++
	// A fresh port per run: no TIME_WAIT or half-closed socket of the
	// previous run can touch this one.
	return basePort + bn.port%4000
}

func (bn *bench) vethPackets() (uint64, error) {
	var total uint64
	for _, p := range []*testnet.Pod{bn.a, bn.b} {
		rx, tx, err := p.VethPackets()
		if err != nil {
			return 0, fmt.Errorf("veth packets of %s: %w", p.Name, err)
		}
		// What the bridge handed the pods: Patu's paths hand it over
		// past the veths. (What the pods send enters the node by their
		// veths on every path.)
		_ = rx
		total += tx
	}
	return total, nil
}

// measure runs one cell on one path and never returns an error: a failure
// is recorded in the sample, so the report can say which run failed.
func (bn *bench) measure(ctx context.Context, round int, c cell, p path) sample {
	s := sample{Round: round, Cell: c.String(), Path: p, Start: time.Now()}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		s.LoadAvg = strings.TrimSpace(string(la))
	}
	if err := bn.measureInto(ctx, &s, c, p); err != nil {
		s.Error = err.Error()
	}
	return s
}

func (bn *bench) measureInto(ctx context.Context, s *sample, c cell, p path) (err error) {
	client, srv, ip := bn.a, bn.b, bn.b.IPv4
	dial := ip
	switch {
	case p == pathLoopback:
		srv, ip, dial = bn.a, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1")
	case c.Via == viaClusterIP:
		dial = bn.services.local4
	case c.Via == viaRemote:
		srv, ip, dial = bn.net.Ext, bn.net.Ext.IPv4, bn.services.remote4
	}
	var dp *bpf.Datapath
	var c0 bpf.Counters
	var l0 bpf.LocalCounters
	if p.patu() {
		big := 0
		if p == pathBigTCP {
			big = bigTCPSize
		}
		if dp, err = bn.loadPatu(p == pathSocket, big); err != nil {
			return err
		}
		if big != 0 {
			// The other paths run with the pods' usual GSO size.
			defer func() {
				for _, pod := range []*testnet.Pod{bn.a, bn.b} {
					if _, rerr := netns.SetGSOMaxSize(pod.NetnsPath, pod.PodVeth, 65536); rerr != nil && err == nil {
						err = rerr
					}
					if _, rerr := netns.SetGSOMaxSizeIndex(pod.HostIfindex, 65536); rerr != nil && err == nil {
						err = rerr
					}
				}
			}()
		}
		defer func() {
			left, uerr := bn.unloadPatu(dp)
			if s.Patu != nil {
				s.Patu.LeftInMap = left
			}
			if err == nil {
				err = uerr
			}
		}()
		if c0, err = dp.Counters(); err != nil {
			return fmt.Errorf("read counters: %w", err)
		}
		if l0, err = dp.LocalCounters(); err != nil {
			return fmt.Errorf("read counters: %w", err)
		}
	}
	v0, err := bn.vethPackets()
	if err != nil {
		return err
	}
	switch c.Kind {
	case kindRR:
		err = bn.runRR(ctx, s, c, client, srv, ip, dial)
	case kindBulk:
		err = bn.runBulk(ctx, s, c, client, srv, ip, dial)
	case kindVerify:
		err = bn.runVerify(ctx, s, c, client, srv, ip, dial)
	}
	v1, verr := bn.vethPackets()
	if verr != nil && err == nil {
		err = verr
	}
	s.Veth = v1 - v0
	if dp != nil {
		c1, cerr := dp.Counters()
		l1, lerr := dp.LocalCounters()
		if cerr = errors.Join(cerr, lerr); cerr != nil && err == nil {
			err = fmt.Errorf("read counters: %w", cerr)
		}
		s.Patu = diffCounters(c0, c1, l0, l1)
		s.Veth -= min(s.Veth, s.Patu.BacklogPackets)
	}
	return err
}

// runRR runs sockperf ping-pong: a server in srv, the client in client.
func (bn *bench) runRR(ctx context.Context, s *sample, c cell, client, srv *testnet.Pod, ip, dial netip.Addr) error {
	port := bn.nextPort()
	secs := int(bn.duration.Round(time.Second) / time.Second)
	// sockperf sleeps 2 s after connecting and needs a moment to print.
	timeout := bn.duration + 30*time.Second
	name, args := withCPU(c.CPU, "sockperf", "sr", "--tcp", "-i", ip.String(), "-p", fmt.Sprint(port))
	sv, err := startServer(ctx, srv, timeout+10*time.Second, port, name, args...)
	if err != nil {
		return err
	}
	defer sv.stop()

	// The CPU window is what sockperf itself times: from "Starting test"
	// to "Test end"; [Total Run] counts the transactions of exactly that.
	var cpuStart, cpuEnd cpuSnap
	var cpuErr error
	sawStart, sawEnd := false, false
	onLine := func(line string) {
		var err error
		switch {
		case strings.Contains(line, "Starting test"):
			cpuStart, err = bn.cpuSnap()
			sawStart = true
		case strings.Contains(line, "Test end"):
			cpuEnd, err = bn.cpuSnap()
			sawEnd = true
		}
		if cpuErr == nil {
			cpuErr = err
		}
	}
	name, args = withCPU(c.CPU, "sockperf", "pp", "--tcp", "-i", dial.String(), "-p", fmt.Sprint(port),
		"-m", fmt.Sprint(c.Size), "-t", fmt.Sprint(secs), "--full-rtt")
	out, err := runClient(ctx, client, timeout, onLine, name, args...)
	if err != nil {
		s.Output = tail(out, 4000)
		return err
	}
	r, err := sockperf.Parse(out)
	if err != nil {
		s.Output = tail(out, 4000)
		return err
	}
	s.RR = &r
	if bn.keepOutput {
		s.Output = out
	}
	if !sawStart || !sawEnd {
		s.Output = tail(out, 4000)
		return errors.New("sockperf did not print its test start and end: no CPU window")
	}
	if cpuErr != nil {
		return cpuErr
	}
	s.Window = "sockperf test"
	s.setCPU(cpuStart, cpuEnd)
	s.CPUPer1kTx = s.CPUSec / float64(r.Received) * 1000
	s.PodsCPUPer1kTx = s.PodsCPUSec / float64(r.Received) * 1000
	return nil
}

// runBulk runs one iperf3 stream from client to an iperf3 -s -1 in srv.
func (bn *bench) runBulk(ctx context.Context, s *sample, c cell, client, srv *testnet.Pod, ip, dial netip.Addr) error {
	port := bn.nextPort()
	secs := int(bn.duration.Round(time.Second) / time.Second)
	timeout := bn.duration + 30*time.Second
	sv, err := startServer(ctx, srv, timeout+10*time.Second, port,
		"iperf3", "-s", "--one-off", "-B", ip.String(), "-p", fmt.Sprint(port))
	if err != nil {
		return err
	}
	defer sv.stop()
	// iperf3 -J prints only at the end, so the CPU window is the client's
	// lifetime: the test plus a few ms of set-up and teardown.
	cpuStart, err := bn.cpuSnap()
	if err != nil {
		return err
	}
	out, err := runClient(ctx, client, timeout, nil, "iperf3", "-c", dial.String(), "-p", fmt.Sprint(port),
		"-t", fmt.Sprint(secs), "-l", fmt.Sprint(c.Size), "-J")
	cpuEnd, cerr := bn.cpuSnap()
	if err == nil {
		err = cerr
	}
	if err != nil {
		s.Output = tail(out, 4000)
		return err
	}
	r, err := parseIperf3([]byte(out))
	if err != nil {
		s.Output = tail(out, 4000)
		return err
	}
	s.Bulk = &r
	if bn.keepOutput {
		s.Output = out
	}
	s.Window = "iperf3 client process"
	s.setCPU(cpuStart, cpuEnd)
	s.CPUPerGB = s.CPUSec / (float64(r.BytesReceived) / 1e9)
	s.PodsCPUPerGB = s.PodsCPUSec / (float64(r.BytesReceived) / 1e9)
	if !sv.wait(5 * time.Second) {
		bn.log.Warn("iperf3 server did not exit after its one test", "port", port)
	}
	return nil
}

// cpuSnap is the CPU time of the machine and of the pods at one moment.
type cpuSnap struct {
	at   time.Time
	sys  cpuTimes
	pods uint64 // µs, both pods' cgroups
}

// cpuSnap reads /proc/stat and the pods' cgroup CPU usage.
func (bn *bench) cpuSnap() (cpuSnap, error) {
	s := cpuSnap{at: time.Now()}
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, fmt.Errorf("read cpu times: %w", err)
	}
	if s.sys, err = parseProcStat(string(data)); err != nil {
		return s, err
	}
	for _, p := range []*testnet.Pod{bn.a, bn.b} {
		data, err := os.ReadFile(filepath.Join(p.CgroupDir, "cpu.stat"))
		if err != nil {
			return s, fmt.Errorf("read cpu usage of %s: %w", p.Name, err)
		}
		u, err := parseCgroupUsage(string(data))
		if err != nil {
			return s, fmt.Errorf("cpu usage of %s: %w", p.Name, err)
		}
		s.pods += u
	}
	return s, nil
}

// setCPU fills the CPU fields of s from the snapshots around its window.
func (s *sample) setCPU(start, end cpuSnap) {
	s.CPUSec = end.sys.busySecondsSince(start.sys)
	s.KernelCPUSec = end.sys.kernelSecondsSince(start.sys)
	s.PodsCPUSec = float64(end.pods-start.pods) / 1e6
	s.WindowSec = end.at.Sub(start.at).Seconds()
}

// verifyResult is what a verify cell's stream did.
type verifyResult struct {
	Bytes      int64   `json:"bytes"`
	DurationNS int64   `json:"duration_ns"`
	Gbps       float64 `json:"gbps"`
}

// runVerify streams c.Size bytes from client to a patu-testpeer sink in
// srv that verifies every byte, capped at c.Rate MB/s when set. The
// writer writes 64 KiB chunks without pause.
func (bn *bench) runVerify(ctx context.Context, s *sample, c cell, client, srv *testnet.Pod, ip, dial netip.Addr) error {
	if bn.peerBin == "" {
		return errors.New("patu-testpeer was not built")
	}
	port := bn.nextPort()
	timeout := 2 * time.Minute
	args := []string{"serve", "--listen", netip.AddrPortFrom(ip, uint16(port)).String(), "--mode", "sink", "--conns", "1"}
	if c.Rate > 0 {
		args = append(args, "--read-rate", fmt.Sprint(c.Rate))
	}
	sv, err := startServer(ctx, srv, timeout+10*time.Second, port, bn.peerBin, args...)
	if err != nil {
		return err
	}
	defer sv.stop()
	cpuStart, err := bn.cpuSnap()
	if err != nil {
		return err
	}
	out, err := runClient(ctx, client, timeout, nil, bn.peerBin, "client", "--connect",
		netip.AddrPortFrom(dial, uint16(port)).String(), "--mode", "stream", "--bytes", fmt.Sprint(c.Size), "--seed", "1")
	cpuEnd, cerr := bn.cpuSnap()
	if err == nil {
		err = cerr
	}
	if err != nil {
		s.Output = tail(out, 4000)
		return err
	}
	res, err := peerresult.Parse([]byte(out))
	if err != nil {
		s.Output = tail(out, 4000)
		return err
	}
	if res.Failed != 0 || res.OK != 1 || res.Bytes != int64(c.Size) {
		s.Output = tail(out, 4000)
		return fmt.Errorf("stream not intact: %d bytes, %d failed: %v", res.Bytes, res.Failed, res.Errors)
	}
	secs := time.Duration(res.DurationNS).Seconds()
	s.Verify = &verifyResult{Bytes: res.Bytes, DurationNS: res.DurationNS, Gbps: float64(res.Bytes) * 8 / secs / 1e9}
	s.Window = "patu-testpeer client process"
	s.setCPU(cpuStart, cpuEnd)
	gb := float64(res.Bytes) / 1e9
	s.CPUPerGB, s.KernelCPUPerGB = s.CPUSec/gb, s.KernelCPUSec/gb
	s.PodsCPUPerGB = s.PodsCPUSec / gb
	return nil
}
