package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/fanout"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
)

// containerd 1.6 (Debian): containerd's event stream, the patu CNI plugin
// chained after bridge, per-container and per-pod cgroups.
func TestContainerd16(t *testing.T) {
	suite(t, nodeConfig{flavor: "1.6", prefix: "e16", subnet: "10.207.1.0/24", events: "auto", cni: true,
		uplink: "10.207.101.0/24"})
}

// containerd 2.x: CRI GetContainerEvents, no CNI plugin (the daemon alone
// registers pods from the CRI), dual-stack pods.
func TestContainerd2(t *testing.T) {
	suite(t, nodeConfig{flavor: "2", prefix: "e2x", subnet: "10.207.2.0/24", subnet6: "fd00:207:2::/64",
		events: "cri", cni: false})
}

const streamBytes = 32 << 20

var serverCmd = []string{"/bin/patu-testpeer", "serve", "--listen", "[::]:8080", "--mode", "sink"}

func suite(t *testing.T, cfg nodeConfig) {
	n := newNode(t, cfg)
	ctx := context.Background()

	// Pods that run before the daemon starts are picked up by its first
	// reconcile. a has a pod cgroup (as kubelet makes), b does not (plain
	// crictl): each of b's containers is attached on its own.
	a := n.runPod(ctx, "a", true, nil, serverCmd...)
	b := n.runPod(ctx, "b", false, nil, "sleep", "3600")
	n.startDaemon()
	recA, recB := n.waitRegistered(a, 1), n.waitRegistered(b, 1)
	if cfg.cni && (recA.Source&bpf.PodFromCNI == 0 || recA.HostIfindex == 0) {
		t.Errorf("pod a was not recorded by the CNI plugin: %+v", recA)
	}

	t.Run("redirect", func(t *testing.T) {
		for _, ip := range a.IPs {
			c0, l0 := n.carried(), n.local()
			pk0 := n.vethPackets(a)
			res := n.client(ctx, b, time.Minute, "--connect", netip.AddrPortFrom(ip, 8080).String(),
				"--mode", "stream", "--bytes", strconv.Itoa(streamBytes))
			c1, l1 := n.carried(), n.local()
			// The stream's data reaches pod a by its veth, handed there
			// by the packet path (a bulk direction): not the bridge's.
			pkts := n.vethPackets(a) - pk0
			pkts -= min(pkts, l1.BacklogPackets-l0.BacklogPackets)
			red := c1 - c0
			t.Logf("%s: %d bytes, redirected %d, veth packets %d", ip, res.Bytes, red, pkts)
			if red < uint64(res.Bytes)*9/10 {
				t.Errorf("%s: redirected %d bytes of %d", ip, red, res.Bytes)
			}
			// Over the bridge, 32 MiB are more than 20k packets.
			if pkts > 2000 {
				t.Errorf("%s: pod a's veth moved %d packets with redirect active", ip, pkts)
			}
		}
	})

	t.Run("opt-out", func(t *testing.T) {
		c := n.runPod(ctx, "c", true, map[string]string{"patu.io/redirect": "false"}, serverCmd...)
		defer n.removePod(ctx, c)
		rec := n.waitRegistered(c, 0)
		if !rec.NoRedirect || len(rec.Cgroups) != 0 {
			t.Fatalf("opted-out pod %+v: want NoRedirect and no cgroups", rec)
		}
		c0 := n.carried()
		res := n.client(ctx, b, time.Minute, "--connect", netip.AddrPortFrom(c.IP, 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(4<<20))
		c1 := n.carried()
		if d := c1 - c0; d != 0 {
			t.Errorf("redirected %d bytes to an opted-out pod", d)
		}
		if o := n.local().OptedOut; o == 0 {
			t.Errorf("no connection counted as opted out")
		}
		t.Logf("%d bytes over TCP to the opted-out pod", res.Bytes)
	})

	if cfg.cni {
		// The host veths are the CNI plugin's to record here: the daemon
		// runs outside the lab's namespace, where they live.
		t.Run("xdp", func(t *testing.T) {
			testXDP(t, n, cfg.prefix, netip.MustParsePrefix(cfg.subnet), netip.MustParsePrefix(cfg.uplink))
		})
	}

	t.Run("stop-remove", func(t *testing.T) {
		d := n.runPod(ctx, "d", true, nil, serverCmd...)
		e := n.runPod(ctx, "e", false, nil, "sleep", "3600")
		rd, re := n.waitRegistered(d, 1), n.waitRegistered(e, 1)
		n.removePod(ctx, d)
		n.removePod(ctx, e)
		n.assertGone([]string{d.ID, e.ID}, append(rd.IPs, re.IPs...), append(rd.Cgroups, re.Cgroups...))
	})

	t.Run("churn", func(t *testing.T) {
		// Settle, then take the baseline.
		time.Sleep(500 * time.Millisecond)
		rss0 := n.daemonRSS()
		// 80 pods (0.7 s each on 2 cores) keep both containerd
		// versions' churn inside CI's time; PATU_E2E_CHURN=200 for a
		// longer one.
		pods, width := 80, 6
		if v, err := strconv.Atoi(os.Getenv("PATU_E2E_CHURN")); err == nil && v > 0 {
			pods = v
		}
		start := time.Now()
		var ids []string
		var mu = make(chan struct{}, 1)
		mu <- struct{}{}
		err := fanout.Run(pods, width, func(i int) error {
			p, err := n.lab.RunPod(ctx, rtlab.PodSpec{Name: fmt.Sprintf("churn-%d", i), Namespace: "e2e", PodCgroup: i%2 == 0})
			if err != nil {
				return err
			}
			<-mu
			ids = append(ids, p.ID)
			mu <- struct{}{}
			// Half of the pods get an app container, with and without a
			// pod cgroup: runc's work is most of churn's time on 2 cores,
			// and sandboxes alone exercise registration as much.
			if (i/2)%2 == 0 {
				if _, err := n.lab.StartContainer(ctx, p, rtlab.ContainerSpec{Name: "main", Command: []string{"sleep", "3600"}}); err != nil {
					return err
				}
			}
			if err := n.lab.StopPod(ctx, p.ID); err != nil {
				return err
			}
			return n.lab.RemovePod(ctx, p.ID)
		})
		if err != nil {
			t.Fatal(err)
		}
		n.assertGone(ids, nil, nil)
		t.Logf("%d pods created and removed in %s", pods, time.Since(start).Round(time.Millisecond))
		dp := n.dp()
		all, _ := dp.Pods()
		atts, _ := dp.Attachments()
		eps, _ := dp.Endpoints()
		// Only a and b remain (the lab's only other pods).
		if len(all) != 2 || len(eps) != len(recA.IPs)+len(recB.IPs) || len(atts) != 2 {
			t.Fatalf("after churn: %d pods, %d endpoints, %d attachments; want 2, %d, 2 (endpoints %+v)",
				len(all), len(eps), len(atts), len(recA.IPs)+len(recB.IPs), eps)
		}
		// Go returns freed memory to the OS lazily; give it a moment.
		var rss1 int64
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			rss1 = n.daemonRSS()
			if rss1 <= rss0+2048 || time.Now().After(deadline) {
				break
			}
		}
		t.Logf("daemon RSS %d KiB before %d pods, %d KiB after", rss0, pods, rss1)
		if rss1 > rss0+2048 {
			t.Errorf("daemon RSS grew from %d to %d KiB over churn", rss0, rss1)
		}
	})

	t.Run("start-to-attach", func(t *testing.T) {
		// Every container started since the daemon came up, churn
		// included: how long after its start its sockets were covered,
		// by cgroup mode (a pod cgroup, or the container's own).
		total := 0.0
		for _, mode := range []string{"pod", "container"} {
			count := n.metric(`patu_attach_gap_seconds_count{mode="` + mode + `"}`)
			if count == 0 {
				continue
			}
			total += count
			before := n.metric(`patu_attach_gap_seconds_bucket{mode="` + mode + `",le="0"}`)
			fast := n.metric(`patu_attach_gap_seconds_bucket{mode="` + mode + `",le="0.1"}`)
			within := n.metric(`patu_attach_gap_seconds_bucket{mode="` + mode + `",le="1"}`)
			t.Logf("start-to-attach gap, %s cgroups, %s events: %v containers, mean %+.1f ms, %v covered before they started, %v within 100 ms",
				mode, cfg.events, count, 1000*n.metric(`patu_attach_gap_seconds_sum{mode="`+mode+`"}`)/count, before, fast)
			// Events drive attachment: nothing may wait for a resync.
			if within < count {
				t.Errorf("%s cgroups: %v of %v containers waited more than 1 s for their attachment", mode, count-within, count)
			}
		}
		if total == 0 {
			t.Fatal("no start-to-attach gap measured")
		}
	})

	t.Run("kill-daemon", func(t *testing.T) {
		// A stream keeps going while the daemon dies: the data path is in
		// the kernel.
		type result struct {
			res peerresult.Result
			err error
		}
		done := make(chan result, 1)
		go func() {
			res, err := n.tryClient(ctx, b, time.Minute, "--connect", netip.AddrPortFrom(a.IP, 8080).String(),
				"--mode", "stream", "--duration", "3s")
			done <- result{res, err}
		}()
		time.Sleep(time.Second)
		n.stopDaemon(syscall.SIGKILL)
		c0 := n.carried()
		time.Sleep(500 * time.Millisecond)
		if c1 := n.carried(); c1 == c0 {
			t.Errorf("nothing redirected while the daemon was down")
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("stream across the daemon's kill: %v", r.err)
		}
		t.Logf("stream across the daemon's kill: %d bytes intact", r.res.Bytes)

		// Pods that came and went while it was down are reconciled.
		f := n.runPod(ctx, "f", true, nil, serverCmd...)
		defer n.removePod(ctx, f)
		g := n.runPod(ctx, "g", false, nil, "sleep", "3600")
		n.removePod(ctx, g)
		n.startDaemon()
		n.waitRegistered(f, 1)
		c0 = n.carried()
		n.client(ctx, b, time.Minute, "--connect", netip.AddrPortFrom(f.IP, 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(8<<20))
		if c1 := n.carried(); c1-c0 < 4<<20 {
			t.Errorf("new connection after restart redirected only %d bytes", c1-c0)
		}
	})

	t.Run("runtime-restart", func(t *testing.T) {
		r0 := n.metric("patu_watcher_stream_reconnects_total")
		if err := n.lab.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		h := n.runPod(ctx, "h", true, nil, serverCmd...)
		defer n.removePod(ctx, h)
		n.waitRegistered(h, 1)
		if r1 := n.metric("patu_watcher_stream_reconnects_total"); r1 <= r0 {
			t.Errorf("no stream reconnect counted across the runtime restart")
		}
		c0 := n.carried()
		n.client(ctx, b, time.Minute, "--connect", netip.AddrPortFrom(h.IP, 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(8<<20))
		if c1 := n.carried(); c1-c0 < 4<<20 {
			t.Errorf("pod created after the runtime restart: redirected only %d bytes", c1-c0)
		}
	})

	n.removePod(ctx, a)
	n.removePod(ctx, b)
	n.assertGone([]string{a.ID, b.ID}, append(recA.IPs, recB.IPs...), append(recA.Cgroups, recB.Cgroups...))
}
