// Package netns runs code inside Linux network namespaces and manages named
// namespaces the way iproute2 does (bind mounts under /run/netns).
//
// Every setns(2) in Patu goes through Do. It runs the function on a fresh
// goroutine locked to its OS thread, and unlocks that thread only after the
// thread is back in its original namespace. When restoring fails, the
// goroutine ends with the thread still locked, so the Go runtime terminates
// the thread instead of handing a thread in the wrong namespace to other
// goroutines.
package netns
