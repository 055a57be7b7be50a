package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestHubNATSWorkspaceAccounts: hub-service's embedded NATS refuses a
// connection without a key and one with a key no agent registered; an
// agent whose key was registered (and applied with a reload) may read its
// own workspace's records and not another's; a workspace that leaves the
// directory loses its account.
func TestHubNATSWorkspaceAccounts(t *testing.T) {
	dir := t.TempDir()
	h, svcOpt, err := startHubNATS(dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer h.stop()
	url := h.ns.ClientURL()
	svcConn, err := nats.Connect(url, svcOpt, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer svcConn.Close()
	h.conn = svcConn
	sign, _ := nkeys.CreateAccount()
	curve, _ := nkeys.CreateCurveKeys()
	wsCurve, _ := nkeys.CreateCurveKeys()
	wsCurvePub, _ := wsCurve.PublicKey()
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	d := &controlplane.Directory{Users: []controlplane.User{{ID: "alice", PublicKey: upub}},
		Workspaces: []controlplane.Workspace{{ID: "alice", Owner: "alice", Projects: []string{}, CurveKey: wsCurvePub}}}
	svc, err := controlplane.New(controlplane.Options{Conn: svcConn, SignKey: sign, CurveKey: curve, Directory: d})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()

	agentKP, _ := nkeys.CreateUser()
	agentPub, _ := agentKP.PublicKey()
	connectAgent := func() (*nats.Conn, error) {
		return nats.Connect(url, nats.Nkey(agentPub, agentKP.Sign), nats.NoReconnect())
	}
	if nc, err := connectAgent(); err == nil {
		nc.Close()
		t.Fatal("an unregistered key connected")
	}
	if nc, err := nats.Connect(url, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected without a key")
	}
	if err := h.setAgentKey("alice", agentPub); err != nil {
		t.Fatal(err)
	}
	if err := h.setAgentKey("bob", agentPub); err == nil {
		t.Fatal("one key registered for two workspaces")
	}
	if err := h.apply(d); err != nil {
		t.Fatal(err)
	}
	if h.ns.ClientURL() != url {
		t.Fatalf("the server moved from %s to %s", url, h.ns.ClientURL())
	}
	nc, err := connectAgent()
	if err != nil {
		t.Fatalf("the registered agent: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	consume := func(ws string) error {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		// As the agent creates its consumer (agent/sync.go).
		_, err := js.CreateConsumer(ctx, protocol.StreamName(), jetstream.ConsumerConfig{
			Name: protocol.ConsumerName(ws), FilterSubject: protocol.WorkspaceFilter(ws),
			DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy, AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true})
		return err
	}
	if err := consume("alice"); err != nil {
		t.Fatalf("alice's agent reading its records: %v", err)
	}
	if err := consume("bob"); err == nil {
		t.Fatal("alice's agent created a consumer on bob's records")
	}
	// The workspace leaves (its server stopped): its account goes.
	if err := h.apply(&controlplane.Directory{}); err != nil {
		t.Fatal(err)
	}
	if nc2, err := connectAgent(); err == nil {
		nc2.Close()
		t.Fatal("a workspace that left still connects")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("connect after leaving: %v", err)
	}
}
