package sockperf

import (
	"bufio"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Result is what a `sockperf ping-pong --full-rtt` client reports.
type Result struct {
	// Total run: from "Starting test" to "Test end", warm-up included.
	RunTimeSec float64 `json:"run_time_s"`
	Sent       int64   `json:"sent"`
	Received   int64   `json:"received"`
	// Valid duration: the part the percentiles are computed over.
	ValidRunTimeSec float64 `json:"valid_run_time_s"`
	ValidReceived   int64   `json:"valid_received"`

	AvgRTT       float64 `json:"avg_rtt_us"`
	StdDev       float64 `json:"std_dev_us"`
	Dropped      int64   `json:"dropped"`
	Duplicated   int64   `json:"duplicated"`
	OutOfOrder   int64   `json:"out_of_order"`
	Observations int64   `json:"observations"`
	MinRTT       float64 `json:"min_rtt_us"`
	MaxRTT       float64 `json:"max_rtt_us"`
	// Percentiles by sockperf's own label ("50.000", "99.000", ...), in µs.
	Percentiles map[string]float64 `json:"percentiles_us"`
}

// P50 is the median round trip in µs.
func (r Result) P50() float64 { return r.Percentiles["50.000"] }

// P99 is the 99th percentile round trip in µs.
func (r Result) P99() float64 { return r.Percentiles["99.000"] }

// TxPerSec is the rate of completed round trips (request and response)
// over the valid duration, the part the percentiles describe. ping-pong
// keeps one request in flight, so it is about 1 / AvgRTT.
func (r Result) TxPerSec() float64 {
	if r.ValidRunTimeSec <= 0 {
		return 0
	}
	return float64(r.ValidReceived) / r.ValidRunTimeSec
}

var (
	// sockperf colours some lines even when writing to a pipe.
	ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)

	reTotalRun   = regexp.MustCompile(`\[Total Run\] RunTime=([0-9.]+) sec;.*SentMessages=(\d+); ReceivedMessages=(\d+)`)
	reValidRun   = regexp.MustCompile(`\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=\d+; ReceivedMessages=(\d+)`)
	reAvg        = regexp.MustCompile(`====> avg-(rtt|latency)=([0-9.]+) \(std-dev=([0-9.]+)\)`)
	reLoss       = regexp.MustCompile(`# dropped messages = (\d+); # duplicated messages = (\d+); # out-of-order messages = (\d+)`)
	reTotalObs   = regexp.MustCompile(`Total (\d+) observations`)
	rePercentile = regexp.MustCompile(`---> percentile ([0-9.]+) =\s*([0-9.]+)`)
	reMinMax     = regexp.MustCompile(`---> <(MIN|MAX)> observation =\s*([0-9.]+)`)
)

// Parse parses the client output of `sockperf pp --full-rtt`. sockperf
// exits 0 even when it cannot connect, so an output without round-trip
// statistics is an error, with sockperf's own message if any. Lost,
// duplicated or reordered messages are an error too: TCP must not show
// them, on a redirect path least of all.
func Parse(out string) (Result, error) {
	r := Result{Percentiles: map[string]float64{}}
	var toolErrs []string
	var latencyOnly bool
	sc := bufio.NewScanner(strings.NewReader(ansiEscape.ReplaceAllString(out, "")))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "ERROR:"); i >= 0 {
			toolErrs = append(toolErrs, strings.TrimSpace(line[i+len("ERROR:"):]))
			continue
		}
		if m := reTotalRun.FindStringSubmatch(line); m != nil {
			r.RunTimeSec = atof(m[1])
			r.Sent, r.Received = atoi(m[2]), atoi(m[3])
		} else if m := reValidRun.FindStringSubmatch(line); m != nil {
			r.ValidRunTimeSec, r.ValidReceived = atof(m[1]), atoi(m[2])
		} else if m := reAvg.FindStringSubmatch(line); m != nil {
			latencyOnly = m[1] == "latency"
			r.AvgRTT, r.StdDev = atof(m[2]), atof(m[3])
		} else if m := reLoss.FindStringSubmatch(line); m != nil {
			r.Dropped, r.Duplicated, r.OutOfOrder = atoi(m[1]), atoi(m[2]), atoi(m[3])
		} else if m := reTotalObs.FindStringSubmatch(line); m != nil {
			r.Observations = atoi(m[1])
		} else if m := rePercentile.FindStringSubmatch(line); m != nil {
			r.Percentiles[m[1]] = atof(m[2])
		} else if m := reMinMax.FindStringSubmatch(line); m != nil {
			if m[1] == "MIN" {
				r.MinRTT = atof(m[2])
			} else {
				r.MaxRTT = atof(m[2])
			}
		}
	}
	switch {
	case len(toolErrs) > 0:
		return r, fmt.Errorf("sockperf: %s", strings.Join(toolErrs, "; "))
	case latencyOnly:
		// Without --full-rtt sockperf halves the round trip.
		return r, errors.New("sockperf reported one-way latency, not round trip (missing --full-rtt)")
	case r.Received == 0 || r.Observations == 0:
		return r, errors.New("sockperf printed no round-trip statistics")
	}
	if _, ok := r.Percentiles["50.000"]; !ok {
		return r, errors.New("sockperf printed no 50th percentile")
	}
	if _, ok := r.Percentiles["99.000"]; !ok {
		return r, errors.New("sockperf printed no 99th percentile")
	}
	if r.Dropped+r.Duplicated+r.OutOfOrder > 0 {
		return r, fmt.Errorf("sockperf saw %d dropped, %d duplicated, %d out-of-order messages",
			r.Dropped, r.Duplicated, r.OutOfOrder)
	}
	return r, nil
}

func atof(s string) float64 {
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
