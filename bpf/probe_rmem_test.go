package bpf

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/testnet"
)

// TestRedirectCharged: the probe agrees with what the running kernel's
// release promises where it promises something: the accounting came with
// Linux 6.13, so from there on it must be found. Before 6.13 the release
// says nothing: stable kernels got the change as a fix (Debian's 6.1.192
// and 6.12.95 charge), so there the probe's answer is logged, and
// TestStalledReader checks that the queue stays bounded either way.
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
	promised, err := releaseAtLeast(release, 6, 13)
	if err != nil {
		t.Fatal(err)
	}
	if promised && !got {
		t.Errorf("kernel %s: redirected bytes not charged to the receiver, although 6.13 and later charge them", release)
	}
	t.Logf("kernel %s: redirected bytes charged to the receiver: %v", release, got)
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
