package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// sockperfResult is what a `sockperf ping-pong --full-rtt` client reports.
type sockperfResult struct {
	// Total run: from "Starting test" to "Test end", warm-up included.
	RunTimeSec float64 `json:"run_time_s"`
	Sent       int64   `json:"sent"`
	Received   int64   `json:"received"`
	// Valid duration: the part the percentiles are computed over.
	ValidRunTimeSec float64 `json:"valid_run_time_s"`
	ValidReceived   int64   `json:"valid_received"`

	AvgRTT       float64 `json:"avg_rtt_us"`
	StdDev       float64 `json:"std_dev_us"`
	Dropped      int64   `json:"dropped"`
	Duplicated   int64   `json:"duplicated"`
	OutOfOrder   int64   `json:"out_of_order"`
	Observations int64   `json:"observations"`
	MinRTT       float64 `json:"min_rtt_us"`
	MaxRTT       float64 `json:"max_rtt_us"`
	// Percentiles by sockperf's own label ("50.000", "99.000", ...), in µs.
	Percentiles map[string]float64 `json:"percentiles_us"`
}

// P50 and P99 are the round-trip percentiles the report uses.
func (r sockperfResult) P50() float64 { return r.Percentiles["50.000"] }
func (r sockperfResult) P99() float64 { return r.Percentiles["99.000"] }

var (
	// sockperf colours some lines even when writing to a pipe.
	ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)

	reTotalRun   = regexp.MustCompile(`\[Total Run\] RunTime=([0-9.]+) sec;.*SentMessages=(\d+); ReceivedMessages=(\d+)`)
	reValidRun   = regexp.MustCompile(`\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)`)
	reAvg        = regexp.MustCompile(`====> avg-(rtt|latency)=([0-9.]+) \(std-dev=([0-9.]+)\)`)
	reLoss       = regexp.MustCompile(`# dropped messages = (\d+); # duplicated messages = (\d+); # out-of-order messages = (\d+)`)
	reTotalObs   = regexp.MustCompile(`Total (\d+) observations`)
	rePercentile = regexp.MustCompile(`---> percentile ([0-9.]+) =\s*([0-9.]+)`)
	reMinMax     = regexp.MustCompile(`---> <(MIN|MAX)> observation =\s*([0-9.]+)`)
)

// parseSockperf parses the client output of `sockperf pp --full-rtt`.
// sockperf exits 0 even when it cannot connect, so an output without
// round-trip statistics is an error, with sockperf's own message if any.
func parseSockperf(out string) (sockperfResult, error) {
	r := sockperfResult{Percentiles: map[string]float64{}}
	var toolErrs []string
	var latencyOnly bool
	sc := bufio.NewScanner(strings.NewReader(ansiEscape.ReplaceAllString(out, "")))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "ERROR:"); i >= 0 {
			toolErrs = append(toolErrs, strings.TrimSpace(line[i+len("ERROR:"):]))
			continue
		}
		if m := reTotalRun.FindStringSubmatch(line); m != nil {
			r.RunTimeSec = atof(m[1])
			r.Sent, r.Received = atoi(m[2]), atoi(m[3])
		} else if m := reValidRun.FindStringSubmatch(line); m != nil {
			r.ValidRunTimeSec, r.ValidReceived = atof(m[1]), atoi(m[2])
		} else if m := reAvg.FindStringSubmatch(line); m != nil {
			latencyOnly = m[1] == "latency"
			r.AvgRTT, r.StdDev = atof(m[2]), atof(m[3])
		} else if m := reLoss.FindStringSubmatch(line); m != nil {
			r.Dropped, r.Duplicated, r.OutOfOrder = atoi(m[1]), atoi(m[2]), atoi(m[3])
		} else if m := reTotalObs.FindStringSubmatch(line); m != nil {
			r.Observations = atoi(m[1])
		} else if m := rePercentile.FindStringSubmatch(line); m != nil {
			r.Percentiles[m[1]] = atof(m[2])
		} else if m := reMinMax.FindStringSubmatch(line); m != nil {
			if m[1] == "MIN" {
				r.MinRTT = atof(m[2])
			} else {
				r.MaxRTT = atof(m[2])
			}
		}
	}
	switch {
	case len(toolErrs) > 0:
		return r, fmt.Errorf("sockperf: %s", strings.Join(toolErrs, "; "))
	case latencyOnly:
		// Without --full-rtt sockperf halves the round trip.
		return r, errors.New("sockperf reported one-way latency, not round trip (missing --full-rtt)")
	case r.Received == 0 || r.Observations == 0:
		return r, errors.New("sockperf printed no round-trip statistics")
	}
	if _, ok := r.Percentiles["50.000"]; !ok {
		return r, errors.New("sockperf printed no 50th percentile")
	}
	if _, ok := r.Percentiles["99.000"]; !ok {
		return r, errors.New("sockperf printed no 99th percentile")
	}
	if r.Dropped+r.Duplicated+r.OutOfOrder > 0 {
		// TCP must not lose or reorder: on a redirect path that is a bug.
		return r, fmt.Errorf("sockperf saw %d dropped, %d duplicated, %d out-of-order messages",
			r.Dropped, r.Duplicated, r.OutOfOrder)
	}
	return r, nil
}

// iperfResult is the part of `iperf3 -c ... -J` output the report uses.
type iperfResult struct {
	BytesReceived   int64   `json:"bytes_received"`
	SecondsReceived float64 `json:"seconds_received"`
	BitsPerSecond   float64 `json:"bits_per_second"` // receiver side
	BytesSent       int64   `json:"bytes_sent"`
	Retransmits     int64   `json:"retransmits"`
	BlockSize       int64   `json:"block_size"`
	// iperf3's own CPU estimate (getrusage of each end), kept to cross-check
	// the /proc/stat figure; it misses softirq work done on other CPUs.
	HostCPUPercent   float64 `json:"host_cpu_percent"`
	RemoteCPUPercent float64 `json:"remote_cpu_percent"`
}

// Gbps is the receiver-side throughput in Gbit/s.
func (r iperfResult) Gbps() float64 { return r.BitsPerSecond / 1e9 }

// parseIperf3 parses the JSON iperf3 -J prints. iperf3 3.12 exits 0 and
// reports failures in an "error" field, so that field is checked first.
func parseIperf3(out []byte) (iperfResult, error) {
	var doc struct {
		Start struct {
			TestStart struct {
				BlkSize int64 `json:"blksize"`
			} `json:"test_start"`
		} `json:"start"`
		End struct {
			SumSent struct {
				Bytes       int64 `json:"bytes"`
				Retransmits int64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			CPU struct {
				HostTotal   float64 `json:"host_total"`
				RemoteTotal float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 output is not JSON: %w", err)
	}
	if doc.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	r := iperfResult{
		BytesReceived:    doc.End.SumReceived.Bytes,
		SecondsReceived:  doc.End.SumReceived.Seconds,
		BitsPerSecond:    doc.End.SumReceived.BitsPerSecond,
		BytesSent:        doc.End.SumSent.Bytes,
		Retransmits:      doc.End.SumSent.Retransmits,
		BlockSize:        doc.Start.TestStart.BlkSize,
		HostCPUPercent:   doc.End.CPU.HostTotal,
		RemoteCPUPercent: doc.End.CPU.RemoteTotal,
	}
	if r.BytesReceived == 0 || r.SecondsReceived == 0 {
		return r, errors.New("iperf3 reported no bytes received")
	}
	return r, nil
}

// cpuTimes is the first ("cpu ") line of /proc/stat, in clock ticks.
type cpuTimes struct {
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal uint64
}

// userHZ is the unit of /proc/stat: the kernel reports it in USER_HZ,
// which is 100 on every Linux architecture Patu runs on.
const userHZ = 100

// busy is the CPU time spent working, the figure the benchmark compares:
// user + nice + system + irq + softirq (steal and idle excluded).
func (c cpuTimes) busy() uint64 { return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ }

// busySecondsSince is the busy CPU time, in seconds over all CPUs, since an
// earlier sample.
func (c cpuTimes) busySecondsSince(earlier cpuTimes) float64 {
	return float64(c.busy()-earlier.busy()) / userHZ
}

// parseProcStat reads the aggregate CPU line of /proc/stat.
func parseProcStat(data string) (cpuTimes, error) {
	line, _, _ := strings.Cut(data, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("unexpected /proc/stat first line %q", line)
	}
	var v [8]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("parse /proc/stat field %d %q: %w", i+1, f[i+1], err)
		}
		v[i] = n
	}
	return cpuTimes{User: v[0], Nice: v[1], System: v[2], Idle: v[3], IOWait: v[4], IRQ: v[5], SoftIRQ: v[6], Steal: v[7]}, nil
}

// parseCgroupUsage reads usage_usec from a cgroup v2 cpu.stat: the CPU
// time of the cgroup's tasks, including softirq work that ran while one of
// them was on the CPU (this kernel charges ticks, not IRQ time).
func parseCgroupUsage(data string) (uint64, error) {
	for _, line := range strings.Split(data, "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse cpu.stat usage_usec %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("cpu.stat has no usage_usec")
}

func atof(s string) float64 {
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
