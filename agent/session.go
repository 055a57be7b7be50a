package agent

import (
	"context"
	"errors"
	"fmt"
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
	ModeNone     Mode = "start-only"    // no live re-seed for this language
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
}

// dialer opens a session to the kernel of a connection file.
type dialer func(ctx context.Context, connFile string) (session, error)

// dialJupyter connects to a kernel over its ZMQ sockets and chooses how to
// re-seed it: a subshell where the kernel offers them, else the control
// channel for IPython kernels.
//
// Why not the shell channel when the kernel is idle: choosing per re-seed
// between shell and control races with a cell that starts between the check
// and the send, and a re-seed queued on shell behind a long cell would wait
// for it to end. One ordered channel per kernel keeps re-seeds in order and
// prompt, busy or idle.
func dialJupyter(ctx context.Context, connFile string) (session, error) {
	info, err := jupyter.ReadConnectionFile(connFile)
	if err != nil {
		return nil, err
	}
	c, err := jupyter.Dial(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	ki, err := c.KernelInfo(ctx)
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("kernel_info: %w", err)
	}
	s := &jupyterSession{c: c, desc: Description{
		Language: ki.LanguageInfo.Name, Implementation: ki.Implementation, Protocol: ki.ProtocolVersion, Mode: ModeNone,
	}}
	if ki.LanguageInfo.Name == "python" {
		s.desc.Mode = ModeControl
		s.ch = jupyter.Control
		if ki.Supports(jupyter.FeatureSubshells) {
			id, err := c.CreateSubshell(ctx)
			if err == nil {
				s.desc.Mode, s.subshell, s.ch = ModeSubshell, id, jupyter.Shell
			}
		}
	}
	return s, nil
}

type jupyterSession struct {
	c        *jupyter.Client
	desc     Description
	ch       jupyter.Channel
	subshell string
}

func (s *jupyterSession) Describe() Description { return s.desc }

func (s *jupyterSession) Apply(ctx context.Context, p Plan, managed string) error {
	if s.desc.Mode == ModeNone {
		return errors.New("kernel has no live re-seed")
	}
	code, err := pythonReseed(p, managed)
	if err != nil {
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

func (s *jupyterSession) Done() <-chan struct{} { return s.c.Done() }

func (s *jupyterSession) Shutdown(ctx context.Context, restart bool) error {
	_, err := s.c.Request(ctx, jupyter.Control, "shutdown_request", map[string]any{"restart": restart}, nil)
	return err
}

func (s *jupyterSession) Probe(ctx context.Context) error {
	ch := jupyter.Control // answered while a cell runs on shell (ipykernel >= 6)
	_, err := s.c.Request(ctx, ch, "kernel_info_request", map[string]any{}, nil)
	return err
}

func (s *jupyterSession) Close() error { return s.c.Close() }

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
