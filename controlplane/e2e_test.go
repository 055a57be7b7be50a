package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/agent"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// e2eKernel is one workspace's real agent and real kernel.
type e2eKernel struct {
	ws string
	c  *jupyter.Client
}

// startWorkspace runs a real agent for workspace ws, configured from the
// directory as an operator would (AccessOf), with its own runtime dir and
// socket, and a real ipykernel in that runtime dir.
func (f *fixture) startWorkspace(ws string, logs *syncBuffer) *e2eKernel {
	t := f.t
	t.Helper()
	kerneltest.Python(t) // skips early when there is no ipykernel
	access, ok := f.dir.AccessOf(ws)
	if !ok {
		t.Fatalf("no workspace %s", ws)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: ws, Level: hclog.Trace, Output: logs})
	nc, err := agent.Connect(f.srv.ClientURL(), logger)
	if err != nil {
		t.Fatal(err)
	}
	opener := must(protocol.NewOpener(ws, []string{must(f.sign.PublicKey())}, must(f.curve.PublicKey()), f.wsKeys[ws]))
	runtime := t.TempDir()
	a, err := agent.New(agent.Config{
		Workspace: agent.Workspace{ID: ws, Owner: access.Owner, Projects: access.Projects, Communities: access.Communities},
		Opener:    opener, Conn: nc, RuntimeDirs: []string{runtime}, Socket: filepath.Join(t.TempDir(), "agent.sock"),
		Logger: logger, Probe: 500 * time.Millisecond, Rescan: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", ws, err)
		}
		nc.Close()
	})
	k := kerneltest.Start(t, kerneltest.Options{Dir: runtime})
	return &e2eKernel{ws: ws, c: k.Client(t)}
}

// digest is how the test compares values without printing them.
func digest(v string) string {
	s := sha256.Sum256([]byte(v))
	return hex.EncodeToString(s[:])
}

// envDigest is the sha256 of os.environ[name] in the kernel, or "unset".
func (k *e2eKernel) envDigest(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := k.c.Run(ctx, fmt.Sprintf("import os as _o, hashlib as _h\n_v = _o.environ.get(%q)\nprint('unset' if _v is None else _h.sha256(_v.encode()).hexdigest())\ndel _o, _h, _v", name))
	if err != nil {
		t.Fatalf("%s: run cell: %v", k.ws, err)
	}
	if res.Reply != nil && res.Reply.Status != "ok" {
		t.Fatalf("%s: cell failed: %s", k.ws, res.Reply.EName)
	}
	return strings.TrimSpace(res.Stdout)
}

// want polls the kernel until os.environ[name] is value ("" = unset).
func (k *e2eKernel) want(t *testing.T, name, value string) {
	t.Helper()
	wantD := "unset"
	if value != "" {
		wantD = digest(value)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := k.envDigest(t, name)
		if got == wantD {
			return
		}
		if time.Now().After(deadline) {
			what := "the expected value"
			if value == "" {
				what = "unset"
			}
			t.Fatalf("%s: %s in the kernel is not %s after 30s (digest %s)", k.ws, name, what, got)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not synchronisation
	}
}

// value makes a distinctive secret value.
func value(label string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return label + "-" + hex.EncodeToString(b)
}

// TestEndToEnd drives the service through its Client with two real agents
// and two real kernels:
//
//	ws-alice: alice's, project ml;  ws-bob: bob's, project ml
//	community research: admin alice, project ml
func TestEndToEnd(t *testing.T) {
	kerneltest.Python(t)
	f := newFixture(t)
	f.dir.Communities = []Community{{ID: "research", Admins: []string{"alice"}, Projects: []string{"ml"}}}
	f.setDir()
	agentLogs := &syncBuffer{}
	ka, kb := f.startWorkspace("ws-alice", agentLogs), f.startWorkspace("ws-bob", agentLogs)
	ctx := ctxT(t)
	alice, bob := f.client("alice"), f.client("bob")
	var values []string
	v := func(label string) string { s := value(label); values = append(values, s); return s }

	// A private secret reaches only its owner's kernel.
	priv := v("private")
	must(alice.Create(ctx, "ALICE_ONLY", []byte(priv), CreateOptions{}))
	ka.want(t, "ALICE_ONLY", priv)
	// A project secret reaches both members' kernels.
	proj := v("project")
	must(bob.Create(ctx, "ML_TOKEN", []byte(proj), CreateOptions{Project: "ml"}))
	ka.want(t, "ML_TOKEN", proj)
	kb.want(t, "ML_TOKEN", proj)
	kb.want(t, "ALICE_ONLY", "") // bob's kernel has had time to get ML_TOKEN: still no private one

	// A community share by a non-admin is refused; by an admin it reaches
	// the workspaces of the community's projects.
	if _, err := bob.Share(ctx, "ML_TOKEN", "research"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("share by a non-admin: %v", err)
	}
	if _, err := alice.Share(ctx, "ALICE_ONLY", "research"); err != nil {
		t.Fatal(err)
	}
	kb.want(t, "ALICE_ONLY", priv)
	if f.record("ws-bob", must(alice.List(ctx))[0].ID).Scope != scopeResearch {
		t.Fatal("the shared record does not carry the community's scope")
	}

	// Rename moves the variable in every kernel.
	must(alice.Update(ctx, "ML_TOKEN", nil, Rename("ML_TOKEN_V2")))
	for _, k := range []*e2eKernel{ka, kb} {
		k.want(t, "ML_TOKEN_V2", proj)
		k.want(t, "ML_TOKEN", "")
	}

	// A clone is independent: a change to the source leaves it alone.
	must(alice.Clone(ctx, "ML_TOKEN_V2", "MY_COPY", nil))
	ka.want(t, "MY_COPY", proj)
	proj2 := v("project2")
	must(bob.Update(ctx, "ML_TOKEN_V2", []byte(proj2)))
	ka.want(t, "ML_TOKEN_V2", proj2)
	kb.want(t, "ML_TOKEN_V2", proj2)
	ka.want(t, "MY_COPY", proj)
	kb.want(t, "MY_COPY", "")

	// A forged request changes nothing.
	before := f.lastSeqs()
	forger := NewClient(f.nc, "bob", must(nkeys.CreateUser()), must(f.curve.PublicKey()))
	if _, err := forger.Update(ctx, "ML_TOKEN_V2", []byte(v("forged"))); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("forged update: %v", err)
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("a forged request wrote: %v -> %v", before, after)
	}
	kb.want(t, "ML_TOKEN_V2", proj2)

	// Unshare removes the secret from the kernels that had it only
	// through the community.
	must(alice.Unshare(ctx, "ALICE_ONLY", "research"))
	kb.want(t, "ALICE_ONLY", "")
	ka.want(t, "ALICE_ONLY", priv)

	// Removing a workspace from a project removes the project's secrets
	// from its kernel, and gives them back when it returns.
	f.dir.Workspaces[1].Projects = nil // ws-bob
	f.setDir()
	kb.want(t, "ML_TOKEN_V2", "")
	ka.want(t, "ML_TOKEN_V2", proj2)
	f.dir.Workspaces[1].Projects = []string{"ml"}
	f.setDir()
	kb.want(t, "ML_TOKEN_V2", proj2)

	// Delete removes it from every kernel.
	if err := alice.Delete(ctx, "ML_TOKEN_V2"); err != nil {
		t.Fatal(err)
	}
	ka.want(t, "ML_TOKEN_V2", "")
	kb.want(t, "ML_TOKEN_V2", "")
	ka.want(t, "MY_COPY", proj)

	for _, s := range values {
		if strings.Contains(f.logs.String(), s) || strings.Contains(agentLogs.String(), s) {
			t.Errorf("a value appears in the logs")
		}
	}
}
