package crio

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patu-dev/patu/internal/gotool"
)

// bins are the programs the tests run: CRI-O's (found by TestMain) and
// Patu's (built by TestMain).
var bins struct {
	crio, pinns, conmon, runc string
	patu, peer                string
}

// skipReason, when set, makes every test that needs the lab skip with it;
// failReason makes them fail.
var skipReason, failReason string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// crioDir is where hack/crio-deps.sh installs crio and pinns.
func crioDir() string {
	if d := os.Getenv("PATU_CRIO_DIR"); d != "" {
		return d
	}
	tools := os.Getenv("PATU_TOOLS")
	if tools == "" {
		tools = "/var/cache/patu-e2e"
	}
	return filepath.Join(tools, "crio", "bin")
}

func runMain(m *testing.M) int {
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		skipReason = "PATU_SKIP_PRIVILEGED=1: CRI-O e2e tests skipped"
		return m.Run()
	}
	if os.Geteuid() != 0 {
		// The unprivileged tests still run; the lab's fail.
		failReason = "CRI-O e2e tests need root (CRI-O, netns, cgroups, BPF): run as root, or set PATU_SKIP_PRIVILEGED=1 to skip them"
		return m.Run()
	}
	dir := crioDir()
	bins.crio, bins.pinns = filepath.Join(dir, "crio"), filepath.Join(dir, "pinns")
	var missing []string
	for _, p := range []string{bins.crio, bins.pinns} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	var err error
	if bins.conmon, err = exec.LookPath("conmon"); err != nil {
		missing = append(missing, "conmon (apt-get install conmon)")
	}
	if bins.runc, err = exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc (apt-get install runc)")
	}
	for _, tool := range []string{"nsenter", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("CRI-O is not installed here (missing: %s). Debian has no cri-o package: "+
			"hack/crio-deps.sh builds CRI-O from its Go module into %s (10 to 17 min cold on 2 vCPUs; "+
			"PATU_CRIO_DIR points elsewhere)", strings.Join(missing, ", "), dir)
		if os.Getenv("PATU_REQUIRE_CRIO") == "1" {
			fmt.Fprintln(os.Stderr, msg+"; PATU_REQUIRE_CRIO=1 makes this a failure")
			return 1
		}
		skipReason = msg + "; set PATU_REQUIRE_CRIO=1 to fail instead of skipping"
		fmt.Println("crio:", skipReason)
		return m.Run()
	}

	// A killed run leaves its binaries behind. Only one lab runs at a
	// time (its netns name is fixed, and startLab sweeps any other), so
	// every earlier directory is stale.
	if old, err := filepath.Glob(filepath.Join(os.TempDir(), "patu-crio-*")); err == nil {
		for _, d := range old {
			os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp("", "patu-crio-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	goBin := gotool.Path()
	bins.patu, bins.peer = filepath.Join(tmp, "patu"), filepath.Join(tmp, "patu-testpeer")
	for out, pkg := range map[string]string{bins.patu: "cmd/patu", bins.peer: "test/peer"} {
		// Static: patu-testpeer runs inside the busybox image.
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, "github.com/patu-dev/patu/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	return m.Run()
}

// needLab skips the test when the lab cannot run here (see TestMain).
func needLab(t *testing.T) {
	t.Helper()
	if failReason != "" {
		t.Fatal(failReason)
	}
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
