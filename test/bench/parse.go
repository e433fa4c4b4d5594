package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// ansiEscape matches the colour codes tools print even into a pipe
// (sockperf's version line).
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)

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

// kernelSecondsSince is the CPU time spent in the kernel (system + irq +
// softirq), in seconds over all CPUs, since an earlier sample.
func (c cpuTimes) kernelSecondsSince(earlier cpuTimes) float64 {
	return float64((c.System+c.IRQ+c.SoftIRQ)-(earlier.System+earlier.IRQ+earlier.SoftIRQ)) / userHZ
}

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
