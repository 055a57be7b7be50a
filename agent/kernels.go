package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// KernelState is where a kernel's worker stands.
type KernelState string

// The states.
const (
	StateConnecting  KernelState = "connecting"  // not answering yet; retried with backoff
	StateLive        KernelState = "live"        // holds the current values
	StateStartOnly   KernelState = "start-only"  // got values at start; no live re-seed
	StateUnreachable KernelState = "unreachable" // stopped answering; retried with backoff
	StateRestarting  KernelState = "restarting"  // restarted by the agent; reconnecting
)

// KernelStatus is what status shows of one kernel. It holds names and
// versions, never a value.
type KernelStatus struct {
	ID             string          `json:"id"`
	ConnectionFile string          `json:"connection_file"`
	State          KernelState     `json:"state"`
	Language       string          `json:"language,omitempty"`
	Mode           Mode            `json:"mode,omitempty"`
	Holds          map[string]Held `json:"holds"`
	Reseeds        uint64          `json:"reseeds"`
	LastReseed     time.Time       `json:"last_reseed,omitzero"`
	LastError      string          `json:"last_error,omitempty"`
	// Busy: a cell runs on the kernel's shell, as the agent last saw on
	// iopub (from a cell's execute_input to its idle status; assumed until
	// the kernel first answers on shell). A restart waits for it to end
	// (Policy.BusyWait).
	Busy bool `json:"busy,omitempty"`
	// Restarts counts the agent's restarts of the kernel, the last one's
	// time and reason (see Policy).
	Restarts          uint64          `json:"restarts,omitempty"`
	LastRestart       time.Time       `json:"last_restart,omitzero"`
	LastRestartReason string          `json:"last_restart_reason,omitempty"`
	PendingRestart    *PendingRestart `json:"pending_restart,omitempty"`
}

// kernelID is the id Jupyter gives a kernel: kernel-<id>.json.
func kernelID(file string) string {
	base := filepath.Base(file)
	return strings.TrimSuffix(strings.TrimPrefix(base, "kernel-"), ".json")
}

func isConnectionFile(name string) bool {
	base := filepath.Base(name)
	return strings.HasPrefix(base, "kernel-") && strings.HasSuffix(base, ".json")
}

// worker serves one kernel: connects, applies the desired environment, and
// follows every change, until its context ends or the kernel goes away.
type worker struct {
	file   string
	sum    [32]byte // connection file content it was started for
	cancel context.CancelFunc
	done   chan struct{}
	own    *owner // the kernel id's owner: history and decision state
	gen    uint64 // this worker's generation of the owner's decision state

	mu     sync.Mutex
	status KernelStatus
	busy   func() bool        // the connected session's Busy; nil while not connected
	desc   func() Description // the connected session's Describe (its mode can change); nil while not connected
}

func (w *worker) update(f func(*KernelStatus)) {
	w.mu.Lock()
	f(&w.status)
	w.mu.Unlock()
}

func (w *worker) snapshot() KernelStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	s.Busy = w.busy != nil && w.busy()
	if w.desc != nil {
		s.Mode = w.desc().Mode
	}
	s.Holds = make(map[string]Held, len(w.status.Holds))
	for k, v := range w.status.Holds {
		s.Holds[k] = v
	}
	return s
}

// kernels is the set of kernels the agent serves, owner of their workers.
type kernels struct {
	log           hclog.Logger
	st            *store
	dial          dialer
	probeInterval time.Duration
	applyTimeout  time.Duration
	metrics       *metrics
	policy        Policy    // when to restart instead of re-seeding
	restarter     restarter // how; nil: shutdownRestarter
	trust         kernelTrust

	mu      sync.Mutex
	ctx     context.Context // set by run; workers' parent
	workers map[string]*worker
	owners  map[string]*owner // kernel id → its owner, across workers
	refused map[string]string // connection file → why it is refused (logged once)
	wg      sync.WaitGroup
}

// add starts serving the kernel of a connection file, or restarts its
// worker when the file's content changed (a kernel restarted with new
// ports). A file not readable yet is left to the next event or rescan.
func (ks *kernels) add(file string) {
	b, err := ks.trust.read(file)
	if errors.Is(err, errUntrusted) {
		ks.refuse(file, err)
		return
	}
	if err != nil || len(b) == 0 {
		return
	}
	sum := sha256.Sum256(b)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	delete(ks.refused, file)
	if ks.ctx == nil || ks.ctx.Err() != nil {
		return
	}
	if w, ok := ks.workers[file]; ok {
		if w.sum == sum {
			return
		}
		ks.log.Info("connection file changed; reconnecting", "kernel", kernelID(file))
		w.cancel()
	}
	ctx, cancel := context.WithCancel(ks.ctx)
	own := ks.ownerLocked(kernelID(file), time.Now())
	w := &worker{file: file, sum: sum, cancel: cancel, done: make(chan struct{}), own: own, gen: own.newGeneration(),
		status: KernelStatus{ID: kernelID(file), ConnectionFile: file, State: StateConnecting}}
	ks.workers[file] = w
	ks.wg.Add(1)
	go func() {
		defer ks.wg.Done()
		defer close(w.done)
		ks.serve(ctx, w)
	}()
}

// remove forgets a kernel whose connection file is gone.
func (ks *kernels) remove(file string) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if w, ok := ks.workers[file]; ok {
		w.cancel()
		delete(ks.workers, file)
		ks.log.Info("kernel gone", "kernel", kernelID(file))
	}
}

// forget removes w if it is still the worker for its file.
func (ks *kernels) forget(w *worker) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.workers[w.file] == w {
		w.cancel()
		delete(ks.workers, w.file)
		ks.log.Info("kernel gone", "kernel", kernelID(w.file))
	}
}

// statuses returns every kernel's status, ordered by id.
func (ks *kernels) statuses() []KernelStatus {
	ks.mu.Lock()
	ws := make([]*worker, 0, len(ks.workers))
	for _, w := range ks.workers {
		ws = append(ws, w)
	}
	ks.mu.Unlock()
	out := make([]KernelStatus, 0, len(ws))
	for _, w := range ws {
		// The restart count first, then the worker's state: a restart sets
		// the state to restarting before it is counted, so a status that
		// counts it never shows the kernel as it was before.
		r := KernelStatus{ID: w.status.ID}
		w.own.restartStatus(&r)
		s := w.snapshot()
		s.Restarts, s.LastRestart, s.LastRestartReason = r.Restarts, r.LastRestart, r.LastRestartReason
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// serve is one kernel's worker loop.
func (ks *kernels) serve(ctx context.Context, w *worker) {
	log := ks.log.With("kernel", w.status.ID)
	wake, unsubscribe := ks.st.subscribe()
	defer unsubscribe()
	bo := backoff{min: 50 * time.Millisecond, max: 5 * time.Second}
	// Re-seed failures back off on their own, not reset by the reconnect
	// that follows each one (it succeeds), only by a re-seed that works.
	rb := backoff{min: reseedRetryMin, max: reseedRetryMax}
	for ctx.Err() == nil {
		if _, err := os.Stat(w.file); errors.Is(err, os.ErrNotExist) {
			ks.forget(w)
			return
		}
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		dctx = jupyter.WithDialPolicy(dctx, ks.trust.dialPolicy(w.file)) // see kernelTrust
		sess, err := ks.dial(dctx, w.file)
		cancel()
		if err != nil {
			w.update(func(s *KernelStatus) { s.LastError = err.Error() })
			log.Debug("kernel not answering yet", "error", err)
			if !waitCtx(ctx, bo.next()) {
				return
			}
			continue
		}
		bo.reset()
		desc := sess.Describe()
		w.mu.Lock()
		w.status.Language, w.status.Mode, w.status.LastError = desc.Language, desc.Mode, ""
		w.busy, w.desc = sess.Busy, sess.Describe
		w.mu.Unlock()
		log.Info("kernel connected", "language", desc.Language, "mode", desc.Mode)
		reseeds := w.snapshot().Reseeds
		do := ks.doerFor(w, sess)
		err = ks.follow(ctx, w, sess, do, wake, log)
		if w.snapshot().Reseeds != reseeds {
			rb.reset()
		}
		w.mu.Lock()
		w.busy, w.desc = nil, nil
		w.mu.Unlock()
		_ = do.close()
		if err == nil {
			return
		}
		if errors.Is(err, errRestarted) {
			// New sockets to the connection file as it is now; a restart
			// that changed the ports rewrote it, and ks.add replaces this
			// worker.
			bo.reset()
			w.update(func(s *KernelStatus) { s.State, s.LastError, s.PendingRestart = StateRestarting, "", nil })
			if !waitCtx(ctx, bo.next()) {
				return
			}
			continue
		}
		w.update(func(s *KernelStatus) { s.State, s.LastError = StateUnreachable, err.Error() })
		if errors.Is(err, errReseedFailed) {
			wait := rb.next()
			log.Warn("re-seed failed; trying again", "error", err, "in", wait)
			if !waitCtx(ctx, wait) {
				return
			}
			continue
		}
		log.Warn("kernel stopped answering; reconnecting", "error", err)
		if !waitCtx(ctx, bo.next()) {
			return
		}
	}
}

// follow keeps one connected kernel at the desired environment, re-seeding
// or restarting it as step decides (step.go); what it decides is applied
// through a doer. It returns nil when ctx ends, errRestarted once it
// restarted the kernel, and another error when the kernel stops answering.
func (ks *kernels) follow(ctx context.Context, w *worker, sess session, do doer, wake <-chan struct{}, log hclog.Logger) error {
	pol := ks.policy
	mode := sess.Describe().Mode
	live := mode != ModeNone
	if !live && !pol.restartsStartOnly() {
		w.update(func(s *KernelStatus) { s.State = StateStartOnly })
		<-ctx.Done()
		return nil
	}
	select {
	case <-ks.st.loaded:
	case <-ctx.Done():
		return nil
	}
	var probeC <-chan time.Time
	if live {
		probe := time.NewTicker(ks.probeInterval)
		defer probe.Stop()
		probeC = probe.C
	}
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()

	// The owed restart and the change given up for survive a reconnect to
	// the same process; what it holds is unknown again.
	own := w.own
	st := own.state(w.gen)
	if o := st.owed; o != nil {
		if at, _ := own.startInfo(); at.After(o.decided) {
			log.Info("kernel started again through the injector since a restart was decided; no restart needed", "reason", o.reason)
			st.owed = nil
		}
	}
	// Right after a restart by the agent the kernel holds what the
	// injector gave it, so a change made since is a change (restarted for,
	// under a restart policy) rather than a first contact.
	st.held = own.restartedHolds()
	if st.held != nil && live {
		w.update(func(s *KernelStatus) { s.State, s.Holds = StateLive, st.held })
	}
	if !live {
		// A start-only kernel holds what the injector gave it.
		_, st.held = own.startInfo()
		if st.held == nil {
			d, _ := ks.st.snapshot()
			st.held = holdings(d)
			log.Debug("start-only kernel started without this agent's injector; taking it to hold the current values")
		}
		w.update(func(s *KernelStatus) { s.State, s.Holds = StateStartOnly, st.held })
	}
	own.setState(w.gen, st)
	for {
		d, _ := ks.st.snapshot()
		a := ks.stepOn(w, &st, event{kind: evLook, d: d, mode: mode, splay: splay(pol.Splay)}, log)
		switch a.kind {
		case actWait:
			if !a.due.IsZero() {
				due.Reset(time.Until(a.due))
			}
		case actRestart:
			err := ks.restartKernel(ctx, w, sess, do, &st, d, mode, log)
			switch {
			case errors.Is(err, errRestarted):
				return err
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, errGaveUp), errors.Is(err, errRestartFailed):
				// Not for this change; a live kernel is re-seeded instead.
				w.update(func(s *KernelStatus) { s.PendingRestart, s.LastError = nil, err.Error() })
				continue
			default: // the session was lost: reconnect, the restart still owed
				return err
			}
		case actReseed:
			p := a.plan
			actx, cancel := context.WithTimeout(ctx, ks.applyTimeout)
			err := do.reseed(actx, p, managedList(d))
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				ks.metrics.reseedFailed()
				if b := ks.stepOn(w, &st, event{kind: evReseedFailed, d: d, mode: mode, plan: p, busy: sess.Busy(), splay: splay(pol.Splay)}, log); b.kind == actLook {
					log.Warn("re-seed failed; the kernel will be restarted", "error", err)
					continue
				}
				return fmt.Errorf("%w: %w", errReseedFailed, err)
			}
			ks.metrics.reseeded(p.Full, d.ChangedAt)
			ks.stepOn(w, &st, event{kind: evReseeded, d: d, mode: mode, plan: p}, log)
			log.Info("re-seeded", "gen", d.Gen, "full", p.Full, "set", sortedKeys(p.Set), "unset", p.Unset)
			held := st.held
			w.update(func(s *KernelStatus) {
				s.State, s.Holds, s.LastReseed, s.LastError = StateLive, held, time.Now(), ""
				s.Reseeds++
			})
		case actLook:
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errors.New("connection to the kernel lost")
		case <-wake:
		case <-due.C:
		case <-probeC:
			pctx, cancel := context.WithTimeout(ctx, ks.applyTimeout)
			err := sess.Probe(pctx)
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
}

// stepOn runs step on ev for w's kernel at the current time, stores the
// state it returns in the kernel's owner, logs what was decided (names and
// reasons, never a value) and shows the pending restart in status.
func (ks *kernels) stepOn(w *worker, st *ownerState, ev event, log hclog.Logger) action {
	now := time.Now()
	st.lastRestart = w.own.lastRestartAt()
	a, next := step(ks.policy, *st, ev, now)
	*st = next
	w.own.setState(w.gen, next)
	if o := a.undone; o != nil {
		log.Info("restart no longer needed: the values are back to what the kernel holds", "reason", o.reason)
	}
	if o := a.decided; o != nil {
		log.Info("restart decided", "reason", o.reason, "set", o.set, "unset", o.unset,
			"in", o.due.Sub(now).Round(time.Millisecond))
	}
	pending := next.owed.status()
	w.update(func(s *KernelStatus) { s.PendingRestart = pending })
	return a
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// waitCtx waits d or until ctx ends; it reports whether ctx is still alive.
func waitCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// run watches the runtime directories until ctx ends, then stops every
// worker and waits for them.
func (ks *kernels) run(ctx context.Context, dirs []string, rescan time.Duration) error {
	ks.mu.Lock()
	ks.ctx = ctx
	ks.mu.Unlock()
	defer func() {
		ks.mu.Lock()
		for f, w := range ks.workers {
			w.cancel()
			delete(ks.workers, f)
		}
		ks.mu.Unlock()
		ks.wg.Wait()
	}()

	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer watcher.Close()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			ks.log.Warn("cannot create runtime dir", "dir", d, "error", err)
		}
		if err := ks.trust.checkDir(d); err != nil {
			ks.log.Warn("runtime dir refused: no kernel in it is served", "dir", d, "reason", err)
		}
		if err := watcher.Add(d); err != nil {
			ks.log.Warn("cannot watch runtime dir; relying on rescans", "dir", d, "error", err)
		}
	}
	ks.rescan(dirs)
	tick := time.NewTicker(rescan)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-watcher.Events:
			if !ok {
				return nil
			}
			if !isConnectionFile(ev.Name) {
				continue
			}
			switch {
			case ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename):
				ks.remove(ev.Name)
			case ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write):
				ks.add(ev.Name)
			}
		case err, ok := <-watcher.Errors:
			if !ok {
				return nil
			}
			ks.log.Warn("runtime dir watch error; rescanning", "error", err)
			ks.rescan(dirs)
		case <-tick.C:
			ks.rescan(dirs)
		}
	}
}

// rescan adds every connection file in dirs and forgets kernels whose file
// is gone (including announced ones outside dirs).
func (ks *kernels) rescan(dirs []string) {
	for _, d := range dirs {
		matches, _ := filepath.Glob(filepath.Join(d, "kernel-*.json"))
		for _, f := range matches {
			ks.add(f)
		}
	}
	ks.mu.Lock()
	var gone []string
	for f := range ks.workers {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			gone = append(gone, f)
		}
	}
	for f := range ks.refused {
		if _, err := os.Lstat(f); errors.Is(err, os.ErrNotExist) {
			delete(ks.refused, f)
		}
	}
	ks.mu.Unlock()
	for _, f := range gone {
		ks.remove(f)
	}
}
