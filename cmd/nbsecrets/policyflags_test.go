package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/agent"
)

func parsePolicy(t *testing.T, args ...string) (agent.Policy, *agent.JupyterServer, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	build := policyFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return build()
}

func TestPolicyFlags(t *testing.T) {
	t.Setenv("JUPYTER_TOKEN", "from-env")
	pol, js, err := parsePolicy(t)
	if err != nil || js != nil {
		t.Fatalf("defaults: %v %v", err, js)
	}
	want := agent.Policy{OnChange: agent.ActReseed, OnRevoke: agent.ActReseed, BusyWait: defaultBusyWait,
		BusyAction: agent.BusyRestart, MinInterval: defaultRestartWindow}
	if pol != want || pol.Restarts() {
		t.Errorf("defaults: %+v, want %+v", pol, want)
	}

	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, js, err = parsePolicy(t, "--on-change", "reseed-or-restart", "--on-revoke", "restart", "--busy-wait", "1m",
		"--busy-action", "give-up", "--splay", "10s", "--restart-window", "0", "--jupyter-url", "http://127.0.0.1:8888/",
		"--jupyter-token-file", tok)
	if err != nil {
		t.Fatal(err)
	}
	want = agent.Policy{OnChange: agent.ActReseedOrRestart, OnRevoke: agent.ActRestart, BusyWait: time.Minute,
		BusyAction: agent.BusyGiveUp, Splay: 10 * time.Second}
	if pol != want || js == nil || js.URL != "http://127.0.0.1:8888/" || js.Token != "from-file" {
		t.Errorf("got %+v %+v", pol, js)
	}
	if _, js, _ = parsePolicy(t, "--jupyter-url", "http://127.0.0.1:8888/"); js == nil || js.Token != "from-env" {
		t.Errorf("token from $JUPYTER_TOKEN: %+v", js)
	}

	t.Setenv("NBSECRETS_ON_CHANGE", "restart")
	t.Setenv("NBSECRETS_RESTART_WINDOW", "1m")
	if pol, _, err = parsePolicy(t); err != nil || pol.OnChange != agent.ActRestart || pol.MinInterval != time.Minute {
		t.Errorf("from the environment: %+v %v", pol, err)
	}
	if pol, _, _ = parsePolicy(t, "--on-change", "reseed"); pol.OnChange != agent.ActReseed {
		t.Errorf("the flag does not win over the environment: %+v", pol)
	}

	for _, bad := range [][]string{
		{"--on-change", "bounce"},
		{"--on-revoke", "reseed-or-restart"},
		{"--busy-action", "wait"},
		{"--splay", "-1s"},
		{"--jupyter-token-file", tok},
		{"--jupyter-url", "http://x/", "--jupyter-token-file", filepath.Join(t.TempDir(), "missing")},
	} {
		if _, _, err := parsePolicy(t, bad...); err == nil {
			t.Errorf("%v: no error", bad)
		} else if strings.Contains(err.Error(), "from-file") {
			t.Errorf("%v: the error quotes the token", bad)
		}
	}
	t.Setenv("NBSECRETS_BUSY_WAIT", "soon")
	if _, _, err := parsePolicy(t); err == nil || !strings.Contains(err.Error(), "NBSECRETS_BUSY_WAIT") {
		t.Errorf("bad $NBSECRETS_BUSY_WAIT: %v", err)
	}
}
