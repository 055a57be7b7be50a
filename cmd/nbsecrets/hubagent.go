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
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/hub"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/injector"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// exitError makes nbsecrets exit with code without printing anything: the
// status of the server `agent --exec` ran.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// reregisterEvery is how often an --exec agent registers again: a liveness
// sign to the service, and how it learns its workspace's access.
const reregisterEvery = 5 * time.Second

// runAgentExec is `nbsecrets agent [flags] --exec -- ARGV...`: the agent of
// one JupyterHub user's server, run as the spawner's command around the
// server (c.Spawner.cmd = [nbsecrets, agent, --exec, --,
// jupyterhub-singleuser]). It makes the workspace's curve key in memory,
// registers it with the secrets service using the server's
// $JUPYTERHUB_API_TOKEN ($JUPYTERHUB_USER, $JUPYTERHUB_SERVER_NAME), wraps
// every kernelspec Jupyter would find in a private directory put first on
// the server's JUPYTER_PATH (nothing under the user's home changes), runs
// ARGV as its child, forwards SIGINT and SIGTERM to it, and exits with its
// status once it has stopped its own work.
func runAgentExec(ctx context.Context, env *cliEnv, flags, argv []string) error {
	lowMemory()
	fs := newFlags(env, "agent", "--exec -- ARGV...")
	svcURL := fs.String("service-url", envOr("NBSECRETS_SERVICE_URL", ""), "the secrets service's URL, as the server reaches it (http://127.0.0.1:PORT/services/nbsecrets/) ($NBSECRETS_SERVICE_URL)")
	delivery := deliveryFlag(fs)
	logLevel, logJSON := logFlags(fs)
	if len(argv) > 0 && (argv[0] == "--help" || argv[0] == "-h") {
		flags = append(flags, argv[0]) // `agent --exec --help`: this mode's usage
	}
	if err := parseFlags(fs, flags); err != nil {
		return err
	}
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 || fs.NArg() != 0 {
		fmt.Fprintln(env.stderr, "nbsecrets agent: --exec needs the command to run: --exec -- jupyterhub-singleuser ...")
		return errUsage
	}
	log, err := newLogger(env.stderr, *logLevel, *logJSON)
	if err != nil {
		return err
	}
	log = log.Named("agent")
	// Signals are the child's from here on: forward them, and stop only
	// when it has exited (the root context ends on the first signal).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	tmp, err := os.MkdirTemp("", "nbsecrets-agent-*")
	if err != nil {
		return fmt.Errorf("creating the agent's directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	childEnv := os.Environ()
	setEnv := func(k, v string) {
		childEnv = slices.DeleteFunc(childEnv, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		childEnv = append(childEnv, k+"="+v)
	}
	// The server proof is the agent's: the server and its kernels do
	// not get it.
	childEnv = slices.DeleteFunc(childEnv, func(e string) bool { return strings.HasPrefix(e, hub.ServerProofEnv+"=") })

	var a *agent.Agent
	stopAgent := func() {}
	if *svcURL == "" || os.Getenv("JUPYTERHUB_API_TOKEN") == "" {
		log.Error("no secrets service to register with ($NBSECRETS_SERVICE_URL, $JUPYTERHUB_API_TOKEN): starting the server without secrets")
	} else if a, stopAgent, err = startHubAgent(log, *svcURL, *delivery, tmp, setEnv); err != nil {
		// The user's server matters more than its secrets: start it anyway.
		log.Error("the agent could not start; starting the server without secrets", "error", err)
	}
	defer func() { stopAgent() }() // the one in force when run returns

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = childEnv, os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	log.Info("server started", "pid", cmd.Process.Pid, "command", argv[0], "agent", a != nil)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }() // ends when the child does
	for {
		select {
		case sig := <-sigs:
			log.Info("forwarding a signal to the server", "signal", sig.String())
			_ = cmd.Process.Signal(sig)
			continue
		case err := <-waited:
			stopAgent()
			stopAgent = func() {}
			code := 0
			var ee *exec.ExitError
			switch {
			case errors.As(err, &ee):
				code = ee.ExitCode()
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = 128 + int(ws.Signal())
				}
			case err != nil:
				return err
			}
			log.Info("server exited", "status", code)
			if code != 0 {
				return exitError{code}
			}
			return nil
		}
	}
}

// startHubAgent registers a new workspace key with the service, wraps the
// kernelspecs, and runs the agent until the returned stop is called.
func startHubAgent(log hclog.Logger, svcURL, delivery, tmp string, setEnv func(k, v string)) (*agent.Agent, func(), error) {
	started := time.Now()
	curve, err := nkeys.CreateCurveKeys()
	if err != nil {
		return nil, nil, err
	}
	curvePub, _ := curve.PublicKey()
	natsKP, err := nkeys.CreateUser()
	if err != nil {
		return nil, nil, err
	}
	natsPub, _ := natsKP.PublicKey()
	req := hub.RegisterRequest{User: os.Getenv("JUPYTERHUB_USER"), Server: os.Getenv("JUPYTERHUB_SERVER_NAME"), CurveKey: curvePub, NATSKey: natsPub,
		ServerProof: os.Getenv(hub.ServerProofEnv)}
	token := os.Getenv("JUPYTERHUB_API_TOKEN")
	var rep *hub.RegisterReply
	deadline := time.Now().Add(30 * time.Second)
	for {
		if rep, err = register(svcURL, token, req); err == nil {
			break
		}
		var perm permanentError
		if errors.As(err, &perm) || time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("registering with the secrets service: %w", err)
		}
		time.Sleep(500 * time.Millisecond) // the service may still be starting
	}
	registered := time.Since(started)
	opener, err := protocol.NewOpener(rep.Workspace, rep.ServiceKeys, rep.ServiceCurveKey, curve)
	if err != nil {
		return nil, nil, err
	}
	// The service authorises the key by auth callout into the agents'
	// shared account, where the agent may subscribe under its own inbox
	// prefix only (natsauth/callout.go). A refusal is not final: a
	// restarted service knows the key again at the next registration.
	nc, err := agent.Connect(rep.NATSURL, log, nats.Name("nbsecrets-agent-"+rep.Workspace), nats.Nkey(natsPub, natsKP.Sign),
		nats.CustomInboxPrefix(natsauth.AgentInboxPrefix(rep.Workspace)), nats.IgnoreAuthErrorAbort())
	if err != nil {
		return nil, nil, err
	}
	runtimeDir := os.Getenv("JUPYTER_RUNTIME_DIR")
	if runtimeDir == "" {
		runtimeDir = filepath.Join(tmp, "runtime")
		if err := os.MkdirAll(runtimeDir, 0o700); err != nil {
			nc.Close()
			return nil, nil, err
		}
		setEnv("JUPYTER_RUNTIME_DIR", runtimeDir)
	}
	sock := filepath.Join(tmp, "agent.sock")
	a, err := agent.New(agent.Config{
		Workspace: workspaceOf(rep.Workspace, controlplane.Access{Owner: rep.Owner, Projects: rep.Projects, Communities: rep.Communities}),
		Opener:    opener, Conn: nc, RuntimeDirs: []string{runtimeDir}, Socket: sock, Logger: log, Delivery: delivery,
	})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	dataDir := filepath.Join(tmp, "jupyter")
	wrapped, err := wrapKernelspecs(dataDir, sock)
	if err != nil {
		log.Warn("wrapping kernelspecs", "error", err)
	}
	setEnv("JUPYTER_PATH", strings.Join(append([]string{dataDir}, filepath.SplitList(os.Getenv("JUPYTER_PATH"))...), string(filepath.ListSeparator)))
	setEnv("NBSECRETS_SOCKET", sock)

	actx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(actx) }() // owned by stop
	rctx, stopReg := context.WithCancel(context.Background())
	reg := make(chan struct{})
	go func() { // owned by stop: re-registers and follows the access
		defer close(reg)
		t := time.NewTicker(reregisterEvery)
		defer t.Stop()
		last := *rep
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
			r, err := register(svcURL, token, req)
			if err != nil {
				log.Warn("registering again", "error", err)
				continue
			}
			if !slices.Equal(r.Projects, last.Projects) || !slices.Equal(r.Communities, last.Communities) {
				if err := a.SetAccess(workspaceOf(r.Workspace, controlplane.Access{Owner: r.Owner, Projects: r.Projects, Communities: r.Communities})); err != nil {
					log.Warn("updating the workspace's access", "error", err)
					continue
				}
				log.Info("workspace access changed", "projects", strings.Join(r.Projects, ","), "communities", strings.Join(r.Communities, ","))
				last = *r
			}
		}
	}()
	select {
	case <-a.Loaded():
	case <-time.After(15 * time.Second):
		log.Warn("records not loaded within 15s; starting the server anyway")
	}
	log.Info("agent ready", "workspace", rep.Workspace, "kernelspecs", strings.Join(wrapped, ","),
		"registered_ms", registered.Milliseconds(), "ready_ms", time.Since(started).Milliseconds())
	var once sync.Once
	stop := func() {
		once.Do(func() {
			stopReg()
			<-reg
			cancel()
			if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("agent stopped", "error", err)
			}
			nc.Close()
		})
	}
	return a, stop, nil
}

// permanentError is a registration refusal that retrying will not change.
type permanentError struct{ error }

// register posts the workspace's key to the service with the server's
// token.
func register(svcURL, token string, req hub.RegisterRequest) (*hub.RegisterReply, error) {
	body, _ := json.Marshal(req)
	hr, err := http.NewRequest(http.MethodPost, strings.TrimRight(svcURL, "/")+"/"+hub.RegisterPath, bytes.NewReader(body))
	if err != nil {
		return nil, permanentError{err}
	}
	hr.Header.Set("Authorization", "token "+token)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("the service said %s: %s", resp.Status, strings.TrimSpace(string(data)))
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusNotFound {
			return nil, permanentError{err}
		}
		return nil, err
	}
	var rep hub.RegisterReply
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("the service's reply: %w", err)
	}
	return &rep, nil
}

// wrapKernelspecs writes, into dataDir/kernels, a wrapper of every
// kernelspec Jupyter finds on its data path, so that a server with dataDir
// first on JUPYTER_PATH starts every kernel through the injector.
func wrapKernelspecs(dataDir, sock string) ([]string, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	search := injector.DefaultSearchPath()
	names := map[string]bool{"python3": true}
	for _, d := range search {
		entries, _ := os.ReadDir(filepath.Join(d, "kernels"))
		for _, e := range entries {
			if _, err := os.Stat(filepath.Join(d, "kernels", e.Name(), "kernel.json")); err == nil {
				names[strings.ToLower(e.Name())] = true
			}
		}
	}
	var done []string
	var errs []error
	for name := range names {
		if _, err := injector.InstallKernelspec(injector.KernelspecOptions{Name: name, DataDir: dataDir, Binary: bin, Socket: sock, SearchPath: search}); err != nil {
			errs = append(errs, fmt.Errorf("kernelspec %s: %w", name, err))
			continue
		}
		done = append(done, name)
	}
	slices.Sort(done)
	return done, errors.Join(errs...)
}
