package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Stage is the hook stage a hooks.d file passes as the argument.
type Stage string

// The stages `patu hook` handles. prestart is the deprecated predecessor of
// createRuntime, for runtimes that have only that one; both do the same.
const (
	CreateRuntime Stage = "createRuntime"
	Prestart      Stage = "prestart"
	Poststop      Stage = "poststop"
)

// ErrBadInput is wrapped by the errors of ParseStage and ReadState: the
// runtime (or the hooks.d file) passed something Patu does not accept.
// Unlike a failure inside Patu, it is reported with a non-zero exit.
var ErrBadInput = errors.New("bad hook input")

// ParseStage returns the stage named s.
func ParseStage(s string) (Stage, error) {
	switch st := Stage(s); st {
	case CreateRuntime, Prestart, Poststop:
		return st, nil
	}
	return "", fmt.Errorf("%w: unknown stage %q: want createRuntime, prestart or poststop "+
		"(startContainer and createContainer run inside the container and are not supported)", ErrBadInput, s)
}

// creates reports whether the stage records the container.
func (s Stage) creates() bool { return s == CreateRuntime || s == Prestart }

// State is the OCI runtime state a hook reads on stdin (runtime-spec
// runtime.md "State"), only the fields Patu uses.
type State struct {
	OCIVersion string `json:"ociVersion"`
	ID         string `json:"id"`
	Status     string `json:"status"`
	// Pid is the container's init process; 0 at poststop.
	Pid    int    `json:"pid,omitempty"`
	Bundle string `json:"bundle"`
	// Annotations are the container's; podman sets its own and adds the
	// ones given with --annotation.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// maxStateSize bounds what ReadState reads: a state is a few KiB.
const maxStateSize = 1 << 20

// ReadState decodes the state on r and checks that the stage has what it
// needs: an id always, and a bundle and a pid to record a container.
func ReadState(r io.Reader, stage Stage) (State, error) {
	var st State
	b, err := io.ReadAll(io.LimitReader(r, maxStateSize+1))
	if err != nil {
		return st, fmt.Errorf("read state from stdin: %w", err)
	}
	if len(b) > maxStateSize {
		return st, fmt.Errorf("%w: state on stdin is larger than %d bytes", ErrBadInput, maxStateSize)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return st, fmt.Errorf("%w: no state on stdin: a runtime passes the container's state JSON", ErrBadInput)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%w: state on stdin is not an OCI state: %v", ErrBadInput, err)
	}
	if st.ID == "" {
		return st, fmt.Errorf("%w: state has no container id", ErrBadInput)
	}
	if stage.creates() {
		if st.Bundle == "" || !filepath.IsAbs(st.Bundle) {
			return st, fmt.Errorf("%w: %s state of %s has no absolute bundle path (%q)", ErrBadInput, stage, shortID(st.ID), st.Bundle)
		}
		if st.Pid <= 0 {
			return st, fmt.Errorf("%w: %s state of %s has no pid", ErrBadInput, stage, shortID(st.ID))
		}
	}
	return st, nil
}

// spec is the part of the bundle's config.json that Patu reads.
type spec struct {
	Linux *struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
	} `json:"linux"`
}

// netnsOf returns the path of the network namespace the container at
// bundle runs in, or "" when it has none of its own (the host network).
// A namespace the runtime created for the container itself has no path in
// the spec: then it is the init process's, /proc/PID/ns/net. Containers
// joining another's namespace (podman pod members, --network container:X)
// have that one's path.
func netnsOf(bundle string, pid int) (string, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return "", fmt.Errorf("read bundle config: %w", err)
	}
	return parseNetns(b, pid)
}

func parseNetns(config []byte, pid int) (string, error) {
	var s spec
	if err := json.Unmarshal(config, &s); err != nil {
		return "", fmt.Errorf("parse bundle config: %w", err)
	}
	if s.Linux == nil {
		return "", nil
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type != "network" {
			continue
		}
		if ns.Path != "" {
			return ns.Path, nil
		}
		return fmt.Sprintf("/proc/%d/ns/net", pid), nil
	}
	return "", nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
