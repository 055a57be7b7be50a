package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// convergeTimeout bounds how long agents may take to hold a version after
// a node is lost: raft elections (4-9 s after a crash), the ordered
// consumer noticing its consumer is gone, and a loaded machine.
const convergeTimeout = 90 * time.Second

// liveConvergeTimeout bounds how long live agents may take to hold a
// version acknowledged just before the stream leader was lost, with no
// write after it: well under their periodic read (5 to 7.5 minutes), so
// that only the read after the leader election can make it.
const liveConvergeTimeout = 60 * time.Second

// clusterWorld is a secrets service with R3 buckets, a user and two real
// agents (no kernels) on a NATS cluster, and a writer that keeps updating
// a project secret.
type clusterWorld struct {
	t      *testing.T
	urls   string
	sign   nkeys.KeyPair
	curve  nkeys.KeyPair
	dir    *Directory
	wsKeys map[string]nkeys.KeyPair
	client *Client
	agents map[string]*agent.Agent
	logs   *syncBuffer
	nc     *nats.Conn
	js     jetstream.JetStream
	id     string // the secret's id
	live   bool   // the service republishes, the agents use live delivery
	// crash: nodes die without handing leaderships over (SIGKILL), so
	// the survivors elect the records stream's leader after the agents
	// on the lost node have reconnected: in live delivery each agent
	// must see the election and read again.
	crash bool
	conns map[string]*nats.Conn

	mu    sync.Mutex
	acked uint64 // highest version an Update returned
	at    map[uint64]time.Time
	fails int
}

func newClusterWorld(t *testing.T, urls string, live bool) *clusterWorld {
	t.Helper()
	w := &clusterWorld{t: t, urls: urls, sign: must(nkeys.CreateAccount()), curve: must(nkeys.CreateCurveKeys()),
		wsKeys: map[string]nkeys.KeyPair{}, agents: map[string]*agent.Agent{}, logs: &syncBuffer{}, at: map[uint64]time.Time{},
		live: live, conns: map[string]*nats.Conn{}}
	user := must(nkeys.CreateUser())
	w.dir = &Directory{Users: []User{{ID: "alice", PublicKey: must(user.PublicKey())}},
		Projects: []Project{{ID: "ml", Members: []Member{{"alice", RoleAdmin}}}}}
	for _, ws := range []string{"ws-a", "ws-b"} {
		k := must(nkeys.CreateCurveKeys())
		w.wsKeys[ws] = k
		w.dir.Workspaces = append(w.dir.Workspaces, Workspace{ID: ws, Owner: "alice", Projects: []string{"ml"}, CurveKey: must(k.PublicKey())})
	}
	// The logs go to the test's output when it fails, or always with
	// NBSECRETS_CLUSTER_LOGS set (to see where convergence time goes).
	t.Cleanup(func() {
		if (t.Failed() || os.Getenv("NBSECRETS_CLUSTER_LOGS") != "") && !strings.Contains(w.logs.String(), "cluster-value") {
			t.Logf("the service's and agents' logs:\n%s", w.logs.String())
		}
	})
	w.nc = w.connect("test")
	w.js = must(jetstream.New(w.nc))
	svcConn := w.connect("service")
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: w.logs})
	svc, err := New(Options{Conn: svcConn, SignKey: w.sign, CurveKey: w.curve, Directory: w.dir, Logger: logger, Replicas: 3, Live: live})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	w.client = NewClient(w.connect("client"), "alice", user, must(w.curve.PublicKey()))
	for i, ws := range []string{"ws-a", "ws-b"} {
		w.startAgent(ws, i)
	}
	return w
}

func (w *clusterWorld) connect(name string) *nats.Conn {
	w.t.Helper()
	nc, err := nats.Connect(w.urls, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(nc.Close)
	return nc
}

// startAgent starts ws's agent, connected first to node i (from 0): the
// agents start on different nodes, so that losing one node leaves one
// connected.
func (w *clusterWorld) startAgent(ws string, i int) {
	t := w.t
	logger := hclog.New(&hclog.LoggerOptions{Name: ws, Level: hclog.Debug, Output: w.logs})
	urls := strings.Split(w.urls, ",")
	i %= len(urls)
	nc, err := agent.Connect(strings.Join(append(urls[i:], urls[:i]...), ","), logger, nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	opener := must(protocol.NewOpener(ws, []string{must(w.sign.PublicKey())}, must(w.curve.PublicKey()), w.wsKeys[ws]))
	delivery := agent.DeliveryConsumer
	if w.live {
		delivery = agent.DeliveryLive
	}
	a, err := agent.New(agent.Config{Workspace: agent.Workspace{ID: ws, Owner: "alice", Projects: []string{"ml"}},
		Opener: opener, Conn: nc, Logger: logger, Delivery: delivery})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }() // owned by the test: cancelled and awaited in its clean-up
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", ws, err)
		}
		nc.Close()
	})
	w.agents[ws] = a
	w.conns[ws] = nc
}

// version is the version of the secret agent ws holds, 0 for none.
func (w *clusterWorld) version(ws string) uint64 {
	for _, s := range w.agents[ws].Status().Secrets {
		if s.SecretID == w.id {
			return s.Version
		}
	}
	return 0
}

// waitAgents waits until every agent holds version v or a later one and
// returns when that happened.
func (w *clusterWorld) waitAgents(v uint64, timeout time.Duration) time.Time {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for ws := range w.agents {
			if w.version(ws) < v {
				all = false
			}
		}
		if all {
			return time.Now()
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("agents hold versions a=%d b=%d, not %d, %v later", w.version("ws-a"), w.version("ws-b"), v, timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling, not synchronisation
	}
}

// waitLog waits until the logs hold line past their first since bytes,
// failing the test at deadline.
func (w *clusterWorld) waitLog(line string, since int, deadline time.Time) {
	w.t.Helper()
	for !strings.Contains(w.logs.String()[since:], line) {
		if time.Now().After(deadline) {
			w.t.Fatalf("no log line %q", line)
		}
		time.Sleep(50 * time.Millisecond) // polling, not synchronisation
	}
}

// write keeps updating the secret until ctx ends, noting every version an
// Update acknowledged and when.
func (w *clusterWorld) write(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := w.client.Update(cctx, "TOKEN", []byte(fmt.Sprintf("cluster-value-%d", i)))
		cancel()
		w.mu.Lock()
		if err != nil {
			w.fails++
		} else {
			w.acked = max(w.acked, info.Version)
			w.at[info.Version] = time.Now()
		}
		w.mu.Unlock()
		if err != nil {
			time.Sleep(50 * time.Millisecond) // a pause between retries, not synchronisation
		}
	}
}

// ackedAfter waits for the first version acknowledged after t.
func (w *clusterWorld) ackedAfter(t time.Time, timeout time.Duration) uint64 {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		var best uint64
		for v, at := range w.at {
			if at.After(t) && (best == 0 || v < best) {
				best = v
			}
		}
		w.mu.Unlock()
		if best != 0 {
			return best
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("no update acknowledged within %v of losing a node", timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling, not synchronisation
	}
}

// nodeOf returns the server name leading the records' stream, or (with a
// workspace) the one holding that workspace agent's consumer, in live
// delivery (where the agent keeps no consumer) the one its connection is
// on.
func (w *clusterWorld) nodeOf(ws string) string {
	w.t.Helper()
	if ws != "" && w.live {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if name := w.conns[ws].ConnectedServerName(); name != "" {
				return name
			}
			time.Sleep(100 * time.Millisecond) // polling, not synchronisation
		}
		w.t.Fatalf("agent %s is not connected", ws)
	}
	deadline := time.Now().Add(convergeTimeout)
	var last error
	for time.Now().Before(deadline) {
		// Each try with a deadline of its own: a request lost with a
		// node may otherwise hold the whole wait.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := w.js.Stream(ctx, protocol.StreamName())
		if err != nil {
			last = err
		}
		if err == nil && ws == "" {
			if cl := st.CachedInfo().Cluster; cl != nil && cl.Leader != "" {
				cancel()
				return cl.Leader
			}
		}
		if err == nil && ws != "" {
			l := st.ListConsumers(ctx)
			for ci := range l.Info() {
				if ci.Config.FilterSubject == protocol.WorkspaceFilter(ws) || len(ci.Config.FilterSubjects) == 1 && ci.Config.FilterSubjects[0] == protocol.WorkspaceFilter(ws) {
					if ci.Cluster != nil && ci.Cluster.Leader != "" {
						cancel()
						return ci.Cluster.Leader
					}
				}
			}
		}
		cancel()
		time.Sleep(100 * time.Millisecond) // polling, not synchronisation
	}
	w.t.Fatalf("cannot find the node of %q (last error: %v)", ws, last)
	return ""
}

// failover runs the writer, loses each node the test names in turn with
// lose and brings it back with restore, and checks that every agent
// converges to what was acknowledged after each loss and at the end.
func (w *clusterWorld) failover(lose, restore func(node string), targets ...string) {
	t := w.t
	ctx := context.Background()
	// The first request can come before the buckets the service has just
	// made on the new cluster take writes (their streams' leaders elected,
	// and the leader's interest in the bucket's subjects routed to the
	// service's node): the service then answers with an error, nothing
	// changed ("recording the request's nonce: nats: no response from
	// stream", seen under load). Sent again, as a user would.
	var info *SecretInfo
	var err error
	deadline := time.Now().Add(convergeTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		info, err = w.client.Create(cctx, "TOKEN", []byte("cluster-value-first"), CreateOptions{Project: "ml"})
		cancel()
		if err == nil {
			break
		}
		if errors.Is(err, ErrExists) || time.Now().After(deadline) {
			t.Fatalf("first create: %v", err)
		}
		t.Logf("first create: %v; sending it again", err)
		time.Sleep(100 * time.Millisecond) // a pause between retries, not synchronisation
	}
	w.id = info.ID
	w.waitAgents(1, convergeTimeout)
	if w.live {
		w.loseAfterAck(lose, restore)
	}

	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.write(wctx) }() // owned by failover: stopped below
	defer func() { stop(); <-done }()
	for _, target := range targets {
		node := w.nodeOf(target)
		what := "the records' stream leader"
		switch {
		case target != "" && w.live:
			what = "the node " + target + "'s agent is connected to"
		case target != "":
			what = "the node with " + target + "'s consumer"
		}
		w.ackedAfter(time.Now(), convergeTimeout) // writes flow before the loss
		lost := time.Now()
		lose(node)
		v := w.ackedAfter(lost, convergeTimeout)
		w.mu.Lock()
		ackAt := w.at[v]
		w.mu.Unlock()
		conv := w.waitAgents(v, convergeTimeout)
		t.Logf("lost %s (%s): writes acknowledged again after %v, every agent held that version after %v",
			what, node, ackAt.Sub(lost).Round(time.Millisecond), conv.Sub(lost).Round(time.Millisecond))
		restore(node)
	}
	stop()
	<-done

	// Nothing acknowledged is lost: one more update lands and reaches
	// every agent, and every workspace's record is at its version.
	var last *SecretInfo
	deadline = time.Now().Add(convergeTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		last, err = w.client.Update(cctx, "TOKEN", []byte("cluster-value-last"))
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("final update: %v", err)
	}
	w.mu.Lock()
	acked, fails := w.acked, w.fails
	w.mu.Unlock()
	if last.Version <= acked {
		t.Fatalf("final update got version %d, not above the acknowledged %d", last.Version, acked)
	}
	w.waitAgents(last.Version, convergeTimeout)
	// The bucket answers a get from any replica (direct get), and a
	// replica a quorum did not wait for, such as the node just restored
	// and still catching up, may not hold the last write yet: a record
	// older than the final version is read again until the deadline; one
	// at another value, or past it, fails at once.
	kv := must(w.js.KeyValue(ctx, protocol.Bucket))
	deadline = time.Now().Add(convergeTimeout)
	for ws, k := range w.wsKeys {
		o := must(protocol.NewOpener(ws, []string{must(w.sign.PublicKey())}, must(w.curve.PublicKey()), k))
		for {
			e, err := kv.Get(ctx, protocol.RecordKey(ws, w.id))
			if err != nil {
				t.Fatal(err)
			}
			sec, err := o.Open(e.Key(), e.Value())
			if err != nil {
				t.Fatalf("%s: record: %v", ws, err)
			}
			if sec.Version == last.Version && string(sec.Value) == "cluster-value-last" {
				break
			}
			if sec.Version >= last.Version || time.Now().After(deadline) {
				t.Fatalf("%s: record at version %d, want the final version %d", ws, sec.Version, last.Version)
			}
			time.Sleep(50 * time.Millisecond) // polling, not synchronisation
		}
	}
	t.Logf("%d updates acknowledged, %d failed during the losses", acked-1, fails)

	if strings.Contains(w.logs.String(), "cluster-value") {
		t.Fatal("a secret value appears in a log line")
	}
}

// loseAfterAck updates the secret once and, as soon as the update is
// acknowledged, loses the records' stream leader, with no write after:
// only the leader republishes a record, when it stores it, so a record a
// crashed leader stored but did not get republished reaches live agents
// through nothing but their read after the election. Every agent must
// hold the version within seconds, not at its periodic read (minutes).
func (w *clusterWorld) loseAfterAck(lose, restore func(node string)) {
	t := w.t
	node := w.nodeOf("")
	ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
	defer cancel()
	info, err := w.client.Update(ctx, "TOKEN", []byte("cluster-value-before-loss"))
	if err != nil {
		t.Fatal(err)
	}
	acked := time.Now()
	// Which agents are on the node about to be lost, known before the
	// loss: a count of reconnects taken after it races with the agent's
	// own noticing of the closed connection.
	reconnects := map[string]uint64{}
	onLost := map[string]bool{}
	for ws, nc := range w.conns {
		reconnects[ws] = nc.Stats().Reconnects
		onLost[ws] = nc.ConnectedServerName() == node
	}
	// Only lines logged after the loss count: a reconnect or an election
	// before it (a loaded machine's raft may elect without a loss) is not
	// the read this loss calls for.
	since := len(w.logs.String())
	lose(node)
	conv := w.waitAgents(info.Version, liveConvergeTimeout)
	t.Logf("lost the records' stream leader (%s) right after version %d was acknowledged, no write after: every agent held it after %v",
		node, info.Version, conv.Sub(acked).Round(time.Millisecond))
	if w.crash {
		// Each agent that kept its connection heard the election and read
		// again: the path a record stored and never republished takes.
		// One that was on the lost node reads again once reconnected,
		// retrying until a read succeeds: after the election.
		deadline := time.Now().Add(liveConvergeTimeout)
		for ws := range w.agents {
			if onLost[ws] || w.conns[ws].Stats().Reconnects != reconnects[ws] {
				w.waitLog(ws+".sync: NATS connection re-established; reading the records again", since, deadline)
				t.Logf("agent %s was on the lost node: it read again once reconnected", ws)
				continue
			}
			w.waitLog(ws+".sync: reading the records again: workspace="+ws+" reason=\"agent: the records stream elected a leader", since, deadline)
		}
		t.Logf("every agent left connected had read its records again after the election within %v of the loss", time.Since(acked).Round(time.Millisecond))
	}
	w.mu.Lock()
	w.acked = max(w.acked, info.Version)
	w.mu.Unlock()
	restore(node)
}

// TestClusterFailover: on three in-process nodes, lose the records'
// stream leader, then the node holding an agent's consumer, while updates
// keep coming. In-process nodes stop gracefully (they hand their raft
// leaderships over); TestClusterCrash kills processes.
func TestClusterFailover(t *testing.T) {
	for _, live := range []bool{false, true} {
		t.Run(deliveryName(live), func(t *testing.T) { clusterFailover(t, live) })
	}
}

func deliveryName(live bool) string {
	if live {
		return agent.DeliveryLive
	}
	return agent.DeliveryConsumer
}

func clusterFailover(t *testing.T, live bool) {
	c := natstest.StartCluster(t, 3)
	w := newClusterWorld(t, c.URLs(), live)
	index := func(node string) int {
		var i int
		if _, err := fmt.Sscanf(node, "node-%d", &i); err != nil {
			t.Fatalf("node %q: %v", node, err)
		}
		return i - 1
	}
	w.failover(
		func(node string) { c.Stop(index(node)) },
		func(node string) { c.Restart(index(node)); c.WaitReady() },
		"", "ws-a")
}

// TestClusterCrash: the same losses as TestClusterFailover, but each node
// is a process killed with SIGKILL, as a crashed machine goes: no
// leadership is handed over, so the survivors wait for raft's election
// timeout (4-9 s) and agents for their consumer's missed heartbeats.
func TestClusterCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash failover waits for raft elections; skipped with -short")
	}
	for _, live := range []bool{false, true} {
		t.Run(deliveryName(live), func(t *testing.T) {
			c := natstest.StartProcessCluster(t, 3)
			w := newClusterWorld(t, c.URLs(), live)
			w.crash = true
			w.failover(
				func(node string) { c.Kill(c.Index(node)) },
				func(node string) { c.Restart(c.Index(node)) },
				"", "ws-a")
		})
	}
}
