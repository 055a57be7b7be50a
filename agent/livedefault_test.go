package agent

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// ownLogs is testLogger that also keeps the test's own lines, so that a
// test looks for a log line among its own agent's only.
func ownLogs(t *testing.T) (hclog.Logger, *testutil.Buffer) {
	buf := &testutil.Buffer{}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Trace,
		Output: io.MultiWriter(sink{}, tWriter{t}, buf)}), buf
}

// TestLiveLeaderElectedRereads: a record stored but never republished (as
// a stream leader that crashed between storing and republishing leaves
// it) reaches a live agent once the records stream elects a leader: the
// agent reads everything again a moment after the advisory.
func TestLiveLeaderElectedRereads(t *testing.T) {
	h := newLiveHarness(t)
	v1, v2 := secretValue("leader1"), secretValue("leader2")
	h.put("s1", "LEADER", 1, v1)
	log, logs := ownLogs(t)
	a := h.startAgentWith(func(c *Config) {
		c.Delivery, c.liveJitter, c.Logger = DeliveryLive, 200*time.Millisecond, log
	})
	waitDesired(t, a, "LEADER", v1)
	h.consumerGone()
	reads := a.storedReads.Load()

	h.setRePublish(false)
	h.put("s1", "LEADER", 2, v2) // stored, republished by no one
	// The server publishes this advisory only for a replicated stream;
	// here a client that may publish it stands in for the new leader.
	if err := h.nc.Publish(LeaderElected, []byte(`{"type":"io.nats.jetstream.advisory.v1.stream_leader_elected","stream":"KV_nbsecrets"}`)); err != nil {
		t.Fatal(err)
	}
	waitDesired(t, a, "LEADER", v2)
	if a.storedReads.Load() <= reads {
		t.Error("v2 arrived without a read")
	}
	if !strings.Contains(logs.String(), "the records stream elected a leader") {
		t.Error("no log line about the election")
	}
}

// TestLiveNotRepublishedFallsBack: a live agent on a records stream that
// does not republish (a service from before live delivery, or serve
// --live=false on a bucket it made) finds, at its periodic read, a
// record stored since the previous read that never came live; it says so
// and reads with a consumer of its own from then on, so later changes
// arrive at once.
func TestLiveNotRepublishedFallsBack(t *testing.T) {
	h := newHarness(t) // no RePublish
	v1, v2, v3 := secretValue("norepub1"), secretValue("norepub2"), secretValue("norepub3")
	h.put("s1", "NOREPUB", 1, v1)
	log, logs := ownLogs(t)
	a := h.startAgentWith(func(c *Config) { c.Delivery, c.liveRefresh, c.Logger = DeliveryLive, 500*time.Millisecond, log })
	waitDesired(t, a, "NOREPUB", v1)
	if d := a.Status().Delivery; d != DeliveryLive {
		t.Fatalf("status says delivery %q before the fallback, want live", d)
	}
	h.put("s1", "NOREPUB", 2, v2)
	waitDesired(t, a, "NOREPUB", v2) // the periodic read
	waitFor(t, 30*time.Second, func() error {
		if !strings.Contains(logs.String(), "the records stream does not republish them") {
			return errors.New("no fallback yet")
		}
		return nil
	})
	reads := a.storedReads.Load()
	h.put("s1", "NOREPUB", 3, v3)
	waitDesired(t, a, "NOREPUB", v3)
	if got := a.storedReads.Load(); got != reads {
		t.Errorf("%d live reads after the fallback to a consumer", got-reads)
	}
	if d := a.Status().Delivery; d != DeliveryConsumer {
		t.Errorf("status says delivery %q after the fallback, want consumer", d)
	}
}

// TestLiveRepublishedNoFallback: with the stream republishing, periodic
// reads find nothing that did not come live, and the agent stays live.
func TestLiveRepublishedNoFallback(t *testing.T) {
	h := newLiveHarness(t)
	log, logs := ownLogs(t)
	a := h.startAgentWith(func(c *Config) { c.Delivery, c.liveRefresh, c.Logger = DeliveryLive, 300*time.Millisecond, log })
	for i, v := range []string{secretValue("repub1"), secretValue("repub2"), secretValue("repub3")} {
		h.put("s1", "REPUB", uint64(i+1), v)
		waitDesired(t, a, "REPUB", v)
	}
	reads := a.storedReads.Load()
	// Past a verdict's wait after the periodic reads that followed the
	// changes.
	waitFor(t, 30*time.Second, func() error {
		if a.storedReads.Load() < reads+int64(liveVerdict/(300*time.Millisecond))+2 {
			return errors.New("fewer periodic reads than wanted")
		}
		return nil
	})
	if strings.Contains(logs.String(), "does not republish them") || a.Status().Delivery != DeliveryLive {
		t.Errorf("fell back to a consumer although every record came live (status: delivery %q)", a.Status().Delivery)
	}
}

// TestLiveDeniedBesideOtherError: the server refuses the live subscription
// and, at the same moment, something else on the same connection (here a
// publish the agent's user may not make). The connection's last error is
// then the other refusal; the subscription's own error still says it was
// refused, and the agent falls back to its consumer.
func TestLiveDeniedBesideOtherError(t *testing.T) {
	h := newHarness(t)
	h.ns = startAuthServer(t, &server.User{Username: "agent", Password: "agent-pw",
		Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.>", "nbsecrets.status.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", LeaderElected}},
		}})
	h.connect()
	h.setRePublish(true)

	t.Run("refused names the subscription", func(t *testing.T) {
		nc, err := Connect(h.ns.ClientURL(), testLogger(t), nats.UserInfo("agent", "agent-pw"))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		before := nc.LastError()
		sub, err := nc.SubscribeSync(LiveSubject(h.ws.ID))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish("elsewhere.forbidden", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if last := nc.LastError(); last == nil || !strings.Contains(last.Error(), "elsewhere.forbidden") {
			t.Fatalf("the connection's last error is %v, not the later publish refusal", last)
		}
		if _, err := refused(nc, sub, before); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("refused: %v, want the subscription's permissions violation", err)
		}
		ok, err := nc.SubscribeSync(LeaderElected)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := refused(nc, ok, before); err != nil {
			t.Fatalf("an allowed subscription reported refused: %v", err)
		}
	})

	t.Run("without PermissionErrOnSubscribe, the last error", func(t *testing.T) {
		// A connection not made by Connect: the refusal is found, as
		// before, in the connection's last error, when nothing else was
		// refused since.
		nc, err := nats.Connect(h.ns.ClientURL(), nats.UserInfo("agent", "agent-pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		before := nc.LastError()
		sub, err := nc.SubscribeSync(LiveSubject(h.ws.ID))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := refused(nc, sub, before); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("refused: %v, want the permissions violation", err)
		}
	})

	t.Run("agent falls back", func(t *testing.T) {
		nc, err := Connect(h.ns.ClientURL(), testLogger(t), nats.UserInfo("agent", "agent-pw"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		stop, noisy := make(chan struct{}), make(chan struct{})
		go func() { // owned by the test: stopped below
			defer close(noisy)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = nc.Publish("elsewhere.forbidden", []byte("x"))
				_ = nc.FlushTimeout(time.Second)
			}
		}()
		defer func() { close(stop); <-noisy }()
		v1, v2 := secretValue("besides1"), secretValue("besides2")
		h.put("s1", "BESIDES", 1, v1)
		log, logs := ownLogs(t)
		a := h.startAgentWith(func(c *Config) { c.Delivery, c.Conn, c.Logger = DeliveryLive, nc, log })
		waitDesired(t, a, "BESIDES", v1)
		h.put("s1", "BESIDES", 2, v2)
		waitDesired(t, a, "BESIDES", v2)
		if n := a.storedReads.Load(); n != 0 {
			t.Errorf("%d live reads under permissions that refuse the live subject", n)
		}
		if !strings.Contains(logs.String(), "live delivery refused by the NATS server's permissions") {
			t.Error("no log line saying live delivery was refused")
		}
		if d := a.Status().Delivery; d != DeliveryConsumer {
			t.Errorf("status says delivery %q, want consumer", d)
		}
	})
}
