package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// keyFile creates a key file (0600) in dir and returns the key pair, its
// public key and the file's path.
func keyFile(t *testing.T, dir, name string, curve bool, kind nkeys.PrefixByte) (nkeys.KeyPair, string, string) {
	t.Helper()
	path := filepath.Join(dir, name)
	kp, _, err := keyfile.LoadOrCreate(path, curve, kind)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return kp, pub, path
}

// TestSecretAgainstDeployedService: the secret command against a service
// on a NATS server that loads the generated per-account authorisation: the
// caller is whoever holds the user's keys; another user's NATS key with
// alice's name is refused.
func TestSecretAgainstDeployedService(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, curve bool, kind nkeys.PrefixByte) (nkeys.KeyPair, string, string) {
		t.Helper()
		return keyFile(t, dir, name, curve, kind)
	}
	sign, _, _ := mk("sign.nk", false, nkeys.PrefixByteAccount)
	curve, curvePub, _ := mk("curve.nk", true, 0)
	_, wsPub, _ := mk("ws.curve.nk", true, 0)
	svcNATS, svcNATSPub, _ := mk("svc.nats.nk", false, nkeys.PrefixByteUser)
	_, agentNATSPub, _ := mk("agent.nats.nk", false, nkeys.PrefixByteUser)
	_, aliceSignPub, aliceSignFile := mk("alice.nk", false, nkeys.PrefixByteUser)
	_, aliceNATSPub, aliceNATSFile := mk("alice.nats.nk", false, nkeys.PrefixByteUser)
	_, bobSignPub, _ := mk("bob.nk", false, nkeys.PrefixByteUser)
	_, bobNATSPub, bobNATSFile := mk("bob.nats.nk", false, nkeys.PrefixByteUser)
	d := &controlplane.Directory{
		Users:      []controlplane.User{{ID: "alice", PublicKey: aliceSignPub}, {ID: "bob", PublicKey: bobSignPub}},
		Workspaces: []controlplane.Workspace{{ID: "ws-alice", Owner: "alice", CurveKey: wsPub}},
	}
	auth, err := natsauth.Generate(natsauth.Config{Directory: d, ServiceKeys: []string{svcNATSPub},
		AgentKeys: map[string]string{"ws-alice": agentNATSPub},
		UserKeys:  map[string]string{"alice": aliceNATSPub, "bob": bobNATSPub}})
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, auth, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := natstest.StartConfig(t, conf, func(o *server.Options) {
		o.Host, o.Port, o.JetStream, o.StoreDir = "127.0.0.1", -1, true, filepath.Join(dir, "js")
	})
	nc, err := nats.Connect(ns.ClientURL(), nats.Nkey(svcNATSPub, svcNATS.Sign))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := controlplane.New(controlplane.Options{Conn: nc, SignKey: sign, CurveKey: curve, Directory: d, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	cli := func(stdin string, natsKey, user string, args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		full := append([]string{"secret"}, args...)
		full = append(full, "--nats", ns.ClientURL(), "--nkey", natsKey, "--user", user, "--user-key", aliceSignFile, "--service-curve-key", curvePub)
		code := run(full, strings.NewReader(stdin), &out, &errb)
		return out.String(), errb.String(), code
	}
	value := "deployed-" + randHex(t)
	if out, errs, code := cli(value, aliceNATSFile, "alice", "create", "DEPLOYED"); code != 0 {
		t.Fatalf("create: exit %d: %s %s", code, out, errs)
	}
	out, errs, code := cli("", aliceNATSFile, "alice", "list")
	if code != 0 || !strings.Contains(out, "DEPLOYED") {
		t.Fatalf("list: exit %d: %s %s", code, out, errs)
	}
	if strings.Contains(out+errs, value) {
		t.Error("list printed a value")
	}
	// A request that claims to be bob but is signed with alice's key (all
	// the cli helper holds) is refused: the caller is whoever holds the key.
	_, _, code = cli("", bobNATSFile, "bob", "list")
	if code == 0 {
		t.Error("a request as bob signed with alice's key was accepted")
	}
	// Missing flags are named.
	var errb bytes.Buffer
	code = run([]string{"secret", "list", "--nats", ns.ClientURL()}, strings.NewReader(""), &bytes.Buffer{}, &errb)
	if code == 0 || !strings.Contains(errb.String(), "--service-curve-key, --user, --user-key") {
		t.Errorf("missing flags: exit %d: %s", code, errb.String())
	}
}
