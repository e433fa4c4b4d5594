package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"time"

	"github.com/patu-dev/patu/hook"
)

const hookUsage = `usage: patu [--bpffs DIR] hook [--state-dir DIR] STAGE < STATE_JSON

The OCI runtime hook for podman and CRI-O (hooks.d; see deploy/podman).
STAGE is createRuntime (or prestart): record the container and attach its
cgroup; or poststop: undo that. The container's state JSON is read from
stdin. A failure inside Patu (not loaded, a map full, ...) is logged (stderr
and syslog), counted in DIR/` + hook.FailuresFile + ` (shown by patu status)
and exits 0: the container always starts. A malformed state or an unknown
stage exits 1.

flags:
  --state-dir DIR   where failures are counted (default ` + hook.DefaultStateDir + `)
`

func cmdHook(stdin io.Reader, stdout, stderr io.Writer, pinDir string, args []string) error {
	fs := flag.NewFlagSet("hook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	stateDir := fs.String("state-dir", hook.DefaultStateDir, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, hookUsage)
			return nil
		}
		return usagef("hook: %v", err)
	}
	if fs.NArg() != 1 {
		return usagef("hook takes one STAGE (createRuntime, prestart or poststop), got %q", fs.Args())
	}
	stage, err := hook.ParseStage(fs.Arg(0))
	if err != nil {
		return err
	}
	st, err := hook.ReadState(stdin, stage)
	if err != nil {
		return err
	}
	// Silent on success: runc discards a successful hook's output.
	if _, err := hook.Run(hook.Options{PinDir: pinDir, Stage: stage, State: st}); err != nil {
		countHookFailure(stderr, pinDir, *stateDir, stage, st.ID, err)
	}
	return nil
}

// countHookFailure logs and counts a failure inside Patu, which must not
// stop the container: the hook exits 0 after it.
func countHookFailure(stderr io.Writer, pinDir, stateDir string, stage hook.Stage, ctr string, err error) {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	id := ctr
	if len(id) > 12 {
		id = id[:12]
	}
	all, cerr := hook.CountFailure(stateDir, hook.Failure{Time: time.Now(), Stage: stage, Container: ctr, Error: err.Error()})
	log.Error("patu hook failed; the container runs without redirect", "stage", stage, "container", id,
		"bpffs", pinDir, "error", err, "failures", all.Count)
	if cerr != nil {
		log.Error("patu hook could not count the failure", "error", cerr)
	}
	hookSyslog(fmt.Sprintf("%s %s: %v (container runs without redirect; %d failures counted in %s)",
		stage, id, err, all.Count, stateDir))
}

// hookSyslog sends a failure to syslog, where there is a syslog socket:
// runc and podman drop the output of a hook that exits 0, the journal
// keeps it. A variable, so that tests keep the host's journal clean.
var hookSyslog = func(msg string) {
	if w, err := syslog.New(syslog.LOG_WARNING|syslog.LOG_DAEMON, "patu-hook"); err == nil {
		w.Write([]byte(msg))
		w.Close()
	}
}
