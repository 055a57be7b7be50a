package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// TestBusyTrackerWaitsForIOPub: the shell probe's reply alone does not make
// a new session idle. Until the kernel's iopub has delivered the probe's own
// status, the subscription may not have reached the kernel, and the busy
// status of a cell started just then would be lost; a restart waiting for
// idle would then kill the running cell (seen once under load against
// Jupyter Server). protoKernel drops iopub while muted, as a PUB socket does
// before a subscription arrives.
func TestBusyTrackerWaitsForIOPub(t *testing.T) {
	dir := t.TempDir()
	k := startProtoKernel(t, dir, false)
	k.muted.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := dialJupyter(ctx, k.connFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// The probe is asked again (Client.Ready tries every second) because
	// its status never came: the first reply was not taken as idle.
	shellInfos := func() int {
		n := 0
		for _, r := range k.requests("kernel_info_request") {
			if r.ch == jupyter.Shell {
				n++
			}
		}
		return n
	}
	waitFor(t, 10*time.Second, func() error {
		if shellInfos() < 2 {
			return errors.New("the shell probe was not repeated")
		}
		return nil
	})
	if !s.Busy() {
		t.Fatal("idle on a shell reply whose iopub status never arrived")
	}

	// Once iopub delivers, the next probe makes the session idle.
	k.muted.Store(false)
	waitFor(t, 10*time.Second, func() error {
		if s.Busy() {
			return errors.New("still busy after iopub came through")
		}
		return nil
	})

	// And another client's cell makes it busy, then idle again.
	cell, err := jupyter.NewMessage(jupyter.NewID(), "execute_request", map[string]any{"code": "1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	k.publish(k.iopub, cell, "busy")
	waitFor(t, 10*time.Second, func() error {
		if !s.Busy() {
			return errors.New("a running cell not seen")
		}
		return nil
	})
	k.publish(k.iopub, cell, "idle")
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := s.WaitIdle(wctx); err != nil {
		t.Fatalf("WaitIdle after the cell: %v", err)
	}
}
