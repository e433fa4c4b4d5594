package fanout

import (
	"errors"
	"sync/atomic"
	"testing"
)

func TestRun(t *testing.T) {
	var running, peak, done atomic.Int32
	err := Run(20, 3, func(i int) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer running.Add(-1)
		done.Add(1)
		if i%7 == 0 {
			return errors.New("job failed")
		}
		return nil
	})
	if done.Load() != 20 {
		t.Errorf("%d jobs ran, want 20", done.Load())
	}
	if peak.Load() > 3 {
		t.Errorf("%d jobs at once, want at most 3", peak.Load())
	}
	if err == nil || len(err.(interface{ Unwrap() []error }).Unwrap()) != 3 {
		t.Errorf("error %v: want the 3 failures (jobs 0, 7, 14)", err)
	}
}
