package main

import (
	"strings"
	"testing"
	"time"
)

func TestTargets(t *testing.T) {
	good := rowReport{N: 200, P50: 5, P99: 15}
	ts := targets(good, rowReport{N: 200, P99: 20}, rowReport{N: 200, P99: 20}, memory{RSS: targetRSS, HWM: targetRSS})
	for _, tg := range ts {
		if !tg.Met {
			t.Errorf("%s: value %v at its limit %v: want met", tg.Name, tg.Value, tg.Limit)
		}
	}

	over := targets(rowReport{N: 200, P50: 5.01, P99: 15.01}, rowReport{N: 200, P99: 20.01}, rowReport{N: 200, P99: 20.01}, memory{RSS: targetRSS + 1})
	for _, tg := range over {
		if tg.Met {
			t.Errorf("%s: value %v over its limit %v: want not met", tg.Name, tg.Value, tg.Limit)
		}
	}

	lost := targets(rowReport{N: 199, Lost: 1, P50: 1, P99: 1}, rowReport{N: 0}, rowReport{}, memory{})
	for _, tg := range lost {
		if tg.Met || tg.Why == "" {
			t.Errorf("%s with lost samples, no samples or no measurement: got met=%v why=%q, want not met with a reason", tg.Name, tg.Met, tg.Why)
		}
	}
}

func TestTableSaysSkipped(t *testing.T) {
	m := &measurements{
		idle:     &liveRow{Samples: []liveSample{{Latency: 2 * time.Millisecond}}},
		busy:     &liveRow{Samples: []liveSample{{Latency: 9 * time.Millisecond}}},
		baseline: &restartRow{Samples: []restartSample{{Latency: 800 * time.Millisecond, Cells: 1}}},
		injector: &restartRow{Skipped: "the first start failed: no injector"},
		mem:      memory{RSS: 15e6, HWM: 16e6},
	}
	r := build(&config{n: 1, restarts: 1}, m, time.Now())
	var b strings.Builder
	r.writeTable(&b)
	out := b.String()
	for _, want := range []string{
		"restart via injector   skipped: the first start failed: no injector",
		"restart baseline p50 / live idle p50: 400x",
		"live idle p50 <= 5 ms",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// TestRestartDetailCountsItsOwnRow: the restart detail lines count the
// restart rows' samples, not another row's.
func TestRestartDetailCountsItsOwnRow(t *testing.T) {
	three := []liveSample{{Latency: time.Millisecond}, {Latency: time.Millisecond}, {Latency: time.Millisecond}}
	m := &measurements{
		idle: &liveRow{Samples: three}, waiting: &liveRow{Samples: three}, busy: &liveRow{Samples: three},
		baseline: &restartRow{Samples: []restartSample{{Latency: time.Second, Cells: 1}, {Latency: time.Second, Cells: 1}}},
		injector: &restartRow{Samples: []restartSample{{Latency: time.Second, Cells: 1}}},
	}
	var b strings.Builder
	build(&config{n: 3, restarts: 2}, m, time.Now()).writeTable(&b)
	for _, want := range []string{"start environment in 0 of 2;", "start environment in 0 of 1;"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
