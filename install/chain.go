package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ChainedName is the conflist Install writes with Options.Chain: a copy of
// the node's own network configuration with patu appended. Its name sorts
// before the usual ones ("10-flannel.conflist", "10-bridge.conflist"), so
// the runtime, which takes the first file, uses it; the original stays as
// it was.
const ChainedName = "00-patu.conflist"

// errAlreadyChained: the node's conflist runs patu already (K3s started
// with --flannel-cni-conf deploy/k3s/flannel-patu.conflist): there is
// nothing to chain.
var errAlreadyChained = errors.New("patu is already in it")

// patuEntry is the plugin Install appends to a chained conflist: Patu reads
// the pod's annotations (opt-out) and its hostPorts.
var patuEntry = json.RawMessage(`{"type": "patu", "capabilities": {"io.kubernetes.cri.pod-annotations": true, "portMappings": true}}`)

// chainSource returns the path of the conflist the runtime uses now, the
// first by name as libcni sorts them, not counting Patu's own; "" when
// there is none.
func chainSource(confDir string) (string, error) {
	ents, err := os.ReadDir(confDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read CNI conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || n == ChainedName || n == ConflistName || strings.Contains(n, tmpMarker) {
			continue
		}
		switch filepath.Ext(n) {
		case ".conflist", ".conf", ".json":
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", nil
	}
	sort.Strings(names)
	return filepath.Join(confDir, names[0]), nil
}

// chainConflist returns src's configuration with patu appended as the last
// plugin. A single-plugin .conf becomes a conflist of that plugin. Keys
// other than "plugins" are kept as they are, including the network name,
// so pods keep their network.
func chainConflist(src []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(src, &top); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	var plugins []json.RawMessage
	if raw, ok := top["plugins"]; ok {
		if err := json.Unmarshal(raw, &plugins); err != nil {
			return nil, fmt.Errorf("parse plugins: %w", err)
		}
	} else {
		// A .conf: the plugin is the whole object; name and cniVersion
		// stay at the top, as in a conflist.
		if _, ok := top["type"]; !ok {
			return nil, errors.New("neither a conflist (plugins) nor a plugin configuration (type)")
		}
		plugins = []json.RawMessage{src}
		top = map[string]json.RawMessage{"cniVersion": top["cniVersion"], "name": top["name"]}
	}
	for _, p := range plugins {
		var t struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(p, &t) == nil && t.Type == CNIName {
			return nil, errAlreadyChained
		}
	}
	top["plugins"], _ = json.Marshal(append(plugins, patuEntry))
	out, err := json.Marshal(top)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := json.Indent(&b, out, "", "  "); err != nil {
		return nil, err
	}
	return append(b.Bytes(), '\n'), nil
}

// chainedItem is the conflist item of a chained install: the node's
// conflist with patu appended, or, on a node without one, the profile's
// own conflist (bridge + host-local + portmap + patu) under ChainedName.
// The second result names the source ("" for the profile's); ok is false
// when the node's conflist runs patu already, and no file is needed.
func chainedItem(o Options, profileConflist []byte) (_ item, src string, ok bool, _ error) {
	dir := filepath.Join(o.Root, o.CNIConfDir)
	src, err := chainSource(dir)
	if err != nil {
		return item{}, "", false, err
	}
	data := profileConflist
	if src != "" {
		b, err := os.ReadFile(src)
		if err != nil {
			return item{}, "", false, err
		}
		data, err = chainConflist(b)
		if errors.Is(err, errAlreadyChained) {
			return item{}, src, false, nil
		}
		if err != nil {
			return item{}, "", false, fmt.Errorf("chain patu after %s: %w", src, err)
		}
	}
	return item{dest: filepath.Join(o.CNIConfDir, ChainedName), mode: 0o644, data: data}, src, true, nil
}
