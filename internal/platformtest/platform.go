// Package platformtest tests nbsecrets against the parts of the platform
// nobody here wrote: Debian's Jupyter Server 1.23 with kernel culling,
// Jupyter Notebook 6 in Debian's chromium, Jupyter's kernel conformance
// suite (python3-jupyter-kernel-test) and ipykernel, all around the real
// binary: `nbsecrets dev` (embedded NATS, the service, the agent) and the
// kernelspec it wraps with `nbsecrets inject`.
//
// The helpers here start each part on loopback with random ports, tokens
// and private Jupyter directories (data, runtime, config, IPython), and
// stop it when the test ends: [Build] the binary, [StartDev] an instance,
// [StartJupyter] a Jupyter Server or a Notebook 6 server whose kernels use
// the instance's wrapped kernelspec. The tests say what the platform sees:
// a kernel's execution_state and last_activity in /api/kernels, whether the
// culler kills it, the kernel indicator in the page.
//
// Without Debian's Jupyter packages the tests skip, or fail when
// NBSECRETS_REQUIRE_KERNEL=1; the browser test follows
// internal/browsertest (NBSECRETS_REQUIRE_BROWSER=1).
package platformtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// Build builds cmd/nbsecrets once per test binary and returns its path;
// [RemoveBuild] (from TestMain) removes it.
func Build(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, self, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(self), "..", "..")
		if buildDir, buildErr = os.MkdirTemp("", "nbsecrets-platformtest-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "nbsecrets")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/nbsecrets")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/nbsecrets: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// RemoveBuild removes what Build built.
func RemoveBuild() {
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}

// RandHex is 16 random hex digits, for test values and tokens.
func RandHex(t testing.TB) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Dirs are the Jupyter directories that an instance and the Jupyter
// processes beside it share.
type Dirs struct {
	Root    string // holds the rest
	Data    string // JUPYTER_DATA_DIR: the wrapped kernelspec
	Runtime string // JUPYTER_RUNTIME_DIR: connection files, watched by the agent
	Config  string // JUPYTER_CONFIG_DIR: empty, so no user configuration applies
	IPython string // IPYTHONDIR of the kernels
	State   string // the instance's state dir
}

// Env is the environment of every process of the test: the test's own,
// with the directories above and JUPYTER_PATH empty.
func (d Dirs) Env() []string {
	return append(os.Environ(), "JUPYTER_DATA_DIR="+d.Data, "JUPYTER_RUNTIME_DIR="+d.Runtime,
		"JUPYTER_CONFIG_DIR="+d.Config, "JUPYTER_PATH=", "IPYTHONDIR="+d.IPython,
		"PYDEVD_DISABLE_FILE_VALIDATION=1")
}

// Dev is a running `nbsecrets dev` with its directories.
type Dev struct {
	Dirs
	Bin string

	t        testing.TB
	mu       sync.Mutex
	proc     *devProc
	previous []string // the output of earlier runs (Restart)
}

type devProc struct {
	cmd      *exec.Cmd
	out, err testutil.Buffer
	done     chan struct{}
}

// StartDev makes fresh directories (mode 0700) and runs `nbsecrets dev`
// in them, which wraps the python3 kernelspec into Dirs.Data; it returns
// once the instance says it is running. It needs Debian's ipykernel (a
// skip or a failure, as kerneltest.Python).
func StartDev(t testing.TB, bin string) *Dev {
	t.Helper()
	kerneltest.Python(t)
	root := t.TempDir()
	d := &Dev{Bin: bin, t: t, Dirs: Dirs{Root: root, Data: filepath.Join(root, "data"), Runtime: filepath.Join(root, "runtime"),
		Config: filepath.Join(root, "config"), IPython: filepath.Join(root, "ipython"), State: filepath.Join(root, "state")}}
	for _, dir := range []string{d.Data, d.Runtime, d.Config, d.IPython, d.State} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	d.start()
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(d.Output()), "\n")
			t.Logf("the end of nbsecrets dev's output:\n%s", strings.Join(lines[max(0, len(lines)-80):], "\n"))
		}
	})
	return d
}

// start runs dev and waits until it is running.
func (d *Dev) start() {
	d.t.Helper()
	p := &devProc{done: make(chan struct{})}
	p.cmd = exec.Command(d.Bin, "dev", "--state-dir", d.State, "--log-level", "debug")
	p.cmd.Env = d.Env()
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.err
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		d.t.Fatalf("starting nbsecrets dev: %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }() // ends when dev exits; Stop makes sure
	d.mu.Lock()
	d.proc = p
	d.mu.Unlock()
	testutil.WaitFor(d.t, 60*time.Second, func() error {
		select {
		case <-p.done:
			d.t.Fatalf("nbsecrets dev exited (%v); stderr:\n%s", p.cmd.ProcessState, p.err.String())
		default:
		}
		if !strings.Contains(p.out.String(), "Ctrl-C stops.") {
			return errors.New("nbsecrets dev has not printed its whole banner yet")
		}
		return nil
	})
}

// Stop stops the instance with SIGTERM (SIGKILL after 20 s); the kernels
// keep running. It does nothing when it is stopped.
func (d *Dev) Stop() {
	d.mu.Lock()
	p := d.proc
	d.mu.Unlock()
	if p == nil {
		return
	}
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			d.t.Errorf("nbsecrets dev did not stop within 20s of SIGTERM; killed")
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	d.mu.Lock()
	d.previous = append(d.previous, p.out.String(), p.err.String())
	d.proc = nil
	d.mu.Unlock()
}

// PID is the running instance's process id (0 when stopped).
func (d *Dev) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil {
		return 0
	}
	return d.proc.cmd.Process.Pid
}

// Socket is the agent's socket, as the instance's dev.json says: what a
// kernelspec's injector is pointed at.
func (d *Dev) Socket(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(d.State, "dev.json"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Socket string `json:"socket"`
	}
	if err := json.Unmarshal(raw, &info); err != nil || info.Socket == "" {
		t.Fatalf("dev.json: %v (socket %q)", err, info.Socket)
	}
	return info.Socket
}

// Restart stops the instance and starts it again on the same state: a new
// agent that finds the running kernels in the runtime dir.
func (d *Dev) Restart() {
	d.t.Helper()
	d.Stop()
	d.start()
}

// Output is everything the instance printed (stdout and stderr, its debug
// log), across restarts.
func (d *Dev) Output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := strings.Join(d.previous, "\n")
	if d.proc != nil {
		s += "\n" + d.proc.out.String() + "\n" + d.proc.err.String()
	}
	return s
}

// Run runs `nbsecrets ARGS... --state-dir STATE` (the flag after the
// subcommand words) with stdin and returns its stdout.
func (d *Dev) Run(stdin string, args ...string) (string, error) {
	cmd := exec.Command(d.Bin, append(args, "--state-dir", d.State)...)
	cmd.Env = d.Env()
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("nbsecrets %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.String(), nil
}

// Set updates the secret name to value, or creates it when the update
// fails (it does not exist yet).
func (d *Dev) Set(t testing.TB, name, value string) {
	t.Helper()
	if _, err := d.Run(value, "secret", "update", name); err == nil {
		return
	}
	if _, err := d.Run(value, "secret", "create", name); err != nil {
		t.Fatal(err)
	}
}

// Status is what `nbsecrets status --json` says, the parts the tests read.
type Status struct {
	Secrets []struct {
		Name    string `json:"name"`
		Version uint64 `json:"version"`
	} `json:"secrets"`
	Kernels []KernelStatus `json:"kernels"`
}

// KernelStatus is one kernel of Status.
type KernelStatus struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Holds map[string]struct {
		Version uint64 `json:"version"`
	} `json:"holds"`
	Reseeds   uint64 `json:"reseeds"`
	LastError string `json:"last_error"`
	Busy      bool   `json:"busy"`
	Mode      string `json:"mode"`
}

// Status runs `nbsecrets status --json`.
func (d *Dev) Status(t testing.TB) Status {
	t.Helper()
	out, err := d.Run("", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	return st
}

// Version is the version the agent holds of secret name, or 0.
func (s Status) Version(name string) uint64 {
	for _, sec := range s.Secrets {
		if sec.Name == name {
			return sec.Version
		}
	}
	return 0
}

// Kernel is the kernel id's status, or false when the agent does not
// serve it.
func (s Status) Kernel(id string) (KernelStatus, bool) {
	for _, k := range s.Kernels {
		if k.ID == id {
			return k, true
		}
	}
	return KernelStatus{}, false
}

// WaitHeld waits until the agent says it serves kernel id live with the
// version of name that it holds itself (not 0) and returns that version.
func (d *Dev) WaitHeld(t testing.TB, id, name string, timeout time.Duration) uint64 {
	t.Helper()
	return d.waitHeld(t, id, name, "", timeout)
}

// WaitQuiet is WaitHeld that also waits until the kernel is served over
// the quiet channel (mode live:quiet): the end of the agent's first
// contact, which on a loaded machine can begin with a re-seed over
// control and install the channel later.
func (d *Dev) WaitQuiet(t testing.TB, id, name string, timeout time.Duration) uint64 {
	t.Helper()
	return d.waitHeld(t, id, name, "quiet", timeout)
}

func (d *Dev) waitHeld(t testing.TB, id, name, mode string, timeout time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := d.Status(t)
		want := st.Version(name)
		k, ok := st.Kernel(id)
		if ok && want != 0 && k.State == "live" && k.Holds[name].Version == want && strings.Contains(k.Mode, mode) {
			return want
		}
		if time.Now().After(deadline) {
			if !ok {
				t.Fatalf("after %v: the agent does not serve kernel %s: %+v", timeout, id, st.Kernels)
			}
			t.Fatalf("after %v: kernel %s: state %q, mode %q, holds %s version %d, the agent has %d; last error %q",
				timeout, id, k.State, k.Mode, name, k.Holds[name].Version, want, k.LastError)
		}
		// Each poll runs `nbsecrets status`: a process, so not too often.
		time.Sleep(50 * time.Millisecond)
	}
}

// Jupyter is a running Jupyter Server (`python3 -m jupyter_server`) or
// Notebook 6 server (`python3 -m notebook`).
type Jupyter struct {
	URL   string // base URL, ending in "/"
	Token string
	Root  string // the directory it serves (notebooks)

	t      testing.TB
	cmd    *exec.Cmd
	out    testutil.Buffer
	exited chan struct{}
	client *http.Client
}

// JupyterApp says which server to start.
type JupyterApp struct {
	Module string   // python3 -m MODULE: "jupyter_server" or "notebook"
	Class  string   // the config class of its ip/port options: "ServerApp" or "NotebookApp"
	Args   []string // more arguments (culling settings)
}

// Server is Debian's jupyter-server 1.23; Notebook is Debian's
// jupyter-notebook 6.4.
var (
	Server   = JupyterApp{Module: "jupyter_server", Class: "ServerApp"}
	Notebook = JupyterApp{Module: "notebook", Class: "NotebookApp"}
)

var (
	importMu   sync.Mutex
	importErrs = map[string]error{}
)

// requireModule skips (or fails, with NBSECRETS_REQUIRE_KERNEL=1) when
// python3 cannot import module; pkg is the Debian package to install.
func requireModule(t testing.TB, module, pkg string) {
	t.Helper()
	kerneltest.Python(t)
	importMu.Lock()
	err, ok := importErrs[module]
	if !ok {
		out, e := exec.Command(kerneltest.PythonPath, "-c", "import "+module).CombinedOutput()
		if e != nil {
			err = fmt.Errorf("%s cannot import %s: %w: %s", kerneltest.PythonPath, module, e, bytes.TrimSpace(out))
		}
		importErrs[module] = err
	}
	importMu.Unlock()
	if err != nil {
		msg := fmt.Sprintf("platform test: %v; install with: apt-get install -y %s", err, pkg)
		if os.Getenv(kerneltest.RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartJupyter starts app on a free loopback port with a fresh token, in
// the instance's directories (so its python3 kernelspec is the wrapped
// one and its kernels' connection files are where the agent looks),
// serving a fresh root dir. It returns once /api/status answers; the test's
// end deletes its kernels and stops it.
func StartJupyter(t testing.TB, d *Dev, app JupyterApp) *Jupyter {
	t.Helper()
	pkg := map[string]string{"jupyter_server": "python3-jupyter-server", "notebook": "jupyter-notebook"}[app.Module]
	requireModule(t, app.Module, pkg)
	root := filepath.Join(t.TempDir(), "notebooks")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	token := RandHex(t) + RandHex(t)
	for attempt := 1; ; attempt++ {
		port := strconv.Itoa(freePort(t))
		j := &Jupyter{URL: "http://127.0.0.1:" + port + "/", Token: token, Root: root, t: t,
			exited: make(chan struct{}), client: &http.Client{Transport: &http.Transport{}}}
		rootFlag := "--NotebookApp.notebook_dir=" + root
		if app.Class == "ServerApp" {
			rootFlag = "--ServerApp.root_dir=" + root
		}
		args := append([]string{"-m", app.Module, "--no-browser", "--allow-root",
			"--" + app.Class + ".ip=127.0.0.1", "--" + app.Class + ".port=" + port, "--" + app.Class + ".port_retries=0",
			"--" + app.Class + ".token=" + token, rootFlag}, app.Args...)
		j.cmd = exec.Command(kerneltest.PythonPath, args...)
		j.cmd.Env = d.Env()
		j.cmd.Stdout, j.cmd.Stderr = &j.out, &j.out
		j.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := j.cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", app.Module, err)
		}
		go func() { _ = j.cmd.Wait(); close(j.exited) }() // ends when it exits; stop makes sure
		err := j.waitReady()
		if err == nil {
			t.Cleanup(j.stop)
			return j
		}
		j.stop()
		if attempt == 3 {
			t.Fatalf("%s did not start: %v\n%s", app.Module, err, j.Log())
		}
	}
}

// Log is the server's output, its token redacted.
func (j *Jupyter) Log() string { return strings.ReplaceAll(j.out.String(), j.Token, "<token>") }

func (j *Jupyter) waitReady() error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-j.exited:
			return errors.New("it exited")
		default:
		}
		err := j.Do(http.MethodGet, "api/status", nil, nil)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond) // the poll interval
	}
}

// Do calls the REST API with the token; body, if not nil, is sent as JSON;
// out, if not nil, receives the JSON answer.
func (j *Jupyter) Do(method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, j.URL+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "token "+j.Token)
	resp, err := j.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s /%s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// APIKernel is one kernel of GET /api/kernels.
type APIKernel struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	LastActivity   time.Time `json:"last_activity"`
	ExecutionState string    `json:"execution_state"`
	Connections    int       `json:"connections"`
}

// Kernels lists the server's kernels.
func (j *Jupyter) Kernels() ([]APIKernel, error) {
	var ks []APIKernel
	err := j.Do(http.MethodGet, "api/kernels", nil, &ks)
	return ks, err
}

// StartKernel starts a python3 kernel (the wrapped kernelspec) and
// returns its id.
func (j *Jupyter) StartKernel(t testing.TB) string {
	t.Helper()
	var k APIKernel
	if err := j.Do(http.MethodPost, "api/kernels", map[string]string{"name": "python3"}, &k); err != nil {
		t.Fatalf("starting a kernel: %v", err)
	}
	if k.ID == "" {
		t.Fatal("starting a kernel: no id in the answer")
	}
	return k.ID
}

// stop deletes the kernels, then stops the server (SIGTERM to its process
// group, SIGKILL after 15 s). Its output is logged when the test failed.
func (j *Jupyter) stop() {
	select {
	case <-j.exited:
	default:
		if ks, err := j.Kernels(); err == nil {
			for _, k := range ks {
				_ = j.Do(http.MethodDelete, "api/kernels/"+k.ID, nil, nil)
			}
		}
		_ = syscall.Kill(-j.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-j.exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-j.cmd.Process.Pid, syscall.SIGKILL)
			<-j.exited
		}
	}
	j.client.CloseIdleConnections()
	if j.t.Failed() {
		j.t.Logf("%s output:\n%s", filepath.Base(j.cmd.Args[2]), j.Log())
	}
}

// Culled reports whether the server's log says it culled kernel id.
func (j *Jupyter) Culled(id string) bool {
	for _, l := range strings.Split(j.out.String(), "\n") {
		if strings.Contains(l, "Culling '") && strings.Contains(l, id) {
			return true
		}
	}
	return false
}

// ConnectionFile is the path of kernel id's connection file.
func (d *Dev) ConnectionFile(id string) string {
	return filepath.Join(d.Runtime, "kernel-"+id+".json")
}
