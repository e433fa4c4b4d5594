package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/patu-dev/patu/deploy"
)

// podmanDests returns the podman profile's destinations, with Root, in
// Install's order: patu, the hooks, the unit.
func podmanDests(t *testing.T, o Options) []string {
	t.Helper()
	d, err := o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{filepath.Join(o.Root, d.BinDir, PatuName)}
	for _, h := range HookNames {
		out = append(out, filepath.Join(o.Root, d.HooksDir, h))
	}
	return append(out, filepath.Join(o.Root, d.SystemdDir, UnitName))
}

// hookFile is a hooks.d file (containers/common pkg/hooks, version 1.0.0).
type hookFile struct {
	Version string `json:"version"`
	Hook    struct {
		Path    string   `json:"path"`
		Args    []string `json:"args"`
		Timeout *int     `json:"timeout"`
	} `json:"hook"`
	When struct {
		Always *bool `json:"always"`
	} `json:"when"`
	Stages []string `json:"stages"`
}

func parseHookFile(t *testing.T, b []byte) hookFile {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var h hookFile
	if err := dec.Decode(&h); err != nil {
		t.Fatalf("hooks.d file: %v\n%s", err, b)
	}
	return h
}

func TestPodmanInstall(t *testing.T) {
	o := testOptions(t, ProfilePodman)
	delete(o.Binaries, "patu-cni") // not needed: no CNI plugin
	want := podmanDests(t, o)
	changes, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.Path)
	}
	if !slices.Equal(got, want) {
		t.Errorf("changes %v, want %v", got, want)
	}
	wantActions(t, "first install", changes, all(Created, want...))
	if wantHooks := filepath.Join(o.Root, DefaultHooksDir); filepath.Dir(want[1]) != wantHooks {
		t.Errorf("hooks in %s, want %s", filepath.Dir(want[1]), wantHooks)
	}
	for _, p := range want[1:] {
		base := filepath.Base(p)
		embedded, _ := deploy.Files.ReadFile(ProfilePodman + "/" + base)
		if got := readFile(t, p); got != string(embedded) {
			t.Errorf("%s with the default bin dir differs from the embedded one:\n%s", base, got)
		}
	}
	changes, err = Install(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "second install", changes, all(Unchanged, want...))

	changes, err = Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "uninstall", changes, all(Removed, want...))
	for _, p := range append(want, filepath.Join(o.Root, ManifestPath)) {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	noTempFiles(t, o.Root)
}

func TestPodmanRendering(t *testing.T) {
	o := testOptions(t, ProfilePodman)
	o.BinDir = "/opt/patu/bin"
	o.HooksDir = "/etc/containers/oci/hooks.d"
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	for _, name := range HookNames {
		h := parseHookFile(t, []byte(readFile(t, filepath.Join(o.Root, o.HooksDir, name))))
		if h.Hook.Path != "/opt/patu/bin/patu" {
			t.Errorf("%s: hook path %s, want /opt/patu/bin/patu", name, h.Hook.Path)
		}
	}
	unit := readFile(t, filepath.Join(o.Root, "/etc/systemd/system", UnitName))
	if !strings.Contains(unit, "\nExecStart=/opt/patu/bin/patu load\n") {
		t.Errorf("unit does not run /opt/patu/bin/patu load:\n%s", unit)
	}
}

func TestPodmanOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"pod CIDR", Options{Profile: ProfilePodman, PodCIDR: "10.88.0.0/16"}, "no CNI plugin"},
		{"CNI bin dir", Options{Profile: ProfilePodman, CNIBinDir: "/opt/cni/bin"}, "no CNI plugin"},
		{"relative hooks dir", Options{Profile: ProfilePodman, HooksDir: "etc/hooks.d"}, "want an absolute path"},
		{"hooks dir for containerd", Options{Profile: ProfileContainerd, HooksDir: "/etc/containers/oci/hooks.d"}, "no OCI hooks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.o.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestEmbeddedHooks checks the hooks.d files: the format podman and CRI-O
// read, one stage each, passed to patu hook as its argument, and run for
// every container (opt-out is decided inside patu, which records an
// opted-out container too).
func TestEmbeddedHooks(t *testing.T) {
	wantStage := map[string]string{"patu-createruntime.json": "createRuntime", "patu-poststop.json": "poststop"}
	for _, name := range HookNames {
		b, err := deploy.Files.ReadFile(ProfilePodman + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		h := parseHookFile(t, b)
		stage := wantStage[name]
		if h.Version != "1.0.0" {
			t.Errorf("%s: version %q, want 1.0.0", name, h.Version)
		}
		if !slices.Equal(h.Stages, []string{stage}) {
			t.Errorf("%s: stages %v, want [%s]", name, h.Stages, stage)
		}
		if want := []string{"patu", "hook", stage}; !slices.Equal(h.Hook.Args, want) {
			t.Errorf("%s: args %v, want %v", name, h.Hook.Args, want)
		}
		if h.Hook.Path != "/usr/local/bin/patu" {
			t.Errorf("%s: path %s, want /usr/local/bin/patu (renderHook replaces it)", name, h.Hook.Path)
		}
		if h.When.Always == nil || !*h.When.Always {
			t.Errorf("%s: want when.always true", name)
		}
		// A timeout would turn a slow hook into a failed container start.
		if h.Hook.Timeout != nil {
			t.Errorf("%s: has a timeout", name)
		}
	}
	unit, err := deploy.Files.ReadFile(ProfilePodman + "/" + UnitName)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nType=oneshot\n", "\nRemainAfterExit=yes\n", "\nExecStart=/usr/local/bin/patu load\n", "\nWantedBy=multi-user.target\n"} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("podman unit lacks %q", strings.TrimSpace(want))
		}
	}
}
