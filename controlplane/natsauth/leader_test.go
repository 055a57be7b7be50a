package natsauth_test

import (
	"encoding/json"
	"fmt"
	"net"
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
	var ls []net.Listener
	ports := make([]int, 2*n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		_ = l.Close()
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
	}
	var confs []string
	for i := range n {
		conf := fmt.Sprintf("server_name: node-%d\nlisten: \"127.0.0.1:%d\"\njetstream {\n  store_dir: %q\n}\n"+
			"cluster {\n  name: nbsecrets-test\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\ninclude \"auth.conf\"\n",
			i+1, ports[i], filepath.Join(dir, fmt.Sprintf("store-%d", i+1)), ports[n+i], strings.Join(routes, ", "))
		path := filepath.Join(dir, fmt.Sprintf("node-%d.conf", i+1))
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		confs = append(confs, path)
	}
	var srvs []*server.Server
	for _, c := range confs {
		srvs = append(srvs, natstest.StartConfig(t, c))
	}
	url := func(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", ports[i]) }
	all := strings.Join([]string{url(0), url(1), url(2)}, ",")

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
