package natsauth_test

import (
	"encoding/json"
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
	agentA := connect(t, url(other), d.agentNATS["wsa"])
	sub := must(agentA.SubscribeSync(controlplane.LeaderElected))
	if err := agentA.Flush(); err != nil {
		t.Fatal(err)
	}
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
