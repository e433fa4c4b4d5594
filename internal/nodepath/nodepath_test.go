package nodepath

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/patu-dev/patu/netns"
)

func testConfig() Config {
	return Config{
		Bridge:       "xb1np-br",
		PodSubnet4:   netip.MustParsePrefix("10.231.1.0/24"),
		PodSubnet6:   netip.MustParsePrefix("fd00:231:1::/64"),
		ClusterCIDR4: netip.MustParsePrefix("10.231.0.0/17"),
		ClusterCIDR6: netip.MustParsePrefix("fd00:231::/56"),
		ServiceCIDR4: netip.MustParsePrefix("10.231.128.0/20"),
		ServiceCIDR6: netip.MustParsePrefix("fd00:231:43::/112"),
		RemotePods4:  netip.MustParsePrefix("10.231.64.0/18"),
		RemotePods6:  netip.MustParsePrefix("fd00:231:42::/64"),
		Pods:         []Pod{{ID: "pod0", IPs: []netip.Addr{netip.MustParseAddr("10.231.1.2"), netip.MustParseAddr("fd00:231:1::2")}}},
		HostPorts: []HostPort{
			{ContainerID: "pod0", Proto: "tcp", HostPort: 18080, PodIP: netip.MustParseAddr("10.231.1.2"), PodPort: 8080},
			{ContainerID: "pod0", Proto: "udp", HostPort: 18081, PodIP: netip.MustParseAddr("10.231.1.2"), PodPort: 8081},
			{ContainerID: "pod0", Proto: "tcp", HostPort: 18080, PodIP: netip.MustParseAddr("fd00:231:1::2"), PodPort: 8080},
		},
	}
}

func TestRulesShape(t *testing.T) {
	v4, v6, err := Rules(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`,
		`-m multiport --dports 18080 -j CNI-DN-`,
		`-s 10.231.1.2/32 -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK`,
		`-s 127.0.0.1/32 -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK`,
		`-m tcp --dport 18080 -j DNAT --to-destination 10.231.1.2:8080`,
		`-m udp --dport 18081 -j DNAT --to-destination 10.231.1.2:8081`,
		`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`,
		`-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-`,
		`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`,
	} {
		if !strings.Contains(v4, want) {
			t.Errorf("IPv4 rules lack %q", want)
		}
	}
	if !strings.Contains(v6, `-j DNAT --to-destination [fd00:231:1::2]:8080`) {
		t.Errorf("IPv6 rules lack the hostPort DNAT")
	}
	if strings.Contains(v6, "10.231.") || strings.Contains(v6, "127.0.0.1") {
		t.Errorf("IPv6 rules hold IPv4 addresses")
	}
	if n := strings.Count(v4, "\n-A "); n < 1000 {
		t.Errorf("IPv4: %d rules, want the size of a 200-service cluster", n)
	}
}

func TestApplyUndo(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("PATU_SKIP_PRIVILEGED") != "" {
			t.Skip("not root")
		}
		t.Fatal("privileged test: run as root (or set PATU_SKIP_PRIVILEGED=1 to skip)")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Fatalf("iptables-restore not found: apt-get install iptables")
	}
	const name = "xb1-nptest"
	netns.Delete(name)
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })

	cfg := testConfig()
	cfg.Bridge = "" // no bridge in this namespace
	undo, err := Apply(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ReadStats(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rules < 2000 {
		t.Errorf("%d rules in the namespace, want over 2000", st.Rules)
	}
	for _, key := range sysctls(cfg) {
		if v := readSysctl(t, path, key); v != "1" {
			t.Errorf("%s = %s after Apply, want 1", key, v)
		}
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	st, err = ReadStats(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rules != 0 {
		t.Errorf("%d rules left after undo", st.Rules)
	}
	if v := readSysctl(t, path, "ipv4/ip_forward"); v != "0" {
		t.Errorf("ip_forward = %s after undo, want 0", v)
	}
}

func readSysctl(t *testing.T, nsPath, key string) string {
	t.Helper()
	var v string
	if err := netns.Do(nsPath, func() error {
		b, err := os.ReadFile("/proc/sys/net/" + key)
		v = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}
