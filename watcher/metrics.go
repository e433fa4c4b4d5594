package watcher

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/patu-dev/patu/bpf"
)

// gapBuckets are the upper bounds, in seconds, of the start-to-attach gap
// histogram. Negative: the cgroup was attached before the app started.
var gapBuckets = []float64{-1, -0.1, -0.01, -0.001, 0, 0.001, 0.01, 0.1, 1}

// Metrics are the watcher's own counters. The exposition is written by
// hand in the Prometheus text format: a client library would cost more
// binary and memory than the whole watcher.
type Metrics struct {
	mu          sync.Mutex
	events      map[string]uint64
	reconciles  uint64
	reconErrors uint64
	reconSecs   float64
	reconnects  uint64
	pods        int
	gaps        map[string]*gapHist // by cgroup mode: "pod" or "container"
}

type gapHist struct {
	count    uint64
	sum      float64
	buckets  []uint64
	min, max float64
}

// NewMetrics returns zeroed metrics.
func NewMetrics() *Metrics {
	return &Metrics{events: map[string]uint64{}, gaps: map[string]*gapHist{}}
}

func (m *Metrics) event(source string) {
	m.mu.Lock()
	m.events[source]++
	m.mu.Unlock()
}

func (m *Metrics) reconnect() {
	m.mu.Lock()
	m.reconnects++
	m.mu.Unlock()
}

func (m *Metrics) reconciled(d time.Duration, err error) {
	m.mu.Lock()
	m.reconciles++
	m.reconSecs += d.Seconds()
	if err != nil {
		m.reconErrors++
	}
	m.mu.Unlock()
}

func (m *Metrics) setPods(n int) {
	m.mu.Lock()
	m.pods = n
	m.mu.Unlock()
}

// Cgroup modes, the label of the start-to-attach gap.
const (
	ModePod       = "pod"       // the pod has a cgroup, attached once for all its containers
	ModeContainer = "container" // each container has its own cgroup, attached as it appears
)

func (m *Metrics) attachGap(mode string, d time.Duration) {
	s := d.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.gaps[mode]
	if h == nil {
		h = &gapHist{buckets: make([]uint64, len(gapBuckets))}
		m.gaps[mode] = h
	}
	if h.count == 0 || s < h.min {
		h.min = s
	}
	if h.count == 0 || s > h.max {
		h.max = s
	}
	h.count++
	h.sum += s
	for i, b := range gapBuckets {
		if s <= b {
			h.buckets[i]++
		}
	}
}

// Gap summarises the start-to-attach gaps of one cgroup mode.
type Gap struct {
	Count         uint64
	Before        uint64 // covered before the container started (gap <= 0)
	Min, Max, Avg time.Duration
}

// AttachGap returns the start-to-attach gaps by cgroup mode: how long
// after a container's start its sockets became eligible for redirect
// (negative: before the app process ran).
func (m *Metrics) AttachGap() map[string]Gap {
	m.mu.Lock()
	defer m.mu.Unlock()
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	out := map[string]Gap{}
	for mode, h := range m.gaps {
		g := Gap{Count: h.count, Min: sec(h.min), Max: sec(h.max), Avg: sec(h.sum / float64(h.count))}
		for i, b := range gapBuckets {
			if b == 0 {
				g.Before = h.buckets[i]
			}
		}
		out[mode] = g
	}
	return out
}

// Handler serves the metrics, with the data plane's counters and the
// per-pod figures read from dp at each scrape.
func (m *Metrics) Handler(dp *bpf.Datapath) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		if err := m.Write(w, dp); err != nil {
			fmt.Fprintf(w, "# error: %v\n", err)
		}
	})
}

// Write writes the exposition to out.
func (m *Metrics) Write(out io.Writer, dp *bpf.Datapath) error {
	var b strings.Builder
	m.mu.Lock()
	help(&b, "patu_watcher_events_total", "counter", "Runtime events received, by source.")
	srcs := make([]string, 0, len(m.events))
	for s := range m.events {
		srcs = append(srcs, s)
	}
	sort.Strings(srcs)
	for _, s := range srcs {
		fmt.Fprintf(&b, "patu_watcher_events_total{source=%q} %d\n", s, m.events[s])
	}
	metric(&b, "patu_watcher_reconciles_total", "counter", "Reconciles run.", m.reconciles)
	metric(&b, "patu_watcher_reconcile_errors_total", "counter", "Reconciles that failed.", m.reconErrors)
	metric(&b, "patu_watcher_reconcile_seconds_total", "counter", "Time spent reconciling.", m.reconSecs)
	metric(&b, "patu_watcher_stream_reconnects_total", "counter", "Event stream reconnects.", m.reconnects)
	metric(&b, "patu_watcher_pods", "gauge", "Ready pods the watcher tracks.", m.pods)
	help(&b, "patu_attach_gap_seconds", "histogram",
		"Time from a container's start until its sockets are eligible for redirect (negative: before it ran), by cgroup mode.")
	for _, mode := range sortedKeys(m.gaps) {
		h := m.gaps[mode]
		for i, ub := range gapBuckets {
			fmt.Fprintf(&b, "patu_attach_gap_seconds_bucket{mode=%q,le=\"%g\"} %d\n", mode, ub, h.buckets[i])
		}
		fmt.Fprintf(&b, "patu_attach_gap_seconds_bucket{mode=%q,le=\"+Inf\"} %d\n", mode, h.count)
		fmt.Fprintf(&b, "patu_attach_gap_seconds_sum{mode=%q} %g\npatu_attach_gap_seconds_count{mode=%q} %d\n", mode, h.sum, mode, h.count)
	}
	m.mu.Unlock()

	if dp != nil {
		if err := writeDatapath(&b, dp); err != nil {
			io.WriteString(out, b.String())
			return err
		}
	}
	_, err := io.WriteString(out, b.String())
	return err
}

func writeDatapath(b *strings.Builder, dp *bpf.Datapath) error {
	c, err := dp.Counters()
	if err != nil {
		return err
	}
	metric(b, "patu_sockets_inserted_total", "counter", "Sockets put into the socket map.", c.SocketsInserted)
	metric(b, "patu_sockets_closed_total", "counter", "Sockets of the socket map that closed.", c.SocketsClosed)
	metric(b, "patu_redirected_messages_total", "counter", "Messages handed straight to the peer socket.", c.RedirectMsgs)
	metric(b, "patu_redirected_bytes_total", "counter", "Bytes handed straight to the peer socket.", c.RedirectBytes)
	help(b, "patu_fallback_messages_total", "counter", "Messages of tracked sockets sent over TCP, by reason.")
	for _, r := range sortedKeys(c.Fallback) {
		fmt.Fprintf(b, "patu_fallback_messages_total{reason=%q} %d\n", r, c.Fallback[r].Msgs)
	}

	all, err := dp.Pods()
	if err != nil {
		return err
	}
	socks, err := dp.SocketsByAddr()
	if err != nil {
		return err
	}
	help(b, "patu_pod_info", "gauge", "Pods registered with the data plane.")
	for _, p := range all {
		fmt.Fprintf(b, "patu_pod_info{%s,ips=%q,opt_out=\"%t\",confirmed=\"%t\"} 1\n",
			podLabels(p), joinAddrs(p), p.NoRedirect, p.Confirmed)
	}
	help(b, "patu_pod_cgroups", "gauge", "Cgroups attached for the pod.")
	for _, p := range all {
		fmt.Fprintf(b, "patu_pod_cgroups{%s} %d\n", podLabels(p), len(p.Cgroups))
	}
	help(b, "patu_pod_sockets", "gauge", "The pod's sockets currently short-circuited by Patu.")
	for _, p := range all {
		n := 0
		for _, ip := range p.IPs {
			n += socks[ip]
		}
		fmt.Fprintf(b, "patu_pod_sockets{%s} %d\n", podLabels(p), n)
	}
	return nil
}

func podLabels(p bpf.Pod) string {
	return fmt.Sprintf("namespace=%q,pod=%q,sandbox=%q", p.Namespace, p.Name, shortID(p.ID))
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func joinAddrs(p bpf.Pod) string {
	s := make([]string, len(p.IPs))
	for i, ip := range p.IPs {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

func help(b *strings.Builder, name, typ, text string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, typ)
}

func metric[T uint64 | int | float64](b *strings.Builder, name, typ, text string, v T) {
	help(b, name, typ, text)
	fmt.Fprintf(b, "%s %v\n", name, v)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
