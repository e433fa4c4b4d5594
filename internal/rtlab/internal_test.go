package rtlab

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Unprivileged tests of the pieces that need no runtime.

func TestBuildOCI(t *testing.T) {
	spec := imageSpec{
		ref: "localhost/patu/test:1", cmd: []string{"sh"},
		files: []fileEntry{
			{name: "bin/busybox", mode: 0o755, typ: tar.TypeReg, data: []byte("not really busybox")},
			{name: "bin/sh", mode: 0o777, typ: tar.TypeSymlink, link: "busybox"},
			{name: "tmp", mode: 0o1777, typ: tar.TypeDir},
			{name: "usr/local/bin/peer", mode: 0o700, typ: tar.TypeReg, data: []byte("peer")},
		},
	}
	one, err := buildOCI(spec)
	if err != nil {
		t.Fatal(err)
	}
	two, err := buildOCI(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one, two) {
		t.Error("two builds of the same image differ: digests would change on every run")
	}

	files := untar(t, one)
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", got)
	}
	// Every blob is named by its digest.
	for name, data := range files {
		if d, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && d != "" {
			if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != d {
				t.Errorf("blob %s has digest %x", d, sum)
			}
		}
	}
	var index ociIndex
	mustJSON(t, files["index.json"], &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != spec.ref {
		t.Fatalf("index %+v: want one manifest named %s", index, spec.ref)
	}
	var man ociManifest
	mustJSON(t, blob(t, files, index.Manifests[0]), &man)
	var cfg ociConfig
	mustJSON(t, blob(t, files, man.Config), &cfg)
	if len(man.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != man.Layers[0].Digest {
		t.Fatalf("manifest %+v, config rootfs %+v: want one uncompressed layer, diff id = digest", man, cfg.RootFS)
	}
	if !slices.Equal(cfg.Config.Cmd, spec.cmd) || cfg.Config.Entrypoint != nil {
		t.Errorf("config cmd %q entrypoint %q", cfg.Config.Cmd, cfg.Config.Entrypoint)
	}

	layer := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(blob(t, files, man.Layers[0])))
	var order []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		layer[h.Name] = h
		order = append(order, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(imageEpoch) {
			t.Errorf("%s: owner %d:%d time %s, want root and the fixed epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if !slices.IsSorted(order) {
		t.Errorf("layer not sorted: %q", order)
	}
	for name, want := range map[string]byte{
		"bin/": tar.TypeDir, "bin/busybox": tar.TypeReg, "bin/sh": tar.TypeSymlink, "tmp/": tar.TypeDir,
		"usr/": tar.TypeDir, "usr/local/": tar.TypeDir, "usr/local/bin/": tar.TypeDir, "usr/local/bin/peer": tar.TypeReg,
	} {
		if h := layer[name]; h == nil || h.Typeflag != want {
			t.Errorf("layer entry %s: %+v, want type %c", name, h, want)
		}
	}
	if h := layer["tmp/"]; h != nil && h.Mode != 0o1777 {
		t.Errorf("tmp mode %o, want 1777", h.Mode)
	}
	if h := layer["usr/local/bin/peer"]; h != nil && h.Mode != 0o700 {
		t.Errorf("peer mode %o, want 700 (kept from the host file)", h.Mode)
	}
}

func untar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = b
	}
}

func blob(t *testing.T, files map[string][]byte, d ociDescriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok || len(b) != d.Size {
		t.Fatalf("blob %s: present %v, %d bytes, want %d", d.Digest, ok, len(b), d.Size)
	}
	return b
}

func mustJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
}

func TestImageKey(t *testing.T) {
	base := imageSpec{ref: "r", files: []fileEntry{{name: "a", mode: 0o644, typ: tar.TypeReg, data: []byte("x")}}}
	changed := map[string]imageSpec{
		"ref":     {ref: "r2", files: base.files},
		"content": {ref: "r", files: []fileEntry{{name: "a", mode: 0o644, typ: tar.TypeReg, data: []byte("y")}}},
		"mode":    {ref: "r", files: []fileEntry{{name: "a", mode: 0o755, typ: tar.TypeReg, data: []byte("x")}}},
		"name":    {ref: "r", files: []fileEntry{{name: "b", mode: 0o644, typ: tar.TypeReg, data: []byte("x")}}},
		"cmd":     {ref: "r", cmd: []string{"sh"}, files: base.files},
	}
	for what, s := range changed {
		if s.key() == base.key() {
			t.Errorf("changing the %s keeps the cache key", what)
		}
	}
}

func TestWorkloadImageFiles(t *testing.T) {
	if _, err := os.Stat(busyboxPath); err != nil {
		t.Skipf("%s missing (busybox-static not installed)", busyboxPath)
	}
	host := filepath.Join(t.TempDir(), "peer")
	if err := os.WriteFile(host, []byte("#!/bin/sh\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	s, err := workloadSpec(t.Context(), map[string]string{"/bin/sh": host, "/opt/peer": host})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]fileEntry{}
	for _, e := range s.files {
		if _, dup := byName[e.name]; dup {
			t.Errorf("%s twice in the image", e.name)
		}
		byName[e.name] = e
	}
	if e := byName["bin/sh"]; e.typ != tar.TypeReg || e.mode != 0o750 {
		t.Errorf("bin/sh: %c %o, want the caller's file replacing the applet link", e.typ, e.mode)
	}
	if e := byName["bin/nc"]; e.typ != tar.TypeSymlink || e.link != "busybox" {
		t.Errorf("bin/nc: %+v, want a link to busybox", e)
	}
	if _, err := workloadSpec(t.Context(), map[string]string{"bin/x": host}); err == nil {
		t.Error("relative image path accepted")
	}
}

func TestConflist(t *testing.T) {
	l := newLayout("rlu")
	cfg := Config{
		Prefix: "rlu", Subnet: netip.MustParsePrefix("10.202.9.7/24"), Subnet6: netip.MustParsePrefix("fd00:202:9::/64"),
		Chain: []Plugin{{Type: "patu", Binary: "/bin/true", Conf: map[string]any{
			"logLevel": "debug", "capabilities": map[string]any{"portMappings": true},
		}}},
	}
	data, err := conflist(l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	mustJSON(t, data, &got)
	if got.Name != "patu-rlu" || len(got.Plugins) != 2 {
		t.Fatalf("conflist %s", data)
	}
	br := got.Plugins[0]
	if br["type"] != "bridge" || br["bridge"] != "rlubr0" || br["ipMasq"] != false || br["isGateway"] != true {
		t.Errorf("bridge %v", br)
	}
	ipam, _ := json.Marshal(br["ipam"])
	for _, want := range []string{`"10.202.9.0/24"`, `"fd00:202:9::/64"`, `"dataDir":"` + l.ipamDir + `"`, `"::/0"`} {
		if !strings.Contains(string(ipam), want) {
			t.Errorf("ipam %s lacks %s", ipam, want)
		}
	}
	chain := got.Plugins[1]
	caps, _ := chain["capabilities"].(map[string]any)
	if chain["type"] != "patu" || chain["logLevel"] != "debug" || caps[annotationsCapability] != true || caps["portMappings"] != true {
		t.Errorf("chained plugin %v: want type, own keys, own and pod-annotations capabilities", chain)
	}
	if _, ok := cfg.Chain[0].Conf["type"]; ok {
		t.Error("conflist modified the caller's Conf")
	}
}

func TestContainerdConfig(t *testing.T) {
	l := newLayout("rlu")
	for _, flavor := range []string{Flavor16, Flavor2} {
		b, err := containerdConfig(l, flavor, "/usr/sbin/runc")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"restrict_oom_score_adj = true", "SystemdCgroup = false", "netns_mounts_under_state_dir = true",
			"max_conf_num = 1", `"127.0.0.1"`, `"` + l.sock + `"`, `"` + l.cniBinDir + `"`, `"` + PauseImage + `"`,
		} {
			want = strings.ReplaceAll(want, `'`, `"`)
			if !strings.Contains(strings.ReplaceAll(string(b), `'`, `"`), want) {
				t.Errorf("flavor %s: config lacks %s:\n%s", flavor, want, b)
			}
		}
		// No path outside the lab directory except runc.
		for _, line := range strings.Split(string(b), "\n") {
			if i := strings.Index(line, `"/`); i >= 0 && !strings.Contains(line, l.dir) && !strings.Contains(line, "/usr/sbin/runc") {
				t.Errorf("flavor %s: path outside the lab dir: %s", flavor, line)
			}
		}
	}
	b, _ := containerdConfig(l, Flavor2, "/usr/sbin/runc")
	if !strings.Contains(string(b), `socket_dir = "`+l.shimDir+`"`) {
		t.Errorf("2.x shim sockets not under the lab dir:\n%s", b)
	}
	if len(l.shimDir)+1+64 >= 108 {
		t.Errorf("shim socket path would be %d bytes, over the unix socket limit", len(l.shimDir)+65)
	}
}

// TestContainerdConfigDump has each containerd read its config: a setting
// in the wrong place is ignored silently (a [grpc] section in a version 4
// config leaves containerd on /run/containerd/containerd.sock), so check
// what containerd makes of it, and that it warns about nothing.
func TestContainerdConfigDump(t *testing.T) {
	l := newLayout("rlu")
	tools := os.Getenv("PATU_TOOLS")
	if tools == "" {
		tools = DefaultTools
	}
	for flavor, bin := range map[string]string{
		Flavor16: "/usr/bin/containerd",
		Flavor2:  filepath.Join(tools, "bin2", "containerd"),
	} {
		t.Run(flavor, func(t *testing.T) {
			if !isExecutable(bin) {
				t.Skipf("%s not installed (hack/e2e-deps.sh)", bin)
			}
			b, err := containerdConfig(l, flavor, "/usr/sbin/runc")
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, "--config", p, "config", "dump")
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("config dump: %v: %s", err, stderr.Bytes())
			}
			if strings.Contains(stderr.String(), "level=warn") {
				t.Errorf("containerd warns about its config:\n%s", stderr.Bytes())
			}
			dump := strings.ReplaceAll(stdout.String(), `'`, `"`)
			for _, want := range []string{
				`address = "` + l.sock + `"`, `address = "` + l.sock + `.ttrpc"`, "restrict_oom_score_adj = true",
				`Root = "` + l.runcRoot + `"`, `root = "` + l.root + `"`,
			} {
				if !strings.Contains(dump, want) {
					t.Errorf("effective config lacks %s:\n%s", want, dump)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Prefix: "rlv", Subnet: netip.MustParsePrefix("10.202.9.0/24")}
	for name, mod := range map[string]func(*Config){
		"long prefix":     func(c *Config) { c.Prefix = "rlvalid" },
		"upper prefix":    func(c *Config) { c.Prefix = "Rl" },
		"flavor":          func(c *Config) { c.Flavor = "1.7" },
		"no subnet":       func(c *Config) { c.Subnet = netip.Prefix{} },
		"v6 subnet":       func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") },
		"tiny subnet":     func(c *Config) { c.Subnet = netip.MustParsePrefix("10.202.9.0/30") },
		"v4 as v6":        func(c *Config) { c.Subnet6 = netip.MustParsePrefix("10.0.0.0/24") },
		"chain no binary": func(c *Config) { c.Chain = []Plugin{{Type: "x", Binary: "/nonexistent"}} },
		"chain bridge":    func(c *Config) { c.Chain = []Plugin{{Type: "bridge", Binary: "/bin/true"}} },
		"chain slash":     func(c *Config) { c.Chain = []Plugin{{Type: "a/b", Binary: "/bin/true"}} },
		"image path":      func(c *Config) { c.ImageFiles = map[string]string{"rel": "/bin/true"} },
	} {
		c := ok
		c.ImageFiles = maps.Clone(ok.ImageFiles)
		mod(&c)
		if err := c.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c := ok
	t.Setenv("PATU_TOOLS", "/x/tools")
	if err := c.validate(); err != nil || c.Flavor != Flavor16 || c.Tools != "/x/tools" || c.Log == nil {
		t.Errorf("defaults: %v, flavor %q tools %q", err, c.Flavor, c.Tools)
	}
}

func TestParseCRILog(t *testing.T) {
	in := "2026-01-01T00:00:00.1Z stdout F hello\n" +
		"2026-01-01T00:00:00.2Z stderr P part one \n" +
		"2026-01-01T00:00:00.3Z stderr F and two\n" +
		"2026-01-01T00:00:00.4Z stdout F \n" +
		"2026-01-01T00:00:00.5Z stdout F with  two spaces\n"
	want := "hello\npart one and two\n\nwith  two spaces\n"
	if got := string(parseCRILog([]byte(in))); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestNotReady(t *testing.T) {
	// The CRI conditions are checked by name; a missing one is not ready.
	if why := notReady(nil); !strings.Contains(why, "RuntimeReady missing") || !strings.Contains(why, "NetworkReady missing") {
		t.Errorf("empty status: %q", why)
	}
}
