package apps

import (
	"bufio"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/patu-dev/patu/bpf"
)

func TestParseCPU(t *testing.T) {
	c, err := parseCPU("cpu  100 5 200 9000 10 30 40 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := (cpuTimes{100, 5, 200, 9000, 10, 30, 40}); c != want {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	later := cpuTimes{150, 5, 300, 9100, 10, 40, 90}
	if got := later.kernelSince(c); got != 1.6 {
		t.Errorf("kernel seconds %v, want 1.6 (system 100 + irq 10 + softirq 50 ticks)", got)
	}
	if got := later.busySince(c); got != 2.1 {
		t.Errorf("busy seconds %v, want 2.1", got)
	}
	if _, err := parseCPU("intr 1 2 3\n"); err == nil {
		t.Error("a file without the cpu line parsed")
	}
}

func TestParseConntrackInvalid(t *testing.T) {
	stat := `entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000003  00000000 00000000 00000000 0000000a 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000
00000003  00000000 00000000 00000000 00000011 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000
`
	n, err := parseConntrackInvalid(bufio.NewScanner(strings.NewReader(stat)))
	if err != nil {
		t.Fatal(err)
	}
	if n != 0x0a+0x11 {
		t.Errorf("invalid %d, want %d (summed over CPUs, hex)", n, 0x0a+0x11)
	}
	if _, err := parseConntrackInvalid(bufio.NewScanner(strings.NewReader("entries found\n1 2\n"))); err == nil {
		t.Error("a table without an invalid column parsed")
	}
}

func TestEstablishedLines(t *testing.T) {
	list := `tcp      6 431999 ESTABLISHED src=10.210.1.2 dst=10.210.1.3 sport=4000 dport=9000 src=10.210.1.3 dst=10.210.1.2 sport=9000 dport=4000 [ASSURED] mark=0 use=1
tcp      6 119 TIME_WAIT src=10.210.1.2 dst=10.210.1.3 sport=4001 dport=9000 src=10.210.1.3 dst=10.210.1.2 sport=9000 dport=4001 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.210.1.2 dst=10.99.0.1 sport=4002 dport=53 src=10.99.0.1 dst=10.210.1.2 sport=53 dport=4002 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.210.1.22 dst=10.210.1.3 sport=4003 dport=9000 src=10.210.1.3 dst=10.210.1.22 sport=9000 dport=4003 [ASSURED] mark=0 use=1
`
	ips := []netip.Addr{netip.MustParseAddr("10.210.1.2"), netip.MustParseAddr("10.210.1.3")}
	got := establishedLines(list, ips)
	if len(got) != 1 || !strings.Contains(got[0], "sport=4000") {
		t.Errorf("got %q, want only the ESTABLISHED entry between the two pods (not TIME_WAIT, another destination, or a longer address)", got)
	}
}

func TestMD5Lines(t *testing.T) {
	const sum = "d41d8cd98f00b204e9800998ecf8427e"
	d, err := md5Lines(sum+"  -\n"+sum+"  -\n", 2, sum)
	if err != nil || d != "2×"+sum {
		t.Errorf("two intact: %q, %v", d, err)
	}
	if _, err := md5Lines(sum+"  -\n", 2, sum); err == nil {
		t.Error("one of two transfers passed")
	}
	if _, err := md5Lines(sum+"  -\n0cc175b9c0f1b6a831c399e269772661  -\n", 2, sum); err == nil {
		t.Error("a wrong checksum passed")
	}
}

func TestPathsFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want []Path
		err  bool
	}{
		{"", DefaultPaths, false},
		{"patu-socket", []Path{Bridge, PatuSocket}, false},
		{"bridge,patu,patu-socket", []Path{Bridge, Patu, PatuSocket}, false},
		{"patu-clusterip", []Path{Bridge, PatuClusterIP}, false},
		{"socket", nil, true},
	} {
		t.Setenv("PATU_APPS_PATHS", tc.env)
		got, err := PathsFromEnv()
		if (err != nil) != tc.err || (!tc.err && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("PATU_APPS_PATHS=%q: %v, %v; want %v (error %v)", tc.env, got, err, tc.want, tc.err)
		}
	}
}

// TestClusterIP: the Services in front of the pods sit in the node's
// service range, one per pod and family, clear of the synthetic ones.
func TestClusterIP(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for i := 1; i <= 2; i++ {
		for _, v6 := range []bool{false, true} {
			a := clusterIP(i, v6)
			cidr := map[bool]netip.Prefix{false: serviceCIDR4, true: serviceCIDR6}[v6]
			if !cidr.Contains(a) || seen[a] {
				t.Errorf("clusterIP(%d, %v) = %s: want a new address in %s", i, v6, a, cidr)
			}
			// The 20 synthetic services take the 10th to 29th addresses.
			if s := a.As16(); s[14] == 0 && s[15] < 64 {
				t.Errorf("clusterIP(%d, %v) = %s: among the synthetic services", i, v6, a)
			}
			seen[a] = true
		}
	}
	if got := podServices(Patu, nil); got != nil {
		t.Errorf("podServices on the patu path: %v, want none", got)
	}
}

func TestCompare(t *testing.T) {
	bridge := Outcome{Path: Bridge, Observed: Observed{Digest: "1×abc"}, Stats: Stats{VethTx: 1000}}
	fast := Outcome{Path: Patu, Observed: Observed{Digest: "1×abc"}, Stats: Stats{VethTx: 10, PatuBytes: 990}}
	if errs := Compare(bridge, fast); len(errs) != 0 {
		t.Errorf("same result, accelerated: %q", errs)
	}
	slow := Outcome{Path: Patu, Observed: Observed{Digest: "1×abc"}, Stats: Stats{VethTx: 900, PatuBytes: 100}}
	if errs := Compare(bridge, slow); len(errs) != 1 || !strings.HasPrefix(errs[0], "not accelerated") {
		t.Errorf("not accelerated: %q", errs)
	}
	wrong := Outcome{Path: Patu, Observed: Observed{Digest: "0×abc"}, Stats: fast.Stats}
	if errs := Compare(bridge, wrong); len(errs) != 1 || !strings.HasPrefix(errs[0], "observed") {
		t.Errorf("another result: %q", errs)
	}
	if errs := Compare(Outcome{Errors: []string{"x"}}, fast); len(errs) != 1 {
		t.Errorf("a failed bridge run is no baseline: %q", errs)
	}
	svc := fast
	svc.Path = PatuClusterIP
	if errs := Compare(bridge, svc); len(errs) != 1 || !strings.HasPrefix(errs[0], "no connection admitted through") {
		t.Errorf("through a Service, nothing matched across the translation: %q", errs)
	}
	svc.Stats.Local.AdmittedNAT = 1
	if errs := Compare(bridge, svc); len(errs) != 0 {
		t.Errorf("through a Service, matched: %q", errs)
	}
}

func TestErrorKind(t *testing.T) {
	got := errorKind([]string{"write tcp 10.210.1.2:3->10.210.1.3:9009: write: connection reset by peer"})
	if got != "ECONNRESET" {
		t.Errorf("got %q", got)
	}
	if got := errorKind([]string{"write: broken pipe", "read: EOF"}); got != "EOF, EPIPE" {
		t.Errorf("got %q", got)
	}
}

// TestSubBacklog: what the packet path handed a receiver's host veth itself
// (a bulk direction) is Patu's, not the bridge's.
func TestSubBacklog(t *testing.T) {
	before := snap{Stats: Stats{VethTx: 100, PatuBytes: 50, Local: bpf.LocalCounters{BacklogBytes: 20}}}
	after := snap{Stats: Stats{VethTx: 1100, PatuBytes: 1000, Local: bpf.LocalCounters{BacklogBytes: 920}}}
	d := after.sub(before)
	if d.VethTx != 100 || d.PatuBytes != 950 || d.Local.BacklogBytes != 900 {
		t.Errorf("sub: veth tx %d, patu %d, backlog %d; want 100, 950, 900", d.VethTx, d.PatuBytes, d.Local.BacklogBytes)
	}
}
