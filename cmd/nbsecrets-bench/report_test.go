package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	if !regexp.MustCompile(`(?m)^restart via injector +skipped: the first start failed: no injector$`).MatchString(out) {
		t.Errorf("table lacks the skipped injector row:\n%s", out)
	}
	for _, want := range []string{
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

// TestPolicyRow: the restart-by-policy row is a row of its own, with its
// difference to the bare restart, its steps and the agent's flags, in the
// table and in the JSON; the other restart rows' JSON has no policy steps.
func TestPolicyRow(t *testing.T) {
	one := []liveSample{{Latency: time.Millisecond}}
	pol := func(latency, agentAt, exited time.Duration) restartSample {
		return restartSample{Latency: latency, Cells: 1, FromStart: true, ByAgent: true,
			AgentRestart: agentAt, GotAgent: true, Killed: exited, Relaunched: exited + time.Millisecond}
	}
	m := &measurements{
		idle: &liveRow{Samples: one}, waiting: &liveRow{Samples: one}, busy: &liveRow{Samples: one},
		baseline: &restartRow{Samples: []restartSample{{Latency: 600 * time.Millisecond, Cells: 1}, {Latency: 700 * time.Millisecond, Cells: 1}}},
		injector: &restartRow{Samples: []restartSample{{Latency: 650 * time.Millisecond, Cells: 1}}},
		policy: &restartRow{Samples: []restartSample{pol(900*time.Millisecond, 4*time.Millisecond, 300*time.Millisecond),
			pol(1000*time.Millisecond, 5*time.Millisecond, 320*time.Millisecond)}},
		policyFlags: policyAgentFlags, policyPID: 42,
	}
	r := build(&config{n: 1, restarts: 2}, m, time.Now())
	var b strings.Builder
	r.writeTable(&b)
	out := b.String()
	if !regexp.MustCompile(`(?m)^restart by agent policy +2 +0 +900\.00 +1000\.00 +1000\.00 +1000\.00$`).MatchString(out) {
		t.Errorf("table lacks the policy row:\n%s", out)
	}
	for _, want := range []string{
		"restart by agent policy p50 - restart baseline p50: +300.0 ms",
		"--on-change restart --busy-wait 5m --busy-action restart --splay 0s --restart-window 0s",
		"polls every 3 s",
		"restart by agent policy, from Update return: agent restart began 4.0 / 5.0 (n 2); old kernel exited 300.0 / 320.0; relaunched 301.0 / 321.0;",
		"start environment in 2 of 2;",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	path := filepath.Join(t.TempDir(), "bench.json")
	if err := r.writeJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Rows   []struct{ Name string }
		Policy struct {
			Flags []string `json:"agent_flags"`
			Diff  *float64 `json:"p50_minus_baseline_p50_ms"`
		} `json:"restart_by_policy"`
		Detail map[string]map[string]json.RawMessage
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, row := range got.Rows {
		names = append(names, row.Name)
	}
	if i := slices.Index(names, rowPolicy); i != slices.Index(names, rowInjector)+1 {
		t.Errorf("rows %q: want %q right after %q", names, rowPolicy, rowInjector)
	}
	if got.Policy.Diff == nil || *got.Policy.Diff != 300 || strings.Join(got.Policy.Flags, " ") != strings.Join(policyAgentFlags, " ") {
		t.Errorf("restart_by_policy: %s", data)
	}
	for _, key := range []string{"to_agent_restart_began", "to_relaunched", "to_output"} {
		if _, ok := got.Detail["restart_policy"][key]; !ok {
			t.Errorf("detail.restart_policy lacks %s", key)
		}
	}
	for _, row := range []string{"restart_baseline", "restart_injector"} {
		if _, ok := got.Detail[row]["to_agent_restart_began"]; ok {
			t.Errorf("detail.%s has the policy row's steps", row)
		}
	}
}

// TestPolicyDiffAbsentWithoutSamples: no difference without samples in
// both rows.
func TestPolicyDiffAbsentWithoutSamples(t *testing.T) {
	m := &measurements{
		baseline: &restartRow{Samples: []restartSample{{Latency: time.Second, Cells: 1}}},
		policy:   &restartRow{Skipped: "the first restart by the agent failed: no exit"},
	}
	r := build(&config{n: 1, restarts: 1}, m, time.Now())
	if r.Policy == nil || r.Policy.P50MinusBaseline != nil {
		t.Fatalf("policy report %+v: want one without a difference", r.Policy)
	}
	var b strings.Builder
	r.writeTable(&b)
	for _, want := range []string{"restart by agent policy p50 - restart baseline p50: n/a", "restart by agent policy skipped: the first restart by the agent failed: no exit"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
