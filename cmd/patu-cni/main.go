// Command patu-cni is Patu's chained CNI plugin ("type": "patu"). It runs
// after an interface plugin such as bridge and registers each pod with
// Patu's data plane; see package cniplugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/patu-dev/patu/cniplugin"
)

// version is set at build time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

func main() {
	skel.PluginMainFuncs(cniplugin.New().Funcs(), cniplugin.Versions, "patu chained plugin "+version)
}
