package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/patu-dev/patu/cgroup"
	"golang.org/x/sys/unix"
)

// cgroupPath is the value of patu_cgroup_paths: a NUL-padded path.
type cgroupPath [256]byte

// Attachment is a cgroup the sockops program is attached to.
type Attachment struct {
	CgroupID uint64 `json:"cgroup_id"`
	Path     string `json:"path"`
	// Gone is true when the cgroup no longer exists (the kernel detached
	// the program with it); Detach removes what is left.
	Gone bool `json:"gone,omitempty"`
}

// openCgroupPaths opens, or creates and pins, the map that remembers the
// path of each attached cgroup: the link pins are named by cgroup id.
func openCgroupPaths(pinDir string) (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name:       mapCgroups,
		Type:       ebpf.Hash,
		KeySize:    8,
		ValueSize:  uint32(len(cgroupPath{})),
		MaxEntries: 4096,
		Pinning:    ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pinDir})
	if err != nil {
		return nil, fmt.Errorf("open cgroup path map: %w", err)
	}
	return m, nil
}

// Attach attaches the sockops program to a cgroup v2 directory; sockets
// created by processes in it or below it become eligible for redirect.
// Attaching again is a no-op that moves the cgroup to the current program.
func (d *Datapath) Attach(dir string) error {
	dir = filepath.Clean(dir)
	id, err := cgroup.ID(dir)
	if err != nil {
		return err
	}
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(d.pinDir, pinProgSockops), nil)
	if errors.Is(err, fs.ErrNotExist) {
		if _, merr := os.Stat(filepath.Join(d.pinDir, "patu_socks")); merr == nil {
			return fmt.Errorf("attach sockops to %s: %w", dir, ErrSocketPathOff)
		}
	}
	if err != nil {
		return fmt.Errorf("open pinned sockops program: %w", err)
	}
	defer prog.Close()

	pin := d.cgroupPin(id)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if err := l.Update(prog); err != nil {
			return fmt.Errorf("update sockops on %s: %w", dir, err)
		}
		return d.rememberCgroup(id, dir)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupSockOps, Program: prog})
	if err != nil {
		return fmt.Errorf("attach sockops to %s: %w", dir, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin sockops link for %s: %w", dir, err)
	}
	return d.rememberCgroup(id, dir)
}

func (d *Datapath) rememberCgroup(id uint64, dir string) error {
	var p cgroupPath
	copy(p[:], dir)
	if err := d.cgroups.Put(id, p); err != nil {
		return fmt.Errorf("remember cgroup %s: %w", dir, err)
	}
	return nil
}

// Detach removes the sockops program from a cgroup. Established sockets
// keep their path until they close. Detaching what is not attached, or a
// cgroup that no longer exists, is not an error.
func (d *Datapath) Detach(dir string) error {
	dir = filepath.Clean(dir)
	id, err := cgroup.ID(dir)
	if err != nil {
		// The cgroup may be gone already: find it by its remembered path.
		var ok bool
		if id, ok = d.findCgroup(dir); !ok {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
	}
	return d.DetachID(id)
}

// DetachID is Detach by cgroup id.
func (d *Datapath) DetachID(id uint64) error {
	if err := os.Remove(d.cgroupPin(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("detach sockops from cgroup %d: %w", id, err)
	}
	if err := d.cgroups.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget cgroup %d: %w", id, err)
	}
	return nil
}

func (d *Datapath) findCgroup(dir string) (uint64, bool) {
	atts, err := d.Attachments()
	if err != nil {
		return 0, false
	}
	for _, a := range atts {
		if a.Path == dir {
			return a.CgroupID, true
		}
	}
	return 0, false
}

// Attachments lists the cgroups the sockops program is attached to.
func (d *Datapath) Attachments() ([]Attachment, error) {
	entries, err := os.ReadDir(filepath.Join(d.pinDir, dirCgroups))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list cgroup links: %w", err)
	}
	var out []Attachment
	for _, e := range entries {
		id, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue
		}
		a := Attachment{CgroupID: id}
		var p cgroupPath
		if err := d.cgroups.Lookup(id, &p); err == nil {
			a.Path = string(bytes.TrimRight(p[:], "\x00"))
		}
		if got, err := cgroup.ID(a.Path); err != nil || got != id {
			a.Gone = true
		}
		out = append(out, a)
	}
	return out, nil
}

// IsAttached reports whether the sockops link of cgroup id is pinned.
func (d *Datapath) IsAttached(id uint64) bool {
	_, err := os.Stat(d.cgroupPin(id))
	return err == nil
}

func (d *Datapath) cgroupPin(id uint64) string {
	return filepath.Join(d.pinDir, dirCgroups, strconv.FormatUint(id, 10))
}

// updateCgroupLinks moves every attached cgroup to prog without a gap.
func (d *Datapath) updateCgroupLinks(prog *ebpf.Program) error {
	entries, err := os.ReadDir(filepath.Join(d.pinDir, dirCgroups))
	if err != nil {
		return fmt.Errorf("list cgroup links: %w", err)
	}
	for _, e := range entries {
		pin := filepath.Join(d.pinDir, dirCgroups, e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return fmt.Errorf("open cgroup link %s: %w", pin, err)
		}
		err = l.Update(prog)
		l.Close()
		if errors.Is(err, unix.ENOLINK) {
			// Its cgroup was removed and the kernel detached it: there is
			// nothing to move, and the pin is all that is left of it.
			os.Remove(pin)
			continue
		}
		if err != nil {
			return fmt.Errorf("update cgroup link %s: %w", pin, err)
		}
	}
	return nil
}
