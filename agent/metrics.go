package agent

import (
	"sync"
	"time"
)

// metrics counts what the agent did; status reports it.
type metrics struct {
	mu            sync.Mutex
	reseeds       uint64
	reseedErrors  uint64
	lastReseedDur time.Duration
	// lastChangeToApplied is the latest change-to-applied latency.
	lastChangeToApplied time.Duration
}

// reseeded counts a re-seed that took d. changedAt is when the newest change
// it carries was stored in JetStream; for a re-seed that follows a change
// (not a first contact) the time from then to now is the change-to-applied
// latency.
func (m *metrics) reseeded(d time.Duration, full bool, changedAt time.Time) {
	m.mu.Lock()
	m.reseeds++
	m.lastReseedDur = d
	if !full && !changedAt.IsZero() {
		m.lastChangeToApplied = time.Since(changedAt)
	}
	m.mu.Unlock()
}

func (m *metrics) reseedFailed() {
	m.mu.Lock()
	m.reseedErrors++
	m.mu.Unlock()
}
