package natstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// nodeEnv names the configuration file of a node that the test binary runs
// in place of its tests (see RunNodeIfAsked).
const nodeEnv = "NATSTEST_NODE_CONFIG"

// RunNodeIfAsked makes the test binary a nats-server node when
// StartProcessCluster started it as one: it runs the server of the
// configuration file it was given until the process is killed, and never
// returns. Otherwise it returns at once. Call it first in TestMain.
func RunNodeIfAsked() {
	path := os.Getenv(nodeEnv)
	if path == "" {
		return
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natstest node:", err)
		os.Exit(2)
	}
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natstest node:", err)
		os.Exit(2)
	}
	s.Start()
	s.WaitForShutdown()
	os.Exit(0)
}

// ProcessCluster is a JetStream cluster whose nodes are processes (this
// test binary again, through RunNodeIfAsked), so that a node can die the
// way a crashed machine's does: Kill sends SIGKILL, with no leadership
// handed over. Nodes are named node-1, node-2...
type ProcessCluster struct {
	t     testing.TB
	confs []string
	urls  []string
	cmds  []*exec.Cmd
}

// ClusterConfigs writes the configuration files of an n-node JetStream
// cluster on loopback ports under dir (node-1.conf...; each node's store in
// dir/store-<i>, the consumer limit lifted), each followed by extra (an
// include of accounts, say, which the caller writes into dir), and returns
// their paths and the nodes' client URLs.
func ClusterConfigs(t testing.TB, dir string, n int, extra string) (confs, urls []string) {
	t.Helper()
	ports := reservePorts(t, 2*n)
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
	}
	for i := range n {
		conf := fmt.Sprintf("server_name: node-%d\nlisten: \"127.0.0.1:%d\"\njetstream {\n  store_dir: %q\n  limits { default_max_consumers: -1 }\n}\n"+
			"cluster {\n  name: nbsecrets-test\n  listen: \"127.0.0.1:%d\"\n  routes: [%s]\n}\n%s",
			i+1, ports[i], filepath.Join(dir, fmt.Sprintf("store-%d", i+1)), ports[n+i], strings.Join(routes, ", "), extra)
		path := filepath.Join(dir, fmt.Sprintf("node-%d.conf", i+1))
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		confs = append(confs, path)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	return confs, urls
}

// StartProcessCluster starts n node processes and waits until JetStream
// answers on every one of them. The calling package's TestMain must call
// RunNodeIfAsked.
func StartProcessCluster(t testing.TB, n int) *ProcessCluster {
	t.Helper()
	c := &ProcessCluster{t: t, cmds: make([]*exec.Cmd, n)}
	c.confs, c.urls = ClusterConfigs(t, t.TempDir(), n, "")
	t.Cleanup(func() {
		for i := range c.cmds {
			c.Kill(i)
		}
	})
	for i := range n {
		c.start(i)
	}
	for i := range n {
		c.WaitNode(i)
	}
	return c
}

func (c *ProcessCluster) start(i int) {
	c.t.Helper()
	self, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeEnv+"="+c.confs[i])
	// Should the test binary die, its nodes follow.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("natstest: starting node %d: %v", i+1, err)
	}
	c.cmds[i] = cmd
}

// URLs is every node's client URL, comma-separated.
func (c *ProcessCluster) URLs() string { return strings.Join(c.urls, ",") }

// Index returns the index of the node named name ("node-2" is 1).
func (c *ProcessCluster) Index(name string) int {
	c.t.Helper()
	var i int
	if _, err := fmt.Sscanf(name, "node-%d", &i); err != nil || i < 1 || i > len(c.cmds) {
		c.t.Fatalf("natstest: no node %q", name)
	}
	return i - 1
}

// Kill sends node i SIGKILL (if it runs) and reaps it.
func (c *ProcessCluster) Kill(i int) {
	cmd := c.cmds[i]
	c.cmds[i] = nil
	if cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// Restart starts node i again on its ports and store (killing it first if
// it runs) and waits until JetStream answers on it.
func (c *ProcessCluster) Restart(i int) {
	c.t.Helper()
	c.Kill(i)
	c.start(i)
	c.WaitNode(i)
}

// WaitNode waits until JetStream answers through node i.
func (c *ProcessCluster) WaitNode(i int) {
	c.t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = jsAnswers(c.urls[i]); last == nil {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling, not synchronisation
	}
	c.t.Fatalf("natstest: JetStream does not answer through node %d within %v: %v", i+1, clusterReadyTimeout, last)
}

func jsAnswers(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}
