package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestRolloutStatusPublished: the agent publishes, on its workspace's
// status subject, each kernel and the version it holds, and publishes again
// when a new version reaches the kernel; the messages hold no value.
func TestRolloutStatusPublished(t *testing.T) {
	h := newHarness(t)
	sub, err := h.nc.SubscribeSync(protocol.StatusSubject(h.ws.ID))
	if err != nil {
		t.Fatal(err)
	}
	h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v1, v2 := secretValue("status-v1"), secretValue("status-v2")
	h.put("s1", "DB_PASSWORD", 1, v1)
	waitEnv(t, c, "DB_PASSWORD", v1)

	// waitFor reads status messages until one shows the kernel holding
	// version want of s1.
	waitFor := func(want uint64) *protocol.WorkspaceStatus {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			m, err := sub.NextMsg(time.Until(deadline))
			if err != nil {
				t.Fatalf("no status with the kernel at version %d: %v", want, err)
			}
			if strings.Contains(string(m.Data), v1) || strings.Contains(string(m.Data), v2) {
				t.Fatal("a status message holds a value")
			}
			st, err := protocol.DecodeStatus(m.Subject, m.Data)
			if err != nil {
				t.Fatal(err)
			}
			for _, kr := range st.Kernels {
				if kr.ID == k.ID && kr.Holds["DB_PASSWORD"] == (protocol.HeldSecret{SecretID: "s1", Version: want}) {
					return st
				}
			}
		}
	}
	st := waitFor(1)
	if st.Workspace != h.ws.ID || st.Seq == 0 || len(st.Secrets) != 1 || st.Secrets[0].Version != 1 {
		t.Fatalf("status: %+v", st)
	}
	var kr protocol.KernelRollout
	for _, x := range st.Kernels {
		if x.ID == k.ID {
			kr = x
		}
	}
	if kr.Language != "python" || !strings.HasPrefix(kr.Mode, "live:") {
		t.Fatalf("kernel in status: %+v", kr)
	}
	h.put("s1", "DB_PASSWORD", 2, v2)
	waitEnv(t, c, "DB_PASSWORD", v2)
	if st2 := waitFor(2); st2.Seq <= st.Seq {
		t.Fatalf("sequence went from %d to %d", st.Seq, st2.Seq)
	}
}
