package runtime

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock is a Backoff clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestBackoffBounds(t *testing.T) {
	tests := []struct {
		name     string
		b        Backoff
		wantBase []time.Duration // d of each attempt: the result lies in [d/2, d]
	}{
		{
			name: "defaults double from 100ms and cap at 30s",
			b:    Backoff{},
			wantBase: []time.Duration{
				100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
				1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond,
				25600 * time.Millisecond, 30 * time.Second, 30 * time.Second, 30 * time.Second,
			},
		},
		{
			name:     "custom",
			b:        Backoff{Min: time.Second, Max: 3 * time.Second},
			wantBase: []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second},
		},
		{
			name:     "max below min is min",
			b:        Backoff{Min: time.Second, Max: time.Millisecond},
			wantBase: []time.Duration{time.Second, time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Many rounds, so that the jitter explores its range.
			for round := 0; round < 200; round++ {
				clk := &fakeClock{t: time.Unix(1000, 0)}
				b := tt.b
				b.now = clk.now
				for i, d := range tt.wantBase {
					got := b.Next()
					if got < d/2 || got > d {
						t.Fatalf("attempt %d: Next() = %v, want in [%v, %v]", i, got, d/2, d)
					}
					clk.t = clk.t.Add(got) // a caller that fails right after waiting
				}
			}
		})
	}
}

func TestBackoffJitter(t *testing.T) {
	// At the cap, 1000 draws from [15s, 30s] must not be (nearly) all the
	// same: nodes restarted together would reconnect in lockstep.
	seen := make(map[time.Duration]bool)
	var lo, hi time.Duration = time.Hour, 0
	for i := 0; i < 1000; i++ {
		b := Backoff{attempt: 20}
		d := b.Next()
		seen[d] = true
		lo, hi = min(lo, d), max(hi, d)
	}
	if len(seen) < 900 {
		t.Errorf("only %d distinct delays in 1000 draws", len(seen))
	}
	if lo > 18*time.Second || hi < 27*time.Second {
		t.Errorf("draws span [%v, %v], want most of [15s, 30s]", lo, hi)
	}
}

func TestBackoffHealthyResets(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	b := Backoff{Min: time.Second, Max: 8 * time.Second, Healthy: time.Minute, now: clk.now}
	for i := 0; i < 5; i++ {
		b.Next()
		clk.t = clk.t.Add(10 * time.Second) // short-lived connections
	}
	if d := b.Next(); d < 4*time.Second {
		t.Fatalf("after failing repeatedly Next() = %v, want at the cap (>= 4s)", d)
	}
	clk.t = clk.t.Add(2 * time.Minute) // a connection that lived long enough
	if d := b.Next(); d > time.Second {
		t.Fatalf("after a healthy period Next() = %v, want <= Min", d)
	}
	b.Next()
	b.Next()
	b.Reset()
	if d := b.Next(); d > time.Second {
		t.Fatalf("after Reset Next() = %v, want <= Min", d)
	}
}

func TestBackoffWait(t *testing.T) {
	b := Backoff{Min: time.Millisecond, Max: time.Millisecond}
	start := time.Now()
	if err := b.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 500*time.Microsecond {
		t.Errorf("Wait returned after %v, want >= Min/2", el)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b = Backoff{Min: time.Hour, Max: time.Hour}
	if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a canceled context = %v, want context.Canceled", err)
	}
}
