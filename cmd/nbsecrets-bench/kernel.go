package main

import (
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
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// kernelStartTimeout bounds a kernel start, to its first kernel_info reply.
const kernelStartTimeout = 60 * time.Second

// kernelStopTimeout bounds the wait for a killed kernel to be reaped.
const kernelStopTimeout = 10 * time.Second

// errPortTaken: the kernel could not bind a port of its connection file.
var errPortTaken = errors.New("a kernel port was taken")

// kernel is an ipykernel the bench starts the way a Jupyter kernel manager
// does: a connection file (mode 0600, HMAC key, free loopback ports) in a
// runtime dir, then `python -m ipykernel_launcher -f FILE`, optionally
// behind a prefix (the injector), in a process group of its own so that a
// kill reaches its children and a Ctrl-C on the terminal reaches only the
// bench. Restarts reuse the connection file, as Jupyter Server's do.
type kernel struct {
	ConnFile string
	Info     *jupyter.ConnectionInfo

	argv []string
	env  []string
	out  *tail

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// newKernel writes a connection file with free ports into dir and returns
// the kernel, not started. env is the kernel's whole environment.
func newKernel(dir, python string, prefix, env []string) (*kernel, error) {
	id := newUUID()
	k := &kernel{
		ConnFile: filepath.Join(dir, "kernel-"+id+".json"),
		Info: &jupyter.ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", Key: newUUID(),
			SignatureScheme: "hmac-sha256", KernelName: "python3"},
		env: env,
		out: &tail{max: 16 << 10},
	}
	k.argv = append(append(append([]string{}, prefix...), python, "-m", "ipykernel_launcher", "-f"), k.ConnFile)
	if err := k.newPorts(); err != nil {
		return nil, err
	}
	return k, nil
}

// newPorts picks five free loopback ports and rewrites the connection file.
func (k *kernel) newPorts() error {
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	k.Info.ShellPort, k.Info.IOPubPort, k.Info.StdinPort, k.Info.ControlPort, k.Info.HBPort =
		ports[0], ports[1], ports[2], ports[3], ports[4]
	return k.Info.WriteFile(k.ConnFile)
}

// freePorts picks n distinct loopback ports that are free now (each is
// listened on until all are picked, then released: whoever binds them next
// may still lose one to another process, and must retry).
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("picking a free port: %w", err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// start starts the kernel process with its environment plus extraEnv. It
// does not wait for the kernel to answer.
func (k *kernel) start(extraEnv ...string) error {
	k.out.reset()
	cmd := exec.Command(k.argv[0], k.argv[1:]...)
	cmd.Env = append(append([]string{}, k.env...), extraEnv...)
	cmd.Stdout, cmd.Stderr = k.out, k.out
	// Pdeathsig: should the bench itself be killed, the kernel follows.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second // a grandchild holding the output pipe must not hold up Wait
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", strings.Join(k.argv, " "), err)
	}
	exited := make(chan struct{})
	go func() { // ends when the process exits; kill makes sure it does
		_ = cmd.Wait()
		close(exited)
	}()
	k.mu.Lock()
	k.cmd, k.exited = cmd, exited
	k.mu.Unlock()
	return nil
}

// PID is the kernel process's id (also its process group), 0 before start.
func (k *kernel) PID() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cmd == nil {
		return 0
	}
	return k.cmd.Process.Pid
}

// Exited is closed when the current process has exited.
func (k *kernel) Exited() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.exited
}

// kill sends SIGKILL to the kernel's process group and waits until the
// process has been reaped. It does nothing when no process runs.
func (k *kernel) kill() error {
	k.mu.Lock()
	cmd, exited := k.cmd, k.exited
	k.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-exited:
		return nil
	case <-time.After(kernelStopTimeout):
		return fmt.Errorf("kernel process %d not reaped %v after SIGKILL", cmd.Process.Pid, kernelStopTimeout)
	}
}

// connectTimes are the moments of a connection, for the breakdown.
type connectTimes struct {
	Dialled time.Time // every port accepted a connection
	Ready   time.Time // kernel_info answered and iopub live
}

// connect dials the kernel and waits until it is ready (dialReady). It
// gives up when the process exits, returning errPortTaken when it died of
// a port in use.
func (k *kernel) connect(ctx context.Context) (*jupyter.Client, connectTimes, error) {
	exited := k.Exited()
	c, ct, err := dialReady(ctx, k.Info, exited)
	if err == nil {
		return c, ct, nil
	}
	select {
	case <-exited:
		if strings.Contains(k.out.String(), "Address already in use") {
			return nil, ct, fmt.Errorf("%w: kernel exited", errPortTaken)
		}
		return nil, ct, fmt.Errorf("kernel exited before answering; its output ends:\n%s", k.out.String())
	default:
		return nil, ct, fmt.Errorf("connecting to the kernel: %w", err)
	}
}

// dialReady dials the kernel of info, retrying until its ports accept
// connections, and waits until it answers kernel_info and the iopub
// subscription is live (jupyter.Client.Ready, what jupyter_client's
// wait_for_ready does). It gives up after kernelStartTimeout, when ctx
// ends or when gone (if not nil) is closed: whatever would start the
// kernel has exited.
func dialReady(ctx context.Context, info *jupyter.ConnectionInfo, gone <-chan struct{}) (*jupyter.Client, connectTimes, error) {
	var ct connectTimes
	ctx, cancel := context.WithTimeout(ctx, kernelStartTimeout)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // owned by dialReady: cancels the wait when gone closes
		select {
		case <-gone:
			cancel()
		case <-stop:
		}
	}()
	c, err := jupyter.Dial(ctx, info)
	if err != nil {
		return nil, ct, err
	}
	ct.Dialled = time.Now()
	if err := c.Ready(ctx); err != nil {
		c.Close()
		return nil, ct, err
	}
	ct.Ready = time.Now()
	return c, ct, nil
}

// tail keeps the last max bytes written to it; safe for concurrent writers.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// reset forgets what was written, so that the next String is one run's.
func (t *tail) reset() {
	t.mu.Lock()
	t.buf = t.buf[:0]
	t.mu.Unlock()
}

func newUUID() string {
	h := jupyter.NewID()
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// kernelEnv is the base environment of the bench's kernels: the bench's
// own, without any BENCH_TOKEN, plus the runtime dir and a private
// IPYTHONDIR.
func kernelEnv(runtimeDir, ipythonDir string) []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, secretName+"=") || strings.HasPrefix(e, "JUPYTER_RUNTIME_DIR=") ||
			strings.HasPrefix(e, "IPYTHONDIR=") {
			continue
		}
		env = append(env, e)
	}
	return append(env, "JUPYTER_RUNTIME_DIR="+runtimeDir, "IPYTHONDIR="+ipythonDir, "PYDEVD_DISABLE_FILE_VALIDATION=1")
}
