package cgroup

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
		err              error
	}{
		{
			name: "hybrid",
			text: `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`,
			want: "/sys/fs/cgroup/unified",
		},
		{
			name: "pure v2 with optional fields",
			text: `25 21 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 master:1 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`,
			want: "/sys/fs/cgroup",
		},
		{
			name: "escaped mount point",
			text: `26 25 0:23 / /mnt/my\040cgroup rw - cgroup2 none rw
`,
			want: "/mnt/my cgroup",
		},
		{
			name: "root mount preferred over an earlier subtree bind",
			text: `100 99 0:23 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw
101 99 0:23 / /host/cgroup rw - cgroup2 cgroup2 rw
`,
			want: "/host/cgroup",
		},
		{
			name: "only a subtree",
			text: `100 99 0:23 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw
`,
			want: "/sys/fs/cgroup",
		},
		{
			name: "cgroup2 as a source name is not the type",
			text: `50 22 0:40 / /x rw - tmpfs cgroup2 rw
`,
			err: ErrNoCgroup2,
		},
		{
			name: "v1 only",
			text: `31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
`,
			err: ErrNoCgroup2,
		},
		{name: "empty", err: ErrNoCgroup2},
		{
			name: "malformed lines are skipped",
			text: `garbage
1 2 3
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`,
			want: "/sys/fs/cgroup/unified",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tc.text))
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestErrNoCgroup2SaysWhatToDo(t *testing.T) {
	if !strings.Contains(ErrNoCgroup2.Error(), "mount -t cgroup2") {
		t.Fatalf("%q does not tell the user how to mount cgroup2", ErrNoCgroup2)
	}
}

func TestParseProcCgroup(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"12:pids:/k8s.io/abc\n1:name=systemd:/k8s.io/abc\n0::/k8s.io/abc\n", "/k8s.io/abc", true},
		{"0::/patu-pods/uid-1/ctr\n", "/patu-pods/uid-1/ctr", true},
		{"0::/\n", "/", true},
		{"12:pids:/x\n", "", false},
		{"0::relative\n", "", false},
	} {
		got, err := parseProcCgroup([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseProcCgroup(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
