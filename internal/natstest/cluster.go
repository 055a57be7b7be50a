package natstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// clusterReadyTimeout bounds how long a cluster may take to elect its
// JetStream meta leader with every node a peer.
const clusterReadyTimeout = 30 * time.Second

// Cluster is a JetStream cluster of in-process nats-servers on 127.0.0.1:
// each node with its own client port, route port and store under the
// test's temporary directory, routes to every node, and the consumer cap
// lifted as in Start. Stop shuts a node down (gracefully: nats-server hands
// its raft leaderships over first); Restart brings it back on the same
// ports and store. Every node is shut down when the test ends.
type Cluster struct {
	t    testing.TB
	mu   sync.Mutex
	opts []*server.Options
	srvs []*server.Server // nil while stopped
}

// StartCluster starts an n-node cluster and waits until JetStream has a
// meta leader that sees every node.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := reservePorts(t, 2*n)
	routes := make([]string, n)
	for i := range n {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i])
	}
	c := &Cluster{t: t}
	for i := range n {
		o := &server.Options{
			ServerName:      fmt.Sprintf("node-%d", i+1),
			Host:            "127.0.0.1",
			Port:            ports[i],
			JetStream:       true,
			StoreDir:        t.TempDir(),
			NoLog:           true,
			NoSigs:          true,
			JetStreamLimits: server.JSLimitOpts{DefaultMaxConsumers: -1},
			Cluster:         server.ClusterOpts{Name: "nbsecrets-test", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:          server.RoutesFromStr(strings.Join(routes, ",")),
		}
		c.opts = append(c.opts, o)
		c.srvs = append(c.srvs, nil)
	}
	t.Cleanup(func() {
		for i := range c.opts {
			c.Stop(i)
		}
	})
	// Start them all before waiting on any: a node is ready only once the
	// others answer its routes.
	for i := range c.opts {
		s, err := server.NewServer(c.opts[i].Clone())
		if err != nil {
			t.Fatalf("natstest: cluster node %d: %v", i+1, err)
		}
		go s.Start()
		c.mu.Lock()
		c.srvs[i] = s
		c.mu.Unlock()
	}
	for i, s := range c.srvs {
		if !s.ReadyForConnections(readyTimeout) {
			t.Fatalf("natstest: cluster node %d not ready within %v", i+1, readyTimeout)
		}
	}
	c.WaitReady()
	return c
}

// reservePorts returns n loopback ports, each listened on until all are
// drawn so that no two are the same, then released.
func reservePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: picking a port: %v", err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// Size is the number of nodes, running or not.
func (c *Cluster) Size() int { return len(c.opts) }

// Server returns node i (from 0), nil while it is stopped.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srvs[i]
}

// URLs is every node's client URL, comma-separated, for nats.Connect: a
// client reconnects to another node when its own goes.
func (c *Cluster) URLs() string {
	var out []string
	for _, o := range c.opts {
		out = append(out, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return strings.Join(out, ",")
}

// Stop shuts node i down (if it runs) and waits until it has.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	s := c.srvs[i]
	c.srvs[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts node i again on its ports and store (stopping it first
// if it runs), and waits until it accepts connections.
func (c *Cluster) Restart(i int) *server.Server {
	c.t.Helper()
	c.Stop(i)
	s, err := server.NewServer(c.opts[i].Clone())
	if err != nil {
		c.t.Fatalf("natstest: restarting cluster node %d: %v", i+1, err)
	}
	go s.Start()
	if !s.ReadyForConnections(readyTimeout) {
		s.Shutdown()
		c.t.Fatalf("natstest: cluster node %d not ready within %v after restart", i+1, readyTimeout)
	}
	c.mu.Lock()
	c.srvs[i] = s
	c.mu.Unlock()
	return s
}

// WaitReady waits until a running node is the JetStream meta leader and
// sees every node as a peer.
func (c *Cluster) WaitReady() {
	c.t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	for time.Now().Before(deadline) {
		for i := range c.opts {
			if s := c.Server(i); s != nil && s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == len(c.opts) {
				return
			}
		}
		time.Sleep(25 * time.Millisecond) // polling, not synchronisation
	}
	c.t.Fatalf("natstest: cluster has no JetStream meta leader with %d peers within %v", len(c.opts), clusterReadyTimeout)
}

// StreamLeader returns the node that leads stream in the global account,
// -1 when no running node does.
func (c *Cluster) StreamLeader(stream string) int {
	for i := range c.opts {
		if s := c.Server(i); s != nil && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// ConsumerNode returns the node that leads consumer on stream in the
// global account, -1 when no running node does.
func (c *Cluster) ConsumerNode(stream, consumer string) int {
	for i := range c.opts {
		if s := c.Server(i); s != nil && s.JetStreamIsConsumerLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream, consumer) {
			return i
		}
	}
	return -1
}

// WaitStreamLeader waits until some running node leads stream and returns
// it.
func (c *Cluster) WaitStreamLeader(stream string, timeout time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if i := c.StreamLeader(stream); i >= 0 {
			return i
		}
		time.Sleep(25 * time.Millisecond) // polling, not synchronisation
	}
	c.t.Fatalf("natstest: no leader of stream %s within %v", stream, timeout)
	return -1
}
