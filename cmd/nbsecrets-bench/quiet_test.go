package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

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

func TestParsePacket(t *testing.T) {
	for _, tc := range []struct {
		in     string
		ok     bool
		kind   byte
		n      int
		putenv int64
	}{
		{"B", true, 'B', 0, 0},
		{"E 12", true, 'E', 12, 0},
		{"E 12 1700000000123456789", true, 'E', 12, 1700000000123456789},
		{"E 12 0", false, 0, 0, 0}, // the observer's "no putenv seen" is 0: not a time
		{"E x", false, 0, 0, 0},
		{"E 12 y", false, 0, 0, 0},
		{"E 1 2 3", false, 0, 0, 0},
		{"P 12", false, 0, 0, 0}, // the old putenv packet is gone: the hook no longer sends
		{"E", false, 0, 0, 0},
		{"", false, 0, 0, 0},
	} {
		p, ok := parsePacket([]byte(tc.in))
		if ok != tc.ok {
			t.Errorf("parsePacket(%q) ok = %v, want %v", tc.in, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		if p.kind != tc.kind || p.n != tc.n {
			t.Errorf("parsePacket(%q) = %c %d, want %c %d", tc.in, p.kind, p.n, tc.kind, tc.n)
		}
		if got := int64(0); !p.putenv.IsZero() {
			got = p.putenv.UnixNano()
			if got != tc.putenv {
				t.Errorf("parsePacket(%q) putenv %d, want %d", tc.in, got, tc.putenv)
			}
		} else if tc.putenv != 0 {
			t.Errorf("parsePacket(%q) has no putenv time, want %d", tc.in, tc.putenv)
		}
	}
}

// TestBusyRows: the GIL-held row the targets judge is the one the cell
// observes itself; the row seen by a second polling thread is reported
// right after it, with its own detail, and judged by no target.
func TestBusyRows(t *testing.T) {
	ms1 := []liveSample{{Latency: time.Millisecond}}
	m := &measurements{
		idle: &liveRow{Samples: ms1}, waiting: &liveRow{Samples: ms1},
		busy:       &liveRow{Samples: []liveSample{{Latency: 6 * time.Millisecond, Putenv: 5 * time.Millisecond, GotPut: true}}},
		busyPolled: &liveRow{Samples: []liveSample{{Latency: 30 * time.Millisecond, Putenv: 11 * time.Millisecond, GotPut: true}}},
	}
	r := build(&config{n: 1, restarts: 1}, m, time.Now())
	var names []string
	for _, row := range r.Rows {
		names = append(names, row.Name)
	}
	if i := slices.Index(names, rowBusyPolled); i < 0 || i != slices.Index(names, rowBusy)+1 {
		t.Errorf("rows %q: want %q right after %q", names, rowBusyPolled, rowBusy)
	}
	for _, tg := range r.Targets {
		if strings.Contains(tg.Name, "cell computing") && tg.Value != 6 {
			t.Errorf("target %q judges %v ms, want the cell-observed row's 6 ms", tg.Name, tg.Value)
		}
		if tg.Value == 30 {
			t.Errorf("target %q judges the second thread's row", tg.Name)
		}
	}
	if d := r.Detail.LiveBusyPolled; d.ToPutenv.P50 != 11 || d.PutenvToPoll.P50 != 19 {
		t.Errorf("second thread's detail %+v: want putenv 11 ms, seen 19 ms after", d)
	}
	var b strings.Builder
	r.writeTable(&b)
	out := b.String()
	if !regexp.MustCompile(`(?m)^live, cell computing, seen by a second thread +1 +0 +30\.00 `).MatchString(out) ||
		!strings.Contains(out, "live busy (a second thread sees it): ") || !strings.Contains(out, "putenv in kernel 11.00 / 11.00; putenv -> seen 19.00 / 19.00") {
		t.Errorf("table lacks the second thread's row or detail:\n%s", out)
	}
}
