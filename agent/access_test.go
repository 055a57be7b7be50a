package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestSetAccess: a workspace that joins a project gets the project's
// secrets without an agent restart (records refused before are read again),
// and loses them from its kernel when it leaves; joining again brings the
// same record back. A real NATS server and a real kernel.
func TestSetAccess(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	run(t, c, "state = 41")

	own, shared := secretValue("own"), secretValue("shared")
	h.put("s1", "OWN", 1, own)
	h.putRaw(protocol.RecordKey(h.ws.ID, "s2"), h.record("s2", "SHARED", 1, protocol.Scope{Kind: protocol.ScopeProject, ID: "p2"}, shared))
	waitEnv(t, c, "OWN", own)
	waitFor(t, 20*time.Second, func() error {
		if n := a.Status().Refused["scope not allowed"]; n < 1 {
			return fmt.Errorf("the p2 record was not refused: %v", a.Status().Refused)
		}
		return nil
	})
	if got := envDigest(t, c, "SHARED"); got != "unset" {
		t.Fatal("a project secret reached a workspace outside the project")
	}

	joined := Workspace{ID: h.ws.ID, Owner: "alice", Projects: []string{"p", "p2"}}
	if err := a.SetAccess(joined); err != nil {
		t.Fatal(err)
	}
	waitEnv(t, c, "SHARED", shared)
	if got := strings.Join(a.Status().Projects, ","); got != "p,p2" {
		t.Errorf("Access().Projects = %q", got)
	}

	left := Workspace{ID: h.ws.ID, Owner: "alice", Projects: []string{"p"}}
	if err := a.SetAccess(left); err != nil {
		t.Fatal(err)
	}
	waitEnv(t, c, "SHARED", "")
	if got := envDigest(t, c, "OWN"); got != digest(own) {
		t.Error("leaving a project took the private secret too")
	}

	if err := a.SetAccess(joined); err != nil {
		t.Fatal(err)
	}
	waitEnv(t, c, "SHARED", shared)
	// Once back, a newer version follows as usual.
	shared2 := secretValue("shared2")
	h.putRaw(protocol.RecordKey(h.ws.ID, "s2"), h.record("s2", "SHARED", 2, protocol.Scope{Kind: protocol.ScopeProject, ID: "p2"}, shared2))
	waitEnv(t, c, "SHARED", shared2)

	if err := a.SetAccess(Workspace{ID: "ws-bob", Owner: "bob"}); err == nil || !strings.Contains(err.Error(), "ws-bob") {
		t.Errorf("SetAccess for another workspace: %v", err)
	}
	if got := run(t, c, "print(state + 1)"); got != "42" {
		t.Errorf("kernel state lost: %q", got)
	}
}
