package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/injector"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// jupyterAgentName names the third agent, the restart-through-Jupyter-
// Server row's (its runtime dir, socket and state file).
const jupyterAgentName = "jupyter-agent"

// jupyterAgentLogFlags come after policyAgentFlags and the server's URL and
// token file: the agent logs at info, as JSON, so that the bench can read
// when its restart call to the server returned (agentRestartedMsg).
var jupyterAgentLogFlags = []string{"--log-level", "info", "--log-json"}

// agentRestartedMsg is the message the agent logs at info, with the
// kernel's id under "kernel" and its restart mechanism under "mechanism",
// once its restart mechanism has returned (agent/restart.go); for a
// Jupyter Server that is when POST /api/kernels/{id}/restart answered.
const agentRestartedMsg = "kernel restarted; reconnecting"

// jupyterServerStartAttempts: a port picked free may be taken before the
// server binds it; a server that exits before it answers is then started
// again on another.
const jupyterServerStartAttempts = 3

// jupyterServerStopTimeout bounds the server's shutdown after SIGTERM, and
// the deletion of its kernels before it.
const jupyterServerStopTimeout = 10 * time.Second

// pidCell prints the kernel process's id.
const pidCell = "import os as _o\nprint(_o.getpid())\ndel _o\n"

// jupyterServer is a real Jupyter Server (`python -m jupyter_server`) the
// bench starts, in a process group of its own with a parent-death signal,
// as its other children. Its kernels are not in that group: jupyter_client
// starts each in a session of its own.
type jupyterServer struct {
	cmd    *exec.Cmd
	out    *tail
	exited chan struct{}
	url    string // base URL, ending in "/"
	token  string // its API token: never printed (log redacts it)
	http   *http.Client
}

// jupyterServerVersion is the version of jupyter_server that python
// imports, or why it cannot.
func jupyterServerVersion(python string) (string, error) {
	out, err := exec.Command(python, "-c", "import jupyter_server; print(jupyter_server.__version__)").CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return "", fmt.Errorf("%s cannot import jupyter_server (%v: %s); install Debian's python3-jupyter-server", python, err, lines[len(lines)-1])
	}
	return strings.TrimSpace(string(out)), nil
}

// startJupyterServer starts a Jupyter Server on a free loopback port with
// a fresh token, under dir: its data dir, whose python3 kernelspec
// (cfg.python -m ipykernel_launcher) is wrapped by the injector pointing
// at socket, as `nbsecrets kernelspec install` does; its config dir (empty,
// so no user configuration applies) and its root dir. Its kernels'
// connection files go to runtimeDir. It returns once the server answers
// its API.
func startJupyterServer(ctx context.Context, cfg *config, w *world, dir, runtimeDir, socket string) (*jupyterServer, error) {
	data := filepath.Join(dir, "data")
	spec := filepath.Join(data, "kernels", "python3")
	if err := os.MkdirAll(spec, 0o755); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	kj, err := json.Marshal(map[string]any{
		"argv":         []string{cfg.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"},
		"display_name": "Python 3 (ipykernel)",
		"language":     "python",
	})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(spec, "kernel.json"), kj, 0o644); err != nil {
		return nil, err
	}
	// Wrapped in place; SearchPath only the data dir, so that nothing
	// shadows it (the server's JUPYTER_PATH is empty).
	if _, err := injector.InstallKernelspec(injector.KernelspecOptions{Name: "python3", DataDir: data,
		Binary: cfg.nbsecrets, Socket: socket, SearchPath: []string{data}}); err != nil {
		return nil, fmt.Errorf("wrapping the Jupyter Server's kernelspec: %w", err)
	}
	token := jupyter.NewID()
	// The kernels inherit the server's environment: the bench kernels'
	// (no BENCH_TOKEN), plus the server's directories and token.
	env := append(kernelEnv(runtimeDir, w.dir+"/ipython"),
		"JUPYTER_DATA_DIR="+data, "JUPYTER_CONFIG_DIR="+filepath.Join(dir, "config"), "JUPYTER_PATH=",
		"JUPYTER_TOKEN="+token)
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(1)
		if err != nil {
			return nil, err
		}
		port := strconv.Itoa(ports[0])
		s := &jupyterServer{out: &tail{max: 16 << 10}, exited: make(chan struct{}), token: token,
			url: "http://127.0.0.1:" + port + "/", http: &http.Client{Transport: &http.Transport{}}}
		s.cmd = exec.Command(cfg.python, "-m", "jupyter_server", "--no-browser", "--allow-root",
			"--ServerApp.ip=127.0.0.1", "--ServerApp.port="+port, "--ServerApp.port_retries=0",
			"--ServerApp.root_dir="+root)
		s.cmd.Env = env
		s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		s.cmd.WaitDelay = time.Second
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting jupyter_server: %w", err)
		}
		go func() { // ends when the server exits; stop makes sure it does
			_ = s.cmd.Wait()
			close(s.exited)
		}()
		err = s.waitReady(ctx)
		if err == nil {
			return s, nil
		}
		exitedItself := s.alive() != nil
		stopErr := s.stop()
		if !exitedItself || ctx.Err() != nil || attempt == jupyterServerStartAttempts {
			return nil, fmt.Errorf("jupyter_server did not start: %w; its output ends:\n%s", errors.Join(err, stopErr), s.log())
		}
	}
}

// log is the end of the server's output, its token redacted.
func (s *jupyterServer) log() string {
	return strings.ReplaceAll(s.out.String(), s.token, "<token>")
}

// alive reports an error when the server has exited.
func (s *jupyterServer) alive() error {
	select {
	case <-s.exited:
		return fmt.Errorf("the Jupyter Server exited (%v); its output ends:\n%s", s.cmd.ProcessState, s.log())
	default:
		return nil
	}
}

// waitReady polls GET /api/status until the server answers, it exits, or
// kernelStartTimeout passes.
func (s *jupyterServer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
	defer cancel()
	for {
		err := s.do(ctx, http.MethodGet, "api/status", nil)
		if err == nil {
			return nil
		}
		select {
		case <-s.exited:
			return errors.New("it exited")
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// do calls the server's REST API with the token; out, if not nil, gets the
// JSON answer. POST /api/kernels asks for a python3 kernel.
func (s *jupyterServer) do(ctx context.Context, method, path string, out any) error {
	var body io.Reader
	if method == http.MethodPost && path == "api/kernels" {
		body = strings.NewReader(`{"name": "python3"}`)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "token "+s.token)
	resp, err := s.http.Do(req)
	if err != nil {
		return err // the URL, never the token (it is a header)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s /%s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// startKernel starts a python3 kernel (through the wrapped kernelspec) and
// returns its id; the server answers once the process is started.
func (s *jupyterServer) startKernel(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
	defer cancel()
	var k struct {
		ID string `json:"id"`
	}
	if err := s.do(ctx, http.MethodPost, "api/kernels", &k); err != nil {
		return "", fmt.Errorf("starting a kernel through the Jupyter Server: %w", err)
	}
	if k.ID == "" {
		return "", errors.New("starting a kernel through the Jupyter Server: no kernel id in its answer")
	}
	return k.ID, nil
}

// kernelIDs lists the server's kernels.
func (s *jupyterServer) kernelIDs(ctx context.Context) ([]string, error) {
	var ks []struct {
		ID string `json:"id"`
	}
	if err := s.do(ctx, http.MethodGet, "api/kernels", &ks); err != nil {
		return nil, err
	}
	var ids []string
	for _, k := range ks {
		ids = append(ids, k.ID)
	}
	return ids, nil
}

// stop deletes the server's kernels through its API (the server shuts each
// down), then sends SIGTERM to its process group and waits
// jupyterServerStopTimeout before SIGKILL. It does nothing once the server
// has exited.
func (s *jupyterServer) stop() error {
	defer s.http.CloseIdleConnections()
	select {
	case <-s.exited:
		return nil
	default:
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), jupyterServerStopTimeout)
	defer cancel()
	if ids, err := s.kernelIDs(ctx); err != nil {
		errs = append(errs, fmt.Errorf("listing the Jupyter Server's kernels: %w", err))
	} else {
		for _, id := range ids {
			if err := s.do(ctx, http.MethodDelete, "api/kernels/"+id, nil); err != nil {
				errs = append(errs, fmt.Errorf("deleting kernel %s: %w", id, err))
			}
		}
	}
	pid := s.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-s.exited:
		return errors.Join(errs...)
	case <-time.After(jupyterServerStopTimeout):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-s.exited:
		errs = append(errs, fmt.Errorf("the Jupyter Server did not stop within %v of SIGTERM; killed", jupyterServerStopTimeout))
	case <-time.After(kernelStopTimeout):
		errs = append(errs, fmt.Errorf("the Jupyter Server (pid %d) could not be killed", pid))
	}
	return errors.Join(errs...)
}

// pidWatch sees a process the bench did not start (a Jupyter Server's
// kernel) exit, through a pidfd: readable the moment the process exits,
// whoever reaps it, and never confused with a later process of the same id.
type pidWatch struct{ fd int }

func watchPID(pid int) (*pidWatch, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	return &pidWatch{fd: fd}, nil
}

// wait returns once the process has exited, or an error when timeout
// passes or ctx ends first. Each poll returns as soon as the process exits;
// its 50 ms limit only bounds how long an ended ctx goes unnoticed.
func (p *pidWatch) wait(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 50)
		if n > 0 {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("polling a pidfd: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still running after %v", timeout)
		}
	}
}

func (p *pidWatch) close() { _ = unix.Close(p.fd) }

// kernelPID runs pidCell: the kernel process's id.
func kernelPID(ctx context.Context, c *jupyter.Client) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, restartCellTimeout)
	defer cancel()
	res, err := c.Run(ctx, pidCell)
	if err == nil {
		err = res.Reply.Err()
	}
	if err != nil {
		return 0, fmt.Errorf("pid cell: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid cell printed %q", res.Stdout)
	}
	return pid, nil
}

// restReturned finds, in the agent's JSON log, the last agentRestartedMsg
// for kernel id by the jupyter-server mechanism, and returns its time (the
// agent's wall clock) if it is not before since (when that restart began).
func restReturned(log, id string, since time.Time) (time.Time, bool) {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var l struct {
			Message   string `json:"@message"`
			Timestamp string `json:"@timestamp"`
			Kernel    string `json:"kernel"`
			Mechanism string `json:"mechanism"`
		}
		if json.Unmarshal([]byte(lines[i]), &l) != nil || l.Message != agentRestartedMsg || l.Kernel != id || l.Mechanism != "jupyter-server" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, l.Timestamp)
		if err != nil || t.Before(since) {
			return time.Time{}, false
		}
		return t, true
	}
	return time.Time{}, false
}

// jupyterBench drives the restart-through-Jupyter-Server row: the agent,
// told the server's URL and token, decides the restart and asks the
// server's REST API for it; the server shuts the kernel down and starts
// its kernelspec argv (the injector) again.
type jupyterBench struct {
	cfg *config
	w   *world
	seq *int
	// unavailable says why the row cannot be measured (no jupyter_server,
	// a server that did not start); then there is no server nor agent.
	unavailable   string
	serverVersion string
	srv           *jupyterServer
	a             *agentProc // the third agent, with flags
	flags         []string
	// The kernel: its id, connection file and process id (from pidCell).
	id, connFile string
	pid          int
	// version is the row's secret's current version; restarts how many
	// restarts of the kernel the agent should have done so far.
	version  uint64
	restarts uint64
	row      *restartRow
}

// newJupyterBench creates the third user's secret, starts the Jupyter
// Server and the third agent, told the server's URL and token (its
// workspace receives only that secret, so that the other rows' changes do
// not restart its kernel, nor this row's theirs). Without jupyter_server,
// or when the server does not start, the row is to be skipped and nothing
// is started.
func newJupyterBench(ctx context.Context, cfg *config, w *world, seq *int, cl *cleanups) (*jupyterBench, error) {
	jb := &jupyterBench{cfg: cfg, w: w, seq: seq}
	v, err := jupyterServerVersion(cfg.python)
	if err != nil {
		jb.unavailable = err.Error()
		return jb, nil
	}
	jb.serverVersion = v
	runtimeDir, socket, err := w.agentPaths(jupyterAgentName)
	if err != nil {
		return nil, err
	}
	srv, err := startJupyterServer(ctx, cfg, w, filepath.Join(w.dir, "jupyter-server"), runtimeDir, socket)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("starting the Jupyter Server: %w", ctx.Err())
		}
		jb.unavailable = err.Error()
		return jb, nil
	}
	cl.add(srv.stop)
	jb.srv = srv
	tokenFile := filepath.Join(w.dir, "jupyter-token")
	if err := os.WriteFile(tokenFile, []byte(srv.token+"\n"), 0o600); err != nil {
		return nil, err
	}
	*seq++
	info, err := w.jupyterClient.Create(ctx, secretName, []byte(sampleValue(*seq)), controlplane.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating the Jupyter Server row's secret: %w", err)
	}
	jb.version = info.Version
	jb.flags = slices.Concat(policyAgentFlags, []string{"--jupyter-url", srv.url, "--jupyter-token-file", tokenFile}, jupyterAgentLogFlags)
	if jb.a, err = w.startAgent(ctx, cfg, jupyterAgentName, jupyterWorkspaceID, jupyterUserID, "", w.jupyterKeyFile, cl, jb.flags...); err != nil {
		return nil, err
	}
	return jb, nil
}

func (jb *jupyterBench) result() *restartRow { return jb.row }

// warm starts the kernel through the server, waits until the agent serves
// it, and takes one unrecorded restart (warmByAgent); without a server the
// row is skipped.
func (jb *jupyterBench) warm(ctx context.Context) {
	if jb.unavailable != "" {
		jb.row = &restartRow{Skipped: jb.unavailable}
		return
	}
	jb.row = warmByAgent(ctx, jb.firstStart, jb.restart)
}

// firstStart starts the kernel with POST /api/kernels, waits until the
// agent serves it live with the current version, and notes its process id.
func (jb *jupyterBench) firstStart(ctx context.Context) error {
	id, err := jb.srv.startKernel(ctx)
	if err != nil {
		return err
	}
	jb.id, jb.connFile = id, filepath.Join(jb.a.runtimeDir, "kernel-"+id+".json")
	ks, err := settle(ctx, jb.a, jb.connFile, jb.version, 0)
	if err != nil {
		return err
	}
	jb.restarts = ks.Restarts
	info, err := jupyter.ReadConnectionFile(jb.connFile)
	if err != nil {
		return err
	}
	c, _, err := dialReady(ctx, info, jb.srv.exited)
	if err != nil {
		return fmt.Errorf("connecting to the kernel: %w", err)
	}
	defer c.Close()
	jb.pid, err = kernelPID(ctx, c)
	return err
}

// restart is one sample: update the row's secret; the clock starts when
// Update returns; the agent decides to restart the kernel and calls the
// server's REST API, which shuts the kernel down and starts it again on
// the same ports; the bench waits for the old process to exit (its
// pidfd), dials the ports (retrying until the new kernel listens), waits
// until it is ready and runs checkCell until it prints the new value; the
// clock stops when that output arrives. Then, outside the clock, it notes
// the new process's id, waits until the agent serves it, and reads when
// the agent's restart began and when its REST call returned.
func (jb *jupyterBench) restart(ctx context.Context) (restartSample, error) {
	smp := restartSample{ByAgent: true, ViaServer: true}
	if err := jb.a.alive(); err != nil {
		return smp, err
	}
	if err := jb.srv.alive(); err != nil {
		return smp, err
	}
	old, err := watchPID(jb.pid)
	if err != nil {
		return smp, fmt.Errorf("the kernel exited before the change: %w; the Jupyter Server's output ends:\n%s", err, jb.srv.log())
	}
	defer old.close()
	info, err := jupyter.ReadConnectionFile(jb.connFile)
	if err != nil {
		return smp, err
	}
	*jb.seq++
	value := sampleValue(*jb.seq)
	t0 := time.Now()
	upd, err := jb.w.jupyterClient.Update(ctx, secretName, []byte(value))
	if err != nil {
		return smp, fmt.Errorf("update: %w", err)
	}
	start := time.Now()
	smp.Update = start.Sub(t0)
	jb.version = upd.Version
	jb.restarts++

	if err := old.wait(ctx, policyExitTimeout); err != nil {
		if ctx.Err() != nil {
			return smp, ctx.Err()
		}
		return smp, fmt.Errorf("the kernel did not exit after the change: the agent did not restart it: %w", err)
	}
	smp.Killed = time.Since(start)
	c, ct, err := dialReady(ctx, info, jb.srv.exited)
	if err != nil {
		if serr := jb.srv.alive(); serr != nil {
			return smp, serr
		}
		return smp, fmt.Errorf("connecting to the restarted kernel: %w", err)
	}
	smp.Dialled, smp.Ready = ct.Dialled.Sub(start), ct.Ready.Sub(start)
	at, fromStart, cells, err := runUntil(ctx, c, value, restartCellTimeout)
	if err == nil {
		jb.pid, err = kernelPID(ctx, c) // outside the clock, for the next sample
	}
	c.Close()
	if err != nil {
		return smp, err
	}
	smp.Latency, smp.FromStart, smp.Cells = at.Sub(start), fromStart, cells

	ks, err := settleRestart(ctx, jb.a, jb.connFile, jb.version, jb.restarts, start, &smp)
	if err != nil {
		return smp, err
	}
	if t, ok := restReturned(jb.a.stderr.String(), jb.id, ks.LastRestart); ok {
		smp.RESTReturned, smp.GotREST = t.Sub(start), true
	}
	return smp, nil
}

// kill deletes the kernel through the server and waits until its process
// has exited.
func (jb *jupyterBench) kill() error {
	if jb.srv == nil || jb.id == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), jupyterServerStopTimeout)
	defer cancel()
	var exit *pidWatch
	if jb.pid != 0 {
		exit, _ = watchPID(jb.pid) // nil when it is gone already
	}
	err := jb.srv.do(ctx, http.MethodDelete, "api/kernels/"+jb.id, nil)
	jb.id = ""
	if exit != nil {
		defer exit.close()
		if err == nil {
			err = exit.wait(ctx, jupyterServerStopTimeout)
		}
	}
	if err != nil {
		return fmt.Errorf("deleting the Jupyter Server's kernel: %w", err)
	}
	return nil
}

// stop ends the row: the server goes (its kernels deleted first), then
// the agent, so that neither runs in what follows. An agent or a server
// that died during the row fails it; a failure to stop either is shown on
// stderr (one that cannot be killed is reported again by the clean-up).
func (jb *jupyterBench) stop() {
	if jb.srv == nil {
		return
	}
	for _, err := range []error{jb.a.alive(), jb.srv.alive()} {
		if err != nil && jb.row != nil && jb.row.Failed == "" && jb.row.Skipped == "" {
			jb.row.Failed = err.Error()
		}
	}
	if err := jb.srv.stop(); err != nil {
		progress("stopping the Jupyter Server: " + err.Error())
	}
	if err := jb.a.stop(); err != nil {
		progress("stopping the third agent: " + err.Error())
	}
}
