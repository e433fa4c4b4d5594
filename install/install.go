package install

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/patu-dev/patu/deploy"
)

// Profiles.
const (
	ProfileK3s        = "k3s"
	ProfileContainerd = "containerd"
	// ProfilePodman places OCI hooks instead of a CNI plugin, and a unit
	// that loads Patu at boot instead of the daemon.
	ProfilePodman = "podman"
)

// Actions of a Change.
const (
	Created   = "created"
	Updated   = "updated"
	Unchanged = "unchanged"
	Removed   = "removed"
	// Kept is Uninstall leaving a file in place because Install did not
	// write its current content.
	Kept = "kept"
)

// Names of the files Install places, relative to their directories.
const (
	PatuName     = "patu"
	CNIName      = "patu" // the conflist's "type"
	ConflistName = "10-patu.conflist"
	UnitName     = "patu.service"
)

// HookNames are the hooks.d files of the podman profile: one per stage,
// since a hooks.d file passes the same arguments to every stage it lists.
var HookNames = []string{"patu-createruntime.json", "patu-poststop.json"}

// DefaultHooksDir is where the podman profile puts its hooks: the
// directory of hooks shipped by packages, which podman and CRI-O read by
// default. Files of the same name in /etc/containers/oci/hooks.d win.
const DefaultHooksDir = "/usr/share/containers/oci/hooks.d"

// ManifestPath is where Install records what it wrote (under Options.Root).
const ManifestPath = "/var/lib/patu/install.json"

// Options says where to install. Empty fields take the profile's defaults
// (see Defaults).
type Options struct {
	Root       string // prefix for every destination; "" is /
	Profile    string // ProfileK3s or ProfileContainerd
	BinDir     string // where patu goes (default /usr/local/bin)
	CNIBinDir  string // where patu-cni goes, named "patu"
	CNIConfDir string // where 10-patu.conflist goes
	SystemdDir string // where patu.service goes (default /etc/systemd/system)
	HooksDir   string // where the podman profile's hooks go (default DefaultHooksDir)
	// PodCIDR is the IPv4 subnet host-local hands out on this node. On K3s
	// it must be the node's podCIDR (kubectl get node NAME -o
	// jsonpath='{.spec.podCIDR}'). When empty, the subnet of an installed
	// conflist is kept, and a new one gets DefaultPodCIDR (K3s: its first
	// node's subnet).
	PodCIDR string
	// Binaries are the source paths of "patu" and "patu-cni". The defaults
	// are the running executable and patu-cni in its directory.
	Binaries map[string]string
	// DryRun reports the changes without making them.
	DryRun bool
	// CNIOnly places only the CNI plugin and the conflist, no patu
	// binary and no systemd unit: what a DaemonSet's init container does,
	// its main container being patu daemon.
	CNIOnly bool
	// Chain writes ChainedName, the node's own conflist (the first in the
	// conf dir) with patu appended, instead of the profile's; the node's
	// file is not touched, so uninstalling gives back its network as it
	// was. Without a conflist on the node the profile's is written under
	// ChainedName.
	Chain bool
}

// Change is one file Install or Uninstall looked at. Path includes Root.
type Change struct {
	Path   string
	Action string
}

// String is the change as `patu install` prints it, "created /path".
func (c Change) String() string { return c.Action + " " + c.Path }

type profile struct {
	cniBinDir, cniConfDir, podCIDR string
	// hooks: OCI hooks in hooks.d, no CNI plugin or conflist.
	hooks bool
}

var profiles = map[string]profile{
	ProfileK3s: {
		// K3s's static CNI bin dir (k3s-io/k3s#10868); K3s's containerd
		// config.toml names it as the CRI plugin's bin_dir.
		cniBinDir:  "/var/lib/rancher/k3s/data/cni",
		cniConfDir: "/var/lib/rancher/k3s/agent/etc/cni/net.d",
		podCIDR:    "10.42.0.0/24",
	},
	ProfileContainerd: {
		cniBinDir:  "/opt/cni/bin",
		cniConfDir: "/etc/cni/net.d",
		podCIDR:    "10.86.0.0/24",
	},
	ProfilePodman: {hooks: true},
}

// Defaults returns the options of a profile with every directory filled in.
func Defaults(profileName string) (Options, error) {
	return Options{Profile: profileName}.withDefaults()
}

// DefaultPodCIDR is the subnet a profile's new conflist hands out when
// Options.PodCIDR is empty.
func DefaultPodCIDR(profileName string) string { return profiles[profileName].podCIDR }

func (o Options) withDefaults() (Options, error) {
	p, ok := profiles[o.Profile]
	if !ok {
		return o, fmt.Errorf("unknown profile %q: want %s, %s or %s", o.Profile, ProfileK3s, ProfileContainerd, ProfilePodman)
	}
	if o.BinDir == "" {
		o.BinDir = "/usr/local/bin"
	}
	if o.SystemdDir == "" {
		o.SystemdDir = "/etc/systemd/system"
	}
	dirs := map[string]string{"bin dir": o.BinDir, "systemd dir": o.SystemdDir}
	if p.hooks && (o.CNIOnly || o.Chain) {
		return o, fmt.Errorf("profile %s installs OCI hooks, no CNI plugin: --cni-only and --chain do not apply", o.Profile)
	}
	if p.hooks {
		if o.CNIBinDir != "" || o.CNIConfDir != "" || o.PodCIDR != "" {
			return o, fmt.Errorf("profile %s installs OCI hooks, no CNI plugin: CNI directories and a pod CIDR do not apply", o.Profile)
		}
		if o.HooksDir == "" {
			o.HooksDir = DefaultHooksDir
		}
		dirs["hooks dir"] = o.HooksDir
	} else {
		if o.HooksDir != "" {
			return o, fmt.Errorf("profile %s installs a CNI plugin, no OCI hooks: a hooks dir does not apply", o.Profile)
		}
		if o.CNIBinDir == "" {
			o.CNIBinDir = p.cniBinDir
		}
		if o.CNIConfDir == "" {
			o.CNIConfDir = p.cniConfDir
		}
		dirs["CNI bin dir"], dirs["CNI conf dir"] = o.CNIBinDir, o.CNIConfDir
	}
	for name, dir := range dirs {
		if !filepath.IsAbs(dir) {
			return o, fmt.Errorf("%s %q: want an absolute path (Root is the prefix)", name, dir)
		}
	}
	return o, nil
}

// item is one file to place.
type item struct {
	dest   string      // path on the node, without Root
	mode   fs.FileMode // 0755 for binaries, 0644 for the rest
	data   []byte      // the content, for rendered files
	src    string      // the source, for binaries
	srcErr error       // why src cannot be used (Uninstall does without it)
}

func (it item) want() (string, error) {
	if it.src == "" {
		return hashBytes(it.data), nil
	}
	if it.srcErr != nil {
		return "", it.srcErr
	}
	return hashFile(it.src)
}

func plan(o Options) ([]item, error) {
	srcs, err := sources(o.Binaries)
	if err != nil {
		return nil, err
	}
	unit, err := deploy.Files.ReadFile(o.Profile + "/" + UnitName)
	if err != nil {
		return nil, fmt.Errorf("embedded unit: %w", err)
	}
	patu := filepath.Join(o.BinDir, PatuName)
	if unit, err = renderUnit(unit, patu); err != nil {
		return nil, err
	}
	bin := func(name, dest string) item {
		it := item{dest: dest, mode: 0o755, src: srcs[name]}
		if st, err := os.Stat(it.src); err != nil {
			it.srcErr = fmt.Errorf("%s binary: %w", name, err)
			if name == "patu-cni" && o.Binaries["patu-cni"] == "" {
				it.srcErr = fmt.Errorf("%w: it is looked for next to the patu executable; build it there or give its path", it.srcErr)
			}
		} else if !st.Mode().IsRegular() {
			it.srcErr = fmt.Errorf("%s binary %s: not a regular file", name, it.src)
		}
		return it
	}
	var items []item
	if !o.CNIOnly {
		items = append(items, bin("patu", patu))
	}
	if profiles[o.Profile].hooks {
		for _, name := range HookNames {
			b, err := deploy.Files.ReadFile(o.Profile + "/" + name)
			if err != nil {
				return nil, fmt.Errorf("embedded hook: %w", err)
			}
			if b, err = renderHook(b, patu); err != nil {
				return nil, err
			}
			items = append(items, item{dest: filepath.Join(o.HooksDir, name), mode: 0o644, data: b})
		}
		return append(items, item{dest: filepath.Join(o.SystemdDir, UnitName), mode: 0o644, data: unit}), nil
	}

	conflist, err := deploy.Files.ReadFile(o.Profile + "/" + ConflistName)
	if err != nil {
		return nil, fmt.Errorf("embedded conflist: %w", err)
	}
	cidr := o.PodCIDR
	if cidr == "" {
		// Keep the subnet of an installed conflist: rerunning install (an
		// upgrade) without a pod CIDR must not renumber the node.
		cidr = installedSubnet(filepath.Join(o.Root, o.CNIConfDir, ConflistName))
	}
	if cidr == "" {
		cidr = profiles[o.Profile].podCIDR
	}
	if conflist, err = renderConflist(conflist, profiles[o.Profile].podCIDR, cidr); err != nil {
		return nil, err
	}
	conf := item{dest: filepath.Join(o.CNIConfDir, ConflistName), mode: 0o644, data: conflist}
	needConf := true
	if o.Chain {
		if conf, _, needConf, err = chainedItem(o, conflist); err != nil {
			return nil, err
		}
	}
	items = append(items, bin("patu-cni", filepath.Join(o.CNIBinDir, CNIName)))
	if needConf {
		items = append(items, conf)
	}
	if !o.CNIOnly {
		items = append(items, item{dest: filepath.Join(o.SystemdDir, UnitName), mode: 0o644, data: unit})
	}
	return items, nil
}

// sources resolves the source binaries: given ones as they are, patu as the
// running executable and patu-cni next to it.
func sources(given map[string]string) (map[string]string, error) {
	srcs := map[string]string{}
	for name, path := range given {
		if name != "patu" && name != "patu-cni" {
			return nil, fmt.Errorf("unknown binary %q: want patu or patu-cni", name)
		}
		srcs[name] = path
	}
	if srcs["patu"] != "" && srcs["patu-cni"] != "" {
		return srcs, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	if srcs["patu"] == "" {
		srcs["patu"] = exe
	}
	if srcs["patu-cni"] == "" {
		srcs["patu-cni"] = filepath.Join(filepath.Dir(exe), "patu-cni")
	}
	return srcs, nil
}

// renderConflist sets the subnet host-local hands out.
func renderConflist(b []byte, defCIDR, cidr string) ([]byte, error) {
	p, err := parsePodCIDR(cidr)
	if err != nil {
		return nil, err
	}
	return replaceOnce(b, `"subnet": "`+defCIDR+`"`, `"subnet": "`+p.String()+`"`)
}

func parsePodCIDR(cidr string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(cidr)
	switch {
	case err != nil:
		return p, fmt.Errorf("pod CIDR %q: %w", cidr, err)
	case !p.Addr().Is4():
		return p, fmt.Errorf("pod CIDR %s: only IPv4 is supported", cidr)
	case p.Masked() != p:
		return p, fmt.Errorf("pod CIDR %s has host bits set: did you mean %s?", cidr, p.Masked())
	case p.Bits() > 30:
		return p, fmt.Errorf("pod CIDR %s: too small for a gateway and pods (want /30 or larger)", cidr)
	}
	return p, nil
}

// renderHook points a hooks.d file at patu in the chosen bin dir.
func renderHook(b []byte, patu string) ([]byte, error) {
	path, err := json.Marshal(patu)
	if err != nil {
		return nil, err
	}
	return replaceOnce(b, `"path": "/usr/local/bin/patu"`, `"path": `+string(path))
}

// renderUnit points ExecStart at patu in the chosen bin dir.
func renderUnit(b []byte, patu string) ([]byte, error) {
	return replaceOnce(b, "ExecStart=/usr/local/bin/patu ", "ExecStart="+patu+" ")
}

// installedSubnet returns the subnet in the conflist at path, or "" when
// there is none that Install could write.
func installedSubnet(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var list struct {
		Plugins []struct {
			IPAM struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if json.Unmarshal(b, &list) != nil {
		return ""
	}
	for _, p := range list.Plugins {
		if len(p.IPAM.Ranges) > 0 && len(p.IPAM.Ranges[0]) > 0 {
			subnet := p.IPAM.Ranges[0][0].Subnet
			if _, err := parsePodCIDR(subnet); err != nil {
				return ""
			}
			return subnet
		}
	}
	return ""
}

func replaceOnce(b []byte, old, new string) ([]byte, error) {
	if n := bytes.Count(b, []byte(old)); n != 1 {
		return nil, fmt.Errorf("embedded file has %q %d times, want once", old, n)
	}
	return bytes.Replace(b, []byte(old), []byte(new), 1), nil
}

// Install places the profile's files: patu, patu-cni, the conflist and the
// systemd unit; or, for ProfilePodman, patu, the hooks.d files and the
// unit. It changes only what differs and reports one Change per file.
func Install(opts Options) ([]Change, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	items, err := plan(o)
	if err != nil {
		return nil, err
	}
	// Check every source before writing anything.
	for _, it := range items {
		if it.srcErr != nil {
			return nil, it.srcErr
		}
	}
	m, err := loadManifest(o.Root)
	if err != nil {
		return nil, err
	}
	var changes []Change
	for _, it := range items {
		c, sum, err := place(o, it)
		if err != nil {
			if !o.DryRun {
				m.save(o.Root) // keep the record of what was placed so far
			}
			return changes, err
		}
		changes = append(changes, c)
		if m.Files[it.dest] != (entry{SHA256: sum, Profile: o.Profile}) {
			m.Files[it.dest] = entry{SHA256: sum, Profile: o.Profile}
			m.dirty = true
		}
	}
	if o.DryRun {
		return changes, nil
	}
	return changes, m.save(o.Root)
}

// place makes one file match it and returns the hash of its content.
func place(o Options, it item) (Change, string, error) {
	path := filepath.Join(o.Root, it.dest)
	c := Change{Path: path}
	want, err := it.want()
	if err != nil {
		return c, "", err
	}
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.Action = Created
	case err != nil:
		return c, "", err
	case st.IsDir():
		return c, "", fmt.Errorf("%s is a directory", path)
	case st.Mode().IsRegular() && st.Mode().Perm() == it.mode:
		// A symlink or a wrong mode is replaced even with the same content.
		have, err := hashFile(path)
		if err != nil {
			return c, "", err
		}
		if have == want {
			c.Action = Unchanged
			return c, want, nil
		}
		c.Action = Updated
	default:
		c.Action = Updated
	}
	if o.DryRun {
		return c, want, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return c, "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if it.src == "" {
		err = writeAtomic(path, it.mode, func(w io.Writer) error {
			_, err := w.Write(it.data)
			return err
		})
		return c, want, err
	}
	// Hash what is copied: the source may change between the comparison and
	// the copy (a rebuild), and the manifest must hold what was written.
	h := sha256.New()
	err = writeAtomic(path, it.mode, func(w io.Writer) error {
		f, err := os.Open(it.src)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(io.MultiWriter(w, h), f)
		return err
	})
	return c, hex.EncodeToString(h.Sum(nil)), err
}

// Uninstall removes the files Install placed for the profile: those at the
// destinations the options name and those the manifest lists. A file whose
// content is neither what Install recorded nor what it would write now is
// kept. Files already gone are not reported.
func Uninstall(opts Options) ([]Change, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	items, err := plan(o)
	if err != nil {
		return nil, err
	}
	m, err := loadManifest(o.Root)
	if err != nil {
		return nil, err
	}
	byDest := map[string]item{}
	var dests []string
	for _, it := range items {
		byDest[it.dest] = it
		dests = append(dests, it.dest)
	}
	var extra []string
	for dest, e := range m.Files {
		if _, ok := byDest[dest]; !ok && e.Profile == o.Profile {
			extra = append(extra, dest)
		}
	}
	sort.Strings(extra)
	dests = append(dests, extra...)

	// A node whose own conflist runs patu (K3s with --flannel-cni-conf
	// flannel-patu.conflist) keeps the plugin: without it no pod could
	// start there.
	keepPlugin := ""
	if o.Chain && !profiles[o.Profile].hooks {
		if _, src, ok, err := chainedItem(o, nil); err == nil && !ok && src != "" {
			keepPlugin = filepath.Join(o.CNIBinDir, CNIName)
		}
	}
	var changes []Change
	for _, dest := range dests {
		path := filepath.Join(o.Root, dest)
		if dest == keepPlugin {
			if _, err := os.Lstat(path); err == nil {
				changes = append(changes, Change{Path: path, Action: Kept})
			}
			continue
		}
		st, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			if _, ok := m.Files[dest]; ok {
				delete(m.Files, dest)
				m.dirty = true
			}
			continue
		}
		if err != nil {
			return changes, err
		}
		if !st.Mode().IsRegular() {
			changes = append(changes, Change{Path: path, Action: Kept})
			continue
		}
		have, err := hashFile(path)
		if err != nil {
			return changes, err
		}
		owned := false
		if e, ok := m.Files[dest]; ok && e.SHA256 == have {
			owned = true
		} else if it, ok := byDest[dest]; ok {
			// Without a record (or after an upgrade of patu), what Install
			// would write now still proves the file is ours.
			want, err := it.want()
			owned = err == nil && want == have
		}
		if !owned {
			changes = append(changes, Change{Path: path, Action: Kept})
			continue
		}
		if !o.DryRun {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return changes, err
			}
		}
		changes = append(changes, Change{Path: path, Action: Removed})
		delete(m.Files, dest)
		m.dirty = true
	}
	if o.DryRun {
		return changes, nil
	}
	return changes, m.save(o.Root)
}

// manifest is what Install wrote, by destination path without Root.
type manifest struct {
	Files map[string]entry `json:"files"`
	dirty bool
}

type entry struct {
	SHA256  string `json:"sha256"`
	Profile string `json:"profile"`
}

func loadManifest(root string) (*manifest, error) {
	path := filepath.Join(root, ManifestPath)
	m := &manifest{Files: map[string]entry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read install manifest: %w", err)
	}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("read install manifest %s: %w: remove it, then uninstall keeps only files whose content differs from this build's", path, err)
	}
	if m.Files == nil {
		m.Files = map[string]entry{}
	}
	return m, nil
}

// save writes the manifest when it changed, and removes it when it lists
// nothing.
func (m *manifest) save(root string) error {
	if !m.dirty {
		return nil
	}
	path := filepath.Join(root, ManifestPath)
	if len(m.Files) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove install manifest: %w", err)
		}
		os.Remove(filepath.Dir(path)) // only when empty; it is ours
		return nil
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	err = writeAtomic(path, 0o644, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return fmt.Errorf("write install manifest: %w", err)
	}
	m.dirty = false
	return nil
}

// tmpMarker is in the name of every temporary file; a name like
// ".10-patu.conflist.patu-tmp-123" has no .conflist/.conf/.json extension,
// so libcni does not load it.
const tmpMarker = ".patu-tmp-"

// writeAtomic writes path through a temporary file in the same directory:
// write, chmod, fsync, rename, fsync the directory. On any error the
// temporary file is removed and path is untouched.
func writeAtomic(path string, mode fs.FileMode, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+tmpMarker+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err = write(f); err != nil {
		return err
	}
	// Chmod explicitly: CreateTemp makes 0600 and the umask must not decide.
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func hashBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
