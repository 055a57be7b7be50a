package agent

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// waitQuiet waits until the agent serves its only kernel live over the
// quiet channel, holding version ver of name.
func waitQuiet(t *testing.T, a *runningAgent, name string, ver uint64) {
	t.Helper()
	waitFor(t, 30*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].Mode != ModeQuiet || ks[0].State != StateLive || ks[0].Holds[name].Version != ver {
			return fmt.Errorf("kernel not live over the quiet channel with %s v%d: %+v", name, ver, ks)
		}
		return nil
	})
}

// settle runs a cell of the test's own (code: a no-op in the kernel's
// language), then empties the iopub channel: iopub is ordered, so what
// others caused before is gone with it.
func settle(t *testing.T, c *jupyter.Client, code string) {
	t.Helper()
	run(t, c, code)
	drain(c)
}

// drain empties a client's iopub channel.
func drain(c *jupyter.Client) {
	for {
		select {
		case <-c.IOPub():
		default:
			return
		}
	}
}

// foreign returns, without blocking, the iopub messages that do not answer
// the test client's own requests: what others (the agent) caused.
func foreign(c *jupyter.Client) []string {
	var out []string
	for {
		select {
		case m := <-c.IOPub():
			if m.ParentHeader == nil || m.ParentHeader.Session != c.Session() {
				parent := "none"
				if m.ParentHeader != nil {
					parent = m.ParentHeader.MsgType
				}
				out = append(out, m.Header.MsgType+" (parent "+parent+")")
			}
		default:
			return out
		}
	}
}

// TestQuietNoIOPub: after first contact, re-seeds and liveness checks cause
// no iopub message at all: nothing Jupyter Server could take for activity
// or a state change.
func TestQuietNoIOPub(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(func(c *Config) { c.Probe = 100 * time.Millisecond })
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	h.put("s1", "QUIET", 1, secretValue("first"))
	waitQuiet(t, a, "QUIET", 1)
	// First contact is over (its install published busy/idle); from here
	// on, nothing.
	settle(t, c, "pass")
	const n = 30
	var last string
	for i := 2; i <= n+1; i++ {
		last = secretValue(fmt.Sprintf("v%d", i))
		h.put("s1", "QUIET", uint64(i), last)
		waitQuiet(t, a, "QUIET", uint64(i))
	}
	// An idle period with liveness checks every 100ms: a kernel the agent
	// could not reach would leave the live state.
	idle := time.Now().Add(2 * time.Second)
	for time.Now().Before(idle) {
		if ks := a.Status().Kernels; len(ks) != 1 || ks[0].State != StateLive {
			t.Fatalf("kernel left the live state while idle: %+v", ks)
		}
		time.Sleep(50 * time.Millisecond) // sampling the state, not synchronising
	}
	if got := foreign(c); len(got) != 0 {
		t.Errorf("%d re-seeds and an idle period with probes published %d iopub messages: %v", n, len(got), got)
	}
	if a.Status().Reseeds < n {
		t.Errorf("status counts %d re-seeds, want at least %d", a.Status().Reseeds, n)
	}
	waitEnv(t, c, "QUIET", last)
}

// TestQuietDuringSleepingCell: a change made while a cell sleeps reaches
// it, and iopub carries nothing but the cell's own messages meanwhile: the
// kernel stays busy for the whole cell.
func TestQuietDuringSleepingCell(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(func(c *Config) { c.Probe = 100 * time.Millisecond })
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v1, v2 := secretValue("before"), secretValue("during")
	h.put("s1", "LIVE", 1, v1)
	waitQuiet(t, a, "LIVE", 1)
	settle(t, c, "pass")
	marker := filepath.Join(t.TempDir(), "started")
	cell := fmt.Sprintf(`import os, time, hashlib
open(%q, "w").close()
deadline = time.time() + 20
while time.time() < deadline and hashlib.sha256(os.environ.get("LIVE", "").encode()).hexdigest() != %q:
    time.sleep(0.05)
time.sleep(1)
print("seen" if time.time() < deadline else "timeout")`, marker, digest(v2))
	out := runStarted(t, c, cell, marker, 40*time.Second)
	h.put("s1", "LIVE", 2, v2)
	if got := <-out; got != "seen" {
		t.Fatalf("the sleeping cell did not see the change: %s", got)
	}
	if got := foreign(c); len(got) != 0 {
		t.Errorf("the agent published on iopub during the cell: %v", got)
	}
}

// TestQuietThreadAcrossAgents: one thread after an agent restart (the new
// agent hands the existing thread its token), nothing in the namespace,
// history, Out or execution count, and a forked child keeps its environment.
func TestQuietThreadAcrossAgents(t *testing.T) {
	h := newHarness(t)
	a1 := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v1, v2, v3 := secretValue("one"), secretValue("two"), secretValue("three")
	h.put("s1", "ACROSS", 1, v1)
	waitQuiet(t, a1, "ACROSS", 1)
	probe := `import json as _j, threading as _t, linecache as _l
_needle = '_ins' + 'tall('
print(_j.dumps([get_ipython().execution_count, len(get_ipython().history_manager.input_hist_raw), len(Out),
    sorted(k for k in globals() if not k.startswith('_')),
    [th.name for th in _t.enumerate() if 'nbsecrets' in th.name],
    sum(1 for v in list(_l.cache.values()) if any(_needle in line for line in (v[2] or [])))]))
del _j, _t, _l, _needle`
	before := run(t, c, probe)
	a1.stop()
	h.put("s1", "ACROSS", 2, v2)
	a2 := h.startAgent()
	waitQuiet(t, a2, "ACROSS", 2)
	waitEnv(t, c, "ACROSS", v2)
	after := run(t, c, probe)
	var b, af []any
	if json.Unmarshal([]byte(before), &b) != nil || json.Unmarshal([]byte(after), &af) != nil || len(b) != 6 || len(af) != 6 {
		t.Fatalf("probe output: %q, %q", before, after)
	}
	// Between the probes ran waitEnv's cells (visible, like a user's), and
	// nothing else of ours.
	if fmt.Sprint(b[2:4]) != fmt.Sprint(af[2:4]) {
		t.Errorf("Out or the namespace changed: %v -> %v", b[2:4], af[2:4])
	}
	if fmt.Sprint(af[4]) != "[nbsecrets]" || fmt.Sprint(b[4]) != "[nbsecrets]" {
		t.Errorf("nbsecrets threads: %v with the first agent, %v with the second; want exactly one", b[4], af[4])
	}
	if af[5].(float64) != 0 {
		t.Errorf("linecache holds %v install cells", af[5])
	}
	// The execution count and history move only with the test's own
	// visible cells: the probe and waitEnv's polling cells, one each.
	if d, dh := af[0].(float64)-b[0].(float64), af[1].(float64)-b[1].(float64); d != dh {
		t.Errorf("execution count moved by %v but history by %v: something silent counted", d, dh)
	}

	// A forked child (multiprocessing) keeps the environment and works;
	// the parent keeps receiving changes.
	fork := fmt.Sprintf(`import multiprocessing as _m, hashlib as _h, os as _o
def _child(q):
    q.put(_h.sha256(_o.environ.get("ACROSS", "").encode()).hexdigest())
_ctx = _m.get_context("fork")
_q = _ctx.Queue()
_p = _ctx.Process(target=_child, args=(_q,))
_p.start()
print(_q.get(timeout=20) == %q, end=" ")
_p.join(20)
print(_p.exitcode)
del _m, _h, _o, _child, _ctx, _q, _p`, digest(v2))
	if got := run(t, c, fork); got != "True 0" {
		t.Errorf("forked child: %q, want True 0", got)
	}
	h.put("s1", "ACROSS", 3, v3)
	waitQuiet(t, a2, "ACROSS", 3)
	waitEnv(t, c, "ACROSS", v3)
	if out := k.Output(); strings.Contains(out, "Traceback") || strings.Contains(out, "nbsecrets") {
		t.Errorf("the kernel wrote about the channel on its output:\n%s", out)
	}
}

// TestQuietAgentFindsKernelMidCell: an agent that first meets a kernel
// running a cell serves it over control meanwhile, says so, and installs
// the quiet channel once the cell ends.
func TestQuietAgentFindsKernelMidCell(t *testing.T) {
	h := newHarness(t)
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	marker := filepath.Join(t.TempDir(), "started")
	release := filepath.Join(t.TempDir(), "release")
	cell := fmt.Sprintf(`import os, time
open(%q, "w").close()
deadline = time.time() + 60
while time.time() < deadline and not os.path.exists(%q):
    time.sleep(0.02)
print("done")`, marker, release)
	out := runStarted(t, c, cell, marker, 90*time.Second)
	v := secretValue("midcell")
	h.put("s1", "MID", 1, v)
	// Nothing before the agent is the agent's: kerneltest's readiness
	// check ends on its kernel_info's busy status, and the idle that
	// follows can reach this client, subscribed a moment later (seen: one
	// such idle made the count 5). It came before this client's own
	// first statuses, so it is in the channel by now.
	drain(c)
	logs := &testutil.Buffer{}
	a := h.startAgentWith(func(cfg *Config) {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Trace,
			Output: io.MultiWriter(sink{}, tWriter{t}, logs)})
	})
	met := time.Now()
	waitFor(t, 30*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].Mode != ModeControlWaiting || ks[0].Holds["MID"].Version != 1 {
			return fmt.Errorf("want live:control waiting for idle, holding MID: %+v", ks)
		}
		return nil
	})
	// The cell runs on for a few seconds with the agent connected: long
	// enough for a probe that asked once a second to have queued several.
	waitFor(t, 30*time.Second, func() error {
		if time.Since(met) < 5*time.Second {
			return errors.New("the cell has not run 5s beside the agent yet")
		}
		return nil
	})
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := <-out; got != "done" {
		t.Fatalf("cell: %s", got)
	}
	waitQuiet(t, a, "MID", 1)
	// The agent asked who the kernel is once on control (answered beside
	// the cell) and once on shell (answered after it): two busy/idle pairs.
	run(t, c, "pass") // iopub is ordered: what the agent caused before is in the channel
	infos := 0
	for _, m := range foreign(c) {
		if strings.Contains(m, "parent kernel_info_request") {
			infos++
		}
	}
	// A first request that the kernel did not answer in time (a loaded
	// machine) is asked again, and both are answered: two more per retry
	// the agent logged, and nothing else.
	retries := strings.Count(logs.String(), "kernel not answering yet")
	if want := 4 + 2*retries; infos > want {
		t.Errorf("%d iopub messages answered the agent's kernel_info requests; want at most %d (one request on each channel, %d retried)", infos, want, retries)
	}
	h.put("s1", "MID", 2, v+"2")
	waitQuiet(t, a, "MID", 2)
	waitEnv(t, c, "MID", v+"2")
}

// TestQuietKernelDeath: a kernel killed with SIGKILL is noticed through the
// quiet channel's end closing; a stopped one (SIGSTOP: connections open,
// nothing answers) through the heartbeat.
func TestQuietKernelDeath(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(func(c *Config) { c.Probe = 200 * time.Millisecond; c.ApplyTimeout = time.Second })
	k1 := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	h.put("s1", "DIES", 1, secretValue("d"))
	waitQuiet(t, a, "DIES", 1)
	k1.Signal(syscall.SIGSTOP)
	waitFor(t, 20*time.Second, func() error {
		if ks := a.Status().Kernels; len(ks) != 1 || ks[0].State == StateLive {
			return fmt.Errorf("a stopped kernel is still live: %+v", ks)
		}
		return nil
	})
	k1.Signal(syscall.SIGCONT)
	waitQuiet(t, a, "DIES", 1)
	k1.Kill()
	waitFor(t, 20*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].State == StateLive {
			return fmt.Errorf("a killed kernel is still live: %+v", ks)
		}
		return nil
	})
}

// quietFrame writes one length-prefixed JSON frame.
func quietFrame(t *testing.T, c net.Conn, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	head := make([]byte, 4)
	binary.BigEndian.PutUint32(head, uint32(len(b)))
	if _, err := c.Write(append(head, b...)); err != nil {
		t.Fatal(err)
	}
}

// TestQuietHubRefusesImpostors: a process of the agent's uid that connects
// with a wrong, used or stolen token, or claims another pid, gets nothing
// and is logged; the right token from the right process is taken once.
func TestQuietHubRefusesImpostors(t *testing.T) {
	hub := newQuietHub(testLogger(t))
	path := filepath.Join(t.TempDir(), "q.sock")
	l, err := listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hub.serve(ctx, l, path) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	tk, err := hub.expect()
	if err != nil {
		t.Fatal(err)
	}
	defer hub.forget(tk)
	// refused connects, says hello and expects the connection to be closed
	// on it with nothing sent, and no session to get it.
	refused := func(what string, hello any) {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		quietFrame(t, c, hello)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || err == nil {
			t.Errorf("%s: the hub sent %d bytes, err %v; want the connection closed", what, n, err)
		}
		select {
		case <-tk.conn:
			t.Errorf("%s: the install got the impostor's connection", what)
		default:
		}
	}
	me := os.Getpid()
	refused("wrong token", quietHello{V: 1, Token: strings.Repeat("0", 64), PID: me})
	refused("prefix of the token", quietHello{V: 1, Token: tk.token[:32], PID: me})
	refused("another pid claimed", quietHello{V: 1, Token: tk.token, PID: me + 1})
	refused("oversized hello", map[string]string{"pad": strings.Repeat("x", quietMaxReplyFrame)})
	// The pid refusal above spent nothing: the right hello is taken.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	quietFrame(t, c, quietHello{V: 1, Token: tk.token, PID: me})
	select {
	case q := <-tk.conn:
		if q.pid != me {
			t.Errorf("pid %d, want %d", q.pid, me)
		}
		defer q.Close()
	case <-time.After(20 * time.Second):
		t.Fatal("the right token was not taken")
	}
	refused("used token", quietHello{V: 1, Token: tk.token, PID: me})

	// A resume must prove the kernel's connection key on a fresh nonce.
	key := []byte("the kernel's connection key")
	res := hub.expectResume(key)
	defer hub.forgetResume(res)
	resume := func(what string, macKey []byte) net.Conn {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		quietFrame(t, c, quietHello{V: 1, Resume: true, PID: me})
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		body, err := readFrame(c, quietMaxReplyFrame)
		if err != nil {
			t.Fatalf("%s: no challenge: %v", what, err)
		}
		var ch struct {
			Nonce string `json:"nonce"`
		}
		nonce, err := hex.DecodeString(func() string { _ = json.Unmarshal(body, &ch); return ch.Nonce }())
		if err != nil || len(nonce) < 16 {
			t.Fatalf("%s: challenge %q", what, body)
		}
		quietFrame(t, c, map[string]string{"mac": hex.EncodeToString(resumeMAC(macKey, nonce, me))})
		return c
	}
	bad := resume("another key", []byte("a guess"))
	defer bad.Close()
	if n, err := bad.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("a resume with another key: the hub sent %d bytes, err %v; want the connection closed", n, err)
	}
	select {
	case <-res.conn:
		t.Error("a resume with another key was taken")
	default:
	}
	good := resume("the kernel's key", key)
	defer good.Close()
	select {
	case q := <-res.conn:
		defer q.Close()
	case <-time.After(20 * time.Second):
		t.Fatal("a resume with the kernel's key was not taken")
	}
}

// TestQuietKernelSideRefusesForeignSockets: the thread's connect refuses a
// socket whose directory others can write, or which another user owns,
// before it sends anything.
func TestQuietKernelSideRefusesForeignSockets(t *testing.T) {
	python := kerneltest.Python(t)
	try := func(path string) string {
		t.Helper()
		script := quietKernelSource + fmt.Sprintf(`
try:
    _connect(%q)
    print("connected")
except PermissionError as e:
    print("refused:", e)
`, path)
		out, err := exec.Command(python, "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("python: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	serveAt := func(path string) {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
	}
	ok := filepath.Join(t.TempDir(), "ok.sock")
	serveAt(ok)
	if got := try(ok); got != "connected" {
		t.Fatalf("own socket in a private dir: %s", got)
	}
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	openSock := filepath.Join(open, "q.sock")
	serveAt(openSock)
	if got := try(openSock); !strings.HasPrefix(got, "refused") {
		t.Errorf("socket in a world-writable dir: %s", got)
	}
	if os.Getuid() == 0 {
		other := filepath.Join(t.TempDir(), "other.sock")
		serveAt(other)
		if err := os.Lchown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if got := try(other); !strings.HasPrefix(got, "refused") {
			t.Errorf("socket owned by another user: %s", got)
		}
	} else {
		t.Log("not root: the other-owner case needs chown; skipped")
	}
}

// startHub serves a quiet hub on a socket in a private temporary directory
// until the test ends.
func startHub(t *testing.T) *quietHub {
	t.Helper()
	hub := newQuietHub(testLogger(t))
	path := filepath.Join(t.TempDir(), "q.sock")
	l, err := listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hub.serve(ctx, l, path) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitFor(t, 10*time.Second, func() error {
		if hub.socketPath() == "" {
			return errors.New("hub not listening yet")
		}
		return nil
	})
	return hub
}

// TestQuietFailureReported: a change the kernel cannot apply (a value
// os.environ refuses) comes back as the exception's class name, without
// the value, with nothing on iopub; the thread goes on serving.
func TestQuietFailureReported(t *testing.T) {
	hub := startHub(t)
	k := kerneltest.Start(t, kerneltest.Options{Dir: t.TempDir()})
	c := k.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := hub.dial(ctx, k.ConnFile)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if m := sess.Describe().Mode; m != ModeQuiet {
		t.Fatalf("mode %s, want %s", m, ModeQuiet)
	}
	settle(t, c, "pass")
	bad := secretValue("nul") + "\x00tail"
	err = sess.Apply(ctx, Plan{Set: map[string]string{"BROKEN": bad}}, "BROKEN")
	if err == nil || !strings.Contains(err.Error(), "ValueError") {
		t.Fatalf("a value with a NUL byte: got %v, want an error naming ValueError", err)
	}
	if strings.Contains(err.Error(), secretValue("nul")) {
		t.Error("the error carries the value")
	}
	good := secretValue("good")
	if err := sess.Apply(ctx, Plan{Set: map[string]string{"FINE": good}}, "FINE"); err != nil {
		t.Fatalf("the next change: %v", err)
	}
	if got := foreign(c); len(got) != 0 {
		t.Errorf("iopub during the failed and the good change: %v", got)
	}
	waitEnv(t, c, "FINE", good)
	if out := k.Output(); strings.Contains(out, "Traceback") || strings.Contains(out, "ValueError") {
		t.Errorf("the failure reached the kernel's output:\n%s", out)
	}
}

// TestRKernelProbeQuiet: IRkernel's liveness checks go to its heartbeat:
// an idle R kernel probed every 100 ms shows nothing on iopub and stays
// live.
func TestRKernelProbeQuiet(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(func(c *Config) { c.Probe = 100 * time.Millisecond })
	_, c := startRKernel(t, h)
	h.put("s1", "QUIET_R", 1, secretValue("r"))
	waitFor(t, 30*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].State != StateLive || ks[0].Mode != ModeShellIdle || ks[0].Holds["QUIET_R"].Version != 1 {
			return fmt.Errorf("R kernel not live with QUIET_R: %+v", ks)
		}
		return nil
	})
	settle(t, c, "invisible(NULL)")
	idle := time.Now().Add(2 * time.Second)
	for time.Now().Before(idle) {
		if ks := a.Status().Kernels; len(ks) != 1 || ks[0].State != StateLive {
			t.Fatalf("R kernel left the live state while idle: %+v", ks)
		}
		time.Sleep(50 * time.Millisecond) // sampling the state, not synchronising
	}
	if got := foreign(c); len(got) != 0 {
		t.Errorf("liveness checks of an idle R kernel published on iopub: %v", got)
	}
}

// TestQuietUnavailable: an agent that cannot open its quiet socket (here a
// path too long for a unix socket) still serves IPython kernels live, over
// control, and says so.
//
// Also when the socket's directory is writable by others: the kernel's
// thread would refuse such a socket, so the agent does not offer it.
func TestQuietUnavailable(t *testing.T) {
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"too long":             filepath.Join(t.TempDir(), strings.Repeat("q", 120)+".sock"),
		"dir others can write": filepath.Join(open, "q.sock"),
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			a := h.startAgentWith(func(c *Config) { c.QuietSocket = path })
			k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
			c := k.Client(t)
			v := secretValue("fallback")
			h.put("s1", "FALLBACK", 1, v)
			waitEnv(t, c, "FALLBACK", v)
			if ks := a.Status().Kernels; len(ks) != 1 || ks[0].Mode != ModeControl {
				t.Errorf("kernels: %+v; want one in %s", ks, ModeControl)
			}
		})
	}
}

// foreignUntilOwnIdle reads iopub in order up to the idle status of the
// test client's next execute_request and returns what others caused
// before it.
func foreignUntilOwnIdle(t *testing.T, c *jupyter.Client) []string {
	t.Helper()
	var out []string
	deadline := time.After(60 * time.Second)
	for {
		select {
		case m := <-c.IOPub():
			p := m.ParentHeader
			if p != nil && p.Session == c.Session() {
				var st struct {
					State string `json:"execution_state"`
				}
				if m.Header.MsgType == "status" && p.MsgType == "execute_request" && json.Unmarshal(m.Content, &st) == nil && st.State == "idle" {
					return out
				}
				continue
			}
			parent := "none"
			if p != nil {
				parent = p.MsgType
			}
			out = append(out, m.Header.MsgType+" (parent "+parent+")")
		case <-deadline:
			t.Fatal("no idle status for the test's cell within 60s")
		}
	}
}

// TestQuietResumeMidCell: an agent restarted while a cell runs serves the
// kernel at once over the quiet channel its predecessor installed (the
// kernel's thread resumes, proving the kernel's connection key), without a
// Jupyter message during the cell: the running cell gets the change, and
// the kernel stays busy throughout.
func TestQuietResumeMidCell(t *testing.T) {
	h := newHarness(t)
	sock := filepath.Join(t.TempDir(), "agent.sock") // a restarted agent listens where it did
	sameSocket := func(c *Config) { c.Socket = sock }
	a1 := h.startAgentWith(sameSocket)
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	c := k.Client(t)
	v1, v2 := secretValue("before"), secretValue("after")
	h.put("s1", "RESUMED", 1, v1)
	waitQuiet(t, a1, "RESUMED", 1)
	settle(t, c, "pass")
	marker := filepath.Join(t.TempDir(), "started")
	cell := fmt.Sprintf(`import os, time, hashlib
open(%q, "w").close()
deadline = time.time() + 60
while time.time() < deadline and hashlib.sha256(os.environ.get("RESUMED", "").encode()).hexdigest() != %q:
    time.sleep(0.02)
print("seen" if time.time() < deadline else "timeout")`, marker, digest(v2))
	out := runStarted(t, c, cell, marker, 90*time.Second)
	a1.stop()
	h.put("s1", "RESUMED", 2, v2)
	a2 := h.startAgentWith(sameSocket)
	waitFor(t, 30*time.Second, func() error {
		ks := a2.Status().Kernels
		if len(ks) != 1 || ks[0].Mode != ModeQuiet || ks[0].Holds["RESUMED"].Version != 2 {
			return fmt.Errorf("want the kernel live:quiet with RESUMED v2 while its cell runs: %+v", ks)
		}
		return nil
	})
	if got := <-out; got != "seen" {
		t.Fatalf("the running cell did not get the change from the new agent: %s", got)
	}
	if got := foreignUntilOwnIdle(t, c); len(got) != 0 {
		t.Errorf("iopub during the cell from the agents: %v", got)
	}
	// One thread still.
	if got := run(t, c, "import threading as _t\nprint(sum(1 for th in _t.enumerate() if th.name == 'nbsecrets'))\ndel _t"); got != "1" {
		t.Errorf("nbsecrets threads: %s, want 1", got)
	}
}
