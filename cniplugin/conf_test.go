package cniplugin

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/pods"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name, args        string
		ns, pod, uid, sbx string
		wantErr           bool
	}{
		{
			name: "containerd",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b6c6f0e-1d2a",
			ns:   "default", pod: "web-0", uid: "0b6c6f0e-1d2a", sbx: "abc",
		},
		{name: "podman", args: "IgnoreUnknown=1;K8S_POD_NAME=web", pod: "web"},
		{name: "empty", args: ""},
		{name: "unknown ignored", args: "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=a", pod: "a"},
		{name: "unknown refused", args: "FOO=bar;K8S_POD_NAME=a", wantErr: true},
		{name: "malformed pair", args: "IgnoreUnknown=1;K8S_POD_NAME", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := parseArgs(tc.args)
			if tc.wantErr {
				var e *types.Error
				if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables {
					t.Fatalf("parseArgs(%q) = %v, want CNI error %d", tc.args, err, types.ErrInvalidEnvironmentVariables)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{string(a.K8S_POD_NAMESPACE), string(a.K8S_POD_NAME), string(a.K8S_POD_UID), string(a.K8S_POD_INFRA_CONTAINER_ID)}
			want := []string{tc.ns, tc.pod, tc.uid, tc.sbx}
			if !slices.Equal(got, want) {
				t.Errorf("parseArgs(%q) = %q, want %q", tc.args, got, want)
			}
		})
	}
}

func TestOptOutFromRuntimeConfig(t *testing.T) {
	for _, tc := range []struct {
		name, runtimeConfig string
		want                bool
	}{
		{"no runtimeConfig (capability not declared)", ``, false},
		{"other capabilities only", `,"runtimeConfig":{"portMappings":[]}`, false},
		{"no annotations", `,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}}`, false},
		{"unrelated annotations", `,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}}`, false},
		{"opted out", `,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"patu.io/redirect":"false"}}`, true},
		{"explicitly in", `,"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"patu.io/redirect":"true"}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"patu"`+tc.runtimeConfig+`}`), true)
			if err != nil {
				t.Fatal(err)
			}
			if got := pods.OptedOut(conf.RuntimeConfig.PodAnnotations); got != tc.want {
				t.Errorf("opted out = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHostPortsFromRuntimeConfig(t *testing.T) {
	// What containerd and CRI-O send for a pod with hostPorts: the
	// portmap plugin's input, the same for every plugin declaring it.
	conf, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"patu","runtimeConfig":{"portMappings":[
		{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
		{"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"192.0.2.10"},
		{"hostPort":9000,"containerPort":9000,"protocol":"sctp"},
		{"hostPort":0,"containerPort":81,"protocol":"tcp"},
		{"hostPort":443,"containerPort":8443,"protocol":"tcp","hostIP":"::"},
		{"hostPort":444,"containerPort":8444,"protocol":"tcp","hostIP":"nope"}]}}`), true)
	if err != nil {
		t.Fatal(err)
	}
	got, problems := conf.RuntimeConfig.hostPorts()
	want := []pods.HostPort{
		{Proto: 6, HostPort: 8080, ContainerPort: 80},
		{HostIP: netip.MustParseAddr("192.0.2.10"), Proto: 17, HostPort: 5353, ContainerPort: 53},
		{HostIP: netip.IPv6Unspecified(), Proto: 6, HostPort: 443, ContainerPort: 8443},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hostPorts = %+v, want %+v", got, want)
	}
	if len(problems) != 3 {
		t.Errorf("problems = %v, want sctp, port 0 and the bad host IP", problems)
	}
}

func TestParseConf(t *testing.T) {
	conf, err := parseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"patu","bpffs":"/sys/fs/bpf/x","logFile":"/tmp/l",
		"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if conf.pinDir() != "/sys/fs/bpf/x" || conf.LogFile != "/tmp/l" || conf.PrevResult != nil {
		t.Errorf("conf = %+v", conf)
	}
	if v, ok := conf.validAttachments(); !ok || !v["a"] || len(v) != 1 {
		t.Errorf("valid attachments = %v, %v", v, ok)
	}

	conf, err = parseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"patu","cni.dev/attachments":[]}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if conf.pinDir() != bpf.DefaultPinDir {
		t.Errorf("default pin dir = %q", conf.pinDir())
	}
	if v, ok := conf.validAttachments(); !ok || len(v) != 0 {
		t.Errorf("legacy empty list: valid attachments = %v, %v; want an empty list", v, ok)
	}
	conf, _ = parseConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"patu"}`), true)
	if _, ok := conf.validAttachments(); ok {
		t.Error("no list: want ok=false")
	}

	for _, bad := range []string{`{`, `{"cniVersion":"1.0.0","name":"n","bpffs":3}`, `{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"nope"}]}}`} {
		_, err := parseConf([]byte(bad), true)
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrDecodingFailure {
			t.Errorf("parseConf(%s) = %v, want decoding failure", bad, err)
		}
	}
	// DEL and GC ignore prevResult, however broken.
	if _, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"nope"}]}}`), false); err != nil {
		t.Errorf("without prevResult parsing: %v", err)
	}
}

// Results as bridge prints them: the bridge, the host veth, then the
// pod's interface; addresses point at the pod's interface by index. (From
// 1.0.0 on, results leave out an empty "dns", as the CNI library prints
// them.)
const (
	bridge040Dual = `{"cniVersion":"0.4.0",
		"interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"veth6a1c2b3d","mac":"5e:3b:9d:11:22:33"},{"name":"eth0","mac":"0a:58:0a:f4:00:07","sandbox":"/var/run/netns/cni-1"}],
		"ips":[{"version":"4","interface":2,"address":"10.244.0.7/24","gateway":"10.244.0.1"},{"version":"6","interface":2,"address":"fd00:10:244::7/64","gateway":"fd00:10:244::1"}],
		"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}`
	bridge040V4 = `{"cniVersion":"0.4.0",
		"interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"veth6a1c2b3d","mac":"5e:3b:9d:11:22:33"},{"name":"eth0","mac":"0a:58:0a:f4:00:07","sandbox":"/var/run/netns/cni-1"}],
		"ips":[{"version":"4","interface":2,"address":"10.244.0.7/24","gateway":"10.244.0.1"}],"dns":{}}`
	bridge040V6 = `{"cniVersion":"0.4.0",
		"interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"veth6a1c2b3d","mac":"5e:3b:9d:11:22:33"},{"name":"eth0","mac":"0a:58:0a:f4:00:07","sandbox":"/var/run/netns/cni-1"}],
		"ips":[{"version":"6","interface":2,"address":"fd00:10:244::7/64","gateway":"fd00:10:244::1"}],"dns":{}}`
	bridge100Dual = `{"cniVersion":"1.0.0",
		"interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"veth6a1c2b3d","mac":"5e:3b:9d:11:22:33"},{"name":"eth0","mac":"0a:58:0a:f4:00:07","sandbox":"/var/run/netns/cni-1"}],
		"ips":[{"interface":2,"address":"10.244.0.7/24","gateway":"10.244.0.1"},{"interface":2,"address":"fd00:10:244::7/64","gateway":"fd00:10:244::1"}],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}`
	// A gateway address on the bridge (interface 0) is the host's, and
	// an address without an interface index is taken as the pod's.
	mixed100 = `{"cniVersion":"1.0.0",
		"interfaces":[{"name":"cni0","mac":"0a:58:0a:f4:00:01"},{"name":"eth0","sandbox":"/proc/42/ns/net"},{"name":"net1","sandbox":"/proc/42/ns/net"}],
		"ips":[{"interface":0,"address":"10.244.0.1/24"},{"interface":1,"address":"10.244.0.7/24"},{"interface":2,"address":"192.168.9.9/24"},
		       {"address":"fd00::7/64"},{"interface":1,"address":"10.244.0.7/24"},{"interface":9,"address":"10.9.9.9/24"}]}`
	many100 = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
		"ips":[{"interface":0,"address":"10.0.0.1/24"},{"interface":0,"address":"10.0.0.2/24"},{"interface":0,"address":"10.0.0.3/24"},
		       {"interface":0,"address":"10.0.0.4/24"},{"interface":0,"address":"10.0.0.5/24"}]}`
	// 0.3.1 results from older plugins may leave out interface indexes.
	noIndex031 = `{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.1.0.5/16"}]}`
)

func mustResultConf(t *testing.T, prev string) *NetConf {
	t.Helper()
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal([]byte(prev), &v); err != nil {
		t.Fatal(err)
	}
	conf, err := parseConf([]byte(`{"cniVersion":"`+v.CNIVersion+`","name":"n","type":"patu","prevResult":`+prev+`}`), true)
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

func TestPodIPs(t *testing.T) {
	for _, tc := range []struct {
		name, prev, ifName string
		want               []string
		total              int
	}{
		{"0.4.0 dual stack", bridge040Dual, "eth0", []string{"10.244.0.7", "fd00:10:244::7"}, 2},
		{"0.4.0 IPv4", bridge040V4, "eth0", []string{"10.244.0.7"}, 1},
		{"0.4.0 IPv6", bridge040V6, "eth0", []string{"fd00:10:244::7"}, 1},
		{"1.0.0 dual stack", bridge100Dual, "eth0", []string{"10.244.0.7", "fd00:10:244::7"}, 2},
		{"other ifname", bridge100Dual, "net1", nil, 0},
		{"host, other pod interface, duplicate and bad index skipped", mixed100, "eth0", []string{"10.244.0.7", "fd00::7"}, 2},
		{"second pod interface", mixed100, "net1", []string{"192.168.9.9", "fd00::7"}, 2},
		{"more than a record holds", many100, "eth0", []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}, 5},
		{"0.3.1 without interface index", noIndex031, "eth0", []string{"10.1.0.5"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := currentResult(mustResultConf(t, tc.prev))
			if err != nil {
				t.Fatal(err)
			}
			got, total := podIPs(res, tc.ifName)
			var want []netip.Addr
			for _, s := range tc.want {
				want = append(want, netip.MustParseAddr(s))
			}
			if !slices.Equal(got, want) || total != tc.total {
				t.Errorf("podIPs = %v (of %d), want %v (of %d)", got, total, want, tc.total)
			}
			for _, ip := range got {
				if ip.Is4In6() {
					t.Errorf("%s is IPv4-mapped: the record and endpoint keys want plain IPv4", ip)
				}
			}
		})
	}
}

func TestInterfacesFromResult(t *testing.T) {
	for _, prev := range []string{bridge040Dual, bridge100Dual} {
		res, err := currentResult(mustResultConf(t, prev))
		if err != nil {
			t.Fatal(err)
		}
		i := podInterface(res, "eth0")
		if i != 2 || parseMAC(res.Interfaces[i].Mac).String() != "0a:58:0a:f4:00:07" {
			t.Errorf("pod interface = %d", i)
		}
		var names []string
		for _, iface := range hostInterfaces(res) {
			names = append(names, iface.Name)
		}
		if !slices.Equal(names, []string{"cni0", "veth6a1c2b3d"}) {
			t.Errorf("host interfaces = %v", names)
		}
		if podInterface(res, "net1") != -1 {
			t.Error("net1 found")
		}
	}
	for _, bad := range []string{"", "zz", "00:11:22:33:44:55:66:77"} {
		if parseMAC(bad) != nil {
			t.Errorf("parseMAC(%q) != nil", bad)
		}
	}
}

func TestFitLabels(t *testing.T) {
	p := bpf.Pod{Namespace: "default", Name: strings.Repeat("n", 65), UID: strings.Repeat("u", 48), Netns: "/" + strings.Repeat("x", 192)}
	dropped := fitLabels(&p)
	if p.Name != "" || p.Netns != "" || p.Namespace != "default" || len(p.UID) != 48 || len(dropped) != 2 {
		t.Errorf("fitLabels: %+v, dropped %v", p, dropped)
	}
}
