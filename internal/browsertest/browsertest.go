// Package browsertest runs a real browser in tests: Debian's chromium
// (/usr/bin/chromium), headless, driven by playwright-core from the npm
// registry through a small JS driver script that a test keeps in the repo.
//
// The node project is this directory: package.json pins playwright-core,
// package-lock.json is committed, node_modules is not. [Require] finds node
// and chromium and runs `npm ci` here when node_modules is missing or holds
// another version (under a file lock, so that test binaries running at the
// same time install once). Without node, npm, chromium, or when the
// install fails, a test skips with a message naming what to install, unless
// NBSECRETS_REQUIRE_BROWSER=1 (CI sets it), in which case it fails.
//
// A driver is a CommonJS script that requires "browsertest" (browsertest.js
// beside this file; NODE_PATH points here) and calls its main with an async
// function of a page and the test's arguments; see browsertest.js. The Go
// side:
//
//	b := browsertest.Require(t)
//	d := b.Start(t, browsertest.Options{Script: "testdata/driver.js", Args: map[string]any{"url": u}})
//	d.WaitEvent(t, "cell-started", time.Minute) // the driver's bt.event('cell-started')
//	d.Send(t, map[string]any{"go": true})        // the driver's await bt.receive()
//	res := d.Wait(t)                             // the function's return value, as JSON
//
// Chromium runs with --no-sandbox when the driver runs as root (it refuses
// to start otherwise). Screenshots a driver takes (its screenshot(name))
// go to a temporary directory of the test, or to Options.ScreenshotDir when
// a test asks for them to be kept (documentation figures); a driver that
// fails takes failure.png there.
package browsertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ChromiumPath is the browser the drivers launch: Debian's chromium, never
// a browser build that playwright would download.
const ChromiumPath = "/usr/bin/chromium"

// RequireEnv is the environment variable that turns a missing browser,
// node or npm dependency from a skip into a failure.
const RequireEnv = "NBSECRETS_REQUIRE_BROWSER"

// DefaultTimeout bounds a driver's run when Options.Timeout is zero.
const DefaultTimeout = 3 * time.Minute

// installTimeout bounds `npm ci`.
const installTimeout = 5 * time.Minute

// installHint names the Debian packages the harness needs.
const installHint = "apt-get install -y chromium nodejs npm"

// The markers of the driver's stdout lines that carry its result and its
// events (browsertest.js).
const (
	resultMark = "NBSECRETS_BROWSERTEST_RESULT "
	eventMark  = "NBSECRETS_BROWSERTEST_EVENT "
)

// Browser is what a driver needs: node, chromium and this directory with
// its node_modules installed.
type Browser struct {
	Node     string // the node binary
	Chromium string // the browser the driver launches
	Dir      string // the node project: this package's directory
}

var (
	setupOnce sync.Once
	setupB    *Browser
	setupErr  error
)

// Require returns the browser harness, installing the npm dependencies if
// they are missing. When something is missing it skips the test with what
// to install, or fails it when NBSECRETS_REQUIRE_BROWSER=1.
func Require(t testing.TB) *Browser {
	t.Helper()
	setupOnce.Do(func() { setupB, setupErr = setup() })
	if setupErr != nil {
		msg := fmt.Sprintf("browser test: %v", setupErr)
		if os.Getenv(RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg + " (set " + RequireEnv + "=1 to fail instead)")
	}
	return setupB
}

// setup finds node, npm and chromium and installs node_modules.
func setup() (*Browser, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return nil, errors.New("cannot find the browsertest package's directory")
	}
	b := &Browser{Dir: filepath.Dir(self), Chromium: ChromiumPath}
	if fi, err := os.Stat(b.Chromium); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("no chromium at %s; install with: %s", b.Chromium, installHint)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("no node on PATH; install with: %s", installHint)
	}
	b.Node = node
	if err := install(b.Dir); err != nil {
		return nil, err
	}
	return b, nil
}

// install runs `npm ci` in dir unless node_modules already holds the
// playwright-core version that package-lock.json pins. A lock file in dir
// (flock) makes concurrent test binaries wait for one install.
func install(dir string) error {
	want, err := pinnedVersion(dir)
	if err != nil {
		return err
	}
	if installedVersion(dir) == want {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("node_modules of %s is missing playwright-core %s and there is no npm on PATH; install with: %s", dir, want, installHint)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".install.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("opening the install lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking the install lock: %w", err)
	}
	defer func() { _ = unix.Flock(int(lock.Fd()), unix.LOCK_UN) }()
	if installedVersion(dir) == want { // another test binary installed it meanwhile
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("installing playwright-core %s (npm ci in %s): %w: %s", want, dir, err, bytes.TrimSpace(out))
	}
	if got := installedVersion(dir); got != want {
		return fmt.Errorf("npm ci in %s installed playwright-core %q, want %s", dir, got, want)
	}
	return nil
}

// pinnedVersion is the playwright-core version package-lock.json pins.
func pinnedVersion(dir string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return "", fmt.Errorf("reading the browser harness's lock file: %w", err)
	}
	var lock struct {
		Packages map[string]struct {
			Version string `json:"version"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(raw, &lock); err != nil {
		return "", fmt.Errorf("parsing %s: %w", filepath.Join(dir, "package-lock.json"), err)
	}
	v := lock.Packages["node_modules/playwright-core"].Version
	if v == "" {
		return "", fmt.Errorf("%s pins no playwright-core", filepath.Join(dir, "package-lock.json"))
	}
	return v, nil
}

// installedVersion is the version of node_modules/playwright-core, or "".
func installedVersion(dir string) string {
	raw, err := os.ReadFile(filepath.Join(dir, "node_modules", "playwright-core", "package.json"))
	if err != nil {
		return ""
	}
	var p struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return ""
	}
	return p.Version
}

// Options say which driver to run and with what.
type Options struct {
	// Script is the driver's path, absolute or relative to the test's
	// working directory (its package directory). Required.
	Script string
	// Args is marshalled to JSON and handed to the driver's function as
	// args. Nil: null.
	Args any
	// Env is added to the driver's environment (after the test's).
	Env []string
	// Timeout bounds the whole run; the driver is killed after it. Zero:
	// DefaultTimeout.
	Timeout time.Duration
	// ScreenshotDir is where the driver's screenshots go. Empty: a
	// temporary directory of the test, removed with it.
	ScreenshotDir string
}

// Driver is a running driver script.
type Driver struct {
	// ScreenshotDir is where its screenshots go.
	ScreenshotDir string

	t      testing.TB
	script string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	cancel context.CancelFunc
	stderr lineLogger
	done   chan struct{} // closed when the process has exited and its stdout is read
	err    error         // Wait's result; read after done

	mu     sync.Mutex
	events []Event
	result json.RawMessage
	stdout bytes.Buffer // lines that are neither events nor the result
	notify chan struct{}
}

// Event is one bt.event(name, data) of the driver.
type Event struct {
	Name string          `json:"name"`
	Data json.RawMessage `json:"data"`
}

// Start runs a driver with node; it fails the test if node cannot start
// it. The driver is killed when the test ends, if it is still running.
func (b *Browser) Start(t testing.TB, opts Options) *Driver {
	t.Helper()
	if opts.Script == "" {
		t.Fatal("browsertest: Options.Script is empty")
	}
	script, err := filepath.Abs(opts.Script)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("browsertest: the driver script: %v", err)
	}
	args, err := json.Marshal(opts.Args)
	if err != nil {
		t.Fatalf("browsertest: marshalling the driver's arguments: %v", err)
	}
	shots := opts.ScreenshotDir
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	d := &Driver{ScreenshotDir: shots, t: t, script: filepath.Base(script), cancel: cancel,
		done: make(chan struct{}), notify: make(chan struct{})}
	d.stderr = lineLogger{t: t, prefix: d.script + ": "}
	d.cmd = exec.CommandContext(ctx, b.Node, script)
	d.cmd.Dir = filepath.Dir(script)
	d.cmd.Env = append(append(os.Environ(),
		"NODE_PATH="+b.Dir+string(os.PathListSeparator)+filepath.Join(b.Dir, "node_modules"),
		"NBSECRETS_BROWSERTEST_CHROMIUM="+b.Chromium,
		"NBSECRETS_BROWSERTEST_SCREENSHOTS="+shots,
		"NBSECRETS_BROWSERTEST_ARGS="+string(args),
	), opts.Env...)
	// Its own process group, so that a kill takes chromium with it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	d.cmd.Cancel = func() error { return syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL) }
	d.cmd.WaitDelay = 5 * time.Second
	d.cmd.Stderr = &d.stderr
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if d.stdin, err = d.cmd.StdinPipe(); err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("browsertest: starting node %s: %v", script, err)
	}
	go d.read(stdout) // ends when the driver's stdout closes
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
		cancel()
	})
	return d
}

// read sorts the driver's stdout into events, the result and other lines,
// then waits for the process.
func (d *Driver) read(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		d.mu.Lock()
		switch {
		case strings.HasPrefix(line, eventMark):
			var e Event
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, eventMark)), &e); err != nil {
				fmt.Fprintf(&d.stdout, "(malformed event: %v) %s\n", err, line)
			} else {
				d.events = append(d.events, e)
			}
		case strings.HasPrefix(line, resultMark):
			d.result = json.RawMessage(strings.TrimPrefix(line, resultMark))
		default:
			d.stdout.WriteString(line + "\n")
		}
		close(d.notify)
		d.notify = make(chan struct{})
		d.mu.Unlock()
	}
	err := d.cmd.Wait()
	d.stderr.flush()
	d.mu.Lock()
	if err == nil && d.result == nil {
		err = errors.New("the driver exited without a result")
	}
	d.err = err
	close(d.done)
	d.mu.Unlock()
}

// WaitEvent waits for the driver's next event named name that no earlier
// WaitEvent returned, and returns its data. It fails the test when the
// driver exits without sending it or timeout passes.
func (d *Driver) WaitEvent(t testing.TB, name string, timeout time.Duration) json.RawMessage {
	t.Helper()
	data, err := d.waitEvent(name, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// waitEvent is WaitEvent without the test.
func (d *Driver) waitEvent(name string, timeout time.Duration) (json.RawMessage, error) {
	deadline := time.After(timeout)
	for {
		d.mu.Lock()
		data, ok := d.takeEvent(name)
		notify := d.notify
		d.mu.Unlock()
		if ok {
			return data, nil
		}
		select {
		case <-notify:
		case <-d.done:
			d.mu.Lock()
			data, ok := d.takeEvent(name) // it may have come with the last lines
			d.mu.Unlock()
			if ok {
				return data, nil
			}
			return nil, fmt.Errorf("browsertest: %s exited (%v) before its event %q; its stdout:\n%s", d.script, d.err, name, d.Stdout())
		case <-deadline:
			return nil, fmt.Errorf("browsertest: no event %q from %s within %v; its stdout:\n%s", name, d.script, timeout, d.Stdout())
		}
	}
}

// takeEvent removes and returns the first event named name; d.mu is held.
func (d *Driver) takeEvent(name string) (json.RawMessage, bool) {
	for i, e := range d.events {
		if e.Name == name {
			d.events = append(d.events[:i:i], d.events[i+1:]...)
			return e.Data, true
		}
	}
	return nil, false
}

// Send writes v as one JSON line to the driver's stdin (its bt.receive()).
func (d *Driver) Send(t testing.TB, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		t.Fatalf("browsertest: sending to %s: %v", d.script, err)
	}
}

// Stdout is what the driver printed besides its events and result.
func (d *Driver) Stdout() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stdout.String()
}

// Result waits for the driver to exit and returns its function's return
// value as JSON, or an error when it failed (its error is in the test's
// log, and failure.png in ScreenshotDir).
func (d *Driver) Result() (json.RawMessage, error) {
	_ = d.stdin.Close()
	<-d.done
	d.cancel()
	if d.err != nil {
		return nil, fmt.Errorf("browsertest: %s: %w (screenshots in %s); its stderr ends:\n%s", d.script, d.err, d.ScreenshotDir, d.stderr.tail())
	}
	return d.result, nil
}

// Wait is Result that fails the test on an error, and decodes the result
// into out unless out is nil.
func (d *Driver) Wait(t testing.TB, out any) json.RawMessage {
	t.Helper()
	res, err := d.Result()
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(res, out); err != nil {
			t.Fatalf("browsertest: decoding %s's result: %v: %s", d.script, err, res)
		}
	}
	return res
}

// Run starts a driver and waits for its result (decoded into out unless
// nil).
func (b *Browser) Run(t testing.TB, opts Options, out any) json.RawMessage {
	t.Helper()
	return b.Start(t, opts).Wait(t, out)
}

// lineLogger logs each whole line written to it with the test, prefixed.
type lineLogger struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	buf    []byte
	last   []string // the last lines, for errors
	done   bool
}

// tailLines is how many of the last lines lineLogger keeps for errors.
const tailLines = 20

// tail is the last lines written.
func (l *lineLogger) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.last, "\n")
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		line := string(l.buf[:i])
		if !l.done {
			l.t.Log(l.prefix + line)
		}
		l.last = append(l.last, line)
		if len(l.last) > tailLines {
			l.last = l.last[1:]
		}
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

// flush logs a last unterminated line; nothing is logged after it (the
// test may have ended).
func (l *lineLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 && !l.done {
		l.t.Log(l.prefix + string(l.buf))
		l.last = append(l.last, string(l.buf))
	}
	l.buf, l.done = nil, true
}
