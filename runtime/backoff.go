package runtime

import (
	"context"
	"math/rand/v2"
	"time"
)

// Default Backoff settings.
const (
	DefaultBackoffMin     = 100 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	DefaultBackoffHealthy = time.Minute
)

// Backoff spaces out reconnection attempts to a runtime: each delay doubles,
// from Min up to Max, with jitter so that many nodes restarted together do
// not reconnect in lockstep. The zero value is ready to use with the
// defaults.
//
// Next is meant to be called each time a connection or stream fails. When
// the previous call was more than Healthy ago, the connection in between is
// taken to have been healthy and the delay starts again from Min: a runtime
// that restarts once a day gets a fast reconnect every time, one that
// crash-loops gets Max.
//
// A Backoff is not safe for concurrent use.
type Backoff struct {
	Min     time.Duration // first delay; DefaultBackoffMin when 0
	Max     time.Duration // cap; DefaultBackoffMax when 0
	Healthy time.Duration // quiet period that resets; DefaultBackoffHealthy when 0

	attempt int
	last    time.Time
	now     func() time.Time // for tests
}

// Next returns how long to wait before the next attempt. The result lies in
// [d/2, d], where d is Min doubled once per attempt since the last reset and
// capped at Max; it is never below Min/2, so a caller that always waits
// Next() cannot spin.
func (b *Backoff) Next() time.Duration {
	lo, hi, healthy := b.Min, b.Max, b.Healthy
	if lo <= 0 {
		lo = DefaultBackoffMin
	}
	if hi <= 0 {
		hi = DefaultBackoffMax
	}
	if hi < lo {
		hi = lo
	}
	if healthy <= 0 {
		healthy = DefaultBackoffHealthy
	}
	now := time.Now
	if b.now != nil {
		now = b.now
	}
	t := now()
	if !b.last.IsZero() && t.Sub(b.last) > healthy {
		b.attempt = 0
	}
	b.last = t

	d := lo
	for i := 0; i < b.attempt && d < hi; i++ {
		d *= 2
	}
	if d > hi {
		d = hi
	}
	b.attempt++
	half := d / 2
	return half + rand.N(d-half+1)
}

// Reset makes the next delay start from Min again.
func (b *Backoff) Reset() {
	b.attempt = 0
	b.last = time.Time{}
}

// Wait sleeps for Next(), or until ctx is done, in which case it returns
// ctx.Err().
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
