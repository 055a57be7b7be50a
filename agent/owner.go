package agent

import (
	"sync"
	"time"
)

// owner is the agent's one record of a kernel id. It outlives the workers
// that serve the kernel (one per connection file content: a kernel
// restarted with new ports gets a new worker) and holds, under its own
// lock, everything the decisions about the kernel need:
//
//   - its restart history: count, last reason, when the last restart began
//     (the window runs from there), and whether a restart began that no
//     worker has connected after yet;
//   - what the injector last gave it at start;
//   - the decision state of the worker serving it now (what the kernel
//     holds, the restart owed, the change a restart was given up for),
//     which step (step.go) reads and returns.
//
// The decision state belongs to one worker generation: a new worker (the
// connection file changed: a new process) starts from an unknown holding
// and nothing owed, and a worker replaced while it still runs (its restart
// call may outlive it) can no longer write it.
type owner struct {
	id string

	mu      sync.Mutex
	gen     uint64     // the worker generation whose decision state st is
	st      ownerState // see step
	touched time.Time

	restarts    uint64
	lastRestart time.Time // when the agent's last restart of it began
	lastReason  string
	fresh       bool      // a restart began and the kernel was not connected to since
	began       time.Time // when the last restart that did not fail began (it may still run)
	// started and startHeld: when the injector last fetched this kernel's
	// environment, and what it was given.
	started   time.Time
	startHeld map[string]Held
}

// ownerTTL is how long an idle kernel's owner is kept once no worker
// serves the kernel.
const ownerTTL = time.Hour

// ownerLocked returns the kernel's owner, creating it; ks.mu must be held.
func (ks *kernels) ownerLocked(id string, now time.Time) *owner {
	if ks.owners == nil {
		ks.owners = map[string]*owner{}
	}
	o := ks.owners[id]
	if o == nil {
		for k, old := range ks.owners { // prune kernels long gone
			old.mu.Lock()
			stale := now.Sub(old.touched) > ownerTTL
			old.mu.Unlock()
			if stale && !ks.servesLocked(k) {
				delete(ks.owners, k)
			}
		}
		o = &owner{id: id}
		ks.owners[id] = o
	}
	o.mu.Lock()
	o.touched = now
	o.mu.Unlock()
	return o
}

// ownerOf returns the kernel's owner, creating it.
func (ks *kernels) ownerOf(id string) *owner {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.ownerLocked(id, time.Now())
}

func (ks *kernels) servesLocked(id string) bool {
	for f := range ks.workers {
		if kernelID(f) == id {
			return true
		}
	}
	return false
}

// newGeneration starts a worker generation: the decision state starts
// over (nothing held known, nothing owed). It returns the generation.
func (o *owner) newGeneration() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.gen++
	o.st = ownerState{}
	return o.gen
}

// state returns the decision state of generation gen, with the window's
// start filled in from the history.
func (o *owner) state(gen uint64) ownerState {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.st
	if o.gen != gen {
		s = ownerState{}
	}
	s.lastRestart = o.lastRestartLocked()
	return s
}

// setState stores generation gen's decision state; a replaced generation's
// is dropped.
func (o *owner) setState(gen uint64, s ownerState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gen == gen {
		s.lastRestart = time.Time{} // history's, not the state's
		o.st = s
	}
}

// started records that the kernel of connFile fetched d from the injector:
// what it holds when it starts.
func (ks *kernels) started(connFile string, d *Desired) {
	now := time.Now()
	o := ks.ownerOf(kernelID(connFile))
	o.mu.Lock()
	defer o.mu.Unlock()
	o.started, o.startHeld = now, holdings(d)
}

// startInfo returns when the kernel last started through the injector and
// what it was given (nil if not known).
func (o *owner) startInfo() (time.Time, map[string]Held) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.started, o.startHeld
}

// restartedHolds returns, on the first connection after the agent
// restarted the kernel, what the new process was given by the injector, if
// it asked since the restart began; else nil: unknown.
func (o *owner) restartedHolds() map[string]Held {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.fresh {
		return nil
	}
	o.fresh = false
	if o.startHeld == nil || o.started.Before(o.began) {
		return nil
	}
	return o.startHeld
}

// lastRestartLocked returns when the agent's last restart of the kernel
// began, counting one whose call is still running: a worker for a
// connection file the restart rewrote can decide the next restart before
// the call returns, and the window runs from the restart's beginning all
// the same. o.mu must be held.
func (o *owner) lastRestartLocked() time.Time {
	if o.began.After(o.lastRestart) {
		return o.began
	}
	return o.lastRestart
}

// restartBegins marks the kernel as being restarted from at, before the
// mechanism is called: a restart that rewrites the connection file (new
// ports, or ipykernel writing it at start) has a new worker connect to the
// new kernel while the call may still be running, and that worker must
// take what the injector gave the kernel, not treat it as a first contact.
func (o *owner) restartBegins(at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fresh, o.began, o.touched = true, at, at
}

// restartFailed undoes restartBegins: a failed restart neither marks the
// kernel fresh nor counts for the window.
func (o *owner) restartFailed() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fresh, o.began = false, time.Time{}
}

// noteRestart counts a restart that began at at.
func (o *owner) noteRestart(reason string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.restarts++
	o.lastRestart, o.lastReason = at, reason
}

// restartStatus fills a kernel status's restart fields from its history.
func (o *owner) restartStatus(s *KernelStatus) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s.Restarts, s.LastRestart, s.LastRestartReason = o.restarts, o.lastRestart, o.lastReason
}

// lastRestartAt returns when the agent's last restart of the kernel began
// (see lastRestartLocked); zero: never.
func (o *owner) lastRestartAt() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastRestartLocked()
}
