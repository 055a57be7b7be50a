package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// TestEndToEnd builds the real binary and drives it as a user would:
// `nbsecrets dev`, `secret create/update/delete`, a kernel started through
// the injector, `status`, and a clean stop on SIGTERM.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs real kernels")
	}
	kerneltest.Python(t)
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	state := filepath.Join(tmp, "state")
	runtimeDir := filepath.Join(tmp, "runtime")
	env := append(os.Environ(), "JUPYTER_DATA_DIR="+filepath.Join(tmp, "jupyter"), "JUPYTER_RUNTIME_DIR="+runtimeDir,
		"NBSECRETS_LOG_LEVEL=debug")
	nb := func(stdin string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err != nil {
			return out.String(), fmt.Errorf("nbsecrets %s: %w: %s", strings.Join(args, " "), err, errb.String())
		}
		return out.String(), nil
	}

	d := startDev(t, bin, env, "--state-dir", state)
	dev, devDone, devOut, devErr := d.cmd, d.done, &d.out, &d.err
	info, err := readDevInfo(state)
	if err != nil {
		t.Fatal(err)
	}

	v1, v2 := "e2e-first-"+randHex(t), "e2e-second-"+randHex(t)
	if _, err := nb(v1+"\n", "secret", "create", "--state-dir", state, "E2E_TOKEN"); err != nil {
		t.Fatal(err)
	}
	// A kernel started through the injector has the value at start.
	k := kerneltest.Start(t, kerneltest.Options{Dir: runtimeDir,
		Prefix: []string{bin, "inject", "--socket", info.Socket, "--"}})
	c := k.Client(t)
	if got := kernelDigest(t, c, "E2E_TOKEN", "os.environ at start"); got != digest(v1) {
		t.Fatal("the kernel did not start with the secret")
	}
	if got := kernelDigestNow(t, c, "import os; print(os.getpid())"); got != fmt.Sprint(k.PID()) {
		t.Errorf("the kernel's pid %s is not the launched process %d: inject did not exec", got, k.PID())
	}
	// Live update and delete.
	if _, err := nb(v2, "secret", "update", "--state-dir", state, "E2E_TOKEN"); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 20*time.Second, func() error {
		if kernelDigest(t, c, "E2E_TOKEN", "update") != digest(v2) {
			return fmt.Errorf("update not visible")
		}
		return nil
	})
	out, err := nb("", "secret", "delete", "--state-dir", state, "E2E_TOKEN")
	if err != nil || !strings.Contains(out, "Secret destroyed") {
		t.Fatalf("delete: %q %v", out, err)
	}
	pollUntil(t, 20*time.Second, func() error {
		if kernelDigest(t, c, "E2E_TOKEN", "delete") != "unset" {
			return fmt.Errorf("delete not visible")
		}
		return nil
	})
	// status: JSON for scripts, a table for people; never a value.
	raw, err := nb("", "status", "--state-dir", state, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil || len(st.Kernels) != 1 || st.Kernels[0].State != agent.StateLive {
		t.Errorf("status --json: %v %+v", err, st.Kernels)
	}
	table, err := nb("", "status", "--state-dir", state)
	if err != nil || !strings.Contains(table, "live") {
		t.Errorf("status table: %v\n%s", err, table)
	}
	for _, s := range []string{raw, table, devOut.String(), devErr.String()} {
		if strings.Contains(s, v1) || strings.Contains(s, v2) {
			t.Error("a value appears in the output or logs of nbsecrets")
		}
	}
	// A clean stop: exit 0, dev.json removed.
	if err := dev.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-devDone:
		devDone <- err // for the cleanup
		if err != nil {
			t.Errorf("dev after SIGTERM: %v\n%s", err, devErr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("dev did not stop within 20s of SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(state, devInfoFile)); !os.IsNotExist(err) {
		t.Errorf("dev.json left behind: %v", err)
	}
}

func randHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func digest(v string) string {
	s := sha256.Sum256([]byte(v))
	return hex.EncodeToString(s[:])
}

func kernelDigestNow(t *testing.T, c *jupyter.Client, code string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Run(ctx, code)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(res.Stdout)
}

// kernelDigest is the sha256 of os.environ[name] in the kernel, or "unset".
func kernelDigest(t *testing.T, c *jupyter.Client, name, what string) string {
	t.Helper()
	return kernelDigestNow(t, c, fmt.Sprintf("import os as _o, hashlib as _h\n_v = _o.environ.get(%q)\nprint('unset' if _v is None else _h.sha256(_v.encode()).hexdigest())\ndel _o, _h, _v", name))
}

// devProc is a running `nbsecrets dev`; done receives its exit once.
type devProc struct {
	cmd      *exec.Cmd
	out, err lockedBuffer
	done     chan error
}

// startDev runs `bin dev args...` and waits until it has printed its whole
// banner (it ends with "Ctrl-C stops."; the lines come in several writes,
// and a test that read it after the first one missed the web UI's login
// URL); the test's cleanup kills it if it is still there.
func startDev(t *testing.T, bin string, env []string, args ...string) *devProc {
	t.Helper()
	d := &devProc{cmd: exec.Command(bin, append([]string{"dev"}, args...)...), done: make(chan error, 1)}
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.err
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
	})
	pollUntil(t, 30*time.Second, func() error {
		if !strings.Contains(d.out.String(), "Ctrl-C stops.") {
			return fmt.Errorf("dev not ready; stderr:\n%s", d.err.String())
		}
		return nil
	})
	return d
}

// buildBinary builds nbsecrets into dir.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "nbsecrets")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestDevWithDirectory runs the real binary as `dev --directory FILE
// --workspace ws-bob`: keys are generated for users and workspaces left
// without, alice's project secret reaches bob's agent, and rewriting the
// file to take bob's workspace out of the project takes the secret away
// without a restart.
func TestDevWithDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	state := filepath.Join(tmp, "state")
	dirFile := filepath.Join(tmp, "directory.json")
	directory := func(bobInML bool) []byte {
		bobProjects := `[]`
		if bobInML {
			bobProjects = `["ml"]`
		}
		return []byte(`{
  "users": [{"id": "alice", "publicKey": ""}, {"id": "bob", "publicKey": ""}],
  "projects": [{"id": "ml", "members": [{"user": "alice", "role": "admin"}, {"user": "bob", "role": "member"}]}],
  "workspaces": [
    {"id": "ws-alice", "owner": "alice", "projects": ["ml"], "curveKey": ""},
    {"id": "ws-bob", "owner": "bob", "projects": ` + bobProjects + `, "curveKey": ""}
  ]
}`)
	}
	if err := os.WriteFile(dirFile, directory(true), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "JUPYTER_DATA_DIR="+filepath.Join(tmp, "jupyter"), "JUPYTER_RUNTIME_DIR="+filepath.Join(tmp, "runtime"))
	d := startDev(t, bin, env, "--state-dir", state, "--directory", dirFile, "--workspace", "ws-bob", "--no-kernelspec")
	devOut, devErr := &d.out, &d.err
	nb := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env, cmd.Stdin = env, strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nbsecrets %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	value := "dir-" + randHex(t)
	nb(value, "secret", "create", "--state-dir", state, "--as", "alice", "--project", "ml", "ML_TOKEN")
	// The agent takes the new access as it runs: once it has answered,
	// status keeps answering, from the same agent (same start time).
	var started time.Time
	bobHas := func(want bool) func() error {
		return func() error {
			cmd := exec.Command(bin, "status", "--state-dir", state, "--json")
			cmd.Env = env
			raw, err := cmd.Output()
			if err != nil {
				if !started.IsZero() {
					t.Fatalf("status failed after the agent had answered: %v", err)
				}
				return fmt.Errorf("status: %w", err)
			}
			var st agent.Status
			if err := json.Unmarshal(raw, &st); err != nil {
				return err
			}
			if started.IsZero() {
				started = st.Started
			} else if !st.Started.Equal(started) {
				t.Fatalf("the agent was restarted: started %v, then %v", started, st.Started)
			}
			has := len(st.Secrets) == 1 && st.Secrets[0].Name == "ML_TOKEN"
			if has != want || st.Workspace != "ws-bob" {
				return fmt.Errorf("bob's agent (%s) holds %+v, want ML_TOKEN: %v", st.Workspace, st.Secrets, want)
			}
			return nil
		}
	}
	pollUntil(t, 20*time.Second, bobHas(true))
	// Bob's workspace leaves the project: the file is rewritten in place.
	if err := writeFileAtomic(dirFile, directory(false), 0o600); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 40*time.Second, bobHas(false))
	if strings.Contains(devOut.String()+devErr.String(), value) {
		t.Error("a value appears in dev's output")
	}
	for _, f := range []string{"keys/users/alice.nk", "keys/users/bob.nk", "keys/workspaces/ws-bob.curve.nk"} {
		if fi, err := os.Stat(filepath.Join(state, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
