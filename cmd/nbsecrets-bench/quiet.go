package main

import (
	"context"
	"sync"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// The targets of issue 8 (the quiet channel), judged beside issue 3's.
const (
	targetQuietIdleP50 = 1 * time.Millisecond
	targetQuietIdleP99 = 3 * time.Millisecond
	targetQuietWaitP99 = 3 * time.Millisecond
	targetQuietBusyP99 = 15 * time.Millisecond
)

// iopubCount is what the bench's own client of the live kernel saw on
// iopub that answered someone else's request: the agent's doing, since the
// bench is the kernel's only other client. Every iopub message is activity
// for Jupyter Server (last_activity), and a status one its execution_state.
type iopubCount struct {
	Messages int            `json:"messages"`
	ByType   map[string]int `json:"by_type,omitempty"` // "status (parent execute_request)": n
	Changes  int            `json:"changes"`           // changes made while counting (live samples and warm-ups)
	IdleS    float64        `json:"idle_s"`            // the idle period counted
}

// iopubCounter counts, from when it starts until the client closes, the
// iopub messages of a client that do not answer the client's own requests.
type iopubCounter struct {
	mu     sync.Mutex
	n      int
	byType map[string]int
	done   chan struct{}
}

// countForeignIOPub drops what c's iopub channel holds (first contact,
// before the count starts: iopub is ordered, so once the client's own cell
// has finished, the install's messages are in the channel already), then
// counts until c is closed.
func countForeignIOPub(c *jupyter.Client) *iopubCounter {
	ic := &iopubCounter{byType: map[string]int{}, done: make(chan struct{})}
	for drained := false; !drained; {
		select {
		case <-c.IOPub():
		default:
			drained = true
		}
	}
	go func() { // ends when c is closed (its iopub channel closes)
		defer close(ic.done)
		for m := range c.IOPub() {
			if m.ParentHeader != nil && m.ParentHeader.Session == c.Session() {
				continue
			}
			parent := "none"
			if m.ParentHeader != nil {
				parent = m.ParentHeader.MsgType
			}
			ic.mu.Lock()
			ic.n++
			ic.byType[m.Header.MsgType+" (parent "+parent+")"]++
			ic.mu.Unlock()
		}
	}()
	return ic
}

// result waits for the counter to end (the client closed) and returns it.
func (ic *iopubCounter) result(changes int, idle time.Duration) *iopubCount {
	<-ic.done
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return &iopubCount{Messages: ic.n, ByType: ic.byType, Changes: changes, IdleS: idle.Seconds()}
}

// idlePeriod leaves the live kernel alone for d, the agent probing it as it
// does (every 15 s by default), and checks that the agent still serves it.
func (lb *liveBench) idlePeriod(ctx context.Context, d time.Duration) error {
	if err := sleepCtx(ctx, d); err != nil {
		return err
	}
	return lb.w.agent.alive()
}

// quietTargets judges the live rows against issue 8's targets, and the
// iopub messages the agent caused (target 0).
func quietTargets(idle, waiting, busy rowReport, io *iopubCount) []target {
	msgs := target{Name: "agent's iopub messages = 0", Limit: 0, Unit: "msg"}
	if io == nil {
		msgs.Why = "not measured"
	} else {
		msgs.Value = float64(io.Messages)
		msgs.Met = io.Messages == 0
	}
	return []target{
		latencyTarget("quiet: live idle p50 <= 1 ms", idle, idle.P50, targetQuietIdleP50),
		latencyTarget("quiet: live idle p99 <= 3 ms", idle, idle.P99, targetQuietIdleP99),
		latencyTarget("quiet: cell waiting p99 <= 3 ms", waiting, waiting.P99, targetQuietWaitP99),
		latencyTarget("quiet: cell computing p99 <= 15 ms", busy, busy.P99, targetQuietBusyP99),
		msgs,
	}
}
