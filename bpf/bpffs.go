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

// errNoBPFFS is wrapped by checkBPFFS's error when the directory is not on
// a bpffs: nothing can be pinned there, so nothing of Patu's is.
var errNoBPFFS = errors.New("not on a bpffs")

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
				return fmt.Errorf("%s is %w: mount -t bpf bpf %s", p, errNoBPFFS, defaultBPFFS)
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

// notLoadedNoBPFFS tells an unmounted bpffs from a misconfigured pin
// directory. With no bpffs under pinDir and no pinDir at all, nothing can
// be pinned, so Patu is simply not loaded: the first command on a fresh
// machine must say that, not fail. A pin directory that exists off a bpffs
// is a mistake worth an error.
func notLoadedNoBPFFS(pinDir string, err error) bool {
	if !errors.Is(err, errNoBPFFS) {
		return false
	}
	_, serr := os.Stat(pinDir)
	return errors.Is(serr, fs.ErrNotExist)
}

func isBelow(dir, base string) bool {
	rel, err := filepath.Rel(base, filepath.Clean(dir))
	return err == nil && rel != ".." && !filepath.IsAbs(rel) && (len(rel) < 3 || rel[:3] != "../")
}
