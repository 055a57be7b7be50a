package main

import (
	"math"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 < p <= 100) of sorted, which
// must be in ascending order, by the nearest-rank method: the smallest
// sample such that at least p percent of the samples are less than or equal
// to it, sorted[ceil(p/100*N)-1]. No interpolation: every percentile is a
// sample that was measured. It returns 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// p*n first: for whole p and n the product is exact, so a rank that
	// should be whole (95 of 200 -> 190) does not become 190.00000000000003.
	rank := int(math.Ceil(p * float64(n) / 100))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// summary is one row's statistics.
type summary struct {
	N                  int
	P50, P95, P99, Max time.Duration
}

// summarize sorts a copy of samples and takes its percentiles.
func summarize(samples []time.Duration) summary {
	s := slices.Clone(samples)
	slices.Sort(s)
	sm := summary{N: len(s), P50: percentile(s, 50), P95: percentile(s, 95), P99: percentile(s, 99)}
	if len(s) > 0 {
		sm.Max = s[len(s)-1]
	}
	return sm
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
