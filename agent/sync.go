package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// syncer reads the workspace's records into the store: the workspace's one
// consumer (protocol.ConsumerName), last value per subject, one filter
// subject. The first load is the whole desired state (tombstones included),
// so a delete missed while the agent was away is still applied; after that
// every new record follows. After a NATS server restart, missed heartbeats
// or a reconnect it reads everything again with a fresh consumer, so
// nothing is lost.
type syncer struct {
	js     jetstream.JetStream
	ws     string
	opener *protocol.Opener
	st     *store
	log    hclog.Logger
	now    func() time.Time
	// published runs after every publish (nil: nothing), on this goroutine.
	published func()
	// access carries changes of what the workspace may have (nil: none).
	access *accessBox
	// live reads with consumeLive instead of consume (see live.go);
	// liveRefresh is its periodic re-read (0: defaultLiveRefresh).
	live        bool
	liveRefresh time.Duration
	storedReads *atomic.Int64           // counts consumeLive's reads (nil: none)
	liveJitter  time.Duration           // tests: the wait after a leader election (0: liveLeaderJitter)
	inUse       *atomic.Pointer[string] // set to the delivery mode in use (nil: none)
	// Across live reads: the sequence of each key the previous read found,
	// the highest delivered live, and whether the next read checks for
	// records never delivered live (after a periodic re-read).
	liveRead  map[string]uint64
	liveSeen  map[string]uint64
	liveCheck bool
}

// accessBox hands the newest access change to the syncer: Agent.SetAccess
// puts, the syncer takes; a change not taken yet is replaced by a newer one.
type accessBox struct {
	mu      sync.Mutex
	pending *Workspace
	notify  chan struct{} // capacity 1: a change is waiting
}

func newAccessBox() *accessBox { return &accessBox{notify: make(chan struct{}, 1)} }

func (b *accessBox) put(ws Workspace) {
	b.mu.Lock()
	b.pending = &ws
	b.mu.Unlock()
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

func (b *accessBox) take() (Workspace, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending == nil {
		return Workspace{}, false
	}
	ws := *b.pending
	b.pending = nil
	return ws, true
}

// errResync ends a consumer so that the records are read again from the
// start, after a change of what the workspace may have.
var errResync = errors.New("agent: access changed; reading the records again")

func (s *syncer) publish() {
	before, _ := s.st.snapshot()
	s.st.publish(s.now())
	if d, _ := s.st.snapshot(); d != before && len(d.OverBudget) > 0 {
		names := make([]string, 0, len(d.OverBudget))
		for _, o := range d.OverBudget {
			names = append(names, o.Name+" ("+o.Scope.String()+")")
		}
		s.log.Warn("secrets left out of the kernels: the workspace's environment would pass its budget",
			"names", strings.Join(names, ", "), "max_secrets", protocol.MaxWorkspaceSecrets,
			"max_bytes", protocol.MaxWorkspaceEnvBytes, "kept", len(d.Env))
	}
	if s.published != nil {
		// st.publish made the kernels' workers runnable, the first of them
		// in this P's next slot, where it waits until this goroutine blocks;
		// the state file's create, write and rename take about a millisecond
		// (measured with timestamps at each stage under the bench), so let
		// the workers send the change first. The file is still written
		// before the next record is read.
		runtime.Gosched()
		s.published()
	}
}

func (s *syncer) run(ctx context.Context) {
	bo := backoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	read := s.consume
	s.using(DeliveryConsumer)
	if s.live {
		read = s.consumeLive
		s.using(DeliveryLive)
	}
	for ctx.Err() == nil {
		err := read(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errResync) {
			// Publish what the change took away now; what it gives comes
			// with the new read.
			if _, loaded := s.st.snapshot(); loaded {
				s.publish()
			}
			continue
		}
		if errors.Is(err, errLiveDenied) {
			s.log.Error("live delivery refused by the NATS server's permissions (generated before live delivery or before its leader-election subject? regenerate them with 'nbsecrets nats-config'); reading with a consumer of the agent's own instead",
				"error", err)
			read = s.consume
			s.using(DeliveryConsumer)
			continue
		}
		if errors.Is(err, errLiveNotRepublished) {
			s.log.Error("live delivery gets no records: the records stream does not republish them (a secrets service from before live delivery, or 'serve --live=false' on a bucket made without it); reading with a consumer of the agent's own instead",
				"subject", LiveSubject(s.ws), "error", err)
			read = s.consume
			s.using(DeliveryConsumer)
			continue
		}
		if errors.Is(err, errLiveGap) || errors.Is(err, errLiveDropped) || errors.Is(err, errLiveRefresh) || errors.Is(err, errLiveLeader) {
			s.log.Info("reading the records again", "reason", err)
			s.liveCheck = errors.Is(err, errLiveRefresh)
			continue
		}
		if errors.Is(err, errReconnected) {
			s.log.Info("NATS connection re-established; reading the records again")
			continue
		}
		s.log.Warn("reading records interrupted; retrying", "error", err)
		if !waitCtx(ctx, bo.next()) {
			return
		}
	}
}

// using notes the delivery mode in use for Status.
func (s *syncer) using(mode string) {
	if s.inUse != nil {
		s.inUse.Store(&mode)
	}
}

// errReconnected ends a consumer after the connection came back: the
// server may have restarted and lost it.
var errReconnected = errors.New("agent: NATS connection re-established; reading the records again")

// Reading the records. The agent has one consumer of its own,
// protocol.ConsumerName, so that NATS permissions can give it exactly that
// name (create, pull, delete) and no other. Each read starts afresh: the
// consumer is deleted if left over (by a previous run or a lost
// connection), created anew with the last record of each key, and read;
// when it fails (missed heartbeats, deleted, the connection re-established)
// the next read starts over. A workspace has few records (the budget), and
// the store ignores those it holds, so a fresh read is cheap.
const (
	pullExpiry = 15 * time.Second // a pull request's life
	// pullHeartbeat is how often the server tells an idle consumer it is
	// still there. Two missed in a row end the read and the next one makes
	// the consumer anew (on another node of a cluster), so it bounds how
	// long a crashed node's consumer goes unnoticed (nats.go's default, 5s,
	// made that 10s); each idle agent costs the server one message per
	// period.
	pullHeartbeat = 2 * time.Second
	reconnectPoll = 250 * time.Millisecond
)

// newConsumer replaces the workspace's consumer with a fresh one that
// delivers the last record of every key, then everything after.
func (s *syncer) newConsumer(ctx context.Context) (jetstream.Consumer, error) {
	stream, name := protocol.StreamName(), protocol.ConsumerName(s.ws)
	if err := s.js.DeleteConsumer(ctx, stream, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("deleting the previous consumer %s: %w", name, err)
	}
	cons, err := s.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Name:              name,
		FilterSubject:     protocol.WorkspaceFilter(s.ws), // exactly one: see protocol's doc
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: 5 * time.Minute,
		Replicas:          1,
		MemoryStorage:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the consumer %s: %w", name, err)
	}
	return cons, nil
}

// consume reads records until ctx ends or the consumer fails.
func (s *syncer) consume(ctx context.Context) error {
	cons, err := s.newConsumer(ctx)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return err
	}
	stopped := make(chan struct{})
	defer close(stopped)
	var accessC <-chan struct{}
	if s.access != nil {
		accessC = s.access.notify
	}
	var resync, reconnected atomic.Bool
	nc := s.js.Conn()
	reconnects := nc.Stats().Reconnects
	go func() { // owned by consume: ends with it
		tick := time.NewTicker(reconnectPoll)
		defer tick.Stop()
	wait:
		for {
			select {
			case <-ctx.Done():
			case <-stopped:
			case <-tick.C:
				if nc.Stats().Reconnects == reconnects {
					continue
				}
				reconnected.Store(true)
			case <-accessC:
				if ws, ok := s.access.take(); ok {
					dropped := s.st.setAccess(ws)
					s.log.Info("workspace access changed; reading the records again", "owner", ws.Owner,
						"projects", strings.Join(ws.Projects, ","), "communities", strings.Join(ws.Communities, ","),
						"secrets_dropped", dropped)
				}
				resync.Store(true)
			}
			break wait
		}
		it.Stop()
	}()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		s.publish() // nothing to load: the desired state is empty
		s.log.Info("records loaded", "records", 0)
	}
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				switch {
				case resync.Load():
					return errResync
				case reconnected.Load():
					return errReconnected
				}
				return ctx.Err()
			}
			return err
		}
		s.handle(msg)
		if meta, err := msg.Metadata(); err == nil && meta.NumPending == 0 {
			// End of a burst: publish the final state once.
			_, wasLoaded := s.st.snapshot()
			s.publish()
			if !wasLoaded {
				d, _ := s.st.snapshot()
				s.log.Info("records loaded", "secrets", len(d.Env))
			}
		}
	}
}

// handle verifies, checks and applies one record. A bad record is refused
// and logged by key and reason, never by value; the rest keep flowing.
func (s *syncer) handle(msg jetstream.Msg) {
	key, ok := protocol.KeyFromSubject(msg.Subject())
	if !ok {
		s.refuse(msg.Subject(), "subject outside the bucket", nil)
		return
	}
	var at time.Time
	if meta, err := msg.Metadata(); err == nil {
		at = meta.Timestamp
	}
	s.applyRecord(key, msg.Headers().Get("KV-Operation"), msg.Data(), at)
}

// applyRecord is handle's checks and apply of the record stored under key
// (op: its KV-Operation header), whichever way it came (see live.go). It
// reports whether the store holds the record now (applied, or held
// already); false: refused.
func (s *syncer) applyRecord(key, op string, data []byte, at time.Time) bool {
	if op != "" {
		// Delete and purge markers carry no payload and cannot be signed:
		// the service writes deletions as signed tombstones instead.
		s.refuse(key, "unsigned "+op+" marker", nil)
		return false
	}
	sec, err := s.opener.Open(key, data)
	if err != nil {
		s.refuse(key, reason(err), err)
		return false
	}
	if err := s.st.apply(sec, at); err != nil {
		if errors.Is(err, errStale) {
			if v, ok := s.st.version(sec.SecretID); ok && v == sec.Version {
				s.log.Debug("record already held", "key", key, "version", sec.Version)
				return true
			}
		}
		s.refuse(key, reason(err), err)
		return false
	}
	s.log.Debug("record accepted", "key", key, "name", sec.Name, "op", sec.Op, "version", sec.Version, "scope", sec.Scope.String())
	return true
}

func (s *syncer) refuse(key, why string, err error) {
	s.st.refuse(why)
	if err != nil {
		s.log.Warn("record refused", "key", key, "reason", why, "error", err)
	} else {
		s.log.Warn("record refused", "key", key, "reason", why)
	}
}

// reason is a short, value-free label of why a record was refused, for logs
// and status counters.
func reason(err error) string {
	for _, r := range []struct {
		err   error
		label string
	}{
		{protocol.ErrBadSignature, "bad signature"},
		{protocol.ErrWrongWorkspace, "another workspace"},
		{protocol.ErrKeyMismatch, "key mismatch"},
		{protocol.ErrUnknownFormat, "unknown format"},
		{protocol.ErrTooLarge, "too large"},
		{protocol.ErrMalformed, "malformed"},
		{protocol.ErrCannotOpen, "cannot open"},
		{protocol.ErrBindingMismatch, "sealed for another record"},
		{protocol.ErrForbiddenName, "forbidden name"},
		{protocol.ErrInvalidName, "invalid name"},
		{protocol.ErrInvalidID, "invalid id"},
		{protocol.ErrNULInValue, "value with NUL"},
		{protocol.ErrInvalidValue, "value not UTF-8"},
		{protocol.ErrValueTooLarge, "value too large"},
		{ErrScopeNotAllowed, "scope not allowed"},
		{errStale, "replayed older version"},
	} {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "invalid"
}
