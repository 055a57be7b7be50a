package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

func TestNatsConfig(t *testing.T) {
	tmp := t.TempDir()
	userKey, _ := nkeys.CreateUser()
	userPub, _ := userKey.PublicKey()
	wsKey, _ := nkeys.CreateCurveKeys()
	wsPub, _ := wsKey.PublicKey()
	dir := controlplane.Directory{
		Users:      []controlplane.User{{ID: "alice", PublicKey: userPub}},
		Workspaces: []controlplane.Workspace{{ID: "ws1", Owner: "alice", CurveKey: wsPub}},
	}
	dirFile := filepath.Join(tmp, "directory.json")
	b, _ := json.Marshal(dir)
	if err := os.WriteFile(dirFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	keys, out := filepath.Join(tmp, "keys"), filepath.Join(tmp, "nbsecrets-auth.conf")
	args := []string{"nats-config", "--directory", dirFile, "--out", out, "--keys", keys}

	var stdout, stderr bytes.Buffer
	if code := run(args, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if n := strings.Count(stderr.String(), "created the NATS key"); n != 3 {
		t.Errorf("want 3 keys created, stderr:\n%s", stderr.String())
	}
	for _, p := range []string{out, filepath.Join(keys, "service.nk"), filepath.Join(keys, "workspaces", "ws1.nk"), filepath.Join(keys, "users", "alice.nk")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %#o, want 0600", p, st.Mode().Perm())
		}
	}
	conf, _ := os.ReadFile(out)
	agent, err := keyfile.Load(filepath.Join(keys, "workspaces", "ws1.nk"))
	if err != nil {
		t.Fatal(err)
	}
	agentPub, _ := agent.PublicKey()
	if !bytes.Contains(conf, []byte(agentPub)) || !bytes.Contains(conf, []byte(natsauth.WorkspaceAccount("ws1"))) {
		t.Errorf("configuration lacks the agent's key or account:\n%s", conf)
	}
	if bytes.Contains(conf, []byte(userPub)) {
		t.Error("the user's request-signing key became a NATS key")
	}
	// nats-server accepts it, included from a server configuration.
	main := filepath.Join(tmp, "main.conf")
	if err := os.WriteFile(main, []byte("port: -1\ninclude \"nbsecrets-auth.conf\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(main)
	if err != nil {
		t.Fatalf("nats-server refuses the configuration: %v", err)
	}
	if len(opts.Nkeys) != 3 {
		t.Errorf("nats-server sees %d nkey users, want 3", len(opts.Nkeys))
	}

	// Again: every key is kept, the output is the same.
	stderr.Reset()
	if code := run(args, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("second run: exit %d: %s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "created") {
		t.Errorf("second run created keys:\n%s", stderr.String())
	}
	if again, _ := os.ReadFile(out); !bytes.Equal(again, conf) {
		t.Error("second run wrote a different configuration")
	}

	// Without --out it goes to standard output.
	stdout.Reset()
	if code := run([]string{"nats-config", "--directory", dirFile, "--keys", keys}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !bytes.Equal(stdout.Bytes(), conf) {
		t.Error("standard output differs from --out")
	}

	for _, bad := range [][]string{{"nats-config"}, {"nats-config", "--directory", dirFile, "extra"}} {
		if code := run(bad, strings.NewReader(""), &stdout, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
	stderr.Reset()
	if code := run([]string{"nats-config", "--help"}, strings.NewReader(""), &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "--keys") {
		t.Errorf("--help: exit %d:\n%s", code, stderr.String())
	}
}
