// Package cniplugin is the logic of patu-cni, the chained CNI plugin
// ("type": "patu") that registers each pod with Patu's data plane as the
// runtime creates its network, and unregisters it when the network goes.
//
// It runs after an interface plugin such as bridge (or flannel, which
// delegates to bridge) and never changes the network it receives: ADD
// prints prevResult through unchanged. Patu is an optimisation on top of a
// working pod network, so a failure inside Patu (not loaded, a map full, a
// netlink lookup failing) is logged and never fails ADD, DEL or STATUS;
// only malformed input from the runtime does.
//
//	ADD    record the pod (pods.Register): IPs from prevResult, pod MAC and
//	       host veth from netlink, names from CNI_ARGS, opt-out from the
//	       pod annotations in runtimeConfig
//	DEL    pods.Unregister; repeatable, with or without netns and prevResult
//	CHECK  the record exists and its addresses are endpoints (when loaded)
//	STATUS always ready: ADD works whether Patu is loaded or not
//	GC     unregister CNI-made records of sandboxes not in the valid list
//
// The plugin is exec'd for every pod, so it does only what the command
// needs: it opens the pinned maps (bpf.Open) and never loads programs or
// BTF.
package cniplugin
