package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
// key; on a gap, a dropped message, a reconnect, an access change and every
// LiveRefresh it reads everything again with a fresh consumer. A record
// goes through the same checks as in consumer mode (applyRecord: signature,
// workspace, key, scope, replay floor).

// Delivery modes of Config.Delivery.
const (
	DeliveryConsumer = "consumer" // a consumer of the agent's own for as long as it runs (default)
	DeliveryLive     = "live"     // republished records over core NATS, a consumer only to read what is stored
)

// LivePrefix is where the records stream republishes each record: the
// record under key <ws>.<secret> goes to LivePrefix+"<ws>.<secret>". The
// control plane's RePublish destination (controlplane.LivePrefix) and
// natsauth's permissions use the same.
const LivePrefix = "nbsecrets.live."

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
)

// Reasons a live read ends and starts over (besides errResync and
// errReconnected).
var (
	errLiveGap     = errors.New("agent: a republished record does not follow the one held; reading the records again")
	errLiveDropped = errors.New("agent: republished records were dropped; reading the records again")
	errLiveRefresh = errors.New("agent: periodic re-read of the records")
	// errLiveDenied: the server refused the live subscription (NATS
	// permissions from before live delivery): the syncer falls back to
	// consumer delivery for the rest of the run.
	errLiveDenied = errors.New("agent: the NATS server refused the subscription to the live records")
)

// validDelivery checks Config.Delivery.
func validDelivery(d string) error {
	switch d {
	case "", DeliveryConsumer, DeliveryLive:
		return nil
	}
	return fmt.Errorf("agent: delivery %q: want %q or %q", d, DeliveryConsumer, DeliveryLive)
}

// consumeLive subscribes to the workspace's republished records, reads what
// is stored, then applies republished records until something calls for a
// new read (see the errors above) or ctx ends.
func (s *syncer) consumeLive(ctx context.Context) error {
	nc := s.js.Conn()
	reconnects := nc.Stats().Reconnects
	lastErr := nc.LastError()
	ch := make(chan *nats.Msg, liveBuffer)
	sub, err := nc.ChanSubscribe(LiveSubject(s.ws), ch)
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", LiveSubject(s.ws), err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// The subscription is in place at the server before the read starts, so
	// every record stored after the read's consumer was made arrives here.
	if err := nc.FlushTimeout(pullExpiry); err != nil {
		return fmt.Errorf("subscribing to %s: %w", LiveSubject(s.ws), err)
	}
	// The server answers a refused subscription before the flush's pong;
	// the client keeps it as the connection's last error.
	if err := nc.LastError(); err != nil && err != lastErr && errors.Is(err, nats.ErrPermissionViolation) &&
		strings.Contains(err.Error(), `"`+LiveSubject(s.ws)+`"`) {
		return fmt.Errorf("%w: %w", errLiveDenied, err)
	}
	held, err := s.readStored(ctx)
	if err != nil {
		return err
	}
	refresh := s.liveRefresh
	if refresh <= 0 {
		refresh = defaultLiveRefresh
	}
	again := time.NewTimer(refresh + rand.N(refresh/2+1))
	defer again.Stop()
	tick := time.NewTicker(reconnectPoll)
	defer tick.Stop()
	var accessC <-chan struct{}
	if s.access != nil {
		accessC = s.access.notify
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-ch:
			if err := s.handleLive(m, held); err != nil {
				return err
			}
			if len(ch) == 0 {
				s.publish() // end of a burst
			}
		case <-tick.C:
			if nc.Stats().Reconnects != reconnects {
				return errReconnected
			}
			if n, err := sub.Dropped(); err != nil || n > 0 {
				return errLiveDropped
			}
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
		}
	}
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
