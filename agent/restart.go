package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/go-hclog"
)

// restarter is how a kernel gets restarted: the small interface through
// which the worker's restart decisions are applied. Either way the kernel
// starts again through its kernelspec argv, so the injector asks the agent
// and the new process begins with the current values.
type restarter interface {
	// restart restarts the kernel k; sess is the worker's live session to
	// it. It returns once the old process is gone or replaced.
	restart(ctx context.Context, k kernelRef, sess session) error
	// String names the mechanism in logs.
	String() string
}

// kernelRef names a kernel to a restarter.
type kernelRef struct {
	ID             string // as in kernel-<ID>.json
	ConnectionFile string
}

// restartTimeout bounds one restart: a Jupyter Server's restart call
// returns once the new kernel started, which takes about a second on two
// cores and much longer on a loaded machine.
const restartTimeout = 60 * time.Second

// shutdownRestarter restarts a kernel without a Jupyter Server: it asks
// the kernel to exit (shutdown_request with restart: true on control) and
// relies on the kernel's manager to start it again, which jupyter_client's
// KernelRestarter does (Jupyter Server, Notebook, nbclassic, a
// KernelManager with autorestart). What the user sees is a kernel that
// died and was restarted automatically ("Kernel Restarting: the kernel
// appears to have died"). Its limits are the restarter's: it polls every
// 3 s (time_to_dead), so the kernel is away for up to 3 s plus its start;
// it gives up after 5 deaths in a row less than 10 s apart (restart_limit,
// stable_start_time), so keep Policy.MinInterval at 10 s or more; and a
// kernel that dies within 10 s of its first start is given new ports (a new
// connection file, which the agent follows). A kernel that no manager
// watches (started by hand, `jupyter console --existing`'s owner gone) is
// not restarted at all: it just exits. Use a Jupyter Server
// (JupyterServer) where there is one.
type shutdownRestarter struct{}

func (shutdownRestarter) String() string { return "shutdown-request" }

func (shutdownRestarter) restart(ctx context.Context, _ kernelRef, sess session) error {
	if err := sess.Shutdown(ctx, true); err != nil {
		return fmt.Errorf("shutdown_request: %w", err)
	}
	// Wait for the old process's sockets to close, so that the worker does
	// not reconnect to the kernel on its way out.
	if done := sess.Done(); done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("kernel did not exit after shutdown_request: %w", ctx.Err())
		}
	}
	return nil
}

// errRestarted ends a worker's session after a restart: the worker makes
// new sockets (zmq4 does not reconnect reliably) to the connection file as
// it is now.
var errRestarted = errors.New("agent: kernel restarted")

// errGaveUp is a restart skipped because the kernel stayed busy.
var errGaveUp = errors.New("agent: kernel still busy; restart given up")

// errRestartFailed is a restart the mechanism could not do.
var errRestartFailed = errors.New("agent: restart failed")

// owedRestart is a restart decided for a kernel and not done yet. It lives
// on the worker, so it survives a reconnect to the same kernel process.
type owedRestart struct {
	reason     string
	set, unset []string        // names that changed, for the log
	base       map[string]Held // what the kernel held when it was decided; nil: unknown
	decided    time.Time       // when it was decided
	due        time.Time       // not before (window, splay)
	waitIdle   bool            // waiting for the kernel to become idle
}

// kernelHistory is what the agent remembers of one kernel across workers:
// a kernel restarted with new ports gets a new worker, and the window
// between restarts must still hold.
type kernelHistory struct {
	restarts    uint64
	lastRestart time.Time // when the agent's last restart of it began
	lastReason  string
	fresh       bool      // a restart began and the kernel was not connected to since
	began       time.Time // when the last restart that did not fail began (it may still run)
	// started and startHeld: when the injector last fetched this kernel's
	// environment, and what it was given.
	started   time.Time
	startHeld map[string]Held
	touched   time.Time
}

// historyTTL is how long an idle kernel's history is kept once no worker
// serves the kernel.
const historyTTL = time.Hour

// history returns the kernel's record, creating it; ks.mu must be held.
func (ks *kernels) historyLocked(id string, now time.Time) *kernelHistory {
	if ks.history == nil {
		ks.history = map[string]*kernelHistory{}
	}
	h := ks.history[id]
	if h == nil {
		h = &kernelHistory{}
		ks.history[id] = h
		for k, o := range ks.history { // prune kernels long gone
			if now.Sub(o.touched) > historyTTL && !ks.servesLocked(k) {
				delete(ks.history, k)
			}
		}
	}
	h.touched = now
	return h
}

func (ks *kernels) servesLocked(id string) bool {
	for f := range ks.workers {
		if kernelID(f) == id {
			return true
		}
	}
	return false
}

// started records that the injector fetched the environment d for the
// kernel of connFile: the kernel is (re)starting with these values.
func (ks *kernels) started(connFile string, d *Desired) {
	now := time.Now()
	ks.mu.Lock()
	defer ks.mu.Unlock()
	h := ks.historyLocked(kernelID(connFile), now)
	h.started, h.startHeld = now, holdings(d)
}

// startInfo returns when the kernel last started through the injector and
// what it was given (nil if not known).
func (ks *kernels) startInfo(id string) (time.Time, map[string]Held) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if h := ks.history[id]; h != nil {
		return h.started, h.startHeld
	}
	return time.Time{}, nil
}

// restartedHolds returns, on the first connection after the agent
// restarted the kernel, what the new process was given by the injector, if
// it asked since the restart began; else nil: unknown.
func (ks *kernels) restartedHolds(id string) map[string]Held {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	h := ks.history[id]
	if h == nil || !h.fresh {
		return nil
	}
	h.fresh = false
	if h.startHeld == nil || h.started.Before(h.began) {
		return nil
	}
	return h.startHeld
}

// lastRestart returns when the agent's last restart of the kernel began,
// counting one whose call is still running: a worker for a connection file
// the restart rewrote can decide the next restart before the call returns,
// and the window runs from the restart's beginning all the same.
func (ks *kernels) lastRestart(id string) time.Time {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	h := ks.history[id]
	if h == nil {
		return time.Time{}
	}
	if h.began.After(h.lastRestart) {
		return h.began
	}
	return h.lastRestart
}

// restartBegins marks the kernel as being restarted from at, before the
// mechanism is called: a restart that rewrites the connection file (new
// ports, or ipykernel writing it at start) has a new worker connect to the
// new kernel while the call may still be running, and that worker must
// take what the injector gave the kernel, not treat it as a first contact.
func (ks *kernels) restartBegins(id string, at time.Time) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	h := ks.historyLocked(id, at)
	h.fresh, h.began = true, at
}

// restartFailed undoes restartBegins: a failed restart neither marks the
// kernel fresh nor counts for the window.
func (ks *kernels) restartFailed(id string) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if h := ks.history[id]; h != nil {
		h.fresh, h.began = false, time.Time{}
	}
}

func (ks *kernels) noteRestart(id, reason string, at time.Time) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	h := ks.historyLocked(id, at)
	h.restarts++
	h.lastRestart, h.lastReason = at, reason
}

// restartStatus fills a kernel status's restart fields from its history.
func (ks *kernels) restartStatus(s *KernelStatus) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if h := ks.history[s.ID]; h != nil {
		s.Restarts, s.LastRestart, s.LastRestartReason = h.restarts, h.lastRestart, h.lastReason
	}
}

// splay draws a random delay in [0, max).
func splay(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}

// owe decides a restart now: its due time follows the kernel's window and
// a splay.
func (ks *kernels) owe(w *worker, dec decision, p Plan, held map[string]Held) *owedRestart {
	now := time.Now()
	set, unset := changedNames(p)
	return &owedRestart{reason: dec.reason, set: set, unset: unset, base: held, decided: now,
		due: restartDue(ks.policy, now, ks.lastRestart(w.status.ID), splay(ks.policy.Splay))}
}

// restartKernel does an owed restart: it waits for a busy kernel to become
// idle (up to BusyWait, then restarts anyway or gives up, per policy),
// checks that the values still differ, and restarts the kernel through the
// mechanism. It returns errRestarted once the kernel was restarted,
// errGaveUp when the policy gave up on a busy kernel, another error when
// the restart failed or the session was lost.
func (ks *kernels) restartKernel(ctx context.Context, w *worker, sess session, o *owedRestart, log hclog.Logger) error {
	pol := ks.policy
	log = log.With("reason", o.reason, "set", o.set, "unset", o.unset)
	if sess.Busy() {
		o.waitIdle = true
		w.update(func(s *KernelStatus) { s.PendingRestart = o.status() })
		log.Info("kernel busy; waiting for it to become idle before restarting", "busy_wait", pol.BusyWait)
		wctx, cancel := context.WithTimeout(ctx, pol.BusyWait)
		lost, watched := sess.Done(), make(chan struct{})
		go func() { // a lost connection ends the wait too
			select {
			case <-lost:
				cancel()
			case <-watched:
			}
		}()
		err := sess.WaitIdle(wctx)
		close(watched)
		cancel()
		o.waitIdle = false
		w.update(func(s *KernelStatus) { s.PendingRestart = o.status() })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isClosed(sess.Done()) {
			return errors.New("connection to the kernel lost while waiting for idle")
		}
		idle := err == nil
		if !restartAfterBusyWait(pol, idle) {
			log.Warn("kernel still busy after the busy wait; restart given up", "busy_wait", pol.BusyWait)
			return errGaveUp
		}
		if !idle {
			log.Warn("kernel still busy after the busy wait; restarting anyway", "busy_wait", pol.BusyWait)
		}
	}
	r := ks.restarter
	if r == nil {
		r = shutdownRestarter{}
	}
	log.Info("restarting kernel", "mechanism", r.String())
	began := time.Now()
	// Bounded by the agent's life, not the worker's: the restarted kernel
	// rewrites its connection file (ipykernel does at start), which may
	// replace this worker while the restart call is still running.
	parent := ctx
	ks.mu.Lock()
	if ks.ctx != nil {
		parent = ks.ctx
	}
	ks.mu.Unlock()
	rctx, cancel := context.WithTimeout(parent, restartTimeout)
	ks.restartBegins(w.status.ID, began)
	err := r.restart(rctx, kernelRef{ID: w.status.ID, ConnectionFile: w.file}, sess)
	cancel()
	if err != nil {
		ks.restartFailed(w.status.ID)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Error("restart failed", "mechanism", r.String(), "error", err)
		return fmt.Errorf("%w: through %s: %w", errRestartFailed, r, err)
	}
	w.update(func(s *KernelStatus) { s.State, s.LastError, s.PendingRestart = StateRestarting, "", nil })
	ks.noteRestart(w.status.ID, o.reason, began)
	ks.metrics.restarted(o.reason)
	log.Info("kernel restarted; reconnecting", "mechanism", r.String())
	return errRestarted
}

func (o *owedRestart) status() *PendingRestart {
	if o == nil {
		return nil
	}
	return &PendingRestart{Reason: o.reason, Due: o.due, WaitingForIdle: o.waitIdle}
}

// PendingRestart is a restart decided and not done yet, as status shows
// it.
type PendingRestart struct {
	Reason         string    `json:"reason"`
	Due            time.Time `json:"due"` // not before: the restart window and the splay
	WaitingForIdle bool      `json:"waiting_for_idle,omitempty"`
}

func isClosed(c <-chan struct{}) bool {
	if c == nil {
		return false
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}
