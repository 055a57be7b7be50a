package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// TestDevStoreFromBeforeAccounts: the secrets of a dev instance that ran
// before dev had NATS accounts are still there when dev starts with them.
func TestDevStoreFromBeforeAccounts(t *testing.T) {
	state := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The old dev: no authentication, the store under the state dir.
	old, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(state, "jetstream"), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go old.Start()
	if !old.ReadyForConnections(10 * time.Second) {
		t.Fatal("old server not ready")
	}
	nc, err := nats.Connect(old.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: controlplane.ServiceBucket})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "secrets.kept", []byte("from before")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	old.Shutdown()
	old.WaitForShutdown()

	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	curve, _ := nkeys.CreateCurveKeys()
	cpub, _ := curve.PublicKey()
	dir := &controlplane.Directory{Users: []controlplane.User{{ID: "alice", PublicKey: pub}},
		Workspaces: []controlplane.Workspace{{ID: "ws-alice", Owner: "alice", CurveKey: cpub}}}
	ns, err := startDevNATS(state, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	auth, err := devNATSOption(state, "service", "")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := nats.Connect(ns.ClientURL(), auth)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	sjs, _ := jetstream.New(svc)
	skv, err := sjs.KeyValue(ctx, controlplane.ServiceBucket)
	if err != nil {
		t.Fatalf("the service's bucket after the move: %v", err)
	}
	e, err := skv.Get(ctx, "secrets.kept")
	if err != nil || string(e.Value()) != "from before" {
		t.Fatalf("the earlier instance's state: %v", err)
	}
}
