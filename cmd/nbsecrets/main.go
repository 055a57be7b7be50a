// Command nbsecrets brings notebook secrets into running Jupyter kernels.
//
// Usage:
//
//	nbsecrets <command> [flags] [args]
//
// Commands:
//
//	dev         run the embedded default: NATS with JetStream, the secrets
//	            service, one workspace owned by the current user and its agent
//	serve       run the secrets service against a production NATS
//	agent       run a workspace agent against a production NATS
//	nats-config generate the NATS accounts and permissions for a directory
//	secret      create, update, delete, list secrets (values from stdin or --from-file)
//	status      what the agent holds: secrets, versions, kernels (never a value)
//	inject      the kernel launcher wrapper: nbsecrets inject [flags] -- ARGV...
//	kernelspec  install or uninstall the wrapper around a Jupyter kernelspec
//	ui          print a one-time login URL for the dev instance's web UI
//	hub-service run the secrets service as a JupyterHub-managed service
//	            (deploy/jupyterhub/nbsecrets_config.py); with every user's
//	            server, `agent --exec -- jupyterhub-singleuser` runs its agent
//
// Every command has --help. Commands that talk to a local dev instance find
// it through --state-dir, by default $XDG_STATE_HOME/nbsecrets (else
// ~/.local/state/nbsecrets).
//
// Exit codes: 0 success, 1 failure, 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"syscall"
)

// init keeps main, and so `inject`'s exec of the kernel, on the process's
// main thread. Some of what a process is given belongs to its main thread,
// the parent-death signal (PR_SET_PDEATHSIG) among them; an exec from
// another thread, where the Go scheduler may have moved the main goroutine,
// would start the kernel without it.
func init() { runtime.LockOSThread() }

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

// command is one subcommand. run gets the arguments after the command's name.
type command struct {
	summary string
	run     func(ctx context.Context, env *cliEnv, args []string) error
}

// cliEnv is what a command may touch of the outside world, so tests can run
// commands in-process.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

var commands = map[string]command{
	"dev":        {"run the embedded default instance (NATS, service, workspace agent)", runDev},
	"agent":      {"run a workspace agent", runAgent},
	"serve":      {"run the secrets service against a NATS server", runServe},
	"secret":     {"create, update, delete, list secrets", runSecret},
	"status":     {"show what the agent holds (never a value)", runStatus},
	"inject":     {"kernel launcher wrapper: inject -- ARGV...", runInject},
	"kernelspec": {"install or uninstall the kernelspec wrapper", runKernelspec},
	"ui":         {"print a one-time login URL for the web UI of the dev instance", runUI},

	"nats-config": {"write the nats-server accounts and permissions of a deployment", runNatsConfig},

	"hub-service": {"run the secrets service as a JupyterHub-managed service", runHubService},
}

// errUsage marks a usage error: exit code 2, message already printed.
var errUsage = errors.New("usage")

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	env := &cliEnv{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "nbsecrets: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, env, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, new(exitError)):
		var ee exitError
		errors.As(err, &ee)
		return ee.code
	default:
		fmt.Fprintf(stderr, "nbsecrets %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: nbsecrets <command> [flags] [args]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'nbsecrets <command> --help' for a command's flags.")
}

// newFlags makes a FlagSet that prints its usage to the command's stderr
// and returns errors instead of exiting.
func newFlags(env *cliEnv, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("nbsecrets "+name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: nbsecrets %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, mapping a usage error to errUsage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}
