package injector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// DefaultTimeout is how long Prepare waits for the agent when
// Options.Timeout is zero.
const DefaultTimeout = 2 * time.Second

// ErrNoArgv is returned when there is no kernel command to start.
var ErrNoArgv = errors.New("injector: no kernel command (ARGV after --)")

// Options say how to start one kernel.
type Options struct {
	// Socket is the agent's unix socket. Empty: the kernel starts without
	// secrets (and the stderr line says there is no agent to ask).
	Socket string
	// Timeout bounds the whole conversation with the agent (the environment
	// and the announcement). Zero means DefaultTimeout (2s).
	Timeout time.Duration
	// Argv is the kernel's command line; Argv[0] is looked up in the PATH of
	// Environ when it has no slash.
	Argv []string
	// Environ is the environment to start from, "NAME=value" entries. Nil
	// means os.Environ().
	Environ []string
	// Stderr receives the warnings (names at most, never a value). Nil means
	// os.Stderr.
	Stderr io.Writer
}

// Prepare computes how to start the kernel without starting it: the
// resolved program path, the argv (Argv unchanged, so the kernel sees the
// argv[0] it was given) and the environment. It asks the agent for the
// environment within opts.Timeout and announces the kernel (with this
// process's PID, which the kernel keeps after Exec).
//
// An unreachable or failing agent is not an error: the environment then has
// no secrets and one line on opts.Stderr says so. Errors are ErrNoArgv, a
// kernel program that cannot be found, and ctx ending (a kernel manager
// stopping the start).
func Prepare(ctx context.Context, opts Options) (argv0 string, argv []string, env []string, err error) {
	if len(opts.Argv) == 0 || opts.Argv[0] == "" {
		return "", nil, nil, ErrNoArgv
	}
	environ := opts.Environ
	if environ == nil {
		environ = os.Environ()
	}
	stderr := opts.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	argv0, err = lookPath(opts.Argv[0], getenv(environ, "PATH"))
	if err != nil {
		return "", nil, nil, fmt.Errorf("kernel program %q: %w", opts.Argv[0], err)
	}
	argv = slices.Clone(opts.Argv)

	connFile := ConnectionFile(argv)
	if connFile != "" {
		if abs, err := filepath.Abs(connFile); err == nil {
			connFile = abs
		}
	}

	if opts.Socket == "" {
		fmt.Fprintf(stderr, "nbsecrets inject: no agent socket given; starting the kernel without secrets\n")
		env, _ = computeEnv(environ, nil, stderr)
		return argv0, argv, env, nil
	}

	c := newClient(opts.Socket)
	defer c.close()
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, answered, err := c.env(actx, connFile)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return "", nil, nil, fmt.Errorf("asking the agent: %w", ctxErr)
	}
	var agentEnv map[string]string
	if err == nil {
		agentEnv = resp.Env
	} else {
		what := "not reachable"
		if answered {
			what = "answered an error"
		}
		fmt.Fprintf(stderr, "nbsecrets inject: agent at %s %s: %s; starting the kernel without secrets; the agent will re-seed it when it sees it\n",
			opts.Socket, what, describe(err, timeout))
	}
	env, applied := computeEnv(environ, agentEnv, stderr)

	switch {
	case !answered:
	case connFile == "":
		fmt.Fprintf(stderr, "nbsecrets inject: no connection file (-f FILE) in the kernel's argv; the agent cannot watch this kernel\n")
	default:
		var versions map[string]uint64
		if resp != nil {
			versions = appliedVersions(applied, resp.Versions)
		}
		ann := localapi.Announcement{ConnectionFile: connFile, PID: os.Getpid(), Versions: versions}
		if err := c.announce(actx, ann); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return "", nil, nil, fmt.Errorf("announcing the kernel: %w", ctxErr)
			}
			fmt.Fprintf(stderr, "nbsecrets inject: announcing the kernel to the agent at %s: %s; the agent will find it in the runtime directory\n",
				opts.Socket, describe(err, timeout))
		}
	}
	return argv0, argv, env, nil
}

// Exec prepares the kernel's start (see Prepare) and replaces the process
// with the kernel, so the kernel keeps this process's PID, process group and
// signals. What belongs to the main thread, such as the parent-death signal,
// carries over only if Exec runs there: call it from main with main locked
// to its thread (runtime.LockOSThread in an init function, as cmd/nbsecrets
// does). When the system refuses the environment as too large (E2BIG: the
// secrets pass ARG_MAX), it starts the kernel without secrets and says so
// on opts.Stderr. It returns only on error.
func Exec(ctx context.Context, opts Options) error {
	argv0, argv, env, err := Prepare(ctx, opts)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil { // stopped while preparing: do not start
		return fmt.Errorf("starting the kernel: %w", err)
	}
	err = unix.Exec(argv0, argv, env)
	if errors.Is(err, unix.E2BIG) {
		// The secrets take the environment past ARG_MAX: a kernel that
		// does not start at all is worse than one without secrets.
		stderr := opts.Stderr
		if stderr == nil {
			stderr = os.Stderr
		}
		bare, _ := computeEnv(env, nil, io.Discard)
		fmt.Fprintf(stderr, "nbsecrets inject: the kernel's environment with its %d secrets is too large to start a program (argument list too long); starting the kernel without secrets; ask for fewer or smaller secrets in this workspace\n",
			len(strings.Split(getenv(env, localapi.ManagedVar), ",")))
		err = unix.Exec(argv0, argv, bare)
	}
	if err != nil {
		return fmt.Errorf("starting the kernel %s: %w", argv0, err)
	}
	return nil
}

// ConnectionFile returns the connection file named in a kernel's argv, as
// Jupyter substitutes {connection_file}: "-f FILE", "-f=FILE", "--f FILE" or
// "--f=FILE" (ipykernel, bash_kernel, most kernels), else the first argument
// that looks like a connection file Jupyter made, a base name
// "kernel-*.json" (IRkernel takes it as a bare argument). Argv[0] is not
// looked at. It returns "" when there is none.
func ConnectionFile(argv []string) string {
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		switch {
		case a == "-f" || a == "--f":
			if i+1 < len(argv) {
				return argv[i+1]
			}
			return ""
		case strings.HasPrefix(a, "-f="):
			return a[len("-f="):]
		case strings.HasPrefix(a, "--f="):
			return a[len("--f="):]
		}
	}
	for _, a := range argv[min(1, len(argv)):] {
		if b := filepath.Base(a); strings.HasPrefix(b, "kernel-") && strings.HasSuffix(b, ".json") && !strings.HasPrefix(a, "-") {
			return a
		}
	}
	return ""
}

// lookPath resolves a kernel program the way a shell would, with the PATH
// the kernel is given (path) rather than this process's. Like os/exec, it
// does not use relative PATH entries ("" or "."), and a name with a slash is
// used as it is, made absolute.
func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			var eerr *exec.Error
			if errors.As(err, &eerr) {
				err = eerr.Err // it repeats the name
			}
			return "", err
		}
		return filepath.Abs(p)
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in PATH %q: %w", path, exec.ErrNotFound)
}

// getenv returns the value of the last NAME= entry of environ, as the C
// library's getenv sees it after Go's dedup (Go keeps the last).
func getenv(environ []string, name string) string {
	for i := len(environ) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(environ[i], name+"="); ok {
			return v
		}
	}
	return ""
}

// computeEnv returns the kernel's environment: environ without the names an
// inherited NBSECRETS_MANAGED lists, then agentEnv's valid names and a fresh
// NBSECRETS_MANAGED listing them. It reports names it ignores on stderr and
// returns the names it set.
func computeEnv(environ []string, agentEnv map[string]string, stderr io.Writer) (env []string, applied []string) {
	set := make(map[string]string, len(agentEnv))
	for name, value := range agentEnv {
		if name == localapi.ManagedVar {
			continue // recomputed from what is actually set
		}
		if err := protocol.ValidateName(name); err != nil {
			fmt.Fprintf(stderr, "nbsecrets inject: ignoring a variable from the agent: %v\n", err)
			continue
		}
		if strings.IndexByte(value, 0) >= 0 {
			fmt.Fprintf(stderr, "nbsecrets inject: ignoring %s from the agent: its value contains a NUL byte\n", name)
			continue
		}
		set[name] = value
		applied = append(applied, name)
	}
	slices.Sort(applied)

	drop := map[string]bool{localapi.ManagedVar: true}
	for _, name := range applied {
		drop[name] = true
	}
	for _, name := range strings.Split(getenv(environ, localapi.ManagedVar), ",") {
		name = strings.TrimSpace(name)
		if protocol.ValidateName(name) == nil {
			drop[name] = true
		}
	}

	env = make([]string, 0, len(environ)+len(applied)+1)
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !drop[name] {
			env = append(env, kv)
		}
	}
	for _, name := range applied {
		env = append(env, name+"="+set[name])
	}
	if len(applied) > 0 {
		env = append(env, localapi.ManagedVar+"="+strings.Join(applied, ","))
	}
	return env, applied
}

// describe says what went wrong talking to the agent, in words for the
// stderr line.
func describe(err error, timeout time.Duration) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %s", timeout)
	}
	return err.Error()
}

// appliedVersions returns the versions of the names that were set.
func appliedVersions(applied []string, versions map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(applied))
	for _, name := range applied {
		if v, ok := versions[name]; ok {
			out[name] = v
		}
	}
	return out
}
