package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// secretInstance is a dev-like state dir in front of a real nats-server and
// a running secrets service: dev.json, keys/users/{alice,bob}.nk, and one
// workspace "ws1" owned by alice in project "ml" (bob is a member), in
// community "research" (alice is its admin).
type secretInstance struct {
	dir   string
	nc    *nats.Conn
	sign  nkeys.KeyPair
	curve nkeys.KeyPair
	ws    nkeys.KeyPair
}

func newSecretInstance(t *testing.T) *secretInstance {
	t.Helper()
	srv := natstest.Start(t)
	in := &secretInstance{dir: t.TempDir()}
	var err error
	dir := &controlplane.Directory{Projects: []controlplane.Project{{ID: "ml", Members: []controlplane.Member{
		{User: "alice", Role: controlplane.RoleAdmin}, {User: "bob", Role: controlplane.RoleMember}}}},
		Communities: []controlplane.Community{{ID: "research", Admins: []string{"alice"}, Projects: []string{"ml"}}}}
	for _, u := range []string{"alice", "bob"} {
		kp, created, err := keyfile.LoadOrCreate(filepath.Join(in.dir, "keys", "users", u+".nk"), false, nkeys.PrefixByteUser)
		if err != nil || !created {
			t.Fatalf("user key: %v (created %v)", err, created)
		}
		pub, _ := kp.PublicKey()
		dir.Users = append(dir.Users, controlplane.User{ID: u, PublicKey: pub})
	}
	if in.sign, err = nkeys.CreateAccount(); err != nil {
		t.Fatal(err)
	}
	if in.curve, err = nkeys.CreateCurveKeys(); err != nil {
		t.Fatal(err)
	}
	if in.ws, err = nkeys.CreateCurveKeys(); err != nil {
		t.Fatal(err)
	}
	wsPub, _ := in.ws.PublicKey()
	dir.Workspaces = []controlplane.Workspace{{ID: "ws1", Owner: "alice", Projects: []string{"ml"}, CurveKey: wsPub}}

	if in.nc, err = nats.Connect(srv.ClientURL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.nc.Close)
	svc, err := controlplane.New(controlplane.Options{Conn: in.nc, SignKey: in.sign, CurveKey: in.curve, Directory: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	signPub, _ := in.sign.PublicKey()
	sealPub, _ := in.curve.PublicKey()
	in.writeInfo(t, devInfo{PID: os.Getpid(), NATSURL: srv.ClientURL(), Workspace: "ws1", User: "alice",
		SignKey: signPub, SealKey: sealPub})
	return in
}

func (in *secretInstance) writeInfo(t *testing.T, info devInfo) {
	t.Helper()
	b, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(filepath.Join(in.dir, devInfoFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// secretRun runs `nbsecrets secret ARGS... --state-dir DIR` in-process with
// stdin as standard input.
func (in *secretInstance) run(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	args = append(append([]string{"secret"}, args...), "--state-dir", in.dir)
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// list returns what `secret list --json` prints.
func (in *secretInstance) list(t *testing.T, as string) []controlplane.SecretInfo {
	t.Helper()
	code, out, errs := in.run("", "list", "--json", "--as", as)
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, errs)
	}
	var list []controlplane.SecretInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	return list
}

// record opens ws1's record of the secret called name.
func (in *secretInstance) record(t *testing.T, name string) *protocol.Secret {
	t.Helper()
	var id string
	for _, s := range in.list(t, "alice") {
		if s.Name == name {
			id = s.ID
		}
	}
	if id == "" {
		t.Fatalf("no secret %s in the list", name)
	}
	return in.recordByID(t, id)
}

func (in *secretInstance) recordByID(t *testing.T, id string) *protocol.Secret {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(in.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, protocol.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	key := protocol.RecordKey("ws1", id)
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatalf("record %s: %v", key, err)
	}
	signPub, _ := in.sign.PublicKey()
	sealPub, _ := in.curve.PublicKey()
	o, err := protocol.NewOpener("ws1", []string{signPub}, sealPub, in.ws)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := o.Open(key, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

func TestSecretCommandLifecycle(t *testing.T) {
	in := newSecretInstance(t)
	const value = "s3cr3t-value-c0ffee"

	code, out, errs := in.run(value+"\n", "create", "DB_PASSWORD")
	if code != 0 || !strings.Contains(out, "Created secret DB_PASSWORD (private, version 1)") {
		t.Fatalf("create: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	sec := in.record(t, "DB_PASSWORD")
	if sec.Op != protocol.OpPut || string(sec.Value) != value || sec.Version != 1 {
		t.Fatalf("record after create: %s v%d value %q (one trailing newline should be stripped)", sec.Op, sec.Version, string(sec.Value))
	}
	id := sec.SecretID

	// Flags before the name, the value from a file with a CRLF ending.
	file := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(file, []byte("line one\nline two\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var outb, errb bytes.Buffer
	code = run([]string{"secret", "update", "--state-dir", in.dir, "--from-file", file, "DB_PASSWORD"}, strings.NewReader(""), &outb, &errb)
	if code != 0 || !strings.Contains(outb.String(), "version 2") {
		t.Fatalf("update: exit %d\nstdout: %s\nstderr: %s", code, outb.String(), errb.String())
	}
	if sec := in.recordByID(t, id); string(sec.Value) != "line one\nline two" || sec.Version != 2 {
		t.Fatalf("record after update: v%d %q", sec.Version, string(sec.Value))
	}

	// A project secret, created by bob.
	if code, out, errs := in.run("tok", "create", "API_TOKEN", "--project", "ml", "--as", "bob"); code != 0 || !strings.Contains(out, "project ml") {
		t.Fatalf("project create: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if sec := in.record(t, "API_TOKEN"); string(sec.Value) != "tok" || sec.Scope.Kind != protocol.ScopeProject {
		t.Fatalf("project record: %+v", sec.Record)
	}

	code, out, errs = in.run("", "list")
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME SCOPE VERSION UPDATED BY ACCESS SHARED-WITH WORKSPACES NOTE" {
		t.Fatalf("list table:\n%s", out)
	}
	if f := strings.Fields(lines[1]); len(f) != 9 || f[0] != "DB_PASSWORD" || f[1] != "user:alice" || f[2] != "2" || f[4] != "alice" || f[5] != "edit" || f[7] != "ws1" {
		t.Fatalf("list row %q", lines[1])
	}
	if f := strings.Fields(lines[2]); len(f) != 9 || f[0] != "API_TOKEN" || f[1] != "project:ml" || f[2] != "1" || f[4] != "bob" {
		t.Fatalf("list row %q", lines[2])
	}
	if _, err := time.Parse(time.RFC3339, strings.Fields(lines[1])[3]); err != nil {
		t.Fatalf("UPDATED column: %v", err)
	}

	code, out, errs = in.run("", "delete", "DB_PASSWORD")
	if code != 0 || strings.TrimSpace(out) != "Secret destroyed" {
		t.Fatalf("delete: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if sec := in.recordByID(t, id); sec.Op != protocol.OpDelete || sec.Version != 3 {
		t.Fatalf("record after delete: %s v%d", sec.Op, sec.Version)
	}
	if list := in.list(t, "alice"); len(list) != 1 || list[0].Name != "API_TOKEN" {
		t.Fatalf("list after delete: %+v", list)
	}
	if list := in.list(t, "bob"); len(list) != 1 {
		t.Fatalf("bob's list: %+v", list)
	}
}

// TestSecretCommandsRenameCloneShare: the other operations from the
// command line, with optional values.
func TestSecretCommandsRenameCloneShare(t *testing.T) {
	in := newSecretInstance(t)
	steps := []struct {
		stdin string
		args  []string
		want  string
	}{
		{"v1", []string{"create", "OLD", "--project", "ml", "--as", "bob"}, "Created secret OLD (project ml, version 1)"},
		{"", []string{"update", "OLD", "--rename", "NEW", "--as", "bob"}, "Renamed secret OLD to NEW (project ml, version 2)"},
		{"v2\n", []string{"update", "--rename", "NEWER", "NEW"}, "Renamed secret NEW to NEWER with a new value (project ml, version 3)"},
		{"", []string{"clone", "NEWER", "MY_COPY"}, "Cloned secret NEWER to MY_COPY (private, same value, version 1)"},
		{"other", []string{"clone", "NEWER", "ML_COPY", "--project", "ml"}, "Cloned secret NEWER to ML_COPY (project ml, new value, version 1)"},
		{"", []string{"share", "NEWER", "--community", "research"}, "Shared secret NEWER with community research (version 4, 1 workspaces)"},
		{"", []string{"unshare", "NEWER", "--community", "research"}, "Withdrew secret NEWER from community research (version 5, 1 workspaces)"},
		{"mine", []string{"create", "NEWER"}, "Created secret NEWER (private, version 1)"},
		{"p", []string{"update", "NEWER", "--project", "ml"}, "Updated secret NEWER (project ml, version 6)"},
	}
	for _, s := range steps {
		code, out, errs := in.run(s.stdin, s.args...)
		if code != 0 || strings.TrimSpace(out) != s.want {
			t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s\nwant %q", s.args, code, out, errs, s.want)
		}
	}
	byName := map[string]string{}
	for _, s := range in.list(t, "alice") {
		byName[s.Scope.String()+"/"+s.Name] = s.ID
	}
	if sec := in.recordByID(t, byName["user:alice/MY_COPY"]); string(sec.Value) != "v2" {
		t.Fatal("the clone does not have the source's value")
	}
	if sec := in.recordByID(t, byName["project:ml/ML_COPY"]); string(sec.Value) != "other" {
		t.Fatal("the clone does not have its new value")
	}
	if sec := in.recordByID(t, byName["project:ml/NEWER"]); string(sec.Value) != "p" || sec.Name != "NEWER" {
		t.Fatalf("the project secret: %s v%d", sec.Name, sec.Version)
	}
	// Both NEWER are listed; the project one is marked as hidden.
	code, out, _ := in.run("", "list")
	if code != 0 || !strings.Contains(out, "hidden-by:user:alice") || strings.Count(out, "NEWER ") != 2 {
		t.Fatalf("list:\n%s", out)
	}
	for _, v := range []string{"v1", "v2", "other", "mine"} {
		if strings.Contains(out, " "+v+" ") {
			t.Fatalf("list shows a value")
		}
	}

	code, _, errs := in.run("", "share", "NEWER", "--community", "research", "--as", "bob")
	if code != 1 || !strings.Contains(errs, "only an admin of community \"research\"") {
		t.Fatalf("share by a non-admin: exit %d: %s", code, errs)
	}
	code, _, errs = in.run("", "share", "NEWER")
	if code != 2 || !strings.Contains(errs, "missing --community") {
		t.Fatalf("share without a community: exit %d: %s", code, errs)
	}
	code, _, errs = in.run("", "update", "NEWER", "--rename", "9BAD")
	if code != 2 || !strings.Contains(errs, "must start with a Latin letter") {
		t.Fatalf("rename to a bad name: exit %d: %s", code, errs)
	}
	code, _, errs = in.run("", "clone", "NEWER")
	if code != 2 {
		t.Fatalf("clone without NEW: exit %d: %s", code, errs)
	}
}

// TestSecretCommandsNoteHyphenNames: a name with a hyphen is accepted, with a
// note on standard error naming the shell-safe spelling; a shell identifier
// gets no note; standard output is the same either way.
func TestSecretCommandsNoteHyphenNames(t *testing.T) {
	in := newSecretInstance(t)
	steps := []struct {
		stdin string
		args  []string
		want  string
		note  bool
	}{
		{"hyphen-value-7f3a", []string{"create", "DB-PASSWORD"}, "Created secret DB-PASSWORD (private, version 1)", true},
		{"", []string{"clone", "DB-PASSWORD", "DB-COPY"}, "Cloned secret DB-PASSWORD to DB-COPY (private, same value, version 1)", true},
		{"", []string{"update", "DB-COPY", "--rename", "DB_COPY"}, "Renamed secret DB-COPY to DB_COPY (private, version 2)", false},
		{"", []string{"update", "DB_COPY", "--rename", "DB-COPY2"}, "Renamed secret DB_COPY to DB-COPY2 (private, version 3)", true},
		{"plain-value-91c2", []string{"create", "DB_PASSWORD"}, "Created secret DB_PASSWORD (private, version 1)", false},
	}
	for _, s := range steps {
		code, out, errs := in.run(s.stdin, s.args...)
		if code != 0 || strings.TrimSpace(out) != s.want {
			t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s\nwant %q", s.args, code, out, errs, s.want)
		}
		newName := s.args[1]
		if s.args[0] == "clone" {
			newName = s.args[2]
		} else if s.args[0] == "update" {
			newName = s.args[3]
		}
		hasNote := strings.Contains(errs, "note: "+newName+" has a hyphen") &&
			strings.Contains(errs, strings.ReplaceAll(newName, "-", "_")+" has none of these limits")
		if hasNote != s.note || (!s.note && errs != "") {
			t.Errorf("%v: stderr %q, want a hyphen note: %v", s.args, errs, s.note)
		}
		if strings.Contains(errs, "value-") {
			t.Errorf("%v: stderr shows a value", s.args)
		}
	}
}

func TestSecretCommandErrors(t *testing.T) {
	in := newSecretInstance(t)
	if code, _, errs := in.run("v1", "create", "EXISTING"); code != 0 {
		t.Fatalf("create: %s", errs)
	}
	cases := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"short name", "v", []string{"create", "ab"}, 2, "shorter than 3 characters"},
		{"bad first character", "v", []string{"create", "9LIVES"}, 2, "must start with a Latin letter"},
		{"bad character", "v", []string{"create", "DB.PASS"}, 2, "character 3 is not a letter, digit, hyphen or underscore"},
		{"reserved name", "v", []string{"create", "LD_PRELOAD"}, 2, "reserved prefix LD_"},
		{"missing name", "v", []string{"create"}, 2, "missing the secret's NAME"},
		{"value on the command line", "", []string{"create", "GOOD_NAME", "hunter2"}, 2, "never from the command line"},
		{"empty value", "", []string{"create", "GOOD_NAME"}, 1, "empty value from standard input"},
		{"only a newline", "\n", []string{"create", "GOOD_NAME"}, 1, "empty value"},
		{"NUL in value", "a\x00b", []string{"create", "GOOD_NAME"}, 1, "NUL byte"},
		{"value too large", strings.Repeat("x", protocol.MaxValueSize+1), []string{"create", "GOOD_NAME"}, 1, "too large"},
		{"missing file", "", []string{"create", "GOOD_NAME", "--from-file", "/nonexistent/value"}, 1, "no such file"},
		{"exists", "v", []string{"create", "EXISTING"}, 1, "already exists"},
		{"missing secret", "v", []string{"update", "MISSING"}, 1, "secret not found"},
		{"delete missing secret", "", []string{"delete", "MISSING"}, 1, "secret not found"},
		{"not a member", "v", []string{"create", "GOOD_NAME", "--project", "other"}, 1, "not a member of project"},
		{"unknown user", "v", []string{"create", "GOOD_NAME", "--as", "mallory"}, 1, "no key for user mallory"},
		{"bad user id", "v", []string{"create", "GOOD_NAME", "--as", "../alice"}, 1, "invalid identifier"},
		{"unknown command", "", []string{"rotate"}, 2, "unknown command"},
		{"unknown flag", "", []string{"list", "--verbose"}, 2, "flag provided but not defined"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := in.run(c.stdin, c.args...)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr to say %q", code, c.code, out, errs, c.want)
			}
			if c.stdin != "" && strings.Contains(out+errs, c.stdin) && len(c.stdin) > 2 {
				t.Fatalf("output holds the value")
			}
		})
	}
	if list := in.list(t, "alice"); len(list) != 1 {
		t.Fatalf("refused commands changed something: %+v", list)
	}

	for _, args := range [][]string{{"--help"}, {"create", "--help"}, {"list", "-h"}} {
		if code, _, errs := in.run("", args...); code != 0 {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}
}

func TestSecretCommandUnreachable(t *testing.T) {
	in := newSecretInstance(t)
	// A server that is gone: its port is closed.
	gone := natstest.Start(t)
	url := gone.ClientURL()
	gone.Shutdown()
	gone.WaitForShutdown()
	signPub, _ := in.sign.PublicKey()
	sealPub, _ := in.curve.PublicKey()
	in.writeInfo(t, devInfo{NATSURL: url, User: "alice", SignKey: signPub, SealKey: sealPub})

	start := time.Now()
	code, _, errs := in.run("", "list")
	if code != 1 || !strings.Contains(errs, "cannot reach the instance's NATS server at "+url) || !strings.Contains(errs, devInfoFile) {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if d := time.Since(start); d > 2*connectTimeout+time.Second {
		t.Fatalf("took %v to give up", d)
	}

	if err := os.Remove(filepath.Join(in.dir, devInfoFile)); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := in.run("", "list"); code != 1 || !strings.Contains(errs, "no nbsecrets instance in") {
		t.Fatalf("no instance: exit %d: %s", code, errs)
	}
}

func TestSecretCommandRefusesLooseKey(t *testing.T) {
	in := newSecretInstance(t)
	key := filepath.Join(in.dir, "keys", "users", "alice.nk")
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := in.run("v", "create", "GOOD_NAME")
	if code != 1 || !strings.Contains(errs, "chmod 600") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

func TestReadValue(t *testing.T) {
	for in, want := range map[string]string{
		"v\n":      "v",
		"v\r\n":    "v",
		"v\n\n":    "v\n",
		"v":        "v",
		"a\nb\n":   "a\nb",
		"trail \n": "trail ",
	} {
		env := &cliEnv{stdin: strings.NewReader(in), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
		got, err := readValue(env, "")
		if err != nil || string(got) != want {
			t.Errorf("readValue(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	env := &cliEnv{stdin: strings.NewReader("bad\xffutf8"), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	if _, err := readValue(env, ""); !errors.Is(err, protocol.ErrInvalidValue) || strings.Contains(err.Error(), "bad") {
		t.Errorf("invalid UTF-8: %v", err)
	}
}
