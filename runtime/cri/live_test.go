package cri

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime"
)

// TestLive checks the client against a real runtime, when
// PATU_CRI_ENDPOINT names its socket (the e2e tier sets it): every ready
// sandbox must have a pid, an existing netns and a cgroups path, every
// running container a live pid. With PATU_CRI_DUMP set to a directory it
// also writes the raw verbose info documents there, which is how
// testdata/ was recorded. With PATU_CRI_EVENTS=<duration> it prints the
// runtime's events for that long (drive pods with crictl meanwhile).
func TestLive(t *testing.T) {
	ep := os.Getenv("PATU_CRI_ENDPOINT")
	if ep == "" {
		t.Skip("PATU_CRI_ENDPOINT not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	name, version := c.RuntimeName()
	t.Logf("runtime %s %s at %s", name, version, c.Endpoint())
	dump := os.Getenv("PATU_CRI_DUMP")

	sandboxes, err := c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sandboxes {
		t.Logf("sandbox %.12s %s/%s ready=%v ips=%v", s.ID, s.Namespace, s.Name, s.Ready, s.IPs)
		if dump != "" {
			dumpInfo(t, dump, name, version, "sandbox-"+s.Name, func() (map[string]string, error) {
				st, err := c.sandboxStatus(ctx, s.ID, true)
				return st.GetInfo(), err
			})
		}
		info, err := c.SandboxInfo(ctx, s.ID)
		if err != nil {
			t.Errorf("SandboxInfo %s: %v", s.ID, err)
			continue
		}
		t.Logf("  info %+v", info)
		if !s.Ready {
			continue
		}
		if info.Pid <= 0 {
			t.Errorf("ready sandbox %s: pid %d", s.ID, info.Pid)
		}
		if info.Netns != "" {
			if _, err := os.Stat(info.Netns); err != nil {
				t.Errorf("ready sandbox %s: netns: %v", s.ID, err)
			}
		}
		if info.CgroupsPath == "" {
			t.Errorf("ready sandbox %s: no cgroups path", s.ID)
		}
	}

	containers, err := c.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ct := range containers {
		if dump != "" {
			dumpInfo(t, dump, name, version, "container-"+ct.Name, func() (map[string]string, error) {
				st, err := c.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ct.ID, Verbose: true})
				return st.GetInfo(), err
			})
		}
		pid, err := c.ContainerPid(ctx, ct.ID)
		t.Logf("container %.12s %s sandbox=%.12s state=%v pid=%d err=%v", ct.ID, ct.Name, ct.SandboxID, ct.State, pid, err)
		if err != nil {
			t.Errorf("ContainerPid %s: %v", ct.ID, err)
		} else if ct.State == StateRunning {
			if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); pid <= 0 || err != nil {
				t.Errorf("running container %s: pid %d: %v", ct.ID, pid, err)
			}
		}
	}

	if d, err := time.ParseDuration(os.Getenv("PATU_CRI_EVENTS")); err == nil {
		ectx, ecancel := context.WithTimeout(ctx, d)
		defer ecancel()
		err := c.WatchEvents(ectx, func(ev runtime.Event) {
			t.Logf("event %v id=%.12s sandbox=%.12s time=%s", ev.Kind, ev.ID, ev.SandboxID, ev.Time.Format(time.RFC3339Nano))
		})
		switch {
		case errors.Is(err, runtime.ErrUnsupported):
			t.Logf("events: %v", err)
		case !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("WatchEvents: %v", err)
		}
	}
}

func dumpInfo(t *testing.T, dir, name, version, what string, get func() (map[string]string, error)) {
	t.Helper()
	info, err := get()
	if err != nil {
		t.Errorf("verbose status of %s: %v", what, err)
		return
	}
	raw := info["info"]
	if !json.Valid([]byte(raw)) {
		t.Errorf("%s: info is not JSON: %.80q", what, raw)
		return
	}
	file := filepath.Join(dir, strings.NewReplacer("/", "_", "~", "_").Replace(name+"-"+version+"-"+what)+".json")
	if err := os.WriteFile(file, []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", file)
}
