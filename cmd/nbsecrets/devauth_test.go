package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestDevNATSRefusesStrangers performs issue 9's finding 1 against the real
// binary: `nbsecrets dev` is running, and a client on its loopback port
// tries what any local user could do before: connect without credentials,
// join the service's queue group to answer the CLI, and delete the
// JetStream streams. It is refused without credentials; with an agent's or
// a user's NATS key it may connect but may do none of those; the CLI and
// the agent work with theirs; and the keys are readable by their owner
// only. Run as root, a second uid (useradd) tries the port and the key
// files too.
func TestDevNATSRefusesStrangers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	state := filepath.Join(tmp, "state")
	env := append(os.Environ(), "JUPYTER_DATA_DIR="+filepath.Join(tmp, "jupyter"), "JUPYTER_RUNTIME_DIR="+filepath.Join(tmp, "runtime"))
	startDev(t, bin, env, "--state-dir", state, "--no-kernelspec")
	info, err := readDevInfo(state)
	if err != nil {
		t.Fatal(err)
	}

	// The CLI works with its key.
	cmd := exec.Command(bin, "secret", "create", "--state-dir", state, "DEV_TOKEN")
	cmd.Env, cmd.Stdin = env, strings.NewReader("dev-value")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("secret create: %v\n%s", err, out)
	}

	// No credentials: refused at connect.
	if nc, err := nats.Connect(info.NATSURL, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected to dev's NATS without credentials")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Fatalf("connect without credentials: %v, want an authorization violation", err)
	}

	// An agent's and a user's keys: connected, but the service's queue
	// group, its streams and the records are out of reach.
	for _, who := range []struct{ kind, id string }{{"workspaces", info.Workspace}, {"users", info.User}} {
		t.Run(who.kind, func(t *testing.T) {
			auth, err := devNATSOption(state, who.kind, who.id)
			if err != nil {
				t.Fatal(err)
			}
			violations := make(chan error, 16)
			nc, err := nats.Connect(info.NATSURL, auth, nats.NoReconnect(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				select {
				case violations <- err:
				default:
				}
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			answered := make(chan struct{}, 1)
			if _, err := nc.QueueSubscribe(controlplane.SubjectPrefix+"*", controlplane.QueueGroup, func(m *nats.Msg) {
				_ = m.Respond([]byte(`{"secret":{"id":"forged","name":"DEV_TOKEN","version":999}}`))
				answered <- struct{}{}
			}); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, violations, "subscription to \""+controlplane.SubjectPrefix+"*\"")

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			js, _ := jetstream.New(nc)
			for _, stream := range []string{protocol.StreamName(), "KV_" + controlplane.ServiceBucket} {
				if err := js.DeleteStream(ctx, stream); err == nil {
					t.Fatalf("deleted %s", stream)
				}
			}
			if err := nc.Publish("$KV."+protocol.Bucket+"."+info.Workspace+".forged", []byte("x")); err != nil {
				t.Fatal(err)
			}
			wantViolation(t, violations, "publish")
			select {
			case <-answered:
				t.Fatal("the impostor answered a request")
			default:
			}
		})
	}

	// The streams are still there, and the CLI still reaches the real
	// service (the impostors could not join its queue group).
	cmd = exec.Command(bin, "secret", "list", "--state-dir", state, "--json")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"DEV_TOKEN"`) || strings.Contains(string(out), "forged") {
		t.Fatalf("secret list after the attempts: %v\n%s", err, out)
	}

	// Keys: 0600 files in 0700 directories.
	for _, p := range []string{state, filepath.Join(state, "keys", "nats"), filepath.Join(state, "keys", "nats", "users")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v, mode %v; want no access for group and others", p, err, fi.Mode().Perm())
		}
	}
	for _, p := range []string{devNATSKeyPath(state, "service", ""), devNATSKeyPath(state, "workspaces", info.Workspace),
		devNATSKeyPath(state, "users", info.User), filepath.Join(state, devNATSAuthConf)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v; want mode 0600", p, err)
		}
	}

	t.Run("second uid", func(t *testing.T) {
		cred := secondUser(t)
		host, port, _ := net.SplitHostPort(strings.TrimPrefix(info.NATSURL, "nats://"))
		// A raw NATS client in Python as the other uid: connect without
		// credentials and try to join the service's queue group, then read
		// the user's key.
		script := `
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.recv(65536)
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB nbsecrets.api.v1.* nbsecrets-service 1\r\nPING\r\n')
data = b""
try:
    while b"PONG" not in data and b"-ERR" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as e:
    data += str(e).encode()
print(data.decode(errors="replace").strip())
try:
    open(sys.argv[3]).read()
    print("KEY READ")
except OSError as e:
    print("KEY REFUSED", type(e).__name__)
`
		c := exec.Command("/usr/bin/python3", "-c", script, host, port, devNATSKeyPath(state, "users", info.User))
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		c.Dir = "/"
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("attacker as uid %d: %v\n%s", cred.Uid, err, out)
		}
		got := string(out)
		if !strings.Contains(got, "Authorization Violation") || strings.Contains(got, "PONG") {
			t.Errorf("the second uid's raw connection: %q, want an authorization violation", got)
		}
		if !strings.Contains(got, "KEY REFUSED") {
			t.Errorf("the second uid read the user's NATS key: %q", got)
		}
	})
}

// wantViolation waits for a permissions violation about what.
func wantViolation(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(what)) {
					return
				}
			}
		case <-deadline:
			t.Fatalf("no permissions violation for %s", what)
		}
	}
}

var secondUserOnce sync.Once

// secondUser returns the credential of a local user other than the one the
// test runs as, made with useradd; it skips the test when not root.
func secondUser(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make and become a second user")
	}
	const name = "nbs-harden-test"
	secondUserOnce.Do(func() {
		if _, err := user.Lookup(name); err != nil {
			if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
				t.Logf("useradd: %v: %s", err, out)
			}
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("no second user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == os.Geteuid() {
		t.Fatalf("%s has the test's uid", name)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}
