package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/patu-dev/patu/internal/gotool"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/testnet"
)

// demoBytes is the size of the verified transfer, each way.
const demoBytes = 64 << 20

// demo shows, on the benchmark's two pods, one verified transfer over the
// bridge and the same transfer with Patu loaded, with Patu's counters and
// the veth packet counts side by side. compare runs after it.
func demo(ctx context.Context, w io.Writer, bn *bench) error {
	tmp, err := os.MkdirTemp("", "patu-demo-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	fmt.Fprintf(w, "Patu demo\n=========\n\n")
	fmt.Fprintf(w, "Two pods, each a network namespace on a veth to a bridge, each with its own cgroup:\n")
	for _, p := range []*testnet.Pod{bn.a, bn.b} {
		fmt.Fprintf(w, "  %-6s %-14s %-20s host veth %-6s cgroup %s\n", p.Name, p.IPv4, p.IPv6, p.HostVeth, p.CgroupDir)
	}

	fmt.Fprintf(w, "\nBuilding patu-testpeer, the verifying traffic tool (test/peer)...\n")
	peer := filepath.Join(tmp, "patu-testpeer")
	if out, err := exec.CommandContext(ctx, gotool.Path(), "build", "-o", peer, "github.com/patu-dev/patu/test/peer").CombinedOutput(); err != nil {
		return fmt.Errorf("build patu-testpeer: %w: %s", err, tail(string(out), 1000))
	}
	srvAddr := netip.AddrPortFrom(bn.b.IPv4, 7100)
	stopServer, err := startPeerServer(ctx, bn.b, peer, srvAddr, filepath.Join(tmp, "ready"))
	if err != nil {
		return err
	}
	defer stopServer()

	transfer := func() (peerResult, uint64, error) {
		v0, err := bn.vethPackets()
		if err != nil {
			return peerResult{}, 0, err
		}
		res, err := runPeerClient(ctx, bn.a, peer, "--connect", srvAddr.String(), "--mode", "stream",
			"--bytes", fmt.Sprint(demoBytes), "--seed", "1")
		if err != nil {
			return res, 0, err
		}
		v1, err := bn.vethPackets()
		return res, v1 - v0, err
	}

	fmt.Fprintf(w, "\n1. Without Patu: pod %s streams %d MiB to an echo server in pod %s and checks every byte that comes back.\n",
		bn.a.Name, demoBytes>>20, bn.b.Name)
	res, bridgePkts, err := transfer()
	if err != nil {
		return fmt.Errorf("transfer over the bridge: %w", err)
	}
	fmt.Fprintf(w, "   %s; the bridge handed the pods %d packets.\n", res.summary(), bridgePkts)

	fmt.Fprintf(w, "\n2. Load Patu and register both pods; with the CLI that is:\n")
	for _, l := range []string{
		"patu --bpffs %[1]s load",
		"patu --bpffs %[1]s endpoint add %[2]s --name demo/%[4]s --veth %[6]s   (and its IPv6 address)",
		"patu --bpffs %[1]s endpoint add %[3]s --name demo/%[5]s --veth %[7]s   (and its IPv6 address)",
	} {
		fmt.Fprintf(w, "   "+l+"\n", bn.pinDir, bn.a.IPv4, bn.b.IPv4, bn.a.Name, bn.b.Name, bn.a.HostVeth, bn.b.HostVeth)
	}
	dp, err := bn.loadPatu(false, 0)
	if err != nil {
		return err
	}
	unloaded := false
	unload := func() error {
		if unloaded {
			return nil
		}
		unloaded = true
		_, err := bn.unloadPatu(dp)
		return err
	}
	defer unload()

	fmt.Fprintf(w, "\n3. The same transfer with Patu loaded (a new connection: only those follow the new state).\n")
	c0, err := dp.Counters()
	if err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	l0, err := dp.LocalCounters()
	if err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	res, patuPkts, err := transfer()
	if err != nil {
		return fmt.Errorf("transfer with patu: %w", err)
	}
	c1, err := dp.Counters()
	if err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	l1, err := dp.LocalCounters()
	if err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	d := diffCounters(c0, c1, l0, l1)
	// A bulk direction's packets reach the pod by its host veth, handed
	// there by the packet path, not by the bridge.
	patuPkts -= min(patuPkts, d.BacklogPackets)
	fmt.Fprintf(w, "   %s; the bridge handed the pods %d packets.\n\n", res.summary(), patuPkts)
	fmt.Fprintf(w, "   What `patu --bpffs %s status` counted for this transfer (the packet path):\n", bn.pinDir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "     connections admitted\t%d\n", d.Admitted)
	fmt.Fprintf(tw, "     pod to pod, past the bridge\t%d packets\t%.1f MiB\n", d.LocalPackets, mib(d.LocalBytes))
	tw.Flush()

	// The echo moves demoBytes each way, every byte of it on the packet
	// path once the handshake went through the bridge.
	redirected := d.LocalBytes >= 2*demoBytes && patuPkts < bridgePkts/10
	fmt.Fprintf(w, "\n   TCP end to end, past the bridge: the bridge handed the pods %d packets instead of %d.\n", patuPkts, bridgePkts)
	if !redirected {
		fmt.Fprintf(w, "\n   NOT REDIRECTED: expected every byte on the packet path and far fewer packets through the bridge.\n")
	} else {
		fmt.Fprintf(w, "   Every byte came back intact.\n")
	}
	stopServer()
	if err := unload(); err != nil {
		return err
	}
	if !redirected {
		return errors.New("demo: the transfer with patu was not redirected")
	}
	fmt.Fprintf(w, "\n4. Patu unloaded. Now a quick side-by-side measurement (1 run of 2 s each; `make bench` does 3 of 4 s):\n")
	return nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// peerResult is the JSON line patu-testpeer prints when it ends.
type peerResult struct{ peerresult.Result }

func (r peerResult) summary() string {
	return fmt.Sprintf("%d of %d connection(s) intact, %.0f MiB echoed and verified", r.OK, r.Conns, float64(r.Bytes)/(1<<20))
}

// startPeerServer starts a patu-testpeer echo server in pod p and waits for
// its ready file. The returned function stops it; calling it again is fine.
func startPeerServer(ctx context.Context, p *testnet.Pod, peer string, addr netip.AddrPort, ready string) (func(), error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	cmd := p.Command(ctx, peer, "serve", "--listen", addr.String(), "--mode", "echo", "--ready-file", ready)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start patu-testpeer server in %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() { cancel(); <-done }
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return stop, nil
		}
		select {
		case <-done:
			cancel()
			return nil, fmt.Errorf("patu-testpeer server exited before listening: %s", tail(out.String(), 1000))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("patu-testpeer server not ready after 10s: %s", tail(out.String(), 1000))
		}
	}
}

// runPeerClient runs a patu-testpeer client in pod p and parses its result.
// A transfer with any failed connection is an error.
func runPeerClient(ctx context.Context, p *testnet.Pod, peer string, args ...string) (peerResult, error) {
	out, err := runClient(ctx, p, time.Minute, nil, peer, append([]string{"client"}, args...)...)
	// Its stderr is mixed in: the result is the last JSON line.
	var jsonLines strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "{") {
			jsonLines.WriteString(l + "\n")
		}
	}
	r, perr := peerresult.Parse([]byte(jsonLines.String()))
	res := peerResult{r}
	if err != nil {
		return res, err
	}
	if perr != nil {
		return res, fmt.Errorf("%w: %s", perr, tail(out, 1000))
	}
	if res.Failed != 0 || res.OK != res.Conns {
		return res, fmt.Errorf("patu-testpeer: %d of %d connections failed: %v", res.Failed, res.Conns, res.Errors)
	}
	return res, nil
}
