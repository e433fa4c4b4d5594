package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/patu-dev/patu/install"
)

// installUsageLines go into the commands list of usage.
const installUsageLines = `  install --profile PROFILE [flags]        place patu and the profile's files (k3s|containerd|podman; install -h)
  uninstall --profile PROFILE [flags]      remove what install placed; files it did not write stay
`

const installUsage = `usage: patu install --profile k3s|containerd|podman [flags]
       patu uninstall --profile k3s|containerd|podman [flags]

install copies patu and patu-cni (as the CNI plugin "patu"), writes the
conflist (bridge + host-local + portmap + patu) and patu.service (patu
daemon). The podman profile copies patu and writes the hooks.d files that
run patu hook, and a patu.service that runs patu load at boot. Only files
that differ are written, each atomically; a second run changes nothing.
uninstall removes those files unless someone else wrote or edited them.
Neither runs systemctl nor unloads Patu.

flags:
  --profile PROFILE         where the files go:
                              k3s:        CNI bin /var/lib/rancher/k3s/data/cni,
                                          conf /var/lib/rancher/k3s/agent/etc/cni/net.d
                              containerd: CNI bin /opt/cni/bin, conf /etc/cni/net.d
                              podman:     hooks ` + install.DefaultHooksDir + `
  --pod-cidr CIDR           subnet host-local hands out; k3s: this node's podCIDR
                            (default: the installed conflist's, else k3s 10.42.0.0/24,
                            containerd 10.86.0.0/24)
  --root DIR                prefix for every destination (default /)
  --bin-dir DIR             for patu (default /usr/local/bin)
  --cni-bin-dir DIR         for patu-cni, installed as "patu" (default: per profile)
  --cni-conf-dir DIR        for 10-patu.conflist (default: per profile)
  --systemd-dir DIR         for patu.service (default /etc/systemd/system)
  --hooks-dir DIR           podman: for the hooks.d files (or /etc/containers/oci/hooks.d)
  --patu-cni FILE           patu-cni to install (default: patu-cni next to this patu)
  --cni-only                only patu-cni and the conflist: no patu, no patu.service
                            (a DaemonSet's init container; its main container runs patu daemon)
  --chain                   write 00-patu.conflist: the node's conflist (the first in the conf
                            dir, e.g. K3s's 10-flannel.conflist) with patu appended; the node's
                            file stays as it was. Without one, the profile's conflist
  --unload                  uninstall: also unload Patu (patu unload) after removing the files
  --dry-run                 print what would change, change nothing
`

func cmdInstall(out io.Writer, args []string) error {
	opts, _, err := parseInstallFlags(out, "install", args)
	if err != nil || opts == nil {
		return err
	}
	changes, err := install.Install(*opts)
	printChanges(out, changes, opts.DryRun)
	if err != nil {
		return err
	}
	if opts.DryRun {
		return nil
	}
	d, _ := install.Defaults(opts.Profile)
	for _, c := range changes {
		if opts.Profile == install.ProfileK3s && opts.PodCIDR == "" &&
			filepath.Base(c.Path) == install.ConflistName && c.Action == install.Created {
			fmt.Fprintf(out, "note: the conflist hands out %s; it must be this node's podCIDR:\n"+
				"  kubectl get node $(hostname) -o jsonpath='{.spec.podCIDR}'   then: patu install --profile k3s --pod-cidr CIDR\n",
				install.DefaultPodCIDR(opts.Profile))
		}
	}
	if opts.Profile == install.ProfileK3s {
		if hint := k3sBinDirHint(*opts, d); hint != "" {
			fmt.Fprintln(out, hint)
		}
	}
	for _, c := range changes {
		if filepath.Base(c.Path) == install.UnitName && (c.Action == install.Created || c.Action == install.Updated) {
			fmt.Fprintln(out, "next: systemctl daemon-reload && systemctl enable --now patu")
			if c.Action == install.Updated {
				fmt.Fprintln(out, "      (already running? systemctl restart patu)")
			}
		}
	}
	for _, c := range changes {
		if opts.Profile == install.ProfilePodman && c.Action == install.Created && filepath.Ext(c.Path) == ".json" {
			fmt.Fprintln(out, "note: podman reads hooks.d at every container start; containers running now get redirect once restarted")
			break
		}
	}
	return nil
}

func cmdUninstall(out io.Writer, pinDir string, args []string) (err error) {
	opts, unload, perr := parseInstallFlags(out, "uninstall", args)
	if err = perr; err != nil || opts == nil {
		return err
	}
	if unload && !opts.DryRun {
		// Files first: a pod created meanwhile must not run a plugin
		// whose maps are gone.
		defer func() {
			if err == nil {
				err = cmdUnload(out, pinDir, nil)
			}
		}()
	}
	changes, err := install.Uninstall(*opts)
	printChanges(out, changes, opts.DryRun)
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintln(out, "nothing to remove")
	}
	for _, c := range changes {
		if c.Action == install.Kept {
			fmt.Fprintln(out, "kept files were not written by patu install, or were edited since: remove them by hand if they are Patu's")
			break
		}
	}
	if !opts.DryRun && !unload {
		fmt.Fprintln(out, "patu stays loaded until: systemctl disable --now patu; patu unload")
	}
	return nil
}

// parseInstallFlags returns nil options (and no error) after printing help;
// unload is uninstall's --unload.
func parseInstallFlags(out io.Writer, cmd string, args []string) (_ *install.Options, unload bool, _ error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o install.Options
	fs.StringVar(&o.Profile, "profile", "", "")
	fs.StringVar(&o.PodCIDR, "pod-cidr", "", "")
	fs.StringVar(&o.Root, "root", "", "")
	fs.StringVar(&o.BinDir, "bin-dir", "", "")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "", "")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "", "")
	fs.StringVar(&o.SystemdDir, "systemd-dir", "", "")
	fs.StringVar(&o.HooksDir, "hooks-dir", "", "")
	cni := fs.String("patu-cni", "", "")
	fs.BoolVar(&o.DryRun, "dry-run", false, "")
	fs.BoolVar(&o.CNIOnly, "cni-only", false, "")
	fs.BoolVar(&o.Chain, "chain", false, "")
	if cmd == "uninstall" {
		fs.BoolVar(&unload, "unload", false, "")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, installUsage)
			return nil, false, nil
		}
		return nil, false, usagef("%s: %v", cmd, err)
	}
	if fs.NArg() > 0 {
		return nil, false, usagef("%s takes no arguments, got %q", cmd, fs.Args())
	}
	if o.Profile == "" {
		return nil, false, usagef("%s needs --profile k3s, containerd or podman", cmd)
	}
	if _, err := install.Defaults(o.Profile); err != nil {
		return nil, false, usagef("%s: %v", cmd, err)
	}
	if *cni != "" {
		o.Binaries = map[string]string{"patu-cni": *cni}
	}
	return &o, unload, nil
}

func printChanges(out io.Writer, changes []install.Change, dryRun bool) {
	suffix := ""
	if dryRun {
		suffix = " (dry run)"
	}
	for _, c := range changes {
		fmt.Fprintf(out, "%-9s %s%s\n", c.Action, c.Path, suffix)
	}
}

var binDirLine = regexp.MustCompile(`(?m)^\s*bin_dirs?\s*=.*$`)

// k3sBinDirHint warns when K3s's generated containerd config looks for CNI
// plugins somewhere else than where patu-cni went: K3s releases before the
// static CNI dir (k3s-io/k3s#10868) use data/<hash>/bin, which changes with
// every upgrade.
func k3sBinDirHint(o, defaults install.Options) string {
	cniBinDir := o.CNIBinDir
	if cniBinDir == "" {
		cniBinDir = defaults.CNIBinDir
	}
	cfg := filepath.Join(o.Root, "/var/lib/rancher/k3s/agent/etc/containerd/config.toml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		return "" // K3s has not started yet: it writes the file on start
	}
	lines := binDirLine.FindAllString(string(b), -1)
	if len(lines) == 0 || strings.Contains(strings.Join(lines, "\n"), cniBinDir) {
		return ""
	}
	return fmt.Sprintf("warning: K3s's containerd looks for CNI plugins elsewhere (%s: %s), not in %s.\n"+
		"  Upgrade K3s, or run: patu install --profile k3s --cni-bin-dir /var/lib/rancher/k3s/data/current/bin\n"+
		"  (and again after every K3s upgrade, which replaces that directory)",
		cfg, strings.TrimSpace(lines[0]), cniBinDir)
}
