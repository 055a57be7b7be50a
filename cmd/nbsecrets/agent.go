package main

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"

	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// runAgent is `nbsecrets agent`: the workspace sidecar against a production
// NATS. Every flag has an environment variable for container deployments.
func runAgent(ctx context.Context, env *cliEnv, args []string) error {
	lowMemory()
	fs := newFlags(env, "agent", "[flags]")
	url := fs.String("nats", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma-separated ($NATS_URL)")
	auth := addNATSAuthFlags(fs)
	wsID := fs.String("workspace", envOr("NBSECRETS_WORKSPACE", ""), "workspace id (required) ($NBSECRETS_WORKSPACE)")
	owner := fs.String("owner", envOr("NBSECRETS_OWNER", ""), "user who owns the workspace (required) ($NBSECRETS_OWNER)")
	var projects, communities, signKeys, runtimeDirs listFlag
	_ = projects.Set(envOr("NBSECRETS_PROJECTS", ""))
	_ = communities.Set(envOr("NBSECRETS_COMMUNITIES", ""))
	_ = signKeys.Set(envOr("NBSECRETS_SERVICE_KEYS", ""))
	fs.Var(&projects, "projects", "projects the workspace works in, comma-separated ($NBSECRETS_PROJECTS)")
	fs.Var(&communities, "communities", "communities whose shares reach the workspace ($NBSECRETS_COMMUNITIES)")
	fs.Var(&signKeys, "service-key", "pinned public signing nkey of the secrets service; repeat for rotation (required) ($NBSECRETS_SERVICE_KEYS)")
	sealKey := fs.String("service-curve-key", envOr("NBSECRETS_SERVICE_CURVE_KEY", ""), "pinned curve public key of the secrets service (required) ($NBSECRETS_SERVICE_CURVE_KEY)")
	wsKey := fs.String("workspace-key", envOr("NBSECRETS_WORKSPACE_KEY", ""), "file with the workspace's curve seed, mode 0600 (required) ($NBSECRETS_WORKSPACE_KEY)")
	fs.Var(&runtimeDirs, "runtime-dir", "Jupyter runtime dir to watch; repeatable (default $JUPYTER_RUNTIME_DIR or <data dir>/runtime)")
	socket := fs.String("socket", envOr("NBSECRETS_SOCKET", filepath.Join(defaultStateDir(), agentSockName)), "local API socket for the injector and status ($NBSECRETS_SOCKET)")
	stateFile := fs.String("state-file", envOr("NBSECRETS_STATE_FILE", ""), "file keeping the versions seen across restarts, so replays of older records are refused (default <state dir>/agent-<workspace>.state.json) ($NBSECRETS_STATE_FILE)")
	policy := policyFlags(fs)
	metricsAddr, metricsAnyAddr := metricsFlag(fs), metricsNonLoopbackFlag(fs)
	logLevel, logJSON := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	pol, jupyterServer, err := policy()
	if err != nil {
		fmt.Fprintf(env.stderr, "nbsecrets agent: %v\n", err)
		return errUsage
	}
	var missing []string
	for name, v := range map[string]string{"--workspace": *wsID, "--owner": *owner, "--service-curve-key": *sealKey, "--workspace-key": *wsKey} {
		if v == "" {
			missing = append(missing, name)
		}
	}
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
		Workspace: agent.Workspace{ID: *wsID, Owner: *owner, Projects: projects, Communities: communities},
		Opener:    opener, Conn: nc, RuntimeDirs: runtimeDirs, Socket: *socket, Logger: log.Named("agent"),
		Policy: pol, JupyterServer: jupyterServer, MetricsAddr: *metricsAddr, MetricsNonLoopback: *metricsAnyAddr,
		StateFile: cmp.Or(*stateFile, filepath.Join(defaultStateDir(), "agent-"+*wsID+".state.json")),
	})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
