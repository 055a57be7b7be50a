package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"

	"github.com/nbsecrets/nbsecrets/injector"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// The restart tests run a real Jupyter Server (Debian's
// python3-jupyter-server, `/usr/bin/python3 -m jupyter_server`) on a free
// loopback port with a token, its python3 kernelspec wrapped by
// `nbsecrets inject` (the real binary, built by the test), and a real agent
// with a restart policy.

const jupyterServerHint = "apt-get install -y python3-jupyter-server"

var (
	jsOnce sync.Once
	jsErr  error
)

// requireJupyterServer skips the test when /usr/bin/python3 cannot import
// jupyter_server, or fails it when NBSECRETS_REQUIRE_KERNEL=1.
func requireJupyterServer(t *testing.T) {
	t.Helper()
	kerneltest.Python(t)
	jsOnce.Do(func() {
		out, err := exec.Command(kerneltest.PythonPath, "-c", "import jupyter_server").CombinedOutput()
		if err != nil {
			jsErr = fmt.Errorf("%s cannot import jupyter_server: %w: %s", kerneltest.PythonPath, err, bytes.TrimSpace(out))
		}
	})
	if jsErr != nil {
		msg := fmt.Sprintf("Jupyter Server test: %v; install with: %s", jsErr, jupyterServerHint)
		if os.Getenv(kerneltest.RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// buildNbsecrets builds the nbsecrets binary into a temporary directory.
func buildNbsecrets(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nbsecrets")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/nbsecrets")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build nbsecrets: %v\n%s", err, out)
	}
	return bin
}

// jupyterServer is a running Jupyter Server owned by one test.
type jupyterServer struct {
	t     *testing.T
	url   string
	token string
	dir   string // its runtime dir: the agent's
	out   *syncBuffer
}

// syncBuffer is the shared test buffer: safe for concurrent writes.
type syncBuffer = testutil.Buffer

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startJupyterServer installs the wrapped python3 kernelspec (injector
// pointing at socket) into a fresh data dir and starts a server whose
// kernels' connection files go to runtimeDir.
func startJupyterServer(t *testing.T, bin, socket, runtimeDir string) *jupyterServer {
	t.Helper()
	requireJupyterServer(t)
	tmp := t.TempDir()
	data := filepath.Join(tmp, "data")
	if _, err := injector.InstallKernelspec(injector.KernelspecOptions{Name: "python3", DataDir: data, Binary: bin,
		Socket: socket, SearchPath: []string{data, "/usr/local/share/jupyter", "/usr/share/jupyter"}}); err != nil {
		t.Fatalf("installing the kernelspec: %v", err)
	}
	s := &jupyterServer{t: t, token: secretValue("token"), dir: runtimeDir, out: &syncBuffer{}}
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		s.url = "http://127.0.0.1:" + strconv.Itoa(port) + "/"
		cmd := exec.Command(kerneltest.PythonPath, "-m", "jupyter_server", "--no-browser", "--allow-root",
			"--ServerApp.ip=127.0.0.1", "--ServerApp.port="+strconv.Itoa(port), "--ServerApp.port_retries=0",
			"--ServerApp.root_dir="+tmp)
		cmd.Env = append(os.Environ(), "JUPYTER_DATA_DIR="+data, "JUPYTER_RUNTIME_DIR="+runtimeDir,
			"JUPYTER_CONFIG_DIR="+filepath.Join(tmp, "config"), "JUPYTER_PATH=", "IPYTHONDIR="+filepath.Join(tmp, "ipython"),
			"JUPYTER_TOKEN="+s.token, "PYDEVD_DISABLE_FILE_VALIDATION=1", "NBSECRETS_LOG_LEVEL=debug")
		cmd.Stdout, cmd.Stderr = s.out, s.out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting jupyter_server: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() { s.stop(cmd, exited) })
		err := s.waitReady(exited)
		if err == nil {
			return s
		}
		if attempt == 3 {
			t.Fatalf("jupyter_server did not start: %v\n%s", err, s.out.String())
		}
	}
}

// stop shuts every kernel down, then the server (SIGTERM, then SIGKILL to
// its process group).
func (s *jupyterServer) stop(cmd *exec.Cmd, exited chan struct{}) {
	select {
	case <-exited:
	default:
		for _, id := range s.kernelIDs() {
			_ = s.do(http.MethodDelete, "api/kernels/"+id, nil)
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	if s.t.Failed() {
		s.t.Logf("jupyter_server output:\n%s", s.out.String())
	}
}

func (s *jupyterServer) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(kerneltest.StartTimeout)
	for {
		select {
		case <-exited:
			return errors.New("jupyter_server exited")
		default:
		}
		if err := s.do(http.MethodGet, "api/status", nil); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// do calls the REST API with the token.
func (s *jupyterServer) do(method, path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var body *strings.Reader
	if method == http.MethodPost && path == "api/kernels" {
		body = strings.NewReader(`{"name": "python3"}`)
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "token "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

func (s *jupyterServer) kernelIDs() []string {
	var ks []struct {
		ID string `json:"id"`
	}
	_ = s.do(http.MethodGet, "api/kernels", &ks)
	var ids []string
	for _, k := range ks {
		ids = append(ids, k.ID)
	}
	return ids
}

// startKernel starts a python3 kernel (through the wrapped kernelspec) and
// returns its id and connection file.
func (s *jupyterServer) startKernel() (id, connFile string) {
	s.t.Helper()
	var k struct {
		ID string `json:"id"`
	}
	if err := s.do(http.MethodPost, "api/kernels", &k); err != nil {
		s.t.Fatalf("starting a kernel: %v", err)
	}
	return k.ID, filepath.Join(s.dir, "kernel-"+k.ID+".json")
}

// dialKernel reads the connection file as it is now and connects a client.
func dialKernel(t *testing.T, connFile string) (*jupyter.Client, *jupyter.ConnectionInfo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kerneltest.StartTimeout)
	defer cancel()
	var info *jupyter.ConnectionInfo
	var c *jupyter.Client
	waitFor(t, kerneltest.StartTimeout, func() error {
		var err error
		if info, err = jupyter.ReadConnectionFile(connFile); err != nil {
			return err
		}
		if c, err = jupyter.Dial(ctx, info); err != nil {
			return err
		}
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		if err := c.Ready(rctx); err != nil {
			c.Close()
			return err
		}
		return nil
	})
	t.Cleanup(func() { c.Close() })
	return c, info
}

// kernelView is what a check cell reports: the process id, the digest of
// os.environ[name] ("unset" when absent), and whether the process started
// with that value (/proc/self/environ is what exec gave it) or got it live.
type kernelView struct {
	PID       int
	Digest    string
	FromStart bool
}

func viewKernel(t *testing.T, c *jupyter.Client, name string) kernelView {
	t.Helper()
	v, err := tryViewKernel(c, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tryViewKernel runs the check cell; an error means the kernel did not
// answer (it may be restarting).
func tryViewKernel(c *jupyter.Client, name string) (kernelView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Run(ctx, fmt.Sprintf(`import os as _o, hashlib as _h
_v = _o.environ.get(%[1]q)
with open('/proc/self/environ', 'rb') as _f:
    _s = _f.read().split(b'\0')
print(_o.getpid(), 'unset' if _v is None else _h.sha256(_v.encode()).hexdigest(), 'start' if _v is not None and (%[1]q + '=' + _v).encode() in _s else 'live')
del _o, _h, _v, _f, _s`, name))
	if err != nil {
		return kernelView{}, fmt.Errorf("check cell: %w", err)
	}
	f := strings.Fields(res.Stdout)
	if len(f) != 3 {
		return kernelView{}, fmt.Errorf("check cell printed %q (status %v)", res.Stdout, res.Reply)
	}
	pid, _ := strconv.Atoi(f[0])
	return kernelView{PID: pid, Digest: f[1], FromStart: f[2] == "start"}, nil
}

// restartSetup is an agent with a policy, a Jupyter Server and the
// nbsecrets binary, wired together.
type restartSetup struct {
	h   *harness
	a   *Agent
	srv *jupyterServer
}

// startRestartSetup starts the server and an agent with pol; withServer
// gives the agent the server's URL and token (else it restarts kernels by
// shutdown_request and relies on the server's autorestart).
func startRestartSetup(t *testing.T, pol Policy, withServer bool) *restartSetup {
	t.Helper()
	requireJupyterServer(t)
	bin := buildNbsecrets(t)
	h := newHarness(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv := startJupyterServer(t, bin, sock, h.dir)
	nc, err := Connect(h.ns.ClientURL(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Workspace: h.ws, Opener: h.opener(), Conn: nc, RuntimeDirs: []string{h.dir}, Socket: sock,
		Logger: testLogger(t), Probe: 500 * time.Millisecond, Rescan: time.Second, Policy: pol}
	if withServer {
		cfg.JupyterServer = &JupyterServer{URL: srv.url, Token: srv.token}
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent run: %v", err)
		}
		nc.Close()
	})
	select {
	case <-a.Loaded():
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not load the records")
	}
	return &restartSetup{h: h, a: a, srv: srv}
}

// kernelStatus waits until the agent serves the kernel id and cond holds.
func (rs *restartSetup) waitKernel(t *testing.T, id string, what string, cond func(KernelStatus) bool) KernelStatus {
	t.Helper()
	var got KernelStatus
	waitFor(t, 60*time.Second, func() error {
		for _, k := range rs.a.Status().Kernels {
			if k.ID == id && cond(k) {
				got = k
				return nil
			}
		}
		return fmt.Errorf("kernel %s: not %s yet: %+v", id, what, rs.a.Status().Kernels)
	})
	return got
}

// waitBusy waits until the agent sees a cell running on the kernel. A cell
// can have begun (its marker file written) before its execute_input,
// published by the kernel's iopub thread, has reached the agent.
func (rs *restartSetup) waitBusy(t *testing.T, id string) {
	t.Helper()
	rs.waitKernel(t, id, "seen busy", func(k KernelStatus) bool { return k.Busy })
}

func (rs *restartSetup) waitRestarts(t *testing.T, id string, n uint64) KernelStatus {
	t.Helper()
	return rs.waitKernel(t, id, fmt.Sprintf("restarted %d times and live", n), func(k KernelStatus) bool {
		return k.Restarts >= n && k.State == StateLive
	})
}

// waitView reconnects to the kernel (new sockets, connection file re-read)
// until a check cell shows the wanted digest.
func waitView(t *testing.T, connFile, name, wantDigest string) (kernelView, *jupyter.ConnectionInfo) {
	t.Helper()
	var v kernelView
	var info *jupyter.ConnectionInfo
	waitFor(t, 60*time.Second, func() error {
		var c *jupyter.Client
		c, info = dialKernel(t, connFile)
		var err error
		if v, err = tryViewKernel(c, name); err != nil {
			return err
		}
		if v.Digest != wantDigest {
			return fmt.Errorf("%s not the expected value yet", name)
		}
		return nil
	})
	return v, info
}

func TestRestartJupyterServerOnChange(t *testing.T) {
	rs := startRestartSetup(t, Policy{OnChange: ActRestart}, true)
	v1, v2 := secretValue("start"), secretValue("changed")
	rs.h.put("s1", "ROTATED", 1, v1)
	rs.waitSecrets(t, 1)
	id, file := rs.srv.startKernel()
	c, info1 := dialKernel(t, file)
	before := viewKernel(t, c, "ROTATED")
	if before.Digest != digest(v1) || !before.FromStart {
		t.Fatalf("kernel did not start with the value: %+v", before)
	}
	rs.waitKernel(t, id, "live", func(k KernelStatus) bool { return k.State == StateLive })
	run(t, c, "state = 41")

	rs.h.put("s1", "ROTATED", 2, v2)
	st := rs.waitRestarts(t, id, 1)
	if st.LastRestartReason != reasonChange || st.Holds["ROTATED"].Version != 2 {
		t.Errorf("status after the restart: %+v", st)
	}
	after, info2 := waitView(t, file, "ROTATED", digest(v2))
	if after.PID == before.PID || !after.FromStart {
		t.Errorf("not restarted with the value at start: before %+v, after %+v", before, after)
	}
	if info1.ShellPort != info2.ShellPort || info1.ControlPort != info2.ControlPort || info1.IOPubPort != info2.IOPubPort {
		t.Errorf("ports changed: %+v -> %+v", info1, info2)
	}
	if ids := rs.srv.kernelIDs(); len(ids) != 1 || ids[0] != id {
		t.Errorf("kernel ids after the restart: %v, want [%s]", ids, id)
	}
	c2, _ := dialKernel(t, file)
	if got := run(t, c2, "print('state' in globals())"); got != "False" {
		t.Errorf("the kernel kept its state: not a restart")
	}
	if st := rs.waitRestarts(t, id, 1); st.Restarts != 1 {
		t.Errorf("%d restarts for one change", st.Restarts)
	}
}

func TestRestartJupyterServerOnRevoke(t *testing.T) {
	rs := startRestartSetup(t, Policy{OnRevoke: ActRestart}, true)
	keep1, keep2, doomed := secretValue("keep1"), secretValue("keep2"), secretValue("doomed")
	rs.h.put("s1", "KEEP", 1, keep1)
	rs.h.put("s2", "DOOMED", 1, doomed)
	rs.waitSecrets(t, 2)
	id, file := rs.srv.startKernel()
	c, _ := dialKernel(t, file)
	start := viewKernel(t, c, "DOOMED")
	if start.Digest != digest(doomed) {
		t.Fatal("kernel did not start with the value")
	}
	rs.waitKernel(t, id, "live", func(k KernelStatus) bool { return k.State == StateLive })
	run(t, c, "copied = __import__('os').environ['DOOMED']")

	// A mere change is re-seeded live: same process.
	rs.h.put("s1", "KEEP", 2, keep2)
	waitEnv(t, c, "KEEP", keep2)
	if v := viewKernel(t, c, "KEEP"); v.PID != start.PID || v.FromStart {
		t.Errorf("a change was not re-seeded live: %+v", v)
	}
	// A delete restarts: the name and the copy in a variable are gone.
	rs.h.del("s2", "DOOMED", 2)
	st := rs.waitRestarts(t, id, 1)
	if st.LastRestartReason != reasonRevoke {
		t.Errorf("reason %q", st.LastRestartReason)
	}
	after, _ := waitView(t, file, "DOOMED", "unset")
	if after.PID == start.PID {
		t.Error("not restarted")
	}
	c2, _ := dialKernel(t, file)
	if got := run(t, c2, "print('copied' in globals())"); got != "False" {
		t.Error("the copied value survived")
	}
	if v := viewKernel(t, c2, "KEEP"); v.Digest != digest(keep2) || !v.FromStart {
		t.Errorf("the kept secret after the restart: %+v", v)
	}
}

// TestRestartJupyterServerBusy: a busy kernel is restarted once its cell
// ends; one whose cell outlasts BusyWait is restarted anyway.
func TestRestartJupyterServerBusy(t *testing.T) {
	rs := startRestartSetup(t, Policy{OnChange: ActRestart, BusyWait: 6 * time.Second, BusyAction: BusyRestart}, true)
	v1, v2, v3 := secretValue("b1"), secretValue("b2"), secretValue("b3")
	rs.h.put("s1", "BUSY", 1, v1)
	rs.waitSecrets(t, 1)
	id, file := rs.srv.startKernel()
	c, _ := dialKernel(t, file)
	first := viewKernel(t, c, "BUSY")
	rs.waitKernel(t, id, "live", func(k KernelStatus) bool { return k.State == StateLive })

	marks := t.TempDir()
	started, release := filepath.Join(marks, "started"), filepath.Join(marks, "release")
	out := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := c.Run(ctx, fmt.Sprintf("import os, time\nopen(%q, 'w').close()\nwhile not os.path.exists(%q):\n    time.sleep(0.01)\nprint('cell finished')", started, release))
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		out <- strings.TrimSpace(res.Stdout)
	}()
	waitFile(t, started)
	rs.waitBusy(t, id)
	rs.h.put("s1", "BUSY", 2, v2)
	rs.waitKernel(t, id, "waiting for idle", func(k KernelStatus) bool {
		return k.PendingRestart != nil && k.PendingRestart.WaitingForIdle
	})
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := <-out; got != "cell finished" {
		t.Fatalf("the running cell did not finish: %s", got)
	}
	rs.waitRestarts(t, id, 1)
	second, _ := waitView(t, file, "BUSY", digest(v2))
	if second.PID == first.PID || !second.FromStart {
		t.Errorf("not restarted after the cell: %+v -> %+v", first, second)
	}

	// A cell that outlasts BusyWait: restarted anyway.
	c2, _ := dialKernel(t, file)
	started2 := filepath.Join(marks, "started2")
	lost := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		_, err := c2.Run(ctx, fmt.Sprintf("import time\nopen(%q, 'w').close()\ntime.sleep(80)", started2))
		lost <- err
	}()
	waitFile(t, started2)
	rs.waitBusy(t, id)
	rs.h.put("s1", "BUSY", 3, v3)
	rs.waitKernel(t, id, "waiting for idle", func(k KernelStatus) bool {
		return k.PendingRestart != nil && k.PendingRestart.WaitingForIdle
	})
	rs.waitRestarts(t, id, 2)
	third, _ := waitView(t, file, "BUSY", digest(v3))
	if third.PID == second.PID || !third.FromStart {
		t.Errorf("not restarted anyway: %+v -> %+v", second, third)
	}
	c2.Close()
	<-lost
}

// TestRestartJupyterServerWindow: two changes inside the restart window
// become one restart when it ends.
func TestRestartJupyterServerWindow(t *testing.T) {
	const window = 4 * time.Second
	rs := startRestartSetup(t, Policy{OnChange: ActRestart, MinInterval: window}, true)
	a1, a2, b1 := secretValue("a1"), secretValue("a2"), secretValue("b1")
	id, file := rs.srv.startKernel()
	dialKernel(t, file)
	rs.waitKernel(t, id, "live", func(k KernelStatus) bool { return k.State == StateLive })

	rs.h.put("s1", "ALPHA", 1, a1)
	first := rs.waitRestarts(t, id, 1)
	rs.h.put("s1", "ALPHA", 2, a2)
	rs.h.put("s2", "BETA", 1, b1)
	second := rs.waitKernel(t, id, "restarted with both changes", func(k KernelStatus) bool {
		return k.Restarts >= 2 && k.State == StateLive && k.Holds["ALPHA"].Version == 2 && k.Holds["BETA"].Version == 1
	})
	if second.Restarts != 2 {
		t.Errorf("%d restarts, want 2", second.Restarts)
	}
	if gap := second.LastRestart.Sub(first.LastRestart); gap < window {
		t.Errorf("restarts %v apart, window %v", gap, window)
	}
	va, _ := waitView(t, file, "ALPHA", digest(a2))
	c, _ := dialKernel(t, file)
	vb := viewKernel(t, c, "BETA")
	if !va.FromStart || vb.Digest != digest(b1) || !vb.FromStart {
		t.Errorf("values not at start: A %+v, B %+v", va, vb)
	}
}

// TestRestartWithoutServer: an agent that knows no server asks the kernel
// to shut down (restart: true) and the kernel's manager (here a Jupyter
// Server the agent was not told about) restarts it through the injector.
// The restart comes within 10 s of the kernel's first start, so
// jupyter_client gives it new ports: the agent follows the rewritten
// connection file.
func TestRestartWithoutServer(t *testing.T) {
	rs := startRestartSetup(t, Policy{OnChange: ActRestart}, false)
	v1, v2 := secretValue("ns1"), secretValue("ns2")
	rs.h.put("s1", "NOSERVER", 1, v1)
	rs.waitSecrets(t, 1)
	id, file := rs.srv.startKernel()
	c, info1 := dialKernel(t, file)
	before := viewKernel(t, c, "NOSERVER")
	rs.waitKernel(t, id, "live", func(k KernelStatus) bool { return k.State == StateLive })

	rs.h.put("s1", "NOSERVER", 2, v2)
	after, info2 := waitView(t, file, "NOSERVER", digest(v2))
	if after.PID == before.PID || !after.FromStart {
		t.Errorf("not restarted with the value at start: %+v -> %+v", before, after)
	}
	t.Logf("ports after the restart: shell %d -> %d (jupyter_client picks new ones within 10 s of the first start)",
		info1.ShellPort, info2.ShellPort)
	st := rs.waitKernel(t, id, "live again", func(k KernelStatus) bool {
		return k.State == StateLive && k.Holds["NOSERVER"].Version == 2
	})
	if st.Restarts != 1 || st.LastRestartReason != reasonChange {
		t.Errorf("status after the restart: %+v", st)
	}
	if ids := rs.srv.kernelIDs(); len(ids) != 1 || ids[0] != id {
		t.Errorf("kernel ids after the restart: %v, want [%s]", ids, id)
	}
	if !strings.Contains(rs.srv.out.String(), "KernelRestarter: restarting kernel") {
		t.Error("the server's log does not show its restarter at work")
	}
}

func waitFile(t *testing.T, f string) {
	t.Helper()
	waitFor(t, 30*time.Second, func() error {
		_, err := os.Stat(f)
		return err
	})
}

// waitSecrets waits until the agent holds n secrets.
func (rs *restartSetup) waitSecrets(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 20*time.Second, func() error {
		if got := len(rs.a.Status().Secrets); got != n {
			return fmt.Errorf("%d secrets held, want %d", got, n)
		}
		return nil
	})
}

// TestJupyterServerRestarterErrors: a wrong token and an unknown kernel
// are refused without restarting anything.
func TestJupyterServerRestarterErrors(t *testing.T) {
	requireJupyterServer(t)
	bin := buildNbsecrets(t)
	dir := t.TempDir()
	srv := startJupyterServer(t, bin, filepath.Join(t.TempDir(), "none.sock"), dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bad := &JupyterServer{URL: srv.url, Token: "wrong"}
	if err := bad.restart(ctx, kernelRef{ID: "x"}, nil); !errors.Is(err, errServerAuth) {
		t.Errorf("wrong token: %v", err)
	}
	good := &JupyterServer{URL: srv.url, Token: srv.token}
	if err := good.restart(ctx, kernelRef{ID: "00000000-0000-0000-0000-000000000000"}, nil); !errors.Is(err, ErrKernelNotManaged) {
		t.Errorf("unknown kernel: %v", err)
	}
	if strings.Contains(fmt.Sprint(bad.restart(ctx, kernelRef{ID: "x"}, nil)), "wrong") {
		t.Error("an error quotes the token")
	}
}
