package install

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// k3sFlannel is the conflist K3s writes for its default flannel network
// (pkg/agent/flannel, cniConf), byte for byte.
func k3sFlannel(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/k3s-10-flannel.conflist")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pluginTypes(t *testing.T, b []byte) (string, []string) {
	t.Helper()
	var c struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%v:\n%s", err, b)
	}
	var types []string
	for _, p := range c.Plugins {
		types = append(types, p.Type)
	}
	return c.Name, types
}

func chainOpts(t *testing.T) (Options, string) {
	t.Helper()
	root := t.TempDir()
	cni := filepath.Join(t.TempDir(), "patu-cni")
	if err := os.WriteFile(cni, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := Options{Root: root, Profile: ProfileK3s, CNIOnly: true, Chain: true,
		Binaries: map[string]string{"patu": cni, "patu-cni": cni}}
	return o, filepath.Join(root, "/var/lib/rancher/k3s/agent/etc/cni/net.d")
}

// TestChainK3sFlannel: behind K3s's default flannel, install --chain writes
// 00-patu.conflist = flannel + portmap + bandwidth + patu, touches nothing
// else in the conf dir, and uninstall leaves the directory as it was, the
// flannel conflist byte for byte.
func TestChainK3sFlannel(t *testing.T) {
	o, confDir := chainOpts(t)
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	orig := k3sFlannel(t)
	flannel := filepath.Join(confDir, "10-flannel.conflist")
	if err := os.WriteFile(flannel, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	changes, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, c := range changes {
		paths = append(paths, strings.TrimPrefix(c.Path, o.Root)+" "+c.Action)
	}
	want := []string{"/var/lib/rancher/k3s/data/cni/patu created", "/var/lib/rancher/k3s/agent/etc/cni/net.d/00-patu.conflist created"}
	if strings.Join(paths, ",") != strings.Join(want, ",") {
		t.Fatalf("changes %q, want %q (no patu binary, no unit with --cni-only)", paths, want)
	}
	chained, err := os.ReadFile(filepath.Join(confDir, ChainedName))
	if err != nil {
		t.Fatal(err)
	}
	name, types := pluginTypes(t, chained)
	if name != "cbr0" || strings.Join(types, ",") != "flannel,portmap,bandwidth,patu" {
		t.Fatalf("chained conflist: name %q plugins %q:\n%s", name, types, chained)
	}
	// flannel's delegate must come through unchanged.
	if !bytes.Contains(chained, []byte(`"forceAddress": true`)) {
		t.Errorf("flannel delegate lost:\n%s", chained)
	}
	if got, _ := os.ReadFile(flannel); !bytes.Equal(got, orig) {
		t.Fatal("install changed K3s's flannel conflist")
	}
	// A second install changes nothing.
	if changes, err = Install(o); err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if c.Action != Unchanged {
			t.Errorf("second install: %s", c)
		}
	}
	if changes, err = Uninstall(o); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 {
		t.Errorf("uninstall changes %v, want patu and 00-patu.conflist removed", changes)
	}
	ents, _ := os.ReadDir(confDir)
	if len(ents) != 1 || ents[0].Name() != "10-flannel.conflist" {
		t.Fatalf("conf dir after uninstall: %v", ents)
	}
	if got, _ := os.ReadFile(flannel); !bytes.Equal(got, orig) {
		t.Fatal("flannel conflist not restored byte for byte")
	}
	if _, err := os.Stat(filepath.Join(o.Root, ManifestPath)); !os.IsNotExist(err) {
		t.Errorf("manifest left after uninstall: %v", err)
	}
}

// TestChainSource: the first configuration by name is chained, Patu's own
// files never are, a .conf becomes a conflist, and without any the
// profile's bridge conflist is written.
func TestChainSource(t *testing.T) {
	t.Run("first by name, not patu's own", func(t *testing.T) {
		o, confDir := chainOpts(t)
		os.MkdirAll(confDir, 0o755)
		os.WriteFile(filepath.Join(confDir, "10-patu.conflist"), []byte(`{"name":"x","plugins":[{"type":"patu"}]}`), 0o644)
		os.WriteFile(filepath.Join(confDir, "20-b.conflist"), []byte(`{"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}`), 0o644)
		os.WriteFile(filepath.Join(confDir, "30-a.conflist"), []byte(`{"name":"a","plugins":[{"type":"ptp"}]}`), 0o644)
		if _, err := Install(o); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(confDir, ChainedName))
		if name, types := pluginTypes(t, b); name != "b" || strings.Join(types, ",") != "bridge,patu" {
			t.Fatalf("got %s %v", name, types)
		}
	})
	t.Run("conf", func(t *testing.T) {
		o, confDir := chainOpts(t)
		os.MkdirAll(confDir, 0o755)
		os.WriteFile(filepath.Join(confDir, "10-c.conf"), []byte(`{"cniVersion":"0.4.0","name":"c","type":"bridge","bridge":"cni0"}`), 0o644)
		if _, err := Install(o); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(confDir, ChainedName))
		if name, types := pluginTypes(t, b); name != "c" || strings.Join(types, ",") != "bridge,patu" {
			t.Fatalf("got %s %v:\n%s", name, types, b)
		}
	})
	t.Run("none", func(t *testing.T) {
		o, confDir := chainOpts(t)
		if _, err := Install(o); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(confDir, ChainedName))
		if _, types := pluginTypes(t, b); strings.Join(types, ",") != "bridge,portmap,patu" {
			t.Fatalf("got %v", types)
		}
	})
	t.Run("already chained", func(t *testing.T) {
		o, confDir := chainOpts(t)
		os.MkdirAll(confDir, 0o755)
		os.WriteFile(filepath.Join(confDir, "10-x.conflist"), []byte(`{"name":"x","plugins":[{"type":"bridge"},{"type":"patu"}]}`), 0o644)
		// K3s with --flannel-cni-conf flannel-patu.conflist: only the
		// plugin is needed.
		changes, err := Install(o)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 1 || filepath.Base(changes[0].Path) != CNIName {
			t.Errorf("changes %v, want only the plugin", changes)
		}
		if exists := fileExists(filepath.Join(confDir, ChainedName)); exists {
			t.Error("00-patu.conflist written for a conflist that runs patu already")
		}
		// Uninstall keeps the plugin that conflist needs.
		if changes, err = Uninstall(o); err != nil {
			t.Fatal(err)
		}
		if len(changes) != 1 || !fileExists(changes[0].Path) || changes[0].Action != Kept {
			t.Errorf("uninstall: %v, want the plugin kept", changes)
		}
	})
}

// TestFlannelPatuConflist: the file shipped for K3s's --flannel-cni-conf is
// K3s's default flannel network with patu after portmap, which is what
// install --chain makes of it, bandwidth aside.
func TestFlannelPatuConflist(t *testing.T) {
	b, err := os.ReadFile("../deploy/k3s/flannel-patu.conflist")
	if err != nil {
		t.Fatal(err)
	}
	name, types := pluginTypes(t, b)
	if name != "cbr0" || strings.Join(types, ",") != "flannel,portmap,patu" {
		t.Fatalf("flannel-patu.conflist: %s %v", name, types)
	}
	chained, err := chainConflist(k3sFlannel(t))
	if err != nil {
		t.Fatal(err)
	}
	var a, c struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	json.Unmarshal(b, &a)
	json.Unmarshal(chained, &c)
	norm := func(r json.RawMessage) string {
		var v any
		json.Unmarshal(r, &v)
		out, _ := json.Marshal(v)
		return string(out)
	}
	for i, j := range map[int]int{0: 0, 1: 1, 2: 3} {
		if norm(a.Plugins[i]) != norm(c.Plugins[j]) {
			t.Errorf("plugin %d: shipped %s, chained %s", i, norm(a.Plugins[i]), norm(c.Plugins[j]))
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
