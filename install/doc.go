// Package install puts Patu on a node and takes it off again: the patu
// binary, the patu-cni plugin (installed under the name "patu", the conflist
// "type"), a CNI conflist that chains it after bridge, host-local and portmap,
// and a systemd unit for `patu daemon`. The conflist and unit come from
// package deploy, embedded in the binary.
//
// Destinations per profile (all under Options.Root, "" meaning /):
//
//	                 k3s                                        containerd
//	patu             /usr/local/bin/patu                        same
//	patu-cni         /var/lib/rancher/k3s/data/cni/patu         /opt/cni/bin/patu
//	conflist         /var/lib/rancher/k3s/agent/etc/cni/net.d/  /etc/cni/net.d/
//	                 10-patu.conflist                           10-patu.conflist
//	unit             /etc/systemd/system/patu.service           same
//
// The podman profile has no CNI plugin and no daemon: OCI hooks register
// each container (`patu hook`, package hook), and its unit only runs
// `patu load` at boot.
//
//	                 podman
//	patu             /usr/local/bin/patu
//	hooks            /usr/share/containers/oci/hooks.d/patu-createruntime.json
//	                 /usr/share/containers/oci/hooks.d/patu-poststop.json
//	                 (Options.HooksDir: e.g. /etc/containers/oci/hooks.d)
//	unit             /etc/systemd/system/patu.service (oneshot patu load)
//
// /var/lib/rancher/k3s/data/cni is the CNI bin directory that K3s keeps
// stable across upgrades (k3s-io/k3s#10868, in releases from late 2024 on);
// older K3s use /var/lib/rancher/k3s/data/current/bin, which each upgrade
// replaces.
//
// Install is idempotent: a file whose content and mode already match is left
// alone, so a second run reports every file unchanged. Every write goes to a
// temporary file in the destination's directory, is synced and then renamed
// over the destination, so the runtime never execs a half-written plugin or
// reads a half-written conflist. The temporary name does not end in
// .conflist, so a runtime watching the conf dir ignores it.
//
// Install records what it wrote (path and SHA-256) in
// /var/lib/patu/install.json. Uninstall removes a file only when its content
// is what Install recorded or what Install would write now; a file someone
// else wrote, or edited since, is reported "kept" and left in place. Uninstall
// is idempotent too.
//
// Neither runs systemctl or touches the loaded data plane: that is for the
// caller (`systemctl daemon-reload`, `systemctl enable --now patu`,
// `patu unload`).
package install
