package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

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
	k, s, _ := dialProtoKernel(t, false, true)

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

	// Another client's cell makes it busy (execute_input, as ipykernel
	// publishes for a visible execution); a silent request of a third
	// client, such as another agent's re-seed on control, publishes busy and
	// idle but no execute_input, and must not end the cell; the cell's own
	// idle status does.
	cell := foreignRequest(t)
	k.publish(k.iopub, cell, "busy")
	k.publishExecuteInput(t, cell)
	waitFor(t, 10*time.Second, func() error {
		if !s.Busy() {
			return errors.New("a running cell not seen")
		}
		return nil
	})
	silent := foreignRequest(t)
	k.publish(k.iopub, silent, "busy")
	k.publish(k.iopub, silent, "idle")
	// A marker behind the silent request's statuses on the same socket: once
	// the session tracks it, it has read them too.
	marker := foreignRequest(t)
	k.publishExecuteInput(t, marker)
	waitFor(t, 10*time.Second, func() error {
		if !tracking(s, marker.Header.MsgID) {
			return errors.New("the marker has not reached the session")
		}
		return nil
	})
	if !tracking(s, cell.Header.MsgID) {
		t.Fatal("a silent request's idle status ended a running cell")
	}
	k.publish(k.iopub, marker, "idle")
	k.publish(k.iopub, cell, "idle")
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := s.WaitIdle(wctx); err != nil {
		t.Fatalf("WaitIdle after the cell: %v", err)
	}
}

// foreignRequest is an execute_request header of another client.
func foreignRequest(t *testing.T) *jupyter.Message {
	t.Helper()
	m, err := jupyter.NewMessage(jupyter.NewID(), "execute_request", map[string]any{"code": "1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// publishExecuteInput publishes the execute_input of a request on iopub.
func (k *protoKernel) publishExecuteInput(t *testing.T, parent *jupyter.Message) {
	t.Helper()
	m, err := jupyter.NewMessage(k.session, "execute_input", map[string]any{"code": "1", "execution_count": 1}, &parent.Header)
	if err != nil {
		t.Fatal(err)
	}
	m.Identities = [][]byte{[]byte("kernel.execute_input")}
	frames, err := k.codec.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	protoMu.Lock()
	defer protoMu.Unlock()
	_ = k.iopub.Send(zmq4.NewMsgFrom(frames...))
}

// tracking reports whether a session counts request id as a running cell.
func tracking(s session, id string) bool {
	b := s.(*jupyterSession).busy
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.running[id]
	return ok
}
