// Package deploy holds the files that put Patu on a node: for each profile
// (k3s, containerd) a CNI conflist that chains patu after bridge, host-local
// and portmap, a systemd unit for `patu daemon`, and a README on how to run
// it. They are embedded so that `patu install` works from the single binary;
// package install places them.
package deploy

import "embed"

// Files is the k3s/ and containerd/ directories of this package, each with
// 10-patu.conflist, patu.service and README.md (containerd/ also has the
// config.toml and crictl.yaml snippets).
//
//go:embed k3s containerd
var Files embed.FS
