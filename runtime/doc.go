// Package runtime holds what Patu's container-runtime adapters share: the
// Event they report, the sentinel errors callers branch on, discovery of the
// runtime's socket, and the Backoff used to reconnect to it.
//
// The adapters live in sub-packages: runtime/cri talks the Kubernetes CRI
// (containerd, CRI-O, anything kubelet can use) and is the source of truth
// for pod sandboxes, their IPs and network namespaces; runtime/containerd
// subscribes to containerd's own event bus, for containerd releases whose CRI
// GetContainerEvents is missing (1.6) or must not be used (1.7, see
// cri.Client.WatchEvents).
//
// Events are triggers, not state. Both sources can repeat, reorder or replay
// events (containerd 2.x queues CRI events while nobody listens and hands
// them to the next subscriber), and a stream ends whenever the runtime
// restarts. A watcher therefore reconciles against the runtime's lists and
// uses an event only to reconcile sooner:
//
//	ep, err := runtime.FindEndpoint()        // or --runtime-endpoint
//	c, err := cri.Dial(ctx, ep)              // the state: Sandboxes, SandboxInfo
//	var b runtime.Backoff
//	for {
//		resync(c)
//		err := watch(ctx, trigger)       // blocks until the stream ends
//		if ctx.Err() != nil {
//			return
//		}
//		b.Wait(ctx)                      // runtime restarting: reconnect, resync
//	}
//
// where watch is, by runtime:
//   - containerd 2.x: cri.Client.WatchEvents;
//   - containerd 1.x (cri.Client.LegacyContainerd): containerd.Dial
//     and containerd.Client.WatchEvents (CRI events are Unimplemented on 1.6
//     and not shareable on 1.7);
//   - anything else (CRI-O): cri.Client.WatchEvents, and when that returns
//     an error wrapping ErrUnsupported, periodic resync alone.
package runtime
