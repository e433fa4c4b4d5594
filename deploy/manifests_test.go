package deploy

import (
	"os"
	"strings"
	"testing"
)

// k3sPaths are the only differences allowed between the K3s manifest and
// the generic one: K3s's directories, and the install profile.
var k3sPaths = [][2]string{
	{"/var/lib/rancher/k3s/data/cni", "/opt/cni/bin"},
	{"/var/lib/rancher/k3s/agent/etc/cni/net.d", "/etc/cni/net.d"},
	{"/run/k3s/containerd", "/run/containerd"},
	{"--profile, k3s", "--profile, containerd"},
}

func manifest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// TestManifestsDifferOnlyInPaths: deploy/k3s/patu.yaml is
// deploy/kubernetes/patu.yaml with K3s's paths, nothing else, so a fix to
// one cannot be forgotten in the other.
func TestManifestsDifferOnlyInPaths(t *testing.T) {
	k3s, k8s := manifest(t, "k3s/patu.yaml"), manifest(t, "kubernetes/patu.yaml")
	for _, p := range k3sPaths {
		if !strings.Contains(k3s, p[0]) {
			t.Errorf("k3s/patu.yaml does not use %s", p[0])
		}
		k3s = strings.ReplaceAll(k3s, p[0], p[1])
	}
	if k3s != k8s {
		a, b := strings.Split(k3s, "\n"), strings.Split(k8s, "\n")
		for i := range min(len(a), len(b)) {
			if a[i] != b[i] {
				t.Fatalf("manifests differ beyond paths at line %d (comments left out):\n k3s: %s\n k8s: %s", i+1, a[i], b[i])
			}
		}
		t.Fatalf("manifests differ in length beyond paths: %d and %d lines", len(a), len(b))
	}
}

// TestManifestImageVersion: the manifests run the image make image tags,
// ghcr.io/patu-dev/patu:<deploy/VERSION>.
func TestManifestImageVersion(t *testing.T) {
	v, err := os.ReadFile("VERSION")
	if err != nil {
		t.Fatal(err)
	}
	want := "image: ghcr.io/patu-dev/patu:" + strings.TrimSpace(string(v))
	for _, p := range []string{"k3s/patu.yaml", "kubernetes/patu.yaml"} {
		m := manifest(t, p)
		if n := strings.Count(m, "image: "); n != 2 || strings.Count(m, want) != 2 {
			t.Errorf("%s: want both containers on %q", p, want)
		}
	}
}
