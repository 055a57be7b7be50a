package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"
)

// Several replicas of the service may run on the same NATS at once. Every
// request and every record write stays correct whichever replica makes it,
// because each key is written with compare-and-set: a version is decided by
// a compare-and-set on the secret in ServiceBucket, and a record is written
// only over one with a lower version. What is shared out is the background
// work, the reconciliation after a directory change, when a replica takes
// over and every ReconcileInterval: one replica at a time does it, the one
// holding the lease. The lease is only about sparing work; a replica that
// loses it in the middle of a reconciliation cannot do harm, and one that
// never gets it still serves requests.

// leaseKey is the lease's key in ServiceBucket.
const leaseKey = "lease.background"

// DefaultLeaseTTL is how long the lease lasts unless renewed; it is renewed
// every third of that.
const DefaultLeaseTTL = 15 * time.Second

// leaseValue is what the lease key holds.
type leaseValue struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// lease is this replica's view of the background lease. The holder renews
// it with compare-and-set on the revision it last wrote; another replica
// takes it over, with compare-and-set too, once its expiry has passed on
// that replica's clock (the TTL must exceed the replicas' clock skew).
type lease struct {
	kv     jetstream.KeyValue
	id     string // this replica
	ttl    time.Duration
	now    func() time.Time
	log    hclog.Logger
	held   atomic.Bool
	rev    uint64 // of our last write; only the loop touches it
	gained chan struct{}
}

func newLease(kv jetstream.KeyValue, ttl time.Duration, now func() time.Time, log hclog.Logger) *lease {
	var b [8]byte
	_, _ = rand.Read(b[:])
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	return &lease{kv: kv, id: hex.EncodeToString(b[:]), ttl: ttl, now: now, log: log, gained: make(chan struct{}, 1)}
}

// Held reports whether this replica holds the lease now.
func (l *lease) Held() bool { return l.held.Load() }

// run renews or seeks the lease every third of its TTL until ctx ends,
// then releases it. It signals gained each time it takes the lease.
func (l *lease) run(ctx context.Context) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		l.tick(ctx)
		select {
		case <-ctx.Done():
			l.release()
			return
		case <-t.C:
		}
	}
}

// tick makes one attempt to renew or take the lease.
func (l *lease) tick(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, l.ttl/3)
	defer cancel()
	was := l.held.Load()
	held, err := l.try(ctx)
	if err != nil && ctx.Err() == nil {
		l.log.Warn("background lease", "error", err)
	}
	l.held.Store(held)
	switch {
	case held && !was:
		l.log.Info("background lease taken: this replica reconciles", "replica", l.id)
		select {
		case l.gained <- struct{}{}:
		default:
		}
	case !held && was:
		l.log.Warn("background lease lost", "replica", l.id)
	}
}

func (l *lease) try(ctx context.Context) (bool, error) {
	mine, err := json.Marshal(leaseValue{Holder: l.id, Expires: l.now().Add(l.ttl).UTC()})
	if err != nil {
		return false, err
	}
	e, err := l.kv.Get(ctx, leaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		rev, err := l.kv.Create(ctx, leaseKey, mine)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // another replica was quicker
		}
		if err != nil {
			return false, fmt.Errorf("taking the lease: %w", err)
		}
		l.rev = rev
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the lease: %w", err)
	}
	var cur leaseValue
	if json.Unmarshal(e.Value(), &cur) != nil {
		cur = leaseValue{} // garbage: expired
	}
	if cur.Holder != l.id && l.now().Before(cur.Expires) {
		return false, nil
	}
	rev, err := l.kv.Update(ctx, leaseKey, mine, e.Revision())
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("renewing the lease: %w", err)
	}
	l.rev = rev
	return true, nil
}

// release gives the lease up, so that another replica takes it over at its
// next tick rather than after the TTL.
func (l *lease) release() {
	if !l.held.Swap(false) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, _ := json.Marshal(leaseValue{Holder: "", Expires: time.Time{}})
	if _, err := l.kv.Update(ctx, leaseKey, b, l.rev); err != nil {
		l.log.Debug("releasing the background lease", "error", err)
	}
}

// background runs the lease and the work it guards until ctx ends: a
// reconciliation each time this replica takes the lease over, and every
// interval (0: never) while it holds it.
func (s *Service) background(ctx context.Context, interval time.Duration) {
	s.bg.Go(func() { s.lease.run(ctx) }) // owned by the Service: ends with ctx (Stop)
	s.bg.Go(func() {                     // owned by the Service: ends with ctx (Stop)
		var tick <-chan time.Time
		if interval > 0 {
			t := time.NewTicker(interval)
			defer t.Stop()
			tick = t.C
		}
		for {
			why := "background lease taken"
			select {
			case <-ctx.Done():
				return
			case <-s.lease.gained:
			case <-tick:
				if !s.lease.Held() {
					continue
				}
				why = "periodic"
			}
			s.reconcileNow(ctx, why)
		}
	})
}

// reconcileNow reconciles every secret with the current directory.
func (s *Service) reconcileNow(ctx context.Context, why string) {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, reconcileTimeout)
	defer cancel()
	changed, failed, err := s.reconcile(ctx, s.dir.Load(), nil)
	s.log.Info("reconciled", "why", why, "secrets_changed", changed, "secrets_failed", len(failed))
	for _, e := range failed[:min(len(failed), maxReportedFailures)] {
		s.log.Error("reconciling secret", "error", e)
	}
	if err != nil && ctx.Err() == nil {
		s.log.Error("reconciling", "error", err)
	}
}
