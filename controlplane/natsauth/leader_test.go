package natsauth_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestLeaderElectionReachesAgents: on a three-node JetStream cluster under
// Generate's configuration, the records stream's leader-election advisory
// (published by the server in the service's account) reaches an agent's
// own account through the export, when the stream leader's node goes.
func TestLeaderElectionReachesAgents(t *testing.T) {
	d := newDeployment(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), d.auth, 0o600); err != nil {
		t.Fatal(err)
	}
	const n = 3
	confs, urls := natstest.ClusterConfigs(t, dir, n, "include \"auth.conf\"\n")
	var srvs []*server.Server
	for _, c := range confs {
		srvs = append(srvs, natstest.StartConfig(t, c))
	}
	url := func(i int) string { return urls[i] }
	all := strings.Join(urls, ",")

	svc, err := controlplane.New(controlplane.Options{Conn: connect(t, all, d.svcNATS).Conn, SignKey: d.sign, CurveKey: d.curve,
		Directory: d.dir, Live: true, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctxT(t, 90*time.Second)); err != nil {
		t.Fatalf("starting the service on the cluster: %v", err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	leader := -1
	deadline := time.Now().Add(30 * time.Second)
	for leader < 0 && time.Now().Before(deadline) {
		for i, s := range srvs {
			if s.JetStreamIsStreamLeader(natsauth.ServiceAccount, protocol.StreamName()) {
				leader = i
			}
		}
		time.Sleep(50 * time.Millisecond) // polling, not synchronisation
	}
	if leader < 0 {
		t.Fatal("the records stream has no leader")
	}
	other := (leader + 1) % n
	// The advisory travels in the service's account, where agent A's
	// subscription shows as interest (through the export): on its own
	// node at once, on the others once the route has passed it on. A node
	// that leads the stream a moment after the shutdown publishes the
	// advisory at once; were the route's interest not there yet, the
	// advisory would go nowhere, and the test would blame the export.
	interest := func(i int) int {
		acc, err := srvs[i].LookupAccount(natsauth.ServiceAccount)
		if err != nil {
			t.Fatalf("node-%d: %v", i+1, err)
		}
		return acc.Interest(controlplane.LeaderElected)
	}
	before := map[int]int{}
	for i := range srvs {
		before[i] = interest(i)
	}
	agentA := connect(t, url(other), d.agentNATS["wsa"])
	sub := must(agentA.SubscribeSync(controlplane.LeaderElected))
	if err := agentA.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		for i := range srvs {
			if i != leader && interest(i) <= before[i] {
				return fmt.Errorf("node-%d does not know of agent A's subscription in the service's account yet", i+1)
			}
		}
		return nil
	})
	srvs[leader].Shutdown() // hands the leadership over: a new leader is elected at once
	srvs[leader].WaitForShutdown()
	m, err := sub.NextMsg(60 * time.Second)
	if err != nil {
		t.Fatalf("agent A got no leader-election advisory after node-%d went: %v", leader+1, err)
	}
	var adv struct {
		Stream, Leader string
	}
	if err := json.Unmarshal(m.Data, &adv); err != nil || adv.Stream != protocol.StreamName() || adv.Leader == "" {
		t.Fatalf("advisory %s: %v", m.Data, err)
	}
	t.Logf("agent A (on node-%d) heard %s elect %s after node-%d went", other+1, adv.Stream, adv.Leader, leader+1)
}
