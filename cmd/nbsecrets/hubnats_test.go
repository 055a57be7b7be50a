package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// hubAgent is one workspace's agent as `agent --exec` runs it: its keys,
// its connection (counting disconnections) and a real agent.Agent.
type hubAgent struct {
	ws          string
	natsKP      nkeys.KeyPair
	curve       nkeys.KeyPair
	nc          *nats.Conn
	a           *agent.Agent
	disconnects atomic.Int64
	errs        chan error
}

func newHubAgent(t *testing.T, ws string) *hubAgent {
	t.Helper()
	h := &hubAgent{ws: ws, errs: make(chan error, 64)}
	var err error
	if h.natsKP, err = nkeys.CreateUser(); err != nil {
		t.Fatal(err)
	}
	if h.curve, err = nkeys.CreateCurveKeys(); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *hubAgent) natsPub() string { p, _ := h.natsKP.PublicKey(); return p }
func (h *hubAgent) curvePub() string {
	p, _ := h.curve.PublicKey()
	return p
}

// run connects as startHubAgent does and runs the agent until the test
// ends.
func (h *hubAgent) run(t *testing.T, url string, sign, curve nkeys.KeyPair, log hclog.Logger) {
	t.Helper()
	nc, err := agent.Connect(url, log, nats.Nkey(h.natsPub(), h.natsKP.Sign), nats.CustomInboxPrefix(natsauth.AgentInboxPrefix(h.ws)), nats.IgnoreAuthErrorAbort(),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { h.disconnects.Add(1) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case h.errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	h.nc = nc
	t.Cleanup(nc.Close)
	signPub, _ := sign.PublicKey()
	curvePub, _ := curve.PublicKey()
	opener, err := protocol.NewOpener(h.ws, []string{signPub}, curvePub, h.curve)
	if err != nil {
		t.Fatal(err)
	}
	h.a, err = agent.New(agent.Config{Workspace: agent.Workspace{ID: h.ws, Owner: h.ws}, Opener: opener, Conn: nc, Logger: log.Named(h.ws)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.a.Run(ctx) }() // owned by the cleanup
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-h.a.Loaded():
	case <-time.After(30 * time.Second):
		t.Fatalf("agent of %s did not load within 30s", h.ws)
	}
}

// holds reports the names and versions the agent holds.
func (h *hubAgent) holds() map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range h.a.Status().Secrets {
		out[s.Name] = s.Version
	}
	return out
}

// TestHubNATSRegistrationKeepsConnections is issue 11's "no restart": agent
// 1 connected and consuming; agent 2 registers (the time is logged); agent
// 1's connection is not dropped (no disconnection, the same client id) and
// follows an update; agent 2 gets its records and cannot read agent 1's
// or create its consumer; an unregistered key is refused; when agent 1's
// workspace leaves the directory its connection is closed at once and its
// reconnection refused, while agent 2 stays; when it is back, agent 1
// reconnects.
func TestHubNATSRegistrationKeepsConnections(t *testing.T) {
	dir := t.TempDir()
	logs := &testutil.Buffer{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs})
	h, svcOpt, err := startHubNATS(dir, "127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	defer h.stop()
	url := h.ns.ClientURL()
	svcConn, err := nats.Connect(url, svcOpt)
	if err != nil {
		t.Fatal(err)
	}
	defer svcConn.Close()
	if err := h.startCallout(svcConn); err != nil {
		t.Fatal(err)
	}
	sign, _ := nkeys.CreateAccount()
	curve, _ := nkeys.CreateCurveKeys()
	a1, a2 := newHubAgent(t, "alice"), newHubAgent(t, "bob")
	users := []controlplane.User{}
	for _, u := range []string{"alice", "bob"} {
		k, _ := nkeys.CreateUser()
		p, _ := k.PublicKey()
		users = append(users, controlplane.User{ID: u, PublicKey: p})
	}
	wsOf := func(a *hubAgent) controlplane.Workspace {
		return controlplane.Workspace{ID: a.ws, Owner: a.ws, Projects: []string{}, CurveKey: a.curvePub()}
	}
	dirWith := func(as ...*hubAgent) *controlplane.Directory {
		d := &controlplane.Directory{Users: users}
		for _, a := range as {
			d.Workspaces = append(d.Workspaces, wsOf(a))
		}
		return d
	}
	svc, err := controlplane.New(controlplane.Options{Conn: svcConn, SignKey: sign, CurveKey: curve, Directory: dirWith()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	// register is what the registrar does for an agent: its key, then the
	// directory with its workspace applied to NATS and the service.
	register := func(a *hubAgent, d *controlplane.Directory) time.Duration {
		start := time.Now()
		if err := h.setAgentKey(a.ws, a.natsPub()); err != nil {
			t.Fatal(err)
		}
		if err := h.apply(d); err != nil {
			t.Fatal(err)
		}
		if err := svc.SetDirectory(d); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	for _, u := range []string{"alice", "bob"} {
		c, err := svc.As(u)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Create(ctx, controlplane.Args{Name: strings.ToUpper(u) + "_TOKEN"}, []byte("value of "+u)); err != nil {
			t.Fatal(err)
		}
	}

	// An agent whose key is not registered (or not yet applied) is refused.
	if nc, err := nats.Connect(url, nats.Nkey(a1.natsPub(), a1.natsKP.Sign), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("an unregistered key connected")
	}
	if err := h.setAgentKey("alice", a1.natsPub()); err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, nats.Nkey(a1.natsPub(), a1.natsKP.Sign), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("a key whose workspace is not in the directory connected")
	}
	if err := h.setAgentKey("bob", a1.natsPub()); err == nil {
		t.Fatal("one key registered for two workspaces")
	}

	t.Logf("agent 1 registered in %v", register(a1, dirWith(a1)))
	a1.run(t, url, sign, curve, log)
	if got := a1.holds(); len(got) != 1 || got["ALICE_TOKEN"] == 0 {
		t.Fatalf("agent 1 holds %v, want ALICE_TOKEN", got)
	}
	cid1, err := a1.nc.GetClientID()
	if err != nil {
		t.Fatal(err)
	}

	took := register(a2, dirWith(a1, a2))
	t.Logf("agent 2 registered in %v (no server change)", took)
	a2.run(t, url, sign, curve, log)
	if got := a2.holds(); len(got) != 1 || got["BOB_TOKEN"] == 0 {
		t.Fatalf("agent 2 holds %v, want BOB_TOKEN only", got)
	}
	// Agent 1 kept its connection and still follows changes.
	alice, _ := svc.As("alice")
	info, err := alice.Update(ctx, controlplane.Args{Name: "ALICE_TOKEN"}, []byte("new value"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, func() error {
		if v := a1.holds()["ALICE_TOKEN"]; v != info.Version {
			return fmt.Errorf("agent 1 holds version %d, want %d", v, info.Version)
		}
		return nil
	})
	if n, r := a1.disconnects.Load(), a1.nc.Stats().Reconnects; n != 0 || r != 0 {
		t.Fatalf("agent 1 was disconnected %d times (reconnects %d) while agent 2 registered", n, r)
	}
	if cid, _ := a1.nc.GetClientID(); cid != cid1 {
		t.Fatalf("agent 1's connection changed from client %d to %d", cid1, cid)
	}

	// Agent 2 against agent 1's records and consumer.
	js2, _ := jetstream.New(a2.nc)
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = js2.CreateConsumer(cctx, protocol.StreamName(), jetstream.ConsumerConfig{Name: protocol.ConsumerName("alice"),
		FilterSubject: protocol.WorkspaceFilter("alice"), AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true})
	ccancel()
	if err == nil {
		t.Fatal("agent 2 created agent 1's consumer")
	}
	waitViolation(t, a2.errs, "$JS.API.CONSUMER.CREATE.KV_nbsecrets.nbsecrets-ws-alice.$KV.nbsecrets.alice.>")
	cctx, ccancel = context.WithTimeout(ctx, 5*time.Second)
	_, err = js2.CreateConsumer(cctx, protocol.StreamName(), jetstream.ConsumerConfig{Name: protocol.ConsumerName("bob"),
		FilterSubject: protocol.WorkspaceFilter("alice"), AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true})
	ccancel()
	if err == nil {
		t.Fatal("agent 2 made a consumer on agent 1's records")
	}
	waitViolation(t, a2.errs, "$JS.API.CONSUMER.CREATE.KV_nbsecrets.nbsecrets-ws-bob.$KV.nbsecrets.alice.>")

	// Alice's server stops: her workspace leaves.
	start := time.Now()
	register(a2, dirWith(a2))
	testutil.WaitFor(t, 30*time.Second, func() error {
		if a1.disconnects.Load() == 0 {
			return errors.New("agent 1 not disconnected")
		}
		if err := a1.nc.LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			return fmt.Errorf("agent 1's reconnection not refused yet (last error: %v)", err)
		}
		return nil
	})
	t.Logf("agent 1 cut off %v after its workspace left", time.Since(start))
	if a1.nc.IsConnected() {
		t.Fatal("agent 1 is connected again after its workspace left")
	}
	if n := a2.disconnects.Load(); n != 0 || !a2.nc.IsConnected() {
		t.Fatalf("agent 2 was disconnected %d times when agent 1's workspace left", n)
	}
	// A refusal is not final (the agent ignores the auth error abort): when
	// the workspace is back (its agent registers again, as after a service
	// restart), the agent reconnects and follows changes.
	register(a1, dirWith(a1, a2))
	info, err = alice.Update(ctx, controlplane.Args{Name: "ALICE_TOKEN"}, []byte("third value"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, func() error {
		if !a1.nc.IsConnected() {
			return errors.New("agent 1 not reconnected")
		}
		if v := a1.holds()["ALICE_TOKEN"]; v != info.Version {
			return fmt.Errorf("agent 1 holds version %d, want %d", v, info.Version)
		}
		return nil
	})
	for _, want := range []string{"agent connection closed", "no registered agent has this key"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no log line with %q:\n%s", want, logs.String())
		}
	}
}

// waitViolation waits for a permissions violation on subject among errs.
func waitViolation(t *testing.T, errs <-chan error, subject string) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
				return
			}
			t.Logf("other asynchronous error: %v", err)
		case <-deadline:
			t.Fatalf("no permissions violation for %s within 15s", subject)
		}
	}
}
