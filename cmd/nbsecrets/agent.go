package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// runAgent is `nbsecrets agent`: the workspace sidecar against a production
// NATS. Every flag has an environment variable for container deployments.
func runAgent(ctx context.Context, env *cliEnv, args []string) error {
	if i := slices.Index(args, "--exec"); i >= 0 {
		return runAgentExec(ctx, env, args[:i], args[i+1:]) // hubagent.go
	}
	lowMemory()
	fs := newFlags(env, "agent", "[flags]")
	url := fs.String("nats", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma-separated ($NATS_URL)")
	auth := addNATSAuthFlags(fs)
	wsID := fs.String("workspace", envOr("NBSECRETS_WORKSPACE", ""), "workspace id (required) ($NBSECRETS_WORKSPACE)")
	owner := fs.String("owner", envOr("NBSECRETS_OWNER", ""), "user who owns the workspace (required without --directory) ($NBSECRETS_OWNER)")
	var projects, communities, signKeys, runtimeDirs listFlag
	_ = projects.Set(envOr("NBSECRETS_PROJECTS", ""))
	_ = communities.Set(envOr("NBSECRETS_COMMUNITIES", ""))
	_ = signKeys.Set(envOr("NBSECRETS_SERVICE_KEYS", ""))
	fs.Var(&projects, "projects", "projects the workspace works in, comma-separated ($NBSECRETS_PROJECTS)")
	fs.Var(&communities, "communities", "communities whose shares reach the workspace ($NBSECRETS_COMMUNITIES)")
	dirPath := fs.String("directory", envOr("NBSECRETS_DIRECTORY", ""), "the secrets service's directory file: the workspace's owner, projects and communities come from it, and follow its changes (SIGHUP, file events, a 30s check) without a restart; instead of --owner, --projects and --communities ($NBSECRETS_DIRECTORY)")
	fs.Var(&signKeys, "service-key", "pinned public signing nkey of the secrets service; repeat for rotation (required) ($NBSECRETS_SERVICE_KEYS)")
	sealKey := fs.String("service-curve-key", envOr("NBSECRETS_SERVICE_CURVE_KEY", ""), "pinned curve public key of the secrets service (required) ($NBSECRETS_SERVICE_CURVE_KEY)")
	wsKey := fs.String("workspace-key", envOr("NBSECRETS_WORKSPACE_KEY", ""), "file with the workspace's curve seed, mode 0600 (required) ($NBSECRETS_WORKSPACE_KEY)")
	fs.Var(&runtimeDirs, "runtime-dir", "Jupyter runtime dir to watch; repeatable (default $JUPYTER_RUNTIME_DIR or <data dir>/runtime)")
	socket := fs.String("socket", envOr("NBSECRETS_SOCKET", filepath.Join(defaultStateDir(), agentSockName)), "local API socket for the injector and status ($NBSECRETS_SOCKET)")
	stateFile := fs.String("state-file", envOr("NBSECRETS_STATE_FILE", ""), "file keeping the versions seen across restarts, so replays of older records are refused (default <state dir>/agent-<workspace>.state.json) ($NBSECRETS_STATE_FILE)")
	policy := policyFlags(fs)
	metricsAddr, metricsAnyAddr := metricsFlag(fs), metricsNonLoopbackFlag(fs)
	remoteKernels := allowRemoteKernelsFlag(fs)
	delivery := deliveryFlag(fs)
	logLevel, logJSON := logFlags(fs)
	_ = fs.Bool("exec", false, "on a JupyterHub: nbsecrets agent --exec -- jupyterhub-singleuser ... makes its keys, registers with $NBSECRETS_SERVICE_URL using $JUPYTERHUB_API_TOKEN and runs the server as its child (see deploy/jupyterhub)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	pol, jupyterServer, err := policy()
	if err != nil {
		fmt.Fprintf(env.stderr, "nbsecrets agent: %v\n", err)
		return errUsage
	}
	required := map[string]string{"--workspace": *wsID, "--service-curve-key": *sealKey, "--workspace-key": *wsKey}
	var dirData []byte
	if *dirPath != "" {
		if *owner != "" || len(projects) > 0 || len(communities) > 0 {
			fmt.Fprintln(env.stderr, "nbsecrets agent: --directory gives the owner, projects and communities; do not also set --owner, --projects or --communities (or their environment variables)")
			return errUsage
		}
		abs, err := filepath.Abs(*dirPath)
		if err != nil {
			return err
		}
		*dirPath = abs
		if dirData, err = os.ReadFile(abs); err != nil {
			return fmt.Errorf("directory: %w", err)
		}
		access, err := agentAccess(dirData, *wsID)
		if err != nil {
			return fmt.Errorf("%s: %w", abs, err)
		}
		*owner, projects, communities = access.Owner, access.Projects, access.Communities
	} else {
		required["--owner"] = *owner
	}
	var missing []string
	for name, v := range required {
		if v == "" {
			missing = append(missing, name)
		}
	}
	slices.Sort(missing)
	if len(signKeys) == 0 {
		missing = append(missing, "--service-key")
	}
	if len(missing) > 0 {
		fmt.Fprintf(env.stderr, "nbsecrets agent: missing %v\n", missing)
		fs.Usage()
		return errUsage
	}
	if len(runtimeDirs) == 0 {
		runtimeDirs = listFlag{jupyterRuntimeDir()}
	}
	log, err := newLogger(env.stderr, *logLevel, *logJSON)
	if err != nil {
		return err
	}
	curve, err := keyfile.Load(*wsKey)
	if err != nil {
		return fmt.Errorf("workspace key: %w", err)
	}
	opener, err := protocol.NewOpener(*wsID, signKeys, *sealKey, curve)
	if err != nil {
		return err
	}
	opts, err := auth.options()
	if err != nil {
		return err
	}
	opts = append(opts, nats.Name("nbsecrets-agent-"+*wsID))
	nc, err := agent.Connect(*url, log.Named("agent"), opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	a, err := agent.New(agent.Config{
		Workspace: workspaceOf(*wsID, controlplane.Access{Owner: *owner, Projects: projects, Communities: communities}),
		Opener:    opener, Conn: nc, RuntimeDirs: runtimeDirs, Socket: *socket, Logger: log.Named("agent"), Delivery: *delivery,
		Policy: pol, JupyterServer: jupyterServer, MetricsAddr: *metricsAddr, MetricsNonLoopback: *metricsAnyAddr,
		AllowRemoteKernels: *remoteKernels, StateFile: cmp.Or(*stateFile, filepath.Join(defaultStateDir(), "agent-"+*wsID+".state.json")),
	})
	if err != nil {
		return err
	}
	if *dirPath == "" {
		return a.Run(ctx)
	}
	stopWatch := goWatchDirectory(ctx, *dirPath, dirData, log.Named("directory"), func(data []byte) error {
		access, err := agentAccess(data, *wsID)
		if err != nil {
			return err
		}
		return a.SetAccess(workspaceOf(*wsID, access))
	})
	err = a.Run(ctx)
	stopWatch()
	return err
}

// workspaceOf is the agent's view of workspace id with access.
func workspaceOf(id string, access controlplane.Access) agent.Workspace {
	return agent.Workspace{ID: id, Owner: access.Owner, Projects: access.Projects, Communities: access.Communities}
}

// agentAccess is what workspace ws may have according to a directory file:
// its owner, the projects it lists that the owner is a member of, and their
// communities. The file is checked as the service checks it.
func agentAccess(data []byte, ws string) (controlplane.Access, error) {
	d, err := controlplane.DecodeDirectory(bytes.NewReader(data))
	if err != nil {
		return controlplane.Access{}, err
	}
	a, ok := d.AccessOf(ws)
	if !ok {
		return controlplane.Access{}, fmt.Errorf("workspace %q is not in the directory", ws)
	}
	return a, nil
}
