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
}

func (m *metrics) reseeded(d time.Duration) {
	m.mu.Lock()
	m.reseeds++
	m.lastReseedDur = d
	m.mu.Unlock()
}

func (m *metrics) reseedFailed() {
	m.mu.Lock()
	m.reseedErrors++
	m.mu.Unlock()
}
