package pods

import (
	"strings"
	"testing"
	"time"
)

func TestLockDirTimesOut(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockDir(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := LockDir(dir, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "held it") {
		t.Errorf("second lock: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("gave up after %s", d)
	}
	unlock()
	unlock2, err := LockDir(dir, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock2()
}
