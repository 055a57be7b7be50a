package natsauth_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestRequestBoundToAccount performs the second half of issue 9's finding
// 2 under the generated configuration: a request alice signed, captured
// and sent by bob from his own NATS account (bob's CLI connection), is
// refused, because the server tells the service which account a request
// came from. Alice's own request from her account passes.
func TestRequestBoundToAccount(t *testing.T) {
	d := newDeployment(t)
	url := startEmbedded(t, writeServerConfig(t, t.TempDir(), d.auth))
	ctx := ctxT(t, time.Minute)
	startService(t, d, connect(t, url, d.svcNATS))
	aliceConn, bobConn := connect(t, url, d.userNATS["alice"]), connect(t, url, d.userNATS["bob"])

	// Alice's signing key over bob's connection: what bob can do with a
	// request of alice's he captured (or a key she lost to him).
	asAliceFromBob := controlplane.NewClient(bobConn.Conn, "alice", d.userSign["alice"], pub(d.curve))
	_, err := asAliceFromBob.Create(ctx, "PLANTED", []byte("v"), controlplane.CreateOptions{})
	if !errors.Is(err, controlplane.ErrUnauthenticated) || !strings.Contains(err.Error(), "arrived from the NATS account of bob") {
		t.Fatalf("alice's request from bob's account: %v, want refused", err)
	}
	alice := controlplane.NewClient(aliceConn.Conn, "alice", d.userSign["alice"], pub(d.curve))
	if _, err := alice.Create(ctx, "MINE", []byte("v"), controlplane.CreateOptions{}); err != nil {
		t.Fatalf("alice from her own account: %v", err)
	}
	list, err := alice.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == "PLANTED" {
			t.Fatal("the refused request created a secret")
		}
	}
}

// TestAgentConsumerFlood performs part of issue 9's finding 6: an agent's
// NATS credentials create durable consumers on its own records, one after
// another (the review made 3,000: +121 MB of server memory). The service
// account's JetStream limit stops it at two per workspace plus 64, with
// the server's "maximum consumers" error, and the flood does not take
// anything from the service: it still writes and the other agent still
// reads.
func TestAgentConsumerFlood(t *testing.T) {
	d := newDeployment(t)
	url := startEmbedded(t, writeServerConfig(t, t.TempDir(), d.auth))
	ctx := ctxT(t, 2*time.Minute)
	svcConn := connect(t, url, d.svcNATS)
	startService(t, d, svcConn)
	limit := 2*len(d.dir.Workspaces) + 64

	js := must(jetstream.New(connect(t, url, d.agentNATS["wsa"]).Conn))
	created := 0
	var err error
	for i := range limit + 10 {
		_, err = js.CreateOrUpdateConsumer(ctx, protocol.StreamName(), jetstream.ConsumerConfig{
			Durable: fmt.Sprintf("flood%d", i), FilterSubject: protocol.WorkspaceFilter("wsa"),
		})
		if err != nil {
			break
		}
		created++
	}
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "maximum consumers limit") {
		t.Fatalf("after %d consumers: %v, want the account's maximum consumers limit", created, err)
	}
	if created > limit {
		t.Fatalf("the agent created %d consumers, limit %d", created, limit)
	}
	t.Logf("the agent's flood stopped after %d consumers (limit %d across the account)", created, limit)

	// The service still serves. Its key listings need consumers too: free
	// a few as the server would once an ephemeral flood expired.
	for i := range 8 {
		if err := js.DeleteConsumer(ctx, protocol.StreamName(), fmt.Sprintf("flood%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	bob := controlplane.NewClient(connect(t, url, d.userNATS["bob"]).Conn, "bob", d.userSign["bob"], pub(d.curve))
	if _, err := bob.Create(ctx, "AFTER_FLOOD", []byte("v"), controlplane.CreateOptions{}); err != nil {
		t.Fatalf("the service after the flood: %v", err)
	}
	if got := readAll(t, connect(t, url, d.agentNATS["wsb"]), "wsb"); len(got) != 1 {
		t.Fatalf("the other agent reads %v after the flood", keys(got))
	}
}
