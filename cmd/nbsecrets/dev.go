package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/injector"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// runDev is `nbsecrets dev`: everything in one process on loopback.
func runDev(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "dev", "[flags]")
	stateDir := stateDirFlag(fs)
	runtimeDir := fs.String("runtime-dir", jupyterRuntimeDir(), "Jupyter runtime dir to watch for kernels ($JUPYTER_RUNTIME_DIR)")
	kernel := fs.String("kernel", "python3", "kernelspec to wrap with the injector")
	noSpec := fs.Bool("no-kernelspec", false, "do not install the kernelspec wrapper")
	dirFile := fs.String("directory", "", "directory file (users, projects, communities, workspaces); reloaded on change and SIGHUP. Default: one user, one project, one workspace")
	wsFlag := fs.String("workspace", "", "with --directory: the workspace whose agent dev runs (default: the first owned by the current user, else the first)")
	policy := policyFlags(fs)
	metricsAddr := metricsFlag(fs)
	delivery := deliveryFlag(fs)
	live := liveFlag(fs)
	uiAddr, uiBase, uiNonLoopback := uiFlags(fs)
	logLevel, logJSON := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	pol, jupyterServer, err := policy()
	if err != nil {
		fmt.Fprintf(env.stderr, "nbsecrets dev: %v\n", err)
		return errUsage
	}
	liveOn, err := live()
	if err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	log, err := newLogger(env.stderr, *logLevel, *logJSON)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	if info, err := readDevInfo(dir); err == nil && processAlive(info.PID) {
		return fmt.Errorf("an instance (pid %d) is already running in %s", info.PID, dir)
	}

	// Keys, kept across runs so that kernels, agents and the store agree.
	keys := filepath.Join(dir, "keys")
	signKP, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "service.sign.nk"), false, nkeys.PrefixByteAccount)
	if err != nil {
		return err
	}
	curveKP, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "service.curve.nk"), true, nkeys.PrefixByteCurve)
	if err != nil {
		return err
	}
	signPub, _ := signKP.PublicKey()
	curvePub, _ := curveKP.PublicKey()
	userID := currentUserID()
	var (
		dirc    *controlplane.Directory
		dirData []byte
		dirPath string
		wsID    string
		wsKP    nkeys.KeyPair
	)
	if *dirFile == "" {
		// Today's one user, one project, one workspace.
		var userKP nkeys.KeyPair
		if wsKP, _, err = keyfile.LoadOrCreate(filepath.Join(keys, "workspace.curve.nk"), true, nkeys.PrefixByteCurve); err != nil {
			return err
		}
		if userKP, _, err = keyfile.LoadOrCreate(filepath.Join(keys, "users", userID+".nk"), false, nkeys.PrefixByteUser); err != nil {
			return err
		}
		wsPub, _ := wsKP.PublicKey()
		userPub, _ := userKP.PublicKey()
		wsID = "ws-" + userID
		project := "default"
		dirc = &controlplane.Directory{
			Users:      []controlplane.User{{ID: userID, PublicKey: userPub}},
			Projects:   []controlplane.Project{{ID: project, Members: []controlplane.Member{{User: userID, Role: "admin"}}}},
			Workspaces: []controlplane.Workspace{{ID: wsID, Owner: userID, Projects: []string{project}, CurveKey: wsPub}},
		}
	} else {
		if dirPath, err = filepath.Abs(*dirFile); err != nil {
			return err
		}
		if dirData, err = os.ReadFile(dirPath); err != nil {
			return fmt.Errorf("directory: %w", err)
		}
		if dirc, err = devDirectory(keys, dirPath, dirData, log); err != nil {
			return err
		}
		if wsID, err = devWorkspace(dirc, *wsFlag, userID); err != nil {
			return err
		}
		if wsKP, err = keyfile.Load(filepath.Join(keys, "workspaces", wsID+".curve.nk")); err != nil {
			return err
		}
		if !slices.ContainsFunc(dirc.Users, func(u controlplane.User) bool { return u.ID == userID }) {
			access, _ := dirc.AccessOf(wsID)
			userID = access.Owner
		}
	}

	// The embedded NATS server: loopback, a random port, JetStream under
	// the state dir, and the accounts and permissions of production (see
	// devnats.go), with no cap on consumers per stream (nats-server's
	// default of 1,000 would refuse the 1,001st workspace's agent).
	ns, err := startDevNATS(dir, dirc)
	if err != nil {
		return err
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	url := ns.ClientURL()

	svcAuth, err := devNATSOption(dir, "service", "")
	if err != nil {
		return err
	}
	svcConn, err := nats.Connect(url, nats.Name("nbsecrets-service"), nats.MaxReconnects(-1), svcAuth)
	if err != nil {
		return fmt.Errorf("service connecting to NATS: %w", err)
	}
	defer svcConn.Close()
	svc, err := controlplane.New(controlplane.Options{Conn: svcConn, SignKey: signKP, CurveKey: curveKP,
		Directory: dirc, Logger: log.Named("service"), Live: liveOn})
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return fmt.Errorf("starting the secrets service: %w", err)
	}
	defer svc.Stop()
	var ui *webUI
	if *uiAddr != "" {
		if ui, err = startWebUI(svc, svcConn, keys, *uiAddr, *uiBase, *uiNonLoopback, log.Named("web")); err != nil {
			return err
		}
		defer ui.stop()
	}

	access, _ := dirc.AccessOf(wsID)
	sock := filepath.Join(dir, agentSockName)
	agentAuth, err := devNATSOption(dir, "workspaces", wsID)
	if err != nil {
		return err
	}
	agents := &devAgents{url: url, auth: agentAuth, wsID: wsID, signPub: signPub, curvePub: curvePub, wsKP: wsKP,
		runtimeDir: *runtimeDir, sock: sock, log: log.Named("agent"),
		policy: pol, jupyterServer: jupyterServer, metricsAddr: *metricsAddr, delivery: *delivery}
	ag, err := agents.start(ctx, access)
	if err != nil {
		return err
	}
	defer agents.stop()
	if dirPath != "" {
		stopWatch := goWatchDirectory(ctx, dirPath, dirData, log.Named("directory"), func(data []byte) error {
			d, err := devDirectory(keys, dirPath, data, log)
			if err != nil {
				return err
			}
			if err := reloadDevNATS(ns, dir, d); err != nil {
				return err
			}
			if err := svc.SetDirectory(d); err != nil {
				return err
			}
			a, ok := d.AccessOf(wsID)
			if !ok {
				log.Warn("the agent's workspace left the directory; its agent keeps running with no secrets", "workspace", wsID)
				return nil
			}
			return agents.setAccess(a)
		})
		defer stopWatch()
	}

	specPath := ""
	if !*noSpec {
		bin, err := os.Executable()
		if err != nil {
			return err
		}
		specPath, err = injector.InstallKernelspec(injector.KernelspecOptions{Name: *kernel, Binary: bin, Socket: sock})
		if err != nil {
			return fmt.Errorf("installing the kernelspec wrapper: %w", err)
		}
	}

	info := devInfo{PID: os.Getpid(), NATSURL: url, Workspace: wsID, User: userID, Socket: sock,
		SignKey: signPub, SealKey: curvePub, RuntimeDir: *runtimeDir}
	if ui != nil {
		info.UIURL = ui.URL
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	if err := writeFileAtomic(filepath.Join(dir, devInfoFile), b, 0o600); err != nil {
		return fmt.Errorf("writing instance info: %w", err)
	}
	defer os.Remove(filepath.Join(dir, devInfoFile))

	select {
	case <-ag.Loaded():
	case <-ctx.Done():
		return nil
	case <-time.After(10 * time.Second):
		log.Warn("records not loaded within 10s; still trying")
	}
	fmt.Fprintf(env.stdout, `nbsecrets dev is running (pid %d)
  NATS          %s (JetStream in %s)
  workspace     %s, owned by %s, projects %s, communities %s
  agent socket  %s
  kernels       watched in %s
`, os.Getpid(), url, filepath.Join(dir, "jetstream"), wsID, access.Owner, orDash(access.Projects), orDash(access.Communities), sock, *runtimeDir)
	if dirPath != "" {
		fmt.Fprintf(env.stdout, "  directory     %s (%d users, %d workspaces; reloaded on change and SIGHUP; --as USER picks the caller)\n",
			dirPath, len(dirc.Users), len(dirc.Workspaces))
	}
	if specPath != "" {
		fmt.Fprintf(env.stdout, "  kernelspec    %q wrapped at %s\n", *kernel, specPath)
	}
	if *metricsAddr != "" {
		addr := ag.MetricsAddr()
		if addr == "" {
			addr = *metricsAddr
		}
		fmt.Fprintf(env.stdout, "  metrics       http://%s/metrics (and /healthz, /readyz)\n", addr)
	}
	if ui != nil {
		login, err := ui.loginURL(userID)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "  web UI        %s\n  log in as %s  %s (works once; nbsecrets ui prints another)\n", ui.URL, userID, login)
	}
	sd := ""
	if dir != defaultStateDir() {
		sd = " --state-dir " + dir
	}
	fmt.Fprintf(env.stdout, `
Try:
  printf %%s 'my value' | nbsecrets secret create%s DB_PASSWORD
  nbsecrets status%s
  nbsecrets ui%s        (a new login URL for the web UI)
Then, in a notebook on the %q kernel: os.environ['DB_PASSWORD']. Ctrl-C stops.
`, sd, sd, sd, *kernel)
	<-ctx.Done()
	fmt.Fprintln(env.stdout, "nbsecrets dev: stopping")
	return nil
}

// currentUserID is the OS user name as an id (letters, digits, - and _).
func currentUserID() string {
	name := "user"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
	if len(name) > 60 {
		name = name[:60]
	}
	return name
}

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	return err == nil && p.Signal(syscallZero) == nil
}

// devDirectory decodes a directory file for dev and fills in the keys dev
// holds: every user's key is keys/users/<id>.nk and every workspace's curve
// key keys/workspaces/<id>.curve.nk, generated when missing; an empty
// publicKey or curveKey is filled from them. Then it checks the result.
func devDirectory(keys, path string, data []byte, log hclog.Logger) (*controlplane.Directory, error) {
	d, err := controlplane.DecodeDirectory(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, u := range d.Users {
		if protocol.ValidateID(u.ID) != nil {
			continue // Validate names the field
		}
		kp, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "users", u.ID+".nk"), false, nkeys.PrefixByteUser)
		if err != nil {
			return nil, err
		}
		pub, _ := kp.PublicKey()
		switch {
		case u.PublicKey == "":
			d.Users[i].PublicKey = pub
		case u.PublicKey != pub:
			log.Warn("the directory gives a user a key dev does not hold: --as that user will be refused", "user", u.ID)
		}
	}
	for i, w := range d.Workspaces {
		if protocol.ValidateID(w.ID) != nil {
			continue
		}
		kp, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "workspaces", w.ID+".curve.nk"), true, nkeys.PrefixByteCurve)
		if err != nil {
			return nil, err
		}
		pub, _ := kp.PublicKey()
		switch {
		case w.CurveKey == "":
			d.Workspaces[i].CurveKey = pub
		case w.CurveKey != pub:
			log.Warn("the directory gives a workspace a curve key dev does not hold: dev cannot run its agent", "workspace", w.ID)
		}
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// devWorkspace picks the workspace dev runs the agent of: want, else the
// first owned by user, else the first.
func devWorkspace(d *controlplane.Directory, want, user string) (string, error) {
	if len(d.Workspaces) == 0 {
		return "", errors.New("the directory has no workspace: dev needs one to run its agent")
	}
	if want != "" {
		if _, ok := d.AccessOf(want); !ok {
			return "", fmt.Errorf("--workspace %s: no such workspace in the directory", want)
		}
		return want, nil
	}
	for _, w := range d.Workspaces {
		if w.Owner == user {
			return w.ID, nil
		}
	}
	return d.Workspaces[0].ID, nil
}

// devAgents runs dev's one agent and tells it when a directory change
// alters what its workspace may receive (the agent checks every record's
// scope against it).
type devAgents struct {
	url, wsID, signPub, curvePub string
	auth                         nats.Option // the agent's NATS key
	wsKP                         nkeys.KeyPair
	runtimeDir, sock             string
	log                          hclog.Logger
	policy                       agent.Policy
	jupyterServer                *agent.JupyterServer
	metricsAddr                  string
	delivery                     string // agent.Config.Delivery

	mu     sync.Mutex
	access controlplane.Access
	ag     *agent.Agent
	cancel context.CancelFunc
	done   chan error
	conn   *nats.Conn
}

// start starts the agent for access.
func (d *devAgents) start(ctx context.Context, access controlplane.Access) (*agent.Agent, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.startLocked(ctx, access)
}

func (d *devAgents) startLocked(ctx context.Context, access controlplane.Access) (*agent.Agent, error) {
	conn, err := agent.Connect(d.url, d.log, nats.Name("nbsecrets-agent-"+d.wsID), d.auth)
	if err != nil {
		return nil, err
	}
	opener, err := protocol.NewOpener(d.wsID, []string{d.signPub}, d.curvePub, d.wsKP)
	if err != nil {
		conn.Close()
		return nil, err
	}
	ag, err := agent.New(agent.Config{
		Workspace: workspaceOf(d.wsID, access),
		Opener:    opener, Conn: conn, RuntimeDirs: []string{d.runtimeDir}, Socket: d.sock, Logger: d.log,
		Policy: d.policy, JupyterServer: d.jupyterServer, MetricsAddr: d.metricsAddr, Delivery: d.delivery,
		StateFile: filepath.Join(filepath.Dir(d.sock), "agent-"+d.wsID+".state.json"),
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(actx) }()
	d.access, d.ag, d.cancel, d.done, d.conn = access, ag, cancel, done, conn
	return ag, nil
}

func (d *devAgents) stopLocked() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	if err := <-d.done; err != nil {
		d.log.Error("agent stopped", "error", err)
	}
	d.conn.Close()
	d.cancel = nil
}

// stop stops the agent.
func (d *devAgents) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
}

// setAccess gives the running agent its workspace's new access, when it
// differs from what it has: no restart, its socket stays.
func (d *devAgents) setAccess(access controlplane.Access) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.access.Owner == access.Owner && slices.Equal(d.access.Projects, access.Projects) && slices.Equal(d.access.Communities, access.Communities) {
		return nil
	}
	if err := d.ag.SetAccess(workspaceOf(d.wsID, access)); err != nil {
		return err
	}
	d.access = access
	return nil
}
