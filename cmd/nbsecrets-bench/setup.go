package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// The bench's directory: one user, one project, one workspace; a second
// user with a workspace of its own for the restart-by-policy row, and a
// third for the restart-through-Jupyter-Server row, whose agents must not
// see the other rows' changes (a user's private secrets reach only that
// user's workspaces).
const (
	userID             = "bench-user"
	projectID          = "bench-project"
	workspaceID        = "bench-ws"
	policyUserID       = "bench-policy-user"
	policyWorkspaceID  = "bench-policy-ws"
	jupyterUserID      = "bench-jupyter-user"
	jupyterWorkspaceID = "bench-jupyter-ws"
	secretName         = "BENCH_TOKEN"
)

// cleanups runs clean-up functions in reverse order of registration.
type cleanups struct{ fns []func() error }

func (c *cleanups) add(f func() error) { c.fns = append(c.fns, f) }

func (c *cleanups) run() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	c.fns = nil
	return errors.Join(errs...)
}

// world is everything the bench sets up but the kernels.
type world struct {
	dir    string // the temporary root
	url    string // NATS
	client *controlplane.Client
	agent  *agentProc
	// records gets the arrival time of each record message the service
	// publishes for the workspace (a plain subscription on the records'
	// subjects, beside the agent's consumer).
	records chan time.Time
	// policyClient acts as the second user, owner of the policy
	// workspace, whose curve seed is in policyKeyFile.
	policyClient  *controlplane.Client
	policyKeyFile string
	// jupyterClient and jupyterKeyFile are the same for the third user,
	// owner of the workspace of the restart-through-Jupyter-Server row.
	jupyterClient  *controlplane.Client
	jupyterKeyFile string
	// signPub and curvePub are the service's public keys, pinned by the
	// agents.
	signPub, curvePub string
}

// keys are the service's, the workspaces' and the users' nkeys.
type keys struct {
	sign, curve, workspace, user  nkeys.KeyPair
	policyWorkspace, policyUser   nkeys.KeyPair
	jupyterWorkspace, jupyterUser nkeys.KeyPair
}

func newKeys() (*keys, error) {
	var k keys
	var err error
	if k.sign, err = nkeys.CreateAccount(); err != nil {
		return nil, err
	}
	if k.curve, err = nkeys.CreateCurveKeys(); err != nil {
		return nil, err
	}
	if k.user, err = nkeys.CreateUser(); err != nil {
		return nil, err
	}
	if k.policyUser, err = nkeys.CreateUser(); err != nil {
		return nil, err
	}
	if k.jupyterUser, err = nkeys.CreateUser(); err != nil {
		return nil, err
	}
	return &k, nil
}

func pub(kp nkeys.KeyPair) string {
	s, _ := kp.PublicKey() // only fails for a wiped key
	return s
}

// setUp starts the embedded NATS server, the secrets service, the user's
// client and the agent process, registering how to stop each in cl. It
// returns once the agent has loaded the records.
func setUp(ctx context.Context, cfg *config, dir string, cl *cleanups) (*world, error) {
	w := &world{dir: dir}
	ks, err := newKeys()
	if err != nil {
		return nil, fmt.Errorf("making keys: %w", err)
	}
	w.signPub, w.curvePub = pub(ks.sign), pub(ks.curve)
	// Each workspace's curve seed goes to a 0600 file for its agent.
	wsKeyFile := filepath.Join(dir, "keys", "workspace.curve.nk")
	if ks.workspace, _, err = keyfile.LoadOrCreate(wsKeyFile, true, nkeys.PrefixByteCurve); err != nil {
		return nil, err
	}
	w.policyKeyFile = filepath.Join(dir, "keys", "policy-workspace.curve.nk")
	if ks.policyWorkspace, _, err = keyfile.LoadOrCreate(w.policyKeyFile, true, nkeys.PrefixByteCurve); err != nil {
		return nil, err
	}
	w.jupyterKeyFile = filepath.Join(dir, "keys", "jupyter-workspace.curve.nk")
	if ks.jupyterWorkspace, _, err = keyfile.LoadOrCreate(w.jupyterKeyFile, true, nkeys.PrefixByteCurve); err != nil {
		return nil, err
	}

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(dir, "jetstream"), NoSigs: true, NoLog: true, ServerName: "nbsecrets-bench"})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	cl.add(func() error { ns.Shutdown(); ns.WaitForShutdown(); return nil })
	if !ns.ReadyForConnections(10 * time.Second) {
		return nil, errors.New("embedded NATS did not start within 10s")
	}
	w.url = ns.ClientURL()

	svcConn, err := nats.Connect(w.url, nats.Name("nbsecrets-bench-service"))
	if err != nil {
		return nil, fmt.Errorf("service connecting to NATS: %w", err)
	}
	cl.add(func() error { svcConn.Close(); return nil })
	svc, err := controlplane.New(controlplane.Options{
		Conn: svcConn, SignKey: ks.sign, CurveKey: ks.curve,
		Directory: &controlplane.Directory{
			Users: []controlplane.User{{ID: userID, PublicKey: pub(ks.user)},
				{ID: policyUserID, PublicKey: pub(ks.policyUser)}, {ID: jupyterUserID, PublicKey: pub(ks.jupyterUser)}},
			Projects: []controlplane.Project{{ID: projectID, Members: []controlplane.Member{{User: userID, Role: controlplane.RoleAdmin}}}},
			Workspaces: []controlplane.Workspace{{ID: workspaceID, Owner: userID, Projects: []string{projectID},
				CurveKey: pub(ks.workspace)},
				{ID: policyWorkspaceID, Owner: policyUserID, CurveKey: pub(ks.policyWorkspace)},
				{ID: jupyterWorkspaceID, Owner: jupyterUserID, CurveKey: pub(ks.jupyterWorkspace)}},
		},
		Logger: hclog.New(&hclog.LoggerOptions{Name: "service", Level: hclog.Warn, Output: os.Stderr}),
	})
	if err != nil {
		return nil, fmt.Errorf("secrets service: %w", err)
	}
	if err := svc.Start(ctx); err != nil {
		return nil, fmt.Errorf("starting the secrets service: %w", err)
	}
	cl.add(svc.Stop)

	userConn, err := nats.Connect(w.url, nats.Name("nbsecrets-bench-user"))
	if err != nil {
		return nil, fmt.Errorf("user connecting to NATS: %w", err)
	}
	cl.add(func() error { userConn.Close(); return nil })
	w.client = controlplane.NewClient(userConn, userID, ks.user, pub(ks.curve))
	w.policyClient = controlplane.NewClient(userConn, policyUserID, ks.policyUser, pub(ks.curve))
	w.jupyterClient = controlplane.NewClient(userConn, jupyterUserID, ks.jupyterUser, pub(ks.curve))
	w.records = make(chan time.Time, 64)
	if _, err := userConn.Subscribe(protocol.WorkspaceFilter(workspaceID), func(*nats.Msg) {
		select {
		case w.records <- time.Now():
		default:
		}
	}); err != nil {
		return nil, fmt.Errorf("subscribing to the records: %w", err)
	}
	if err := userConn.Flush(); err != nil {
		return nil, err
	}

	w.agent, err = w.startAgent(ctx, cfg, "agent", workspaceID, userID, projectID, wsKeyFile, cl)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// agentPaths are the runtime dir (NAME-runtime, created) and the socket
// (NAME.sock) of the agent NAME under the temporary root: startAgent's,
// known before the agent starts (a Jupyter Server needs them first).
func (w *world) agentPaths(name string) (runtimeDir, socket string, err error) {
	runtimeDir = filepath.Join(w.dir, name+"-runtime")
	if err := os.MkdirAll(runtimeDir, 0o700); err != nil {
		return "", "", err
	}
	return runtimeDir, filepath.Join(w.dir, name+".sock"), nil
}

// startAgent starts `nbsecrets agent` for workspace ws of owner (with
// projects, if not empty) as a process of its own, its runtime dir and
// socket those of agentPaths and its state file NAME.state.json under the
// temporary root, extra flags (a restart policy) last; it registers its
// stop in cl and returns once the agent has loaded the records.
func (w *world) startAgent(ctx context.Context, cfg *config, name, ws, owner, projects, keyFile string, cl *cleanups, extra ...string) (*agentProc, error) {
	runtimeDir, socket, err := w.agentPaths(name)
	if err != nil {
		return nil, err
	}
	args := []string{
		"agent",
		"--nats", w.url,
		"--workspace", ws,
		"--owner", owner,
	}
	if projects != "" {
		args = append(args, "--projects", projects)
	}
	args = append(args,
		"--service-key", w.signPub,
		"--service-curve-key", w.curvePub,
		"--workspace-key", keyFile,
		"--runtime-dir", runtimeDir,
		"--socket", socket,
		// In the temporary root, not the user's state dir: nothing of a run
		// stays behind.
		"--state-file", filepath.Join(w.dir, name+".state.json"),
		"--log-level", "warn",
	)
	a, err := startAgent(cfg.nbsecrets, append(args, extra...), socket, runtimeDir)
	if err != nil {
		return nil, err
	}
	cl.add(a.stop)
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.waitFor(lctx, func(st *agent.Status) bool { return st.Loaded }); err != nil {
		return nil, fmt.Errorf("%s did not load the records: %w", name, err)
	}
	return a, nil
}

// agentProc is the agent, run as a process of its own so that its memory
// is its own.
type agentProc struct {
	cmd        *exec.Cmd
	stderr     *tail
	exited     chan struct{}
	socket     string
	runtimeDir string
	http       *http.Client
}

// agentStopTimeout is how long the agent has to stop after SIGTERM before
// it is killed.
const agentStopTimeout = 5 * time.Second

func startAgent(bin string, args []string, socket, runtimeDir string) (*agentProc, error) {
	a := &agentProc{stderr: &tail{max: 16 << 10}, exited: make(chan struct{}), socket: socket, runtimeDir: runtimeDir}
	a.cmd = exec.Command(bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = a.stderr, a.stderr
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	a.cmd.WaitDelay = time.Second
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the agent (%s): %w", bin, err)
	}
	go func() { // ends when the agent exits; stop makes sure it does
		_ = a.cmd.Wait()
		close(a.exited)
	}()
	a.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	return a, nil
}

// PID is the agent process's id.
func (a *agentProc) PID() int { return a.cmd.Process.Pid }

// alive reports an error when the agent has exited.
func (a *agentProc) alive() error {
	select {
	case <-a.exited:
		return fmt.Errorf("the agent exited (%v); its log ends:\n%s", a.cmd.ProcessState, a.stderr.String())
	default:
		return nil
	}
}

// stop sends SIGTERM, waits agentStopTimeout, then kills the agent.
func (a *agentProc) stop() error {
	a.http.CloseIdleConnections()
	select {
	case <-a.exited:
		return nil
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
		return nil
	case <-time.After(agentStopTimeout):
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-a.exited:
		return fmt.Errorf("the agent did not stop within %v of SIGTERM; killed", agentStopTimeout)
	case <-time.After(kernelStopTimeout):
		return fmt.Errorf("the agent (pid %d) could not be killed", a.cmd.Process.Pid)
	}
}

// status asks the agent's local API what it holds (never a value).
func (a *agentProc) status(ctx context.Context) (*agent.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent status: %s", resp.Status)
	}
	var st agent.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	return &st, nil
}

// waitFor polls the agent's status until cond holds, ctx ends or the agent
// exits.
func (a *agentProc) waitFor(ctx context.Context, cond func(*agent.Status) bool) error {
	var last error
	for {
		if err := a.alive(); err != nil {
			return err
		}
		st, err := a.status(ctx)
		if err == nil && cond(st) {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last: %w)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kernelLive reports whether the agent serves the kernel of connFile live
// and has given it version of the bench's secret.
func kernelLive(connFile string, version uint64) func(*agent.Status) bool {
	return func(st *agent.Status) bool {
		for _, k := range st.Kernels {
			if k.ConnectionFile == connFile && k.State == agent.StateLive && k.Holds[secretName].Version >= version {
				return true
			}
		}
		return false
	}
}

// memory is the agent's VmRSS and VmHWM, in bytes.
type memory struct {
	RSS, HWM int64
}

// readMemory reads VmRSS and VmHWM from /proc/<pid>/status.
func readMemory(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		var kb int64
		if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
			return memory{}, fmt.Errorf("parsing %s in /proc/%d/status: %w", name, pid, err)
		}
		if name == "VmRSS" {
			m.RSS = kb << 10
		} else {
			m.HWM = kb << 10
		}
	}
	if m.RSS == 0 || m.HWM == 0 {
		return memory{}, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return m, nil
}
