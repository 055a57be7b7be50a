package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// setRePublish sets (on) or removes (off) the records stream's RePublish to
// LivePrefix, as the service's Options.Live does.
func (h *harness) setRePublish(on bool) {
	h.t.Helper()
	js, _ := jetstream.New(h.nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, protocol.StreamName())
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.RePublish = nil
	if on {
		cfg.RePublish = &jetstream.RePublish{Source: "$KV." + protocol.Bucket + ".>", Destination: LivePrefix + ">"}
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		h.t.Fatal(err)
	}
}

func newLiveHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.setRePublish(true)
	return h
}

func (h *harness) startLiveAgent() *runningAgent {
	h.t.Helper()
	return h.startAgentWith(func(c *Config) { c.Delivery = DeliveryLive })
}

// waitDesired waits until the agent's desired state holds value under name
// ("" for absent).
func waitDesired(t *testing.T, a *runningAgent, name, value string) {
	t.Helper()
	waitFor(t, 20*time.Second, func() error {
		d, loaded := a.st.snapshot()
		if !loaded {
			return errors.New("records not loaded")
		}
		v, ok := d.Env[name]
		switch {
		case value == "" && ok:
			return fmt.Errorf("%s still set", name)
		case value != "" && !ok:
			return fmt.Errorf("%s not set", name)
		case value != "" && string(v.Value) != value:
			return fmt.Errorf("%s has another value (version %d)", name, v.Version)
		}
		return nil
	})
}

// consumerGone waits until the workspace's consumer no longer exists: a
// live agent keeps none once it has read what is stored.
func (h *harness) consumerGone() {
	h.t.Helper()
	js, _ := jetstream.New(h.nc)
	waitFor(h.t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.Consumer(ctx, protocol.StreamName(), protocol.ConsumerName(h.ws.ID))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil
		}
		return fmt.Errorf("consumer still there: %v", err)
	})
}

// TestLiveDeliveryCreateUpdateDelete: in live mode what is stored is read, the
// consumer is deleted, and later creates, updates and deletes arrive over
// the republished subject without another read.
func TestLiveDeliveryCreateUpdateDelete(t *testing.T) {
	h := newLiveHarness(t)
	v0, v1, v2 := secretValue("live0"), secretValue("live1"), secretValue("live2")
	h.put("s0", "STORED", 1, v0)
	a := h.startLiveAgent()
	waitDesired(t, a, "STORED", v0)
	h.consumerGone()
	reads := a.storedReads.Load()

	h.put("s1", "LIVE", 1, v1)
	waitDesired(t, a, "LIVE", v1)
	h.put("s1", "LIVE", 2, v2)
	waitDesired(t, a, "LIVE", v2)
	h.del("s0", "STORED", 2)
	waitDesired(t, a, "STORED", "")
	if got := a.storedReads.Load(); got != reads {
		t.Errorf("the changes took %d new reads of the stored records; want none (live delivery)", got-reads)
	}
	h.consumerGone()
}

// TestLiveGapReread: records stored while nothing was republished (a lost
// message) are noticed by the next record's Nats-Last-Sequence, and read.
func TestLiveGapReread(t *testing.T) {
	h := newLiveHarness(t)
	v1, v2, v3, other := secretValue("gap1"), secretValue("gap2"), secretValue("gap3"), secretValue("gapother")
	a := h.startLiveAgent()
	h.put("s1", "GAPPY", 1, v1)
	waitDesired(t, a, "GAPPY", v1)
	reads := a.storedReads.Load()

	h.setRePublish(false) // the agent never sees these two
	h.put("s1", "GAPPY", 2, v2)
	h.put("s2", "MISSED", 1, other)
	h.setRePublish(true)
	h.put("s1", "GAPPY", 3, v3) // its previous sequence is v2's, not v1's
	waitDesired(t, a, "GAPPY", v3)
	// MISSED comes only from a new read: its own record was never
	// republished and the periodic read is minutes away.
	waitDesired(t, a, "MISSED", other)
	if a.storedReads.Load() <= reads {
		t.Error("the gap did not make a new read")
	}
}

// TestLivePeriodicRead: a record lost with no later record of its key
// still arrives with the periodic read.
func TestLivePeriodicRead(t *testing.T) {
	h := newLiveHarness(t)
	a := h.startAgentWith(func(c *Config) { c.Delivery = DeliveryLive; c.liveRefresh = 500 * time.Millisecond })
	v1 := secretValue("periodic")
	waitFor(t, 20*time.Second, func() error {
		if _, loaded := a.st.snapshot(); !loaded {
			return errors.New("not loaded")
		}
		return nil
	})
	h.setRePublish(false)
	h.put("s1", "QUIET", 1, v1)
	waitDesired(t, a, "QUIET", v1)
}

// TestLiveNATSServerRestart: the server goes away and comes back with its
// store; the agent reads again and follows changes made afterwards.
func TestLiveNATSServerRestart(t *testing.T) {
	h := newLiveHarness(t)
	a := h.startLiveAgent()
	v1, v2, v3 := secretValue("r1"), secretValue("r2"), secretValue("r3")
	h.put("s1", "ROTATED", 1, v1)
	h.put("s2", "DOOMED", 1, v1)
	waitDesired(t, a, "ROTATED", v1)
	waitDesired(t, a, "DOOMED", v1)

	h.ns = natstest.Restart(t, h.ns)
	h.connect()
	h.setRePublish(true) // connect's CreateOrUpdateKeyValue leaves it out
	h.put("s1", "ROTATED", 2, v2)
	h.del("s2", "DOOMED", 2)
	h.put("s3", "ADDED", 1, v3)
	waitDesired(t, a, "ROTATED", v2)
	waitDesired(t, a, "DOOMED", "")
	waitDesired(t, a, "ADDED", v3)
	// And once more, live.
	v4 := secretValue("r4")
	h.put("s1", "ROTATED", 3, v4)
	waitDesired(t, a, "ROTATED", v4)
	h.consumerGone()
}

// TestLiveBadRecordsRefused: what consumer mode refuses, live mode refuses
// too, whether the bucket republishes it or someone publishes straight on
// the live subject with made-up headers.
func TestLiveBadRecordsRefused(t *testing.T) {
	h := newLiveHarness(t)
	a := h.startLiveAgent()
	good1, good2, evil := secretValue("lgood"), secretValue("lgood2"), secretValue("levil")
	scope := protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}
	h.put("s1", "TARGET", 1, good1)
	old := h.record("s1", "TARGET", 1, scope, evil)
	h.put("s1", "TARGET", 2, good2)
	waitDesired(t, a, "TARGET", good2)

	// Through the bucket: republished by the server, sequences in order.
	forged := h.putBadRecords(a, old, evil)
	key := protocol.RecordKey(h.ws.ID, "s1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Straight on the live subject, headers made to follow the record the
	// agent holds: the records' own checks still refuse them.
	good25 := secretValue("lgood25")
	h.put("s1", "TARGET", 3, good25)
	waitDesired(t, a, "TARGET", good25)
	js, _ := jetstream.New(h.nc)
	entry, err := js.Stream(ctx, protocol.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	last, err := entry.GetLastMsgForSubject(ctx, "$KV."+protocol.Bucket+"."+key)
	if err != nil {
		t.Fatal(err)
	}
	inject := func(subject, natsSubject string, data []byte) {
		m := nats.NewMsg(subject)
		m.Header.Set("Nats-Stream", protocol.StreamName())
		m.Header.Set("Nats-Subject", natsSubject)
		m.Header.Set("Nats-Sequence", strconv.FormatUint(last.Sequence+1000, 10))
		m.Header.Set("Nats-Last-Sequence", strconv.FormatUint(last.Sequence, 10))
		m.Header.Set("Nats-Time-Stamp", time.Now().UTC().Format(time.RFC3339Nano))
		m.Data = data
		if err := h.nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []struct {
		subject, natsSubject string
		data                 []byte
		why                  string
	}{
		{LivePrefix + key, "$KV." + protocol.Bucket + "." + key, forged, "bad signature"},
		{LivePrefix + key, "$KV." + protocol.Bucket + "." + key, old, "replayed older version"},
		{LivePrefix + key, "$KV." + protocol.Bucket + ".ws-alice.s9", old, "not a republished record"},
	} {
		before := a.Status().Refused[bad.why]
		inject(bad.subject, bad.natsSubject, bad.data)
		waitFor(t, 10*time.Second, func() error {
			if a.Status().Refused[bad.why] <= before {
				return fmt.Errorf("%s (live subject) not refused: %v", bad.why, a.Status().Refused)
			}
			return nil
		})
	}
	d, _ := a.st.snapshot()
	if v := d.Env["TARGET"]; string(v.Value) != good25 {
		t.Error("a bad record changed TARGET")
	}
	if _, ok := d.Env["BOBS"]; ok {
		t.Error("bob's secret reached alice's workspace")
	}
	good3 := secretValue("lgood3")
	h.put("s5", "AFTER", 1, good3)
	waitDesired(t, a, "AFTER", good3)
}

// TestDeliveryValidated: an unknown delivery mode is refused by name.
func TestDeliveryValidated(t *testing.T) {
	if err := validDelivery("push"); err == nil {
		t.Error("delivery push accepted")
	}
	for _, d := range []string{"", DeliveryConsumer, DeliveryLive} {
		if err := validDelivery(d); err != nil {
			t.Errorf("delivery %q: %v", d, err)
		}
	}
}

// TestLiveDeniedFallsBack: under NATS permissions from before live
// delivery (the live subject not allowed), the agent says so and reads
// with its own consumer instead: changes still arrive.
func TestLiveDeniedFallsBack(t *testing.T) {
	h := newHarness(t)
	h.ns = startAuthServer(t, &server.User{Username: "agent", Password: "agent-pw",
		Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "nbsecrets.status.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}})
	h.connect()
	h.setRePublish(true)
	nc, err := Connect(h.ns.ClientURL(), testLogger(t), nats.UserInfo("agent", "agent-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	v1, v2 := secretValue("denied1"), secretValue("denied2")
	h.put("s1", "FALLBACK", 1, v1)
	a := h.startAgentWith(func(c *Config) { c.Delivery = DeliveryLive; c.Conn = nc })
	waitDesired(t, a, "FALLBACK", v1)
	h.put("s1", "FALLBACK", 2, v2)
	waitDesired(t, a, "FALLBACK", v2)
	if n := a.storedReads.Load(); n != 0 {
		t.Errorf("%d live reads under permissions that refuse the live subject", n)
	}
	if !strings.Contains(leaks.String(), "live delivery refused by the NATS server's permissions") {
		t.Error("no log line saying live delivery was refused")
	}
}

// startAuthServer is natstest.Start with users: "writer" (everything; also
// whoever connects without credentials) and u.
func startAuthServer(t *testing.T, u *server.User) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, Users: []*server.User{{Username: "writer", Password: "writer-pw"}, u}, NoAuthUser: "writer"})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatal("server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// TestHandleLiveSequences: handleLive's rules, message by message, with a
// real sealer and opener and no server: a new key needs previous 0; a
// record follows only the sequence held; an older or already read one is
// skipped; a gap ends the live read; messages that are not republished
// records of this workspace are refused; a refused record does not move
// the sequence on.
func TestHandleLiveSequences(t *testing.T) {
	h := &harness{t: t, ws: Workspace{ID: "ws-alice", Owner: "alice"}}
	sign, _ := nkeys.CreateAccount()
	curve, _ := nkeys.CreateCurveKeys()
	h.wsKP, _ = nkeys.CreateCurveKeys()
	h.signPub, _ = sign.PublicKey()
	h.curvePub, _ = curve.PublicKey()
	h.wsPub, _ = h.wsKP.PublicKey()
	h.sealer, _ = protocol.NewSealer(sign, curve)
	s := &syncer{ws: h.ws.ID, opener: h.opener(), st: newStore(h.ws), log: testLogger(t), now: time.Now}
	scope := protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}
	key := protocol.RecordKey(h.ws.ID, "s1")
	msg := func(subject, natsSubject string, seq, prev uint64, data []byte) *nats.Msg {
		m := nats.NewMsg(subject)
		m.Header.Set("Nats-Stream", protocol.StreamName())
		m.Header.Set("Nats-Subject", natsSubject)
		m.Header.Set("Nats-Sequence", strconv.FormatUint(seq, 10))
		m.Header.Set("Nats-Last-Sequence", strconv.FormatUint(prev, 10))
		m.Data = data
		return m
	}
	rec := func(seq, prev, ver uint64) *nats.Msg {
		return msg(LivePrefix+key, "$KV."+protocol.Bucket+"."+key, seq, prev, h.record("s1", "NAME", ver, scope, secretValue(fmt.Sprint("seq", ver))))
	}
	held := map[string]uint64{}
	version := func() uint64 { v, _ := s.st.version("s1"); return v }

	if err := s.handleLive(rec(5, 3, 1), held); !errors.Is(err, errLiveGap) {
		t.Fatalf("new key with previous 3: %v, want a gap", err)
	}
	if err := s.handleLive(rec(5, 0, 1), held); err != nil || held[key] != 5 || version() != 1 {
		t.Fatalf("new key: err %v, held %d, version %d", err, held[key], version())
	}
	if err := s.handleLive(rec(4, 0, 1), held); err != nil || held[key] != 5 {
		t.Fatalf("an older message: err %v, held %d", err, held[key])
	}
	if err := s.handleLive(rec(9, 5, 2), held); err != nil || held[key] != 9 || version() != 2 {
		t.Fatalf("the next record: err %v, held %d, version %d", err, held[key], version())
	}
	if err := s.handleLive(rec(12, 10, 3), held); !errors.Is(err, errLiveGap) || version() != 2 {
		t.Fatalf("a record after a missed one: %v (version %d), want a gap", err, version())
	}
	// A replayed version, in sequence: refused, the sequence stays.
	refused := func(why string) uint64 {
		s.st.mu.Lock()
		defer s.st.mu.Unlock()
		return uint64(s.st.refused[why])
	}
	if err := s.handleLive(rec(13, 9, 1), held); err != nil || held[key] != 9 || version() != 2 || refused("replayed older version") != 1 {
		t.Fatalf("replay: err %v, held %d, version %d, refused %d", err, held[key], version(), refused("replayed older version"))
	}
	for _, bad := range []*nats.Msg{
		msg(LivePrefix+"ws-bob.s1", "$KV."+protocol.Bucket+".ws-bob.s1", 20, 9, nil), // another workspace's subject
		msg(LivePrefix+key, "$KV."+protocol.Bucket+".ws-alice.s2", 20, 9, nil),       // headers of another key
		msg(LivePrefix+key, "$KV."+protocol.Bucket+"."+key, 20, 20, nil),             // previous not before
		msg(LivePrefix+key, "$KV.other."+key, 20, 9, nil),                            // another bucket
	} {
		if err := s.handleLive(bad, held); err != nil || held[key] != 9 {
			t.Fatalf("%s %v: err %v, held %d", bad.Subject, bad.Header, err, held[key])
		}
	}
	if n := refused("subject outside the workspace's live records") + refused("not a republished record") +
		refused("republished record without valid sequences"); n != 4 {
		t.Errorf("%d of 4 bad messages counted as refused", n)
	}
}

// TestLiveDroppedReread: while the reading goroutine is held up, more
// messages arrive than the subscription buffers; the client drops some,
// among them a real record's, and the agent notices the drop and reads
// everything again (agent.Follow, the syncer alone).
func TestLiveDroppedReread(t *testing.T) {
	h := newLiveHarness(t)
	v1, v2, other := secretValue("drop1"), secretValue("drop2"), secretValue("dropother")
	h.put("s1", "HELD", 1, v1)
	nc, err := Connect(h.ns.ClientURL(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	logs := &testutil.Buffer{}
	var armed atomic.Bool
	release := make(chan struct{})
	var last atomic.Pointer[Desired]
	loaded := make(chan struct{})
	var once sync.Once
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, FollowConfig{JS: js, Workspace: h.ws, Opener: h.opener(), Delivery: DeliveryLive,
			Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: io.MultiWriter(sink{}, logs)}),
			Changed: func(d *Desired) {
				last.Store(d)
				once.Do(func() { close(loaded) })
				if armed.CompareAndSwap(true, false) {
					<-release
				}
			}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	<-loaded
	has := func(name, value string) error {
		d := last.Load()
		if v, ok := d.Env[name]; !ok || string(v.Value) != value {
			return fmt.Errorf("%s not at the value wanted", name)
		}
		return nil
	}
	armed.Store(true)
	h.put("s1", "HELD", 2, v2) // its publish holds the syncer up
	waitFor(t, 10*time.Second, func() error {
		if armed.Load() {
			return errors.New("not held up yet")
		}
		return nil
	})
	in := nc.Stats().InMsgs
	const flood = 2*liveBuffer + 100
	for range flood {
		if err := h.nc.Publish(LivePrefix+h.ws.ID+".junk", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The agent's client has taken them all in (and dropped what its
	// buffer could not hold), then BEHIND's record, dropped too.
	received := func(n uint64) func() error {
		return func() error {
			if got := nc.Stats().InMsgs - in; got < n {
				return fmt.Errorf("the agent's connection received %d of %d", got, n)
			}
			return nil
		}
	}
	waitFor(t, 20*time.Second, received(flood))
	h.put("s2", "BEHIND", 1, other)
	waitFor(t, 20*time.Second, received(flood+1))
	close(release)
	waitFor(t, 20*time.Second, func() error { return has("BEHIND", other) })
	if err := has("HELD", v2); err != nil {
		t.Error(err)
	}
	if !strings.Contains(logs.String(), "republished records were dropped") {
		t.Errorf("no re-read for dropped messages in the logs:\n%s", logs.String())
	}
}
