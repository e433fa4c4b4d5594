package apps

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/netns"
)

// checkConntrack checks, once the applications closed, that within settle
// no conntrack entry between the run's pods is ESTABLISHED and no Patu
// flow is open, and that neither conntrack's INVALID counter nor
// kube-proxy's INVALID drop rose during the run (the closes included).
func (r *Runner) checkConntrack(t *topo, before snap, o *Outcome) {
	var ips []netip.Addr
	for _, p := range t.net.Pods {
		ips = append(ips, p.IPv4, p.IPv6)
	}
	deadline := time.Now().Add(settle)
	var est []string
	var open []bpf.LocalFlow
	var err error
	for {
		est, err = established(t.net.Node.NetnsPath, ips)
		if err != nil {
			o.fail("conntrack: %v", err)
			return
		}
		open = nil
		if t.dp != nil {
			flows, err := t.dp.LocalFlows()
			if err != nil {
				o.fail("patu flows: %v", err)
				return
			}
			for _, f := range flows {
				if !f.Closing {
					open = append(open, f)
				}
			}
		}
		if (len(est) == 0 && len(open) == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(est) > 0 {
		o.fail("open flow: %d conntrack entries of the case's flows still ESTABLISHED %s after the applications closed:\n%s",
			len(est), settle, strings.Join(est, "\n"))
	}
	if len(open) > 0 {
		o.fail("open flow: %d Patu flow directions still open %s after the applications closed: %+v", len(open), settle, open)
	}
	var inv uint64
	err = netns.Do(t.net.Node.NetnsPath, func() error {
		var err error
		inv, err = conntrackInvalid()
		return err
	})
	if err != nil {
		o.fail("conntrack: %v", err)
	} else if inv != before.ConntrackInvalid {
		o.fail("conntrack counted %d packets INVALID during the run", inv-before.ConntrackInvalid)
	}
	ns, err := nodepath.ReadStats(t.net.Node.NetnsPath)
	if err != nil {
		o.fail("node netfilter: %v", err)
	} else if ns.InvalidDropped != before.InvalidDropped {
		o.fail("kube-proxy's rule dropped %d packets as INVALID during the run", ns.InvalidDropped-before.InvalidDropped)
	}
}

// established lists the conntrack entries in the namespace at nsPath of
// TCP from one of ips to one of ips in state ESTABLISHED.
func established(nsPath string, ips []netip.Addr) ([]string, error) {
	var out []string
	err := netns.Do(nsPath, func() error {
		for _, fam := range []string{"ipv4", "ipv6"} {
			cmd := exec.Command("conntrack", "-L", "-p", "tcp", "-f", fam)
			var so, se bytes.Buffer
			cmd.Stdout, cmd.Stderr = &so, &se
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("conntrack -L: %v: %s", err, se.String())
			}
			out = append(out, establishedLines(so.String(), ips)...)
		}
		return nil
	})
	return out, err
}

// establishedLines picks from conntrack -L output the ESTABLISHED entries
// whose original direction (the first src= and dst=) goes from one of ips
// to one of ips.
func establishedLines(list string, ips []netip.Addr) []string {
	ours := map[string]bool{}
	for _, ip := range ips {
		ours[ip.String()] = true
	}
	var out []string
	for _, line := range strings.Split(list, "\n") {
		fields := strings.Fields(line)
		if !slices.Contains(fields, "ESTABLISHED") {
			continue
		}
		var src, dst string
		for _, f := range fields {
			if v, ok := strings.CutPrefix(f, "src="); ok && src == "" {
				src = v
			}
			if v, ok := strings.CutPrefix(f, "dst="); ok && dst == "" {
				dst = v
			}
		}
		if ours[src] && ours[dst] {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// checkLifecycle unloads Patu, which must find no live flow, then deletes
// each pod as a runtime does (its processes are gone already; the network
// namespace is unmounted) and checks that its host veth disappears within
// settle: the veth goes with the namespace, so a veth still there means
// something (a stuck socket, a process) kept the namespace alive.
func (r *Runner) checkLifecycle(t *topo, o *Outcome) {
	if t.dp != nil {
		t.dp.Close()
		res, err := bpf.Unload(t.pinDir)
		t.unloaded = true
		switch {
		case err != nil:
			o.fail("unload: %v", err)
		case res.LiveFlows > 0:
			o.fail("open flow: unload found %d live flows on the packet path (kept in %s)", res.LiveFlows, res.KeptFlows)
		case res.LiveSockets > 0:
			o.fail("open flow: unload found %d sockets still in the socket map", res.LiveSockets)
		}
	}
	// Every pod first, then the waits: the kernel frees the namespaces
	// deleted meanwhile in one batch, where one at a time each waits its
	// turn behind every other namespace on the machine being freed.
	sockets := map[int]string{}
	for i, p := range t.net.Pods {
		sockets[i] = podSockets(p.NetnsPath)
		if err := killCgroup(p.CgroupDir); err != nil {
			o.fail("delete pod %s: %v", p.Name, err)
		}
		if err := netns.Delete(p.Name); err != nil {
			o.fail("delete pod %s: %v", p.Name, err)
			continue
		}
		t.deleted[i] = true
	}
	deadline := time.Now().Add(settle)
	for i, p := range t.net.Pods {
		if !t.deleted[i] {
			continue
		}
		if err := waitGone(t.net.Node.NetnsPath, p.HostIfindex, time.Until(deadline)); err != nil {
			o.fail("outlived netns: pod %s deleted, but its host veth %s is still there after %s (%v): its network namespace outlived the pod; its sockets at deletion:\n%s",
				p.Name, p.HostVeth, settle, err, sockets[i])
		}
	}
}

// waitGone waits until the link with ifindex is gone from the namespace
// at nsPath.
func waitGone(nsPath string, ifindex int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var present bool
		err := netns.Do(nsPath, func() error {
			_, err := netlink.LinkByIndex(ifindex)
			var nf netlink.LinkNotFoundError
			switch {
			case err == nil:
				present = true
			case errors.As(err, &nf):
			default:
				return err
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !present {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("still present")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// podSockets lists the TCP sockets in the namespace at nsPath that are not
// listening, for the report of a namespace that outlived its pod.
func podSockets(nsPath string) string {
	cmd := exec.Command("nsenter", "--net="+nsPath, "ss", "-tanoH", "state", "all", "exclude", "listening")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(ss: %v: %s)", err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return s
	}
	return "(none)"
}
