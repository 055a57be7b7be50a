package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAgentExecSignalsAndStatus runs the real binary as a spawner would:
// `agent --exec -- CHILD`. The child gets the SIGTERM (and SIGINT) sent to
// the agent's pid only, as LocalProcessSpawner sends it, and the agent
// exits with the child's status; a child that exits on its own gives its
// status too. Without a service to register with, the server still
// starts (without secrets) and the agent says so.
func TestAgentExecSignalsAndStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	env := append(os.Environ(), "NBSECRETS_SERVICE_URL=", "JUPYTERHUB_API_TOKEN=")
	for _, c := range []struct {
		name   string
		sig    syscall.Signal
		script string
		status int
	}{
		{"SIGTERM", syscall.SIGTERM, `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done`, 7},
		{"SIGINT", syscall.SIGINT, `trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.05; done`, 9},
		{"own exit", 0, `echo ready; exit 3`, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			ready := filepath.Join(tmp, strings.ReplaceAll(c.name, " ", "-")+".out")
			cmd := exec.Command(bin, "agent", "--exec", "--", "sh", "-c", "exec >>"+ready+"; "+c.script)
			cmd.Env = env
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.Now().Add(30 * time.Second)
			for {
				if b, _ := os.ReadFile(ready); strings.Contains(string(b), "ready") {
					break
				}
				if time.Now().After(deadline) {
					_ = cmd.Process.Kill()
					t.Fatalf("the child never started: %s", stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if c.sig != 0 {
				if err := cmd.Process.Signal(c.sig); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("the agent did not exit: %s", stderr.String())
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != c.status {
				t.Fatalf("exit %v, want status %d; stderr:\n%s", err, c.status, stderr.String())
			}
			if c.sig != 0 {
				if b, _ := os.ReadFile(ready); !strings.Contains(string(b), "got-") {
					t.Errorf("the child did not get the signal: %q", b)
				}
			}
			if !strings.Contains(stderr.String(), "starting the server without secrets") {
				t.Errorf("the agent did not say it runs without secrets:\n%s", stderr.String())
			}
		})
	}
}
