package mountinfo

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	in := `22 1 0:20 / /sys/fs/cgroup/unified rw,nosuid shared:6 - cgroup2 cgroup2 rw
23 1 0:21 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
24 1 0:22 /sub /mnt/with\040space rw master:1 shared:2 - ext4 /dev/vda rw
garbage line
`
	got, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{Root: "/", Point: "/sys/fs/cgroup/unified", FSType: "cgroup2"},
		{Root: "/", Point: "/sys/fs/cgroup/memory", FSType: "cgroup"},
		{Root: "/sub", Point: "/mnt/with space", FSType: "ext4"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/a\134b`:   `/a\b`,
		`/tab\011`:  "/tab\t",
		`/plain`:    "/plain",
		`/short\04`: `/short\04`,
		`/bad\999`:  `/bad\999`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
