// Package kerneltest starts real ipykernels for integration tests, the way
// a Jupyter kernel manager does: it writes a connection file (mode 0600,
// HMAC key, free loopback TCP ports) into a runtime directory, runs
// `/usr/bin/python3 -m ipykernel_launcher -f FILE` (optionally behind a
// prefix such as the nbsecrets injector) in its own process group, and
// stops it when the test ends. Options.Argv starts another kernel instead,
// such as Debian's IRkernel (see [IRkernel]).
//
// Tests need Debian's python3-ipykernel and python3-jupyter-client for
// /usr/bin/python3. Without them a test skips, unless the environment sets
// NBSECRETS_REQUIRE_KERNEL=1 (CI does), in which case it fails.
package kerneltest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// PythonPath is the interpreter kernels run with: Debian's, not whichever
// python3 is first on PATH.
const PythonPath = "/usr/bin/python3"

// RequireEnv is the environment variable that turns a missing ipykernel
// from a skip into a failure.
const RequireEnv = "NBSECRETS_REQUIRE_KERNEL"

// StartTimeout bounds a kernel start (to its first kernel_info reply) and a
// client's wait for readiness. A bare start takes about 0.8 s on two cores;
// the race detector and a busy machine make it slower.
var StartTimeout = 60 * time.Second

// StopTimeout bounds a graceful shutdown before the process group is
// killed.
var StopTimeout = 10 * time.Second

const installHint = "apt-get install -y python3-ipykernel python3-jupyter-client"

var (
	pythonOnce sync.Once
	pythonErr  error
)

// Python returns PythonPath if it can import ipykernel. If not, it fails
// the test when NBSECRETS_REQUIRE_KERNEL=1 and skips it otherwise, naming
// the packages to install.
func Python(t testing.TB) string {
	t.Helper()
	pythonOnce.Do(func() {
		out, err := exec.Command(PythonPath, "-c", "import ipykernel, jupyter_client").CombinedOutput()
		if err != nil {
			pythonErr = fmt.Errorf("%s cannot import ipykernel: %w: %s", PythonPath, err, bytes.TrimSpace(out))
		}
	})
	if pythonErr != nil {
		msg := fmt.Sprintf("real-kernel test: %v; install with: %s", pythonErr, installHint)
		if os.Getenv(RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return PythonPath
}

// Options say how to start a kernel. The zero value starts a bare
// ipykernel with its connection file in a fresh temporary directory.
type Options struct {
	// Dir is the runtime directory for kernel-<id>.json; t.TempDir() if
	// empty. It is also the kernel's JUPYTER_RUNTIME_DIR.
	Dir string
	// Prefix is put before the kernel's argv, e.g. an injector and "--":
	// Prefix + [python, -m, ipykernel_launcher, -f, FILE]. Empty: none.
	Prefix []string
	// Env is added to the test's environment (after it, so it wins).
	// The kernel also gets JUPYTER_RUNTIME_DIR, a private IPYTHONDIR and
	// PYDEVD_DISABLE_FILE_VALIDATION=1 unless Env sets them.
	Env []string
	// NoWait makes Start return as soon as the process has started,
	// without waiting for the kernel to answer (and so without retrying
	// when a port was taken). For tests of a prefix that may fail.
	NoWait bool
	// Argv, when set, is the kernel's argv for a connection file (after
	// Prefix), as a kernelspec's argv with {connection_file} filled in;
	// see [IRkernel]. Nil: [python, -m, ipykernel_launcher, -f, FILE],
	// which needs Debian's ipykernel (see [Python]).
	Argv func(connFile string) []string
	// KernelName is written in the connection file. Empty: "python3".
	KernelName string
}

// Kernel is a running kernel owned by one test.
type Kernel struct {
	ID       string                  // the kernel id, as in kernel-<id>.json
	ConnFile string                  // path of the connection file
	Info     *jupyter.ConnectionInfo // its content

	t      testing.TB
	argv   []string
	env    []string
	output syncBuffer

	mu   sync.Mutex
	proc *proc
}

type proc struct {
	mark   int // length of the kernel's output before this process started
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been waited for
	err    error         // Wait's result; read after exited
}

// Start starts a kernel and, unless opts.NoWait, waits until it answers
// kernel_info. If the kernel dies because a chosen port was taken in the
// meantime, it picks new ports and tries again. The kernel is killed when
// the test ends; its output is logged if the test failed.
func Start(t testing.TB, opts Options) *Kernel {
	t.Helper()
	argv := opts.Argv
	if argv == nil {
		python := Python(t)
		argv = func(f string) []string { return []string{python, "-m", "ipykernel_launcher", "-f", f} }
	}
	dir := opts.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	k := &Kernel{ID: newUUID(), t: t}
	k.ConnFile = filepath.Join(dir, "kernel-"+k.ID+".json")
	k.argv = append(append([]string{}, opts.Prefix...), argv(k.ConnFile)...)
	k.env = append(os.Environ(),
		"JUPYTER_RUNTIME_DIR="+dir,
		"IPYTHONDIR="+t.TempDir(),
		"PYDEVD_DISABLE_FILE_VALIDATION=1",
	)
	k.env = append(k.env, opts.Env...)
	k.Info = &jupyter.ConnectionInfo{
		Transport:       "tcp",
		IP:              "127.0.0.1",
		Key:             newUUID(),
		SignatureScheme: "hmac-sha256",
		KernelName:      "python3",
	}
	if opts.KernelName != "" {
		k.Info.KernelName = opts.KernelName
	}
	t.Cleanup(func() {
		k.Kill()
		if t.Failed() {
			t.Logf("kernel %s output:\n%s", k.ID, k.Output())
		}
	})

	k.launch(t, nil, !opts.NoWait, "starting kernel")
	return k
}

// launch picks free ports (none of avoid), writes the connection file and
// starts the kernel; with wait, it waits until the kernel answers and tries
// new ports when one was taken meanwhile.
func (k *Kernel) launch(t testing.TB, avoid map[int]bool, wait bool, what string) {
	t.Helper()
	const attempts = 5
	for i := 1; ; i++ {
		if err := pickPorts(k.Info, avoid); err != nil {
			t.Fatalf("kerneltest: %v", err)
		}
		if err := k.Info.WriteFile(k.ConnFile); err != nil {
			t.Fatalf("kerneltest: %v", err)
		}
		if err := k.spawn(); err != nil {
			t.Fatalf("kerneltest: %v", err)
		}
		if !wait {
			return
		}
		err := k.waitReady()
		if err == nil {
			return
		}
		k.Kill()
		if !errors.Is(err, errPortTaken) || i == attempts {
			t.Fatalf("kerneltest: %s: %v\noutput:\n%s", what, err, k.Output())
		}
	}
}

// Client dials the kernel and waits until it answers kernel_info and its
// iopub subscription is live. The client is closed when the test ends.
func (k *Kernel) Client(t testing.TB) *jupyter.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	c, err := jupyter.Dial(ctx, k.Info)
	if err != nil {
		t.Fatalf("kerneltest: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Ready(ctx); err != nil {
		t.Fatalf("kerneltest: %v", err)
	}
	return c
}

// PID returns the process id (and process group id) of the kernel process
// now running, or of the last one.
func (k *Kernel) PID() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc == nil {
		return 0
	}
	return k.proc.cmd.Process.Pid
}

// Exited is closed when the current kernel process has exited.
func (k *Kernel) Exited() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.proc.exited
}

// ExitErr returns the current process's exit error (as from exec.Cmd.Wait)
// once it has exited, and nil before.
func (k *Kernel) ExitErr() error {
	p := k.current()
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return p.err
	default:
		return nil
	}
}

// Output returns everything the kernel processes have written to stdout
// and stderr so far.
func (k *Kernel) Output() string { return k.output.String() }

// Signal sends sig to the kernel's process group (e.g. SIGSTOP, SIGCONT).
// It does nothing once the process has exited.
func (k *Kernel) Signal(sig syscall.Signal) error {
	p := k.current()
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kerneltest: signalling kernel: %w", err)
	}
	return nil
}

// Kill sends SIGKILL to the kernel's process group and waits until the
// process has exited.
func (k *Kernel) Kill() {
	p := k.current()
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT) // a stopped group must run to die promptly
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// Restart stops the kernel as Jupyter Server's restart does (a
// shutdown_request with restart true on control, then SIGKILL if it has
// not exited within StopTimeout) and starts it again with the same
// connection file, ports and argv (so a prefix runs again). It waits until
// the new kernel answers kernel_info. Clients of the old process are not
// reconnected: dial again.
func (k *Kernel) Restart(t testing.TB) {
	t.Helper()
	k.shutdown()
	deadline := time.Now().Add(StartTimeout)
	for {
		if err := k.spawn(); err != nil {
			t.Fatalf("kerneltest: %v", err)
		}
		err := k.waitReady()
		if err == nil {
			return
		}
		k.Kill()
		// The old process's ports may not be free the instant it is gone.
		if !errors.Is(err, errPortTaken) || time.Now().After(deadline) {
			t.Fatalf("kerneltest: restarting kernel: %v\noutput:\n%s", err, k.Output())
		}
	}
}

// NewPorts says how [Kernel.RestartNewPorts] writes the connection file
// again. The zero value rewrites it in place with the same key.
type NewPorts struct {
	// Key gives the new kernel a new HMAC key too. jupyter_client keeps
	// the key across a restart.
	Key bool
	// Remove removes the connection file and then writes it anew, as
	// jupyter_client does (cleanup_random_ports, then
	// write_connection_file). False: it is rewritten in place.
	Remove bool
}

// RestartNewPorts starts the kernel again on new ports, as a kernel manager
// does when it restarts a kernel that died soon after its start
// (jupyter_client's restart_kernel with newports=True): it kills the
// process if it still runs and waits until it is gone, picks five free
// ports none of which the old process had, writes the connection file again
// at the same path (same kernel id; see opts), and starts the same argv on
// it. It waits until the new kernel answers kernel_info. k.Info then points
// to a new ConnectionInfo; one read before still describes the old
// connection. Clients of the old process are not reconnected: dial again.
func (k *Kernel) RestartNewPorts(t testing.TB, opts NewPorts) {
	t.Helper()
	k.Kill()
	old := *k.Info
	avoid := map[int]bool{old.ShellPort: true, old.IOPubPort: true, old.StdinPort: true, old.ControlPort: true, old.HBPort: true}
	info := old
	if opts.Key {
		info.Key = newUUID()
	}
	k.Info = &info
	if opts.Remove {
		if err := os.Remove(k.ConnFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("kerneltest: %v", err)
		}
	}
	k.launch(t, avoid, true, "restarting kernel on new ports")
}

func (k *Kernel) current() *proc {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.proc
}

// shutdown asks the kernel to exit and kills it if it does not.
func (k *Kernel) shutdown() {
	p := k.current()
	select {
	case <-p.exited:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
	defer cancel()
	go func() { // ends the dial and request below if the process dies first
		select {
		case <-p.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if c, err := jupyter.Dial(ctx, k.Info); err == nil {
		_, _ = c.Request(ctx, jupyter.Control, "shutdown_request", map[string]bool{"restart": true}, nil)
		c.Close()
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		k.Kill()
	}
}

func (k *Kernel) spawn() error {
	cmd := exec.Command(k.argv[0], k.argv[1:]...)
	cmd.Env = k.env
	cmd.Stdout = &k.output
	cmd.Stderr = &k.output
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second // a grandchild holding the output pipe must not hold up Wait
	mark := k.output.Len()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", strings.Join(k.argv, " "), err)
	}
	p := &proc{mark: mark, cmd: cmd, exited: make(chan struct{})}
	go func() { // ends when the process exits; Kill and cleanup make sure it does
		p.err = cmd.Wait()
		close(p.exited)
	}()
	k.mu.Lock()
	k.proc = p
	k.mu.Unlock()
	return nil
}

var errPortTaken = errors.New("a port was taken")

// waitReady waits until the current process answers kernel_info, or exits.
func (k *Kernel) waitReady() error {
	p := k.current()
	mark := p.mark
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	portTaken := func() bool { return strings.Contains(k.output.String()[mark:], "Address already in use") }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // cancels the wait when the process dies or cannot bind
		defer wg.Done()
		// ipykernel does not always exit when a bind fails: a thread it
		// started keeps the process alive after the traceback. Its output
		// says so.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.exited:
				cancel()
				return
			case <-tick.C:
				if portTaken() {
					cancel()
					return
				}
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// A connection lost before the kernel answers means one of its ports
	// may be another process's, taken between pickPorts and the kernel's
	// bind (the kernel then exits with "Address already in use", perhaps
	// a moment later), or the kernel is not listening yet: try again until
	// it answers, exits or the deadline passes.
	err := func() error {
		for {
			c, err := jupyter.Dial(ctx, k.Info)
			if err == nil {
				err = c.Ready(ctx)
				c.Close()
				if err == nil {
					return nil
				}
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	if err == nil {
		return nil
	}
	if portTaken() {
		return fmt.Errorf("%w: the kernel could not bind it", errPortTaken)
	}
	select {
	case <-p.exited:
		return fmt.Errorf("kernel exited before answering (%v)", p.err)
	default:
		return err
	}
}

// pickPorts chooses five distinct free loopback ports for info, none of
// them in avoid. Another process can take one before the kernel binds it;
// Start then tries again.
func pickPorts(info *jupyter.ConnectionInfo, avoid map[int]bool) error {
	var ports [5]int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < len(ports); {
		if len(ls) > len(ports)+100 {
			return errors.New("picking a free port: the system keeps giving ports to avoid")
		}
		l, err := net.Listen("tcp", info.IP+":0")
		if err != nil {
			return fmt.Errorf("picking a free port: %w", err)
		}
		ls = append(ls, l) // held until all are picked, so none is given twice
		if p := l.Addr().(*net.TCPAddr).Port; !avoid[p] {
			ports[i] = p
			i++
		}
	}
	info.ShellPort, info.IOPubPort, info.StdinPort, info.ControlPort, info.HBPort =
		ports[0], ports[1], ports[2], ports[3], ports[4]
	return nil
}

func newUUID() string {
	h := jupyter.NewID()
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// syncBuffer is the shared test buffer: safe for concurrent writes.
type syncBuffer = testutil.Buffer
