package main

// The xdp section: traffic entering the node from its uplink, to a pod's
// own address and to a hostPort, over the normal path of a real node
// (bridge netfilter, conntrack, the portmap plugin's DNAT, a few thousand
// kube-proxy rules: internal/nodepath) and over Patu's XDP path, side by
// side in one run, in interleaved rounds.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/internal/pktgen"
	"github.com/patu-dev/patu/internal/sockperf"
	"github.com/vishvananda/netlink"
)

// xdpPath is one way into the pod.
type xdpPath string

const (
	xpNormalPod xdpPath = "normal-pod"      // ext → uplink → netfilter/conntrack → bridge → pod address
	xpNormalHP  xdpPath = "normal-hostport" // ext → nodeIP:hostPort → portmap DNAT → bridge → pod
	xpXDPPod    xdpPath = "xdp-pod"         // ext → uplink XDP → DEVMAP redirect → pod
	xpXDPHP     xdpPath = "xdp-hostport"    // ext → nodeIP:hostPort, translated in XDP, replies in tc
)

var xdpPaths = []xdpPath{xpNormalPod, xpXDPPod, xpNormalHP, xpXDPHP}

func (p xdpPath) xdp() bool      { return p == xpXDPPod || p == xpXDPHP }
func (p xdpPath) hostPort() bool { return p == xpNormalHP || p == xpXDPHP }

// xdpKind is what a cell measures.
type xdpKind string

const (
	xkRR    xdpKind = "rr"    // sockperf TCP ping-pong, 64 B
	xkPing  xdpKind = "ping"  // pktgen's TCP ping-pong, 64 B (IPv4 and IPv6)
	xkPPS   xdpKind = "pps"   // UDP 64 B as fast as the sender can
	xkPaced xdpKind = "paced" // UDP 64 B at a fixed rate: CPU per packet
	xkTCP   xdpKind = "tcp"   // iperf3, one stream ext → pod
)

// xdpPacedRate is the offered load of the paced cell: well below what the
// normal path carries on this VM, so that both paths carry all of it and
// the CPU they spend on it compares.
const xdpPacedRate = 50_000

type xdpCell struct {
	Kind   xdpKind `json:"kind"`
	Family int     `json:"family"` // 4 or 6
}

func (c xdpCell) String() string { return fmt.Sprintf("%s ipv%d", c.Kind, c.Family) }

func xdpCells(quick bool) []xdpCell {
	// Latency: sockperf, the reference tool, for IPv4 (Debian 12's
	// sockperf 3.7 has no IPv6), and pktgen's ping-pong for both families
	// (its IPv4 rows check it against sockperf).
	cs := []xdpCell{{xkRR, 4}, {xkPing, 4}, {xkPing, 6}, {xkPPS, 4}, {xkPaced, 4}, {xkTCP, 4}}
	if !quick {
		cs = append(cs, xdpCell{xkPPS, 6})
	}
	return cs
}

// xdpSample is one run of one cell on one path.
type xdpSample struct {
	Round   int       `json:"round"`
	Cell    string    `json:"cell"`
	Path    xdpPath   `json:"path"`
	Dst     string    `json:"dst"`
	Start   time.Time `json:"start"`
	LoadAvg string    `json:"loadavg"`
	Error   string    `json:"error,omitempty"`

	RR   *sockperf.Result `json:"rr,omitempty"`
	Ping *pktgen.RRResult `json:"ping,omitempty"`
	Bulk *iperfResult     `json:"bulk,omitempty"`
	// VethTxDropped is what the pod's host-side veth dropped on its way
	// into the pod during a bulk run: a DEVMAP redirect into a veth whose
	// peer's ring is full is dropped (no backpressure), skbs are not.
	VethTxDropped *uint64 `json:"veth_tx_dropped,omitempty"`
	PPS           *xdpPPS `json:"pps,omitempty"`

	// CPUSec is the machine's busy time over all CPUs (/proc/stat user+
	// nice+system+irq+softirq) in the window, SoftirqSec its softirq part.
	CPUSec     float64 `json:"cpu_s"`
	SoftirqSec float64 `json:"softirq_s"`
	// OwnCPUSec is the part of it the run's own tools used (xdpCPU.own).
	OwnCPUSec float64 `json:"own_cpu_s"`
	WindowSec float64 `json:"window_s"`

	// Node is what the node's netfilter counted during the run: packets
	// through FORWARD, accepted as ESTABLISHED, translated by the portmap
	// DNAT. The XDP paths should leave it near zero.
	Node *nodepath.Stats `json:"node,omitempty"`
	// XDP is the XDP path's counter delta (XDP paths only) and its mode.
	XDP     map[string]uint64 `json:"xdp,omitempty"`
	XDPMode string            `json:"xdp_mode,omitempty"`
	Output  string            `json:"output,omitempty"`
}

// xdpPPS is a UDP packet-rate run.
type xdpPPS struct {
	Offered  float64           `json:"offered_pps"` // 0: unpaced
	Send     pktgen.SendResult `json:"send"`
	Received pktgen.RecvStats  `json:"received"`
	PPS      float64           `json:"received_pps"`
	// CPU-seconds per million packets received: all CPUs, and softirq.
	CPUPerMpkt     float64 `json:"cpu_s_per_mpkt"`
	SoftirqPerMpkt float64 `json:"softirq_s_per_mpkt"`
	OwnPerMpkt     float64 `json:"own_cpu_s_per_mpkt"`
}

func (s xdpSample) ok() bool { return s.Error == "" }

// xdpReport is the section's JSON.
type xdpReport struct {
	Machine  machine           `json:"machine"`
	Config   map[string]any    `json:"config"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	NodePath map[string]any    `json:"node_path"`
	Metrics  []xdpMetric       `json:"metrics"`
	Verdicts []xdpVerdict      `json:"verdicts"`
	Samples  []xdpSample       `json:"samples"`
	Notes    []string          `json:"notes,omitempty"`
	Proof    map[string]string `json:"proof,omitempty"`
}

type xdpRun struct {
	log      *slog.Logger
	topo     *xdpTopo
	duration time.Duration
	keep     bool
}

// xdpSection runs the section, prints its table and writes its JSON to
// out (none when empty).
func xdpSection(ctx context.Context, w io.Writer, log *slog.Logger, cfg config, out string) (err error) {
	for _, tool := range []string{"sockperf", "iperf3", "ethtool", "nsenter", "iptables-restore", "ip6tables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("xdp: %s not found: run make deps (or apt-get install sockperf iperf3 ethtool util-linux iptables)", tool)
		}
	}
	if err := unloadXDPPins(); err != nil {
		return fmt.Errorf("xdp: remove stale pins in %s: %w", xdpPinDir, err)
	}
	services := 200
	topo, err := buildXDPTopo(services)
	if err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	defer func() {
		if cerr := topo.close(); cerr != nil {
			log.Error("xdp cleanup", "error", cerr)
			err = errors.Join(err, cerr)
		}
		if uerr := unloadXDPPins(); uerr != nil {
			err = errors.Join(err, uerr)
		}
	}()
	x := &xdpRun{log: log, topo: topo, duration: cfg.duration, keep: cfg.keep}
	backend, _ := nodepath.Backend()
	st, _ := nodepath.ReadStats(topo.node.NetnsPath)
	cs := xdpCells(cfg.quick)
	rep := xdpReport{Machine: describeMachine(), Started: time.Now(),
		Config: map[string]any{"runs": cfg.runs, "duration_s": cfg.duration.Seconds(), "quick": cfg.quick,
			"prefix": xdpPrefix, "pin_dir": xdpPinDir, "uplink4": xdpUplink4.String(), "pods4": xdpPods4.String(),
			"uplink6": xdpUplink6.String(), "pods6": xdpPods6.String(), "paced_pps": xdpPacedRate,
			"cells": cs, "payload_bytes": 64, "flows": 8},
		NodePath: map[string]any{"iptables_backend": backend, "rules": st.Rules, "services_per_family": services,
			"hostports": topo.nodeConfig.HostPorts, "bridge_nf_call_iptables": 1, "conntrack": "KUBE-FORWARD INVALID drop + RELATED,ESTABLISHED accept"},
	}
	total := len(cs) * len(xdpPaths) * cfg.runs
	log.Info("xdp benchmark", "cells", len(cs), "runs", cfg.runs, "duration", cfg.duration, "measurements", total,
		"node_rules", st.Rules, "iptables", backend)
	n := 0
	for round := 0; round < cfg.runs; round++ {
		for ci, c := range cs {
			for k := range xdpPaths {
				p := xdpPaths[(k+round+ci)%len(xdpPaths)]
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("xdp: interrupted after %d of %d measurements: %w", n, total, err)
				}
				s := x.measure(ctx, round, c, p)
				n++
				rep.Samples = append(rep.Samples, s)
				x.logSample(n, total, s)
			}
		}
	}
	rep.Finished = time.Now()
	rep.Metrics = xdpMetrics(cs, rep.Samples)
	rep.Verdicts = xdpVerdicts(rep.Metrics)
	rep.Notes = append(rep.Notes, xdpProofNotes(rep.Samples)...)
	if len(otherPatuPins(xdpPinDir)) > 0 {
		rep.Notes = append(rep.Notes, "other Patu instances were loaded during the run: "+strings.Join(otherPatuPins(xdpPinDir), ", "))
	}
	if out != "" {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
	}
	writeXDPTable(w, rep, cfg)
	if out != "" {
		fmt.Fprintf(w, "\nJSON with every sample: %s\n", out)
	}
	return nil
}

func (x *xdpRun) dst(c xdpCell, p xdpPath, port int) netip.AddrPort {
	t := x.topo
	ip := t.pod.IPv4
	if c.Family == 6 {
		ip = t.pod.IPv6
	}
	if p.hostPort() {
		ip, port = t.nodeIP4, port+xdpHostPortOffset
		if c.Family == 6 {
			ip = t.nodeIP6
		}
	}
	return netip.AddrPortFrom(ip, uint16(port))
}

func (x *xdpRun) podIP(c xdpCell) netip.Addr {
	if c.Family == 6 {
		return x.topo.pod.IPv6
	}
	return x.topo.pod.IPv4
}

// measure runs one cell on one path; failures end up in the sample.
func (x *xdpRun) measure(ctx context.Context, round int, c xdpCell, p xdpPath) xdpSample {
	s := xdpSample{Round: round, Cell: c.String(), Path: p, Start: time.Now()}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		s.LoadAvg = strings.TrimSpace(string(la))
	}
	if err := x.measureInto(ctx, &s, c, p); err != nil {
		s.Error = err.Error()
	}
	return s
}

func (x *xdpRun) measureInto(ctx context.Context, s *xdpSample, c xdpCell, p xdpPath) (err error) {
	var active *xdpActive
	var x0 map[string]uint64
	if p.xdp() {
		if active, err = enableXDP(x.topo); err != nil {
			return err
		}
		defer func() {
			if cerr := active.close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		s.XDPMode = active.mode
		if x0, err = active.counters(); err != nil {
			return err
		}
	}
	n0, err := nodepath.ReadStats(x.topo.node.NetnsPath)
	if err != nil {
		return err
	}
	switch c.Kind {
	case xkRR:
		err = x.runRR(ctx, s, c, p)
	case xkPing:
		err = x.runPing(ctx, s, c, p)
	case xkPPS:
		err = x.runPPS(ctx, s, c, p, 0)
	case xkPaced:
		err = x.runPPS(ctx, s, c, p, xdpPacedRate)
	case xkTCP:
		err = x.runTCP(ctx, s, c, p)
	}
	n1, nerr := nodepath.ReadStats(x.topo.node.NetnsPath)
	if nerr == nil {
		d := n1.Sub(n0)
		s.Node = &d
	} else if err == nil {
		err = nerr
	}
	if active != nil {
		x1, cerr := active.counters()
		if cerr != nil && err == nil {
			err = cerr
		}
		if x1 != nil {
			s.XDP = map[string]uint64{}
			for k, v := range x1 {
				if d := v - x0[k]; d != 0 {
					s.XDP[k] = d
				}
			}
		}
	}
	return err
}

// xdpCPU is CPU time at one moment: the machine's, and the run's own.
type xdpCPU struct {
	at time.Time
	t  cpuTimes
	// own is the CPU time of the tools of the run, in µs: this process
	// (the packet sender and receiver run in it) and the ext and pod
	// cgroups (sockperf, iperf3). This kernel has no IRQ time accounting,
	// so softirq work done in their context is theirs; other sessions on
	// the machine are not.
	own uint64
}

func (x *xdpRun) readCPU() (xdpCPU, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return xdpCPU{}, fmt.Errorf("read cpu times: %w", err)
	}
	c := xdpCPU{at: time.Now()}
	if c.t, err = parseProcStat(string(data)); err != nil {
		return c, err
	}
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return c, fmt.Errorf("getrusage: %w", err)
	}
	c.own = uint64(ru.Utime.Nano()/1000 + ru.Stime.Nano()/1000)
	for _, dir := range []string{x.topo.ext.CgroupDir, x.topo.pod.CgroupDir} {
		data, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
		if err != nil {
			return c, fmt.Errorf("read cpu usage: %w", err)
		}
		u, err := parseCgroupUsage(string(data))
		if err != nil {
			return c, err
		}
		c.own += u
	}
	return c, nil
}

func (s *xdpSample) setCPU(a, b xdpCPU) {
	s.CPUSec = b.t.busySecondsSince(a.t)
	s.SoftirqSec = float64(b.t.SoftIRQ-a.t.SoftIRQ) / userHZ
	s.OwnCPUSec = float64(b.own-a.own) / 1e6
	s.WindowSec = b.at.Sub(a.at).Seconds()
}

func (x *xdpRun) secs() int { return int(x.duration.Round(time.Second) / time.Second) }

func (x *xdpRun) runRR(ctx context.Context, s *xdpSample, c xdpCell, p xdpPath) error {
	dst := x.dst(c, p, xdpPortRR)
	s.Dst = dst.String()
	timeout := x.duration + 30*time.Second
	sv, err := startServer(ctx, x.topo.pod, timeout+10*time.Second, xdpPortRR,
		"sockperf", "sr", "--tcp", "-i", x.podIP(c).String(), "-p", fmt.Sprint(xdpPortRR))
	if err != nil {
		return err
	}
	defer sv.stop()
	var c0, c1 xdpCPU
	var cerr error
	onLine := func(line string) {
		var err error
		switch {
		case strings.Contains(line, "Starting test"):
			c0, err = x.readCPU()
		case strings.Contains(line, "Test end"):
			c1, err = x.readCPU()
		}
		if cerr == nil {
			cerr = err
		}
	}
	out, err := runClient(ctx, x.topo.ext, timeout, onLine, "sockperf", "pp", "--tcp", "-i", dst.Addr().String(),
		"-p", fmt.Sprint(dst.Port()), "-m", "64", "-t", fmt.Sprint(x.secs()), "--full-rtt")
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
	if x.keep {
		s.Output = out
	}
	if cerr != nil {
		return cerr
	}
	if !c0.at.IsZero() && !c1.at.IsZero() {
		s.setCPU(c0, c1)
	}
	return nil
}

// runPing times 64-byte TCP round trips from ext to pktgen's echo server
// in the pod, one request outstanding, after a warm-up.
func (x *xdpRun) runPing(ctx context.Context, s *xdpSample, c xdpCell, p xdpPath) error {
	dst := x.dst(c, p, xdpPortRR)
	s.Dst = dst.String()
	const size = 64
	var srv *pktgen.RRServer
	if err := x.topo.pod.Do(func() (err error) {
		srv, err = pktgen.NewRRServer(netip.AddrPortFrom(x.podIP(c), xdpPortRR), size)
		return err
	}); err != nil {
		return err
	}
	var cl *pktgen.RRClient
	if err := x.topo.ext.Do(func() (err error) {
		cl, err = pktgen.DialRR(dst, size)
		return err
	}); err != nil {
		return errors.Join(err, srv.Close())
	}
	var c0 xdpCPU
	var cerr error
	res, err := cl.Run(ctx, 300*time.Millisecond, x.duration, func() { c0, cerr = x.readCPU() })
	c1, cerr1 := x.readCPU()
	err = errors.Join(err, cerr, cerr1, cl.Close(), srv.Close())
	if res.Count > 0 {
		s.Ping = &res
	}
	if err != nil {
		return err
	}
	s.setCPU(c0, c1)
	return nil
}

func (x *xdpRun) runTCP(ctx context.Context, s *xdpSample, c xdpCell, p xdpPath) error {
	dst := x.dst(c, p, xdpPortTCP)
	s.Dst = dst.String()
	timeout := x.duration + 30*time.Second
	sv, err := startServer(ctx, x.topo.pod, timeout+10*time.Second, xdpPortTCP,
		"iperf3", "-s", "--one-off", "-B", x.podIP(c).String(), "-p", fmt.Sprint(xdpPortTCP))
	if err != nil {
		return err
	}
	defer sv.stop()
	d0, err := x.vethTxDropped()
	if err != nil {
		return err
	}
	c0, err := x.readCPU()
	if err != nil {
		return err
	}
	out, err := runClient(ctx, x.topo.ext, timeout, nil, "iperf3", "-c", dst.Addr().String(), "-p", fmt.Sprint(dst.Port()),
		"-t", fmt.Sprint(x.secs()), "-J")
	c1, cerr := x.readCPU()
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
	if x.keep {
		s.Output = out
	}
	s.setCPU(c0, c1)
	d1, err := x.vethTxDropped()
	if err != nil {
		return err
	}
	d := d1 - d0
	s.VethTxDropped = &d
	sv.wait(5 * time.Second)
	return nil
}

// vethTxDropped reads the transmit drops of the pod's host-side veth.
func (x *xdpRun) vethTxDropped() (uint64, error) {
	var n uint64
	err := x.topo.node.Do(func() error {
		l, err := netlink.LinkByIndex(x.topo.pod.HostIfindex)
		if err != nil {
			return fmt.Errorf("host veth of the pod: %w", err)
		}
		if st := l.Attrs().Statistics; st != nil {
			n = st.TxDropped
		}
		return nil
	})
	return n, err
}

// runPPS sends 64-byte UDP datagrams over 8 flows from ext to the pod for
// the run's duration, unpaced (rate 0) or at rate, and counts what the pod
// received intact.
func (x *xdpRun) runPPS(ctx context.Context, s *xdpSample, c xdpCell, p xdpPath, rate float64) error {
	dst := x.dst(c, p, xdpPortUDP)
	s.Dst = dst.String()
	const payload = 64
	var rcv *pktgen.Receiver
	if err := x.topo.pod.Do(func() (err error) {
		rcv, err = pktgen.NewReceiver(netip.AddrPortFrom(x.podIP(c), xdpPortUDP), payload)
		return err
	}); err != nil {
		return err
	}
	defer rcv.Close()
	var snd *pktgen.Sender
	if err := x.topo.ext.Do(func() (err error) {
		snd, err = pktgen.NewSender(pktgen.SenderConfig{Dst: dst, Flows: 8, Payload: payload, Rate: rate})
		return err
	}); err != nil {
		return err
	}
	defer snd.Close()
	rcv.Expect(snd.RunID())
	// Warm up: neighbours resolved, conntrack entries made, caches hot.
	if _, err := snd.Run(ctx, 300*time.Millisecond); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond)
	r0 := rcv.Stats()
	c0, err := x.readCPU()
	if err != nil {
		return err
	}
	res, err := snd.Run(ctx, x.duration)
	if err != nil {
		return err
	}
	// Let the receiver drain its queue; its CPU counts, like its packets.
	time.Sleep(100 * time.Millisecond)
	c1, err := x.readCPU()
	if err != nil {
		return err
	}
	got := rcv.Stats().Sub(r0)
	if err := rcv.Close(); err != nil {
		return err
	}
	s.setCPU(c0, c1)
	pp := &xdpPPS{Offered: rate, Send: res, Received: got}
	if res.Seconds > 0 {
		pp.PPS = float64(got.Valid) / res.Seconds
	}
	if got.Valid > 0 {
		pp.CPUPerMpkt = s.CPUSec / float64(got.Valid) * 1e6
		pp.SoftirqPerMpkt = s.SoftirqSec / float64(got.Valid) * 1e6
		pp.OwnPerMpkt = s.OwnCPUSec / float64(got.Valid) * 1e6
	}
	s.PPS = pp
	switch {
	case got.Valid == 0:
		return fmt.Errorf("the pod received none of %d datagrams", res.Sent)
	case got.Bad > 0:
		return fmt.Errorf("%d of %d datagrams arrived damaged", got.Bad, got.Bad+got.Valid)
	}
	return nil
}

func (x *xdpRun) logSample(n, total int, s xdpSample) {
	attrs := []any{"n", fmt.Sprintf("%d/%d", n, total), "cell", s.Cell, "path", s.Path}
	if s.VethTxDropped != nil {
		attrs = append(attrs, "veth_tx_dropped", *s.VethTxDropped)
	}
	switch {
	case !s.ok():
		x.log.Warn("measurement failed", append(attrs, "error", firstLine(s.Error))...)
		return
	case s.RR != nil:
		attrs = append(attrs, "p50_us", s.RR.P50(), "p99_us", s.RR.P99())
	case s.Ping != nil:
		attrs = append(attrs, "p50_us", fmt.Sprintf("%.1f", s.Ping.P50), "p99_us", fmt.Sprintf("%.1f", s.Ping.P99), "count", s.Ping.Count)
	case s.Bulk != nil:
		attrs = append(attrs, "gbps", fmt.Sprintf("%.2f", s.Bulk.Gbps()), "retrans", s.Bulk.Retransmits)
	case s.PPS != nil:
		attrs = append(attrs, "sent_pps", fmt.Sprintf("%.0f", s.PPS.Send.PPS()), "rcvd_pps", fmt.Sprintf("%.0f", s.PPS.PPS),
			"cpu_s_per_mpkt", fmt.Sprintf("%.2f", s.PPS.CPUPerMpkt), "own_cpu_s_per_mpkt", fmt.Sprintf("%.2f", s.PPS.OwnPerMpkt),
			"softirq_s_per_mpkt", fmt.Sprintf("%.2f", s.PPS.SoftirqPerMpkt))
	}
	if s.Node != nil {
		attrs = append(attrs, "fwd_pkts", s.Node.ForwardPackets, "dnat", s.Node.DNATPackets, "conntrack", s.Node.Conntrack)
	}
	if len(s.XDP) > 0 {
		attrs = append(attrs, "xdp", s.XDP)
	}
	x.log.Info("measured", attrs...)
}

// ---------------------------------------------------------------- report

// xdpMetric is one number, per path, over the rounds.
type xdpMetric struct {
	ID    string              `json:"id"`
	Label string              `json:"label"`
	Unit  string              `json:"unit"`
	Cell  string              `json:"cell"`
	Paths map[xdpPath]summary `json:"paths"`
	// Ratios are XDP ÷ normal, of medians, to the pod and to the hostPort;
	// Paired the per-round ratios.
	RatioPod      *float64  `json:"ratio_pod,omitempty"`
	RatioHostPort *float64  `json:"ratio_hostport,omitempty"`
	PairedPod     []float64 `json:"paired_pod,omitempty"`
	PairedHP      []float64 `json:"paired_hostport,omitempty"`
	HigherBetter  bool      `json:"higher_is_better"`
	dec           int
}

type xdpMetricDef struct {
	id, label, unit string
	dec             int
	higher          bool
	value           func(xdpSample) (float64, bool)
}

func xdpDefs(c xdpCell) []xdpMetricDef {
	rr := func(f func(*sockperf.Result) float64) func(xdpSample) (float64, bool) {
		return func(s xdpSample) (float64, bool) {
			if s.RR == nil {
				return 0, false
			}
			return f(s.RR), true
		}
	}
	pp := func(f func(*xdpPPS) float64) func(xdpSample) (float64, bool) {
		return func(s xdpSample) (float64, bool) {
			if s.PPS == nil {
				return 0, false
			}
			return f(s.PPS), true
		}
	}
	switch c.Kind {
	case xkRR:
		return []xdpMetricDef{
			{"rr_p50", "TCP RR 64 B p50", "µs", 1, false, rr(func(r *sockperf.Result) float64 { return r.P50() })},
			{"rr_p99", "TCP RR 64 B p99", "µs", 1, false, rr(func(r *sockperf.Result) float64 { return r.P99() })},
		}
	case xkPing:
		ping := func(f func(*pktgen.RRResult) float64) func(xdpSample) (float64, bool) {
			return func(s xdpSample) (float64, bool) {
				if s.Ping == nil {
					return 0, false
				}
				return f(s.Ping), true
			}
		}
		return []xdpMetricDef{
			{"ping_p50", "TCP RR 64 B p50 (pktgen)", "µs", 1, false, ping(func(r *pktgen.RRResult) float64 { return r.P50 })},
			{"ping_p99", "TCP RR 64 B p99 (pktgen)", "µs", 1, false, ping(func(r *pktgen.RRResult) float64 { return r.P99 })},
			{"ping_count", "TCP RR round trips (pktgen)", "k", 0, true, ping(func(r *pktgen.RRResult) float64 { return float64(r.Count) / 1e3 })},
		}
	case xkPPS:
		return []xdpMetricDef{
			{"pps", "UDP 64 B rate, unpaced", "kpps", 0, true, pp(func(p *xdpPPS) float64 { return p.PPS / 1e3 })},
			{"pps_cpu", "CPU per Mpkt, unpaced (tools)", "CPU-s", 2, false, pp(func(p *xdpPPS) float64 { return p.OwnPerMpkt })},
			{"pps_cpu_machine", "CPU per Mpkt, unpaced (machine)", "CPU-s", 2, false, pp(func(p *xdpPPS) float64 { return p.CPUPerMpkt })},
			{"pps_loss", "UDP loss, unpaced", "%", 1, false, pp(func(p *xdpPPS) float64 {
				return 100 * (1 - float64(p.Received.Valid)/float64(max(p.Send.Sent, 1)))
			})},
		}
	case xkPaced:
		return []xdpMetricDef{
			{"paced_cpu", fmt.Sprintf("CPU per Mpkt at %d kpps (tools)", xdpPacedRate/1000), "CPU-s", 2, false, pp(func(p *xdpPPS) float64 { return p.OwnPerMpkt })},
			{"paced_cpu_machine", fmt.Sprintf("CPU per Mpkt at %d kpps (machine)", xdpPacedRate/1000), "CPU-s", 2, false, pp(func(p *xdpPPS) float64 { return p.CPUPerMpkt })},
			{"paced_softirq", fmt.Sprintf("softirq CPU per Mpkt at %d kpps", xdpPacedRate/1000), "CPU-s", 2, false, pp(func(p *xdpPPS) float64 { return p.SoftirqPerMpkt })},
			{"paced_rcvd", fmt.Sprintf("received at %d kpps offered", xdpPacedRate/1000), "kpps", 0, true, pp(func(p *xdpPPS) float64 { return p.PPS / 1e3 })},
		}
	case xkTCP:
		return []xdpMetricDef{
			{"tcp_gbps", "TCP 1 stream ext→pod", "Gbit/s", 2, true, func(s xdpSample) (float64, bool) {
				if s.Bulk == nil {
					return 0, false
				}
				return s.Bulk.Gbps(), true
			}},
			{"tcp_cpu_per_gb", "TCP CPU per GB (tools)", "CPU-s", 3, false, func(s xdpSample) (float64, bool) {
				if s.Bulk == nil || s.Bulk.BytesReceived == 0 {
					return 0, false
				}
				return s.OwnCPUSec / (float64(s.Bulk.BytesReceived) / 1e9), true
			}},
			{"tcp_retrans", "TCP retransmits", "segs", 0, false, func(s xdpSample) (float64, bool) {
				if s.Bulk == nil {
					return 0, false
				}
				return float64(s.Bulk.Retransmits), true
			}},
			{"tcp_veth_drops", "TCP drops into the pod (host veth)", "pkts", 0, false, func(s xdpSample) (float64, bool) {
				if s.VethTxDropped == nil {
					return 0, false
				}
				return float64(*s.VethTxDropped), true
			}},
		}
	}
	return nil
}

func xdpMetrics(cs []xdpCell, samples []xdpSample) []xdpMetric {
	var out []xdpMetric
	for _, c := range cs {
		for _, d := range xdpDefs(c) {
			m := xdpMetric{ID: fmt.Sprintf("%s_ipv%d", d.id, c.Family), Label: fmt.Sprintf("%s, IPv%d", d.label, c.Family),
				Unit: d.unit, Cell: c.String(), Paths: map[xdpPath]summary{}, HigherBetter: d.higher, dec: d.dec}
			byRound := map[xdpPath]map[int]float64{}
			for _, p := range xdpPaths {
				var vals []float64
				failed := 0
				byRound[p] = map[int]float64{}
				for _, s := range samples {
					if s.Cell != m.Cell || s.Path != p {
						continue
					}
					v, ok := d.value(s)
					if !s.ok() || !ok {
						failed++
						continue
					}
					vals = append(vals, v)
					byRound[p][s.Round] = v
				}
				m.Paths[p] = summarize(vals, failed)
			}
			ratio := func(normal, fast xdpPath) (*float64, []float64) {
				a, b := m.Paths[normal], m.Paths[fast]
				if !a.ok() || !b.ok() || a.Median == 0 {
					return nil, nil
				}
				r := b.Median / a.Median
				var paired []float64
				for round, av := range byRound[normal] {
					if bv, ok := byRound[fast][round]; ok && av != 0 {
						paired = append(paired, bv/av)
					}
				}
				return &r, paired
			}
			m.RatioPod, m.PairedPod = ratio(xpNormalPod, xpXDPPod)
			m.RatioHostPort, m.PairedHP = ratio(xpNormalHP, xpXDPHP)
			out = append(out, m)
		}
	}
	return out
}

// xdpVerdict is the target, checked per destination: at least
// 1.3× the packets per second or at most 0.7× the CPU per packet, with
// request/response latency no worse.
type xdpVerdict struct {
	Dest       string   `json:"dest"` // "pod" or "hostport"
	Family     int      `json:"family"`
	PPSRatio   *float64 `json:"pps_ratio,omitempty"`
	CPURatio   *float64 `json:"paced_cpu_ratio,omitempty"`
	P50Ratio   *float64 `json:"rr_p50_ratio,omitempty"`
	P99Ratio   *float64 `json:"rr_p99_ratio,omitempty"`
	Met        *bool    `json:"met,omitempty"` // nil when a number is missing
	Reason     string   `json:"reason"`
	LatencyTol float64  `json:"latency_tolerance"`
	// LatencyTool measured the latency ratios: sockperf or pktgen.
	LatencyTool string `json:"latency_tool,omitempty"`
}

// xdpLatencyTol is how much worse than the normal path a latency median
// may be and still count as "no worse": the rounds on this shared VM
// scatter by more than that.
const xdpLatencyTol = 1.05

func xdpVerdicts(ms []xdpMetric) []xdpVerdict {
	find := func(id string) *xdpMetric {
		for i := range ms {
			if ms[i].ID == id {
				return &ms[i]
			}
		}
		return nil
	}
	var out []xdpVerdict
	for _, fam := range []int{4, 6} {
		for _, dest := range []string{"pod", "hostport"} {
			get := func(ids ...string) *float64 {
				for _, id := range ids {
					m := find(fmt.Sprintf("%s_ipv%d", id, fam))
					switch {
					case m == nil:
					case dest == "pod" && m.RatioPod != nil:
						return m.RatioPod
					case dest == "hostport" && m.RatioHostPort != nil:
						return m.RatioHostPort
					}
				}
				return nil
			}
			// Latency: sockperf's where it measured (IPv4), pktgen's
			// ping-pong otherwise.
			v := xdpVerdict{Dest: dest, Family: fam, PPSRatio: get("pps"), CPURatio: get("paced_cpu"), LatencyTol: xdpLatencyTol}
			if v.P50Ratio = get("rr_p50"); v.P50Ratio != nil {
				v.P99Ratio, v.LatencyTool = get("rr_p99"), "sockperf"
			} else if v.P50Ratio = get("ping_p50"); v.P50Ratio != nil {
				v.P99Ratio, v.LatencyTool = get("ping_p99"), "pktgen"
			}
			if v.PPSRatio == nil && v.CPURatio == nil && v.P50Ratio == nil {
				continue
			}
			speed := (v.PPSRatio != nil && *v.PPSRatio >= 1.3) || (v.CPURatio != nil && *v.CPURatio <= 0.7)
			var why []string
			if !speed {
				why = append(why, "neither ≥ 1.3× pps nor ≤ 0.7× CPU per packet")
			}
			switch {
			case v.P50Ratio == nil:
				why = append(why, "latency not measured on both paths (see failures)")
			case *v.P50Ratio > xdpLatencyTol:
				why = append(why, fmt.Sprintf("RR p50 %.2f× the normal path", *v.P50Ratio))
			}
			switch {
			case !speed || (v.P50Ratio != nil && *v.P50Ratio > xdpLatencyTol):
				met := false
				v.Met = &met
			case v.P50Ratio != nil:
				met := true
				v.Met = &met
				why = []string{"met"}
			default:
				// Speed met, latency unknown: neither met nor missed.
			}
			v.Reason = strings.Join(why, "; ")
			out = append(out, v)
		}
	}
	return out
}

// xdpProofNotes flags runs whose counters say they did not take the path
// they were meant to.
func xdpProofNotes(samples []xdpSample) []string {
	var out []string
	for _, s := range samples {
		if !s.ok() || s.Node == nil || s.PPS == nil {
			continue
		}
		pkts := s.PPS.Received.Valid
		switch {
		case !s.Path.xdp() && s.Node.ForwardPackets < pkts/2:
			out = append(out, fmt.Sprintf("run %d %s on %s: only %d of %d packets went through FORWARD", s.Round, s.Cell, s.Path, s.Node.ForwardPackets, pkts))
		case s.Path == xpNormalHP && s.Node.DNATPackets == 0:
			out = append(out, fmt.Sprintf("run %d %s on %s: the portmap DNAT translated nothing", s.Round, s.Cell, s.Path))
		case s.Path.xdp() && s.Node.ForwardPackets > pkts/10:
			out = append(out, fmt.Sprintf("run %d %s on %s: %d of %d packets still went through FORWARD", s.Round, s.Cell, s.Path, s.Node.ForwardPackets, pkts))
		}
	}
	return out
}

func writeXDPTable(w io.Writer, rep xdpReport, cfg config) {
	fmt.Fprintf(w, "\nXDP ingress vs the normal node path: %s, %d CPUs, kernel %s, %s; %d run(s) of %s, took %s\n",
		rep.Machine.CPUModel, rep.Machine.NProc, rep.Machine.Kernel, rep.Machine.Date, cfg.runs, cfg.duration,
		rep.Finished.Sub(rep.Started).Round(time.Second))
	fmt.Fprintf(w, "normal path: bridge netfilter on, conntrack, portmap DNAT, %v iptables rules (%v); ext client → uplink veth → node → pod\n\n",
		rep.NodePath["rules"], rep.NodePath["iptables_backend"])
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tunit\tnormal→pod\tXDP→pod\tXDP÷normal\tnormal→hostPort\tXDP→hostPort\tXDP÷normal")
	for _, m := range rep.Metrics {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Label, m.Unit,
			cellText(m.Paths[xpNormalPod], m.dec), cellText(m.Paths[xpXDPPod], m.dec), xdpRatioText(m.RatioPod, m.PairedPod),
			cellText(m.Paths[xpNormalHP], m.dec), cellText(m.Paths[xpXDPHP], m.dec), xdpRatioText(m.RatioHostPort, m.PairedHP))
	}
	tw.Flush()
	fmt.Fprintln(w, "medians over runs (min–max); XDP÷normal is the ratio of medians [min–max of the per-round ratios]")
	fmt.Fprintln(w, "CPU (tools): CPU time of the sender, receiver, sockperf/iperf3 and the softirq work run in their context (this kernel")
	fmt.Fprintln(w, "has no IRQ time accounting); CPU (machine): /proc/stat busy time of all CPUs, everyone else's included (a loaded")
	fmt.Fprintln(w, "machine saturates it: 40 CPU-s/Mpkt at 50 kpps is 2 CPUs fully busy). The verdict uses CPU (tools) at 50 kpps.")
	fmt.Fprintln(w, "TCP RR: sockperf (IPv4 only: Debian's 3.7 has no IPv6), and pktgen's Go ping-pong for both families (one")
	fmt.Fprintln(w, "connection, 64 B, one outstanding; its µs differ from sockperf's by a few either way, compare ratios); the verdict uses sockperf's")
	fmt.Fprintln(w, "where it measured. TCP bulk: the client's TSO is off on both paths (TX checksum offload is off, as on a wire); XDP on")
	fmt.Fprintln(w, "the veth uplink also copies every frame into its page pool (a physical NIC would not) and runs before GRO, while the")
	fmt.Fprintln(w, "normal path walks netfilter once per GRO super-packet (~40 frames).")
	fmt.Fprintln(w, "\ntarget (issue 5): ≥ 1.3× packets per second or ≤ 0.7× CPU per packet, with RR p50 no worse (≤ 1.05×):")
	for _, v := range rep.Verdicts {
		met := "SPEED ONLY"
		if v.Met != nil {
			met = map[bool]string{true: "MET", false: "MISSED"}[*v.Met]
		}
		tool := ""
		if v.LatencyTool != "" {
			tool = " (" + v.LatencyTool + ")"
		}
		fmt.Fprintf(w, "  IPv%d → %-8s %-12s pps %s, CPU/pkt %s, p50 %s, p99 %s%s  (%s)\n", v.Family, v.Dest, met,
			ratioOrDash(v.PPSRatio), ratioOrDash(v.CPURatio), ratioOrDash(v.P50Ratio), ratioOrDash(v.P99Ratio), tool, v.Reason)
	}
	seen := map[string]bool{}
	for _, s := range rep.Samples {
		if s.ok() {
			continue
		}
		key := s.Cell + "/" + string(s.Path) + ": " + firstLine(s.Error)
		if !seen[key] {
			seen[key] = true
			fmt.Fprintf(w, "FAILED run %d %s on %s: %s\n", s.Round, s.Cell, s.Path, firstLine(s.Error))
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func xdpRatioText(r *float64, paired []float64) string {
	if r == nil {
		return "–"
	}
	if len(paired) > 1 {
		return fmt.Sprintf("%.2f [%.2f–%.2f]", *r, minOf(paired), maxOf(paired))
	}
	return fmt.Sprintf("%.2f", *r)
}

func ratioOrDash(r *float64) string {
	if r == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f×", *r)
}

// xdpOut is where the section writes its JSON in a full run: next to the
// main report (-only xdp writes to -o itself).
func xdpOut(cfg config) string {
	if cfg.out == "" || cfg.only == "xdp" {
		return cfg.out
	}
	return strings.TrimSuffix(cfg.out, ".json") + "-xdp.json"
}
