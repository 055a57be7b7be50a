package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// harness is a real NATS server, the test in the secrets service's role
// (writing signed, sealed records), and one workspace.
type harness struct {
	t                 *testing.T
	ns                *server.Server
	nc                *nats.Conn // the writer's connection
	kv                jetstream.KeyValue
	sealer            *protocol.Sealer
	signPub, curvePub string
	ws                Workspace
	wsKP              nkeys.KeyPair
	wsPub             string
	dir               string // the Jupyter runtime dir
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, ns: natstest.Start(t), dir: t.TempDir(),
		ws: Workspace{ID: "ws-alice", Owner: "alice", Projects: []string{"p"}}}
	sign, _ := nkeys.CreateAccount()
	curve, _ := nkeys.CreateCurveKeys()
	h.wsKP, _ = nkeys.CreateCurveKeys()
	h.signPub, _ = sign.PublicKey()
	h.curvePub, _ = curve.PublicKey()
	h.wsPub, _ = h.wsKP.PublicKey()
	var err error
	if h.sealer, err = protocol.NewSealer(sign, curve); err != nil {
		t.Fatal(err)
	}
	h.connect()
	return h
}

// connect (again) makes the writer's connection and the bucket.
func (h *harness) connect() {
	h.t.Helper()
	nc, err := nats.Connect(h.ns.ClientURL())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: protocol.Bucket, History: 1})
	if err != nil {
		h.t.Fatal(err)
	}
	h.nc, h.kv = nc, kv
}

func (h *harness) opener() *protocol.Opener {
	o, err := protocol.NewOpener(h.ws.ID, []string{h.signPub}, h.curvePub, h.wsKP)
	if err != nil {
		h.t.Fatal(err)
	}
	return o
}

// putRaw stores bytes under a workspace's key, whatever they are.
func (h *harness) putRaw(key string, data []byte) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.kv.Put(ctx, key, data); err != nil {
		h.t.Fatalf("put %s: %v", key, err)
	}
}

func (h *harness) record(id, name string, ver uint64, scope protocol.Scope, value string) []byte {
	h.t.Helper()
	b, err := h.sealer.Put(protocol.Recipient{Workspace: h.ws.ID, CurveKey: h.wsPub}, id, name, ver, scope, []byte(value), time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

func (h *harness) put(id, name string, ver uint64, value string) {
	h.t.Helper()
	h.putRaw(protocol.RecordKey(h.ws.ID, id), h.record(id, name, ver, protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}, value))
}

func (h *harness) del(id, name string, ver uint64) {
	h.t.Helper()
	b, err := h.sealer.Delete(h.ws.ID, id, name, ver, protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	h.putRaw(protocol.RecordKey(h.ws.ID, id), b)
}

// runningAgent is an agent under test with its own NATS connection.
type runningAgent struct {
	*Agent
	stop func()
}

func (h *harness) startAgent() *runningAgent { h.t.Helper(); return h.startAgentWith(nil) }

// startAgentWith is startAgent with a say in the configuration (configure
// may be nil).
func (h *harness) startAgentWith(configure func(*Config)) *runningAgent {
	h.t.Helper()
	nc, err := Connect(h.ns.ClientURL(), testLogger(h.t))
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := Config{Workspace: h.ws, Opener: h.opener(), Conn: nc, RuntimeDirs: []string{h.dir},
		Socket: filepath.Join(h.t.TempDir(), "agent.sock"), Logger: testLogger(h.t),
		Probe: 500 * time.Millisecond, Rescan: time.Second}
	if configure != nil {
		configure(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once bool
	stop := func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("agent run: %v", err)
		}
		nc.Close()
	}
	h.t.Cleanup(stop)
	return &runningAgent{Agent: a, stop: stop}
}

// runStarted runs a cell in the background and returns once the cell has
// created marker (its first act): the channel then receives its trimmed
// stdout, or "error: ..." if it could not run within timeout.
func runStarted(t *testing.T, c *jupyter.Client, cell, marker string, timeout time.Duration) <-chan string {
	t.Helper()
	out := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		res, err := c.Run(ctx, cell)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- strings.TrimSpace(res.Stdout)
	}()
	waitFor(t, 20*time.Second, func() error {
		if _, err := os.Stat(marker); err != nil {
			return errors.New("cell not started")
		}
		return nil
	})
	return out
}

// digest is how tests compare values without printing them.
func digest(v string) string {
	s := sha256.Sum256([]byte(v))
	return hex.EncodeToString(s[:])
}

// run executes a visible cell and returns its stdout, trimmed.
func run(t *testing.T, c *jupyter.Client, code string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Run(ctx, code)
	if err != nil {
		t.Fatalf("run cell: %v", err)
	}
	if res.Reply != nil && res.Reply.Status != "ok" {
		t.Fatalf("cell failed: %s: %s\n%s", res.Reply.EName, res.Reply.EValue, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

// bang runs a `!` shell escape in the kernel with its standard output
// redirected to a file, and returns what the file holds, trimmed: what the
// child process saw, whatever IPython's pty capture of a `!` command makes of
// it.
func bang(t *testing.T, c *jupyter.Client, cmd string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bang.out")
	run(t, c, fmt.Sprintf("!bash -c %s > %s", shellQuote(cmd), shellQuote(out)))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the ! command wrote nothing: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// describeDigest says what a digest printed by the kernel stands for, without
// a value: the expected value, nothing at all, or something else.
func describeDigest(got, want string) string {
	switch got {
	case digest(want):
		return "the expected value"
	case digest(""):
		return "the digest of an empty value (the variable is unset in the child)"
	case "":
		return "nothing"
	}
	return fmt.Sprintf("%d characters that are not the expected digest", len(got))
}

// envDigest is the digest of os.environ[name] in the kernel, or "unset".
func envDigest(t *testing.T, c *jupyter.Client, name string) string {
	return run(t, c, fmt.Sprintf("import os as _o, hashlib as _h\n_v = _o.environ.get(%q)\nprint('unset' if _v is None else _h.sha256(_v.encode()).hexdigest())\ndel _o, _h, _v", name))
}

// waitEnv polls the kernel until os.environ[name] has want ("" = unset).
func waitEnv(t *testing.T, c *jupyter.Client, name, want string) {
	t.Helper()
	wantD := "unset"
	if want != "" {
		wantD = digest(want)
	}
	waitFor(t, 20*time.Second, func() error {
		if got := envDigest(t, c, name); got != wantD {
			return fmt.Errorf("%s in the kernel is not the expected value yet", name)
		}
		return nil
	})
}

// TestLiveCreateUpdateDelete: a secret created, updated and deleted reaches
// a running kernel's os.environ, its `!` commands and its %%bash cells, and
// the kernel keeps its state.
//
// The kernel runs with SHELL=/bin/sh, as it does where nothing sets SHELL (CI
// does not): IPython runs a `!` command through $SHELL, and Debian's /bin/sh
// (dash) drops names that are not shell identifiers, such as API-TOKEN, from
// the environment it passes on. So the `!` and %%bash checks use a shell
// identifier (DB_PASSWORD), and the hyphenated name is checked where it does
// reach: os.environ and a program the kernel starts directly.
func TestLiveCreateUpdateDelete(t *testing.T) {
	h := newHarness(t)
	h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir, Env: []string{"SHELL=/bin/sh"}})
	c := k.Client(t)
	run(t, c, "state = 41")

	v1, v2 := secretValue("v1"), secretValue("v2")
	h.put("s1", "DB_PASSWORD", 1, v1)
	h.put("s2", "API-TOKEN", 1, v2)
	waitEnv(t, c, "DB_PASSWORD", v1)
	waitEnv(t, c, "API-TOKEN", v2)
	// Child processes see it: !printenv and a %%bash cell.
	if got := bang(t, c, "printenv DB_PASSWORD | tr -d '\\n' | sha256sum | cut -d' ' -f1"); got != digest(v1) {
		t.Errorf("!printenv does not see the value: it printed %s", describeDigest(got, v1))
	}
	if got := run(t, c, "%%bash\nprintf %s \"$DB_PASSWORD\" | sha256sum | cut -d' ' -f1"); got != digest(v1) {
		t.Errorf("%%%%bash does not see the value: it printed %s", describeDigest(got, v1))
	}
	directChild := "import subprocess as _s, hashlib as _h\nprint(_h.sha256(_s.run(['printenv', 'API-TOKEN'], capture_output=True).stdout.rstrip(b'\\n')).hexdigest())\ndel _s, _h"
	if got := run(t, c, directChild); got != digest(v2) {
		t.Errorf("a program the kernel starts does not see API-TOKEN: it printed %s", describeDigest(got, v2))
	}

	h.put("s1", "DB_PASSWORD", 2, v2)
	waitEnv(t, c, "DB_PASSWORD", v2)
	h.del("s1", "DB_PASSWORD", 3)
	waitEnv(t, c, "DB_PASSWORD", "")
	if got := bang(t, c, "printenv DB_PASSWORD >/dev/null; echo $?"); got != "1" {
		t.Errorf("!printenv after delete: got exit status %q from printenv, want 1", got)
	}
	if got := run(t, c, "print(state + 1)"); got != "42" {
		t.Errorf("kernel state lost: %q", got)
	}
}

// TestReseedLeavesNoTrace: no output, no history, no execution count, no
// name in the namespace, and the value never on iopub.
func TestReseedLeavesNoTrace(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	probe := "import json as _j\nprint(_j.dumps([get_ipython().execution_count, len(get_ipython().history_manager.input_hist_raw), sorted(k for k in globals() if not k.startswith('_'))]))\ndel _j"
	waitFor(t, 20*time.Second, func() error {
		if s := a.Status().Kernels; len(s) != 1 || s[0].State != StateLive {
			return fmt.Errorf("kernel not live: %+v", s)
		}
		return nil
	})
	before := run(t, c, probe)
	// Watch iopub from here on: drop what the probe cell published.
	for drained := false; !drained; {
		select {
		case <-c.IOPub():
		default:
			drained = true
		}
	}
	v := secretValue("quiet")
	var seen []string
	h.put("s1", "QUIET", 1, v)
	waitFor(t, 20*time.Second, func() error {
		for {
			select {
			case m := <-c.IOPub():
				seen = append(seen, string(m.Content), m.Header.MsgType)
				continue
			default:
			}
			break
		}
		if s := a.Status().Kernels; len(s) != 1 || s[0].Holds["QUIET"].Version != 1 {
			return errors.New("not re-seeded yet")
		}
		return nil
	})
	after := run(t, c, probe)
	var b, af []any
	_ = json.Unmarshal([]byte(before), &b)
	_ = json.Unmarshal([]byte(after), &af)
	if len(b) != 3 || len(af) != 3 {
		t.Fatalf("probe output: %q, %q", before, after)
	}
	// The probe cell itself counts once.
	if b[0].(float64)+1 != af[0].(float64) || b[1].(float64)+1 != af[1].(float64) {
		t.Errorf("re-seed changed the execution count or the history: before %v, after %v", b[:2], af[:2])
	}
	if fmt.Sprint(b[2]) != fmt.Sprint(af[2]) {
		t.Errorf("re-seed changed the namespace: %v -> %v", b[2], af[2])
	}
	for _, s := range seen {
		if strings.Contains(s, v) {
			t.Errorf("the value appeared on iopub")
		}
		if strings.Contains(s, `"name": "stdout"`) || strings.Contains(s, `"name":"stdout"`) {
			t.Errorf("the re-seed printed: %s", s)
		}
	}
	waitEnv(t, c, "QUIET", v)
}

// TestUpdateWhileCellRuns: a running cell sees the new value.
func TestUpdateWhileCellRuns(t *testing.T) {
	h := newHarness(t)
	h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v1, v2 := secretValue("before"), secretValue("during")
	h.put("s1", "LIVE", 1, v1)
	waitEnv(t, c, "LIVE", v1)

	marker := filepath.Join(t.TempDir(), "started")
	cell := fmt.Sprintf(`import os, time, hashlib
open(%q, "w").close()
deadline = time.time() + 20
while time.time() < deadline and hashlib.sha256(os.environ.get("LIVE", "").encode()).hexdigest() != %q:
    time.sleep(0.005)
print("seen" if time.time() < deadline else "timeout")`, marker, digest(v2))
	out := runStarted(t, c, cell, marker, 40*time.Second)
	h.put("s1", "LIVE", 2, v2)
	if got := <-out; got != "seen" {
		t.Fatalf("the running cell did not see the update: %s", got)
	}
}

// TestNATSServerRestart: the agent follows the server going away and coming
// back, and a change written once it is back arrives.
func TestNATSServerRestart(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	run(t, c, "state = 'kept'")
	v1, v2, v3 := secretValue("a"), secretValue("b"), secretValue("c")
	h.put("s1", "ROTATED", 1, v1)
	h.put("s2", "DOOMED", 1, v1)
	waitEnv(t, c, "ROTATED", v1)

	// The server stops; the service queues its changes and writes them as
	// soon as the server is back (what the real service's retries do).
	h.ns = natstest.Restart(t, h.ns)
	h.connect()
	h.put("s1", "ROTATED", 2, v2)
	h.del("s2", "DOOMED", 2)
	h.put("s3", "ADDED", 1, v3)
	waitEnv(t, c, "ROTATED", v2)
	waitEnv(t, c, "DOOMED", "")
	waitEnv(t, c, "ADDED", v3)
	if got := run(t, c, "print(state)"); got != "kept" {
		t.Errorf("state: %q", got)
	}
	if st := a.Status(); st.NATS != nats.CONNECTED.String() {
		t.Errorf("NATS state %s", st.NATS)
	}
}

// TestAgentRestart: an agent that was down while secrets changed brings
// running kernels to the current state, deletes included, state intact.
func TestAgentRestart(t *testing.T) {
	h := newHarness(t)
	a1 := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	run(t, c, "state = [1, 2]")
	v1, v2, v3 := secretValue("old"), secretValue("new"), secretValue("fresh")
	h.put("s1", "KEEP", 1, v1)
	h.put("s2", "DROP", 1, v1)
	waitEnv(t, c, "DROP", v1)
	a1.stop()

	h.put("s1", "KEEP", 2, v2)
	h.del("s2", "DROP", 2)
	h.put("s3", "FRESH", 1, v3)
	a2 := h.startAgent()
	waitEnv(t, c, "KEEP", v2)
	waitEnv(t, c, "DROP", "")
	waitEnv(t, c, "FRESH", v3)
	if got := run(t, c, "print(state)"); got != "[1, 2]" {
		t.Errorf("state: %q", got)
	}
	waitFor(t, 10*time.Second, func() error {
		ks := a2.Status().Kernels
		if len(ks) != 1 || ks[0].Holds["KEEP"].Version != 2 || len(ks[0].Holds) != 2 {
			return fmt.Errorf("status kernels = %+v", ks)
		}
		return nil
	})
}

// TestBadRecordsRefused: forged, replayed, misaddressed, malformed,
// out-of-scope records and unsigned markers are refused and logged without
// the value; the agent keeps serving.
func TestBadRecordsRefused(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	good1, good2, evil := secretValue("good"), secretValue("good2"), secretValue("evil")
	h.put("s1", "TARGET", 1, good1)
	old := h.record("s1", "TARGET", 1, protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}, evil)
	h.put("s1", "TARGET", 2, good2)
	waitEnv(t, c, "TARGET", good2)

	h.putBadRecords(a, old, evil)
	if got := envDigest(t, c, "TARGET"); got != digest(good2) {
		t.Error("a bad record changed the kernel's value")
	}
	if got := envDigest(t, c, "BOBS"); got != "unset" {
		t.Error("bob's secret reached alice's kernel")
	}
	// Still serving.
	good3 := secretValue("good3")
	h.put("s5", "AFTER", 1, good3)
	waitEnv(t, c, "AFTER", good3)
	logs := leaks.String()
	for _, why := range []string{"bad signature", "another workspace", "malformed", "key mismatch"} {
		if !strings.Contains(logs, "reason=\""+why+"\"") && !strings.Contains(logs, "reason="+why+" ") {
			t.Errorf("no log line with reason %q", why)
		}
	}
}

// TestLocalAPI: the injector's environment and status over the socket.
func TestLocalAPI(t *testing.T) {
	h := newHarness(t)
	a := h.startAgent()
	v := secretValue("api")
	h.put("s1", "FOR-INJECTOR", 3, v)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.cfg.Socket)
	}}}
	waitFor(t, 10*time.Second, func() error {
		resp, err := client.Get("http://agent/v1/env?connection_file=/x/kernel-1.json")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var env localapi.EnvResponse
		if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
			return err
		}
		if env.Env["FOR-INJECTOR"] != v || env.Versions["FOR-INJECTOR"] != 3 || env.Env[ManagedVar] != "FOR-INJECTOR" {
			return errors.New("env not as expected yet")
		}
		return nil
	})
	if fi, err := os.Stat(a.cfg.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v", fi.Mode(), err)
	}
	resp, err := client.Get("http://agent/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw strings.Builder
	var st Status
	if err := json.NewDecoder(io.TeeReader(resp.Body, &raw)).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Secrets) != 1 || st.Secrets[0].Name != "FOR-INJECTOR" || st.Secrets[0].Version != 3 {
		t.Errorf("status secrets: %+v", st.Secrets)
	}
	if strings.Contains(raw.String(), v) {
		t.Error("status contains a value")
	}
}

// TestKernelRestartReseeded: a kernel restarted on the same connection file
// without the injector (its environment lacks the secrets) is noticed and
// re-seeded by the agent.
func TestKernelRestartReseeded(t *testing.T) {
	h := newHarness(t)
	h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v := secretValue("restart")
	h.put("s1", "SURVIVES", 1, v)
	waitEnv(t, c, "SURVIVES", v)
	k.Restart(t)
	c2 := k.Client(t)
	waitEnv(t, c2, "SURVIVES", v)
}

// TestAgentFindsKernelMidCell: an agent that starts while a kernel runs a
// long cell serves it at once (kernel_info on control), and the running
// cell sees the value; the session tracks the kernel as busy meanwhile.
func TestAgentFindsKernelMidCell(t *testing.T) {
	h := newHarness(t)
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v := secretValue("midcell")
	h.put("s1", "ARRIVES", 1, v)
	marker := filepath.Join(t.TempDir(), "started")
	cell := fmt.Sprintf(`import os, time, hashlib
open(%q, "w").close()
deadline = time.time() + 30
while time.time() < deadline and hashlib.sha256(os.environ.get("ARRIVES", "").encode()).hexdigest() != %q:
    time.sleep(0.005)
print("seen" if time.time() < deadline else "timeout")`, marker, digest(v))
	out := runStarted(t, c, cell, marker, 40*time.Second)
	// A session of our own, to see the busy tracking.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := dialJupyter(ctx, k.ConnFile)
	if err != nil {
		t.Fatalf("dial while a cell runs: %v", err)
	}
	defer sess.Close()
	js := sess.(*jupyterSession)
	if !js.Busy() {
		t.Error("session says idle while a cell runs")
	}
	h.startAgent()
	if got := <-out; got != "seen" {
		t.Fatalf("the running cell did not get the value from an agent started mid-cell: %s", got)
	}
	if err := js.WaitIdle(ctx); err != nil {
		t.Errorf("WaitIdle after the cell: %v", err)
	}
}

// TestReplayAfterAgentRestartRefused: an older signed record put back into
// the bucket while the agent was down is refused after its restart, thanks
// to the state file (ids and versions only); without one it would be taken.
func TestReplayAfterAgentRestartRefused(t *testing.T) {
	h := newHarness(t)
	state := filepath.Join(t.TempDir(), "agent-state.json")
	withState := func(c *Config) { c.StateFile = state }
	old, current := secretValue("old"), secretValue("current")
	oldRecord := h.record("s1", "ROLLED", 1, protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}, old)
	a1 := h.startAgentWith(withState)
	h.putRaw(protocol.RecordKey(h.ws.ID, "s1"), oldRecord)
	h.put("s1", "ROLLED", 2, current)
	waitFor(t, 10*time.Second, func() error {
		if s := a1.Status().Secrets; len(s) != 1 || s[0].Version != 2 {
			return fmt.Errorf("secrets %+v", s)
		}
		return nil
	})
	a1.stop()
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(state); fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v", fi.Mode())
	}
	if strings.Contains(string(b), current) || strings.Contains(string(b), "ROLLED") || !strings.Contains(string(b), `"s1":2`) {
		t.Errorf("state file holds more or less than ids and versions: %s", b)
	}

	h.putRaw(protocol.RecordKey(h.ws.ID, "s1"), oldRecord) // the replay, while the agent is down
	a2 := h.startAgentWith(withState)
	waitFor(t, 10*time.Second, func() error {
		st := a2.Status()
		if !st.Loaded || st.Refused["replayed older version"] != 1 {
			return fmt.Errorf("loaded %v, refused %v", st.Loaded, st.Refused)
		}
		return nil
	})
	if s := a2.Status().Secrets; len(s) != 0 {
		t.Errorf("the replayed record was taken: %+v", s)
	}
	a2.stop()
	// The same agent without its state file takes the old record: what the
	// file is for.
	a3 := h.startAgent()
	waitFor(t, 10*time.Second, func() error {
		if s := a3.Status().Secrets; len(s) != 1 || s[0].Version != 1 {
			return fmt.Errorf("secrets %+v", s)
		}
		return nil
	})
}

// putBadRecords puts into the bucket, one after another, the records the
// refusal tests expect the agent a to refuse, under s1's key or the key
// each claims: old (a replay of a version before the one a holds), the
// same record signed by another key, a genuine record of another
// workspace, garbage, a record stored under another key than its own and
// one of bob's private secrets, each carrying evil; it waits until a counts
// each refusal under its reason, then until a refuses an unsigned KV delete
// marker on s1's key. It returns the forged record.
func (h *harness) putBadRecords(a *runningAgent, old []byte, evil string) (forged []byte) {
	t := h.t
	t.Helper()
	scope := protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}
	// Forged: the same record signed by another key.
	otherSign, _ := nkeys.CreateAccount()
	otherCurve, _ := nkeys.CreateCurveKeys()
	forger, _ := protocol.NewSealer(otherSign, otherCurve)
	forged, _ = forger.Put(protocol.Recipient{Workspace: h.ws.ID, CurveKey: h.wsPub}, "s1", "TARGET", 9, scope, []byte(evil), time.Now())
	// Misaddressed: a genuine record for another workspace under our key.
	otherWS, _ := nkeys.CreateCurveKeys()
	otherPub, _ := otherWS.PublicKey()
	foreign, _ := h.sealer.Put(protocol.Recipient{Workspace: "ws-bob", CurveKey: otherPub}, "s1", "TARGET", 10, scope, []byte(evil), time.Now())
	// Out of scope: a genuine record of bob's private secret.
	bobs := h.record("s4", "BOBS", 1, protocol.Scope{Kind: protocol.ScopeUser, ID: "bob"}, evil)
	key := protocol.RecordKey(h.ws.ID, "s1")
	for _, bad := range []struct {
		key  string
		data []byte
		why  string
	}{
		{key, forged, "bad signature"},
		{key, old, "replayed older version"},
		{key, foreign, "another workspace"},
		{key, []byte("{not json" + evil), "malformed"},
		{protocol.RecordKey(h.ws.ID, "s2"), h.record("s3", "MOVED", 1, scope, evil), "key mismatch"},
		{protocol.RecordKey(h.ws.ID, "s4"), bobs, "scope not allowed"},
	} {
		before := a.Status().Refused[bad.why]
		h.putRaw(bad.key, bad.data)
		waitFor(t, 10*time.Second, func() error {
			if a.Status().Refused[bad.why] <= before {
				return fmt.Errorf("%s not refused", bad.why)
			}
			return nil
		})
	}
	// An unsigned KV delete marker is refused too.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if a.Status().Refused["unsigned DEL marker"] == 0 {
			return errors.New("delete marker not refused")
		}
		return nil
	})
	return forged
}
