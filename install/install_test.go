package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/patu-dev/patu/cniplugin"
	"github.com/patu-dev/patu/deploy"
)

var profileNames = []string{ProfileK3s, ProfileContainerd}

// fakeBinaries writes stand-ins for patu and patu-cni and returns their paths.
func fakeBinaries(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	for _, name := range []string{"patu", "patu-cni"} {
		p := filepath.Join(dir, name)
		writeFile(t, p, "#!/bin/sh\necho "+name+"\n", 0o755)
		bins[name] = p
	}
	return bins
}

func testOptions(t *testing.T, profile string) Options {
	t.Helper()
	return Options{Root: t.TempDir(), Profile: profile, Binaries: fakeBinaries(t)}
}

func writeFile(t *testing.T, path, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dests returns the four destinations, with Root, in Install's order.
func dests(t *testing.T, o Options) (patu, cni, conflist, unit string) {
	t.Helper()
	d, err := o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	j := func(dir, name string) string { return filepath.Join(o.Root, dir, name) }
	return j(d.BinDir, PatuName), j(d.CNIBinDir, CNIName), j(d.CNIConfDir, ConflistName), j(d.SystemdDir, UnitName)
}

func actions(changes []Change) map[string]string {
	m := map[string]string{}
	for _, c := range changes {
		m[c.Path] = c.Action
	}
	return m
}

func wantActions(t *testing.T, what string, changes []Change, want map[string]string) {
	t.Helper()
	got := actions(changes)
	if len(got) != len(changes) {
		t.Errorf("%s: a path is reported twice: %v", what, changes)
	}
	for path, a := range want {
		if got[path] != a {
			t.Errorf("%s: %s: got %q, want %q", what, path, got[path], a)
		}
	}
	for path, a := range got {
		if _, ok := want[path]; !ok {
			t.Errorf("%s: unexpected change %s %s", what, a, path)
		}
	}
}

func all(action string, paths ...string) map[string]string {
	m := map[string]string{}
	for _, p := range paths {
		m[p] = action
	}
	return m
}

// noTempFiles fails when a temporary file of writeAtomic is left under root.
func noTempFiles(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(d.Name(), tmpMarker) {
			t.Errorf("temporary file left: %s", path)
		}
		return nil
	})
}

func TestInstallTwice(t *testing.T) {
	for _, profile := range profileNames {
		t.Run(profile, func(t *testing.T) {
			o := testOptions(t, profile)
			patu, cni, conflist, unit := dests(t, o)
			changes, err := Install(o)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 4 || changes[0].Path != patu || changes[1].Path != cni {
				t.Errorf("changes = %v, want patu, patu-cni, conflist, unit in that order", changes)
			}
			wantActions(t, "first install", changes, all(Created, patu, cni, conflist, unit))
			for path, want := range map[string]fs.FileMode{patu: 0o755, cni: 0o755, conflist: 0o644, unit: 0o644} {
				st, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode().Perm() != want {
					t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
				}
			}
			if got, want := readFile(t, patu), readFile(t, o.Binaries["patu"]); got != want {
				t.Errorf("patu = %q, want %q", got, want)
			}
			if got, want := readFile(t, cni), readFile(t, o.Binaries["patu-cni"]); got != want {
				t.Errorf("patu-cni = %q, want %q", got, want)
			}
			embedded, _ := deploy.Files.ReadFile(profile + "/" + ConflistName)
			if got := readFile(t, conflist); got != string(embedded) {
				t.Errorf("conflist with the default pod CIDR differs from the embedded one:\n%s", got)
			}
			embedded, _ = deploy.Files.ReadFile(profile + "/" + UnitName)
			if got := readFile(t, unit); got != string(embedded) {
				t.Errorf("unit with the default bin dir differs from the embedded one:\n%s", got)
			}
			if _, err := os.Stat(filepath.Join(o.Root, ManifestPath)); err != nil {
				t.Errorf("manifest: %v", err)
			}

			changes, err = Install(o)
			if err != nil {
				t.Fatal(err)
			}
			wantActions(t, "second install", changes, all(Unchanged, patu, cni, conflist, unit))
			noTempFiles(t, o.Root)
		})
	}
}

func TestInstallUpdates(t *testing.T) {
	o := testOptions(t, ProfileK3s)
	patu, cni, conflist, unit := dests(t, o)
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	want := readFile(t, conflist)

	// Three kinds of drift: content, mode, and a symlink to identical content.
	writeFile(t, conflist, `{"edited": true}`, 0o644)
	if err := os.Chmod(patu, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(unit); err != nil {
		t.Fatal(err)
	}
	same := filepath.Join(t.TempDir(), "same.service")
	embedded, _ := deploy.Files.ReadFile(ProfileK3s + "/" + UnitName)
	writeFile(t, same, string(embedded), 0o644)
	if err := os.Symlink(same, unit); err != nil {
		t.Fatal(err)
	}
	changes, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "after edits", changes, map[string]string{patu: Updated, cni: Unchanged, conflist: Updated, unit: Updated})
	if got := readFile(t, conflist); got != want {
		t.Errorf("conflist not restored: %s", got)
	}
	if st, err := os.Lstat(unit); err != nil || !st.Mode().IsRegular() {
		t.Errorf("unit is still not a regular file: %v %v", st, err)
	}
	if st, _ := os.Stat(patu); st.Mode().Perm() != 0o755 {
		t.Errorf("patu mode %v, want 0755", st.Mode().Perm())
	}

	// A new build of patu-cni replaces the installed one.
	writeFile(t, o.Binaries["patu-cni"], "new build", 0o755)
	changes, err = Install(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "new build", changes, map[string]string{patu: Unchanged, cni: Updated, conflist: Unchanged, unit: Unchanged})
	if got := readFile(t, cni); got != "new build" {
		t.Errorf("patu-cni = %q", got)
	}
	noTempFiles(t, o.Root)
}

func TestWriteAtomicFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConflistName)
	writeFile(t, path, "old", 0o644)
	boom := errors.New("boom")
	err := writeAtomic(path, 0o644, func(w io.Writer) error {
		io.WriteString(w, "half")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if got := readFile(t, path); got != "old" {
		t.Errorf("destination changed to %q", got)
	}
	noTempFiles(t, dir)
}

func TestUninstall(t *testing.T) {
	for _, profile := range profileNames {
		t.Run(profile, func(t *testing.T) {
			o := testOptions(t, profile)
			patu, cni, conflist, unit := dests(t, o)
			if _, err := Install(o); err != nil {
				t.Fatal(err)
			}
			// Files of others in the same directories.
			foreignConf := filepath.Join(filepath.Dir(conflist), "05-other.conflist")
			foreignBin := filepath.Join(filepath.Dir(cni), "bridge")
			writeFile(t, foreignConf, "{}", 0o644)
			writeFile(t, foreignBin, "bridge", 0o755)

			changes, err := Uninstall(o)
			if err != nil {
				t.Fatal(err)
			}
			wantActions(t, "uninstall", changes, all(Removed, patu, cni, conflist, unit))
			for _, p := range []string{patu, cni, conflist, unit, filepath.Join(o.Root, ManifestPath)} {
				if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s still there: %v", p, err)
				}
			}
			for _, p := range []string{foreignConf, foreignBin} {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("foreign file removed: %v", err)
				}
			}

			changes, err = Uninstall(o)
			if err != nil {
				t.Fatalf("second uninstall: %v", err)
			}
			if len(changes) != 0 {
				t.Errorf("second uninstall changed %v", changes)
			}
		})
	}
}

func TestUninstallKeepsWhatIsNotOurs(t *testing.T) {
	o := testOptions(t, ProfileContainerd)
	patu, cni, conflist, unit := dests(t, o)
	// A patu plugin someone else put there before us is never installed
	// over in this test; uninstall must keep it.
	writeFile(t, cni, "someone else's plugin", 0o755)
	changes, err := Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "uninstall before install", changes, all(Kept, cni))
	if got := readFile(t, cni); got != "someone else's plugin" {
		t.Errorf("foreign plugin changed: %q", got)
	}

	// Installed by us, then edited: kept; the rest goes.
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	writeFile(t, conflist, `{"edited": true}`, 0o644)
	changes, err = Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "uninstall after edit", changes, map[string]string{patu: Removed, cni: Removed, conflist: Kept, unit: Removed})
	if got := readFile(t, conflist); got != `{"edited": true}` {
		t.Errorf("edited conflist changed: %q", got)
	}
}

func TestUninstallWithoutManifest(t *testing.T) {
	o := testOptions(t, ProfileK3s)
	patu, cni, conflist, unit := dests(t, o)
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(o.Root, ManifestPath)); err != nil {
		t.Fatal(err)
	}
	changes, err := Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "uninstall", changes, all(Removed, patu, cni, conflist, unit))
}

func TestUninstallAfterUpgrade(t *testing.T) {
	// Installed by one build, uninstalled by the next: the manifest, not
	// the new sources, proves the binaries are ours.
	o := testOptions(t, ProfileK3s)
	patu, cni, conflist, unit := dests(t, o)
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	o.Binaries = fakeBinaries(t)
	writeFile(t, o.Binaries["patu"], "next build", 0o755)
	writeFile(t, o.Binaries["patu-cni"], "next build of the plugin", 0o755)
	changes, err := Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "uninstall", changes, all(Removed, patu, cni, conflist, unit))
}

func TestUninstallFollowsManifest(t *testing.T) {
	// Installed to a custom CNI bin dir, uninstalled without naming it.
	o := testOptions(t, ProfileK3s)
	o.CNIBinDir = "/var/lib/rancher/k3s/data/current/bin"
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	custom := filepath.Join(o.Root, o.CNIBinDir, CNIName)
	o.CNIBinDir = ""
	patu, _, conflist, unit := dests(t, o)
	changes, err := Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "uninstall", changes, all(Removed, patu, custom, conflist, unit))
}

func TestDryRun(t *testing.T) {
	o := testOptions(t, ProfileContainerd)
	o.DryRun = true
	patu, cni, conflist, unit := dests(t, o)
	changes, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "dry-run install", changes, all(Created, patu, cni, conflist, unit))
	entries, err := os.ReadDir(o.Root)
	if err != nil || len(entries) != 0 {
		t.Errorf("dry run wrote %v (%v)", entries, err)
	}

	o.DryRun = false
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	o.DryRun = true
	changes, err = Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, "dry-run uninstall", changes, all(Removed, patu, cni, conflist, unit))
	for _, p := range []string{patu, cni, conflist, unit, filepath.Join(o.Root, ManifestPath)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dry run removed %s", p)
		}
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"unknown profile", func(o *Options) { o.Profile = "crio" }, `unknown profile "crio"`},
		{"relative dir", func(o *Options) { o.CNIBinDir = "opt/cni/bin" }, "want an absolute path"},
		{"unknown binary", func(o *Options) { o.Binaries["cni"] = "/x" }, `unknown binary "cni"`},
		{"missing patu-cni", func(o *Options) { o.Binaries["patu-cni"] = "/nonexistent/patu-cni" }, "patu-cni binary: stat /nonexistent/patu-cni"},
		{"patu-cni is a dir", func(o *Options) { o.Binaries["patu-cni"] = os.TempDir() }, "not a regular file"},
		{"pod CIDR garbage", func(o *Options) { o.PodCIDR = "10.42.0.0" }, "pod CIDR"},
		{"pod CIDR v6", func(o *Options) { o.PodCIDR = "fd00::/64" }, "only IPv4"},
		{"pod CIDR host bits", func(o *Options) { o.PodCIDR = "10.42.3.1/24" }, "did you mean 10.42.3.0/24"},
		{"pod CIDR too small", func(o *Options) { o.PodCIDR = "10.42.3.0/31" }, "too small"},
		{"pod CIDR ok", func(o *Options) { o.PodCIDR = "10.42.3.0/24" }, ""},
		{"bin dir ok", func(o *Options) { o.BinDir = "/opt/patu/bin" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, ProfileK3s)
			tt.edit(&o)
			_, err := Install(o)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			entries, _ := os.ReadDir(o.Root)
			if len(entries) != 0 {
				t.Errorf("a failed install wrote %v", entries)
			}
		})
	}
}

func TestDefaultPatuCNIIsNextToExecutable(t *testing.T) {
	o := testOptions(t, ProfileK3s)
	delete(o.Binaries, "patu-cni")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Install(o)
	want := filepath.Join(filepath.Dir(exe), "patu-cni")
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "next to the patu executable") {
		t.Fatalf("err = %v, want it to name %s", err, want)
	}
}

func TestRendering(t *testing.T) {
	o := testOptions(t, ProfileK3s)
	o.PodCIDR = "10.42.7.0/24"
	o.BinDir = "/opt/patu/bin"
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	_, _, conflist, unit := dests(t, o)
	list, err := libcni.ConfListFromBytes([]byte(readFile(t, conflist)))
	if err != nil {
		t.Fatal(err)
	}
	var bridge struct {
		IPAM struct {
			Ranges [][]struct{ Subnet string } `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &bridge); err != nil {
		t.Fatal(err)
	}
	if got := bridge.IPAM.Ranges[0][0].Subnet; got != "10.42.7.0/24" {
		t.Errorf("subnet = %s, want 10.42.7.0/24", got)
	}
	if got := readFile(t, unit); !strings.Contains(got, "\nExecStart=/opt/patu/bin/patu daemon ") {
		t.Errorf("unit does not start /opt/patu/bin/patu:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(o.Root, "/opt/patu/bin/patu")); err != nil {
		t.Error(err)
	}
}

func TestPodCIDRKeptOnReinstall(t *testing.T) {
	o := testOptions(t, ProfileK3s)
	o.PodCIDR = "10.42.5.0/24"
	_, _, conflist, _ := dests(t, o)
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	// An upgrade: install again without naming the pod CIDR.
	o.PodCIDR = ""
	changes, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if a := actions(changes)[conflist]; a != Unchanged {
		t.Errorf("conflist %s, want unchanged", a)
	}
	if got := installedSubnet(conflist); got != "10.42.5.0/24" {
		t.Errorf("subnet %q after reinstall, want 10.42.5.0/24", got)
	}
	// Without a record, uninstall still recognises it as ours.
	if err := os.Remove(filepath.Join(o.Root, ManifestPath)); err != nil {
		t.Fatal(err)
	}
	changes, err = Uninstall(o)
	if err != nil {
		t.Fatal(err)
	}
	if a := actions(changes)[conflist]; a != Removed {
		t.Errorf("conflist %s, want removed", a)
	}

	// A subnet Install could not write is not kept, and breaks nothing.
	writeFile(t, conflist, `{"plugins": [{"ipam": {"ranges": [[{"subnet": "10.42.5.1/24"}]]}}]}`, 0o644)
	if changes, err = Uninstall(o); err != nil {
		t.Fatal(err)
	}
	if a := actions(changes)[conflist]; a != Kept {
		t.Errorf("foreign conflist %s, want kept", a)
	}
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	if got := installedSubnet(conflist); got != DefaultPodCIDR(ProfileK3s) {
		t.Errorf("subnet %q, want the default", got)
	}
}

// TestEmbeddedConflists checks every conflist in package deploy: valid JSON
// that libcni loads, a chain that ends with patu after bridge (so patu gets
// bridge's result as prevResult), and the capability that makes the runtime
// pass pod annotations.
func TestEmbeddedConflists(t *testing.T) {
	var found []string
	err := fs.WalkDir(deploy.Files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".conflist") {
			return err
		}
		// Not one patu install writes: K3s's --flannel-cni-conf file,
		// flannel first (TestFlannelPatuConflist).
		if path == "k3s/flannel-patu.conflist" {
			return nil
		}
		found = append(found, path)
		t.Run(path, func(t *testing.T) {
			b, err := deploy.Files.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(b) {
				t.Fatal("not valid JSON")
			}
			list, err := libcni.ConfListFromBytes(b)
			if err != nil {
				t.Fatalf("libcni: %v", err)
			}
			if list.CNIVersion != "1.0.0" {
				t.Errorf("cniVersion %s, want 1.0.0", list.CNIVersion)
			}
			supported := cniplugin.Versions.SupportedVersions()
			if !slices.Contains(supported, list.CNIVersion) {
				t.Errorf("patu-cni does not support cniVersion %s (supports %v)", list.CNIVersion, supported)
			}
			var types []string
			for _, p := range list.Plugins {
				types = append(types, p.Network.Type)
			}
			last := list.Plugins[len(list.Plugins)-1].Network
			if last.Type != "patu" {
				t.Fatalf("chain %v does not end with patu", types)
			}
			if slices.Index(types, "bridge") != 0 {
				t.Errorf("chain %v: bridge must come first, before patu", types)
			}
			if slices.Index(types, "patu") != len(types)-1 {
				t.Errorf("chain %v: patu twice", types)
			}
			if !last.Capabilities[cniplugin.AnnotationsCapability] {
				t.Errorf("patu does not declare %s", cniplugin.AnnotationsCapability)
			}
			if ipam := list.Plugins[0].Network.IPAM.Type; ipam != "host-local" {
				t.Errorf("bridge ipam %q, want host-local", ipam)
			}
			var conf cniplugin.NetConf
			if err := json.Unmarshal(list.Plugins[len(list.Plugins)-1].Bytes, &conf); err != nil {
				t.Errorf("patu's conf does not parse as cniplugin.NetConf: %v", err)
			}
			// The default subnet is where renderConflist expects it.
			profile := filepath.Dir(path)
			if _, err := renderConflist(b, profiles[profile].podCIDR, "10.99.0.0/24"); err != nil {
				t.Error(err)
			}
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(found)
	if want := []string{"containerd/10-patu.conflist", "k3s/10-patu.conflist"}; !slices.Equal(found, want) {
		t.Errorf("embedded conflists %v, want %v", found, want)
	}
}

func TestEmbeddedUnits(t *testing.T) {
	for profile, endpoint := range map[string]string{
		ProfileK3s:        "unix:///run/k3s/containerd/containerd.sock",
		ProfileContainerd: "unix:///run/containerd/containerd.sock",
	} {
		b, err := deploy.Files.ReadFile(profile + "/" + UnitName)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"\nExecStart=/usr/local/bin/patu daemon --runtime-endpoint " + endpoint + "\n",
			"\nRestart=always\n",
			"\nWantedBy=multi-user.target\n",
			"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON",
		} {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("%s unit lacks %q", profile, strings.TrimSpace(want))
			}
		}
	}
}
