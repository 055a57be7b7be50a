package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nbsecrets/nbsecrets/injector"
)

// injectExec replaces the process with the kernel; tests swap it.
var injectExec = injector.Exec

// runInject is `nbsecrets inject [--socket PATH] [--state-dir DIR]
// [--timeout D] -- ARGV...`, what a wrapped kernelspec runs: it asks the
// agent for the kernel's environment and becomes the kernel (same PID). An
// agent that does not answer in time only means a kernel without secrets
// (one line on stderr); a kernel program that cannot be found is exit 1.
func runInject(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "inject", "[--socket PATH] [--state-dir DIR] [--timeout D] -- ARGV...")
	socket := fs.String("socket", "", "the agent's socket (default $NBSECRETS_SOCKET, else STATE_DIR/"+agentSockName+")")
	stateDir := stateDirFlag(fs)
	timeout := fs.Duration("timeout", injector.DefaultTimeout, "how long to wait for the agent before starting the kernel without secrets")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 || argv[0] == "" {
		fmt.Fprintln(env.stderr, "nbsecrets inject: no kernel command after --")
		fs.Usage()
		return errUsage
	}
	err := injectExec(ctx, injector.Options{
		Socket:  injectSocket(*socket, *stateDir),
		Timeout: *timeout,
		Argv:    argv,
		Stderr:  env.stderr,
	})
	if errors.Is(err, injector.ErrNoArgv) {
		fs.Usage()
		return errUsage
	}
	return err
}

// injectSocket is the agent's socket: the --socket flag, else
// $NBSECRETS_SOCKET, else the state dir's agent.sock; absolute when it can be.
func injectSocket(flagValue, stateDir string) string {
	s := flagValue
	if s == "" {
		s = os.Getenv("NBSECRETS_SOCKET")
	}
	if s == "" {
		s = filepath.Join(stateDir, agentSockName)
	}
	if abs, err := filepath.Abs(s); err == nil {
		s = abs
	}
	return s
}
