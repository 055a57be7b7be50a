package main

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func seq(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Millisecond
	}
	return s
}

func TestPercentileNearestRank(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample, p50", seq(1), 50, 1 * time.Millisecond},
		{"one sample, p99", seq(1), 99, 1 * time.Millisecond},
		// The textbook example: 15, 20, 35, 40, 50.
		{"five, p5", []time.Duration{15, 20, 35, 40, 50}, 5, 15},
		{"five, p30", []time.Duration{15, 20, 35, 40, 50}, 30, 20},
		{"five, p40", []time.Duration{15, 20, 35, 40, 50}, 40, 20},
		{"five, p50", []time.Duration{15, 20, 35, 40, 50}, 50, 35},
		{"five, p100", []time.Duration{15, 20, 35, 40, 50}, 100, 50},
		// Ranks that are whole numbers must not be pushed up by float error.
		{"200, p50", seq(200), 50, 100 * time.Millisecond},
		{"200, p95", seq(200), 95, 190 * time.Millisecond},
		{"200, p99", seq(200), 99, 198 * time.Millisecond},
		{"100, p95", seq(100), 95, 95 * time.Millisecond},
		{"20, p95", seq(20), 95, 19 * time.Millisecond},
		{"20, p99", seq(20), 99, 20 * time.Millisecond},
		{"10, p50", seq(10), 50, 5 * time.Millisecond},
		{"7, p50", seq(7), 50, 4 * time.Millisecond},
		{"3, p99", seq(3), 99, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.p); got != tc.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.sorted, tc.p, got, tc.want)
			}
		})
	}
}

// TestPercentileDefinition checks every rank against the definition: the
// smallest sample with at least p% of the samples at or below it.
func TestPercentileDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 1; n <= 250; n++ {
		s := make([]time.Duration, n)
		for i := range s {
			s[i] = time.Duration(r.IntN(50)) // ties on purpose
		}
		slices.Sort(s)
		for _, p := range []float64{1, 25, 50, 90, 95, 99, 99.9, 100} {
			got := percentile(s, p)
			var want time.Duration
			for _, v := range s {
				atOrBelow := 0
				for _, w := range s {
					if w <= v {
						atOrBelow++
					}
				}
				if float64(atOrBelow)*100 >= p*float64(n) {
					want = v
					break
				}
			}
			if got != want {
				t.Fatalf("n=%d p=%v: got %v, want %v (samples %v)", n, p, got, want, s)
			}
		}
	}
}

func TestSummarize(t *testing.T) {
	in := []time.Duration{5, 1, 4, 2, 3}
	got := summarize(in)
	want := summary{N: 5, P50: 3, P95: 5, P99: 5, Max: 5}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if !slices.Equal(in, []time.Duration{5, 1, 4, 2, 3}) {
		t.Errorf("summarize sorted its argument in place: %v", in)
	}
	if got := summarize(nil); got != (summary{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
}
