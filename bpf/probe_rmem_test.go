package bpf

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/testnet"
)

// TestRedirectCharged: the probe agrees with what the running kernel's
// release says about it (the accounting came with Linux 6.13), so that it
// can be trusted where the release says nothing (backports).
func TestRedirectCharged(t *testing.T) {
	testnet.Privileged(t)
	got, err := RedirectCharged()
	if err != nil {
		t.Fatal(err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	want, err := releaseAtLeast(release, 6, 13)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("kernel %s: redirected bytes charged %v, want %v", release, got, want)
	}
}

// releaseAtLeast says whether a kernel release is major.minor or newer:
// only to check the probe against what the release promises.
func releaseAtLeast(release string, major, minor int) (bool, error) {
	var maj, min int
	if _, err := fmt.Sscanf(release, "%d.%d", &maj, &min); err != nil {
		return false, fmt.Errorf("parse kernel release %q: %w", release, err)
	}
	return maj > major || (maj == major && min >= minor), nil
}
