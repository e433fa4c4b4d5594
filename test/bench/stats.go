package main

import (
	"math"
	"sort"
)

// summary is the median and range of the successful samples of one metric
// on one path.
type summary struct {
	Samples []float64 `json:"samples"` // in run order; failed runs left out
	Failed  int       `json:"failed"`  // runs whose tool failed
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
}

func summarize(samples []float64, failed int) summary {
	s := summary{Samples: samples, Failed: failed}
	if len(samples) == 0 {
		// Left at zero (JSON has no NaN): readers check Samples first.
		return s
	}
	s.Median = median(samples)
	s.Min, s.Max = samples[0], samples[0]
	for _, v := range samples {
		s.Min = math.Min(s.Min, v)
		s.Max = math.Max(s.Max, v)
	}
	return s
}

func (s summary) ok() bool { return len(s.Samples) > 0 }

func median(v []float64) float64 {
	c := append([]float64(nil), v...)
	sort.Float64s(c)
	n := len(c)
	if n%2 == 1 {
		return c[n/2]
	}
	return (c[n/2-1] + c[n/2]) / 2
}
