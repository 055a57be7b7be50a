package natsauth_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// startLiveService starts a second service instance with Options.Live on
// its own connection: on a bucket the first made without a RePublish, it
// must add one under the service's permissions (STREAM.UPDATE).
func startLiveService(t *testing.T, d *deployment, url string) {
	t.Helper()
	svc, err := controlplane.New(controlplane.Options{Conn: connect(t, url, d.svcNATS).Conn, SignKey: d.sign, CurveKey: d.curve,
		Directory: d.dir, Live: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("starting a live service under the service's permissions: %v", err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
}

// liveAttacks are the attacks on the live subjects common to both models:
// agentA (of wsa) receives its own workspace's republished record and
// nothing of wsb's, cannot subscribe to wsb's or every live subject, and
// nobody (agents, a user, the service's own users) can publish on any live
// subject, the agent's own included.
func liveAttacks(t *testing.T, agentA, agentB, user, svc *conn, create func(user, name string) string) {
	t.Run("agent receives its own records republished", func(t *testing.T) {
		subA := must(agentA.SubscribeSync(controlplane.LivePrefix + "wsa.>"))
		defer func() { _ = subA.Unsubscribe() }()
		subB := must(agentB.SubscribeSync(controlplane.LivePrefix + "wsb.>"))
		defer func() { _ = subB.Unsubscribe() }()
		for _, c := range []*conn{agentA, agentB} {
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		idA := create("alice", "ALICE_LIVE")
		m, err := subA.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("agent A got no republished record: %v", err)
		}
		if want := controlplane.LivePrefix + protocol.RecordKey("wsa", idA); m.Subject != want {
			t.Fatalf("agent A got %s, want %s", m.Subject, want)
		}
		// B's own record reaches B after A's was published: A's never did.
		idB := create("bob", "BOB_LIVE")
		m, err = subB.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("agent B got no republished record: %v", err)
		}
		if want := controlplane.LivePrefix + protocol.RecordKey("wsb", idB); m.Subject != want {
			t.Fatalf("agent B got %s (another workspace's record?), want %s", m.Subject, want)
		}
		if n, _, _ := subA.Pending(); n != 0 {
			t.Fatalf("agent A has %d more messages: another workspace's record?", n)
		}
	})
	t.Run("agent cannot subscribe to another workspace's live subject", func(t *testing.T) {
		for _, subj := range []string{controlplane.LivePrefix + "wsb.>", controlplane.LivePrefix + ">",
			controlplane.LivePrefix + "*.>", controlplane.LivePrefix + "wsb.x"} {
			expectDenied(t, agentA, "Subscription", subj, func(context.Context) error {
				_, err := agentA.Subscribe(subj, func(*nats.Msg) {})
				return err
			})
		}
	})
	t.Run("agent subscribes to the records stream's leader elections", func(t *testing.T) {
		sub := must(agentA.SubscribeSync(controlplane.LeaderElected))
		defer func() { _ = sub.Unsubscribe() }()
		if err := agentA.Flush(); err != nil {
			t.Fatal(err)
		}
		// A refusal comes before the flush's pong, and the connection's
		// last error is set as the refusal is read; the error handler
		// that feeds errs runs later, on a goroutine of its own, so errs
		// alone may not have it yet.
		if err := agentA.LastError(); err != nil && strings.Contains(err.Error(), controlplane.LeaderElected) {
			t.Fatalf("subscription to the leader elections refused: %v", err)
		}
		for {
			select {
			case err := <-agentA.errs:
				if strings.Contains(err.Error(), controlplane.LeaderElected) {
					t.Fatalf("subscription to the leader elections refused: %v", err)
				}
				continue
			default:
			}
			break
		}
	})
	t.Run("agent reads no other advisory", func(t *testing.T) {
		for _, subj := range []string{"$JS.EVENT.ADVISORY.>", "$JS.EVENT.>", "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*",
			"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.KV_" + controlplane.ServiceBucket,
			"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.KV_nbsecrets.>", "$JS.EVENT.ADVISORY.API",
			"$JS.EVENT.ADVISORY.STREAM.UPDATED.KV_nbsecrets", "$SYS.>"} {
			expectDenied(t, agentA, "Subscription", subj, func(context.Context) error {
				_, err := agentA.Subscribe(subj, func(*nats.Msg) {})
				return err
			})
		}
	})
	t.Run("nobody publishes a leader election", func(t *testing.T) {
		for _, c := range []struct {
			who  string
			conn *conn
		}{{"agent A", agentA}, {"a user (under the callout: agent B)", user}, {"the service's user", svc}} {
			t.Log(c.who)
			expectDenied(t, c.conn, "Publish", controlplane.LeaderElected, func(ctx context.Context) error {
				_, err := c.conn.RequestWithContext(ctx, controlplane.LeaderElected, []byte(`{}`))
				return err
			})
		}
	})
	t.Run("nobody publishes on a live subject", func(t *testing.T) {
		for _, c := range []struct {
			who  string
			conn *conn
			subj string
		}{
			{"agent A, its own", agentA, controlplane.LivePrefix + "wsa.forged"},
			{"agent A, B's", agentA, controlplane.LivePrefix + "wsb.forged"},
			{"a user (under the callout: agent B)", user, controlplane.LivePrefix + "wsa.forged"},
			{"the service's user", svc, controlplane.LivePrefix + "wsa.forged"},
		} {
			t.Log(c.who)
			expectDenied(t, c.conn, "Publish", c.subj, func(ctx context.Context) error {
				_, err := c.conn.RequestWithContext(ctx, c.subj, []byte(`{}`))
				return err
			})
		}
	})
}

// TestLiveConfinement: Generate's account per agent with live delivery.
func TestLiveConfinement(t *testing.T) {
	d := newDeployment(t)
	url := startEmbedded(t, writeServerConfig(t, t.TempDir(), d.auth))
	svcConn := connect(t, url, d.svcNATS)
	startService(t, d, svcConn) // makes the bucket without a RePublish
	startLiveService(t, d, url)
	clients := map[string]*controlplane.Client{}
	userConns := map[string]*conn{}
	for _, u := range []string{"alice", "bob"} {
		userConns[u] = connect(t, url, d.userNATS[u])
		clients[u] = controlplane.NewClient(userConns[u].Conn, u, d.userSign[u], pub(d.curve))
	}
	create := func(user, name string) string {
		info, err := clients[user].Create(ctxT(t, 30*time.Second), name, []byte("value of "+strings.ToLower(name)), controlplane.CreateOptions{})
		if err != nil {
			t.Fatalf("creating %s as %s: %v", name, user, err)
		}
		return info.ID
	}
	t.Run("real agent in live delivery end to end", func(t *testing.T) {
		create("alice", "ALICE_TOKEN")
		runAgent(t, d, url, clients["alice"], func(c *agent.Config) { c.Delivery = agent.DeliveryLive })
	})
	agentA, agentB := connect(t, url, d.agentNATS["wsa"]), connect(t, url, d.agentNATS["wsb"])
	liveAttacks(t, agentA, agentB, userConns["alice"], svcConn, create)
}

// TestCalloutLiveConfinement: the callout's shared agents' account with
// live delivery: every live subject reaches the account, and each agent's
// permissions keep it to its own.
func TestCalloutLiveConfinement(t *testing.T) {
	s := newCalloutSetup(t, 0, nil)
	startLiveService(t, s.d, s.url)
	agentA := connectAgent(t, s.url, s.d.agentNATS["wsa"], "wsa")
	agentB := connectAgent(t, s.url, s.d.agentNATS["wsb"], "wsb")
	user := connectAgent(t, s.url, s.d.agentNATS["wsb"], "wsb") // no user connects under the callout: another agent's connection
	liveAttacks(t, agentA, agentB, user, s.svcConn, func(u, name string) string { return s.create(t, u, name, "value").ID })
}
