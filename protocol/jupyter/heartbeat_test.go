package jupyter_test

import (
	"context"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// TestPing: a real ipykernel echoes on its heartbeat with nothing on iopub,
// also while a cell holds the GIL; a killed one does not.
func TestPing(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	for range 3 {
		if err := jupyter.Ping(testCtx(t), k.Info); err != nil {
			t.Fatalf("ping a live kernel: %v", err)
		}
	}
	// A busy loop holds the GIL: the heartbeat thread does not need it.
	go func() { // ends when the kernel is killed below
		_, _ = c.Execute(context.Background(), jupyter.Shell, "while True:\n    pass", jupyter.ExecuteOptions{})
	}()
	// foreign fails on any iopub message that is not about the test's own
	// requests, among those that came (until == "") or until one of type
	// until has come.
	foreign := func(until string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			if until == "" && len(c.IOPub()) == 0 {
				return // all that came is checked
			}
			select {
			case m := <-c.IOPub():
				if m.ParentHeader == nil || m.ParentHeader.Session != c.Session() {
					t.Errorf("iopub %s with parent %+v: the ping showed", m.Header.MsgType, m.ParentHeader)
				}
				if until != "" && m.Header.MsgType == until {
					return
				}
			case <-deadline:
				t.Fatalf("no %s on iopub within 30s", until)
			}
		}
	}
	foreign("execute_input") // the loop runs
	if err := jupyter.Ping(testCtx(t), k.Info); err != nil {
		t.Errorf("ping while a cell holds the GIL: %v", err)
	}
	foreign("")
	k.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := jupyter.Ping(ctx, k.Info); err == nil {
		t.Error("a killed kernel answered the ping")
	}
}
