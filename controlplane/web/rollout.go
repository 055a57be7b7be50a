package web

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// Rollout keeps the newest status message of every workspace's agent,
// received on protocol.StatusSubjectPrefix+"*", for the rollout view.
// Malformed or misaddressed messages are refused and logged (workspace and
// reason). Make one with StartRollout; Stop ends its subscription.
type Rollout struct {
	log hclog.Logger
	now func() time.Time
	sub *nats.Subscription

	mu      sync.Mutex
	latest  map[string]received
	changed chan struct{} // closed and replaced when a status is taken
}

// changes returns a channel that is closed at the next status taken.
func (r *Rollout) changes() <-chan struct{} {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

type received struct {
	st *protocol.WorkspaceStatus
	at time.Time
}

// StartRollout subscribes to the agents' status messages on nc.
func StartRollout(nc *nats.Conn, log hclog.Logger) (*Rollout, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	r := &Rollout{log: log.Named("rollout"), now: time.Now, latest: map[string]received{}, changed: make(chan struct{})}
	sub, err := nc.Subscribe(protocol.StatusSubjectPrefix+"*", r.receive)
	if err != nil {
		return nil, fmt.Errorf("web: subscribing to agents' status: %w", err)
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("web: subscribing to agents' status: %w", err)
	}
	r.sub = sub
	return r, nil
}

// Stop ends the subscription.
func (r *Rollout) Stop() error {
	if err := r.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("web: stopping the rollout view: %w", err)
	}
	return nil
}

func (r *Rollout) receive(m *nats.Msg) {
	st, err := protocol.DecodeStatus(m.Subject, m.Data)
	if err != nil {
		r.log.Warn("agent status refused", "subject", m.Subject, "reason", err.Error())
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.latest[st.Workspace]
	if ok && old.st.Started.Equal(st.Started) && old.st.Seq > st.Seq {
		return // an older message of the same agent run, overtaken
	}
	if !ok && len(r.latest) >= maxRolloutWorkspaces {
		r.log.Warn("agent status refused", "subject", m.Subject, "reason", "too many workspaces reporting")
		return
	}
	r.latest[st.Workspace] = received{st: st, at: r.now()}
	close(r.changed)
	r.changed = make(chan struct{})
}

// of returns workspace ws's newest status and when it came.
func (r *Rollout) of(ws string) (*protocol.WorkspaceStatus, time.Time, bool) {
	if r == nil {
		return nil, time.Time{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	x, ok := r.latest[ws]
	return x.st, x.at, ok
}

// maxRolloutWorkspaces bounds how many workspaces' status Rollout keeps.
const maxRolloutWorkspaces = 1 << 16

// silentAfter is how long after its last status an agent counts as silent:
// three of its heartbeats (agent/statuspub.go).
const silentAfter = 15 * time.Second

// rolloutView is the reply of GET api/v1/secrets/{id}/rollout.
type rolloutView struct {
	SecretID   string             `json:"secret_id"`
	Name       string             `json:"name"`
	Version    uint64             `json:"version"`
	Workspaces []workspaceRollout `json:"workspaces"`
}

type workspaceRollout struct {
	ID string `json:"id"`
	// Reporting: the workspace's agent has sent a status; LastSeen is
	// when. Silent: not for silentAfter (stopped, or cut off): what it
	// last said may be out of date.
	Reporting bool              `json:"reporting"`
	Silent    bool              `json:"silent,omitempty"`
	LastSeen  time.Time         `json:"last_seen,omitzero"`
	Holds     uint64            `json:"holds"` // the version the agent holds, 0 = none
	Shadowed  string            `json:"shadowed_by,omitempty"`
	Kernels   []kernelRolloutUI `json:"kernels"`
}

type kernelRolloutUI struct {
	ID       string `json:"id"`
	Language string `json:"language,omitempty"`
	Mode     string `json:"mode,omitempty"`
	State    string `json:"state"`
	Version  uint64 `json:"version"` // what it holds of the secret, 0 = nothing
	Current  bool   `json:"current"`
	Waiting  string `json:"waiting,omitempty"` // why not current
}

// rolloutOf is info's rollout: each workspace that receives it, each of its
// kernels and the version it holds.
func (s *Server) rolloutOf(info *controlplane.SecretInfo) rolloutView {
	v := rolloutView{SecretID: info.ID, Name: info.Name, Version: info.Version, Workspaces: []workspaceRollout{}}
	for _, ws := range info.Workspaces {
		w := workspaceRollout{ID: ws, Kernels: []kernelRolloutUI{}}
		st, at, ok := s.rollout.of(ws)
		if ok {
			w.Reporting, w.LastSeen, w.Silent = true, at, s.rollout.now().Sub(at) > silentAfter
			for _, sec := range st.Secrets {
				if sec.SecretID != info.ID {
					continue
				}
				if sec.ShadowedBy != "" {
					w.Shadowed = sec.ShadowedBy
				} else {
					w.Holds = sec.Version
				}
			}
			for _, k := range st.Kernels {
				kr := kernelRolloutUI{ID: k.ID, Language: k.Language, Mode: k.Mode, State: k.State}
				for _, h := range k.Holds {
					if h.SecretID == info.ID {
						kr.Version = h.Version
					}
				}
				kr.Current = kr.Version >= info.Version
				if !kr.Current {
					kr.Waiting = waitingReason(w, k)
				}
				w.Kernels = append(w.Kernels, kr)
			}
		}
		v.Workspaces = append(v.Workspaces, w)
	}
	return v
}

// waitingReason says why kernel k does not hold the newest version yet.
func waitingReason(w workspaceRollout, k protocol.KernelRollout) string {
	switch {
	case w.Silent:
		return "its agent has been silent since " + w.LastSeen.UTC().Format(time.TimeOnly) + " UTC"
	case w.Shadowed != "":
		return "hidden in this workspace by the same-named secret of " + w.Shadowed
	case k.PendingRestart != "" && k.Busy:
		return "a restart is owed (" + k.PendingRestart + "); a cell is running"
	case k.PendingRestart != "":
		return "a restart is owed (" + k.PendingRestart + ")"
	case k.State == "start-only":
		return "start-only kernel: gets values when it starts"
	case k.State == "unreachable":
		return "kernel unreachable; the agent retries"
	case k.Busy && k.Mode == "live:shell-idle":
		return "a cell is running; the change arrives when it ends"
	}
	return k.State
}
