package hook

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
)

const testID = "10a19a072480dd8adcf8de1d6c54e660557e3cd69ee1f34e38bda789337bbc4c"

func TestParseStage(t *testing.T) {
	for _, s := range []string{"createRuntime", "prestart", "poststop"} {
		if st, err := ParseStage(s); err != nil || string(st) != s {
			t.Errorf("ParseStage(%q) = %q, %v", s, st, err)
		}
	}
	for _, s := range []string{"", "createContainer", "startContainer", "poststart", "CreateRuntime"} {
		if _, err := ParseStage(s); !errors.Is(err, ErrBadInput) {
			t.Errorf("ParseStage(%q): %v, want ErrBadInput", s, err)
		}
	}
}

func TestReadState(t *testing.T) {
	// What podman 4.3 passes at createRuntime and at poststop.
	create := `{"ociVersion":"1.0.2-dev","id":"` + testID + `","status":"creating","pid":2884,
		"bundle":"/var/lib/containers/storage/overlay-containers/` + testID + `/userdata",
		"annotations":{"io.container.manager":"libpod","patu.io/redirect":"false"}}`
	poststop := `{"ociVersion":"1.0.2-dev","id":"` + testID + `","status":"stopped",
		"bundle":"/var/lib/containers/storage/overlay-containers/` + testID + `/userdata"}`
	for _, tc := range []struct {
		name, in string
		stage    Stage
		want     string // error text, "" for success
	}{
		{"createRuntime", create, CreateRuntime, ""},
		{"prestart", create, Prestart, ""},
		{"poststop", poststop, Poststop, ""},
		{"poststop without bundle", `{"id":"x"}`, Poststop, ""},
		{"empty", "", CreateRuntime, "no state on stdin"},
		{"blank", " \n", Poststop, "no state on stdin"},
		{"not JSON", "id=x", CreateRuntime, "not an OCI state"},
		{"truncated", create[:40], CreateRuntime, "not an OCI state"},
		{"wrong type", `{"id":"x","pid":"12"}`, CreateRuntime, "not an OCI state"},
		{"no id", `{"pid":1,"bundle":"/b"}`, CreateRuntime, "no container id"},
		{"no pid at create", poststop, CreateRuntime, "has no pid"},
		{"relative bundle", `{"id":"x","pid":3,"bundle":"b"}`, CreateRuntime, "no absolute bundle"},
		{"too large", `{"id":"x","annotations":{"a":"` + strings.Repeat("x", maxStateSize) + `"}}`, Poststop, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ReadState(strings.NewReader(tc.in), tc.stage)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st.ID == "" {
					t.Errorf("no id in %+v", st)
				}
				return
			}
			if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrBadInput mentioning %q", err, tc.want)
			}
		})
	}
	st, _ := ReadState(strings.NewReader(create), CreateRuntime)
	if st.Pid != 2884 || st.Annotations["patu.io/redirect"] != "false" || !strings.HasSuffix(st.Bundle, "/userdata") {
		t.Errorf("state = %+v", st)
	}
}

func TestParseNetns(t *testing.T) {
	for _, tc := range []struct {
		name, config, want string
	}{
		// podman: netavark's namespace, bind-mounted by podman.
		{"path", `{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/run/netns/netns-cb7c"},{"type":"mount"}]}}`, "/run/netns/netns-cb7c"},
		// A podman pod's app container joins the infra container's.
		{"joined", `{"linux":{"namespaces":[{"type":"network","path":"/proc/4876/ns/net"}]}}`, "/proc/4876/ns/net"},
		// A namespace the runtime creates: the init process's.
		{"new", `{"linux":{"namespaces":[{"type":"network"}]}}`, "/proc/42/ns/net"},
		{"host network", `{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}`, ""},
		{"no linux", `{"ociVersion":"1.0.2"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNetns([]byte(tc.config), 42)
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := parseNetns([]byte(`{"linux":`), 42); err == nil {
		t.Error("a truncated config parsed")
	}
	if _, err := netnsOf(t.TempDir(), 42); err == nil || !strings.Contains(err.Error(), "bundle config") {
		t.Errorf("missing config.json: %v", err)
	}
}

func TestRecord(t *testing.T) {
	now := time.Unix(1700000000, 0)
	ips := []netip.Addr{netip.MustParseAddr("10.211.0.9")}
	infra := "4e2ff1406bef2e444084ed8ef164188ff22df7160f6f62d6d361ac8dcfb71950"
	for _, tc := range []struct {
		name         string
		ann          map[string]string
		wantNS, want string
		noRedirect   bool
	}{
		{"podman container", map[string]string{"io.container.manager": "libpod"}, "podman", "10a19a072480", false},
		{"opted out", map[string]string{"patu.io/redirect": "false"}, "podman", "10a19a072480", true},
		{"not opted out", map[string]string{"patu.io/redirect": "true"}, "podman", "10a19a072480", false},
		{"podman pod member", map[string]string{SandboxAnnotation: infra}, "podman", "4e2ff1406bef", false},
		{"CRI-O", map[string]string{SandboxAnnotation: infra, PodNamespaceAnnotation: "default", PodNameAnnotation: "web-0"}, "default", "web-0", false},
		{"name without namespace", map[string]string{PodNameAnnotation: "web"}, "podman", "web", false},
		{"name too long", map[string]string{PodNameAnnotation: strings.Repeat("n", 65)}, "podman", "10a19a072480", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Record(State{ID: testID, Annotations: tc.ann}, "/run/netns/x", ips, now)
			if p.Namespace != tc.wantNS || p.Name != tc.want || p.NoRedirect != tc.noRedirect {
				t.Errorf("record %s (no redirect %v), want %s/%s (%v)", p, p.NoRedirect, tc.wantNS, tc.want, tc.noRedirect)
			}
			if p.ID != testID || p.Source != bpf.PodFromHook || !p.Created.Equal(now) || p.Netns != "/run/netns/x" || len(p.IPs) != 1 {
				t.Errorf("record %+v", p)
			}
		})
	}
	p := Record(State{ID: testID}, "/"+strings.Repeat("n", 200), ips, now)
	if p.Netns != "" {
		t.Errorf("a netns path the record cannot hold was kept: %q", p.Netns)
	}
}

func TestRunRefusesLongID(t *testing.T) {
	_, err := Run(Options{PinDir: t.TempDir(), Stage: Poststop, State: State{ID: strings.Repeat("a", 65)}})
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("err = %v", err)
	}
}

func TestCountFailure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "patu")
	if f, err := ReadFailures(dir); err != nil || f.Count != 0 {
		t.Fatalf("no file: %+v, %v", f, err)
	}
	// Hooks of parallel container starts count at the same time.
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := CountFailure(dir, Failure{Time: time.Now(), Stage: CreateRuntime, Container: fmt.Sprint(i), Error: "patu is not loaded"})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	f, err := ReadFailures(dir)
	if err != nil {
		t.Fatal(err)
	}
	if f.Count != n || len(f.Recent) != keepRecent {
		t.Errorf("count %d with %d recent, want %d with %d", f.Count, len(f.Recent), n, keepRecent)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files, want only %s", len(entries), FailuresFile)
	}
	// A damaged file is started over, not a reason to fail.
	if err := os.WriteFile(filepath.Join(dir, FailuresFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := CountFailure(dir, Failure{Stage: Poststop}); err != nil || f.Count != 1 {
		t.Errorf("after a damaged file: %+v, %v", f, err)
	}
}
