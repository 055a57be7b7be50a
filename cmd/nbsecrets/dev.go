package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
	logLevel, logJSON := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
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
	wsKP, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "workspace.curve.nk"), true, nkeys.PrefixByteCurve)
	if err != nil {
		return err
	}
	userID := currentUserID()
	userKP, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "users", userID+".nk"), false, nkeys.PrefixByteUser)
	if err != nil {
		return err
	}
	signPub, _ := signKP.PublicKey()
	curvePub, _ := curveKP.PublicKey()
	wsPub, _ := wsKP.PublicKey()
	userPub, _ := userKP.PublicKey()

	// The embedded NATS server: loopback, a random port, JetStream under the state dir.
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(dir, "jetstream"), NoSigs: true, NoLog: true, ServerName: "nbsecrets-dev"})
	if err != nil {
		return fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("embedded NATS did not start within 10s")
	}
	url := ns.ClientURL()

	wsID := "ws-" + userID
	project := "default"
	dirc := &controlplane.Directory{
		Users:      []controlplane.User{{ID: userID, PublicKey: userPub}},
		Projects:   []controlplane.Project{{ID: project, Members: []controlplane.Member{{User: userID, Role: "admin"}}}},
		Workspaces: []controlplane.Workspace{{ID: wsID, Owner: userID, Projects: []string{project}, CurveKey: wsPub}},
	}
	svcConn, err := nats.Connect(url, nats.Name("nbsecrets-service"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("service connecting to NATS: %w", err)
	}
	defer svcConn.Close()
	svc, err := controlplane.New(controlplane.Options{Conn: svcConn, SignKey: signKP, CurveKey: curveKP,
		Directory: dirc, Logger: log.Named("service")})
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return fmt.Errorf("starting the secrets service: %w", err)
	}
	defer svc.Stop()

	agentConn, err := agent.Connect(url, log.Named("agent"), nats.Name("nbsecrets-agent-"+wsID))
	if err != nil {
		return err
	}
	defer agentConn.Close()
	opener, err := protocol.NewOpener(wsID, []string{signPub}, curvePub, wsKP)
	if err != nil {
		return err
	}
	sock := filepath.Join(dir, agentSockName)
	ag, err := agent.New(agent.Config{
		Workspace: agent.Workspace{ID: wsID, Owner: userID, Projects: []string{project}},
		Opener:    opener, Conn: agentConn, RuntimeDirs: []string{*runtimeDir}, Socket: sock, Logger: log.Named("agent"),
	})
	if err != nil {
		return err
	}
	agentDone := make(chan error, 1)
	actx, stopAgent := context.WithCancel(ctx)
	defer func() { stopAgent(); <-agentDone }()
	go func() { agentDone <- ag.Run(actx) }()

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
  workspace     %s, owned by %s, project %q
  agent socket  %s
  kernels       watched in %s
`, os.Getpid(), url, filepath.Join(dir, "jetstream"), wsID, userID, project, sock, *runtimeDir)
	if specPath != "" {
		fmt.Fprintf(env.stdout, "  kernelspec    %q wrapped at %s\n", *kernel, specPath)
	}
	sd := ""
	if dir != defaultStateDir() {
		sd = " --state-dir " + dir
	}
	fmt.Fprintf(env.stdout, `
Try:
  printf %%s 'my value' | nbsecrets secret create%s DB-PASSWORD
  nbsecrets status%s
Then, in a notebook on the %q kernel: os.environ['DB-PASSWORD']. Ctrl-C stops.
`, sd, sd, *kernel)
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
