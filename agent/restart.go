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
// in the kernel's owner (ownerState), so it survives a reconnect to the
// same kernel process.
type owedRestart struct {
	reason     string
	set, unset []string        // names that changed, for the log
	base       map[string]Held // what the kernel held when it was decided; nil: unknown
	decided    time.Time       // when it was decided
	due        time.Time       // not before (window, splay)
	waitIdle   bool            // waiting for the kernel to become idle
}

// splay draws a random delay in [0, max).
func splay(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}

// doer applies what step decides to one connected kernel: the small
// interface between deciding (step) and doing, so that the decisions are
// tested as a table and the doing against real kernels.
type doer interface {
	// reseed brings the kernel's environment to p; managed is the new
	// value of ManagedVar.
	reseed(ctx context.Context, p Plan, managed string) error
	// restart restarts the kernel through the restart mechanism.
	restart(ctx context.Context) error
	// close lets go of the kernel's sockets.
	close() error
	// String names the restart mechanism in logs.
	String() string
}

// kernelDoer is the doer of a worker's session and the agent's restarter.
type kernelDoer struct {
	sess session
	r    restarter
	ref  kernelRef
}

func (k kernelDoer) reseed(ctx context.Context, p Plan, managed string) error {
	return k.sess.Apply(ctx, p, managed)
}

func (k kernelDoer) restart(ctx context.Context) error { return k.r.restart(ctx, k.ref, k.sess) }

func (k kernelDoer) close() error { return k.sess.Close() }

func (k kernelDoer) String() string { return k.r.String() }

// doerFor is the doer of w's kernel over sess.
func (ks *kernels) doerFor(w *worker, sess session) kernelDoer {
	r := ks.restarter
	if r == nil {
		r = shutdownRestarter{}
	}
	return kernelDoer{sess: sess, r: r, ref: kernelRef{ID: w.status.ID, ConnectionFile: w.file}}
}

// restartKernel does the owed restart st.owed: it waits for a busy kernel
// to become idle (up to BusyWait; then step decides between restarting
// anyway and giving up, per policy) and restarts the kernel through do. It
// returns errRestarted once the kernel was restarted, errGaveUp when the
// policy gave up on a busy kernel, errRestartFailed when the mechanism
// failed, and another error when the session was lost or ctx ended.
func (ks *kernels) restartKernel(ctx context.Context, w *worker, sess session, do doer, st *ownerState, d *Desired, mode Mode, log hclog.Logger) error {
	pol := ks.policy
	o := st.owed
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
		a := ks.stepOn(w, st, event{kind: evBusyOver, d: d, mode: mode, idle: err == nil}, log)
		if a.kind != actRestartNow {
			log.Warn("kernel still busy after the busy wait; restart given up", "busy_wait", pol.BusyWait)
			return errGaveUp
		}
		if a.forced {
			log.Warn("kernel still busy after the busy wait; restarting anyway", "busy_wait", pol.BusyWait)
		}
	}
	mech := do.String()
	log.Info("restarting kernel", "mechanism", mech)
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
	w.own.restartBegins(began)
	err := do.restart(rctx)
	cancel()
	if err != nil {
		w.own.restartFailed()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Error("restart failed", "mechanism", mech, "error", err)
		ks.stepOn(w, st, event{kind: evRestartFailed, d: d, mode: mode}, log)
		return fmt.Errorf("%w: through %s: %w", errRestartFailed, mech, err)
	}
	w.update(func(s *KernelStatus) { s.State, s.LastError, s.PendingRestart = StateRestarting, "", nil })
	w.own.noteRestart(o.reason, began)
	ks.metrics.restarted(o.reason)
	ks.stepOn(w, st, event{kind: evRestarted, d: d, mode: mode}, log)
	log.Info("kernel restarted; reconnecting", "mechanism", mech)
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
