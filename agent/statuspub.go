package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// The rollout status: what the agent's kernels hold, published on
// protocol.StatusSubject(workspace) for the secrets service's live rollout
// view. Names, secret ids, versions, kernel ids, languages and states;
// never a value. It is sent when it changes (checked every
// statusCheckEvery) and at least every statusHeartbeat.
const (
	statusCheckEvery = 50 * time.Millisecond
	statusHeartbeat  = 5 * time.Second
)

// rolloutStatus is the status message of what a holds now, without its
// time and sequence number.
func (a *Agent) rolloutStatus() protocol.WorkspaceStatus {
	st := a.Status()
	out := protocol.WorkspaceStatus{Workspace: st.Workspace, Started: st.Started,
		Secrets: make([]protocol.StatusSecret, 0, len(st.Secrets)), Kernels: make([]protocol.KernelRollout, 0, len(st.Kernels))}
	for _, s := range st.Secrets {
		out.Secrets = append(out.Secrets, protocol.StatusSecret{Name: s.Name, SecretID: s.SecretID, Version: s.Version, ShadowedBy: s.ShadowedBy})
	}
	for _, k := range st.Kernels {
		kr := protocol.KernelRollout{ID: k.ID, Language: k.Language, Mode: string(k.Mode), State: string(k.State), Busy: k.Busy,
			Holds: make(map[string]protocol.HeldSecret, len(k.Holds))}
		if k.PendingRestart != nil {
			kr.PendingRestart = k.PendingRestart.Reason
		}
		for n, h := range k.Holds {
			kr.Holds[n] = protocol.HeldSecret{SecretID: h.SecretID, Version: h.Version}
		}
		out.Kernels = append(out.Kernels, kr)
	}
	return out
}

// publishStatus sends the rollout status until ctx ends. A failed publish
// is logged once per run of failures and retried at the next change or
// heartbeat.
func (a *Agent) publishStatus(ctx context.Context) {
	subject := protocol.StatusSubject(a.cfg.Workspace.ID)
	tick := time.NewTicker(statusCheckEvery)
	defer tick.Stop()
	var last []byte
	var lastSent time.Time
	var seq uint64
	failing := false
	for {
		msg := a.rolloutStatus()
		body, err := json.Marshal(msg)
		if err == nil && (!bytes.Equal(body, last) || time.Since(lastSent) >= statusHeartbeat) {
			seq++
			msg.Seq, msg.Time = seq, time.Now().UTC()
			data, _ := json.Marshal(msg)
			if err := a.cfg.Conn.Publish(subject, data); err != nil {
				if !failing {
					a.log.Warn("cannot publish the rollout status", "subject", subject, "error", err)
				}
				failing = true
			} else {
				failing = false
				last, lastSent = body, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
