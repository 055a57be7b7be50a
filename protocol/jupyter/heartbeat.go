package jupyter

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"

	"github.com/go-zeromq/zmq4"
)

// Ping checks once that the kernel's heartbeat socket echoes: a REQ
// socket of its own sends 16 random bytes to hb_port and waits for the same
// bytes back, until ctx ends. Nothing of it reaches iopub: ipykernel answers
// the heartbeat in a thread of its own (a zmq device that does not take the
// GIL), so it answers while a cell runs or holds the GIL, and Jupyter sees no
// request, no status and no activity. A kernel that has died refuses the
// connection or never answers.
//
// Each call dials anew: a REQ socket whose reply never came cannot send
// again, and the probe is rare (seconds apart).
func Ping(ctx context.Context, info *ConnectionInfo) error {
	if err := info.Validate(); err != nil {
		return fmt.Errorf("jupyter: heartbeat: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	// The socket lives on ctx: when it ends, the transport closes the
	// connection, which ends a Dial or Recv in progress.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := zmq4.NewReq(sctx, zmq4.WithDialerMaxRetries(0), // a live kernel listens; a refusal is an answer
		zmq4.WithLogger(log.New(io.Discard, "", 0)))
	defer req.Close()
	ep := info.Endpoint(Heartbeat)
	if err := req.Dial(dialEndpoint(ep)); err != nil {
		return fmt.Errorf("jupyter: heartbeat: dialing %s: %w", ep, ctxOr(ctx, err))
	}
	ping := make([]byte, 16)
	_, _ = rand.Read(ping)
	done := make(chan error, 1)
	go func() { // ends when the reply arrives or sctx closes the connection
		if err := req.Send(zmq4.NewMsg(ping)); err != nil {
			done <- fmt.Errorf("sending: %w", err)
			return
		}
		m, err := req.Recv()
		switch {
		case err != nil:
			done <- fmt.Errorf("receiving: %w", err)
		case len(m.Frames) != 1 || !bytes.Equal(m.Frames[0], ping):
			done <- errors.New("the echo is not what was sent")
		default:
			done <- nil
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("jupyter: heartbeat: %w", ctxOr(ctx, err))
		}
		return nil
	case <-ctx.Done():
		cancel()
		<-done
		return fmt.Errorf("jupyter: heartbeat: no echo: %w", ctx.Err())
	}
}

// ctxOr returns ctx's error when it ended (the cause of a failed socket
// call), else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
