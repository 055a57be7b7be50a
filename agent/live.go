package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// Live delivery (Config.Delivery "live"): no standing consumer per agent.
// The service has the records stream republish every record it stores
// (RePublish, done by the stream leader once stored) from
// $KV.nbsecrets.<ws>.<secret> to LivePrefix+<ws>.<secret>. The agent
// subscribes to its workspace's there with core NATS first, then reads what
// is stored with its one named consumer, which it deletes once read; the
// server then routes each new record through its subject index and keeps no
// consumer for the agent (see the README's fan-out section for why that
// matters at thousands of workspaces).
//
// Core NATS may drop a message (a slow consumer, a disconnect, a stream
// leader that crashed between storing and republishing). Each republished
// record carries Nats-Sequence (its stream sequence) and Nats-Last-Sequence
// (the sequence the same subject held before it, 0 for a new key), so the
// agent applies one only when it follows the sequence it holds for that
// key; on a gap, a dropped message, a reconnect, an access change, a
// leader election of the records stream (LeaderElected, after a random
// wait of up to liveLeaderJitter) and every defaultLiveRefresh it reads
// everything again with a fresh consumer. A record goes through the same
// checks as in consumer mode (applyRecord: signature, workspace, key,
// scope, replay floor).
//
// Live delivery falls back to consumer delivery for the rest of the run,
// with an error log saying why, when the server refuses either
// subscription (permissions generated before them) and when a periodic
// read finds a record that never came live (a records stream that does not
// republish: see errLiveNotRepublished).

// Delivery modes of Config.Delivery.
const (
	DeliveryConsumer = "consumer" // a consumer of the agent's own for as long as it runs (Config's zero value; the commands default to live)
	DeliveryLive     = "live"     // republished records over core NATS, a consumer only to read what is stored
)

// LivePrefix is where the records stream republishes each record: the
// record under key <ws>.<secret> goes to LivePrefix+"<ws>.<secret>". The
// control plane's RePublish destination (controlplane.LivePrefix) and
// natsauth's permissions use the same.
const LivePrefix = "nbsecrets.live."

// LeaderElected is the advisory the server publishes when the records
// stream elects a leader (a JetStream cluster only). Only the stream's
// leader republishes a record, when it stores it; a leader that crashes
// between storing a record (committed by its raft group) and
// republishing it leaves it to no one: its successor had stored it as a
// follower. So a live agent reads everything again after each election.
// natsauth exports it from the service's account to the agents', to
// subscribe only. controlplane.LeaderElected is the same.
const LeaderElected = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.KV_" + protocol.Bucket

// LiveSubject is the subscription of ws's agent in live mode.
func LiveSubject(ws string) string { return LivePrefix + ws + ".>" }

const (
	// defaultLiveRefresh is how often a live agent reads everything again
	// even when nothing looked wrong: it bounds how long a record lost
	// without a sign (its stream leader crashed after storing it, before
	// republishing it, and no later record of that key came) goes unseen.
	// Each read makes and deletes a consumer: 10,000 agents at 5 minutes
	// are about 33 a second, a tenth of what one server makes (README), and
	// a random half period more spreads agents that all read at once (after
	// a server restart) over time.
	defaultLiveRefresh = 5 * time.Minute
	// liveBuffer is how many republished records wait for the agent before
	// the client drops some (then noticed: a re-read). A workspace holds at
	// most protocol.MaxWorkspaceSecrets records, so a full read's worth of
	// updates fits.
	liveBuffer = 4 * protocol.MaxWorkspaceSecrets
	liveFetch  = 256 // records per fetch while reading what is stored
	// liveLeaderJitter bounds the random wait between the records stream
	// electing a leader and the read that follows: 10,000 agents' reads
	// (a consumer each, made and deleted) spread over it.
	liveLeaderJitter = 2 * time.Second
	// liveVerdict is how long after a periodic read a record it found,
	// stored since the previous read and never delivered live, may still
	// arrive live (it was on its way) before the agent concludes that the
	// stream does not republish.
	liveVerdict = 5 * time.Second
)

// Reasons a live read ends and starts over (besides errResync and
// errReconnected).
var (
	errLiveGap     = errors.New("agent: a republished record does not follow the one held; reading the records again")
	errLiveDropped = errors.New("agent: republished records were dropped; reading the records again")
	errLiveRefresh = errors.New("agent: periodic re-read of the records")
	errLiveLeader  = errors.New("agent: the records stream elected a leader; reading the records again")
	// errLiveDenied: the server refused the live subscription (NATS
	// permissions from before live delivery): the syncer falls back to
	// consumer delivery for the rest of the run.
	errLiveDenied = errors.New("agent: the NATS server refused the subscription to the live records")
	// errLiveNotRepublished: the records stream does not republish (a
	// service from before live delivery, or one run with --live=false on
	// a bucket it made without): the syncer falls back to consumer
	// delivery for the rest of the run.
	errLiveNotRepublished = errors.New("agent: the records stream does not republish")
)

// validDelivery checks Config.Delivery.
func validDelivery(d string) error {
	switch d {
	case "", DeliveryConsumer, DeliveryLive:
		return nil
	}
	return fmt.Errorf("agent: delivery %q: want %q or %q", d, DeliveryConsumer, DeliveryLive)
}

// consumeLive subscribes to the workspace's republished records and to the
// records stream's leader elections, reads what is stored, then applies
// republished records until something calls for a new read (see the errors
// above) or ctx ends.
func (s *syncer) consumeLive(ctx context.Context) error {
	nc := s.js.Conn()
	reconnects := nc.Stats().Reconnects
	lastErr := nc.LastError()
	// Synchronous subscriptions: with nats.PermissionErrOnSubscribe (set by
	// Connect) the server's refusal of a subscription is that
	// subscription's own error (NextMsg), whatever else is refused on the
	// connection at the same moment.
	sub, err := nc.SubscribeSync(LiveSubject(s.ws))
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", LiveSubject(s.ws), err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sub.SetPendingLimits(liveBuffer, -1); err != nil {
		return fmt.Errorf("subscribing to %s: %w", LiveSubject(s.ws), err)
	}
	leader, err := nc.SubscribeSync(LeaderElected)
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", LeaderElected, err)
	}
	defer func() { _ = leader.Unsubscribe() }()
	// The subscriptions are in place at the server before the read starts,
	// so every record stored after the read's consumer was made arrives
	// here. The server answers a refused subscription before the flush's
	// pong.
	if err := nc.FlushTimeout(pullExpiry); err != nil {
		return fmt.Errorf("subscribing to %s: %w", LiveSubject(s.ws), err)
	}
	first, err := refused(nc, sub, lastErr)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errLiveDenied, LiveSubject(s.ws), err)
	}
	if _, err := refused(nc, leader, lastErr); err != nil { // an election now is no news: the read follows
		return fmt.Errorf("%w: %s: %w", errLiveDenied, LeaderElected, err)
	}
	check := s.liveCheck && s.liveRead != nil
	s.liveCheck = false
	held, err := s.readStored(ctx)
	if err != nil {
		return err
	}
	// After a read that nothing called for (the periodic one), a record
	// stored since the previous read that never came live, and still does
	// not within liveVerdict, means the records stream does not republish
	// (see errLiveNotRepublished); the gap, drop, reconnect and election
	// reads expect such records, and every other read does not check.
	var suspects map[string]uint64
	if check {
		for key, seq := range held {
			if seq > max(s.liveRead[key], s.liveSeen[key]) {
				if suspects == nil {
					suspects = map[string]uint64{}
				}
				suspects[key] = seq
			}
		}
	}
	s.liveRead = maps.Clone(held)
	verdict := time.NewTimer(liveVerdict)
	if suspects == nil {
		verdict.Stop()
	}
	defer verdict.Stop()
	refresh := s.liveRefresh
	if refresh <= 0 {
		refresh = defaultLiveRefresh
	}
	every := refresh + rand.N(refresh/2+1)
	if suspects != nil {
		every = max(every, liveVerdict+reconnectPoll) // the verdict first
	}
	again := time.NewTimer(every)
	defer again.Stop()
	// elected fires a random while (0 to liveLeaderJitter) after the
	// records stream elected a leader: a read then picks up what the
	// previous leader stored and never republished. Spread so that
	// thousands of agents do not all make a consumer at the same instant.
	elected := time.NewTimer(time.Hour)
	elected.Stop()
	electing := false
	defer elected.Stop()
	var accessC <-chan struct{}
	if s.access != nil {
		accessC = s.access.notify
	}
	for {
		m := first
		first = nil
		if m == nil {
			// Waits for a record, at most reconnectPoll: the checks below
			// run at least that often.
			m, err = sub.NextMsg(reconnectPoll)
		}
		switch {
		case m != nil:
			if err := s.handleLive(m, held); err != nil {
				return err
			}
			if n, _, _ := sub.Pending(); n == 0 {
				s.publish() // end of a burst
			}
		case errors.Is(err, nats.ErrTimeout):
		case errors.Is(err, nats.ErrSlowConsumer):
			return errLiveDropped
		case errors.Is(err, nats.ErrPermissionViolation):
			// Refused after a reconnect (the server's permissions changed).
			return fmt.Errorf("%w: %s: %w", errLiveDenied, LiveSubject(s.ws), err)
		default:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reading %s: %w", LiveSubject(s.ws), err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if nc.Stats().Reconnects != reconnects {
			return errReconnected
		}
		if n, err := sub.Dropped(); err != nil || n > 0 {
			return errLiveDropped
		}
		if n, _, _ := leader.Pending(); n > 0 {
			for range n {
				if _, err := leader.NextMsg(0); err != nil {
					break
				}
			}
			if !electing {
				electing = true
				wait := rand.N(s.leaderJitter() + 1)
				s.log.Info("the records stream elected a leader; reading the records again shortly", "in", wait.Round(time.Millisecond))
				elected.Reset(wait)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-accessC:
			if ws, ok := s.access.take(); ok {
				dropped := s.st.setAccess(ws)
				s.log.Info("workspace access changed; reading the records again", "owner", ws.Owner,
					"projects", strings.Join(ws.Projects, ","), "communities", strings.Join(ws.Communities, ","),
					"secrets_dropped", dropped)
			}
			return errResync
		case <-again.C:
			return errLiveRefresh
		case <-elected.C:
			return errLiveLeader
		case <-verdict.C:
			var missed []string
			for key, seq := range suspects {
				if s.liveSeen[key] < seq {
					missed = append(missed, key)
				}
			}
			if len(missed) > 0 {
				slices.Sort(missed)
				return fmt.Errorf("%w: %d records stored since the previous read never arrived live (keys %s)",
					errLiveNotRepublished, len(missed), strings.Join(missed, ", "))
			}
		default:
		}
	}
}

// refused returns the server's refusal of sub, waiting for nothing (the
// caller flushed after subscribing), and otherwise a record already
// delivered to it (nil if none). On a connection made with
// nats.PermissionErrOnSubscribe, as Connect makes it, the refusal is sub's
// own. On one made without, the best there is: the connection's last error
// if it changed since before and is a permissions violation naming sub's
// subject.
func refused(nc *nats.Conn, sub *nats.Subscription, before error) (*nats.Msg, error) {
	if nc.Opts.PermissionErrOnSubscribe {
		m, err := sub.NextMsg(0)
		if errors.Is(err, nats.ErrPermissionViolation) {
			return nil, err
		}
		return m, nil
	}
	if err := nc.LastError(); err != nil && err != before && errors.Is(err, nats.ErrPermissionViolation) &&
		strings.Contains(err.Error(), `"`+sub.Subject+`"`) {
		return nil, err
	}
	return nil, nil
}

func (s *syncer) leaderJitter() time.Duration {
	if s.liveJitter > 0 {
		return s.liveJitter
	}
	return liveLeaderJitter
}

// readStored reads the last record of every key of the workspace with the
// workspace's consumer, deletes the consumer, publishes the state, and
// returns the stream sequence it read for each key.
func (s *syncer) readStored(ctx context.Context) (map[string]uint64, error) {
	cons, err := s.newConsumer(ctx)
	if err != nil {
		return nil, err
	}
	if s.storedReads != nil {
		s.storedReads.Add(1)
	}
	held := map[string]uint64{}
	var pending uint64
	if info := cons.CachedInfo(); info != nil {
		pending = info.NumPending
	}
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, liveFetch)), jetstream.FetchMaxWait(pullExpiry))
		if err != nil {
			return nil, fmt.Errorf("reading the records: %w", err)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			meta, err := msg.Metadata()
			if err != nil {
				return nil, fmt.Errorf("reading the records: %w", err)
			}
			pending = meta.NumPending
			if key, ok := protocol.KeyFromSubject(msg.Subject()); ok {
				held[key] = meta.Sequence.Stream
			}
			s.handle(msg)
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("reading the records: %w", err)
		}
		if got == 0 {
			return nil, fmt.Errorf("reading the records: nothing delivered with %d pending", pending)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, pullExpiry)
	defer cancel()
	if err := s.js.DeleteConsumer(dctx, protocol.StreamName(), protocol.ConsumerName(s.ws)); err != nil &&
		!errors.Is(err, jetstream.ErrConsumerNotFound) {
		// Harmless: its inactivity threshold removes it; the next read
		// deletes it first anyway.
		s.log.Warn("deleting the consumer after reading", "error", err)
	}
	_, wasLoaded := s.st.snapshot()
	s.publish()
	if !wasLoaded {
		d, _ := s.st.snapshot()
		s.log.Info("records loaded", "secrets", len(d.Env), "delivery", DeliveryLive)
	}
	return held, nil
}

// handleLive checks that m is a republished record of this workspace that
// follows the one held for its key, and applies it. A message already read
// is skipped; one that does not follow returns errLiveGap. A message that
// is not a republished record of this workspace's stream is refused.
func (s *syncer) handleLive(m *nats.Msg, held map[string]uint64) error {
	key, ok := strings.CutPrefix(m.Subject, LivePrefix)
	if !ok || !strings.HasPrefix(key, s.ws+".") {
		s.refuse(m.Subject, "subject outside the workspace's live records", nil)
		return nil
	}
	h := m.Header
	if h.Get("Nats-Stream") != protocol.StreamName() ||
		h.Get("Nats-Subject") != "$KV."+protocol.Bucket+"."+key {
		s.refuse(key, "not a republished record", nil)
		return nil
	}
	seq, err1 := strconv.ParseUint(h.Get("Nats-Sequence"), 10, 64)
	prev, err2 := strconv.ParseUint(h.Get("Nats-Last-Sequence"), 10, 64)
	if err1 != nil || err2 != nil || seq == 0 || prev >= seq {
		s.refuse(key, "republished record without valid sequences", nil)
		return nil
	}
	if s.liveSeen == nil {
		s.liveSeen = map[string]uint64{}
	}
	s.liveSeen[key] = max(s.liveSeen[key], seq)
	have := held[key]
	switch {
	case seq <= have:
		return nil // read already, or older
	case prev != have:
		s.log.Info("republished record does not follow the one held", "key", key, "held", have, "previous", prev)
		return errLiveGap
	}
	at, _ := time.Parse(time.RFC3339Nano, h.Get("Nats-Time-Stamp"))
	if s.applyRecord(key, h.Get("KV-Operation"), m.Data, at) {
		// Only a record that passed moves the sequence on: a refused one
		// (perhaps not from the stream at all) leaves it, and if it was
		// the stream's, the next record of its key is a gap and a new read.
		held[key] = seq
	}
	return nil
}
