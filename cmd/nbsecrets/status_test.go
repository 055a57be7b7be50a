package main

import (
	"strings"
	"testing"

	"github.com/nbsecrets/nbsecrets/agent"
)

// TestStatusTableShowsMode: every kernel's line says whether it is served
// live (and how) or only at start.
func TestStatusTableShowsMode(t *testing.T) {
	st := &agent.Status{Workspace: "ws", Owner: "bob", Projects: []string{"ml", "nlp"}, Kernels: []agent.KernelStatus{
		{ID: "k1", State: agent.StateLive, Language: "python", Mode: agent.ModeControl},
		{ID: "k2", State: agent.StateLive, Language: "R", Mode: agent.ModeShellIdle, Busy: true},
		{ID: "k3", State: agent.StateStartOnly, Language: "bash", Mode: agent.ModeNone},
		{ID: "k4", State: agent.StateLive, Language: "python", Mode: agent.ModeSubshell},
		{ID: "k5", State: agent.StateConnecting},
		{ID: "k6", State: agent.StateLive, Language: "python", Mode: agent.ModeQuiet},
		{ID: "k7", State: agent.StateLive, Language: "python", Mode: agent.ModeControlWaiting},
	}}
	var b strings.Builder
	printStatus(&b, st)
	out := b.String()
	for id, want := range map[string]string{
		"k1": "live, control channel (live:control)",
		"k2": "live, when idle (live:shell-idle)",
		"k3": "at start only (start-only)",
		"k4": "live, subshell (live:subshell)",
		"k5": "- (not connected yet)",
		"k6": "live, quiet channel (live:quiet)",
		"k7": "live, Jupyter channel until the running cell ends (live:control (waiting for idle to install))",
	} {
		var line string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, id+" ") {
				line = l
			}
		}
		if !strings.Contains(line, want) {
			t.Errorf("kernel %s: line %q lacks %q", id, line, want)
		}
		if busy := strings.Contains(line, "live, cell running "); busy != (id == "k2") {
			t.Errorf("kernel %s: line %q says a cell runs: %v", id, line, busy)
		}
	}
	if !strings.Contains(out, "kernels    7: 5 live, 1 at start only, 1 not connected yet") {
		t.Errorf("no kernel summary:\n%s", out)
	}
	if !strings.Contains(out, "workspace  ws (owner bob; projects ml,nlp; communities -)") {
		t.Errorf("no access line:\n%s", out)
	}
	if !strings.Contains(out, "SERVED") {
		t.Errorf("no SERVED column:\n%s", out)
	}
}
