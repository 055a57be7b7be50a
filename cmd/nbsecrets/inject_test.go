package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/injector"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// The test binary plays `nbsecrets inject` and the kernel it becomes
// (TestInjectHelperProcess, TestInjectHelperKernel), selected with
// -test.run, when injectHelperEnv is set.
const (
	injectHelperEnv       = "NBSECRETS_CMD_INJECT_HELPER"
	injectHelperSocketEnv = "NBSECRETS_CMD_INJECT_SOCKET"
)

func TestInjectHelperProcess(t *testing.T) {
	if os.Getenv(injectHelperEnv) != "1" {
		return
	}
	os.Exit(run([]string{"inject", "--socket", os.Getenv(injectHelperSocketEnv), "--",
		os.Args[0], "-test.run=^TestInjectHelperKernel$", "--", "-f", "/run/test/kernel-cmd.json",
	}, os.Stdin, os.Stdout, os.Stderr))
}

func TestInjectHelperKernel(t *testing.T) {
	if os.Getenv(injectHelperEnv) != "1" {
		return
	}
	h := sha256.Sum256([]byte(os.Getenv("DB-PASSWORD")))
	fmt.Printf("%d %s %s\n", os.Getpid(), hex.EncodeToString(h[:8]), os.Getenv(localapi.ManagedVar))
	os.Exit(0)
}

// startInjectAgent serves GET /v1/env with one secret and takes
// announcements on the channel it returns.
func startInjectAgent(t *testing.T) (socket string, announced chan localapi.Announcement) {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket = filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	announced = make(chan localapi.Announcement, 4)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+localapi.EnvPath, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(localapi.EnvResponse{
			Env:      map[string]string{"DB-PASSWORD": "s3cret", localapi.ManagedVar: "DB-PASSWORD"},
			Versions: map[string]uint64{"DB-PASSWORD": 7},
		})
	})
	mux.HandleFunc("POST "+localapi.KernelsPath, func(w http.ResponseWriter, r *http.Request) {
		var a localapi.Announcement
		json.NewDecoder(r.Body).Decode(&a)
		announced <- a
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, announced
}

// TestInjectExec runs `nbsecrets inject` for real: the kernel has the
// injector's PID and the agent's secret.
func TestInjectExec(t *testing.T) {
	socket, announced := startInjectAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestInjectHelperProcess$")
	cmd.Env = append(os.Environ(), injectHelperEnv+"=1", injectHelperSocketEnv+"="+socket, "DB-PASSWORD=old")
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("inject: %v; stderr: %s", err, stderr.String())
	}
	h := sha256.Sum256([]byte("s3cret"))
	if want := fmt.Sprintf("%d %s DB-PASSWORD\n", pid, hex.EncodeToString(h[:8])); stdout.String() != want {
		t.Errorf("kernel said %q, want %q (same PID, the agent's value)", stdout.String(), want)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q", stderr.String())
	}
	select {
	case a := <-announced:
		want := localapi.Announcement{ConnectionFile: "/run/test/kernel-cmd.json", PID: pid, Versions: map[string]uint64{"DB-PASSWORD": 7}}
		if !reflect.DeepEqual(a, want) {
			t.Errorf("announcement = %+v, want %+v", a, want)
		}
	default:
		t.Error("no announcement")
	}
}

// TestInjectKeepsParentDeathSignal: the kernel inherits what the process
// that ran inject was given, per-thread attributes included, as if inject
// were not there. The parent-death signal (PR_SET_PDEATHSIG) belongs to a
// thread, and an exec from any thread but the main one would drop it; a
// supervisor that relies on it would leave the kernel running after its
// own death. The built binary runs inject several times against an agent
// that answers (so the main goroutine blocks on I/O and could resume on
// another thread), and the kernel, a Python that asks prctl, must report
// the signal.
func TestInjectKeepsParentDeathSignal(t *testing.T) {
	python := kerneltest.Python(t)
	bin := buildBinary(t, t.TempDir())
	socket, announced := startInjectAgent(t)
	const code = "import ctypes; s = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)" // 2: PR_GET_PDEATHSIG
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, "inject", "--socket", socket, "--", python, "-c", code, "-f", "/run/test/kernel-pdeathsig.json")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGUSR2}
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("start %d: inject: %v", i, err)
		}
		if got, want := strings.TrimSpace(string(out)), fmt.Sprint(int(syscall.SIGUSR2)); got != want {
			t.Fatalf("start %d: the kernel's parent-death signal is %s, want %s (SIGUSR2)", i, got, want)
		}
		<-announced
	}
}

func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestInjectUsage(t *testing.T) {
	tests := []struct {
		args       []string
		code       int
		wantStderr string
	}{
		{[]string{"inject"}, 2, "no kernel command after --"},
		{[]string{"inject", "--"}, 2, "no kernel command after --"},
		{[]string{"inject", "--socket"}, 2, "flag needs an argument"},
		{[]string{"inject", "--timeout", "soon", "--", "python3"}, 2, "invalid value"},
		{[]string{"inject", "--help"}, 0, "Usage: nbsecrets inject"},
		{[]string{"inject", "--socket", "/nonexistent.sock", "--", "/nonexistent/python3", "-f", "x.json"}, 1,
			`nbsecrets inject: kernel program "/nonexistent/python3": stat /nonexistent/python3: no such file or directory`},
		{[]string{"inject", "--socket", "/nonexistent.sock", "--", "nbsecrets-no-such-kernel"}, 1, `kernel program "nbsecrets-no-such-kernel": not found in PATH`},
	}
	for _, tt := range tests {
		code, _, stderr := runCmd(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.wantStderr) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", tt.args, code, stderr, tt.code, tt.wantStderr)
		}
	}
}

// TestInjectFlags checks what the command hands the injector. Not parallel:
// it swaps injectExec and sets the environment.
func TestInjectFlags(t *testing.T) {
	var got injector.Options
	injectExec = func(ctx context.Context, o injector.Options) error { got = o; return nil }
	t.Cleanup(func() { injectExec = injector.Exec })
	state := t.TempDir()
	tests := []struct {
		name, envSocket string
		args            []string
		want            injector.Options
	}{
		{"state dir", "", []string{"--state-dir", state, "--", "python3", "-f", "c.json"},
			injector.Options{Socket: filepath.Join(state, "agent.sock"), Timeout: 2 * time.Second, Argv: []string{"python3", "-f", "c.json"}}},
		{"NBSECRETS_SOCKET", "/env/agent.sock", []string{"--state-dir", state, "--", "python3"},
			injector.Options{Socket: "/env/agent.sock", Timeout: 2 * time.Second, Argv: []string{"python3"}}},
		{"flag wins", "/env/agent.sock", []string{"--socket", "/flag.sock", "--timeout", "500ms", "--", "python3", "--", "-x"},
			injector.Options{Socket: "/flag.sock", Timeout: 500 * time.Millisecond, Argv: []string{"python3", "--", "-x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NBSECRETS_SOCKET", tt.envSocket)
			got = injector.Options{}
			if code, _, stderr := runCmd(t, append([]string{"inject"}, tt.args...)...); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			got.Stderr = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("options = %+v, want %+v", got, tt.want)
			}
		})
	}
}
