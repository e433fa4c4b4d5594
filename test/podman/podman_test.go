package podman

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/fanout"
	"github.com/patu-dev/patu/internal/testnet"
)

const streamBytes = 32 << 20

// TestPodman runs podman with Patu's hooks.d files and no daemon: every
// container is recorded by `patu hook createRuntime` before its program
// runs, and removed by `patu hook poststop`.
func TestPodman(t *testing.T) {
	testnet.Privileged(t)
	e := newEnv(t)
	ctx := context.Background()

	t.Run("not-loaded", func(t *testing.T) {
		e := e.with(t)
		// Hooks installed, Patu not loaded: containers start anyway, and
		// the failure is counted where patu status finds it.
		id := e.run(ctx, nil, "sleep", "600")
		if f := e.failures(); f.Count != 1 || f.Recent[0].Container != id || !strings.Contains(f.Recent[0].Error, "patu load") {
			t.Errorf("failures %+v: want the createRuntime of %s, saying to run patu load", f, id[:12])
		}
		e.podman(ctx, "rm", "-f", "-t", "0", id)
		// Not loaded is a state status reports, with the failures.
		out, err := exec.Command(bins.patu, "--bpffs", pinDir, "status", "--state-dir", e.stateDir).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "patu is not loaded") || !strings.Contains(string(out), "OCI hook failures: 1") {
			t.Errorf("patu status without Patu: %v\n%s", err, out)
		}
	})
	if out, err := exec.Command(bins.patu, "--bpffs", pinDir, "load").CombinedOutput(); err != nil {
		t.Fatalf("patu load: %v\n%s", err, out)
	}
	failed := e.failures().Count

	// Two containers on podman's default network, started after Patu.
	a := e.server(ctx, "--name", "a")
	b := e.run(ctx, []string{"--name", "b"}, "sleep", "3600")
	recA, recB := e.record(a), e.record(b)
	ipA := e.ip(ctx, a)

	t.Run("records", func(t *testing.T) {
		e := e.with(t)
		// The host veth (netavark's) is recorded too, for the XDP path.
		for _, r := range []bpf.Pod{recA, recB} {
			if r.Source != bpf.PodFromHook || r.Namespace != "podman" || r.Name != r.ID[:12] || r.NoRedirect ||
				len(r.IPs) != 1 || len(r.Cgroups) != 1 || !strings.HasPrefix(r.Netns, "/run/netns/netns-") ||
				r.HostIfindex == 0 || len(r.PodMAC) != 6 || len(r.HostMAC) != 6 {
				t.Errorf("record %+v", r)
			}
		}
		if recA.IPs[0] != ipA {
			t.Errorf("record of a holds %v, podman says %s", recA.IPs, ipA)
		}
		out, err := exec.Command(bins.patu, "--bpffs", pinDir, "status", "--state-dir", e.stateDir).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "podman/"+a[:12]) || !strings.Contains(string(out), "hook") {
			t.Errorf("patu status: %v\n%s", err, out)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		e := e.with(t)
		c0 := e.carried()
		res := e.client(ctx, b, "--connect", netip.AddrPortFrom(ipA, 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(streamBytes))
		c1 := e.carried()
		red := c1 - c0
		t.Logf("b -> a: %d bytes intact, %d redirected", res.Bytes, red)
		if res.Bytes != streamBytes {
			t.Errorf("moved %d bytes, want %d", res.Bytes, streamBytes)
		}
		if red < uint64(res.Bytes)*9/10 {
			t.Errorf("redirected %d bytes of %d", red, res.Bytes)
		}
	})

	t.Run("pods", func(t *testing.T) {
		e := e.with(t)
		// Two podman pods: infra + app sharing a netns each; the app of
		// one talks to the app of the other.
		infra1, infra2 := e.pod(ctx, "p1"), e.pod(ctx, "p2")
		srv := e.server(ctx, "--pod", "p1", "--name", "p1-app")
		cli := e.run(ctx, []string{"--pod", "p2", "--name", "p2-app"}, "sleep", "3600")
		ip1 := e.ip(ctx, srv)
		ri, rs, rc := e.record(infra1), e.record(srv), e.record(cli)
		if ri.IPs[0] != ip1 || rs.IPs[0] != ip1 || rs.Name != infra1[:12] || rc.Name != infra2[:12] {
			t.Errorf("pod records: infra %+v, server %+v, client %+v", ri, rs, rc)
		}
		c0 := e.carried()
		res := e.client(ctx, cli, "--connect", netip.AddrPortFrom(ip1, 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(streamBytes))
		red := e.carried() - c0
		t.Logf("pod p2 -> pod p1: %d bytes intact, %d redirected", res.Bytes, red)
		if red < uint64(res.Bytes)*9/10 {
			t.Errorf("redirected %d bytes of %d", red, res.Bytes)
		}
		// An app container goes, the pod stays: its address stays too.
		e.podman(ctx, "rm", "-f", "-t", "0", srv)
		e.assertGone([]string{srv}, nil, rs.Cgroups)
		if left := e.leftovers(nil, []netip.Addr{ip1}, nil); len(left) != 1 {
			t.Errorf("pod p1's address went with its app container")
		}
		e.podman(ctx, "pod", "rm", "-f", "-t", "0", "p1")
		e.podman(ctx, "pod", "rm", "-f", "-t", "0", "p2")
		ids := []string{infra1, infra2, srv, cli}
		ips := []netip.Addr{ip1, rc.IPs[0]}
		cgs := append(append(append([]uint64{}, ri.Cgroups...), rs.Cgroups...), rc.Cgroups...)
		e.assertGone(ids, ips, cgs)
	})

	t.Run("opt-out", func(t *testing.T) {
		e := e.with(t)
		c := e.server(ctx, "--name", "c", "--annotation", "patu.io/redirect=false")
		rec := e.record(c)
		if !rec.NoRedirect || len(rec.Cgroups) != 0 {
			t.Fatalf("opted-out record %+v: want NoRedirect and no cgroups", rec)
		}
		c0 := e.carried()
		res := e.client(ctx, b, "--connect", netip.AddrPortFrom(rec.IPs[0], 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(4<<20))
		c1 := e.carried()
		if d := c1 - c0; d != 0 {
			t.Errorf("redirected %d bytes to an opted-out container", d)
		}
		if o := e.local().OptedOut; o == 0 {
			t.Errorf("no connection counted as opted out")
		}
		t.Logf("%d bytes over TCP to the opted-out container", res.Bytes)
		e.podman(ctx, "rm", "-f", "-t", "0", c)
		e.assertGone([]string{c}, rec.IPs, nil)
	})

	t.Run("host-network", func(t *testing.T) {
		e := e.with(t)
		// No netns of its own: nothing to record, and no failure either.
		before, _ := e.dp().Pods()
		id := e.run(ctx, []string{"--network", "host"}, "sleep", "600")
		none := e.run(ctx, []string{"--network", "none"}, "sleep", "600")
		after, _ := e.dp().Pods()
		if len(after) != len(before) {
			t.Errorf("records %d before, %d after host-network and no-network containers", len(before), len(after))
		}
		e.podman(ctx, "rm", "-f", "-t", "0", id, none)
		if f := e.failures(); f.Count != failed {
			t.Errorf("failures %+v", f)
		}
	})

	t.Run("stop-start-rm", func(t *testing.T) {
		e := e.with(t)
		d := e.server(ctx, "--name", "d")
		r1 := e.record(d)
		// Stopped: poststop ran, nothing of it is left.
		e.podman(ctx, "stop", "-t", "0", d)
		e.assertGone([]string{d}, r1.IPs, r1.Cgroups)
		// Started again: the same id is recorded again, with its new
		// cgroup (and maybe a new address).
		e.podman(ctx, "start", d)
		e.waitReady(ctx, d)
		r2 := e.record(d)
		if len(r2.Cgroups) != 1 || !e.dp().IsAttached(r2.Cgroups[0]) {
			t.Errorf("restarted container %+v: cgroup not attached", r2)
		}
		c0 := e.carried()
		e.client(ctx, b, "--connect", netip.AddrPortFrom(r2.IPs[0], 8080).String(),
			"--mode", "stream", "--bytes", strconv.Itoa(8<<20))
		if red := e.carried() - c0; red < 4<<20 {
			t.Errorf("restarted container: redirected only %d bytes", red)
		}
		e.podman(ctx, "rm", "-f", "-t", "0", d)
		e.assertGone([]string{d}, append(r1.IPs, r2.IPs...), append(r1.Cgroups, r2.Cgroups...))
	})

	t.Run("churn", func(t *testing.T) {
		e := e.with(t)
		// 40 containers (1.4 s each on 2 cores) to stay inside CI's
		// time; PATU_PODMAN_CHURN=100 for a longer churn.
		n, width := 40, 5
		if v, err := strconv.Atoi(os.Getenv("PATU_PODMAN_CHURN")); err == nil && v > 0 {
			n = v
		}
		start := time.Now()
		ids := make([]string, n)
		dp := e.dp()
		err := fanout.Run(n, width, func(i int) error {
			flags := []string{"--name", fmt.Sprint("churn-", i)}
			if i%4 == 3 {
				flags = append(flags, "--annotation", "patu.io/redirect=false")
			}
			id, err := e.tryRun(ctx, e.conf, flags, "sleep", "3600")
			if err != nil {
				return err
			}
			ids[i] = id
			if _, err := dp.LookupPod(id); err != nil {
				return fmt.Errorf("churn-%d not recorded when podman run returned: %w", i, err)
			}
			_, err = e.tryPodman(ctx, e.conf, "rm", "-f", "-t", "0", id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d containers started and removed, %d at a time, in %s", n, width, time.Since(start).Round(time.Millisecond))
		e.assertGone(ids, nil, nil)
		all, _ := dp.Pods()
		eps, _ := dp.Endpoints()
		atts, _ := dp.Attachments()
		// Only a and b remain.
		if len(all) != 2 || len(eps) != 2 || len(atts) != 2 {
			t.Fatalf("after churn: %d records, %d endpoints, %d attachments; want 2 each (a and b):\n%v\n%v\n%v",
				len(all), len(eps), len(atts), all, eps, atts)
		}
	})

	t.Run("start-cost", func(t *testing.T) { startCost(t, e.with(t), b) })

	e.podman(ctx, "rm", "-f", "-t", "0", a, b)
	e.assertGone([]string{a, b}, append(recA.IPs, recB.IPs...), append(recA.Cgroups, recB.Cgroups...))
	dp := e.dp()
	all, _ := dp.Pods()
	eps, _ := dp.Endpoints()
	atts, _ := dp.Attachments()
	if len(all)+len(eps)+len(atts) != 0 {
		t.Errorf("left: records %v, endpoints %v, attachments %v", all, eps, atts)
	}
	if f := e.failures(); f.Count != failed {
		t.Errorf("patu hook failed %d times with Patu loaded: %+v", f.Count-failed, f.Recent)
	}
}

// startCost measures what the hooks add to a container start: podman run
// -d with the hooks.d files and without (interleaved, so load on the
// machine hits both alike), and patu hook alone, exec'd as runc does. It
// asserts only that each works: the figures are logged, from 4 rounds by
// default (CI's time); PATU_PODMAN_ROUNDS=20 for figures worth quoting.
func startCost(t *testing.T, e *env, live string) {
	ctx := context.Background()
	rounds := 4
	if v, err := strconv.Atoi(os.Getenv("PATU_PODMAN_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	var with, without, rmWith, rmWithout []time.Duration
	for i := range rounds {
		for _, hooks := range []bool{i%2 == 0, i%2 != 0} {
			conf := e.bareConf
			if hooks {
				conf = e.conf
			}
			t0 := time.Now()
			id, err := e.tryRun(ctx, conf, []string{"--name", fmt.Sprintf("cost-%d-%v", i, hooks)}, "sleep", "3600")
			if err != nil {
				t.Fatal(err)
			}
			d := time.Since(t0)
			t0 = time.Now()
			if _, err := e.tryPodman(ctx, conf, "rm", "-f", "-t", "0", id); err != nil {
				t.Fatal(err)
			}
			rm := time.Since(t0)
			if hooks {
				with, rmWith = append(with, d), append(rmWith, rm)
			} else {
				without, rmWithout = append(without, d), append(rmWithout, rm)
			}
		}
	}
	t.Logf("podman run -d, %d each: with Patu's hooks p50 %s (p90 %s), without p50 %s (p90 %s): +%s",
		rounds, ms(percentile(with, 50)), ms(percentile(with, 90)), ms(percentile(without, 50)), ms(percentile(without, 90)),
		ms(percentile(with, 50)-percentile(without, 50)))
	t.Logf("podman rm -f, %d each: with Patu's hooks p50 %s, without p50 %s: +%s",
		rounds, ms(percentile(rmWith, 50)), ms(percentile(rmWithout, 50)), ms(percentile(rmWith, 50)-percentile(rmWithout, 50)))

	// patu hook alone, on a live container: poststop (unregister) then
	// createRuntime (register, attach) again, as a runtime execs it.
	info := e.podman(ctx, "inspect", live, "--format", "{{.State.Pid}} {{.StaticDir}}")
	f := strings.Fields(info)
	pid, _ := strconv.Atoi(f[0])
	create := fmt.Sprintf(`{"ociVersion":"1.0.2-dev","id":%q,"status":"creating","pid":%d,"bundle":%q,"annotations":{"io.container.manager":"libpod"}}`, live, pid, f[1])
	stop := fmt.Sprintf(`{"ociVersion":"1.0.2-dev","id":%q,"status":"stopped","bundle":%q}`, live, f[1])
	execHook := func(stage, state string) time.Duration {
		cmd := exec.Command(bins.patu, "--bpffs", pinDir, "hook", "--state-dir", e.stateDir, stage)
		cmd.Stdin = strings.NewReader(state)
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		d := time.Since(t0)
		if err != nil || len(out) > 0 {
			t.Fatalf("patu hook %s: %v\n%s", stage, err, out)
		}
		return d
	}
	// The exec and start-up of the binary alone: patu hook -h.
	startup := func() time.Duration {
		cmd := exec.Command(bins.patu, "hook", "-h")
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("patu hook -h: %v\n%s", err, out)
		}
		return time.Since(t0)
	}
	var tc, ts, tu []time.Duration
	for range 3 * rounds {
		ts = append(ts, execHook("poststop", stop))
		tc = append(tc, execHook("createRuntime", create))
		tu = append(tu, startup())
	}
	if _, err := e.dp().LookupPod(live); err != nil {
		t.Fatalf("%s not recorded after the hook runs: %v", live[:12], err)
	}
	t.Logf("patu hook exec'd, %d each: createRuntime p50 %s (p90 %s), poststop p50 %s (p90 %s); exec and start-up alone (hook -h) p50 %s",
		len(tc), ms(percentile(tc, 50)), ms(percentile(tc, 90)), ms(percentile(ts, 50)), ms(percentile(ts, 90)), ms(percentile(tu, 50)))
}
