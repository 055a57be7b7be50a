package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// TestAgentFollowsDirectory runs `nbsecrets serve` and `nbsecrets agent
// --directory` in-process on one directory file, as a deployment sharing it
// would: when the workspace joins a project in the file, the running agent
// takes the project's secrets; when it leaves, they go. No restart.
func TestAgentFollowsDirectory(t *testing.T) {
	srv := natstest.Start(t)
	dir := t.TempDir()
	key := func(name string, curve bool, kind nkeys.PrefixByte) (nkeys.KeyPair, string, string) {
		t.Helper()
		return keyFile(t, dir, name, curve, kind)
	}
	_, signPub, signFile := key("sign.nk", false, nkeys.PrefixByteAccount)
	_, curvePub, curveFile := key("curve.nk", true, nkeys.PrefixByteCurve)
	alice, alicePub, _ := key("alice.nk", false, nkeys.PrefixByteUser)
	bob, bobPub, _ := key("bob.nk", false, nkeys.PrefixByteUser)
	_, wsPub, wsFile := key("ws-bob.curve.nk", true, nkeys.PrefixByteCurve)
	dirFile := filepath.Join(dir, "directory.json")
	writeDir := func(bobInML bool) {
		t.Helper()
		w := controlplane.Workspace{ID: "ws-bob", Owner: "bob", Projects: []string{}, CurveKey: wsPub}
		if bobInML {
			w.Projects = []string{"ml"}
		}
		b, _ := json.Marshal(controlplane.Directory{
			Users: []controlplane.User{{ID: "alice", PublicKey: alicePub}, {ID: "bob", PublicKey: bobPub}},
			Projects: []controlplane.Project{{ID: "ml", Members: []controlplane.Member{
				{User: "alice", Role: controlplane.RoleAdmin}, {User: "bob", Role: controlplane.RoleMember}}}},
			Workspaces: []controlplane.Workspace{w},
		})
		if err := writeFileAtomic(dirFile, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeDir(false)

	ctx, cancel := context.WithCancel(context.Background())
	svcLogs, agentLogs := &lockedBuffer{}, &lockedBuffer{}
	svcDone, agentDone := make(chan error, 1), make(chan error, 1)
	go func() {
		env := &cliEnv{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: svcLogs}
		svcDone <- runServe(ctx, env, []string{"--nats", srv.ClientURL(), "--directory", dirFile,
			"--sign-key", signFile, "--curve-key", curveFile})
	}()
	sock := filepath.Join(dir, "agent.sock")
	go func() {
		env := &cliEnv{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: agentLogs}
		agentDone <- runAgent(ctx, env, []string{"--nats", srv.ClientURL(), "--workspace", "ws-bob",
			"--directory", dirFile, "--service-key", signPub, "--service-curve-key", curvePub,
			"--workspace-key", wsFile, "--runtime-dir", t.TempDir(), "--socket", sock,
			"--state-file", filepath.Join(dir, "state.json"), "--log-level", "debug"})
	}()
	t.Cleanup(func() {
		cancel()
		for name, done := range map[string]chan error{"serve": svcDone, "agent": agentDone} {
			if err := <-done; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	create := func(user string, kp nkeys.KeyPair, name, project string) {
		t.Helper()
		pollUntil(t, 20*time.Second, func() error { // the service may not be up yet
			cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer ccancel()
			_, err := controlplane.NewClient(nc, user, kp, curvePub).Create(cctx, name, []byte(name+"-"+randHex(t)), controlplane.CreateOptions{Project: project})
			return err
		})
	}
	create("alice", alice, "ML_TOKEN", "ml")
	create("bob", bob, "BOB_OWN", "")

	holds := func(want ...string) func() error {
		return func() error {
			st, _, err := fetchStatus(context.Background(), sock)
			if err != nil {
				return err
			}
			var got []string
			for _, s := range st.Secrets {
				got = append(got, s.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("the agent holds %v, want %v", got, want)
			}
			return nil
		}
	}
	pollUntil(t, 20*time.Second, holds("BOB_OWN"))
	pollUntil(t, 10*time.Second, func() error {
		if !strings.Contains(agentLogs.String(), "watching the directory file") {
			return fmt.Errorf("the agent is not watching its directory file yet")
		}
		return nil
	})

	writeDir(true)
	pollUntil(t, 20*time.Second, holds("BOB_OWN", "ML_TOKEN"))
	if st, _, err := fetchStatus(context.Background(), sock); err != nil || st.Owner != "bob" || !slices.Equal(st.Projects, []string{"ml"}) {
		t.Errorf("status does not show the new access: %+v, %v", st, err)
	}
	writeDir(false)
	pollUntil(t, 20*time.Second, holds("BOB_OWN"))

	// Bad files change nothing: a broken one, and one without the workspace.
	if err := writeFileAtomic(dirFile, []byte(`{"users": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 20*time.Second, func() error {
		if !strings.Contains(agentLogs.String(), "directory refused; keeping the previous one") {
			return fmt.Errorf("no refusal logged")
		}
		return nil
	})
	if err := holds("BOB_OWN")(); err != nil {
		t.Error(err)
	}
	var st *agent.Status
	if st, _, err = fetchStatus(context.Background(), sock); err != nil || st.Workspace != "ws-bob" {
		t.Fatalf("status after a refused file: %+v %v", st, err)
	}
}

// TestAgentDirectoryFlags: --directory excludes the flags it replaces, and a
// workspace missing from the file is an error naming it.
func TestAgentDirectoryFlags(t *testing.T) {
	dir := t.TempDir()
	dirFile := filepath.Join(dir, "directory.json")
	if err := writeFileAtomic(dirFile, []byte(`{"users": [], "projects": [], "communities": [], "workspaces": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"agent", "--nats", "nats://127.0.0.1:1", "--workspace", "ws-x", "--service-key", "A", "--service-curve-key", "X", "--workspace-key", "k"}
	var out, errb bytes.Buffer
	if code := run(append(common, "--directory", dirFile, "--owner", "bob"), strings.NewReader(""), &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), "do not also set --owner") {
		t.Errorf("--directory with --owner: exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := run(append(common, "--directory", dirFile), strings.NewReader(""), &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), `workspace "ws-x" is not in the directory`) {
		t.Errorf("workspace missing from the directory: exit %d: %s", code, errb.String())
	}
}
