package main

import "testing"

func TestQuietTargets(t *testing.T) {
	at := quietTargets(rowReport{N: 10, P50: 1, P99: 3}, rowReport{N: 10, P99: 3}, rowReport{N: 10, P99: 15}, &iopubCount{})
	for _, tg := range at {
		if !tg.Met {
			t.Errorf("%s: value %v at its limit %v: want met", tg.Name, tg.Value, tg.Limit)
		}
	}
	over := quietTargets(rowReport{N: 10, P50: 1.01, P99: 3.01}, rowReport{N: 10, P99: 3.01}, rowReport{N: 10, P99: 15.01}, &iopubCount{Messages: 1})
	for _, tg := range over {
		if tg.Met {
			t.Errorf("%s: value %v over its limit %v: want not met", tg.Name, tg.Value, tg.Limit)
		}
	}
	for _, tg := range quietTargets(rowReport{N: 9, Lost: 1, P50: 0.1, P99: 0.1}, rowReport{}, rowReport{}, nil) {
		if tg.Met || tg.Why == "" {
			t.Errorf("%s with lost samples, none, or no count: met=%v why=%q, want not met with a reason", tg.Name, tg.Met, tg.Why)
		}
	}
}
