package natsauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/protocol"
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// deployment is a directory of two users, alice and bob, each owning one
// workspace (wsa, wsb), every key of every party, and the generated
// authorisation.
type deployment struct {
	sign, curve nkeys.KeyPair            // the service's record keys
	svcNATS     nkeys.KeyPair            // the service's NATS key
	agentNATS   map[string]nkeys.KeyPair // workspace -> its agent's NATS key
	wsCurve     map[string]nkeys.KeyPair // workspace -> its curve key
	userSign    map[string]nkeys.KeyPair // user -> request-signing key
	userNATS    map[string]nkeys.KeyPair // user -> NATS key
	dir         *controlplane.Directory
	auth        []byte
}

func newDeployment(t *testing.T) *deployment {
	t.Helper()
	d := &deployment{
		sign: must(nkeys.CreateAccount()), curve: must(nkeys.CreateCurveKeys()), svcNATS: must(nkeys.CreateUser()),
		agentNATS: map[string]nkeys.KeyPair{}, wsCurve: map[string]nkeys.KeyPair{},
		userSign: map[string]nkeys.KeyPair{}, userNATS: map[string]nkeys.KeyPair{},
		dir: &controlplane.Directory{},
	}
	cfg := natsauth.Config{Directory: d.dir, ServiceKeys: []string{pub(d.svcNATS)},
		AgentKeys: map[string]string{}, UserKeys: map[string]string{}}
	for user, ws := range map[string]string{"alice": "wsa", "bob": "wsb"} {
		d.userSign[user], d.userNATS[user] = must(nkeys.CreateUser()), must(nkeys.CreateUser())
		d.wsCurve[ws], d.agentNATS[ws] = must(nkeys.CreateCurveKeys()), must(nkeys.CreateUser())
		d.dir.Users = append(d.dir.Users, controlplane.User{ID: user, PublicKey: pub(d.userSign[user])})
		d.dir.Workspaces = append(d.dir.Workspaces, controlplane.Workspace{ID: ws, Owner: user, CurveKey: pub(d.wsCurve[ws])})
		cfg.AgentKeys[ws], cfg.UserKeys[user] = pub(d.agentNATS[ws]), pub(d.userNATS[user])
	}
	var err error
	if d.auth, err = natsauth.Generate(cfg); err != nil {
		t.Fatal(err)
	}
	return d
}

func pub(kp nkeys.KeyPair) string { return must(kp.PublicKey()) }

// conn is a NATS connection as one identity, with the asynchronous errors
// the server sent it (permissions violations arrive that way).
type conn struct {
	*nats.Conn
	errs chan error
}

func connect(t *testing.T, url string, kp nkeys.KeyPair) *conn {
	t.Helper()
	c := &conn{errs: make(chan error, 256)}
	var err error
	c.Conn, err = nats.Connect(url, nats.Nkey(pub(kp), kp.Sign), nats.Timeout(5*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connecting as %s: %v", pub(kp), err)
	}
	t.Cleanup(c.Close)
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var violationRe = regexp.MustCompile(`Permissions Violation for (Publish|Subscription) to "([^"]+)"`)

// expectDenied runs action and requires the server to refuse it with a
// permissions violation for kind ("Publish" or "Subscription") on a subject
// matching pattern (NATS wildcards). Once the violation arrives, action's
// context is cancelled; an action that publishes must then have failed.
func expectDenied(t *testing.T, c *conn, kind, pattern string, action func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- action(ctx) }()
	for {
		select {
		case err := <-c.errs:
			m := violationRe.FindStringSubmatch(err.Error())
			if !errors.Is(err, nats.ErrPermissionViolation) || m == nil || m[1] != kind || !subjectMatches(pattern, m[2]) {
				t.Logf("other asynchronous error: %v", err)
				continue
			}
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Fatalf("error %v is not a permissions violation", err)
			}
			cancel()
			aerr := <-done
			if kind == "Publish" && aerr == nil {
				t.Fatalf("denied publish to %s, yet the action reported success", m[2])
			}
			t.Logf("denied as expected: %v (action: %v)", err, aerr)
			return
		case <-ctx.Done():
			select {
			case aerr := <-done:
				t.Fatalf("no permissions violation for %s %s; action returned %v", kind, pattern, aerr)
			default:
				t.Fatalf("no permissions violation for %s %s within 15s", kind, pattern)
			}
		}
	}
}

// subjectMatches reports whether subject matches pattern's * and >.
func subjectMatches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

func TestEmbeddedServer(t *testing.T) { runSuite(t, startEmbedded) }

// TestDebianServer runs the same suite against the nats-server binary on
// PATH (Debian's package is 2.9.x), skipped when it is not installed unless
// NBSECRETS_REQUIRE_NATS_SERVER=1.
func TestDebianServer(t *testing.T) { runSuite(t, binaryStarter(t)) }

func runSuite(t *testing.T, start starter) {
	d := newDeployment(t)
	url := start(t, writeServerConfig(t, t.TempDir(), d.auth))
	ctx := ctxT(t, 2*time.Minute)

	svcConn := connect(t, url, d.svcNATS)
	svc := startService(t, d, svcConn)
	clients := map[string]*controlplane.Client{}
	userConns := map[string]*conn{}
	for _, u := range []string{"alice", "bob"} {
		userConns[u] = connect(t, url, d.userNATS[u])
		clients[u] = controlplane.NewClient(userConns[u].Conn, u, d.userSign[u], pub(d.curve))
	}
	ids := map[string]string{} // workspace -> id of its owner's secret
	for u, ws := range map[string]string{"alice": "wsa", "bob": "wsb"} {
		info, err := clients[u].Create(ctx, strings.ToUpper(u)+"_TOKEN", []byte("value of "+u), controlplane.CreateOptions{})
		if err != nil {
			t.Fatalf("service writing %s's secret through the API: %v", u, err)
		}
		ids[ws] = info.ID
	}
	keyA, keyB := protocol.RecordKey("wsa", ids["wsa"]), protocol.RecordKey("wsb", ids["wsb"])
	agentA, agentB := connect(t, url, d.agentNATS["wsa"]), connect(t, url, d.agentNATS["wsb"])
	jsA := must(jetstream.New(agentA.Conn))

	t.Run("agent reads its own records", func(t *testing.T) {
		got := readAll(t, agentA, "wsa")
		if len(got) != 1 || got[keyA] == nil {
			t.Fatalf("agent A read %v, want exactly %s", keys(got), keyA)
		}
		o := must(protocol.NewOpener("wsa", []string{pub(d.sign)}, pub(d.curve), d.wsCurve["wsa"]))
		sec, err := o.Open(keyA, got[keyA])
		if err != nil || string(sec.Value) != "value of alice" {
			t.Fatalf("opening %s: %v", keyA, err)
		}
	})
	t.Run("agent cannot create a consumer on another workspace", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*.$KV.nbsecrets.wsb.>", func(ctx context.Context) error {
			_, err := createConsumer(ctx, jsA, protocol.ConsumerName("wsb"), protocol.WorkspaceFilter("wsb"))
			return err
		})
	})
	t.Run("agent cannot create a consumer of another name", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.*.KV_nbsecrets.other-name.>", func(ctx context.Context) error {
			_, err := createConsumer(ctx, jsA, "other-name", protocol.WorkspaceFilter("wsa"))
			return err
		})
	})
	t.Run("agent cannot create a consumer without a filter", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*", func(ctx context.Context) error {
			_, err := jsA.OrderedConsumer(ctx, protocol.StreamName(), jetstream.OrderedConsumerConfig{})
			return err
		})
	})
	t.Run("agent cannot create a multi-filter consumer", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets.*", func(ctx context.Context) error {
			_, err := jsA.OrderedConsumer(ctx, protocol.StreamName(), jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{protocol.WorkspaceFilter("wsa"), protocol.WorkspaceFilter("wsb")},
				DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
			})
			return err
		})
	})
	t.Run("server refuses a configuration that differs from the subject's filter", func(t *testing.T) {
		// The permission allows the subject; the server must then hold the
		// consumer to the filter in it.
		for name, cfg := range map[string]string{
			"other filter": `"filter_subject":"$KV.nbsecrets.wsb.>"`,
			"multi filter": `"filter_subject":"$KV.nbsecrets.wsa.>","filter_subjects":["$KV.nbsecrets.wsa.>","$KV.nbsecrets.wsb.>"]`,
		} {
			msg := createOwnConsumerRaw(t, agentA, jsA, name, cfg)
			var resp struct {
				Error  *struct{ Description string } `json:"error"`
				Config *struct {
					Filter  string   `json:"filter_subject"`
					Filters []string `json:"filter_subjects"`
				} `json:"config"`
			}
			if err := json.Unmarshal(msg.Data, &resp); err != nil {
				t.Fatal(err)
			}
			switch {
			case resp.Error != nil:
				t.Logf("%s: refused: %s", name, resp.Error.Description)
			case resp.Config != nil && resp.Config.Filter == protocol.WorkspaceFilter("wsa") && len(resp.Config.Filters) == 0:
				// nats-server 2.9 does not know filter_subjects and ignores it.
				t.Logf("%s: created with the subject's filter only: %s", name, msg.Data)
			default:
				t.Fatalf("%s: server accepted a consumer beyond the subject's filter: %s", name, msg.Data)
			}
		}
	})
	t.Run("agent cannot read another workspace's keys", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "$JS.API.STREAM.INFO.KV_nbsecrets", func(ctx context.Context) error {
			_, err := jsA.KeyValue(ctx, protocol.Bucket)
			return err
		})
		for _, subj := range []string{
			"$JS.API.DIRECT.GET.KV_nbsecrets.$KV.nbsecrets." + keyB, // KV Get (direct)
			"$JS.API.STREAM.MSG.GET.KV_nbsecrets",                   // KV Get (not direct)
			"$JS.API.DIRECT.GET.KV_nbsecrets",                       // direct get by sequence
		} {
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
	t.Run("agent cannot write any record", func(t *testing.T) {
		for _, key := range []string{keyA, keyB, "wsa.new"} {
			subj := "$KV.nbsecrets." + key
			expectDenied(t, agentA, "Publish", subj, func(ctx context.Context) error { // KV Put
				_, err := jsA.Publish(ctx, subj, []byte("forged"))
				return err
			})
			for _, op := range []string{"DEL", "PURGE"} { // KV Delete, KV Purge
				expectDenied(t, agentA, "Publish", subj, func(ctx context.Context) error {
					m := nats.NewMsg(subj)
					m.Header.Set("KV-Operation", op)
					if op == "PURGE" {
						m.Header.Set("Nats-Rollup", "sub")
					}
					_, err := jsA.PublishMsg(ctx, m)
					return err
				})
			}
		}
		for _, subj := range []string{"$JS.API.STREAM.PURGE.KV_nbsecrets", "$JS.API.STREAM.DELETE.KV_nbsecrets",
			"$JS.API.STREAM.MSG.DELETE.KV_nbsecrets", "$JS.API.STREAM.UPDATE.KV_nbsecrets"} {
			expectDenied(t, agentA, "Publish", subj, func(ctx context.Context) error {
				_, err := agentA.RequestWithContext(ctx, subj, []byte(`{"filter":"$KV.nbsecrets.wsb.>"}`))
				return err
			})
		}
	})
	t.Run("agent cannot act on the API", func(t *testing.T) {
		expectDenied(t, agentA, "Publish", "nbsecrets.api.v1.list", func(ctx context.Context) error {
			_, err := agentA.RequestWithContext(ctx, "nbsecrets.api.v1.list", []byte(`{}`))
			return err
		})
		expectDenied(t, agentA, "Subscription", "nbsecrets.api.v1.*", func(context.Context) error {
			_, err := agentA.QueueSubscribe("nbsecrets.api.v1.*", controlplane.QueueGroup, func(*nats.Msg) {})
			return err
		})
	})
	t.Run("agent cannot see another agent's deliveries", func(t *testing.T) {
		sub, err := agentA.SubscribeSync(">")
		if err == nil {
			expectDenied(t, agentA, "Subscription", ">", func(context.Context) error { return nil })
			_ = sub.Unsubscribe()
		}
		spy := must(agentA.SubscribeSync("_INBOX.>")) // allowed: the account's own inboxes
		if got := readAll(t, agentB, "wsb"); got[keyB] == nil {
			t.Fatalf("agent B read %v, want %s", keys(got), keyB)
		}
		if err := agentA.Flush(); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := spy.Pending(); n != 0 {
			m := must(spy.NextMsg(time.Second))
			t.Fatalf("agent A saw %d messages on _INBOX.> while B read, e.g. %s", n, m.Subject)
		}
		_ = spy.Unsubscribe()
	})
	t.Run("agent cannot aim a delivery at a record", func(t *testing.T) {
		// In one account a pull request whose reply subject is a record's
		// subject makes the consumer write into the stream.
		svcJS := must(jetstream.New(svcConn.Conn))
		before := lastSeq(t, svcJS)
		cons := must(consumerAs(ctxT(t, 10*time.Second), jsA, protocol.ConsumerName("wsa"), protocol.WorkspaceFilter("wsa")))
		name := cons.CachedInfo().Name
		next := "$JS.API.CONSUMER.MSG.NEXT.KV_nbsecrets." + name
		if err := agentA.PublishRequest(next, "$KV.nbsecrets."+keyB, []byte(`{"batch":1,"no_wait":true}`)); err != nil {
			t.Fatal(err)
		}
		inbox := agentA.NewInbox()
		sub := must(agentA.SubscribeSync(inbox))
		if err := agentA.PublishRequest(next, inbox, []byte(`{"batch":1,"expires":5000000000}`)); err != nil {
			t.Fatal(err)
		}
		// The consumer delivers in order: once A holds its second delivery
		// (or the end of the first batch), the first went wherever it went.
		if _, err := sub.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("second pull: %v", err)
		}
		if after := barrier(t, svcJS); after != before+1 {
			t.Fatalf("stream sequence went from %d to %d: something was written besides the barrier", before, after)
		}
		checkRecord(t, d, svcJS, keyB, "value of bob")
	})
	t.Run("user cannot write records or use JetStream", func(t *testing.T) {
		alice := userConns["alice"]
		for _, subj := range []string{"$KV.nbsecrets." + keyA, "$KV.nbsecrets_service.x", "$JS.API.INFO",
			"$JS.API.CONSUMER.CREATE.KV_nbsecrets.x.$KV.nbsecrets.wsa.>", "$JS.API.DIRECT.GET.KV_nbsecrets.$KV.nbsecrets." + keyA} {
			expectDenied(t, alice, "Publish", subj, func(ctx context.Context) error {
				_, err := alice.RequestWithContext(ctx, subj, []byte("forged"))
				return err
			})
		}
		expectDenied(t, alice, "Subscription", "nbsecrets.api.v1.*", func(context.Context) error {
			_, err := alice.Subscribe("nbsecrets.api.v1.*", func(*nats.Msg) {})
			return err
		})
	})
	t.Run("real agent end to end", func(t *testing.T) {
		runAgent(t, d, url, clients["alice"])
	})
	t.Run("user cannot make the service answer onto a record", func(t *testing.T) {
		// In one account the service's reply to a request whose reply
		// subject is a record's subject would be written to the stream.
		alice := userConns["alice"]
		svcJS := must(jetstream.New(svcConn.Conn))
		before := lastSeq(t, svcJS)
		for _, op := range []string{"list", "create", "delete"} {
			if err := alice.PublishRequest(controlplane.SubjectPrefix+op, "$KV.nbsecrets."+keyB, []byte(`{"v":1}`)); err != nil {
				t.Fatal(err)
			}
		}
		// Requests on one subscription are dispatched in order: once this
		// reply is back, the forged ones are in flight; Stop waits for them.
		if _, err := clients["alice"].List(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := svc.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := svcConn.Flush(); err != nil {
			t.Fatal(err)
		}
		if after := barrier(t, svcJS); after != before+1 {
			t.Fatalf("stream sequence went from %d to %d: the service's replies were written", before, after)
		}
		checkRecord(t, d, svcJS, keyB, "value of bob")
	})
	select {
	case err := <-svcConn.errs:
		t.Errorf("the service got an asynchronous error: %v", err)
	default:
	}
}

func startService(t *testing.T, d *deployment, c *conn) *controlplane.Service {
	t.Helper()
	svc, err := controlplane.New(controlplane.Options{Conn: c.Conn, SignKey: d.sign, CurveKey: d.curve, Directory: d.dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("starting the service under its NATS permissions: %v", err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	return svc
}

// consumerAs makes a consumer called name on filter exactly as agent/sync.go
// makes its own (protocol.ConsumerName, the workspace's filter): the one
// left from before deleted, then created afresh.
func consumerAs(ctx context.Context, js jetstream.JetStream, name, filter string) (jetstream.Consumer, error) {
	if err := js.DeleteConsumer(ctx, protocol.StreamName(), name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, err
	}
	return createConsumer(ctx, js, name, filter)
}

// createConsumer creates the consumer of consumerAs without deleting one
// first.
func createConsumer(ctx context.Context, js jetstream.JetStream, name, filter string) (jetstream.Consumer, error) {
	return js.CreateConsumer(ctx, protocol.StreamName(), jetstream.ConsumerConfig{
		Name: name, FilterSubject: filter, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 5 * time.Minute, Replicas: 1, MemoryStorage: true,
	})
}

// readAll reads ws's records the way the agent does (its consumer,
// Messages, until nothing is pending) and returns them by key.
func readAll(t *testing.T, c *conn, ws string) map[string][]byte {
	t.Helper()
	js := must(jetstream.New(c.Conn))
	cons, err := consumerAs(ctxT(t, 10*time.Second), js, protocol.ConsumerName(ws), protocol.WorkspaceFilter(ws))
	if err != nil {
		t.Fatalf("consumer of %s: %v", ws, err)
	}
	got := map[string][]byte{}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		return got
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatalf("messages: %v", err)
	}
	defer it.Stop()
	stop := time.AfterFunc(10*time.Second, it.Stop) // bounds Next
	defer stop.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			t.Fatalf("reading %s: %v", ws, err)
		}
		key, _ := protocol.KeyFromSubject(msg.Subject())
		got[key] = msg.Data()
		if meta, err := msg.Metadata(); err == nil && meta.NumPending == 0 {
			return got
		}
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func lastSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	info, err := must(js.Stream(ctx, protocol.StreamName())).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// barrier writes a record as the service and returns its stream sequence:
// anything the stream took in before it has a lower one.
func barrier(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ack, err := js.Publish(ctxT(t, 10*time.Second), "$KV.nbsecrets.nobody.barrier", []byte("barrier"))
	if err != nil {
		t.Fatalf("service writing: %v", err)
	}
	return ack.Sequence
}

// checkRecord reads key as the service and requires it to open to want.
func checkRecord(t *testing.T, d *deployment, js jetstream.JetStream, key, want string) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	e, err := must(js.KeyValue(ctx, protocol.Bucket)).Get(ctx, key)
	if err != nil {
		t.Fatalf("service reading %s: %v", key, err)
	}
	ws := strings.SplitN(key, ".", 2)[0]
	sec, err := must(protocol.NewOpener(ws, []string{pub(d.sign)}, pub(d.curve), d.wsCurve[ws])).Open(key, e.Value())
	if err != nil || string(sec.Value) != want {
		t.Fatalf("record %s no longer the service's: %v", key, err)
	}
}

// syncBuffer is the shared test buffer: safe for concurrent writes.
type syncBuffer = testutil.Buffer

// runAgent runs a real agent for wsa under its restricted NATS user,
// connected through agent.Connect, and requires it to load alice's secret,
// not bob's, and to follow an update.
func runAgent(t *testing.T, d *deployment, url string, alice *controlplane.Client, configure ...func(*agent.Config)) {
	logs := &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs})
	kp := d.agentNATS["wsa"]
	nc, err := agent.Connect(url, log, nats.Nkey(pub(kp), kp.Sign))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	opener := must(protocol.NewOpener("wsa", []string{pub(d.sign)}, pub(d.curve), d.wsCurve["wsa"]))
	cfg := agent.Config{Workspace: agent.Workspace{ID: "wsa", Owner: "alice"}, Opener: opener, Conn: nc, Logger: log}
	for _, c := range configure {
		c(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
		if strings.Contains(logs.String(), "Permissions Violation") || strings.Contains(logs.String(), "refused") {
			t.Errorf("agent logs show a refusal:\n%s", logs.String())
		}
	}()
	select {
	case <-a.Loaded():
	case <-time.After(20 * time.Second):
		t.Fatalf("agent did not load within 20s; logs:\n%s", logs.String())
	}
	version := func() (uint64, []string) {
		var names []string
		var v uint64
		for _, s := range a.Status().Secrets {
			names = append(names, s.Name)
			if s.Name == "ALICE_TOKEN" {
				v = s.Version
			}
		}
		return v, names
	}
	v1, names := version()
	if v1 == 0 || len(names) != 1 {
		t.Fatalf("agent holds %v, want ALICE_TOKEN only", names)
	}
	info, err := alice.Update(ctxT(t, 10*time.Second), "ALICE_TOKEN", []byte("new value"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if v, _ := version(); v != info.Version {
			return fmt.Errorf("agent holds version %d of ALICE_TOKEN, want %d", v, info.Version)
		}
		return nil
	})
}

// waitFor polls with a deadline (testutil.WaitFor).
var waitFor = testutil.WaitFor

// expectForeignConsumerDenied: agent c (jetstream js) can neither pull from
// nor delete consumer other, another workspace's.
func expectForeignConsumerDenied(t *testing.T, c *conn, js jetstream.JetStream, other string) {
	t.Helper()
	next := "$JS.API.CONSUMER.MSG.NEXT.KV_nbsecrets." + other
	expectDenied(t, c, "Publish", next, func(ctx context.Context) error {
		inbox := c.NewInbox()
		sub, err := c.SubscribeSync(inbox)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		if err := c.PublishRequest(next, inbox, []byte(`{"batch":1,"no_wait":true}`)); err != nil {
			return err
		}
		_, err = sub.NextMsgWithContext(ctx)
		return err
	})
	expectDenied(t, c, "Publish", "$JS.API.CONSUMER.DELETE.KV_nbsecrets."+other, func(ctx context.Context) error {
		return js.DeleteConsumer(ctx, protocol.StreamName(), other)
	})
}

// createOwnConsumerRaw deletes wsa's consumer if it exists and asks, as
// agent c, on the create subject its permissions allow (filter wsa's own
// keys), for that consumer with the extra configuration members cfg; it
// returns the server's answer (case name names the attempt in failures).
func createOwnConsumerRaw(t *testing.T, c *conn, js jetstream.JetStream, name, cfg string) *nats.Msg {
	t.Helper()
	own := protocol.ConsumerName("wsa")
	if err := js.DeleteConsumer(ctxT(t, 10*time.Second), protocol.StreamName(), own); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatal(err)
	}
	subj := "$JS.API.CONSUMER.CREATE.KV_nbsecrets." + own + ".$KV.nbsecrets.wsa.>"
	body := `{"stream_name":"KV_nbsecrets","config":{"name":"` + own + `","deliver_policy":"all","ack_policy":"none","inactive_threshold":60000000000,` + cfg + `}}`
	msg, err := c.RequestWithContext(ctxT(t, 10*time.Second), subj, []byte(body))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return msg
}
