package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// lockedBuffer is the shared test buffer: safe for concurrent writes.
type lockedBuffer = testutil.Buffer

// pollUntil polls with a deadline (testutil.WaitFor).
var pollUntil = testutil.WaitFor

// TestServeReloadsDirectory runs `nbsecrets serve` in-process: a user
// added to the file can call the service without a restart, and a broken
// file is refused with a log line while the old directory stays.
func TestServeReloadsDirectory(t *testing.T) {
	srv := natstest.Start(t)
	dir := t.TempDir()
	signFile, curveFile := filepath.Join(dir, "sign.nk"), filepath.Join(dir, "curve.nk")
	must := func(kp nkeys.KeyPair, _ bool, err error) nkeys.KeyPair {
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	must(keyfile.LoadOrCreate(signFile, false, nkeys.PrefixByteAccount))
	curve := must(keyfile.LoadOrCreate(curveFile, true, nkeys.PrefixByteCurve))
	curvePub, _ := curve.PublicKey()
	users := map[string]nkeys.KeyPair{}
	for _, u := range []string{"alice", "bob"} {
		users[u] = must(keyfile.LoadOrCreate(filepath.Join(dir, u+".nk"), false, nkeys.PrefixByteUser))
	}
	wsKey, _ := nkeys.CreateCurveKeys()
	wsPub, _ := wsKey.PublicKey()
	dirFile := filepath.Join(dir, "directory.json")
	writeDir := func(ids ...string) {
		d := controlplane.Directory{Workspaces: []controlplane.Workspace{{ID: "ws-alice", Owner: "alice", CurveKey: wsPub}}}
		for _, id := range ids {
			pub, _ := users[id].PublicKey()
			d.Users = append(d.Users, controlplane.User{ID: id, PublicKey: pub})
		}
		b, _ := json.Marshal(d)
		if err := writeFileAtomic(dirFile, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeDir("alice")

	logs := &lockedBuffer{}
	env := &cliEnv{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: logs}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runServe(ctx, env, []string{"--nats", srv.ClientURL(), "--directory", dirFile,
			"--sign-key", signFile, "--curve-key", curveFile, "--log-level", "debug", "--health-addr", "127.0.0.1:0"})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	list := func(user string) error {
		c := controlplane.NewClient(nc, user, users[user], curvePub)
		lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer lcancel()
		_, err := c.List(lctx)
		return err
	}
	pollUntil(t, 20*time.Second, func() error { return list("alice") })
	health := healthURL(t, logs)
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "nbsecrets_service_ready 1"} {
		if code, body := httpGet(t, health+path); code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d %q, want 200 with %q", path, code, body, want)
		}
	}
	// A single replica takes the background lease at start.
	pollUntil(t, 20*time.Second, func() error {
		if _, body := httpGet(t, health+"/metrics"); !strings.Contains(body, "nbsecrets_service_lease_held 1") {
			return fmt.Errorf("metrics: %q", body)
		}
		return nil
	})
	if err := list("bob"); !errors.Is(err, controlplane.ErrUnauthenticated) {
		t.Fatalf("bob before the reload: %v", err)
	}
	pollUntil(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), "watching the directory file") {
			return errors.New("not watching yet")
		}
		return nil
	})

	writeDir("alice", "bob")
	pollUntil(t, 20*time.Second, func() error { return list("bob") })

	if err := os.WriteFile(dirFile, []byte(`{"users": [{"id": "bob", "publicKey": "nope"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "directory refused; keeping the previous one") {
			return fmt.Errorf("no refusal logged:\n%s", logs.String())
		}
		return nil
	})
	if !strings.Contains(logs.String(), "users[0].publicKey") {
		t.Errorf("the refusal does not name the field:\n%s", logs.String())
	}
	if err := list("alice"); err != nil {
		t.Fatalf("alice after a refused file: %v", err)
	}
}

func TestServeUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--nats", "nats://127.0.0.1:1"}, strings.NewReader(""), &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), "missing [--directory --sign-key --curve-key]") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}

// TestWatchDirectorySIGHUP: SIGHUP re-reads the directory file even when
// its bytes did not change (fsnotify and the poll would not), and a file
// that SIGHUP finds broken is refused with a log line, no crash.
func TestWatchDirectorySIGHUP(t *testing.T) {
	// Catch SIGHUP in the test too, so that one sent before watchDirectory
	// has called signal.Notify cannot end the test binary.
	mine := make(chan os.Signal, 16)
	signal.Notify(mine, syscall.SIGHUP)
	defer signal.Stop(mine)

	path := filepath.Join(t.TempDir(), "directory.json")
	good := []byte(`{"users": []}`)
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	applied := make(chan []byte, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchDirectory(ctx, path, good, log, func(b []byte) error {
			applied <- b
			if !json.Valid(b) {
				return errors.New("not JSON")
			}
			return nil
		})
	}()
	defer func() { cancel(); <-done }()

	// Signal until the watcher answers: its Notify may not be in place yet.
	hupUntil := func(what string, ok func() bool) {
		t.Helper()
		pollUntil(t, 20*time.Second, func() error {
			if ok() {
				return nil
			}
			_ = syscall.Kill(os.Getpid(), syscall.SIGHUP)
			return fmt.Errorf("no %s after SIGHUP", what)
		})
	}
	hupUntil("reload of unchanged bytes", func() bool {
		select {
		case b := <-applied:
			return bytes.Equal(b, good)
		default:
			return false
		}
	})
	if !strings.Contains(logs.String(), "trigger=SIGHUP") {
		t.Errorf("the reload does not say SIGHUP caused it:\n%s", logs.String())
	}

	// A broken file is refused; the watcher keeps running. (The file change
	// alone would trigger a reload too; the log line is what is checked.)
	if err := os.WriteFile(path, []byte(`{"users": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	hupUntil("refusal", func() bool {
		return strings.Contains(logs.String(), "directory refused; keeping the previous one")
	})
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	hupUntil("reload after the fix", func() bool {
		return strings.Count(logs.String(), "directory reloaded") >= 2
	})
}

// healthURL is the base URL serve's "health endpoint" log line gives.
func healthURL(t *testing.T, logs *lockedBuffer) string {
	t.Helper()
	var addr string
	pollUntil(t, 20*time.Second, func() error {
		for _, line := range strings.Split(logs.String(), "\n") {
			if _, rest, ok := strings.Cut(line, "health endpoint: addr="); ok {
				addr = strings.Fields(rest)[0]
				return nil
			}
		}
		return errors.New("no health endpoint logged")
	})
	return "http://" + addr
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestServeHealthNotReady: /readyz fails while the service is starting
// and once its NATS connection is gone, and /healthz does not.
func TestServeHealthNotReady(t *testing.T) {
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	h := &serveHealth{nc: nc}
	ts := httptest.NewServer(h.handler())
	defer ts.Close()
	if code, body := httpGet(t, ts.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Errorf("readyz before start: %d %q", code, body)
	}
	h.svc.Store(&controlplane.Service{})
	if code, _ := httpGet(t, ts.URL+"/readyz"); code != http.StatusOK {
		t.Errorf("readyz when started and connected: %d", code)
	}
	nc.Close()
	if code, body := httpGet(t, ts.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "CLOSED") {
		t.Errorf("readyz without NATS: %d %q", code, body)
	}
	if code, body := httpGet(t, ts.URL+"/metrics"); code != http.StatusOK || !strings.Contains(body, "nbsecrets_service_ready 0") || !strings.Contains(body, "nbsecrets_service_lease_held 0") {
		t.Errorf("metrics without NATS: %d %q", code, body)
	}
	if code, _ := httpGet(t, ts.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("healthz: %d", code)
	}
}
