package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// Mode is how a kernel is served.
type Mode string

// The modes. A live mode re-seeds the running kernel; ModeNone means the
// kernel's language has no live re-seed and it gets values only at start.
const (
	ModeSubshell Mode = "live:subshell" // ipykernel >= 7: a subshell of our own, concurrent with cells
	ModeControl  Mode = "live:control"  // ipykernel 6: the control thread, concurrent with cells
	// ModeShellIdle: single-threaded kernels (IRkernel): shell, once no cell
	// runs; a change made during a cell arrives when it ends.
	ModeShellIdle Mode = "live:shell-idle"
	ModeNone      Mode = "start-only" // no live re-seed for this language
)

// Description is what a session learned of its kernel.
type Description struct {
	Language       string
	Implementation string
	Protocol       string
	Mode           Mode
}

// session is a live connection to one kernel: the small interface through
// which decisions are applied. The worker's decisions are tested against a
// fake; the Jupyter implementation against real kernels.
type session interface {
	Describe() Description
	// Apply brings the kernel's environment to the plan; managed is the new
	// value of ManagedVar.
	Apply(ctx context.Context, p Plan, managed string) error
	// Probe checks that the kernel still answers.
	Probe(ctx context.Context) error
	// Done is closed when the connection to the kernel is lost (the kernel
	// died or restarted); nil if the session cannot tell.
	Done() <-chan struct{}
	// Shutdown asks the kernel to exit (shutdown_request on control, with
	// restart set as a hint to its manager, which does the restarting).
	Shutdown(ctx context.Context, restart bool) error
	Close() error

	// Busy and WaitIdle tell whether a cell runs on the kernel's shell (a
	// restart waits for idle; see Policy.BusyWait). Until a session knows,
	// it says busy.
	Busy() bool
	WaitIdle(ctx context.Context) error
}

// dialer opens a session to the kernel of a connection file.
type dialer func(ctx context.Context, connFile string) (session, error)

// dialJupyter is a dial without the quiet channel (tests, tools): a kernel
// is served over Jupyter's channels only.
func dialJupyter(ctx context.Context, connFile string) (session, error) {
	return (*quietHub)(nil).dial(ctx, connFile)
}

// idleWithin is how long dial waits for a kernel's shell to answer before
// taking it to be running a cell.
const idleWithin = 1500 * time.Millisecond

// dial connects to a kernel over its ZMQ sockets and chooses how to re-seed
// it: the quiet channel for IPython kernels (see quiet.go), installed at
// once when the shell is free, else once the running cell ends; meanwhile,
// and where the hub does not listen, a subshell where the kernel offers
// them, else the control channel.
//
// Why not the shell channel for every re-seed when the kernel is idle:
// choosing per re-seed between shell and control races with a cell that
// starts between the check and the send, and a re-seed queued on shell
// behind a long cell would wait for it to end; each also shows on iopub.
// IRkernel leaves no choice: one thread serves every channel, so it is
// re-seeded on shell once idle (ModeShellIdle).
func (h *quietHub) dial(ctx context.Context, connFile string) (session, error) {
	info, err := jupyter.ReadConnectionFile(connFile)
	if err != nil {
		return nil, err
	}
	c, err := jupyter.Dial(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	s := &jupyterSession{connFile: connFile, info: *info, c: c, hub: h, stop: stop, busy: newBusyTracker(),
		lost: make(chan struct{})}
	s.closeLost = sync.OnceFunc(func() { close(s.lost) })
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.busy.follow(c.IOPub(), c.Session()) }()
	go func() { defer s.wg.Done(); s.busy.probeShell(sctx, c) }()
	go func() { // owned by the session: ends with it
		defer s.wg.Done()
		select {
		case <-c.Done():
			s.closeLost()
		case <-sctx.Done():
		}
	}()
	fail := func(err error) (session, error) {
		_ = s.Close()
		return nil, err
	}
	// Is the shell free? The busy tracker's kernel_info on shell is
	// answered only once no cell runs, so its busy/idle statuses are honest.
	// Then ask on shell who the kernel is. A kernel that does not answer in
	// time runs a cell (or is IRkernel running one, or hung): ask on
	// control, which ipykernel >= 6 answers beside a running cell;
	// IRkernel's control does not answer, so then on shell.
	//
	// A kernel whose nbsecrets thread a previous agent installed resumes
	// on its own (its thread proves the kernel's connection key): it is
	// served quietly at once, without a Jupyter request, even mid-cell.
	var res *quietResumer
	if h.socketPath() != "" && info.Key != "" {
		res = h.expectResume([]byte(info.Key))
	}
	forgetRes := func() {
		if res != nil {
			h.forgetResume(res)
			res = nil
		}
	}
	var resumed <-chan *quietConn
	if res != nil {
		resumed = res.conn
	}
	idle := false
	wait := time.NewTimer(idleWithin)
	select {
	case <-s.busy.idleC():
		idle = true
	case q := <-resumed:
		wait.Stop()
		forgetRes()
		s.desc = Description{Language: "python", Implementation: "ipython"}
		s.useQuiet(sctx, q)
		h.log.Info("quiet channel resumed by the kernel's thread", "kernel", kernelID(connFile))
		return s, nil
	case <-wait.C:
	case <-ctx.Done():
	}
	wait.Stop()
	var ki *jupyter.KernelInfo
	if idle {
		ki, err = c.KernelInfo(ctx)
	} else {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		ki, err = c.KernelInfoOn(cctx, jupyter.Control)
		cancel()
		if err != nil && ctx.Err() == nil {
			ki, err = c.KernelInfo(ctx)
		}
	}
	if err != nil {
		forgetRes()
		return fail(fmt.Errorf("kernel_info: %w", err))
	}
	s.desc = Description{Language: ki.LanguageInfo.Name, Implementation: ki.Implementation, Protocol: ki.ProtocolVersion, Mode: ModeNone}
	quiet := h.socketPath() != "" && ki.Implementation == "ipython"
	switch {
	case ki.LanguageInfo.Name == "R": // IRkernel: control answers only shutdown; see rReseed
		forgetRes()
		s.desc.Mode, s.ch = ModeShellIdle, jupyter.Shell
		return s, nil
	case ki.LanguageInfo.Name != "python":
		forgetRes()
		return s, nil
	case !quiet:
		forgetRes()
	}
	if quiet && idle {
		select {
		case q := <-resumed: // resumed meanwhile: no install needed
			forgetRes()
			s.useQuiet(sctx, q)
			return s, nil
		default:
		}
		forgetRes()
		q, err := s.install(ctx)
		if err == nil {
			s.useQuiet(sctx, q)
			return s, nil
		}
		h.log.Info("quiet channel not installed at first contact; serving the kernel over control until it is",
			"kernel", kernelID(connFile), "error", err)
	}
	s.desc.Mode, s.ch = ModeControl, jupyter.Control
	if ki.Supports(jupyter.FeatureSubshells) {
		if id, err := c.CreateSubshell(ctx); err == nil {
			s.desc.Mode, s.subshell, s.ch = ModeSubshell, id, jupyter.Shell
		}
	}
	if quiet {
		s.desc.Mode = map[Mode]Mode{ModeControl: ModeControlWaiting, ModeSubshell: ModeSubshellWaiting}[s.desc.Mode]
		if res == nil && info.Key != "" {
			res = h.expectResume([]byte(info.Key))
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.installWhenIdle(sctx, res) }() // owned by the session
	}
	return s, nil
}

// installAttempts bounds the installs tried on one session: a kernel whose
// install fails (a user's code broke what it uses) stays on control.
const installAttempts = 3

// installWhenIdle installs the quiet channel once the running cell ends,
// unless the kernel's thread resumes first (res, if not nil).
func (s *jupyterSession) installWhenIdle(ctx context.Context, res *quietResumer) {
	log := s.hub.log.With("kernel", kernelID(s.connFile))
	var resumed <-chan *quietConn
	if res != nil {
		resumed = res.conn
		defer s.hub.forgetResume(res)
	}
	for range installAttempts {
		select {
		case <-s.busy.idleC():
		case q := <-resumed:
			s.useQuiet(ctx, q)
			log.Info("quiet channel resumed by the kernel's thread")
			return
		case <-ctx.Done():
			return
		}
		// A cell started meanwhile puts the install behind it: wait for it.
		ictx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		q, err := s.install(ictx)
		cancel()
		if err == nil {
			s.useQuiet(ctx, q)
			log.Info("quiet channel installed once the kernel was idle")
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("quiet channel install failed", "error", err)
		if !waitCtx(ctx, 5*time.Second) {
			return
		}
	}
	// Given up for this session: status shows what serves the kernel.
	s.mu.Lock()
	s.desc.Mode = map[Mode]Mode{ModeControlWaiting: ModeControl, ModeSubshellWaiting: ModeSubshell}[s.desc.Mode]
	s.mu.Unlock()
	log.Warn("quiet channel not installed; the kernel is served over Jupyter's channels, where re-seeds show on iopub",
		"attempts", installAttempts)
}

// install runs the quiet channel's install on shell and returns the
// kernel's connection, checked to come from the kernel's own process.
func (s *jupyterSession) install(ctx context.Context) (*quietConn, error) {
	t, err := s.hub.expect()
	if err != nil {
		return nil, err
	}
	defer s.hub.forget(t)
	code, err := quietInstallCode(s.hub.socketPath(), t.token)
	if err != nil {
		return nil, err
	}
	opts := jupyter.SilentOptions()
	opts.UserExpressions = map[string]string{"pid": quietPIDExpression}
	reply, err := s.c.Execute(ctx, jupyter.Shell, code, opts)
	if err != nil {
		return nil, fmt.Errorf("installing the quiet channel: %w", err)
	}
	if err := reply.Err(); err != nil {
		return nil, fmt.Errorf("installing the quiet channel: %w", err)
	}
	pid, err := parsePIDExpression(reply.UserExpressions["pid"])
	if err != nil {
		return nil, fmt.Errorf("installing the quiet channel: %w", err)
	}
	// The thread connects as soon as the install has run: a kernel that
	// does not within quietConnectWait refused the socket (its checks of
	// the socket's owner and directory failed) or could not reach it.
	wait := time.NewTimer(quietConnectWait)
	defer wait.Stop()
	select {
	case q := <-t.conn:
		if q.pid != pid {
			_ = q.Close()
			return nil, fmt.Errorf("installing the quiet channel: the connection came from pid %d, not the kernel's %d", q.pid, pid)
		}
		return q, nil
	case <-wait.C:
		return nil, fmt.Errorf("installing the quiet channel: the kernel did not connect back to %s within %v (can it reach the socket, and are the socket and its directory its user's, not writable by others?)",
			s.hub.socketPath(), quietConnectWait)
	case <-ctx.Done():
		return nil, fmt.Errorf("installing the quiet channel: waiting for the kernel to connect: %w", ctx.Err())
	}
}

// quietConnectWait bounds the wait for the kernel's connection once the
// install has run.
const quietConnectWait = 10 * time.Second

// useQuiet switches the session to the quiet connection q.
func (s *jupyterSession) useQuiet(ctx context.Context, q *quietConn) {
	s.mu.Lock()
	s.quiet = q
	s.desc.Mode = ModeQuiet
	s.mu.Unlock()
	s.wg.Add(1)
	go func() { // owned by the session: ends with it
		defer s.wg.Done()
		select {
		case <-q.Done():
			s.closeLost()
		case <-ctx.Done():
		}
	}()
}

type jupyterSession struct {
	connFile string
	info     jupyter.ConnectionInfo
	c        *jupyter.Client
	hub      *quietHub
	ch       jupyter.Channel
	subshell string
	busy     *busyTracker
	stop     context.CancelFunc
	wg       sync.WaitGroup

	lost      chan struct{} // closed when the kernel's connection or quiet channel is lost
	closeLost func()

	mu    sync.Mutex
	desc  Description
	quiet *quietConn // nil until installed
}

// Busy reports whether a cell is running on the kernel's shell, as far as
// its iopub status messages tell.
func (s *jupyterSession) Busy() bool { return s.busy.isBusy() }

// WaitIdle waits until no cell runs on the kernel's shell, or ctx ends.
func (s *jupyterSession) WaitIdle(ctx context.Context) error { return s.busy.waitIdle(ctx) }

func (s *jupyterSession) Describe() Description {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.desc
}

func (s *jupyterSession) Apply(ctx context.Context, p Plan, managed string) error {
	s.mu.Lock()
	mode, q := s.desc.Mode, s.quiet
	s.mu.Unlock()
	if q != nil {
		return q.apply(ctx, p, managed)
	}
	if mode == ModeNone {
		return errors.New("kernel has no live re-seed")
	}
	var code string
	var err error
	if mode == ModeShellIdle {
		// Queued behind a running cell the re-seed would hold the worker
		// until the cell ends; wait for idle within ctx instead, so a cell
		// that outlasts the apply timeout fails this try and the worker
		// tries again.
		if err := s.WaitIdle(ctx); err != nil {
			return fmt.Errorf("waiting for the kernel to be idle: %w", err)
		}
		var file string
		if code, file, err = rReseed(p, managed, filepath.Dir(s.connFile)); err != nil {
			return err
		}
		defer os.Remove(file) // the R code removes it; this is for when it never ran
	} else if code, err = pythonReseed(p, managed); err != nil {
		return err
	}
	opts := jupyter.SilentOptions()
	opts.SubshellID = s.subshell
	reply, err := s.c.Execute(ctx, s.ch, code, opts)
	if err != nil {
		return err
	}
	if err := reply.Err(); err != nil {
		// ExecError names the exception class only, never a value.
		return fmt.Errorf("re-seed failed in the kernel: %w", err)
	}
	return nil
}

// Done is closed when the kernel's ZMQ connection or, once installed, its
// quiet connection is lost.
func (s *jupyterSession) Done() <-chan struct{} { return s.lost }

func (s *jupyterSession) Shutdown(ctx context.Context, restart bool) error {
	if err := s.c.Err(); err != nil {
		return err // gone before the request: not this shutdown's doing
	}
	_, err := s.c.Request(ctx, jupyter.Control, "shutdown_request", map[string]any{"restart": restart}, nil)
	if errors.Is(err, jupyter.ErrDisconnected) {
		// The kernel exits on the request right after replying, and the
		// end of its connection can reach the client on shell or iopub
		// before the reply on control: it did what was asked.
		return nil
	}
	return err
}

// Probe checks the kernel on its heartbeat channel, which Jupyter does not
// see (no request, no status, no activity); the quiet connection's EOF and
// the ZMQ connection's loss are caught by Done.
func (s *jupyterSession) Probe(ctx context.Context) error {
	s.mu.Lock()
	mode := s.desc.Mode
	s.mu.Unlock()
	if mode == ModeShellIdle {
		return s.probeShellIdle(ctx)
	}
	return jupyter.Ping(ctx, &s.info)
}

func (s *jupyterSession) Close() error {
	s.stop()
	s.mu.Lock()
	q := s.quiet
	s.mu.Unlock()
	var qerr error
	if q != nil {
		qerr = q.Close()
	}
	err := s.c.Close() // closes IOPub, which ends follow
	s.wg.Wait()
	return errors.Join(err, qerr)
}

// busyTracker follows whether a cell runs on the kernel's shell, from its
// iopub messages about other clients' execute requests (ours are ignored).
// A cell counts from its execute_input to the idle status of its request:
// only a visible execution publishes execute_input, so a silent request,
// such as another agent's re-seed on the control channel, whose busy and
// idle statuses look like a cell's, neither starts nor ends one. Until the
// shell's state is known it assumes busy: the safe side for a shell-only
// re-seed or a restart that must wait for idle.
type busyTracker struct {
	mu      sync.Mutex
	known   bool                     // the shell probe answered: no cell ran then
	running map[string]struct{}      // ids of the requests seen starting and not ending
	idle    chan struct{}            // closed while idle; replaced when busy again
	own     map[string]chan struct{} // the session's own requests whose iopub status is awaited
}

func newBusyTracker() *busyTracker {
	return &busyTracker{running: map[string]struct{}{}, idle: make(chan struct{})}
}

func (b *busyTracker) busyLocked() bool { return !b.known || len(b.running) > 0 }

// update applies f and opens or closes the idle channel as the state turns.
func (b *busyTracker) update(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.busyLocked()
	f()
	switch now := b.busyLocked(); {
	case was && !now:
		close(b.idle)
	case !was && now:
		b.idle = make(chan struct{})
	}
}

func (b *busyTracker) isBusy() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.busyLocked()
}

// idleC is closed once no cell runs (now, or when the running one ends).
func (b *busyTracker) idleC() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.idle
}

func (b *busyTracker) waitIdle(ctx context.Context) error {
	b.mu.Lock()
	idle := b.idle
	b.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// follow reads iopub until it closes.
func (b *busyTracker) follow(iopub <-chan *jupyter.Message, ours string) {
	for m := range iopub {
		if m.ParentHeader != nil && m.ParentHeader.Session == ours && m.Header.MsgType == "status" {
			b.sawOwn(m.ParentHeader.MsgID)
			continue
		}
		if m.ParentHeader == nil || m.ParentHeader.Session == ours || m.ParentHeader.MsgType != "execute_request" {
			continue
		}
		id := m.ParentHeader.MsgID
		switch m.Header.MsgType {
		case "execute_input":
			b.update(func() { b.running[id] = struct{}{} })
		case "status":
			var st struct {
				State string `json:"execution_state"`
			}
			if json.Unmarshal(m.Content, &st) == nil && st.State == "idle" {
				b.update(func() { delete(b.running, id) })
			}
		}
	}
}

// probeShell learns the state at connect: a kernel_info_request on shell
// is answered only once the shell is free, so its reply means no cell ran
// then. The reply counts only once the request's own status has also come
// back on iopub: until the SUB socket's subscription has reached the
// kernel, iopub drops messages, and a cell started just after the probe
// would go unseen, leaving the tracker idle while the cell runs. If the
// status was dropped, it asks again (the kernel is free then, so it answers
// at once); it never has more than one request waiting, so a kernel found
// in a cell of hours gets one, not one a second (jupyter_client's
// wait_for_ready, which Client.Ready follows, sends one a second).
func (b *busyTracker) probeShell(ctx context.Context, c *jupyter.Client) {
	for ctx.Err() == nil {
		var id string
		_, err := c.Request(ctx, jupyter.Shell, "kernel_info_request", map[string]any{}, func(h *jupyter.Header) {
			id = h.MsgID
			b.expectStatus(id)
		})
		if err != nil {
			b.dropStatus(id)
			if c.Err() != nil || ctx.Err() != nil {
				return
			}
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		seen := b.waitStatus(wctx, id)
		cancel()
		if seen {
			b.update(func() { b.known = true })
			return
		}
	}
}

// expectStatus, waitStatus and dropStatus follow the iopub status of one
// request of the session's own (follow closes its channel).
func (b *busyTracker) expectStatus(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.own == nil {
		b.own = map[string]chan struct{}{}
	}
	b.own[id] = make(chan struct{})
}

func (b *busyTracker) waitStatus(ctx context.Context, id string) bool {
	b.mu.Lock()
	ch := b.own[id]
	b.mu.Unlock()
	defer b.dropStatus(id)
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

func (b *busyTracker) dropStatus(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.own, id)
}

// sawOwn notes an iopub message of the session's own request id.
func (b *busyTracker) sawOwn(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ch, ok := b.own[id]; ok {
		select {
		case <-ch: // busy then idle: closed at the first
		default:
			close(ch)
		}
	}
}

// backoff is the retry delay schedule for a kernel that does not answer.
type backoff struct{ cur, min, max time.Duration }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur
}
func (b *backoff) reset() { b.cur = 0 }
