package agent

import (
	"sync"
	"time"
)

// metrics counts what the agent did; status and /metrics report it. The
// store's own counts (records applied and refused), the kernels' states and
// the NATS connection are read where they live when reported.
type metrics struct {
	mu           sync.Mutex
	reseeds      uint64
	reseedErrors uint64
	// changeToApplied is every change-to-applied latency, in seconds.
	changeToApplied histogram
	restarts        map[string]uint64 // reason → count
}

// latencyBuckets are the upper bounds, in seconds, of the change-to-applied
// histogram: 1 ms to 10 s. A re-seed over control takes milliseconds; a
// change waiting for an R cell to end or for a restart takes seconds.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// histogram is a Prometheus histogram with fixed buckets. Its zero value
// uses latencyBuckets.
type histogram struct {
	counts []uint64 // per bucket, not cumulative; len(latencyBuckets)+1, the last for +Inf
	sum    float64
	count  uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(latencyBuckets)+1)
	}
	i := 0
	for i < len(latencyBuckets) && v > latencyBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += v
	h.count++
}

// cumulative returns the count at or below each bound of latencyBuckets,
// then the total (+Inf).
func (h *histogram) cumulative() []uint64 {
	out := make([]uint64, len(latencyBuckets)+1)
	var n uint64
	for i := range out {
		if h.counts != nil {
			n += h.counts[i]
		}
		out[i] = n
	}
	return out
}

// reseeded counts a re-seed. changedAt is when the newest change
// it carries was stored in JetStream; for a re-seed that follows a change
// (not a first contact) the time from then to now is the change-to-applied
// latency.
func (m *metrics) reseeded(full bool, changedAt time.Time) {
	m.mu.Lock()
	m.reseeds++
	if !full && !changedAt.IsZero() {
		m.changeToApplied.observe(time.Since(changedAt).Seconds())
	}
	m.mu.Unlock()
}

func (m *metrics) reseedFailed() {
	m.mu.Lock()
	m.reseedErrors++
	m.mu.Unlock()
}

// restarted counts a kernel restart by its reason: a short, value-free
// label such as "policy", "revoke" or "no live re-seed" (it becomes a
// Prometheus label value).
func (m *metrics) restarted(reason string) {
	m.mu.Lock()
	if m.restarts == nil {
		m.restarts = map[string]uint64{}
	}
	m.restarts[reason]++
	m.mu.Unlock()
}

// metricsSnapshot is a consistent copy of the counters.
type metricsSnapshot struct {
	reseeds, reseedErrors uint64
	changeToApplied       []uint64 // cumulative, as histogram.cumulative
	latencySum            float64
	latencyCount          uint64
	restarts              map[string]uint64
}

func (m *metrics) snapshot() metricsSnapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := metricsSnapshot{reseeds: m.reseeds, reseedErrors: m.reseedErrors,
		changeToApplied: m.changeToApplied.cumulative(), latencySum: m.changeToApplied.sum,
		latencyCount: m.changeToApplied.count, restarts: make(map[string]uint64, len(m.restarts))}
	for k, v := range m.restarts {
		s.restarts[k] = v
	}
	return s
}
