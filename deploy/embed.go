// Package deploy holds the files that put Patu on a node: for each CNI
// profile (k3s, containerd) a CNI conflist that chains patu after bridge,
// host-local and portmap, a systemd unit for `patu daemon`, and a README on
// how to run it; for podman, the hooks.d files that run `patu hook` and a
// unit that loads Patu at boot. They are embedded so that `patu install`
// works from the single binary; package install places them.
package deploy

import "embed"

// Files is the k3s/ and containerd/ directories of this package, each with
// 10-patu.conflist, patu.service and README.md (containerd/ also has the
// config.toml and crictl.yaml snippets), and podman/ with
// patu-createruntime.json, patu-poststop.json, patu.service and README.md.
//
//go:embed k3s containerd podman
var Files embed.FS
