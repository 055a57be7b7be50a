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

	data := writtenJSON(t, r)
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
	if _, ok := got.Detail["restart_policy"]["to_rest_call_returned"]; ok {
		t.Error("detail.restart_policy has the Jupyter Server row's REST step")
	}
}

// TestJupyterServerRow: the restart-through-Jupyter-Server row is a row of
// its own, right after the policy row, with its difference to the bare
// restart, its steps (the REST call's, no relaunch by the bench) and its
// agent's flags, in the table and in the JSON.
func TestJupyterServerRow(t *testing.T) {
	one := []liveSample{{Latency: time.Millisecond}}
	viaServer := func(latency, agentAt, exited, rest time.Duration, gotREST bool) restartSample {
		return restartSample{Latency: latency, Cells: 1, FromStart: true, ByAgent: true, ViaServer: true,
			AgentRestart: agentAt, GotAgent: true, Killed: exited, RESTReturned: rest, GotREST: gotREST,
			Dialled: latency - 60*time.Millisecond, Ready: latency - 10*time.Millisecond}
	}
	flags := append(append([]string{}, policyAgentFlags...), "--jupyter-url", "http://127.0.0.1:1/", "--jupyter-token-file", "/t/tok", "--log-level", "info", "--log-json")
	m := &measurements{
		idle: &liveRow{Samples: one}, waiting: &liveRow{Samples: one}, busy: &liveRow{Samples: one},
		baseline: &restartRow{Samples: []restartSample{{Latency: 600 * time.Millisecond, Cells: 1}, {Latency: 700 * time.Millisecond, Cells: 1}}},
		injector: &restartRow{Samples: []restartSample{{Latency: 650 * time.Millisecond, Cells: 1}}},
		policy:   &restartRow{Skipped: "the first start failed: none"},
		jupyter: &restartRow{Samples: []restartSample{
			viaServer(800*time.Millisecond, 2*time.Millisecond, 150*time.Millisecond, 230*time.Millisecond, true),
			viaServer(950*time.Millisecond, 3*time.Millisecond, 160*time.Millisecond, 0, false)}},
		jupyterFlags: flags, jupyterPID: 43, jupyterServerVersion: "1.23.3",
	}
	r := build(&config{n: 1, restarts: 2}, m, time.Now())
	var b strings.Builder
	r.writeTable(&b)
	out := b.String()
	if !regexp.MustCompile(`(?m)^restart by agent policy through Jupyter Server +2 +0 +800\.00 +950\.00 +950\.00 +950\.00$`).MatchString(out) {
		t.Errorf("table lacks the Jupyter Server row:\n%s", out)
	}
	for _, want := range []string{
		"restart by agent policy through Jupyter Server p50 - restart baseline p50: +200.0 ms (reported, no target)",
		"  its agent (pid 43): " + strings.Join(flags, " "),
		"POST /api/kernels/{id}/restart on jupyter_server 1.23.3",
		"restart by agent policy through Jupyter Server, from Update return: agent restart began 2.0 / 3.0 (n 2); old kernel exited 150.0 / 160.0; REST call returned 230.0 / 230.0 (n 1); ports accepting 740.0 / 890.0; ready 790.0 / 940.0; output 800.0 / 950.0",
		"restart by agent policy p50 - restart baseline p50: n/a",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	data := writtenJSON(t, r)
	var got struct {
		Rows    []struct{ Name string }
		Machine struct {
			JupyterServer string `json:"jupyter_server_version"`
		}
		Jupyter struct {
			Flags     []string `json:"agent_flags"`
			PID       int      `json:"agent_pid"`
			Mechanism string   `json:"mechanism"`
			Diff      *float64 `json:"p50_minus_baseline_p50_ms"`
		} `json:"restart_by_policy_through_jupyter_server"`
		Detail map[string]map[string]json.RawMessage
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, row := range got.Rows {
		names = append(names, row.Name)
	}
	if i := slices.Index(names, rowJupyter); i < 0 || i != slices.Index(names, rowPolicy)+1 {
		t.Errorf("rows %q: want %q right after %q", names, rowJupyter, rowPolicy)
	}
	if got.Jupyter.Diff == nil || *got.Jupyter.Diff != 200 || got.Jupyter.PID != 43 || !strings.Contains(got.Jupyter.Mechanism, "POST /api/kernels/{id}/restart") ||
		strings.Join(got.Jupyter.Flags, " ") != strings.Join(flags, " ") || got.Machine.JupyterServer != "1.23.3" {
		t.Errorf("restart_by_policy_through_jupyter_server: %s", data)
	}
	d := got.Detail["restart_policy_jupyter_server"]
	for _, key := range []string{"to_agent_restart_began", "to_old_kernel_reaped", "to_rest_call_returned", "to_kernel_info_and_iopub", "to_output"} {
		if _, ok := d[key]; !ok {
			t.Errorf("detail.restart_policy_jupyter_server lacks %s", key)
		}
	}
	if _, ok := d["to_relaunched"]; ok {
		t.Error("detail.restart_policy_jupyter_server has to_relaunched: the bench relaunches nothing there")
	}
	var rest distribution
	if err := json.Unmarshal(d["to_rest_call_returned"], &rest); err != nil || rest.N != 1 {
		t.Errorf("to_rest_call_returned %s: want only the sample whose REST step was found", d["to_rest_call_returned"])
	}
}

// TestJupyterServerRowSkipped: without jupyter_server the row is skipped
// with the reason, its difference n/a and no agent line.
func TestJupyterServerRowSkipped(t *testing.T) {
	m := &measurements{
		baseline: &restartRow{Samples: []restartSample{{Latency: time.Second, Cells: 1}}},
		jupyter:  &restartRow{Skipped: "/usr/bin/python3 cannot import jupyter_server (exit status 1: ModuleNotFoundError)"},
	}
	r := build(&config{n: 1, restarts: 1}, m, time.Now())
	if r.Jupyter == nil || r.Jupyter.P50MinusBaseline != nil {
		t.Fatalf("Jupyter Server report %+v: want one without a difference", r.Jupyter)
	}
	var b strings.Builder
	r.writeTable(&b)
	out := b.String()
	if !regexp.MustCompile(`(?m)^restart by agent policy through Jupyter Server +skipped: /usr/bin/python3 cannot import jupyter_server \(exit status 1: ModuleNotFoundError\)$`).MatchString(out) {
		t.Errorf("table lacks the skipped row:\n%s", out)
	}
	if !strings.Contains(out, "restart by agent policy through Jupyter Server p50 - restart baseline p50: n/a") || strings.Contains(out, "its agent (pid") {
		t.Errorf("table: want an n/a difference and no agent line:\n%s", out)
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
	if !strings.Contains(b.String(), "restart by agent policy p50 - restart baseline p50: n/a") {
		t.Errorf("table lacks the policy row's n/a difference:\n%s", b.String())
	}
	if !regexp.MustCompile(`(?m)^restart by agent policy +skipped: the first restart by the agent failed: no exit$`).MatchString(b.String()) {
		t.Errorf("table lacks the skipped policy row:\n%s", b.String())
	}
}

// writtenJSON is what r.writeJSON writes.
func writtenJSON(t *testing.T, r *report) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bench.json")
	if err := r.writeJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
