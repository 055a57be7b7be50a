package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The rollout status: each workspace's agent publishes what its kernels
// hold on StatusSubject(workspace), a NATS subject that only the secrets
// service may read (nbsecrets nats-config grants the agent the publish and
// the service the subscription, through a stream export of the workspace's
// account). It names secrets and versions, never a value.

// StatusSubjectPrefix starts every status subject.
const StatusSubjectPrefix = "nbsecrets.status."

// MaxStatusSize bounds a status message; a larger one is refused.
const MaxStatusSize = 256 << 10

// StatusSubject is the subject workspace ws's agent publishes its status on.
func StatusSubject(ws string) string { return StatusSubjectPrefix + ws }

// WorkspaceStatus is one agent's status message.
type WorkspaceStatus struct {
	Workspace string `json:"workspace"`
	// Time is when the agent sent it; Seq counts its messages since it
	// started, so that a receiver keeps the newest.
	Time    time.Time       `json:"time"`
	Seq     uint64          `json:"seq"`
	Started time.Time       `json:"started"`
	Secrets []StatusSecret  `json:"secrets"`
	Kernels []KernelRollout `json:"kernels"`
}

// StatusSecret is a secret the workspace holds: the one its kernels get
// under Name, or, with ShadowedBy, one hidden by a same-named secret of
// that scope.
type StatusSecret struct {
	Name       string `json:"name"`
	SecretID   string `json:"secret_id"`
	Version    uint64 `json:"version"`
	ShadowedBy string `json:"shadowed_by,omitempty"`
}

// KernelRollout is one kernel of the workspace: what it holds (name ->
// secret id and version), how the agent reaches it and whether something
// holds up a change (a pending restart waiting for a cell, an unreachable
// kernel).
type KernelRollout struct {
	ID             string                `json:"id"`
	Language       string                `json:"language,omitempty"`
	Mode           string                `json:"mode,omitempty"`
	State          string                `json:"state"`
	Busy           bool                  `json:"busy,omitempty"`
	PendingRestart string                `json:"pending_restart,omitempty"` // its reason, when one is owed
	Holds          map[string]HeldSecret `json:"holds"`
}

// HeldSecret is the secret and version a kernel holds under a name.
type HeldSecret struct {
	SecretID string `json:"secret_id"`
	Version  uint64 `json:"version"`
}

// DecodeStatus decodes and checks a status message received on subject.
// It refuses a message too large, malformed, or naming another workspace
// than its subject's.
func DecodeStatus(subject string, data []byte) (*WorkspaceStatus, error) {
	ws, ok := strings.CutPrefix(subject, StatusSubjectPrefix)
	if !ok || ValidateID(ws) != nil {
		return nil, fmt.Errorf("%w: status on subject %q", ErrMalformed, subject)
	}
	if len(data) > MaxStatusSize {
		return nil, fmt.Errorf("%w: status of %d bytes, limit %d", ErrTooLarge, len(data), MaxStatusSize)
	}
	var st WorkspaceStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%w: status of %s: %v", ErrMalformed, ws, err)
	}
	if st.Workspace != ws {
		return nil, fmt.Errorf("%w: status on %s's subject names workspace %q", ErrWrongWorkspace, ws, st.Workspace)
	}
	return &st, nil
}
