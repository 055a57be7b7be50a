package main

// -fanout-live: the agents deliver as the product's live mode does
// (agent.DeliveryLive, agent/live.go), each through agent.Follow, the same
// syncer a running agent uses: the service republishes every record
// (controlplane.Options.Live), each agent subscribes to its workspace's
// live subject with core NATS, reads what is stored with its consumer and
// deletes it, then applies each republished record that follows the
// sequence it holds, reading again on a gap. Measured with
// -fanout-server-cpuprofile at 10,000 workspaces, standing consumers make
// the server spend most of a fan-out in msgBlock.firstMatching (N consumers
// times N records per change, see the README's fan-out section); here the
// server routes each record through its subject index and keeps no
// consumer per agent.

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/agent"
)

// liveLog counts what the live agents log that the benchmark reports:
// re-reads after a gap, every re-read, refusals.
type liveLog struct {
	gaps, rereads, refused atomic.Int64
}

func (l *liveLog) Write(p []byte) (int, error) {
	switch {
	case bytes.Contains(p, []byte("does not follow the one held")):
		l.gaps.Add(1)
	case bytes.Contains(p, []byte("reading the records again")):
		l.rereads.Add(1)
	case bytes.Contains(p, []byte("record refused")):
		l.refused.Add(1)
	}
	return len(p), nil
}

// startLiveAgent starts agent a's agent.Follow in live delivery on js
// (stopped by ctx; done is told when it returns) and waits until it has
// read what is stored.
func startLiveAgent(ctx context.Context, js jetstream.JetStream, a *fanAgent, ws agent.Workspace, logs *liveLog, done func()) error {
	loaded := make(chan struct{})
	var once atomic.Bool
	cfg := agent.FollowConfig{JS: js, Workspace: ws, Opener: a.opener, Delivery: agent.DeliveryLive,
		Logger: hclog.New(&hclog.LoggerOptions{Name: a.ws, Level: hclog.Info, Output: logs}),
		Changed: func(d *agent.Desired) {
			now := time.Now().UnixNano()
			a.mu.Lock()
			for _, v := range d.Env {
				if _, seen := a.applied[v.Version]; !seen {
					a.applied[v.Version] = now
				}
			}
			a.mu.Unlock()
			if once.CompareAndSwap(false, true) {
				close(loaded)
			}
		}}
	go func() { // owned by runFanoutAgents through ctx
		defer done()
		_ = agent.Follow(ctx, cfg)
	}()
	select {
	case <-loaded:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("workspace %s: records not read within a minute", a.ws)
	case <-ctx.Done():
		return ctx.Err()
	}
}
