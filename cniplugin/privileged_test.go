package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/pods"
)

const (
	testPinDir = "/sys/fs/bpf/patu-test-cni"
	// systemPlugins is where Debian's containernetworking-plugins puts
	// bridge and host-local.
	systemPlugins = "/usr/lib/cni"
	nsPrefix      = "cn"
	testNetwork   = "patu-test-cn"
	testBridge    = "cnbr0"
	testSubnet4   = "10.204.1.0/24"
	testSubnet6   = "fd00:204:1::/64"
)

// cniEnvironment is a node network namespace with a CNI setup as a runtime
// has it: a bin dir (system bridge and host-local, the patu binary under
// test), a conflist bridge + host-local + patu, and libcni with its cache
// in a temporary directory. Pods are namespaces the test adds to it.
type cniEnvironment struct {
	t        *testing.T
	node     string // node netns path
	binDir   string
	logFile  string
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	list11   *libcni.NetworkConfigList // patu alone at 1.1.0, for STATUS and GC
	ctx      context.Context
	dataDir  string
	cacheDir string
}

// testPod is a pod network namespace attached through libcni.
type testPod struct {
	name, path string
	k8sName    string
	rt         *libcni.RuntimeConf
	result     *current.Result
	resultJSON []byte
	added      bool
	ipv4, ipv6 netip.Addr
	hostVeth   string
}

// newCNIEnvironment builds the node namespace and the CNI setup, and
// removes them, and any pod made with addPod, when the test ends.
func newCNIEnvironment(t *testing.T) *cniEnvironment {
	testnet.Privileged(t)
	if _, err := os.Stat(filepath.Join(systemPlugins, "bridge")); err != nil {
		t.Fatalf("this test needs the bridge and host-local CNI plugins in %s (apt-get install containernetworking-plugins): %v", systemPlugins, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	tmp := t.TempDir()
	e := &cniEnvironment{
		t:        t,
		ctx:      ctx,
		binDir:   filepath.Join(tmp, "bin"),
		dataDir:  filepath.Join(tmp, "host-local"),
		cacheDir: filepath.Join(tmp, "cache"),
		logFile:  filepath.Join(tmp, "patu-cni.log"),
	}
	// A symlink farm, as a node's cni-bin dir: the system plugins and ours.
	if err := os.Mkdir(e.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bridge", "host-local", "loopback"} {
		if err := os.Symlink(filepath.Join(systemPlugins, name), filepath.Join(e.binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(pluginBin, filepath.Join(e.binDir, "patu")); err != nil {
		t.Fatal(err)
	}
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{e.binDir}, e.cacheDir, nil)

	patu := fmt.Sprintf(`{"type":"patu","bpffs":%q,"logFile":%q,"capabilities":{%q:true,%q:true}}`,
		testPinDir, e.logFile, AnnotationsCapability, PortMappingsCapability)
	var err error
	e.list, err = libcni.ConfListFromBytes(fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":%q,"plugins":[
		{"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":false,
		 "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}],[{"subnet":%q}]]}},
		%s]}`, testNetwork, testBridge, e.dataDir, testSubnet4, testSubnet6, patu))
	if err != nil {
		t.Fatal(err)
	}
	// The Debian bridge plugin stops at CNI 1.0.0; STATUS and GC need 1.1.0.
	e.list11, err = libcni.ConfListFromBytes(fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"patu-test-cn-gc","plugins":[%s]}`, patu))
	if err != nil {
		t.Fatal(err)
	}

	// A crashed run may have left the namespaces behind.
	for _, n := range []string{"node", "p0", "p1", "p2"} {
		netns.Delete(nsPrefix + "-" + n)
	}
	e.node = e.newNetns("node")
	t.Cleanup(func() {
		// Explicitly, so that a socket lingering in a pod namespace
		// cannot keep the bridge around.
		e.do(func() error {
			if br, err := netlink.LinkByName(testBridge); err == nil {
				netlink.LinkDel(br)
			}
			return nil
		})
	})
	return e
}

// newNetns creates the namespace <prefix>-name with DAD off (so that the
// addresses bridge assigns are usable at once) and lo up, and deletes it
// when the test ends.
func (e *cniEnvironment) newNetns(name string) string {
	e.t.Helper()
	path, err := netns.Create(nsPrefix + "-" + name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := netns.Delete(nsPrefix + "-" + name); err != nil {
			e.t.Error(err)
		}
	})
	err = netns.Do(path, func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/accept_dad", []byte("0"), 0); err != nil {
				return err
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		e.t.Fatalf("set up netns %s: %v", name, err)
	}
	return path
}

// do runs fn in the node namespace: plugins libcni starts there create
// the host side of the pods' veths there.
func (e *cniEnvironment) do(fn func() error) error {
	return netns.Do(e.node, fn)
}

// loadPatu loads Patu into the test pin directory and unloads it when
// the test ends.
func loadPatu(t *testing.T) *bpf.Datapath {
	t.Helper()
	if _, err := bpf.Unload(testPinDir); err != nil {
		t.Fatal(err)
	}
	dp, err := bpf.Load(bpf.Options{PinDir: testPinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		if _, err := bpf.Unload(testPinDir); err != nil {
			t.Error(err)
		}
	})
	return dp
}

// newPod creates pod namespace <prefix>-name; addPod attaches it.
func (e *cniEnvironment) newPod(name, k8sName string, annotations map[string]string) *testPod {
	e.t.Helper()
	p := &testPod{name: name, k8sName: k8sName, path: e.newNetns(name)}
	p.rt = &libcni.RuntimeConf{
		ContainerID: strings.Repeat(fmt.Sprintf("%x", name), 64)[:64],
		NetNS:       p.path,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "patu-test"},
			{"K8S_POD_NAME", k8sName},
			{"K8S_POD_INFRA_CONTAINER_ID", "infra"},
			{"K8S_POD_UID", "uid-" + name},
		},
	}
	if annotations != nil {
		p.rt.CapabilityArgs = map[string]any{AnnotationsCapability: annotations}
	}
	// Registered before the namespace's own cleanup runs: DEL first.
	e.t.Cleanup(func() {
		if p.added {
			e.del(p, false)
		}
	})
	return p
}

// cniArgs returns CNI_ARGS as libcni passes them for p.
func (p *testPod) cniArgs() string {
	var kv []string
	for _, a := range p.rt.Args {
		kv = append(kv, a[0]+"="+a[1])
	}
	return strings.Join(kv, ";")
}

// add runs ADD for p through libcni.
func (e *cniEnvironment) add(p *testPod) {
	e.t.Helper()
	var res types.Result
	err := e.do(func() error {
		var err error
		res, err = e.cni.AddNetworkList(e.ctx, e.list, p.rt)
		return err
	})
	if err != nil {
		e.t.Fatalf("ADD %s: %v", p.name, err)
	}
	p.added = true
	if p.result, err = current.NewResultFromResult(res); err != nil {
		e.t.Fatal(err)
	}
	// As the chain's version: the current result type says 1.1.0.
	p.resultJSON = asVersion(e.t, p, e.list.CNIVersion)
	ips, _ := podIPs(p.result, "eth0")
	for _, ip := range ips {
		if ip.Is4() {
			p.ipv4 = ip
		} else {
			p.ipv6 = ip
		}
	}
	if !p.ipv4.IsValid() || !p.ipv6.IsValid() {
		e.t.Fatalf("ADD %s: want an IPv4 and an IPv6 address, result %s", p.name, p.resultJSON)
	}
	for _, iface := range hostInterfaces(p.result) {
		if iface.Name != testBridge {
			p.hostVeth = iface.Name
		}
	}
}

// del runs DEL for p through libcni; again runs it a second time as
// containerd does at RemovePodSandbox: no netns, and (its cache gone after
// the first) no prevResult.
func (e *cniEnvironment) del(p *testPod, again bool) error {
	err := e.do(func() error { return e.cni.DelNetworkList(e.ctx, e.list, p.rt) })
	if err != nil || !again {
		return err
	}
	p.added = false
	rt := *p.rt
	rt.NetNS = ""
	return e.do(func() error { return e.cni.DelNetworkList(e.ctx, e.list, &rt) })
}

func (e *cniEnvironment) check(p *testPod) error {
	return e.do(func() error { return e.cni.CheckNetworkList(e.ctx, e.list, p.rt) })
}

// link returns the link name in the namespace at path.
func link(t *testing.T, path, name string) netlink.Link {
	t.Helper()
	var l netlink.Link
	if err := netns.Do(path, func() error {
		var err error
		l, err = netlink.LinkByName(name)
		return err
	}); err != nil {
		t.Fatalf("find %s in %s: %v", name, path, err)
	}
	return l
}

// wantRegistered checks p's record and endpoints against the kernel's
// view of p's interfaces.
func wantRegistered(t *testing.T, e *cniEnvironment, dp *bpf.Datapath, p *testPod, noRedirect bool) {
	t.Helper()
	rec, err := dp.LookupPod(p.rt.ContainerID)
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	host := link(t, e.node, p.hostVeth).Attrs()
	pod := link(t, p.path, "eth0").Attrs()
	want := bpf.Pod{
		ID: p.rt.ContainerID, Namespace: "patu-test", Name: p.k8sName, UID: "uid-" + p.name, Netns: p.path,
		IPs:         []netip.Addr{p.ipv4, p.ipv6},
		HostIfindex: uint32(host.Index), HostMAC: host.HardwareAddr, PodMAC: pod.HardwareAddr,
		NoRedirect: noRedirect, Source: bpf.PodFromCNI, Created: rec.Created,
	}
	slices.SortFunc(rec.IPs, netip.Addr.Compare)
	if !reflect.DeepEqual(rec, want) {
		got, _ := json.Marshal(rec)
		exp, _ := json.Marshal(want)
		t.Errorf("%s: record\n got %s\nwant %s", p.name, got, exp)
	}
	if time.Since(rec.Created) > time.Minute {
		t.Errorf("%s: created %v", p.name, rec.Created)
	}
	eps := endpoints(t, dp)
	for _, ip := range want.IPs {
		ep, ok := eps[ip]
		if !ok || ep.NoRedirect != noRedirect || ep.Name != rec.String() {
			t.Errorf("%s: endpoint %s = %+v (registered %v), want name %q, no_redirect %v", p.name, ip, ep, ok, rec.String(), noRedirect)
		}
	}
}

func endpoints(t *testing.T, dp *bpf.Datapath) map[netip.Addr]bpf.Endpoint {
	t.Helper()
	eps, err := dp.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]bpf.Endpoint{}
	for _, ep := range eps {
		out[ep.IP] = ep
	}
	return out
}

// wantGone checks that nothing of p is left in the data path.
func wantGone(t *testing.T, dp *bpf.Datapath, p *testPod) {
	t.Helper()
	if rec, err := dp.LookupPod(p.rt.ContainerID); !errors.Is(err, bpf.ErrPodNotFound) {
		t.Errorf("%s: record still there: %+v, %v", p.name, rec, err)
	}
	eps := endpoints(t, dp)
	for _, ip := range []netip.Addr{p.ipv4, p.ipv6} {
		if ep, ok := eps[ip]; ok {
			t.Errorf("%s: endpoint %s still there: %+v", p.name, ip, ep)
		}
	}
}

// tcpRoundTrip sends a line from one pod to the other over TCP and reads
// the echo.
func tcpRoundTrip(t *testing.T, from, to *testPod, dst netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(to.path, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.Copy(c, c)
	}()
	var c net.Conn
	if err := netns.Do(from.path, func() error {
		var err error
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("%s -> %s: %v", from.name, ln.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("patu-cni round trip\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("%s -> %s: echo %q, %v", from.name, ln.Addr(), got, err)
	}
}

// exec runs the patu binary directly in the node namespace, as the last
// plugin of a chain is run, with prev as prevResult.
func (e *cniEnvironment) exec(cmd string, p *testPod, id, version, pinDir string, prev []byte) execResult {
	e.t.Helper()
	var r execResult
	err := e.do(func() error {
		var err error
		r, err = runPlugin(cniEnv(cmd, id, p.path, "eth0", p.cniArgs()), netConf(version, pinDir, "", string(prev)))
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// asVersion returns the result JSON of p labelled with CNI version v
// (1.0.0 and 1.1.0 results have the same fields).
func asVersion(t *testing.T, p *testPod, v string) []byte {
	t.Helper()
	r := *p.result
	r.CNIVersion = v
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestChainedPlugin(t *testing.T) {
	e := newCNIEnvironment(t)
	dp := loadPatu(t)
	p0 := e.newPod("p0", "web-0", nil)
	p1 := e.newPod("p1", "opted-out", map[string]string{pods.OptOutAnnotation: "false", "other": "x"})

	// ADD registers the pods with what the kernel has.
	e.add(p0)
	e.add(p1)
	wantRegistered(t, e, dp, p0, false)
	wantRegistered(t, e, dp, p1, true)
	tcpRoundTrip(t, p0, p1, p1.ipv4)
	tcpRoundTrip(t, p1, p0, p0.ipv6)

	// ADD prints prevResult unchanged.
	for _, v := range []string{"1.0.0", "1.1.0"} {
		prev := asVersion(t, p0, v)
		r := e.exec("ADD", p0, p0.rt.ContainerID, v, testPinDir, prev)
		if r.exitCode != 0 || !jsonEqual(t, r.stdout, prev) {
			t.Errorf("ADD %s: exit %d, result\n%s\nwant prevResult\n%s\nstderr %s", v, r.exitCode, r.stdout, prev, r.stderr)
		}
	}
	wantRegistered(t, e, dp, p0, false)

	// When the pod's namespace cannot be read, the host veth and the pod
	// MAC come from prevResult, and ADD still succeeds.
	const blind = "blind-sandbox"
	t.Cleanup(func() { pods.Unregister(dp, blind) })
	var r execResult
	if err := e.do(func() error {
		var err error
		r, err = runPlugin(cniEnv("ADD", blind, "/nonexistent/netns", "eth0", ""), netConf("1.0.0", testPinDir, "", string(p0.resultJSON)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if r.exitCode != 0 || !jsonEqual(t, r.stdout, p0.resultJSON) || !bytes.Contains(r.stderr, []byte("netlink lookup")) {
		t.Errorf("ADD with an unreadable netns: exit %d, stdout %s, stderr %s", r.exitCode, r.stdout, r.stderr)
	}
	rec, err := dp.LookupPod(blind)
	host := link(t, e.node, p0.hostVeth).Attrs()
	podMAC := parseMAC(p0.result.Interfaces[podInterface(p0.result, "eth0")].Mac)
	if err != nil || rec.HostIfindex != uint32(host.Index) || !bytes.Equal(rec.HostMAC, host.HardwareAddr) ||
		!bytes.Equal(rec.PodMAC, podMAC) || len(rec.IPs) != 2 {
		t.Errorf("ADD with an unreadable netns: record %+v, %v; want host veth %d %s, pod MAC %s", rec, err, host.Index, host.HardwareAddr, podMAC)
	}
	if _, err := pods.Unregister(dp, blind); err != nil {
		t.Fatal(err)
	}
	// The endpoints are p0's as well; put them back.
	e.exec("ADD", p0, p0.rt.ContainerID, "1.0.0", testPinDir, p0.resultJSON)
	wantRegistered(t, e, dp, p0, false)

	if err := e.check(p0); err != nil {
		t.Errorf("CHECK %s: %v", p0.name, err)
	}
	if err := e.cni.GetStatusNetworkList(e.ctx, e.list11); err != nil {
		t.Errorf("STATUS: %v", err)
	}

	// GC removes CNI records of sandboxes not listed, once old enough.
	old := time.Now().Add(-time.Hour)
	for _, p := range []bpf.Pod{
		{ID: "stale", IPs: []netip.Addr{netip.MustParseAddr("10.204.1.250")}, Source: bpf.PodFromCNI, Created: old},
		{ID: "stale-confirmed", IPs: []netip.Addr{netip.MustParseAddr("10.204.1.249")}, Source: bpf.PodFromCNI | bpf.PodFromRuntime, Confirmed: true, Created: old},
		{ID: "young", IPs: []netip.Addr{netip.MustParseAddr("10.204.1.251")}, Source: bpf.PodFromCNI, Created: time.Now()},
		{ID: "hook", IPs: []netip.Addr{netip.MustParseAddr("10.204.1.252")}, Source: bpf.PodFromHook, Created: old},
		{ID: "runtime", IPs: []netip.Addr{netip.MustParseAddr("10.204.1.253")}, Source: bpf.PodFromRuntime, Created: old},
	} {
		if _, err := pods.Register(dp, p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pods.Unregister(dp, p.ID) })
	}
	err = e.cni.GCNetworkList(e.ctx, e.list11, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: p0.rt.ContainerID, IfName: "eth0"}, {ContainerID: p1.rt.ContainerID, IfName: "eth0"},
	}})
	if err != nil {
		t.Errorf("GC: %v", err)
	}
	var ids []string
	all, err := dp.Pods()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range all {
		ids = append(ids, p.ID)
	}
	want := []string{p0.rt.ContainerID, p1.rt.ContainerID, "hook", "runtime", "young"}
	slices.Sort(ids)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("after GC: records %v, want %v", ids, want)
	}
	eps := endpoints(t, dp)
	for _, ip := range []string{"10.204.1.250", "10.204.1.249"} {
		if _, ok := eps[netip.MustParseAddr(ip)]; ok {
			t.Errorf("after GC: endpoint %s of a removed record is left", ip)
		}
	}

	// DEL twice, the second time without netns and prevResult.
	if err := e.del(p1, true); err != nil {
		t.Fatalf("DEL %s: %v", p1.name, err)
	}
	wantGone(t, dp, p1)
	wantRegistered(t, e, dp, p0, false)

	// CHECK says what is missing.
	if _, err := pods.Unregister(dp, p0.rt.ContainerID); err != nil {
		t.Fatal(err)
	}
	if err := e.check(p0); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("CHECK of an unregistered pod = %v, want 'not registered'", err)
	}
	if err := e.del(p0, true); err != nil {
		t.Fatalf("DEL %s: %v", p0.name, err)
	}
	wantGone(t, dp, p0)

	log, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"msg=registered", "msg=unregistered", "unregistered stale pod", "sandbox=stale "} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log file lacks %q:\n%s", want, log)
		}
	}
}

// TestXDPPlumbing: ADD gives the XDP path what it needs, from the same
// record as the socket path: a route per pod address into the pod's host
// veth, and the pod's hostPorts (portMappings capability) for each of its
// address families. DEL takes them away again.
func TestXDPPlumbing(t *testing.T) {
	e := newCNIEnvironment(t)
	dp := loadPatu(t)
	p0 := e.newPod("p0", "web-0", nil)
	p0.rt.CapabilityArgs = map[string]any{PortMappingsCapability: []map[string]any{
		{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.7"},
	}}
	p1 := e.newPod("p1", "no-xdp", map[string]string{pods.XDPAnnotation: "false"})
	e.add(p0)
	e.add(p1)

	veth := link(t, e.node, p0.hostVeth)
	podLink := link(t, p0.path, "eth0")
	routes, err := dp.XDPRoutes()
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[netip.Addr]bpf.XDPRoute{}
	for _, r := range routes {
		byIP[r.IP] = r
	}
	for _, ip := range []netip.Addr{p0.ipv4, p0.ipv6} {
		r, ok := byIP[ip]
		if !ok || r.HostIfindex != uint32(veth.Attrs().Index) || r.Excluded ||
			r.HostMAC.String() != veth.Attrs().HardwareAddr.String() || r.PodMAC.String() != podLink.Attrs().HardwareAddr.String() {
			t.Errorf("route to %s: %+v (found %v); want ifindex %d, host MAC %s, pod MAC %s", ip, r, ok,
				veth.Attrs().Index, veth.Attrs().HardwareAddr, podLink.Attrs().HardwareAddr)
		}
	}
	if r := byIP[p1.ipv4]; !r.Excluded {
		t.Errorf("route to the opted-out pod %s: %+v, want excluded", p1.ipv4, r)
	}

	hps, err := dp.HostPorts()
	if err != nil {
		t.Fatal(err)
	}
	want := []bpf.HostPort{
		{Proto: 6, HostPort: 8080, PodIP: p0.ipv4, PodPort: 80},
		{Proto: 6, HostPort: 8080, PodIP: p0.ipv6, PodPort: 80},
		{HostIP: netip.MustParseAddr("192.0.2.7"), Proto: 17, HostPort: 5353, PodIP: p0.ipv4, PodPort: 53},
	}
	for _, w := range want {
		if !slices.Contains(hps, w) {
			t.Errorf("hostPorts %+v lack %+v", hps, w)
		}
	}
	if len(hps) != len(want) {
		t.Errorf("hostPorts %+v, want %d", hps, len(want))
	}

	if err := e.del(p0, true); err != nil {
		t.Fatal(err)
	}
	if hps, _ := dp.HostPorts(); len(hps) != 0 {
		t.Errorf("after DEL: hostPorts %+v", hps)
	}
	routes, _ = dp.XDPRoutes()
	for _, r := range routes {
		if r.IP == p0.ipv4 || r.IP == p0.ipv6 {
			t.Errorf("after DEL: route %+v", r)
		}
	}
}

func TestChainedPluginWithoutPatu(t *testing.T) {
	e := newCNIEnvironment(t)
	if _, err := bpf.Unload(testPinDir); err != nil {
		t.Fatal(err)
	}
	p := e.newPod("p2", "no-patu", nil)
	e.add(p)
	r := e.exec("ADD", p, p.rt.ContainerID, "1.0.0", testPinDir, p.resultJSON)
	if r.exitCode != 0 || !jsonEqual(t, r.stdout, p.resultJSON) || len(r.stderr) != 0 {
		t.Errorf("ADD: exit %d, result\n%s\nwant prevResult\n%s\nstderr %s", r.exitCode, r.stdout, p.resultJSON, r.stderr)
	}
	if _, err := os.Stat(testPinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ADD without Patu left %s: %v", testPinDir, err)
	}
	if err := e.check(p); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := e.cni.GetStatusNetworkList(e.ctx, e.list11); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	if err := e.cni.GCNetworkList(e.ctx, e.list11, &libcni.GCArgs{}); err != nil {
		t.Errorf("GC: %v", err)
	}
	if err := e.del(p, true); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if _, err := os.Stat(testPinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("without Patu, %s appeared: %v", testPinDir, err)
	}
	log, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "patu not loaded") {
		t.Errorf("log file lacks 'patu not loaded':\n%s", log)
	}
}

// TestAddLatency times the bare plugin binary: ADD then DEL of a pod whose
// veth exists, as the last plugin of a chain sees it, n times. It reports;
// it does not judge (timings on shared CI machines are noise).
func TestAddLatency(t *testing.T) {
	e := newCNIEnvironment(t)
	dp := loadPatu(t)
	p := e.newPod("p0", "latency", nil)
	e.add(p)
	const n = 200
	var adds, dels, bare, baseline, inProcess []time.Duration
	timed := func(out *[]time.Duration, fn func() error) error {
		start := time.Now()
		err := fn()
		*out = append(*out, time.Since(start))
		return err
	}
	ok := func(what string, r execResult, err error) error {
		if err == nil && (r.exitCode != 0 || len(r.stderr) != 0) {
			err = fmt.Errorf("%s: exit %d, stdout %s, stderr %s", what, r.exitCode, r.stdout, r.stderr)
		}
		return err
	}
	noPatu := filepath.Join(t.TempDir(), "not-loaded")
	err := e.do(func() error {
		for i := range n {
			id := fmt.Sprintf("latency-%03d", i)
			err := timed(&adds, func() error {
				r, err := runPlugin(cniEnv("ADD", id, p.path, "eth0", "IgnoreUnknown=1;K8S_POD_NAME=latency"), netConf("1.0.0", testPinDir, "", string(p.resultJSON)))
				return ok("ADD", r, err)
			})
			if err != nil {
				return err
			}
			if _, err := dp.LookupPod(id); err != nil {
				return fmt.Errorf("ADD %d did not register: %w", i, err)
			}
			err = timed(&dels, func() error {
				r, err := runPlugin(cniEnv("DEL", id, p.path, "eth0", ""), netConf("1.0.0", testPinDir, "", string(p.resultJSON)))
				return ok("DEL", r, err)
			})
			if err != nil {
				return err
			}
		}
		// The plugin's own work, without process start-up.
		plugin := &Plugin{Stdout: io.Discard, Stderr: io.Discard}
		for i := range n {
			args := &skel.CmdArgs{
				ContainerID: fmt.Sprintf("inproc-%03d", i), Netns: p.path, IfName: "eth0", Args: "K8S_POD_NAME=latency",
				StdinData: netConf("1.0.0", testPinDir, "", string(p.resultJSON)),
			}
			if err := timed(&inProcess, func() error { return plugin.Add(args) }); err != nil {
				return err
			}
			if err := plugin.Del(args); err != nil {
				return err
			}
		}
		for range n {
			err := timed(&bare, func() error {
				r, err := runPlugin(cniEnv("ADD", "bare", p.path, "eth0", ""), netConf("1.0.0", noPatu, "", string(p.resultJSON)))
				return ok("ADD without Patu", r, err)
			})
			if err != nil {
				return err
			}
			if err := timed(&baseline, exec.Command("/bin/true").Run); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if recs, err := dp.Pods(); err != nil || len(recs) != 1 {
		t.Errorf("after %d ADD+DEL: %d records (%v), want only the pod's", n, len(recs), err)
	}
	t.Logf("%d runs of the binary: ADD %s; DEL %s; ADD without Patu loaded %s", n, percentiles(adds), percentiles(dels), percentiles(bare))
	t.Logf("%d runs of Plugin.Add in process (no exec): %s; exec of /bin/true: %s", n, percentiles(inProcess), percentiles(baseline))
}

func percentiles(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[int(q*float64(len(s)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("p50 %v p90 %v max %v", at(0.5), at(0.9), s[len(s)-1].Round(10*time.Microsecond))
}
