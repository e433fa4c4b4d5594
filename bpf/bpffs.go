package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const defaultBPFFS = "/sys/fs/bpf"

// EnsureBPFFS checks that dir is on a bpffs, mounting one at /sys/fs/bpf
// when dir lies below it and nothing is mounted there yet.
func EnsureBPFFS(dir string) error {
	err := checkBPFFS(dir)
	if err == nil || !isBelow(dir, defaultBPFFS) {
		return err
	}
	if err := os.MkdirAll(defaultBPFFS, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", defaultBPFFS, err)
	}
	if err := unix.Mount("bpf", defaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", defaultBPFFS, err)
	}
	return checkBPFFS(dir)
}

// checkBPFFS reports whether the nearest existing ancestor of dir is on a
// bpffs, with an error that says how to fix it.
func checkBPFFS(dir string) error {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("%s is not on a bpffs: mount -t bpf bpf %s", p, defaultBPFFS)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("statfs %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("no bpffs for %s: mount -t bpf bpf %s", dir, defaultBPFFS)
		}
		p = parent
	}
}

func isBelow(dir, base string) bool {
	rel, err := filepath.Rel(base, filepath.Clean(dir))
	return err == nil && rel != ".." && !filepath.IsAbs(rel) && (len(rel) < 3 || rel[:3] != "../")
}
