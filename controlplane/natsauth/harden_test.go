package natsauth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/controlplane"
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
