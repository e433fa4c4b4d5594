package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/patu-dev/patu/pods"
)

// DefaultStateDir is where `patu hook` counts its failures.
//
// A file on /run rather than a counter under the bpffs: the failures worth
// counting are mostly those where Patu's pins are missing (not loaded, no
// bpffs, an unload meanwhile), and a pinned counter cannot be written then.
// /run is a tmpfs, so the count starts over at boot, like the pins.
const DefaultStateDir = "/run/patu"

// FailuresFile is the name of the failure count in the state directory.
const FailuresFile = "hook-failures.json"

// keepRecent is how many failures the file keeps in full.
const keepRecent = 10

// Failure is one failed hook run.
type Failure struct {
	Time      time.Time `json:"time"`
	Stage     Stage     `json:"stage"`
	Container string    `json:"container"`
	Error     string    `json:"error"`
}

// Failures are the hook failures counted in a state directory.
type Failures struct {
	// Count is every failure since the file was created (at boot, or when
	// someone removed it).
	Count uint64 `json:"count"`
	// Recent are the last failures, oldest first.
	Recent []Failure `json:"recent,omitempty"`
}

// ReadFailures returns the failures counted in stateDir; none when the
// file does not exist.
func ReadFailures(stateDir string) (Failures, error) {
	var all Failures
	b, err := os.ReadFile(filepath.Join(stateDir, FailuresFile))
	if errors.Is(err, os.ErrNotExist) {
		return all, nil
	}
	if err != nil {
		return all, fmt.Errorf("read hook failures: %w", err)
	}
	if err := json.Unmarshal(b, &all); err != nil {
		return all, fmt.Errorf("read hook failures %s: %w", filepath.Join(stateDir, FailuresFile), err)
	}
	return all, nil
}

// CountFailure adds f to the failures counted in stateDir, creating the
// directory and the file as needed, and returns the new count. Concurrent
// hooks serialise on a lock of the directory; the file is replaced
// atomically, so a reader never sees half of it.
func CountFailure(stateDir string, f Failure) (Failures, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return Failures{}, fmt.Errorf("count hook failure: %w", err)
	}
	unlock, err := pods.LockDir(stateDir, DefaultLockTimeout)
	if err != nil {
		return Failures{}, fmt.Errorf("count hook failure: %w", err)
	}
	defer unlock()
	all, err := ReadFailures(stateDir)
	if err != nil {
		// A damaged file is started over rather than blocking the count.
		all = Failures{}
	}
	all.Count++
	all.Recent = append(all.Recent, f)
	if n := len(all.Recent); n > keepRecent {
		all.Recent = all.Recent[n-keepRecent:]
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return all, err
	}
	path := filepath.Join(stateDir, FailuresFile)
	tmp, err := os.CreateTemp(stateDir, "."+FailuresFile+".tmp-*")
	if err != nil {
		return all, fmt.Errorf("count hook failure: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	err = errors.Join(err, tmp.Chmod(0o644), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return all, fmt.Errorf("count hook failure: %w", err)
	}
	return all, nil
}
