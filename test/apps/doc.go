// Package apps runs Patu's real-application suite (internal/apps) as a
// test of the e2e tier: every case on the bridge path, on Patu's default
// packet path, and on it again with every client dialing a ClusterIP
// (patu-clusterip), compared run by run (PATU_APPS_PATHS=patu,patu-socket
// picks paths; patu-socket is the opt-in socket path). Sizes are the
// benchmark's divided by PATU_APPS_SCALE (default 2) so that the suite fits
// CI (about 80 s on two CPUs); nothing is ever paced.
//
//	TestApps      every case: identical results, no error, no hang,
//	              conntrack clean, accelerated on Patu, nothing outlives a pod
//	TestSelfTest  the open-flow, outlived-netns and hang checks fail on
//	              cases built to fail them
//
// One case alone: go test ./test/apps -run 'TestApps/haproxy' -v.
package apps
