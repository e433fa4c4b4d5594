package rtlab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

// BaseDir holds one directory per lab, named by its prefix. It is short on
// purpose: containerd 2.x puts shim sockets at <dir>/s/<64 hex digits>, and a
// unix socket path must fit in 108 bytes.
const BaseDir = "/run/patu-rtlab"

// annotationsCapability makes containerd pass the pod's annotations to a CNI
// plugin in runtimeConfig; without it a plugin cannot see them.
const annotationsCapability = "io.kubernetes.cri.pod-annotations"

// portMappingsCapability gets chained plugins the pods' hostPorts.
const portMappingsCapability = "portMappings"

// layout is where a lab with a given prefix keeps everything. It depends on
// the prefix alone, so Sweep finds a crashed lab's leftovers without any
// other input.
type layout struct {
	prefix     string
	dir        string // BaseDir/<prefix>
	netnsName  string // patu-<prefix>
	bridge     string // <prefix>br0
	netName    string // CNI network name, patu-<prefix>
	config     string // containerd config.toml
	root       string // containerd root
	stateDir   string // containerd state
	runcRoot   string // runc --root of the runtime, without the namespace
	shimDir    string // 2.x shim sockets
	sock       string // containerd gRPC (and CRI) socket
	logFile    string // containerd stdout+stderr
	cniConfDir string
	cniBinDir  string // symlink farm: /usr/lib/cni/* + chained plugins
	ipamDir    string // host-local dataDir
	podsDir    string // pods' log directories
	crictlYAML string
	stateFile  string // lab.json, read by Sweep
	cgroupRoot string // cgroup path of the per-pod cgroups, /patu-rtlab-<prefix>
}

func newLayout(prefix string) layout {
	dir := filepath.Join(BaseDir, prefix)
	cd := filepath.Join(dir, "containerd")
	return layout{
		prefix:     prefix,
		dir:        dir,
		netnsName:  "patu-" + prefix,
		bridge:     prefix + "br0",
		netName:    "patu-" + prefix,
		config:     filepath.Join(cd, "config.toml"),
		root:       filepath.Join(cd, "root"),
		stateDir:   filepath.Join(cd, "state"),
		runcRoot:   filepath.Join(cd, "runc"),
		shimDir:    filepath.Join(dir, "s"),
		sock:       filepath.Join(dir, "containerd.sock"),
		logFile:    filepath.Join(dir, "containerd.log"),
		cniConfDir: filepath.Join(dir, "cni", "net.d"),
		cniBinDir:  filepath.Join(dir, "cni", "bin"),
		ipamDir:    filepath.Join(dir, "cni", "ipam"),
		podsDir:    filepath.Join(dir, "pods"),
		crictlYAML: filepath.Join(dir, "crictl.yaml"),
		stateFile:  filepath.Join(dir, "lab.json"),
		cgroupRoot: "/patu-rtlab-" + prefix,
	}
}

// cniPluginDir is where Debian's containernetworking-plugins installs the
// reference plugins.
const cniPluginDir = "/usr/lib/cni"

// writeCNI writes the plugin symlink farm and the conflist: bridge with
// host-local IPAM, then the chained plugins.
func writeCNI(l layout, cfg Config) error {
	for _, d := range []string{l.cniConfDir, l.cniBinDir, l.ipamDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	// A farm of symlinks rather than /usr/lib/cni itself, so chained
	// plugins can be added without writing to the system directory.
	entries, err := os.ReadDir(cniPluginDir)
	if err != nil {
		return fmt.Errorf("read CNI plugins (apt-get install containernetworking-plugins): %w", err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(cniPluginDir, e.Name()), filepath.Join(l.cniBinDir, e.Name())); err != nil {
			return fmt.Errorf("link CNI plugin %s: %w", e.Name(), err)
		}
	}
	for _, p := range cfg.Chain {
		bin, err := filepath.Abs(p.Binary)
		if err != nil {
			return fmt.Errorf("CNI plugin %s: %w", p.Type, err)
		}
		dst := filepath.Join(l.cniBinDir, p.Type)
		if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("CNI plugin %s: %w", p.Type, err)
		}
		if err := os.Symlink(bin, dst); err != nil {
			return fmt.Errorf("link CNI plugin %s: %w", p.Type, err)
		}
	}
	data, err := conflist(l, cfg)
	if err != nil {
		return err
	}
	// max_conf_num = 1 and a single file: containerd uses exactly this one.
	return os.WriteFile(filepath.Join(l.cniConfDir, "10-"+l.netName+".conflist"), data, 0o644)
}

// conflist returns the CNI network configuration of the lab.
func conflist(l layout, cfg Config) ([]byte, error) {
	ranges := []any{[]any{map[string]any{"subnet": cfg.Subnet.Masked().String()}}}
	routes := []any{map[string]any{"dst": "0.0.0.0/0"}}
	if cfg.Subnet6.IsValid() {
		ranges = append(ranges, []any{map[string]any{"subnet": cfg.Subnet6.Masked().String()}})
		routes = append(routes, map[string]any{"dst": "::/0"})
	}
	plugins := []any{map[string]any{
		"type":   "bridge",
		"bridge": l.bridge,
		// The bridge is the pods' gateway (.1); no masquerading: the lab
		// has no uplink, and NAT would hide pod addresses from Patu.
		"isGateway":   true,
		"ipMasq":      false,
		"hairpinMode": true,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": l.ipamDir,
			"ranges":  ranges,
			"routes":  routes,
		},
	}}
	for _, p := range cfg.Chain {
		conf := maps.Clone(p.Conf)
		if conf == nil {
			conf = map[string]any{}
		}
		conf["type"] = p.Type
		caps := map[string]any{}
		if c, ok := conf["capabilities"].(map[string]any); ok {
			maps.Copy(caps, c)
		}
		caps[annotationsCapability] = true
		caps[portMappingsCapability] = true
		conf["capabilities"] = caps
		plugins = append(plugins, conf)
	}
	data, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       l.netName,
		"plugins":    plugins,
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	return append(data, '\n'), nil
}

// containerdConfig returns containerd's config.toml for the flavor. Both
// put every path under the lab directory. The settings that matter beyond
// paths:
//   - restrict_oom_score_adj: without CAP_SYS_RESOURCE, runc fails to set
//     the sandbox's oom_score_adj of -998 ("can't get final child's PID");
//   - SystemdCgroup = false: there is no systemd to ask for cgroups;
//   - netns_mounts_under_state_dir: pod namespaces under our state dir, not
//     /run/netns, so a crashed lab leaves nothing there;
//   - stream server on 127.0.0.1 port 0: two labs must not collide.
func containerdConfig(l layout, flavor, runc string) ([]byte, error) {
	t := config16
	if flavor == Flavor2 {
		t = config2
	}
	var buf bytes.Buffer
	err := t.Execute(&buf, map[string]string{
		"Root": l.root, "State": l.stateDir, "Sock": l.sock, "Opt": filepath.Join(l.dir, "containerd", "opt"),
		"NRI": filepath.Join(l.dir, "containerd", "nri"), "ShimDir": l.shimDir, "Runc": runc,
		"RuncRoot": l.runcRoot, "CNIBin": l.cniBinDir, "CNIConf": l.cniConfDir, "Pause": PauseImage,
	})
	if err != nil {
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	return buf.Bytes(), nil
}

var tomlFuncs = template.FuncMap{
	// q quotes a TOML basic string. Our values are paths and image names:
	// escaping backslash and quote is all they can need.
	"q": func(s string) string {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
	},
}

var config16 = template.Must(template.New("1.6").Funcs(tomlFuncs).Parse(`version = 2
root = {{q .Root}}
state = {{q .State}}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs"]

[grpc]
  address = {{q .Sock}}
[ttrpc]
  address = {{q (print .Sock ".ttrpc")}}

[plugins."io.containerd.internal.v1.opt"]
  path = {{q .Opt}}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {{q .Pause}}
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {{q .Runc}}
        Root = {{q .RuncRoot}}
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {{q .CNIBin}}
    conf_dir = {{q .CNIConf}}
    max_conf_num = 1
`))

// config2 is in the schema of containerd 2.2+ (version 4), so 2.4.2 does
// not migrate it, with a warning, on every start. (`containerd config dump`
// lists /etc/containerd/conf.d/*.toml among the imports whatever the file
// says, but the daemon follows only the imports of the file itself.)
var config2 = template.Must(template.New("2").Funcs(tomlFuncs).Parse(`version = 4
root = {{q .Root}}
state = {{q .State}}
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]

[plugins]
  # Version 4 has no [grpc] and [ttrpc] sections: containerd would ignore
  # them and serve on /run/containerd/containerd.sock.
  [plugins.'io.containerd.server.v1.grpc']
    address = {{q .Sock}}
  [plugins.'io.containerd.server.v1.ttrpc']
    address = {{q (print .Sock ".ttrpc")}}
  [plugins.'io.containerd.internal.v1.opt']
    path = {{q .Opt}}
  [plugins.'io.containerd.nri.v1.nri']
    socket_path = {{q (print .NRI "/nri.sock")}}
    plugin_path = {{q (print .NRI "/plugins")}}
    plugin_config_path = {{q (print .NRI "/conf.d")}}
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = {{q .ShimDir}}
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {{q .Pause}}
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    # Empty, or containerd creates and watches /etc/cdi and /var/run/cdi.
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = {{q .Runc}}
          Root = {{q .RuncRoot}}
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{{q .CNIBin}}]
      conf_dir = {{q .CNIConf}}
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`))

// crictlConfig is crictl's configuration for the lab's socket.
func crictlConfig(l layout) []byte {
	return fmt.Appendf(nil, "runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n", l.sock, l.sock)
}

// validSubnet4 and validSubnet6 check the pod subnets: room for the
// gateway and some pods.
func validSubnet4(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is4() && p.Bits() >= 8 && p.Bits() <= 29
}

func validSubnet6(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is6() && !p.Addr().Is4In6() && p.Bits() >= 48 && p.Bits() <= 120
}
