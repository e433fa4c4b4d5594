// Package fanout runs numbered jobs with bounded parallelism, as the e2e
// tests' churn of pods and containers does.
package fanout

import (
	"errors"
	"sync"
)

// Run calls fn(i) for every i in [0, n), at most width at once, and
// returns every error joined.
func Run(n, width int, fn func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, max(width, 1))
	)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
