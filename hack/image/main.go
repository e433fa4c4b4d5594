// Command image writes Patu's container image, ghcr.io/patu-dev/patu:<version>
// (version from deploy/VERSION), as an OCI image tarball built from the
// static binaries, without a container engine: `ctr -n k8s.io images import
// FILE` loads it on a node. make image runs it after make build.
//
//	go run ./hack/image -bin bin -o out/patu-image.tar
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/patu-dev/patu/internal/rtlab"
)

// Repository is the image's name without the tag.
const Repository = "ghcr.io/patu-dev/patu"

func main() {
	bin := flag.String("bin", "bin", "directory with the static patu and patu-cni")
	out := flag.String("o", "out/patu-image.tar", "the OCI tarball to write")
	versionFile := flag.String("version-file", "deploy/VERSION", "file holding the image's tag")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *bin, *out, *versionFile); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(_ context.Context, bin, out, versionFile string) error {
	v, err := os.ReadFile(versionFile)
	if err != nil {
		return fmt.Errorf("read version: %w", err)
	}
	ref := Repository + ":" + strings.TrimSpace(string(v))
	// patu-cni beside patu: install --cni-only finds it there.
	files := map[string]string{
		"/usr/local/bin/patu":     filepath.Join(bin, "patu"),
		"/usr/local/bin/patu-cni": filepath.Join(bin, "patu-cni"),
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := rtlab.WriteImage(out, ref, files, []string{"/usr/local/bin/patu"}); err != nil {
		return err
	}
	fmt.Printf("%s -> %s\n", ref, out)
	return nil
}
