package apps

import (
	"context"
	"fmt"
	"net"
	"time"
)

// Compare checks a run on one of Patu's paths against the bridge path's
// run of the same case: the applications observed the same thing, and
// Patu carried the transfer: the bridge delivered less than half of what
// it delivered on the bridge path, or Patu's counters say it carried more
// than half of that.
func Compare(bridge, o Outcome) []string {
	var errs []string
	if bridge.Failed() {
		return []string{"the bridge path's run failed: nothing to compare with"}
	}
	if o.Observed.Digest != bridge.Observed.Digest {
		errs = append(errs, fmt.Sprintf("observed %q, the bridge path %q", o.Observed.Digest, bridge.Observed.Digest))
	}
	if o.Path != Bridge && !Accelerated(bridge, o) {
		errs = append(errs, fmt.Sprintf("not accelerated: the bridge delivered %d bytes to the pods (%d on the bridge path), Patu carried %d",
			o.Stats.VethTx, bridge.Stats.VethTx, o.Stats.PatuBytes))
	}
	// Through a Service the connections can only have been carried by
	// matching the two ends across kube-proxy's DNAT.
	if o.Path == PatuClusterIP && o.Stats.Local.AdmittedNAT == 0 {
		errs = append(errs, "no connection admitted through the Service's translation (admitted_nat 0)")
	}
	return errs
}

// Accelerated reports whether o, on one of Patu's paths, kept most of the
// case's bytes off the bridge compared with the bridge path's run.
func Accelerated(bridge, o Outcome) bool {
	return o.Stats.VethTx*2 < bridge.Stats.VethTx || o.Stats.PatuBytes*2 > bridge.Stats.VethTx
}

// PatuShare is the share of the run's bytes Patu carried: what its paths
// carried against what the bridge delivered to the pods.
func (s Stats) PatuShare() float64 {
	total := s.PatuBytes + s.VethTx
	if total == 0 {
		return 0
	}
	return float64(s.PatuBytes) / float64(total)
}

// SelfTestCases are cases built to fail one check each: the suite's proof
// that its checks can fail. They take a few seconds each.
func (r *Runner) SelfTestCases() []Case {
	return []Case{
		{
			// A connection left open after the applications ended (held
			// by a process outside the pods, so stopping them does not
			// close it): the open-flow check must fail.
			Name: "selftest-open-flow", Pods: 2, Timeout: 20 * time.Second,
			Run: func(ctx context.Context, e *Env) (Observed, error) {
				ln, err := listenIn(e, 1, "tcp", fmt.Sprintf("%s:9100", e.Pods[1].IPv4))
				if err != nil {
					return Observed{}, err
				}
				var c net.Conn
				err = e.Pods[0].Do(func() error {
					var err error
					c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
					return err
				})
				if err != nil {
					return Observed{}, err
				}
				s, err := ln.Accept()
				if err != nil {
					return Observed{}, err
				}
				e.t.after = append(e.t.after, func() { c.Close(); s.Close() })
				go drain(s)
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(make([]byte, 1<<20)); err != nil {
					return Observed{}, err
				}
				return Observed{Digest: "held open"}, nil
			},
		},
		{
			// A socket in the server pod's namespace that outlives the
			// pod's processes, as a stuck connection does: the
			// outlived-netns check must fail.
			Name: "selftest-outlived-netns", Pods: 2, Timeout: 20 * time.Second,
			Run: func(ctx context.Context, e *Env) (Observed, error) {
				if _, err := listenIn(e, 1, "tcp", fmt.Sprintf("%s:9101", e.Pods[1].IPv4)); err != nil {
					return Observed{}, err
				}
				return Observed{Digest: "socket held"}, nil
			},
		},
		{
			// Applications that never finish: the hang check must fail,
			// also when the stuck program's children hold its output.
			Name: "selftest-hang", Pods: 2, Timeout: 3 * time.Second, Tools: []string{"sleep", "cat"},
			Run: func(ctx context.Context, e *Env) (Observed, error) {
				_, err := e.RunSh(ctx, e.Pods[0], "sleep 600 | cat")
				return Observed{Digest: "slept"}, err
			},
		},
	}
}

// listenIn listens in pod i from the runner's own process, outside the
// pod's cgroup: stopping the pod's processes does not close it. The
// listener is closed when the run's topology is removed.
func listenIn(e *Env, i int, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := e.Pods[i].Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	e.t.after = append(e.t.after, func() { ln.Close() })
	return ln, nil
}

func drain(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}
