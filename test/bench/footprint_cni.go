package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cniplugin"
	"github.com/patu-dev/patu/netns"
)

// fpCNIPluginDir is where Debian's containernetworking-plugins puts bridge
// and host-local.
const fpCNIPluginDir = "/usr/lib/cni"

// cniRig is the CNI ADD measurement: a node namespace and pod namespaces,
// a bin dir as a node has it (the system plugins, patu-cni and the no-op
// plugin), and libcni with its cache in a temporary directory, as
// cniplugin's privileged tests set it up.
type cniRig struct {
	node, pod string // namespace paths; pod gets ADD and DEL through libcni
	execPod   string // holds the interface patu-cni run alone is given
	binDir    string
	cni       *libcni.CNIConfig
	plain     *libcni.NetworkConfigList // bridge + host-local
	withNoop  *libcni.NetworkConfigList // bridge + host-local + a Go plugin that only passes prevResult on
	withPatu  *libcni.NetworkConfigList // bridge + host-local + patu
	// patuConf is patu's conflist entry, for running patu-cni by hand.
	patuConf map[string]any
	seq      int
	clock    *pluginClock
}

// pluginClock is libcni's default exec with a stopwatch: it records how
// long each plugin ran, from fork to reaped.
type pluginClock struct {
	invoke.Exec
	runs []pluginRun
}

type pluginRun struct {
	plugin, cmd string
	ms          float64
}

func (c *pluginClock) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	t0 := time.Now()
	out, err := c.Exec.ExecPlugin(ctx, path, stdin, env)
	run := pluginRun{plugin: filepath.Base(path), ms: fpMs(time.Since(t0))}
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "CNI_COMMAND="); ok {
			run.cmd = v
		}
	}
	c.runs = append(c.runs, run)
	return out, err
}

// cniBench measures CNI ADD and DEL with and without patu in the chain,
// and single execs of the plugins and of reference programs, all
// interleaved in the same rounds (see cniRounds).
func (f *footprint) cniBench(ctx context.Context) error {
	r, err := f.newCNIRig()
	if err != nil {
		return err
	}
	// The whole measurement runs on one thread in the node namespace: the
	// plugins libcni starts create the host side of the veth there.
	return netns.Do(r.node, func() error { return f.cniRounds(ctx, r) })
}

func (f *footprint) newCNIRig() (*cniRig, error) {
	if _, err := os.Stat(filepath.Join(fpCNIPluginDir, "bridge")); err != nil {
		return nil, fmt.Errorf("bridge CNI plugin not found (apt-get install containernetworking-plugins): %w", err)
	}
	r := &cniRig{binDir: filepath.Join(f.tmp, "cni-bin")}
	for _, name := range []string{fpNetnsNode, fpNetnsPod, fpNetnsExec} {
		p, err := netns.Create(name)
		if err != nil {
			return nil, err
		}
		f.netnsMade = append(f.netnsMade, name)
		if err := netns.Do(p, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(lo)
		}); err != nil {
			return nil, fmt.Errorf("set lo up in %s: %w", name, err)
		}
		switch name {
		case fpNetnsNode:
			r.node = p
		case fpNetnsPod:
			r.pod = p
		default:
			r.execPod = p
		}
	}
	if err := os.Mkdir(r.binDir, 0o755); err != nil {
		return nil, err
	}
	for _, name := range []string{"bridge", "host-local", "loopback"} {
		if err := os.Symlink(filepath.Join(fpCNIPluginDir, name), filepath.Join(r.binDir, name)); err != nil {
			return nil, err
		}
	}
	for name, bin := range map[string]string{"patu": f.bins.cni, "noop": f.bins.noop} {
		if err := os.Symlink(bin, filepath.Join(r.binDir, name)); err != nil {
			return nil, err
		}
	}
	r.clock = &pluginClock{Exec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}}
	r.cni = libcni.NewCNIConfigWithCacheDir([]string{r.binDir}, filepath.Join(f.tmp, "cni-cache"), r.clock)

	bridge := map[string]any{
		"type": "bridge", "bridge": fpBridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
		"ipam": map[string]any{
			"type": "host-local", "dataDir": filepath.Join(f.tmp, "cni-ipam"),
			"ranges": []any{[]any{map[string]any{"subnet": fpCNISubnet.String()}}},
			"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
		},
	}
	r.patuConf = map[string]any{"type": "patu", "bpffs": fpPinDir,
		"capabilities": map[string]any{cniplugin.AnnotationsCapability: true}}
	list := func(plugins ...any) (*libcni.NetworkConfigList, error) {
		// One network name for both: the same host-local range and bridge.
		data, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": fpNetwork, "plugins": plugins})
		if err != nil {
			return nil, err
		}
		return libcni.ConfListFromBytes(data)
	}
	var err error
	if r.plain, err = list(bridge); err != nil {
		return nil, err
	}
	if r.withPatu, err = list(bridge, r.patuConf); err != nil {
		return nil, err
	}
	if r.withNoop, err = list(bridge, map[string]any{"type": "noop"}); err != nil {
		return nil, err
	}
	return r, nil
}

// runtimeConf is what a runtime passes for a new sandbox: a fresh id each
// time, so that nothing is reused from the last ADD.
func (r *cniRig) runtimeConf() *libcni.RuntimeConf {
	r.seq++
	id := fmt.Sprintf("%064x", 0xbe4c0000+r.seq)
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       r.pod,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", fpNamespace},
			{"K8S_POD_NAME", fmt.Sprintf("cni-%d", r.seq)},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", fmt.Sprintf("uid-%d", r.seq)},
		},
		CapabilityArgs: map[string]any{cniplugin.AnnotationsCapability: map[string]string{"bench": "footprint"}},
	}
}

// addDel runs ADD then DEL of list and returns how long each took.
func (r *cniRig) addDel(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, check func() error) (add, del float64, err error) {
	t0 := time.Now()
	if _, err := r.cni.AddNetworkList(ctx, list, rt); err != nil {
		return 0, 0, fmt.Errorf("CNI ADD: %w", err)
	}
	add = fpMs(time.Since(t0))
	var cerr error
	if check != nil {
		cerr = check()
	}
	t0 = time.Now()
	if err := r.cni.DelNetworkList(ctx, list, rt); err != nil {
		return 0, 0, errors.Join(cerr, fmt.Errorf("CNI DEL: %w", err))
	}
	return add, fpMs(time.Since(t0)), cerr
}

// fpJob is one measurement of a CNI round. run is called once per round
// and keeps its samples when count is set (not in warm-up rounds).
type fpJob struct {
	name string
	run  func(count bool) error
}

type fpExecRun struct {
	ms    float64
	minor int64
	cpuMs float64
}

// cniRounds runs every job once per round, in an order that rotates each
// round, so that the machine's drift hits all alike. The jobs:
//
//   - ADD then DEL through libcni of bridge + host-local, the same + patu,
//     and the same + a no-op Go plugin in patu's place; libcni's exec is
//     timed per plugin;
//   - single execs from this process, as libcni runs a plugin: /bin/true
//     (the machine's floor), an empty Go program (the floor of any Go
//     binary), the no-op plugin's ADD (the floor of a chained Go plugin:
//     parse stdin, print prevResult), and patu-cni ADD with the same
//     stdin, once with Patu's pins (a real registration, undone by an
//     untimed DEL) and once with a pin directory that does not exist
//     (exec, parse and print only).
//
// The first two rounds warm up and are not counted.
func (f *footprint) cniRounds(ctx context.Context, r *cniRig) error {
	dp, err := bpf.Open(fpPinDir)
	if err != nil {
		return fmt.Errorf("open patu pins: %w", err)
	}
	defer dp.Close()

	const (
		plain = iota
		noop
		patu
		variants
	)
	lists := [variants]*libcni.NetworkConfigList{plain: r.plain, noop: r.withNoop, patu: r.withPatu}
	names := [variants]string{plain: "bridge+host-local", noop: "+no-op", patu: "+patu"}
	// ADD and DEL times, and ADD by plugin: the reference plugin (bridge,
	// which runs host-local), the chained one, and libcni's own work.
	var add, del, bridgeMs, chainedMs, libcniMs [variants][]float64
	registered, patuRuns := 0, 0
	var jobs []fpJob
	for v := range variants {
		jobs = append(jobs, fpJob{name: "CNI ADD/DEL " + names[v], run: func(count bool) error {
			rt := r.runtimeConf()
			var check func() error
			if v == patu {
				// Proof that the plugin did its work, outside the timings.
				check = func() error {
					patuRuns++
					if _, err := dp.LookupPod(rt.ContainerID); err == nil {
						registered++
					}
					return nil
				}
			}
			r.clock.runs = nil
			a, d, err := r.addDel(ctx, lists[v], rt, check)
			if err != nil || !count {
				return err
			}
			var br, ch float64
			for _, run := range r.clock.runs {
				switch {
				case run.cmd != "ADD":
				case run.plugin == "bridge":
					br += run.ms
				default:
					ch += run.ms
				}
			}
			add[v], del[v] = append(add[v], a), append(del[v], d)
			bridgeMs[v], libcniMs[v] = append(bridgeMs[v], br), append(libcniMs[v], a-br-ch)
			if v != plain {
				chainedMs[v] = append(chainedMs[v], ch)
			}
			return nil
		}})
	}

	execs, cleanup, err := f.execJobs(ctx, r, dp)
	if err != nil {
		return err
	}
	defer cleanup()
	runs := make([][]fpExecRun, len(execs))
	for k, e := range execs {
		jobs = append(jobs, fpJob{name: "exec " + e.name, run: func(count bool) error {
			run, err := e.run()
			if err == nil && count {
				runs[k] = append(runs[k], run)
			}
			return err
		}})
	}

	const warm = 2
	for i := -warm; i < f.set.CNIPairs; i++ {
		for k := range jobs {
			if err := ctx.Err(); err != nil {
				return err
			}
			j := jobs[(k+i+warm)%len(jobs)]
			if err := j.run(i >= 0); err != nil {
				return fmt.Errorf("%s, round %d: %w", j.name, i, err)
			}
		}
	}

	if registered != patuRuns {
		f.rep.Notes = append(f.rep.Notes, fmt.Sprintf("CNI ADD with patu registered %d of %d pods in Patu's map: its cost is understated", registered, patuRuns))
	}
	pair := func(without, with []float64) *pairTimes {
		p := &pairTimes{Without: newFPTiming(without), With: newFPTiming(with)}
		p.DiffP50 = p.With.P50 - p.Without.P50
		// Same index, same round.
		diffs := make([]float64, len(with))
		for i := range with {
			diffs[i] = with[i] - without[i]
		}
		p.PairedDiffMedian = quantile(diffs, 0.5)
		return p
	}
	f.rep.CNIAdd = pair(add[plain], add[patu])
	f.rep.CNIAddNoop = pair(add[plain], add[noop])
	f.rep.CNIDel = pair(del[plain], del[patu])
	for v := range variants {
		f.rep.CNIAddSplit = append(f.rep.CNIAddSplit, cniSplit{Conflist: names[v],
			Bridge: newFPTiming(bridgeMs[v]), Chained: newFPTiming(chainedMs[v]), Libcni: newFPTiming(libcniMs[v])})
	}
	for k, e := range execs {
		var ms, minor, cpu []float64
		for _, r := range runs[k] {
			ms, minor, cpu = append(ms, r.ms), append(minor, float64(r.minor)), append(cpu, r.cpuMs)
		}
		f.rep.Exec = append(f.rep.Exec, execTimes{What: e.name, fpTiming: newFPTiming(ms),
			MinorFaults: quantile(minor, 0.5), CPUMs: quantile(cpu, 0.5)})
	}
	f.log.Info("CNI ADD", "plain_p50_ms", fpRound1(f.rep.CNIAdd.Without.P50), "noop_p50_ms", fpRound1(f.rep.CNIAddNoop.With.P50),
		"patu_p50_ms", fpRound1(f.rep.CNIAdd.With.P50))
	return nil
}

// fpExec is a single exec, checked.
type fpExec struct {
	name string
	run  func() (fpExecRun, error)
}

// execJobs returns the single execs of cniRounds and a func that removes
// the pod their prevResult describes.
func (f *footprint) execJobs(ctx context.Context, r *cniRig, dp *bpf.Datapath) ([]fpExec, func(), error) {
	// A real prevResult: bridge + host-local's for a pod set up by ADD in
	// its own namespace, left in place while patu-cni runs against it.
	rt := r.runtimeConf()
	rt.NetNS = r.execPod
	res, err := r.cni.AddNetworkList(ctx, r.plain, rt)
	if err != nil {
		return nil, nil, fmt.Errorf("CNI ADD for the prevResult: %w", err)
	}
	cleanup := func() { r.cni.DelNetworkList(context.WithoutCancel(ctx), r.plain, rt) }
	fail := func(err error) ([]fpExec, func(), error) {
		cleanup()
		return nil, nil, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return fail(err)
	}
	prev, err := json.Marshal(cur)
	if err != nil {
		return fail(err)
	}
	stdin := func(pinDir string) []byte {
		conf := map[string]any{}
		for k, v := range r.patuConf {
			conf[k] = v
		}
		delete(conf, "capabilities")
		conf["cniVersion"], conf["name"], conf["bpffs"] = "1.0.0", fpNetwork, pinDir
		conf["runtimeConfig"] = map[string]any{cniplugin.AnnotationsCapability: map[string]string{"bench": "footprint"}}
		conf["prevResult"] = json.RawMessage(prev)
		b, _ := json.Marshal(conf) // of plain values: cannot fail
		return b
	}
	var argv []string
	for _, a := range rt.Args {
		argv = append(argv, a[0]+"="+a[1])
	}
	env := func(cmd string) []string {
		return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + rt.ContainerID, "CNI_NETNS=" + rt.NetNS,
			"CNI_IFNAME=" + rt.IfName, "CNI_ARGS=" + strings.Join(argv, ";"), "CNI_PATH=" + r.binDir, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	withPins, noPins := stdin(fpPinDir), stdin(filepath.Join(f.tmp, "no-patu-here"))
	// run execs path and checks that it printed a result with addresses,
	// as a chained plugin's ADD must.
	run := func(path string, env []string, stdin []byte) (fpExecRun, error) {
		res, out, err := fpRunExec(path, env, stdin)
		if err != nil {
			return res, err
		}
		var got struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		if err := json.Unmarshal(out, &got); err != nil || len(got.IPs) == 0 {
			return res, fmt.Errorf("ADD printed no result: %q", tail(string(out), 300))
		}
		return res, nil
	}
	plainRun := func(path string) func() (fpExecRun, error) {
		return func() (fpExecRun, error) {
			res, _, err := fpRunExec(path, nil, nil)
			return res, err
		}
	}
	execs := []fpExec{
		{"/bin/true", plainRun("/bin/true")},
		{binEmpty, plainRun(f.bins.empty)},
		{binNoop + " ADD", func() (fpExecRun, error) { return run(f.bins.noop, env("ADD"), withPins) }},
		{"patu-cni ADD, Patu loaded", func() (fpExecRun, error) {
			res, err := run(f.bins.cni, env("ADD"), withPins)
			if err != nil {
				return res, err
			}
			if _, err := dp.LookupPod(rt.ContainerID); err != nil {
				return res, fmt.Errorf("patu-cni ADD did not register the pod: %w", err)
			}
			_, _, err = fpRunExec(f.bins.cni, env("DEL"), withPins)
			return res, err
		}},
		{"patu-cni ADD, Patu not loaded", func() (fpExecRun, error) { return run(f.bins.cni, env("ADD"), noPins) }},
	}
	return execs, cleanup, nil
}

// fpRunExec runs path once and returns its wall time (start to reaped),
// minor page faults and CPU time, and its standard output.
func fpRunExec(path string, env []string, stdin []byte) (fpExecRun, []byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(path)
	cmd.Env = env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
	}
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return fpExecRun{}, nil, fmt.Errorf("%w: %s%s", err, tail(stderr.String(), 300), tail(stdout.String(), 300))
	}
	run := fpExecRun{ms: fpMs(d)}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		run.minor = ru.Minflt
		run.cpuMs = fpMs(time.Duration(ru.Utime.Nano() + ru.Stime.Nano()))
	}
	return run, stdout.Bytes(), nil
}
