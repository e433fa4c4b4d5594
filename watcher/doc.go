// Package watcher keeps Patu's data plane in step with the container
// runtime: it reconciles the registered pods, endpoints and cgroup
// attachments toward the runtime's list of ready pod sandboxes, at start,
// on runtime events, after every reconnect and periodically. Events only
// make it reconcile sooner, so replayed or lost events cannot corrupt the
// state.
package watcher
