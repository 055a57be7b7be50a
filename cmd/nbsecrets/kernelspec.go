package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nbsecrets/nbsecrets/injector"
)

const kernelspecUsage = `Usage: nbsecrets kernelspec install [--name KERNEL] [--state-dir DIR] [--socket PATH] [--data-dir DIR]
       nbsecrets kernelspec uninstall [--name KERNEL] [--data-dir DIR]

install wraps the installed kernelspec KERNEL (default python3) so that its
argv runs 'nbsecrets inject --socket SOCKET -- ORIGINAL ARGV...', in
DATA_DIR/kernels/KERNEL (DATA_DIR: $JUPYTER_DATA_DIR, else
~/.local/share/jupyter). Installing again updates the binary and socket in
place. uninstall restores the user's spec it replaced, or removes the wrapper.
Run 'nbsecrets kernelspec install --help' for the flags.
`

// runKernelspec is `nbsecrets kernelspec install|uninstall ...`.
func runKernelspec(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(env.stderr, kernelspecUsage)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(env.stdout, kernelspecUsage)
		return flag.ErrHelp
	case "install":
		return runKernelspecInstall(env, args[1:])
	case "uninstall":
		return runKernelspecUninstall(env, args[1:])
	default:
		fmt.Fprintf(env.stderr, "nbsecrets kernelspec: unknown subcommand %q\n\n%s", args[0], kernelspecUsage)
		return errUsage
	}
}

func runKernelspecInstall(env *cliEnv, args []string) error {
	fs := newFlags(env, "kernelspec install", "[--name KERNEL] [--state-dir DIR] [--socket PATH] [--data-dir DIR]")
	name := fs.String("name", "python3", "the kernelspec to wrap")
	stateDir := stateDirFlag(fs)
	socket := fs.String("socket", "", "the agent's socket the wrapper uses (default $NBSECRETS_SOCKET, else STATE_DIR/"+agentSockName+")")
	dataDir := fs.String("data-dir", "", "Jupyter data dir to install into (default $JUPYTER_DATA_DIR, else ~/.local/share/jupyter)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.stderr, "nbsecrets kernelspec install: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the nbsecrets binary: %w", err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return fmt.Errorf("finding the nbsecrets binary: %w", err)
	}
	sock := injectSocket(*socket, *stateDir)
	dir, err := injector.InstallKernelspec(injector.KernelspecOptions{
		Name:    *name,
		DataDir: *dataDir,
		Binary:  bin,
		Socket:  sock,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "installed kernelspec %s in %s (agent socket %s)\n", *name, dir, sock)
	return nil
}

func runKernelspecUninstall(env *cliEnv, args []string) error {
	fs := newFlags(env, "kernelspec uninstall", "[--name KERNEL] [--data-dir DIR]")
	name := fs.String("name", "python3", "the kernelspec to unwrap")
	dataDir := fs.String("data-dir", "", "Jupyter data dir it was installed into (default $JUPYTER_DATA_DIR, else ~/.local/share/jupyter)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.stderr, "nbsecrets kernelspec uninstall: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	opts := injector.KernelspecOptions{Name: *name, DataDir: *dataDir}
	if err := injector.UninstallKernelspec(opts); err != nil {
		return err
	}
	dd := *dataDir
	if dd == "" {
		dd = injector.DefaultDataDir()
	}
	fmt.Fprintf(env.stdout, "uninstalled kernelspec %s from %s\n", *name, filepath.Join(dd, "kernels"))
	return nil
}
