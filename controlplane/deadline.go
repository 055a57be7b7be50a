package controlplane

import (
	"context"
	"fmt"
	"time"
)

// A request's commit deadline. A client gives up on a request at its
// deadline and may send the next one; the service must not then apply the
// first on top of the second. That happens for real when a NATS node is
// lost under a request: the service's store write waits out the election,
// the client times out and updates again, and the held-up write, retried
// with compare-and-set, would land last and put the older value back (the
// cluster failover test caught it). So a change is written to the store
// only before its request's deadline, as the service's clock reads it; a
// write already under way at the deadline can still land, which keeps the
// order, since the client sends its next request only after the deadline.
// Clocks more than the request window (MaxClockSkew) apart are refused
// anyway; within it, a service clock behind the client's narrows the
// guarantee by the difference.

type commitDeadlineKey struct{}

// withCommitDeadline returns ctx carrying the request's deadline (zero: none).
func withCommitDeadline(ctx context.Context, deadline time.Time) context.Context {
	if deadline.IsZero() {
		return ctx
	}
	return context.WithValue(ctx, commitDeadlineKey{}, deadline)
}

// mayCommit refuses a change whose request's deadline has passed.
func (s *Service) mayCommit(ctx context.Context) error {
	dl, ok := ctx.Value(commitDeadlineKey{}).(time.Time)
	if ok && !s.now().Before(dl) {
		return fmt.Errorf("%w: the request's deadline passed before its change was written; nothing changed", ErrUnavailable)
	}
	return nil
}
