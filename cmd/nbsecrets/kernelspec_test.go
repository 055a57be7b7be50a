package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestKernelspecCommand installs, reinstalls and uninstalls through the
// command, with JUPYTER_DATA_DIR. Not parallel: it sets the environment.
func TestKernelspecCommand(t *testing.T) {
	data, state := t.TempDir(), t.TempDir()
	t.Setenv("JUPYTER_DATA_DIR", data)
	t.Setenv("JUPYTER_PATH", "")
	t.Setenv("NBSECRETS_SOCKET", "")
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(data, "kernels", "python3", "kernel.json")
	argvHead := func() []string {
		t.Helper()
		b, err := os.ReadFile(spec)
		if err != nil {
			t.Fatal(err)
		}
		var s struct{ Argv []string }
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		if len(s.Argv) < 5 {
			t.Fatalf("argv %q", s.Argv)
		}
		if n := strings.Count(strings.Join(s.Argv, "\x00"), "\x00inject\x00"); n != 1 {
			t.Errorf("argv %q wraps %d times", s.Argv, n)
		}
		return s.Argv[:5]
	}

	code, stdout, stderr := runCmd(t, "kernelspec", "install", "--state-dir", state)
	if code != 0 || !strings.Contains(stdout, filepath.Join(data, "kernels", "python3")) {
		t.Fatalf("install: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if got, want := argvHead(), []string{bin, "inject", "--socket", filepath.Join(state, "agent.sock"), "--"}; !reflect.DeepEqual(got, want) {
		t.Errorf("argv starts %q, want %q", got, want)
	}

	t.Setenv("NBSECRETS_SOCKET", "/env/agent.sock")
	if code, _, stderr := runCmd(t, "kernelspec", "install", "--state-dir", state); code != 0 {
		t.Fatalf("reinstall: exit %d: %s", code, stderr)
	}
	if got := argvHead(); got[3] != "/env/agent.sock" {
		t.Errorf("after reinstall with NBSECRETS_SOCKET argv starts %q", got)
	}
	other := t.TempDir()
	if code, _, stderr := runCmd(t, "kernelspec", "install", "--socket", "/flag.sock", "--data-dir", other, "--name", "python3"); code != 0 {
		t.Fatalf("install --data-dir: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(other, "kernels", "python3", "kernel.json")); err != nil {
		t.Errorf("--data-dir not used: %v", err)
	}

	if code, _, stderr := runCmd(t, "kernelspec", "uninstall"); code != 0 {
		t.Fatalf("uninstall: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(spec); !os.IsNotExist(err) {
		t.Errorf("after uninstall: %v", err)
	}
	code, _, stderr = runCmd(t, "kernelspec", "uninstall")
	if code != 1 || !strings.Contains(stderr, "not installed by nbsecrets") {
		t.Errorf("second uninstall: exit %d, stderr %q; want 1 and 'not installed by nbsecrets'", code, stderr)
	}
	if code, _, stderr := runCmd(t, "kernelspec", "uninstall", "--data-dir", other); code != 0 {
		t.Errorf("uninstall --data-dir: exit %d: %s", code, stderr)
	}
}

func TestKernelspecUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"kernelspec"}, 2, "Usage: nbsecrets kernelspec install"},
		{[]string{"kernelspec", "frobnicate"}, 2, `unknown subcommand "frobnicate"`},
		{[]string{"kernelspec", "install", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"kernelspec", "uninstall", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"kernelspec", "install", "--help"}, 0, "-data-dir"},
		{[]string{"kernelspec", "--help"}, 0, "Usage: nbsecrets kernelspec install"},
		{[]string{"kernelspec", "install", "--name", "../x", "--data-dir", "/nonexistent"}, 1, "invalid kernelspec name"},
	}
	for _, tt := range tests {
		code, stdout, stderr := runCmd(t, tt.args...)
		if code != tt.code || !strings.Contains(stdout+stderr, tt.want) {
			t.Errorf("%q: exit %d, output %q; want exit %d and %q", tt.args, code, stdout+stderr, tt.code, tt.want)
		}
	}
}
