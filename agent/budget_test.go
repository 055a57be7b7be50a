package agent

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestBudgetByPrecedence: a workspace that receives thirty-four 64 KiB
// project secrets (issue 9, finding 4: enough to pass ARG_MAX in every
// kernel of the project) keeps its environment within the budget. Its
// owner's private secret and its other small secrets survive, since the
// private scope comes first; project secrets fill what is left in secret
// id order; the rest is left out and listed.
func TestBudgetByPrecedence(t *testing.T) {
	st := newStore(aliceWS)
	big := strings.Repeat("v", protocol.MaxValueSize)
	for i := range 34 {
		if err := st.apply(put(fmt.Sprintf("p%02d", i), fmt.Sprintf("BIG_%02d", i), 1, projP, big), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.apply(put("zz-private", "MY_TOKEN", 1, alice, "mine"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	d, _ := st.snapshot()

	total := 0
	for n, v := range d.Env {
		total += protocol.EnvSize(n, len(v.Value))
	}
	if total > protocol.MaxWorkspaceEnvBytes || len(d.Env) > protocol.MaxWorkspaceSecrets {
		t.Fatalf("environment of %d secrets, %d bytes: over the budget", len(d.Env), total)
	}
	if _, ok := d.Env["MY_TOKEN"]; !ok {
		t.Fatal("the private secret was dropped; it comes first")
	}
	fit := (protocol.MaxWorkspaceEnvBytes - protocol.EnvSize("MY_TOKEN", 4)) / protocol.EnvSize("BIG_00", len(big))
	if got := len(d.Env) - 1; got != fit {
		t.Fatalf("%d project secrets kept, %d fit", got, fit)
	}
	for i := range fit {
		if _, ok := d.Env[fmt.Sprintf("BIG_%02d", i)]; !ok {
			t.Fatalf("BIG_%02d (a lower secret id) was dropped before a later one", i)
		}
	}
	if len(d.OverBudget) != 34-fit {
		t.Fatalf("%d left out, want %d", len(d.OverBudget), 34-fit)
	}
	for _, o := range d.OverBudget {
		if _, ok := d.Env[o.Name]; ok || o.Scope != projP {
			t.Fatalf("left out %+v is also in the environment, or has the wrong scope", o)
		}
	}

	// Count too: more small secrets than the budget's count.
	st = newStore(aliceWS)
	for i := range protocol.MaxWorkspaceSecrets + 10 {
		if err := st.apply(put(fmt.Sprintf("s%04d", i), fmt.Sprintf("SMALL_%04d", i), 1, commC, "x"), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	st.publish(time.Now())
	d, _ = st.snapshot()
	if len(d.Env) != protocol.MaxWorkspaceSecrets || len(d.OverBudget) != 10 {
		t.Fatalf("%d kept and %d left out of %d; want %d kept", len(d.Env), len(d.OverBudget), protocol.MaxWorkspaceSecrets+10, protocol.MaxWorkspaceSecrets)
	}
	if !slices.ContainsFunc(d.OverBudget, func(o Shadow) bool { return o.Name == fmt.Sprintf("SMALL_%04d", protocol.MaxWorkspaceSecrets+9) }) {
		t.Fatal("the last secret in order was not the one left out")
	}
}

// TestBudgetDropsAreLogged: when secrets are left out for the budget the
// syncer logs their names and scopes (never a value) once per change, and
// status lists them as over the budget.
func TestBudgetDropsAreLogged(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: io.MultiWriter(&buf, sink{})})
	s := &syncer{st: newStore(aliceWS), log: log, now: time.Now}
	big := secretValue("big") + strings.Repeat("v", protocol.MaxValueSize-40)
	for i := range 6 {
		if err := s.st.apply(put(fmt.Sprintf("p%d", i), fmt.Sprintf("BIG_%d", i), 1, projP, big), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	s.publish()
	s.publish() // nothing changed: no second line
	out := buf.String()
	if n := strings.Count(out, "secrets left out of the kernels"); n != 1 {
		t.Fatalf("%d budget lines, want 1:\n%s", n, out)
	}
	d, _ := s.st.snapshot()
	for _, o := range d.OverBudget {
		if !strings.Contains(out, o.Name+" (project:p)") {
			t.Errorf("the log does not name %s:\n%s", o.Name, out)
		}
	}
	if len(d.OverBudget) == 0 || strings.Contains(out, big[:40]) {
		t.Fatalf("left out %d; or the log holds a value", len(d.OverBudget))
	}
}
