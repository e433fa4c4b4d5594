package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
// It is part of the kernel's ABI and 100 on every Linux architecture Go
// supports; reading it properly would need sysconf, i.e. cgo.
const clockTicks = 100

// procStatus is what the footprint reads from /proc/PID/status (or
// /proc/PID/task/TID/status). Sizes are in KiB.
type procStatus struct {
	VmRSS    int64
	RssAnon  int64
	RssFile  int64
	RssShmem int64
	Threads  int
	// Context switches of this task only: in /proc/PID/status they are
	// the main thread's, not the process's.
	Voluntary    uint64
	Nonvoluntary uint64
}

// parseStatus reads a /proc status file. VmRSS and both context switch
// counters must be there (kernel threads and zombies have no VmRSS).
func parseStatus(data []byte) (procStatus, error) {
	var s procStatus
	seen := map[string]bool{}
	kib := map[string]*int64{"VmRSS": &s.VmRSS, "RssAnon": &s.RssAnon, "RssFile": &s.RssFile,
		"RssShmem": &s.RssShmem}
	counts := map[string]*uint64{"voluntary_ctxt_switches": &s.Voluntary, "nonvoluntary_ctxt_switches": &s.Nonvoluntary}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		switch {
		case kib[k] != nil:
			if len(fs) != 2 || fs[1] != "kB" {
				return s, fmt.Errorf("status %s: %q: want a size in kB", k, strings.TrimSpace(v))
			}
			n, err := strconv.ParseInt(fs[0], 10, 64)
			if err != nil {
				return s, fmt.Errorf("status %s: %w", k, err)
			}
			*kib[k] = n
		case counts[k] != nil:
			n, err := strconv.ParseUint(fs[0], 10, 64)
			if err != nil {
				return s, fmt.Errorf("status %s: %w", k, err)
			}
			*counts[k] = n
		case k == "Threads":
			n, err := strconv.Atoi(fs[0])
			if err != nil {
				return s, fmt.Errorf("status Threads: %w", err)
			}
			s.Threads = n
		default:
			continue
		}
		seen[k] = true
	}
	for _, k := range []string{"VmRSS", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"} {
		if !seen[k] {
			return s, fmt.Errorf("status has no %s", k)
		}
	}
	return s, nil
}

// parseStatCPU returns utime+stime, in clock ticks, from /proc/PID/stat.
// The command name in parentheses may hold spaces and parentheses itself,
// so the fields are counted after its last ')'.
func parseStatCPU(data []byte) (uint64, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	// After ")": state ppid pgrp session tty_nr tpgid flags minflt cminflt
	// majflt cmajflt utime stime ...
	fs := strings.Fields(string(data[i+1:]))
	if len(fs) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the command name, want at least 13", len(fs))
	}
	var sum uint64
	for _, f := range fs[11:13] {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: utime/stime %q: %w", f, err)
		}
		sum += n
	}
	return sum, nil
}

// parseSchedstat returns the time a task has run, in ns, from
// /proc/PID/task/TID/schedstat ("run_ns wait_ns timeslices").
func parseSchedstat(data []byte) (uint64, error) {
	fs := strings.Fields(string(data))
	if len(fs) != 3 {
		return 0, fmt.Errorf("schedstat %q: want 3 fields", strings.TrimSpace(string(data)))
	}
	n, err := strconv.ParseUint(fs[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("schedstat: %w", err)
	}
	return n, nil
}

// procSnapshot is one look at a process: its memory, its CPU time, and
// each thread's context switches and run time.
type procSnapshot struct {
	status   procStatus
	cpuTicks uint64
	// switches and runNs are by thread id.
	switches map[int]uint64
	runNs    map[int]uint64
}

// readProc takes a snapshot of pid. A thread that exits while the tasks
// are read is left out.
func readProc(pid int) (procSnapshot, error) {
	var snap procSnapshot
	base := fmt.Sprintf("/proc/%d", pid)
	data, err := os.ReadFile(base + "/status")
	if err != nil {
		return snap, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	if snap.status, err = parseStatus(data); err != nil {
		return snap, fmt.Errorf("pid %d: %w", pid, err)
	}
	if data, err = os.ReadFile(base + "/stat"); err != nil {
		return snap, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	if snap.cpuTicks, err = parseStatCPU(data); err != nil {
		return snap, fmt.Errorf("pid %d: %w", pid, err)
	}
	tasks, err := os.ReadDir(base + "/task")
	if err != nil {
		return snap, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	snap.switches, snap.runNs = map[int]uint64{}, map[int]uint64{}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join(base, "task", t.Name())
		sd, err1 := os.ReadFile(dir + "/status")
		rd, err2 := os.ReadFile(dir + "/schedstat")
		if err1 != nil || err2 != nil {
			continue // exited meanwhile
		}
		st, err := parseStatus(sd)
		if err != nil {
			return snap, fmt.Errorf("pid %d thread %d: %w", pid, tid, err)
		}
		run, err := parseSchedstat(rd)
		if err != nil {
			return snap, fmt.Errorf("pid %d thread %d: %w", pid, tid, err)
		}
		snap.switches[tid] = st.Voluntary + st.Nonvoluntary
		snap.runNs[tid] = run
	}
	return snap, nil
}

// taskDelta is how much the per-thread counters grew from a to b: the
// growth of threads present in both, plus all of a thread's count when it
// started in between (it started from 0). Threads that exited in between
// are lost; an idle daemon starts none and ends none.
func taskDelta(a, b map[int]uint64) uint64 {
	var sum uint64
	for tid, vb := range b {
		if va, ok := a[tid]; ok {
			if vb >= va {
				sum += vb - va
			}
		} else {
			sum += vb
		}
	}
	return sum
}

// quantile returns the q-quantile (0 ≤ q ≤ 1) of v, interpolating
// linearly between the closest ranks; NaN when v is empty.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	c := append([]float64(nil), v...)
	sort.Float64s(c)
	pos := q * float64(len(c)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

// smapsRollup is what the footprint reads from /proc/PID/smaps_rollup, in
// KiB: the proportional set size, whole and split into anonymous and file
// pages. PSS charges each shared page to its sharers in equal parts, so a
// binary's text shared with another process counts half.
type smapsRollup struct {
	Pss     int64
	PssAnon int64
	PssFile int64
}

// parseSmapsRollup reads /proc/PID/smaps_rollup. Pss must be there;
// Pss_Anon and Pss_File (Linux 5.6+) are read when present.
func parseSmapsRollup(data []byte) (smapsRollup, error) {
	var r smapsRollup
	fields := map[string]*int64{"Pss:": &r.Pss, "Pss_Anon:": &r.PssAnon, "Pss_File:": &r.PssFile}
	seen := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 || fields[fs[0]] == nil {
			continue
		}
		if fs[2] != "kB" {
			return r, fmt.Errorf("smaps_rollup: %q: want a size in kB", sc.Text())
		}
		n, err := strconv.ParseInt(fs[1], 10, 64)
		if err != nil {
			return r, fmt.Errorf("smaps_rollup %s %w", fs[0], err)
		}
		*fields[fs[0]] = n
		seen = seen || fs[0] == "Pss:"
	}
	if !seen {
		return r, errors.New("smaps_rollup has no Pss")
	}
	return r, sc.Err()
}
