package injector

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// The test binary plays the injector and the kernel (see TestExecKeepsPID).
const (
	helperEnv       = "NBSECRETS_INJECTOR_TEST_HELPER"
	helperSocketEnv = "NBSECRETS_INJECTOR_TEST_SOCKET"
	helperConnEnv   = "NBSECRETS_INJECTOR_TEST_CONN"
	// helperTimeoutEnv, when set, is the helper injector's Options.Timeout.
	helperTimeoutEnv = "NBSECRETS_INJECTOR_TEST_TIMEOUT"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "inject":
		helperInject()
	case "kernel":
		helperKernel()
	case "cli":
		helperCLI()
	}
	os.Exit(m.Run())
}

// helperInject is `nbsecrets inject -- TESTBINARY -f CONN` with the
// environment telling the exec'd test binary to be the kernel.
func helperInject() {
	environ := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, helperEnv+"=") })
	environ = append(environ, helperEnv+"=kernel")
	timeout, _ := time.ParseDuration(os.Getenv(helperTimeoutEnv)) // unset: 0, the default
	err := Exec(context.Background(), Options{
		Timeout: timeout,
		Socket:  os.Getenv(helperSocketEnv),
		Argv:    []string{os.Args[0], "-f", os.Getenv(helperConnEnv)},
		Environ: environ,
		Stderr:  os.Stderr,
	})
	fmt.Fprintf(os.Stderr, "helper inject: %v\n", err)
	os.Exit(3)
}

// helperCLI is the nbsecrets binary a kernelspec runs:
// `TESTBINARY inject --socket SOCKET -- ARGV...`.
func helperCLI() {
	args := os.Args[1:]
	if len(args) < 5 || args[0] != "inject" || args[1] != "--socket" || args[3] != "--" {
		fmt.Fprintf(os.Stderr, "helper cli: unexpected arguments %q\n", args)
		os.Exit(2)
	}
	environ := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, helperEnv+"=") })
	err := Exec(context.Background(), Options{Socket: args[2], Argv: args[4:], Environ: environ})
	fmt.Fprintf(os.Stderr, "helper cli: %v\n", err)
	os.Exit(1)
}

// kernelReport is what the helper kernel prints: its PID and, for each
// variable nbsecrets may touch, a hash of its value ("" when unset).
type kernelReport struct {
	PID  int               `json:"pid"`
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env"`
}

var watchedVars = []string{"DB-PASSWORD", "API_KEY", "OLD-SECRET", localapi.ManagedVar, "HOME"}

func helperKernel() {
	r := kernelReport{PID: os.Getpid(), Argv: os.Args[1:], Env: map[string]string{}}
	for _, name := range watchedVars {
		if v, ok := os.LookupEnv(name); ok {
			r.Env[name] = hashValue(v)
		} else {
			r.Env[name] = ""
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		os.Exit(4)
	}
	os.Exit(0)
}

func hashValue(v string) string {
	h := sha256.Sum256([]byte(v))
	return hex.EncodeToString(h[:8])
}

// shortTempDir is a temporary directory with a path short enough for a unix
// socket (108 bytes), which t.TempDir's may not be.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "nbs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// fakeAgent serves the agent's local API from a map, recording requests.
type fakeAgent struct {
	socket string

	mu            sync.Mutex
	env           localapi.EnvResponse
	envStatus     int // 0: 200
	kernelsStatus int // 0: 204
	hang          bool
	envQueries    []string
	announcements []localapi.Announcement
	got           chan struct{} // one send per request received
}

func startAgent(t *testing.T, a *fakeAgent) *fakeAgent {
	t.Helper()
	a.socket = filepath.Join(shortTempDir(t), "agent.sock")
	a.got = make(chan struct{}, 16)
	ln, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+localapi.EnvPath, func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.envQueries = append(a.envQueries, r.URL.RawQuery)
		hang, status, body := a.hang, a.envStatus, a.env
		a.mu.Unlock()
		a.got <- struct{}{}
		if hang {
			<-r.Context().Done() // never answers; the client gives up
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if status != 0 && status != http.StatusOK {
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(localapi.ErrorResponse{Error: "workspace not loaded yet"})
			return
		}
		json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("POST "+localapi.KernelsPath, func(w http.ResponseWriter, r *http.Request) {
		var ann localapi.Announcement
		err := json.NewDecoder(r.Body).Decode(&ann)
		a.mu.Lock()
		a.announcements = append(a.announcements, ann)
		status := a.kernelsStatus
		a.mu.Unlock()
		switch {
		case err != nil:
			http.Error(w, `{"error":"bad body"}`, http.StatusBadRequest)
		case status != 0:
			w.WriteHeader(status)
			fmt.Fprint(w, `{"error":"no"}`)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *fakeAgent) requests() (queries []string, anns []localapi.Announcement) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.envQueries), slices.Clone(a.announcements)
}

// fakeKernel is an executable file in a PATH directory of its own.
func fakeKernel(t *testing.T) (pathDir, name string) {
	t.Helper()
	dir := t.TempDir()
	name = "nbs-fake-kernel"
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, name
}

func envMap(env []string) map[string][]string {
	m := map[string][]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = append(m[k], v)
	}
	return m
}

// baseEnviron is what a kernel manager passes on a restart: the first
// launch's environment with a stale secret and its NBSECRETS_MANAGED.
func baseEnviron(pathDir string) []string {
	return []string{
		"PATH=/nonexistent:" + pathDir,
		"HOME=/home/u",
		"OLD-SECRET=stale",
		"DB-PASSWORD=old-value",
		localapi.ManagedVar + "=OLD-SECRET,DB-PASSWORD",
	}
}

var agentSecrets = localapi.EnvResponse{
	Env: map[string]string{
		"DB-PASSWORD":       "s3cret-value",
		"API_KEY":           "k3y-value",
		localapi.ManagedVar: "API_KEY,DB-PASSWORD",
	},
	Versions: map[string]uint64{"DB-PASSWORD": 3, "API_KEY": 1},
}

func TestPrepareSetsEnv(t *testing.T) {
	a := startAgent(t, &fakeAgent{env: agentSecrets})
	pathDir, kernel := fakeKernel(t)
	conn := filepath.Join(t.TempDir(), "kernel-abc.json")
	var stderr bytes.Buffer

	argv0, argv, env, err := Prepare(context.Background(), Options{
		Socket:  a.socket,
		Argv:    []string{kernel, "-f", conn},
		Environ: baseEnviron(pathDir),
		Stderr:  &stderr,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(pathDir, kernel); argv0 != want {
		t.Errorf("argv0 = %q, want %q (looked up in the kernel's PATH)", argv0, want)
	}
	if want := []string{kernel, "-f", conn}; !reflect.DeepEqual(argv, want) {
		t.Errorf("argv = %q, want %q", argv, want)
	}
	got := envMap(env)
	want := map[string][]string{
		"PATH":              {"/nonexistent:" + pathDir},
		"HOME":              {"/home/u"},
		"DB-PASSWORD":       {"s3cret-value"},
		"API_KEY":           {"k3y-value"},
		localapi.ManagedVar: {"API_KEY,DB-PASSWORD"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("env = %v, want %v", got, want)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q, want nothing", stderr.String())
	}

	queries, anns := a.requests()
	if wantQ := []string{"connection_file=" + strings.ReplaceAll(conn, "/", "%2F")}; !reflect.DeepEqual(queries, wantQ) {
		t.Errorf("env queries = %q, want %q", queries, wantQ)
	}
	wantAnn := []localapi.Announcement{{ConnectionFile: conn, PID: os.Getpid(), Versions: map[string]uint64{"DB-PASSWORD": 3, "API_KEY": 1}}}
	if !reflect.DeepEqual(anns, wantAnn) {
		t.Errorf("announcements = %+v, want %+v", anns, wantAnn)
	}
}

func TestPrepareRelativeConnectionFile(t *testing.T) {
	a := startAgent(t, &fakeAgent{env: agentSecrets})
	pathDir, kernel := fakeKernel(t)
	_, _, _, err := Prepare(context.Background(), Options{
		Socket: a.socket, Argv: []string{kernel, "--f=kernel-rel.json"}, Environ: baseEnviron(pathDir), Stderr: &bytes.Buffer{},
	})
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	_, anns := a.requests()
	if len(anns) != 1 || anns[0].ConnectionFile != filepath.Join(wd, "kernel-rel.json") {
		t.Errorf("announcements = %+v, want the absolute connection file", anns)
	}
}

// TestPrepareWithoutAgent: whatever goes wrong with the agent, the kernel
// starts, without secrets (stale ones removed too), and one stderr line says
// why.
func TestPrepareWithoutAgent(t *testing.T) {
	pathDir, kernel := fakeKernel(t)

	noFile := filepath.Join(shortTempDir(t), "agent.sock")

	// A socket file nobody listens on any more.
	stale := filepath.Join(shortTempDir(t), "agent.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	failing := startAgent(t, &fakeAgent{envStatus: http.StatusInternalServerError})
	hanging := startAgent(t, &fakeAgent{hang: true})

	badJSON := filepath.Join(shortTempDir(t), "agent.sock")
	bl, err := net.Listen("unix", badJSON)
	if err != nil {
		t.Fatal(err)
	}
	bsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		fmt.Fprint(w, `{"env": {"A": "secret-in-broken-json`)
	})}
	go bsrv.Serve(bl)
	t.Cleanup(func() { bsrv.Close() })

	// Only the hanging agent is meant to run out of time: the others get
	// a deadline that a loaded machine under the race detector cannot
	// reach before the fake agent answers.
	const patient = 30 * time.Second
	tests := []struct {
		name, socket, want string
		timeout            time.Duration
	}{
		{"no socket file", noFile, "agent at " + noFile + " not reachable: dial unix " + noFile + ": connect: no such file or directory", patient},
		{"nobody listening", stale, "agent at " + stale + " not reachable: dial unix " + stale + ": connect: connection refused", patient},
		{"agent error", failing.socket, "agent at " + failing.socket + " answered an error: GET /v1/env: 500 Internal Server Error: workspace not loaded yet", patient},
		{"broken answer", badJSON, "agent at " + badJSON + " answered an error: decoding the answer to GET /v1/env:", patient},
		{"no answer in time", hanging.socket, "agent at " + hanging.socket + " not reachable: no answer within 200ms", 200 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			argv0, _, env, err := Prepare(context.Background(), Options{
				Socket:  tt.socket,
				Timeout: tt.timeout,
				Argv:    []string{kernel, "-f", "/run/kernel-1.json"},
				Environ: baseEnviron(pathDir),
				Stderr:  &stderr,
			})
			if err != nil {
				t.Fatalf("Prepare: %v (an unreachable agent must not stop the kernel)", err)
			}
			if argv0 != filepath.Join(pathDir, kernel) {
				t.Errorf("argv0 = %q", argv0)
			}
			got := envMap(env)
			want := map[string][]string{"PATH": {"/nonexistent:" + pathDir}, "HOME": {"/home/u"}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("env = %v, want %v (no secrets, stale ones removed)", got, want)
			}
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if len(lines) != 1 {
				t.Fatalf("stderr = %q, want one line", stderr.String())
			}
			if !strings.HasPrefix(lines[0], "nbsecrets inject: "+tt.want) ||
				!strings.HasSuffix(lines[0], "; starting the kernel without secrets; the agent will re-seed it when it sees it") {
				t.Errorf("stderr = %q, want %q...", lines[0], tt.want)
			}
			if strings.Contains(stderr.String(), "secret-in") || strings.Contains(stderr.String(), "stale") {
				t.Errorf("stderr shows a value: %q", stderr.String())
			}
		})
	}
	// The agent that answered an error still hears of the kernel, with
	// nothing given, so it knows to seed it.
	if _, anns := failing.requests(); len(anns) != 1 || len(anns[0].Versions) != 0 || anns[0].PID != os.Getpid() {
		t.Errorf("failing agent's announcements = %+v, want one with no versions", anns)
	}
	if _, anns := hanging.requests(); len(anns) != 0 {
		t.Errorf("hanging agent got announcements %+v", anns)
	}
}

// TestPrepareCancelled: a kernel manager giving up on the start (ctx
// cancelled, as SIGTERM does in the command) stops Prepare: the kernel must
// not start.
func TestPrepareCancelled(t *testing.T) {
	a := startAgent(t, &fakeAgent{hang: true})
	pathDir, kernel := fakeKernel(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, _, _, err := Prepare(ctx, Options{
			Socket: a.socket, Timeout: time.Hour, Argv: []string{kernel}, Environ: baseEnviron(pathDir), Stderr: &bytes.Buffer{},
		})
		errc <- err
	}()
	<-a.got // the agent has the request
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Prepare = %v, want context.Canceled", err)
	}
}

func TestPrepareAnnounceFails(t *testing.T) {
	a := startAgent(t, &fakeAgent{env: agentSecrets, kernelsStatus: http.StatusServiceUnavailable})
	pathDir, kernel := fakeKernel(t)
	var stderr bytes.Buffer
	_, _, env, err := Prepare(context.Background(), Options{
		Socket: a.socket, Argv: []string{kernel, "-f", "/run/kernel-1.json"}, Environ: baseEnviron(pathDir), Stderr: &stderr,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := envMap(env)["DB-PASSWORD"]; !reflect.DeepEqual(got, []string{"s3cret-value"}) {
		t.Errorf("DB-PASSWORD not set despite a failed announcement")
	}
	want := "nbsecrets inject: announcing the kernel to the agent at " + a.socket + ": POST /v1/kernels: 503 Service Unavailable: no; the agent will find it in the runtime directory\n"
	if stderr.String() != want {
		t.Errorf("stderr = %q, want %q", stderr.String(), want)
	}
}

func TestPrepareNoConnectionFile(t *testing.T) {
	a := startAgent(t, &fakeAgent{env: agentSecrets})
	pathDir, kernel := fakeKernel(t)
	var stderr bytes.Buffer
	_, _, env, err := Prepare(context.Background(), Options{
		Socket: a.socket, Argv: []string{kernel}, Environ: baseEnviron(pathDir), Stderr: &stderr,
	})
	if err != nil {
		t.Fatal(err)
	}
	if envMap(env)["API_KEY"] == nil {
		t.Error("API_KEY not set")
	}
	queries, anns := a.requests()
	if !reflect.DeepEqual(queries, []string{""}) || len(anns) != 0 {
		t.Errorf("queries %q announcements %+v, want one query without connection_file and no announcement", queries, anns)
	}
	if !strings.Contains(stderr.String(), "no connection file") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

func TestPrepareErrors(t *testing.T) {
	a := startAgent(t, &fakeAgent{env: agentSecrets})
	pathDir, _ := fakeKernel(t)
	notExec := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		argv []string
		want string
		is   error
	}{
		{"no argv", nil, "", ErrNoArgv},
		{"empty program", []string{""}, "", ErrNoArgv},
		{"not in PATH", []string{"no-such-kernel-xyz", "-f", "c.json"}, `kernel program "no-such-kernel-xyz": not found in PATH`, exec.ErrNotFound},
		{"no such file", []string{"/nonexistent/python3"}, `kernel program "/nonexistent/python3"`, os.ErrNotExist},
		{"not executable", []string{notExec}, `kernel program "` + notExec + `"`, os.ErrPermission},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := Prepare(context.Background(), Options{Socket: a.socket, Argv: tt.argv, Environ: baseEnviron(pathDir), Stderr: &bytes.Buffer{}})
			if !errors.Is(err, tt.is) || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Errorf("Prepare = %v, want %v containing %q", err, tt.is, tt.want)
			}
		})
	}
	if q, _ := a.requests(); len(q) != 0 {
		t.Errorf("the agent was asked %d times for kernels that cannot start", len(q))
	}
}

func TestComputeEnv(t *testing.T) {
	tests := []struct {
		name       string
		environ    []string
		agent      map[string]string
		want       []string
		wantStderr string
	}{
		{
			name:    "first start",
			environ: []string{"PATH=/bin", "HOME=/h"},
			agent:   map[string]string{"B-KEY": "b", "A-KEY": "a", localapi.ManagedVar: "A-KEY,B-KEY"},
			want:    []string{"PATH=/bin", "HOME=/h", "A-KEY=a", "B-KEY=b", localapi.ManagedVar + "=A-KEY,B-KEY"},
		},
		{
			name:    "restart: stale removed, changed replaced, duplicates collapsed",
			environ: []string{"A-KEY=old", "PATH=/bin", "GONE=x", "A-KEY=older", localapi.ManagedVar + "=A-KEY, GONE", "KEEP=1"},
			agent:   map[string]string{"A-KEY": "new", localapi.ManagedVar: "A-KEY"},
			want:    []string{"PATH=/bin", "KEEP=1", "A-KEY=new", localapi.ManagedVar + "=A-KEY"},
		},
		{
			name:    "no agent: every managed name goes",
			environ: []string{"A-KEY=a", localapi.ManagedVar + "=A-KEY", "PATH=/bin"},
			agent:   nil,
			want:    []string{"PATH=/bin"},
		},
		{
			name:    "inherited NBSECRETS_MANAGED never removes a reserved name",
			environ: []string{"PATH=/bin", "LD_LIBRARY_PATH=/l", localapi.ManagedVar + "=PATH,LD_LIBRARY_PATH,,x=y"},
			want:    []string{"PATH=/bin", "LD_LIBRARY_PATH=/l"},
		},
		{
			name:       "agent's reserved and invalid names and NUL values are ignored",
			environ:    []string{"PATH=/bin"},
			agent:      map[string]string{"PATH": "/evil", "LD_PRELOAD": "/evil.so", "A=B": "x", "NUL-KEY": "a\x00b", "OK-KEY": "v"},
			want:       []string{"PATH=/bin", "OK-KEY=v", localapi.ManagedVar + "=OK-KEY"},
			wantStderr: "LD_PRELOAD|PATH|NUL-KEY|A=B",
		},
		{
			name:    "entries without = are kept",
			environ: []string{"weird", "PATH=/bin"},
			agent:   map[string]string{},
			want:    []string{"weird", "PATH=/bin"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got, _ := computeEnv(tt.environ, tt.agent, &stderr)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("env = %q, want %q", got, tt.want)
			}
			lines := strings.Count(stderr.String(), "\n")
			if tt.wantStderr == "" && lines != 0 {
				t.Errorf("stderr = %q", stderr.String())
			}
			for _, name := range strings.Split(tt.wantStderr, "|") {
				if name != "" && !strings.Contains(stderr.String(), name) {
					t.Errorf("stderr = %q, want it to name %s", stderr.String(), name)
				}
			}
			for _, v := range []string{"/evil", "a\x00b"} {
				if strings.Contains(stderr.String(), v) {
					t.Errorf("stderr shows a value: %q", stderr.String())
				}
			}
		})
	}
}

func TestConnectionFile(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "/run/kernel-1.json"}, "/run/kernel-1.json"},
		{[]string{"python3", "-m", "ipykernel_launcher", "-f=/run/kernel-2.json"}, "/run/kernel-2.json"},
		{[]string{"python3", "-m", "ipykernel_launcher", "--f=/run/kernel-3.json"}, "/run/kernel-3.json"},
		{[]string{"python3", "--f", "/run/c.json"}, "/run/c.json"},
		{[]string{"python3", "-m", "bash_kernel", "-f", "relative.json"}, "relative.json"},
		{[]string{"R", "--slave", "-e", "IRkernel::main()", "--args", "/run/jupyter/kernel-4.json"}, "/run/jupyter/kernel-4.json"},
		{[]string{"python3", "-m", "ipykernel_launcher", "-f"}, ""},
		{[]string{"python3", "-m", "ipykernel_launcher"}, ""},
		{[]string{"kernel-5.json"}, ""}, // argv[0] is the program
		{[]string{"python3", "-ff", "x.json", "--foo=kernel-6.json"}, ""},
		{[]string{"python3", "-f", "/a/kernel-7.json", "-f", "/b/kernel-8.json"}, "/a/kernel-7.json"},
		{[]string{"python3", "/a/kernel-9.json", "-f", "/b/conn.json"}, "/b/conn.json"}, // a flag wins over a guess
		{nil, ""},
	}
	for _, tt := range tests {
		if got := ConnectionFile(tt.argv); got != tt.want {
			t.Errorf("ConnectionFile(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}

// TestExecKeepsPID runs the test binary as `inject -- TESTBINARY -f CONN`:
// the kernel it becomes must have the injector's PID (the one the kernel
// manager knows and signals) and the agent's environment.
func TestExecKeepsPID(t *testing.T) {
	a := startAgent(t, &fakeAgent{env: agentSecrets})
	conn := filepath.Join(t.TempDir(), "kernel-e2e.json")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "DB-PASSWORD=") || strings.HasPrefix(kv, "API_KEY=") || strings.HasPrefix(kv, localapi.ManagedVar+"=")
	}),
		helperEnv+"=inject",
		helperSocketEnv+"="+a.socket,
		helperConnEnv+"="+conn,
		"OLD-SECRET=stale",
		localapi.ManagedVar+"=OLD-SECRET",
		"HOME=/home/kept",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("injector: %v; stderr: %s", err, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q, want nothing", stderr.String())
	}
	var r kernelReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("kernel's report %q: %v", stdout.String(), err)
	}
	if r.PID != pid {
		t.Errorf("kernel PID %d, injector PID %d: inject must exec, not fork", r.PID, pid)
	}
	if want := []string{"-f", conn}; !reflect.DeepEqual(r.Argv, want) {
		t.Errorf("kernel argv = %q, want %q", r.Argv, want)
	}
	want := map[string]string{
		"DB-PASSWORD":       hashValue("s3cret-value"),
		"API_KEY":           hashValue("k3y-value"),
		"OLD-SECRET":        "",
		localapi.ManagedVar: hashValue("API_KEY,DB-PASSWORD"),
		"HOME":              hashValue("/home/kept"),
	}
	if !reflect.DeepEqual(r.Env, want) {
		t.Errorf("kernel env hashes = %v, want %v", r.Env, want)
	}
	_, anns := a.requests()
	if len(anns) != 1 || anns[0].PID != pid || anns[0].ConnectionFile != conn {
		t.Errorf("announcements = %+v, want one for PID %d", anns, pid)
	}
}

// TestExecTooLargeStartsWithoutSecrets performs issue 9's finding 4 at the
// injector: the agent hands over more secret bytes than any Linux lets a
// program start with (6 MiB is the most ARG_MAX can be), so execve fails
// with E2BIG. The kernel still starts, in the same process, without the
// secrets, and stderr says why, naming no value.
func TestExecTooLargeStartsWithoutSecrets(t *testing.T) {
	big := strings.Repeat("v", 64<<10)
	resp := localapi.EnvResponse{Env: map[string]string{}, Versions: map[string]uint64{}}
	for i := range 100 {
		name := fmt.Sprintf("BIG_%03d", i)
		resp.Env[name], resp.Versions[name] = big, 1
	}
	resp.Env["DB-PASSWORD"], resp.Versions["DB-PASSWORD"] = "s3cret-value", 1
	a := startAgent(t, &fakeAgent{env: resp})
	conn := filepath.Join(t.TempDir(), "kernel-big.json")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "DB-PASSWORD=") || strings.HasPrefix(kv, localapi.ManagedVar+"=")
	}), helperEnv+"=inject", helperSocketEnv+"="+a.socket, helperConnEnv+"="+conn, "HOME=/home/kept",
		// 6 MiB of JSON under the race detector on a loaded machine can
		// outlast the 2s default; this test is about execve, not the agent.
		helperTimeoutEnv+"=1m")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("injector: %v; stderr: %s", err, stderr.String())
	}
	var r kernelReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("the kernel did not start: report %q: %v; stderr: %s", stdout.String(), err, stderr.String())
	}
	if r.PID != pid {
		t.Errorf("kernel PID %d, injector PID %d", r.PID, pid)
	}
	if r.Env["DB-PASSWORD"] != "" || r.Env[localapi.ManagedVar] != "" || r.Env["HOME"] != hashValue("/home/kept") {
		t.Errorf("kernel env hashes = %v: want no secrets and the rest kept", r.Env)
	}
	msg := stderr.String()
	if !strings.Contains(msg, "101 secrets is too large") || !strings.Contains(msg, "starting the kernel without secrets") {
		t.Errorf("stderr = %q, want it to say the kernel starts without its 101 secrets", msg)
	}
	if strings.Contains(msg, "s3cret-value") || strings.Contains(msg, big[:64]) {
		t.Error("stderr holds a value")
	}
}
