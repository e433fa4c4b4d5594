package apps

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	_ "embed"

	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/testnet"
)

//go:embed scripts/duplex.py
var duplexPy string

//go:embed scripts/BlockingStreams.java
var blockingStreamsJava string

// dataDir is where the runner keeps the data files (nginx's root).
func (r *Runner) dataDir() string { return filepath.Join(r.dir, "data") }

// peer runs a patu-testpeer client in pod p and returns its result; a
// failed connection is an error.
func (e *Env) peer(ctx context.Context, p *testnet.Pod, args ...string) (peerresult.Result, error) {
	out, err := e.Run(ctx, p, e.r.peerBin, append([]string{"client"}, args...)...)
	res, perr := parsePeer(out)
	if err != nil {
		return res, err
	}
	if perr != nil {
		return res, perr
	}
	if res.Failed > 0 || res.OK != res.Conns {
		return res, fmt.Errorf("patu-testpeer: %d of %d connections failed: %v", res.Failed, res.Conns, res.Errors)
	}
	return res, nil
}

func parsePeer(out string) (peerresult.Result, error) {
	res, err := peerresult.Parse([]byte(out))
	if errors.Is(err, peerresult.ErrNoResult) {
		return res, fmt.Errorf("patu-testpeer printed no result")
	}
	return res, err
}

// errorKind names the errors a run of patu-testpeer ended with by their
// errno, which is what an application sees.
func errorKind(errs []string) string {
	kinds := map[string]bool{}
	for _, e := range errs {
		switch {
		case strings.Contains(e, "connection reset"):
			kinds["ECONNRESET"] = true
		case strings.Contains(e, "broken pipe"):
			kinds["EPIPE"] = true
		case strings.Contains(e, "timed out") || strings.Contains(e, "deadline"):
			kinds["timeout"] = true
		case strings.Contains(e, "EOF"):
			kinds["EOF"] = true
		default:
			kinds["other: "+e] = true
		}
	}
	var out []string
	for k := range kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}
