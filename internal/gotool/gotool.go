// Package gotool finds the go command for programs that build helpers at
// run time (the demo, the benchmarks).
package gotool

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Path returns the go command: under sudo, PATH often lacks it, but the
// toolchain that built the running program (go run) is still there.
func Path() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); isFile(p) {
		return p
	}
	return "go"
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}
