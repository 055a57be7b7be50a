package natsauth_test

import (
	"context"
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

// TestAgentConsumerConfinement performs issue 9's finding 6: with an
// agent's NATS credentials, create consumers of other names (the review
// made 3,000 durable ones: +121 MB of server memory), pull from and delete
// another workspace's consumer by name (names show on the monitoring
// port), and create a push consumer under its own name whose deliveries
// go to a subject of its choosing, a bucket's included. Each is refused or
// harmless: the agent has one consumer name, and the server stores no
// delivery. The service account's consumer limit is in the generated
// configuration as the second wall.
func TestAgentConsumerConfinement(t *testing.T) {
	d := newDeployment(t)
	if !strings.Contains(string(d.auth), fmt.Sprintf("max_consumers: %d", 2*len(d.dir.Workspaces)+64)) {
		t.Fatalf("the generated configuration has no consumer limit:\n%s", d.auth)
	}
	url := startEmbedded(t, writeServerConfig(t, t.TempDir(), d.auth))
	ctx := ctxT(t, 2*time.Minute)
	svcConn := connect(t, url, d.svcNATS)
	startService(t, d, svcConn)
	for _, u := range []string{"alice", "bob"} {
		c := controlplane.NewClient(connect(t, url, d.userNATS[u]).Conn, u, d.userSign[u], pub(d.curve))
		if _, err := c.Create(ctx, strings.ToUpper(u)+"_TOKEN", []byte("value of "+u), controlplane.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	agentA, agentB := connect(t, url, d.agentNATS["wsa"]), connect(t, url, d.agentNATS["wsb"])
	jsA := must(jetstream.New(agentA.Conn))
	if got := readAll(t, agentB, "wsb"); len(got) != 1 { // B's consumer exists, by its known name
		t.Fatalf("agent B read %v", keys(got))
	}

	for i := range 3 {
		name := fmt.Sprintf("flood%d", i)
		expectDenied(t, agentA, "Publish", "$JS.API.CONSUMER.CREATE.KV_nbsecrets."+name+".>", func(ctx context.Context) error {
			_, err := jsA.CreateOrUpdateConsumer(ctx, protocol.StreamName(), jetstream.ConsumerConfig{
				Durable: name, FilterSubject: protocol.WorkspaceFilter("wsa")})
			return err
		})
	}
	expectForeignConsumerDenied(t, agentA, jsA, protocol.ConsumerName("wsb"))
	if got := readAll(t, agentB, "wsb"); len(got) != 1 {
		t.Fatalf("agent B reads %v after A's attempts", keys(got))
	}

	// A push consumer under A's own name, delivering onto a bucket's
	// subjects: nothing may be stored.
	svcJS := must(jetstream.New(svcConn.Conn))
	held := bucketSubjects(t, svcJS)
	own := protocol.ConsumerName("wsa")
	for _, deliver := range []string{"nbsecrets.api.v1.create", "$KV." + protocol.Bucket + ".wsb.forged", "$KV." + controlplane.ServiceBucket + ".secrets.forged"} {
		_ = jsA.DeleteConsumer(ctx, protocol.StreamName(), own)
		body := `{"stream_name":"KV_nbsecrets","config":{"name":"` + own + `","deliver_subject":"` + deliver + `","deliver_policy":"all","ack_policy":"none","filter_subject":"$KV.nbsecrets.wsa.>"}}`
		msg, err := agentA.RequestWithContext(ctx, "$JS.API.CONSUMER.CREATE.KV_nbsecrets."+own+".$KV.nbsecrets.wsa.>", []byte(body))
		if err != nil {
			t.Fatalf("push consumer to %s: %v", deliver, err)
		}
		t.Logf("push consumer delivering to %s: %s", deliver, msg.Data)
	}
	expectNothingStored(t, svcJS, held)
}

// bucketSubjects returns, for the stream of each bucket, how many
// messages each subject holds.
func bucketSubjects(t *testing.T, js jetstream.JetStream) map[string]map[string]uint64 {
	t.Helper()
	held := map[string]map[string]uint64{}
	for _, st := range []string{protocol.StreamName(), "KV_" + controlplane.ServiceBucket, "KV_" + controlplane.NonceBucket} {
		ctx := ctxT(t, 10*time.Second)
		held[st] = must(must(js.Stream(ctx, st)).Info(ctx, jetstream.WithSubjectFilter(">"))).State.Subjects
	}
	return held
}

// expectNothingStored watches the buckets' streams for 3 seconds (a push
// consumer delivers on its own schedule, and an absence cannot be awaited
// otherwise) and fails if a subject gains a message since held was taken.
// The service itself writes one key meanwhile, its background lease
// (renewed every few seconds), so a stream's last sequence may move: the
// lease's subject is the one allowed to.
func expectNothingStored(t *testing.T, js jetstream.JetStream, held map[string]map[string]uint64) {
	t.Helper()
	leaseSubject := "$KV." + controlplane.ServiceBucket + ".lease.background"
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		for st, now := range bucketSubjects(t, js) {
			for subj, n := range now {
				if n > held[st][subj] && subj != leaseSubject {
					t.Fatalf("stream %s: %s went from %d to %d messages: a delivery was stored", st, subj, held[st][subj], n)
				}
			}
		}
		time.Sleep(50 * time.Millisecond) // the poll interval
	}
}
