package natsauth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// registry is the service's map of registered agent keys, as hub-service
// keeps it.
type registry struct {
	mu   sync.Mutex
	keys map[string]string // nkey -> workspace
}

func (r *registry) lookup(k string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ws, ok := r.keys[k]
	return ws, ok
}

func (r *registry) set(k, ws string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ws == "" {
		delete(r.keys, k)
		return
	}
	r.keys[k] = ws
}

// calloutSetup is a server configured as 'nbsecrets nats-config --hub'
// prints it, the service connected under it with its callout, and the
// agents of wsa and wsb registered.
type calloutSetup struct {
	d       *deployment
	url     string
	svcConn *conn
	reg     *registry
	svc     *controlplane.Service
	logs    *testutil.Buffer
}

func newCalloutSetup(t *testing.T, expiry time.Duration, xkey nkeys.KeyPair) *calloutSetup {
	t.Helper()
	d := newDeployment(t) // its keys and directory; its account-per-agent configuration is not used
	issuer := must(nkeys.CreateAccount())
	cfg := natsauth.CalloutConfig{ServiceKeys: []string{pub(d.svcNATS)}, Issuer: pub(issuer)}
	if xkey != nil {
		cfg.XKey = pub(xkey)
	}
	conf, err := natsauth.GenerateCallout(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &calloutSetup{d: d, reg: &registry{keys: map[string]string{}}, logs: &testutil.Buffer{}}
	s.url = startEmbedded(t, writeServerConfig(t, t.TempDir(), conf))
	s.svcConn = connect(t, s.url, d.svcNATS)
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: s.logs})
	co, err := natsauth.StartCallout(s.svcConn.Conn, natsauth.CalloutOptions{Issuer: issuer, XKey: xkey, Lookup: s.reg.lookup, Expiry: expiry, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = co.Stop() })
	s.svc = startService(t, d, s.svcConn)
	for _, ws := range []string{"wsa", "wsb"} {
		s.reg.set(pub(d.agentNATS[ws]), ws)
	}
	return s
}

// connectAgent connects as workspace ws's agent does under the callout:
// its registered key, its own inbox prefix.
func connectAgent(t *testing.T, url string, kp nkeys.KeyPair, ws string, opts ...nats.Option) *conn {
	t.Helper()
	c := &conn{errs: make(chan error, 256)}
	var err error
	c.Conn, err = nats.Connect(url, append([]nats.Option{nats.Nkey(pub(kp), kp.Sign), nats.Timeout(5 * time.Second),
		nats.CustomInboxPrefix(natsauth.AgentInboxPrefix(ws)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default:
			}
		})}, opts...)...)
	if err != nil {
		t.Fatalf("connecting as the agent of %s: %v", ws, err)
	}
	t.Cleanup(c.Close)
	return c
}

func (s *calloutSetup) create(t *testing.T, user, name, value string) *controlplane.SecretInfo {
	t.Helper()
	c, err := s.svc.As(user)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Create(ctxT(t, 30*time.Second), controlplane.Args{Name: name}, []byte(value))
	if err != nil {
		t.Fatalf("creating %s as %s: %v", name, user, err)
	}
	return info
}

// TestCalloutRefusesUnregistered: no key, a key no agent registered, and a
// registered key whose nonce signature is forged are all refused, and the
// refusal is logged with the reason.
func TestCalloutRefusesUnregistered(t *testing.T) {
	s := newCalloutSetup(t, 0, must(nkeys.CreateCurveKeys()))
	stranger := must(nkeys.CreateUser())
	if nc, err := nats.Connect(s.url, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected without a key")
	}
	if nc, err := nats.Connect(s.url, nats.Nkey(pub(stranger), stranger.Sign), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("an unregistered key connected")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("unregistered key: %v", err)
	}
	// wsa's public key, signed by someone else: what a thief of the public
	// half (it is in the registration and the server's connz) could do.
	if nc, err := nats.Connect(s.url, nats.Nkey(pub(s.d.agentNATS["wsa"]), stranger.Sign), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("a forged nonce signature connected")
	}
	for _, want := range []string{"no registered agent has this key", "bad signature over the server's nonce"} {
		testutil.WaitFor(t, 10*time.Second, func() error {
			if !strings.Contains(s.logs.String(), want) {
				return errors.New("no log line with " + want)
			}
			return nil
		})
	}
	// The refusals left the service serving: a registered agent connects.
	connectAgent(t, s.url, s.d.agentNATS["wsa"], "wsa")
}

// TestCalloutAgentConfinement performs natsauth_test.go's attacks on an
// agent authorised by the callout into the shared agents' account.
func TestCalloutAgentConfinement(t *testing.T) {
	s := newCalloutSetup(t, 0, nil)
	d := s.d
	ids := map[string]string{}
	for u, ws := range map[string]string{"alice": "wsa", "bob": "wsb"} {
		ids[ws] = s.create(t, u, strings.ToUpper(u)+"_TOKEN", "value of "+u).ID
	}
	keyA, keyB := protocol.RecordKey("wsa", ids["wsa"]), protocol.RecordKey("wsb", ids["wsb"])
	agentA := connectAgent(t, s.url, d.agentNATS["wsa"], "wsa")
	agentB := connectAgent(t, s.url, d.agentNATS["wsb"], "wsb")
	jsA := must(jetstream.New(agentA.Conn))

	t.Run("agent reads its own records", func(t *testing.T) {
		got := readAll(t, agentA, "wsa")
		if len(got) != 1 || got[keyA] == nil {
			t.Fatalf("agent A read %v, want exactly %s", keys(got), keyA)
		}
		o := must(protocol.NewOpener("wsa", []string{pub(d.sign)}, pub(d.curve), d.wsCurve["wsa"]))
		if sec, err := o.Open(keyA, got[keyA]); err != nil || string(sec.Value) != "value of alice" {
			t.Fatalf("opening %s: %v", keyA, err)
		}
	})
	t.Run("agent cannot create a consumer on another workspace", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*.$KV.nbsecrets.wsb.>", func(ctx context.Context) error {
			_, err := createConsumer(ctx, jsA, protocol.ConsumerName("wsb"), protocol.WorkspaceFilter("wsb"))
			return err
		})
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*.$KV.nbsecrets.wsb.>", func(ctx context.Context) error {
			_, err := createConsumer(ctx, jsA, protocol.ConsumerName("wsa"), protocol.WorkspaceFilter("wsb"))
			return err
		})
	})
	t.Run("agent cannot create a consumer of another name or without a filter", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.*.KV_nbsecrets.other-name.>", func(ctx context.Context) error {
			_, err := createConsumer(ctx, jsA, "other-name", protocol.WorkspaceFilter("wsa"))
			return err
		})
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*", func(ctx context.Context) error {
			_, err := jsA.OrderedConsumer(ctx, protocol.StreamName(), jetstream.OrderedConsumerConfig{})
			return err
		})
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*", func(ctx context.Context) error {
			_, err := jsA.OrderedConsumer(ctx, protocol.StreamName(), jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{protocol.WorkspaceFilter("wsa"), protocol.WorkspaceFilter("wsb")}})
			return err
		})
	})
	t.Run("agent cannot pull from or delete another workspace's consumer", func(t *testing.T) {
		if got := readAll(t, agentB, "wsb"); len(got) != 1 {
			t.Fatalf("agent B read %v", keys(got))
		}
		expectForeignConsumerDenied(t, agentA, jsA, protocol.ConsumerName("wsb"))
	})
	t.Run("server holds the consumer to the subject's filter", func(t *testing.T) {
		for name, cfg := range map[string]string{
			"other filter": `"filter_subject":"$KV.nbsecrets.wsb.>"`,
			"multi filter": `"filter_subject":"$KV.nbsecrets.wsa.>","filter_subjects":["$KV.nbsecrets.wsa.>","$KV.nbsecrets.wsb.>"]`,
		} {
			msg := createOwnConsumerRaw(t, agentA, jsA, name, cfg)
			var resp struct {
				Error *struct{ Description string } `json:"error"`
			}
			if err := json.Unmarshal(msg.Data, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.Error == nil {
				t.Fatalf("%s: server accepted a consumer beyond the subject's filter: %s", name, msg.Data)
			}
			t.Logf("%s: refused: %s", name, resp.Error.Description)
		}
	})
	t.Run("a push consumer under its own name stores nothing", func(t *testing.T) {
		// The consumer lives in the service's account, so its deliveries
		// land there: no stream may store them, and what lands on a status
		// subject (A's own records) must not pass for wsb's status.
		statuses := must(s.svcConn.SubscribeSync(protocol.StatusSubject("wsb")))
		defer statuses.Unsubscribe()
		svcJS := must(jetstream.New(s.svcConn.Conn))
		held := bucketSubjects(t, svcJS)
		own := protocol.ConsumerName("wsa")
		for _, deliver := range []string{"nbsecrets.api.v1.create", "$KV." + protocol.Bucket + ".wsb.forged", "$KV." + controlplane.ServiceBucket + ".secrets.forged", protocol.StatusSubject("wsb")} {
			_ = jsA.DeleteConsumer(ctxT(t, 10*time.Second), protocol.StreamName(), own)
			body := `{"stream_name":"KV_nbsecrets","config":{"name":"` + own + `","deliver_subject":"` + deliver + `","deliver_policy":"all","ack_policy":"none","filter_subject":"$KV.nbsecrets.wsa.>"}}`
			msg, err := agentA.RequestWithContext(ctxT(t, 10*time.Second), "$JS.API.CONSUMER.CREATE.KV_nbsecrets."+own+".$KV.nbsecrets.wsa.>", []byte(body))
			if err != nil {
				t.Fatalf("push consumer to %s: %v", deliver, err)
			}
			t.Logf("push consumer delivering to %s: %s", deliver, msg.Data)
		}
		expectNothingStored(t, svcJS, held)
		_ = jsA.DeleteConsumer(ctxT(t, 10*time.Second), protocol.StreamName(), own)
		for {
			m, err := statuses.NextMsg(0)
			if err != nil {
				break
			}
			if st, err := protocol.DecodeStatus(m.Subject, m.Data); err == nil {
				t.Fatalf("a delivery passed for wsb's status: %+v", st)
			} else {
				t.Logf("a delivery on wsb's status subject, refused: %v", err)
			}
		}
	})
	t.Run("agent cannot read another workspace's keys", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.STREAM.INFO.KV_nbsecrets", func(ctx context.Context) error {
			_, err := jsA.KeyValue(ctx, protocol.Bucket)
			return err
		})
		for _, subj := range []string{"$JS.API.DIRECT.GET.KV_nbsecrets.$KV.nbsecrets." + keyB, "$JS.API.STREAM.MSG.GET.KV_nbsecrets"} {
			expectDenied(t, agentA, "Publish", subj, func(ctx context.Context) error {
				_, err := agentA.RequestWithContext(ctx, subj, []byte(`{"last_by_subj":"$KV.nbsecrets.`+keyB+`"}`))
				return err
			})
		}
		expectDenied(t, agentA, "Subscription", "$KV.nbsecrets.>", func(context.Context) error {
			_, err := agentA.Subscribe("$KV.nbsecrets.>", func(*nats.Msg) {})
			return err
		})
	})
	t.Run("agent cannot write any record or reach the API", func(t *testing.T) {
		for _, subj := range []string{"$KV.nbsecrets." + keyA, "$KV.nbsecrets." + keyB, "$JS.API.STREAM.PURGE.KV_nbsecrets",
			"$JS.API.STREAM.DELETE.KV_nbsecrets", "nbsecrets.api.v1.list", protocol.StatusSubject("wsb")} {
			expectDenied(t, agentA, "Publish", subj, func(ctx context.Context) error {
				_, err := agentA.RequestWithContext(ctx, subj, []byte(`{}`))
				return err
			})
		}
		expectDenied(t, agentA, "Subscription", natsauth.AuthCalloutSubject, func(context.Context) error {
			_, err := agentA.Subscribe(natsauth.AuthCalloutSubject, func(*nats.Msg) {})
			return err
		})
	})
	t.Run("agent cannot see another agent's inbox", func(t *testing.T) {
		for _, subj := range []string{">", "_INBOX.>", natsauth.AgentInboxPrefix("wsb") + ".>"} {
			expectDenied(t, agentA, "Subscription", subj, func(context.Context) error {
				_, err := agentA.Subscribe(subj, func(*nats.Msg) {})
				return err
			})
		}
		spy := must(agentA.SubscribeSync(natsauth.AgentInboxPrefix("wsa") + ".>")) // its own
		if got := readAll(t, agentB, "wsb"); got[keyB] == nil {
			t.Fatalf("agent B read %v, want %s", keys(got), keyB)
		}
		if err := agentA.Flush(); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := spy.Pending(); n != 0 {
			t.Fatalf("agent A saw %d messages on its inbox while B read", n)
		}
		_ = spy.Unsubscribe()
	})
	t.Run("agent cannot aim a delivery at a record or another's status", func(t *testing.T) {
		statuses := must(s.svcConn.SubscribeSync(protocol.StatusSubject("wsb")))
		defer statuses.Unsubscribe()
		svcJS := must(jetstream.New(s.svcConn.Conn))
		before := lastSeq(t, svcJS)
		cons := must(consumerAs(ctxT(t, 10*time.Second), jsA, protocol.ConsumerName("wsa"), protocol.WorkspaceFilter("wsa")))
		next := "$JS.API.CONSUMER.MSG.NEXT.KV_nbsecrets." + cons.CachedInfo().Name
		for _, aim := range []string{"$KV.nbsecrets." + keyB, protocol.StatusSubject("wsb")} {
			if err := agentA.PublishRequest(next, aim, []byte(`{"batch":1,"no_wait":true}`)); err != nil {
				t.Fatal(err)
			}
		}
		// A consumer-create response onto wsb's status subject.
		body := `{"stream_name":"KV_nbsecrets","config":{"name":"` + protocol.ConsumerName("wsa") + `","deliver_policy":"all","ack_policy":"none","filter_subject":"$KV.nbsecrets.wsa.>","description":"{\"workspace\":\"wsb\"}"}}`
		if err := agentA.PublishRequest("$JS.API.CONSUMER.CREATE.KV_nbsecrets."+protocol.ConsumerName("wsa")+".$KV.nbsecrets.wsa.>", protocol.StatusSubject("wsb"), []byte(body)); err != nil {
			t.Fatal(err)
		}
		inbox := agentA.NewInbox()
		sub := must(agentA.SubscribeSync(inbox))
		if err := agentA.PublishRequest(next, inbox, []byte(`{"batch":1,"expires":5000000000}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("second pull: %v", err)
		}
		if after := barrier(t, svcJS); after != before+1 {
			t.Fatalf("stream sequence went from %d to %d: something was written besides the barrier", before, after)
		}
		checkRecord(t, d, svcJS, keyB, "value of bob")
		// Whatever the server delivered onto wsb's status subject (it may
		// deliver: the reply is in the agents' account) is refused.
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
			m, err := statuses.NextMsg(100 * time.Millisecond)
			if err != nil {
				continue
			}
			if st, err := protocol.DecodeStatus(m.Subject, m.Data); err == nil {
				t.Fatalf("a forged status for wsb was accepted: %+v", st)
			}
			t.Logf("aimed at wsb's status, refused by DecodeStatus: %d bytes", len(m.Data))
		}
	})
	select {
	case err := <-s.svcConn.errs:
		t.Errorf("the service got an asynchronous error: %v", err)
	default:
	}
}

// TestCalloutExpiry: on a server the service cannot kick connections on,
// a removed workspace's agent keeps its connection until the user JWT
// expires; the server then closes it and the reconnection is refused. A
// still registered agent reconnects and reads again.
func TestCalloutExpiry(t *testing.T) {
	s := newCalloutSetup(t, 2*time.Second, must(nkeys.CreateCurveKeys()))
	s.create(t, "alice", "ALICE_TOKEN", "value of alice")
	reconnected := make(chan struct{}, 16)
	opts := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })}
	agentA := connectAgent(t, s.url, s.d.agentNATS["wsa"], "wsa", opts...)
	agentB := connectAgent(t, s.url, s.d.agentNATS["wsb"], "wsb", opts...)
	s.reg.set(pub(s.d.agentNATS["wsb"]), "") // wsb's server stopped
	select {
	case <-reconnected: // A's JWT expired, and it is authorised again
	case <-time.After(30 * time.Second):
		t.Fatal("agent A did not reconnect after its credentials expired")
	}
	testutil.WaitFor(t, 30*time.Second, func() error {
		if agentB.IsConnected() {
			return errors.New("agent B still connected")
		}
		if err := agentB.LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			return errors.New("agent B's last error is not a refusal: " + errString(err))
		}
		return nil
	})
	testutil.WaitFor(t, 30*time.Second, func() error {
		if !agentA.IsConnected() {
			return errors.New("agent A not connected")
		}
		return nil
	})
	if got := readAll(t, agentA, "wsa"); len(got) != 1 {
		t.Fatalf("agent A read %v after reconnecting", keys(got))
	}
}

func errString(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}

// TestCalloutSealsRequests: a client of the server that fails its own
// authentication is asked about too, and its connect options hold its
// password. With the xkey the request is sealed: whoever else reads the
// service account's callout subject sees no password, and the service
// still refuses the client.
func TestCalloutSealsRequests(t *testing.T) {
	s := newCalloutSetup(t, 0, must(nkeys.CreateCurveKeys()))
	spy := connect(t, s.url, s.d.svcNATS) // another connection of the service's user
	sub := must(spy.SubscribeSync(natsauth.AuthCalloutSubject))
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	const password = "platform-password-0123456789"
	if nc, err := nats.Connect(s.url, nats.UserInfo("platform-app", password), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("an unknown user connected")
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no callout request seen: %v", err)
	}
	if strings.Contains(string(m.Data), password) || strings.HasPrefix(string(m.Data), "eyJ") {
		t.Fatalf("the callout request is readable: %.80s...", m.Data)
	}
	if m.Header.Get("Nats-Server-Xkey") == "" {
		t.Fatal("the sealed request has no server xkey header")
	}
	if strings.Contains(s.logs.String(), password) {
		t.Fatal("the service logged the password")
	}
	testutil.WaitFor(t, 10*time.Second, func() error {
		if !strings.Contains(s.logs.String(), "no nkey signature") {
			return errors.New("the refusal is not logged")
		}
		return nil
	})
}

// TestGenerateCalloutRefuses: a configuration that nats-server would
// refuse or that would let the wrong party in is an error naming what is
// wrong; the same input gives the same bytes.
func TestGenerateCalloutRefuses(t *testing.T) {
	good := func() natsauth.CalloutConfig {
		return natsauth.CalloutConfig{ServiceKeys: []string{pub(must(nkeys.CreateUser()))}, Issuer: pub(must(nkeys.CreateAccount())),
			XKey: pub(must(nkeys.CreateCurveKeys()))}
	}
	cfg := good()
	a, err := natsauth.GenerateCallout(cfg)
	if err != nil {
		t.Fatalf("good configuration refused: %v", err)
	}
	if b, _ := natsauth.GenerateCallout(cfg); string(a) != string(b) {
		t.Fatal("the same input gave different output")
	}
	for _, want := range []string{cfg.ServiceKeys[0], cfg.Issuer, cfg.XKey, `allowed_accounts: ["` + natsauth.AgentsAccount + `"]`, natsauth.AuthCalloutSubject} {
		if !strings.Contains(string(a), want) {
			t.Errorf("output lacks %s:\n%s", want, a)
		}
	}
	user := pub(must(nkeys.CreateUser()))
	cases := map[string]struct {
		mut  func(*natsauth.CalloutConfig)
		want string
	}{
		"no service key":       {func(c *natsauth.CalloutConfig) { c.ServiceKeys = nil }, "no NATS key for the secrets service"},
		"service key not user": {func(c *natsauth.CalloutConfig) { c.ServiceKeys = []string{c.Issuer} }, "not a public user nkey"},
		"service key twice":    {func(c *natsauth.CalloutConfig) { c.ServiceKeys = []string{user, user} }, "listed twice"},
		"issuer not account":   {func(c *natsauth.CalloutConfig) { c.Issuer = user }, "issuer is not a public account nkey"},
		"xkey not curve":       {func(c *natsauth.CalloutConfig) { c.XKey = user }, "xkey is not a public curve key"},
	}
	for name, tc := range cases {
		c := good()
		tc.mut(&c)
		_, err := natsauth.GenerateCallout(c)
		if !errors.Is(err, natsauth.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalid naming %q", name, err, tc.want)
		}
	}
}

// TestCalloutBadRequests sends the responder what the server never would
// (a plain server, where anyone may publish on the callout subject):
// oversized, malformed, unsealed when it expects sealed, sealed to another
// key, and a well-formed request whose nonce signature is forged. Each is
// refused and logged by reason, and a good request after them is
// answered with a user JWT of the workspace's permissions.
func TestCalloutBadRequests(t *testing.T) {
	ns := natstest.Start(t)
	nc := must(nats.Connect(ns.ClientURL()))
	defer nc.Close()
	issuer, xkey, serverXKey := must(nkeys.CreateAccount()), must(nkeys.CreateCurveKeys()), must(nkeys.CreateCurveKeys())
	agentKP := must(nkeys.CreateUser())
	logs := &testutil.Buffer{}
	co, err := natsauth.StartCallout(nc, natsauth.CalloutOptions{Issuer: issuer, XKey: xkey,
		Lookup: func(k string) (string, bool) { return "wsa", k == pub(agentKP) },
		Logger: hclog.New(&hclog.LoggerOptions{Output: logs})})
	if err != nil {
		t.Fatal(err)
	}
	defer co.Stop()
	serverKP := must(nkeys.CreateServer())
	request := func(signer nkeys.KeyPair) []byte {
		rc := jwt.NewAuthorizationRequestClaims(pub(serverKP))
		rc.UserNkey = pub(must(nkeys.CreateUser()))
		rc.Server = jwt.ServerID{ID: pub(serverKP), Name: "test"}
		rc.ClientInformation.Nonce = "nonce-0123456789"
		rc.ConnectOptions.Nkey = pub(agentKP)
		rc.ConnectOptions.SignedNonce = base64.RawURLEncoding.EncodeToString(must(signer.Sign([]byte("nonce-0123456789"))))
		return []byte(must(rc.Encode(serverKP)))
	}
	send := func(data []byte, sealTo nkeys.KeyPair) *nats.Msg {
		m := nats.NewMsg(natsauth.AuthCalloutSubject)
		m.Data = data
		if sealTo != nil {
			m.Data = must(serverXKey.Seal(data, pub(sealTo)))
			m.Header.Set("Nats-Server-Xkey", pub(serverXKey))
		}
		resp, err := nc.RequestMsg(m, 2*time.Second)
		if err != nil {
			return nil
		}
		return resp
	}
	open := func(resp *nats.Msg) *jwt.AuthorizationResponseClaims {
		t.Helper()
		data := must(serverXKey.Open(resp.Data, pub(xkey)))
		return must(jwt.DecodeAuthorizationResponseClaims(string(data)))
	}
	for name, tc := range map[string]struct {
		data   []byte
		sealTo nkeys.KeyPair
		reason string
	}{
		"oversized":       {make([]byte, 100<<10), nil, "limit"},
		"unsealed":        {request(agentKP), nil, "expects sealed requests"},
		"sealed to other": {request(agentKP), must(nkeys.CreateCurveKeys()), "cannot open the sealed request"},
		"malformed":       {[]byte("eyJnot-a-jwt"), xkey, "malformed request"},
	} {
		if resp := send(tc.data, tc.sealTo); resp != nil {
			t.Errorf("%s: answered %q", name, resp.Data)
		}
		if !strings.Contains(logs.String(), tc.reason) {
			t.Errorf("%s: no log line with %q:\n%s", name, tc.reason, logs.String())
		}
	}
	resp := send(request(must(nkeys.CreateUser())), xkey) // signed by someone else
	if resp == nil {
		t.Fatal("no answer to a forged signature")
	}
	if rc := open(resp); rc.Error == "" || rc.Jwt != "" {
		t.Fatalf("a forged nonce signature was authorised: %+v", rc.AuthorizationResponse)
	}
	resp = send(request(agentKP), xkey)
	if resp == nil {
		t.Fatal("no answer to a good request")
	}
	rc := open(resp)
	if rc.Error != "" || rc.Issuer != pub(issuer) || rc.Audience != pub(serverKP) {
		t.Fatalf("good request: %+v (issuer %s, audience %s)", rc.AuthorizationResponse, rc.Issuer, rc.Audience)
	}
	uc := must(jwt.DecodeUserClaims(rc.Jwt))
	want := natsauth.CalloutAgentPermissions("wsa")
	if uc.Audience != natsauth.AgentsAccount || !slices.Equal([]string(uc.Pub.Allow), want.Publish) || !slices.Equal([]string(uc.Sub.Allow), want.Subscribe) {
		t.Fatalf("user JWT: account %s, publish %v, subscribe %v; want %s, %v, %v", uc.Audience, uc.Pub.Allow, uc.Sub.Allow, natsauth.AgentsAccount, want.Publish, want.Subscribe)
	}
}
