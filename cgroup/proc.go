package cgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// OfPid returns the cgroup v2 directory, under the cgroup2 mount mnt, that
// process pid runs in. It reads the "0::" line of /proc/PID/cgroup, which
// hybrid (v1 + v2) hosts have as well as pure v2 ones.
func OfPid(mnt string, pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	rel, err := parseProcCgroup(b)
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return filepath.Join(mnt, rel), nil
}

func parseProcCgroup(b []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rel, ok := bytes.CutPrefix(sc.Bytes(), []byte("0::")); ok {
			if len(rel) == 0 || rel[0] != '/' {
				break
			}
			return filepath.Clean(string(rel)), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry")
}
