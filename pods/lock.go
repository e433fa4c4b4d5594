package pods

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
)

// DefaultLockTimeout bounds the wait for another writer of the same pin
// directory: long enough for any registration, short enough that a stuck
// process cannot hang a container start behind it.
const DefaultLockTimeout = 5 * time.Second

// Lock takes the writer lock of dp's pin directory. Every process that
// changes pod records (patu-cni, patu hook, the daemon) holds it across a
// Register, Unregister or SetCgroups: those read records and then write
// endpoints, and two processes interleaving them (one pod's DEL, another
// pod's or the daemon's registration of the same address) would leave an
// endpoint no record holds, or delete one a record still needs.
func Lock(dp *bpf.Datapath, timeout time.Duration) (unlock func(), err error) {
	return LockDir(dp.PinDir(), timeout)
}

// LockDir takes an exclusive flock on the directory dir, polling up to
// timeout: a blocking flock could not be abandoned. The lock is the open
// file's, so a process must not take it twice.
func LockDir(dir string, timeout time.Duration) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	deadline := time.Now().Add(timeout)
	wait := 100 * time.Microsecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: another patu process held it for %s", dir, timeout)
		}
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Millisecond)
	}
}
