package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFanoutSummaryLine: the last line is JSON with the keys the issue
// names; the figures are the lower median of the rounds (a measured
// round), and applied the fewest of any round; a round where an agent
// never applied makes the median of applied_s count it as infinite (-1).
func TestFanoutSummaryLine(t *testing.T) {
	rep := &fanoutReport{Workspaces: 3, Nodes: 1, Rounds: []fanoutRound{
		{Version: 2, WrittenS: 0.3, AppliedS: 0.9, Applied: 3, CPUUsPerWS: 50},
		{Version: 3, WrittenS: 0.1, AppliedS: 0.5, Applied: 3, CPUUsPerWS: 70},
		{Version: 4, WrittenS: 0.2, AppliedS: -1, Applied: 2, CPUUsPerWS: 60},
	}}
	var out bytes.Buffer
	file := filepath.Join(t.TempDir(), "fanout.json")
	if err := printFanout(&out, &fanoutConfig{out: file}, rep); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var sum map[string]float64
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out.String())
	}
	want := map[string]float64{"workspaces": 3, "written_s": 0.2, "applied_s": 0.9, "applied": 2, "cpu_us_per_workspace": 60}
	for k, v := range want {
		if got, ok := sum[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	var full struct {
		Rounds []fanoutRound `json:"rounds"`
	}
	if b, err := os.ReadFile(file); err != nil || json.Unmarshal(b, &full) != nil || len(full.Rounds) != 3 || full.Rounds[2].AppliedS != -1 {
		t.Errorf("the JSON report: %v, %+v", err, full.Rounds)
	}
	if !strings.Contains(out.String(), "NOT MET") {
		t.Error("a round where an agent never applied must not meet the targets")
	}
}
