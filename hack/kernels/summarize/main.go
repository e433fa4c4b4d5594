// Command summarize prints the kernel matrix's line for one kernel from the
// test binaries' logs of a run (hack/kernels.sh): every top-level test
// counts once, skips name their reason (subtests' too, since a path that
// is off on a kernel skips as a subtest), and a binary that did not finish
// counts as a failure.
//
//	summarize -kernel 6.1.0-57-amd64 -where "QEMU/TCG amd64, 137 s" DIR
//
// DIR holds NAME.json (go tool test2json of a binary's -test.v=test2json
// output) and NAME.exit (its exit status). It exits 1 when anything failed.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	kernel := flag.String("kernel", "", "kernel release the logs are from")
	where := flag.String("where", "", "where it ran, for the line")
	flag.Parse()
	if err := run(os.Stdout, *kernel, *where, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "summarize:", err)
		os.Exit(1)
	}
}

// event is a test2json event.
type event struct {
	Action string
	Test   string
	Output string
}

type tally struct {
	passed, failed, skipped int
	failures                []string
	// reasons maps a skip reason to the tests it skipped.
	reasons map[string][]string
}

var errFailed = errors.New("tests failed")

func run(out io.Writer, kernel, where string, dirs []string) error {
	if len(dirs) != 1 {
		return errors.New("want one log directory")
	}
	logs, err := filepath.Glob(filepath.Join(dirs[0], "*.json"))
	if err != nil {
		return err
	}
	t := tally{reasons: map[string][]string{}}
	for _, l := range logs {
		if err := t.add(l); err != nil {
			return err
		}
	}
	if len(logs) == 0 {
		t.failed++
		t.failures = append(t.failures, "no test ran")
	}
	fmt.Fprintf(out, "kernel %s: %d passed, %d failed, %d skipped%s [%s]\n", kernel, t.passed, t.failed, t.skipped, t.why(), where)
	if t.failed > 0 {
		return errFailed
	}
	return nil
}

func (t *tally) add(path string) error {
	name := strings.TrimSuffix(filepath.Base(path), ".json")
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	output := map[string][]string{}
	finished := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		switch e.Action {
		case "output":
			if e.Test != "" {
				output[e.Test] = append(output[e.Test], e.Output)
			}
		case "pass", "fail", "skip":
			if e.Test == "" {
				finished = true
				continue
			}
			top := !strings.Contains(e.Test, "/")
			switch {
			case e.Action == "skip":
				r := reason(output[e.Test])
				t.reasons[r] = append(t.reasons[r], e.Test)
				if top {
					t.skipped++
				}
			case top && e.Action == "pass":
				t.passed++
			case top:
				t.failed++
				t.failures = append(t.failures, e.Test)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	status, _ := os.ReadFile(strings.TrimSuffix(path, ".json") + ".exit")
	if !finished || (strings.TrimSpace(string(status)) != "0" && len(t.failures) == 0) {
		t.failed++
		t.failures = append(t.failures, fmt.Sprintf("%s did not finish (exit %s)", name, strings.TrimSpace(string(status))))
	}
	return nil
}

// reason is what a skipped test said: its log lines without the
// file:line prefix and the framing.
func reason(lines []string) string {
	var said []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- ") {
			continue
		}
		if i := strings.Index(l, ".go:"); i > 0 {
			if j := strings.Index(l[i:], ": "); j > 0 {
				l = l[i+j+2:]
			}
		}
		said = append(said, l)
	}
	if len(said) == 0 {
		return "no reason given"
	}
	return said[len(said)-1]
}

func (t *tally) why() string {
	var parts []string
	if len(t.failures) > 0 {
		parts = append(parts, "failed: "+strings.Join(t.failures, ", "))
	}
	rs := make([]string, 0, len(t.reasons))
	for r := range t.reasons {
		rs = append(rs, r)
	}
	sort.Strings(rs)
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("skipped %s: %s", strings.Join(t.reasons[r], ", "), r))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, "; ") + ")"
}
