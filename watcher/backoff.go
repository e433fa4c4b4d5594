package watcher

import (
	"math/rand/v2"
	"time"
)

// backoff is an exponential delay with jitter, so that a runtime that is
// down is polled less and less often and never in a busy loop.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	// Up to 20% less, so that restarted peers do not retry in step.
	return b.cur - time.Duration(rand.Int64N(int64(b.cur)/5+1))
}

func (b *backoff) reset() { b.cur = 0 }
