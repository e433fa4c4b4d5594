package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/sockperf"
)

// rrRun is one sockperf ping-pong run between the pods.
type rrRun struct {
	size int
	res  sockperf.Result
	// vethPkts is what the bridge handed the pods through their veths.
	vethPkts uint64
	// redirectBytes is what Patu's fast paths carried during the run (0
	// without Patu).
	redirectBytes uint64
}

// redirected tells whether a run with Patu took its fast path: bytes were
// carried, and the bridge handed the pods no more than a connection's
// handshake, far fewer packets than round trips.
func (r rrRun) redirected() bool {
	return r.redirectBytes > 0 && r.vethPkts < uint64(r.res.Received)/100
}

// rrAll runs sockperf ping-pong for every size, with Patu's counters when
// dp is not nil. The first call shows the commands.
func (d *demo) rrAll(ctx context.Context, dp *bpf.Datapath, showCommands bool) ([]rrRun, error) {
	var runs []rrRun
	for i, size := range rrSizes {
		r, err := d.rr(ctx, size, dp, showCommands && i == 0)
		if err != nil {
			return nil, fmt.Errorf("sockperf %s: %w", sizeName(size), err)
		}
		line := fmt.Sprintf("%-6s p50 %6.1f µs, p99 %6.1f µs, %s round trips/s; the bridge handed the pods %s packets",
			sizeName(size)+":", r.res.P50(), r.res.P99(), count(uint64(r.res.TxPerSec())), count(r.vethPkts))
		if dp != nil {
			line += fmt.Sprintf(", Patu carried %.1f MiB", mib(r.redirectBytes))
		}
		d.printf("     %s\n", line)
		runs = append(runs, r)
	}
	return runs, nil
}

// rr runs one sockperf ping-pong: the server in the server pod, the client
// in the client pod, each started fresh on a port of its own.
func (d *demo) rr(ctx context.Context, size int, dp *bpf.Datapath, show bool) (rrRun, error) {
	r := rrRun{size: size}
	d.port++
	ip, port, secs := d.server.ip.String(), strconv.Itoa(d.port), strconv.Itoa(d.rrSeconds())
	// sockperf waits 2 s after connecting, then warms up.
	ctx, cancel := context.WithTimeout(ctx, time.Duration(d.rrSeconds())*time.Second+30*time.Second)
	defer cancel()
	srvArgs := []string{"server", "--tcp", "-i", ip, "-p", port}
	cliArgs := []string{"ping-pong", "--tcp", "-i", ip, "-p", port, "-m", strconv.Itoa(size), "-t", secs, "--full-rtt"}
	if show {
		srv, cli := strings.Join(srvArgs, " "), strings.Join(cliArgs, " ")
		w := max(len(srv), len(cli))
		d.printf("     $ sockperf %-*s   (in pod %s)\n", w, srv, d.server.name)
		d.printf("     $ sockperf %-*s   (in pod %s)\n", w, cli, d.client.name)
		d.printf("     (a new server and port for each run; -m %d for the other size)\n", rrSizes[len(rrSizes)-1])
	}
	srv, err := startBackground(ctx, d.server, "sockperf", srvArgs...)
	if err != nil {
		return r, err
	}
	defer srv.stop()
	if err := waitListening(ctx, srv.cmd.Process.Pid, d.port, srv.done); err != nil {
		return r, err
	}

	var c0, c1 uint64
	if dp != nil {
		if c0, err = dp.CarriedBytes(); err != nil {
			return r, err
		}
	}
	v0, err := d.vethPackets()
	if err != nil {
		return r, err
	}
	cli := exec.CommandContext(ctx, "sockperf", cliArgs...)
	var out bytes.Buffer
	cli.Stdout, cli.Stderr = &out, &out
	cli.WaitDelay = 2 * time.Second
	if err := startInPod(d.client, cli); err != nil {
		return r, err
	}
	if err := cli.Wait(); err != nil {
		if ctx.Err() != nil {
			return r, context.Cause(ctx)
		}
		return r, fmt.Errorf("sockperf ping-pong: %w: %s", err, lastLines(out.String(), 5))
	}
	v1, err := d.vethPackets()
	if err != nil {
		return r, err
	}
	r.vethPkts = v1 - v0
	if dp != nil {
		if c1, err = dp.CarriedBytes(); err != nil {
			return r, err
		}
		r.redirectBytes = c1 - c0
	}
	if r.res, err = sockperf.Parse(out.String()); err != nil {
		return r, err
	}
	if r.res.TxPerSec() == 0 {
		return r, errors.New("sockperf reported no valid duration")
	}
	return r, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
