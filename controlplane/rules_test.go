package controlplane

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// addUser adds a user with a fresh key to the fixture's directory.
func (f *fixture) addUser(id string) {
	kp := must(nkeys.CreateUser())
	f.users[id] = kp
	f.dir.Users = append(f.dir.Users, User{ID: id, PublicKey: must(kp.PublicKey())})
}

// addWorkspace adds a workspace with a fresh curve key.
func (f *fixture) addWorkspace(id, owner string, projects ...string) {
	wk := must(nkeys.CreateCurveKeys())
	f.wsKeys[id] = wk
	f.dir.Workspaces = append(f.dir.Workspaces, Workspace{ID: id, Owner: owner, Projects: projects, CurveKey: must(wk.PublicKey())})
}

// setDir hands the fixture's directory, as changed, to the service.
func (f *fixture) setDir() {
	f.t.Helper()
	if err := f.svc.SetDirectory(f.dir); err != nil {
		f.t.Fatal(err)
	}
}

// newWorld is the fixture with a second project and two communities:
//
//	alice: admin of ml, owns ws-alice (ml); admin of community research
//	bob:   member of ml, owns ws-bob (ml)
//	carol: no project, owns ws-carol; admin of community other
//	dave:  admin of vision, owns ws-dave (vision); admin of community research
//	erin:  member of vision, owns ws-erin (vision)
//	research: projects ml and vision; other: project vision
func newWorld(t *testing.T) *fixture {
	f := newFixture(t)
	f.addUser("dave")
	f.addUser("erin")
	f.dir.Projects = append(f.dir.Projects, Project{ID: "vision", Members: []Member{{"dave", RoleAdmin}, {"erin", RoleMember}}})
	f.addWorkspace("ws-dave", "dave", "vision")
	f.addWorkspace("ws-erin", "erin", "vision")
	f.dir.Communities = []Community{
		{ID: "research", Admins: []string{"alice", "dave"}, Projects: []string{"ml", "vision"}},
		{ID: "other", Admins: []string{"carol"}, Projects: []string{"vision"}},
	}
	f.setDir()
	return f
}

// wantScope checks that ws holds a put of secret id whose record carries
// scope.
func (f *fixture) wantScope(ws, id string, scope protocol.Scope) {
	f.t.Helper()
	sec := f.record(ws, id)
	if sec == nil || sec.Op != protocol.OpPut || sec.Scope != scope {
		f.t.Fatalf("%s: record of %s is %+v, want a put with scope %s", ws, id, recordSummary(sec), scope)
	}
}

// wantGone checks that ws has no value of secret id: no record, or a
// tombstone.
func (f *fixture) wantGone(ws, id string) {
	f.t.Helper()
	if sec := f.record(ws, id); sec != nil && sec.Op != protocol.OpDelete {
		f.t.Fatalf("%s still has %s: %s", ws, id, recordSummary(sec))
	}
}

func recordSummary(sec *protocol.Secret) string {
	if sec == nil {
		return "none"
	}
	return fmt.Sprintf("%s %s v%d %s", sec.Op, sec.Name, sec.Version, sec.Scope)
}

var (
	scopeML       = protocol.Scope{Kind: protocol.ScopeProject, ID: "ml"}
	scopeResearch = protocol.Scope{Kind: protocol.ScopeCommunity, ID: "research"}
)

// TestRulesRefused: every request a rule refuses is refused with a clear
// error and changes nothing in either bucket.
func TestRulesRefused(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	alice, bob, dave := f.client("alice"), f.client("bob"), f.client("dave")
	for _, step := range []error{
		func() error { _, err := alice.Create(ctx, "ALICE_PRIV", []byte("a"), CreateOptions{}); return err }(),
		func() error {
			_, err := alice.Create(ctx, "ALICE_ML", []byte("a"), CreateOptions{Project: "ml"})
			return err
		}(),
		func() error {
			_, err := bob.Create(ctx, "BOB_ML", []byte("b"), CreateOptions{Project: "ml"})
			return err
		}(),
		func() error { _, err := alice.Share(ctx, "ALICE_ML", "research"); return err }(),
		func() error {
			_, err := alice.Create(ctx, "SAME_NAME", []byte("a"), CreateOptions{Project: "ml"})
			return err
		}(),
		func() error { _, err := alice.Share(ctx, "SAME_NAME", "research"); return err }(),
		func() error {
			_, err := dave.Create(ctx, "SAME_NAME", []byte("d"), CreateOptions{Project: "vision"})
			return err
		}(),
		func() error { _, err := dave.Create(ctx, "DAVE_PRIV", []byte("d"), CreateOptions{}); return err }(),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}

	type call func(c *Client) error
	upd := func(name string, opts ...Option) call {
		return func(c *Client) error { _, err := c.Update(ctx, name, []byte("x"), opts...); return err }
	}
	cases := []struct {
		name string
		user string
		do   call
		want error
		why  string
	}{
		{"non-member creates a project secret", "carol", func(c *Client) error {
			_, err := c.Create(ctx, "CAROLS", []byte("x"), CreateOptions{Project: "ml"})
			return err
		}, ErrForbidden, "carol is not a member of project \"ml\""},
		{"create in an unknown project", "alice", func(c *Client) error {
			_, err := c.Create(ctx, "NOWHERE", []byte("x"), CreateOptions{Project: "nope"})
			return err
		}, ErrForbidden, "alice is not a member of project \"nope\""},
		{"member updates another's project secret", "bob", upd("ALICE_ML"), ErrForbidden, "only a project admin or its creator"},
		{"member renames another's project secret", "bob", upd("ALICE_ML", Rename("TAKEN_OVER")), ErrForbidden, "only a project admin or its creator"},
		{"member deletes another's project secret", "bob", func(c *Client) error { return c.Delete(ctx, "ALICE_ML") }, ErrForbidden, "only a project admin or its creator"},
		{"someone else's private secret", "bob", upd("ALICE_PRIV"), ErrNotFound, "neither private to bob"},
		{"edit through a community share", "erin", upd("ALICE_ML"), ErrForbidden, "through a community share"},
		{"community admin edits a shared secret", "dave", upd("ALICE_ML"), ErrForbidden, "can be used but changed only where it belongs"},
		{"rename through a community share", "erin", upd("ALICE_ML", Rename("MINE_NOW")), ErrForbidden, "through a community share"},
		{"delete through a community share", "erin", func(c *Client) error { return c.Delete(ctx, "ALICE_ML") }, ErrForbidden, "through a community share"},
		{"share by a non-admin of the community", "bob", func(c *Client) error { _, err := c.Share(ctx, "BOB_ML", "research"); return err }, ErrForbidden, "only an admin of community \"research\""},
		{"share by an admin of another community", "dave", func(c *Client) error { _, err := c.Share(ctx, "DAVE_PRIV", "other"); return err }, ErrForbidden, "only an admin of community \"other\""},
		{"share by a community admin who may not edit the secret", "dave", func(c *Client) error {
			_, err := c.Share(ctx, "ALICE_ML", "research")
			return err
		}, ErrForbidden, "through a community share"},
		{"share with an unknown community", "alice", func(c *Client) error { _, err := c.Share(ctx, "ALICE_PRIV", "nope"); return err }, ErrNotFound, "no community \"nope\""},
		{"share a name the community already has", "dave", func(c *Client) error {
			_, err := c.Share(ctx, "SAME_NAME", "research", InProject("vision"))
			return err
		}, ErrExists, "community research already has a shared secret called \"SAME_NAME\""},
		{"unshare by a non-admin", "erin", func(c *Client) error { _, err := c.Unshare(ctx, "ALICE_ML", "research"); return err }, ErrForbidden, "only an admin of community \"research\""},
		{"unshare what is not shared", "alice", func(c *Client) error { _, err := c.Unshare(ctx, "BOB_ML", "research"); return err }, ErrNotFound, "no secret \"BOB_ML\" is shared with community research"},
		{"clone someone else's private secret", "bob", func(c *Client) error { _, err := c.Clone(ctx, "ALICE_PRIV", "STOLEN", nil); return err }, ErrNotFound, "neither private to bob"},
		{"clone into a project one is not in", "bob", func(c *Client) error {
			_, err := c.Clone(ctx, "BOB_ML", "BOB_COPY", nil, ToProject("vision"))
			return err
		}, ErrForbidden, "bob is not a member of project \"vision\""},
		{"clone onto an existing name", "alice", func(c *Client) error { _, err := c.Clone(ctx, "ALICE_ML", "ALICE_PRIV", nil); return err }, ErrExists, "already exists"},
		{"create an existing name", "alice", func(c *Client) error {
			_, err := c.Create(ctx, "ALICE_PRIV", []byte("x"), CreateOptions{})
			return err
		}, ErrExists, "\"ALICE_PRIV\" in user:alice"},
		{"rename onto an existing name", "alice", upd("ALICE_ML", Rename("BOB_ML")), ErrExists, "\"BOB_ML\" in project:ml"},
		{"look in a project one is not in", "bob", upd("DAVE_PRIV", InProject("vision")), ErrForbidden, "bob is not a member of project \"vision\""},
	}
	before := f.lastSeqs()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.do(f.client(c.user))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.why) {
				t.Fatalf("error %v, want %v saying %q", err, c.want, c.why)
			}
			if after := f.lastSeqs(); after != before {
				t.Fatalf("a refused request changed the streams: %v -> %v", before, after)
			}
		})
	}
}

// TestNameRulesSayWhich: a refused name says which rule it broke, for
// create, rename and clone alike, client side and service side.
func TestNameRulesSayWhich(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	if _, err := alice.Create(ctx, "GOOD_NAME", []byte("v"), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rules := map[string]string{
		"ab":         "shorter than 3 characters",
		"9LIVES":     "must start with a Latin letter",
		"DB.PASS":    "character 3 is not a letter, digit, hyphen or underscore",
		"TRAILING_":  "must not end with a hyphen or an underscore",
		"LD_PRELOAD": "reserved prefix LD_",
		"PATH":       "reserved (shells, terminals and pagers)",
	}
	before := f.lastSeqs()
	for name, rule := range rules {
		ops := map[string]func() error{
			"create": func() error { _, err := alice.Create(ctx, name, []byte("v"), CreateOptions{}); return err },
			"rename": func() error { _, err := alice.Update(ctx, "GOOD_NAME", nil, Rename(name)); return err },
			"clone":  func() error { _, err := alice.Clone(ctx, "GOOD_NAME", name, nil); return err },
		}
		for op, do := range ops {
			if err := do(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), rule) {
				t.Errorf("%s %q: %v, want it to say %q", op, name, err, rule)
			}
		}
		// The service says the same to a client that skips its checks.
		for _, req := range []*requestBody{{Op: opCreate, Name: name}, {Op: opUpdate, Name: "GOOD_NAME", NewName: name}, {Op: opClone, Name: "GOOD_NAME", NewName: name}} {
			var value []byte
			if req.Op == opCreate {
				value = []byte("v")
			}
			e := f.send(t, req.Op, f.rawRequest(t, alice, req, value))
			if e == nil || e.Code != "invalid" || !strings.Contains(e.Message, rule) {
				t.Errorf("service, %s %q: %+v, want it to say %q", req.Op, name, e, rule)
			}
		}
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("refused names changed the streams: %v -> %v", before, after)
	}
}

// TestEveryOperationAuthenticated: each operation refuses a request signed
// with a key that is not the user's, and changes nothing.
func TestEveryOperationAuthenticated(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	if _, err := f.client("alice").Create(ctx, "TARGET", []byte("v"), CreateOptions{Project: "ml"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client("alice").Share(ctx, "TARGET", "research"); err != nil {
		t.Fatal(err)
	}
	forger := NewClient(f.nc, "alice", must(nkeys.CreateUser()), must(f.curve.PublicKey()))
	reqs := []struct {
		req   *requestBody
		value []byte
	}{
		{&requestBody{Op: opCreate, Name: "NEW_ONE"}, []byte("x")},
		{&requestBody{Op: opUpdate, Name: "TARGET"}, []byte("x")},
		{&requestBody{Op: opUpdate, Name: "TARGET", NewName: "RENAMED"}, nil},
		{&requestBody{Op: opDelete, Name: "TARGET"}, nil},
		{&requestBody{Op: opClone, Name: "TARGET", NewName: "COPY"}, nil},
		{&requestBody{Op: opShare, Name: "TARGET", Community: "research"}, nil},
		{&requestBody{Op: opUnshare, Name: "TARGET", Community: "research"}, nil},
		{&requestBody{Op: opList}, nil},
	}
	before := f.lastSeqs()
	for _, r := range reqs {
		e := f.send(t, r.req.Op, f.rawRequest(t, forger, r.req, r.value))
		if e == nil || e.Code != "unauthenticated" || !strings.Contains(e.Message, "bad signature for user alice") {
			t.Errorf("forged %s: %+v", r.req.Op, e)
		}
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("forged requests changed the streams: %v -> %v", before, after)
	}
}

// TestShareUnshare: a share reaches the community's workspaces with the
// community's scope, keeps the owning scope elsewhere, and unshare takes it
// back from exactly those workspaces.
func TestShareUnshare(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	alice, dave := f.client("alice"), f.client("dave")
	info, err := alice.Create(ctx, "SHARED_TOKEN", []byte("tok"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	for _, ws := range []string{"ws-dave", "ws-erin", "ws-carol"} {
		f.wantGone(ws, info.ID)
	}
	shared, err := alice.Share(ctx, "SHARED_TOKEN", "research")
	if err != nil {
		t.Fatal(err)
	}
	if shared.Version != 2 || !slices.Equal(shared.Communities, []string{"research"}) ||
		!slices.Equal(shared.Workspaces, []string{"ws-alice", "ws-bob", "ws-dave", "ws-erin"}) {
		t.Fatalf("shared: %+v", shared)
	}
	f.wantScope("ws-alice", info.ID, scopeML)
	f.wantScope("ws-bob", info.ID, scopeML)
	f.wantScope("ws-dave", info.ID, scopeResearch)
	f.wantPut("ws-erin", info.ID, 2, "tok")
	f.wantScope("ws-erin", info.ID, scopeResearch)
	f.wantGone("ws-carol", info.ID)

	// Sharing again changes nothing.
	if again, err := alice.Share(ctx, "SHARED_TOKEN", "research"); err != nil || again.Version != 2 {
		t.Fatalf("second share: %+v %v", again, err)
	}
	// Members of vision see it in their list, not editable, via research.
	list, err := f.client("erin").List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != info.ID || list[0].Via != "research" || list[0].Editable {
		t.Fatalf("erin's list: %+v", list)
	}
	// An update reaches both kinds of workspace.
	if _, err := alice.Update(ctx, "SHARED_TOKEN", []byte("tok-2")); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-erin", info.ID, 3, "tok-2")
	f.wantPut("ws-bob", info.ID, 3, "tok-2")

	// Any admin of the community may withdraw it, also one who cannot
	// change the secret.
	un, err := dave.Unshare(ctx, "SHARED_TOKEN", "research")
	if err != nil {
		t.Fatal(err)
	}
	if un.Version != 4 || len(un.Communities) != 0 {
		t.Fatalf("unshared: %+v", un)
	}
	for _, ws := range []string{"ws-dave", "ws-erin"} {
		if sec := f.record(ws, info.ID); sec == nil || sec.Op != protocol.OpDelete || sec.Version != 4 {
			t.Fatalf("%s after unshare: %s", ws, recordSummary(sec))
		}
	}
	f.wantPut("ws-alice", info.ID, 4, "tok-2")
	if list, err := f.client("erin").List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("erin's list after unshare: %+v %v", list, err)
	}
	// The community's name is free again.
	if _, err := dave.Create(ctx, "SHARED_TOKEN", []byte("d"), CreateOptions{Project: "vision"}); err != nil {
		t.Fatal(err)
	}
	if _, err := dave.Share(ctx, "SHARED_TOKEN", "research"); err != nil {
		t.Fatal(err)
	}
	// A shared secret that is deleted leaves every workspace.
	if err := dave.Delete(ctx, "SHARED_TOKEN"); err != nil {
		t.Fatal(err)
	}
	list, err = f.client("alice").List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != info.ID {
		t.Fatalf("alice's list: %+v", list)
	}
}

// TestRenameAndClone: a rename keeps the id and moves the name in every
// workspace; a clone is independent of its source.
func TestRenameAndClone(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	info, err := alice.Create(ctx, "OLD_NAME", []byte("v1"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Share(ctx, "OLD_NAME", "research"); err != nil {
		t.Fatal(err)
	}
	// Rename without a new value.
	ren, err := alice.Update(ctx, "OLD_NAME", nil, Rename("NEW_NAME"))
	if err != nil {
		t.Fatal(err)
	}
	if ren.ID != info.ID || ren.Name != "NEW_NAME" || ren.Version != 3 {
		t.Fatalf("renamed: %+v", ren)
	}
	for _, ws := range []string{"ws-alice", "ws-bob", "ws-dave", "ws-erin"} {
		sec := f.record(ws, info.ID)
		if sec == nil || sec.Op != protocol.OpPut || sec.Name != "NEW_NAME" || sec.Version != 3 || string(sec.Value) != "v1" {
			t.Fatalf("%s after rename: %s", ws, recordSummary(sec))
		}
	}
	if _, err := alice.Update(ctx, "OLD_NAME", []byte("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old name after rename: %v", err)
	}
	// The old name is free, in the project and in the community.
	if _, err := alice.Create(ctx, "OLD_NAME", []byte("again"), CreateOptions{Project: "ml"}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Share(ctx, "OLD_NAME", "research"); err != nil {
		t.Fatal(err)
	}
	// The new name is taken in the community: unshare finds it there.
	if _, err := alice.Unshare(ctx, "NEW_NAME", "research"); err != nil {
		t.Fatal(err)
	}
	// Rename and new value at once.
	if up, err := alice.Update(ctx, "NEW_NAME", []byte("v2"), Rename("NEWER_NAME")); err != nil || up.Version != 5 {
		t.Fatalf("rename with value: %+v %v", up, err)
	}
	f.wantPut("ws-bob", info.ID, 5, "v2")
	f.wantGone("ws-erin", info.ID)

	// Clone: a private copy with the same value, then with its own.
	cl, err := f.client("bob").Clone(ctx, "NEWER_NAME", "BOBS_COPY", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cl.ID == info.ID || cl.Version != 1 || cl.Scope != (protocol.Scope{Kind: protocol.ScopeUser, ID: "bob"}) {
		t.Fatalf("clone: %+v", cl)
	}
	f.wantPut("ws-bob", cl.ID, 1, "v2")
	f.wantGone("ws-alice", cl.ID)
	if _, err := alice.Update(ctx, "NEWER_NAME", []byte("v3")); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-bob", cl.ID, 1, "v2")
	if _, err := f.client("bob").Update(ctx, "BOBS_COPY", []byte("bob's")); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-bob", info.ID, 6, "v3")
	if err := alice.Delete(ctx, "NEWER_NAME"); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-bob", cl.ID, 2, "bob's")

	// A clone of a secret one can only use, with a new value, into a
	// project one is a member of.
	if _, err := alice.Share(ctx, "OLD_NAME", "other"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("alice sharing with other: %v", err)
	}
	cl2, err := f.client("erin").Clone(ctx, "OLD_NAME", "VISION_COPY", []byte("own"), ToProject("vision"))
	if err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-dave", cl2.ID, 1, "own")
	f.wantScope("ws-dave", cl2.ID, protocol.Scope{Kind: protocol.ScopeProject, ID: "vision"})
}

// TestListShowsCollisions: a private and a project secret of one name both
// appear; the project one is marked as hidden by the private one.
func TestListShowsCollisions(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	proj, err := f.client("bob").Create(ctx, "API_KEY", []byte("p"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	priv, err := alice.Create(ctx, "API_KEY", []byte("mine"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	list, err := alice.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != priv.ID || list[1].ID != proj.ID {
		t.Fatalf("list: %+v", list)
	}
	if list[0].ShadowedBy != nil || list[1].ShadowedBy == nil || *list[1].ShadowedBy != (protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}) {
		t.Fatalf("shadowing: %+v / %+v", list[0].ShadowedBy, list[1].ShadowedBy)
	}
	if !list[0].Editable || !list[1].Editable || !slices.Equal(list[1].Workspaces, []string{"ws-alice", "ws-bob"}) {
		t.Fatalf("list details: %+v", list)
	}
	// The project one is still reachable by naming the project.
	if up, err := alice.Update(ctx, "API_KEY", []byte("p2"), InProject("ml")); err != nil || up.ID != proj.ID {
		t.Fatalf("update in project: %+v %v", up, err)
	}
	// Bob sees only the project one.
	if list, err := f.client("bob").List(ctx); err != nil || len(list) != 1 || list[0].ShadowedBy != nil {
		t.Fatalf("bob's list: %+v %v", list, err)
	}
}
