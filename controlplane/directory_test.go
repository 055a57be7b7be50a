package controlplane

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

func TestLoadDirectoryExample(t *testing.T) {
	d, err := LoadDirectory(filepath.Join("..", "deploy", "directory.example.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Users) == 0 || len(d.Projects) == 0 || len(d.Communities) == 0 || len(d.Workspaces) == 0 {
		t.Fatalf("the example should show every kind of entry: %+v", d)
	}
}

// TestLoadDirectoryErrorsNameTheField: each kind of mistake is refused
// with the field's path in the message.
func TestLoadDirectoryErrorsNameTheField(t *testing.T) {
	user := must(must(nkeys.CreateUser()).PublicKey())
	curve := must(must(nkeys.CreateCurveKeys()).PublicKey())
	good := func() map[string]any {
		return map[string]any{
			"users": []any{map[string]any{"id": "alice", "publicKey": user}, map[string]any{"id": "bob", "publicKey": user}},
			"projects": []any{map[string]any{"id": "ml", "members": []any{
				map[string]any{"user": "alice", "role": "admin"}, map[string]any{"user": "bob", "role": "member"}}}},
			"communities": []any{map[string]any{"id": "research", "admins": []any{"alice"}, "projects": []any{"ml"}}},
			"workspaces":  []any{map[string]any{"id": "ws-alice", "owner": "alice", "projects": []any{"ml"}, "curveKey": curve}},
		}
	}
	at := func(m map[string]any, path ...any) map[string]any {
		var cur any = m
		for _, p := range path {
			switch k := p.(type) {
			case string:
				cur = cur.(map[string]any)[k]
			case int:
				cur = cur.([]any)[k]
			}
		}
		return cur.(map[string]any)
	}
	cases := []struct {
		name   string
		mutate func(map[string]any)
		want   string
	}{
		{"bad user id", func(m map[string]any) { at(m, "users", 1)["id"] = "b.b" }, "users[1].id"},
		{"duplicate user", func(m map[string]any) { at(m, "users", 1)["id"] = "alice" }, "users[1].id: user alice listed twice"},
		{"curve key as user key", func(m map[string]any) { at(m, "users", 0)["publicKey"] = curve }, "users[0].publicKey"},
		{"empty user key", func(m map[string]any) { at(m, "users", 0)["publicKey"] = "" }, "users[0].publicKey"},
		{"unknown member", func(m map[string]any) { at(m, "projects", 0, "members", 1)["user"] = "carol" }, "projects[0].members[1].user: project ml: unknown user \"carol\""},
		{"member twice", func(m map[string]any) { at(m, "projects", 0, "members", 1)["user"] = "alice" }, "projects[0].members[1].user"},
		{"bad role", func(m map[string]any) { at(m, "projects", 0, "members", 0)["role"] = "owner" }, "projects[0].members[0].role"},
		{"unknown admin", func(m map[string]any) { at(m, "communities", 0)["admins"] = []any{"carol"} }, "communities[0].admins[0]"},
		{"unknown community project", func(m map[string]any) { at(m, "communities", 0)["projects"] = []any{"ml", "q"} }, "communities[0].projects[1]"},
		{"unknown owner", func(m map[string]any) { at(m, "workspaces", 0)["owner"] = "carol" }, "workspaces[0].owner"},
		{"unknown workspace project", func(m map[string]any) { at(m, "workspaces", 0)["projects"] = []any{"q"} }, "workspaces[0].projects[0]"},
		{"bad curve key", func(m map[string]any) { at(m, "workspaces", 0)["curveKey"] = user }, "workspaces[0].curveKey"},
		{"unknown field", func(m map[string]any) { at(m, "projects", 0)["member"] = []any{} }, "unknown field \"member\""},
	}
	dir := t.TempDir()
	write := func(m map[string]any) string {
		p := filepath.Join(dir, "directory.json")
		if err := os.WriteFile(p, must(json.MarshalIndent(m, "", "  ")), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := LoadDirectory(write(good())); err != nil {
		t.Fatalf("good directory: %v", err)
	}
	for _, c := range cases {
		m := good()
		c.mutate(m)
		_, err := LoadDirectory(write(m))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
	p := filepath.Join(dir, "broken.json")
	_ = os.WriteFile(p, []byte("{\n\"users\": [\n}"), 0o644)
	if _, err := LoadDirectory(p); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("syntax error: %v, want the line", err)
	}
	if _, err := LoadDirectory(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestAccessOf(t *testing.T) {
	d := &Directory{
		Projects:    []Project{{ID: "ml", Members: []Member{{"alice", RoleAdmin}}}, {ID: "vision", Members: []Member{{"bob", RoleAdmin}}}},
		Communities: []Community{{ID: "research", Projects: []string{"ml"}}, {ID: "other", Projects: []string{"vision"}}},
		Workspaces:  []Workspace{{ID: "ws-alice", Owner: "alice", Projects: []string{"vision", "ml"}}},
	}
	a, ok := d.AccessOf("ws-alice")
	// alice is not a member of vision: it does not reach her workspace.
	if !ok || a.Owner != "alice" || !slices.Equal(a.Projects, []string{"ml"}) || !slices.Equal(a.Communities, []string{"research"}) {
		t.Fatalf("AccessOf = %+v, %v", a, ok)
	}
	if _, ok := d.AccessOf("nope"); ok {
		t.Fatal("unknown workspace found")
	}
}

// TestSetDirectoryReconciles: each way a workspace gains or loses a secret
// through the directory writes the records it implies, and only those.
func TestSetDirectoryReconciles(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	priv := must(alice.Create(ctx, "PRIV", []byte("p"), CreateOptions{}))
	proj := must(alice.Create(ctx, "PROJ", []byte("m"), CreateOptions{Project: "ml"}))
	shared := must(alice.Create(ctx, "SHARED", []byte("s"), CreateOptions{Project: "ml"}))
	if _, err := alice.Share(ctx, "SHARED", "research"); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-erin", shared.ID, 2, "s")

	// A workspace added later receives everything it is entitled to, at
	// the current versions (nobody else's records change).
	before := f.record("ws-alice", proj.ID).IssuedAt
	f.addWorkspace("ws-alice2", "alice", "ml")
	f.setDir()
	f.wantPut("ws-alice2", priv.ID, 1, "p")
	f.wantPut("ws-alice2", proj.ID, 1, "m")
	f.wantPut("ws-alice2", shared.ID, 2, "s")
	f.wantScope("ws-alice2", shared.ID, scopeML)
	if got := f.record("ws-alice", proj.ID).IssuedAt; !got.Equal(before) {
		t.Fatal("a gain rewrote another workspace's record")
	}

	// A workspace removed from a project loses its secrets (tombstones at
	// a new version) but keeps its owner's.
	f.dir.Workspaces[1].Projects = nil // ws-bob
	f.setDir()
	for _, id := range []string{proj.ID, shared.ID} {
		if sec := f.record("ws-bob", id); sec == nil || sec.Op != protocol.OpDelete {
			t.Fatalf("ws-bob after leaving ml: %s", recordSummary(sec))
		}
	}
	f.wantPut("ws-alice", proj.ID, 2, "m")

	// It comes back: a new version, since it holds a tombstone.
	f.dir.Workspaces[1].Projects = []string{"ml"}
	f.setDir()
	f.wantPut("ws-bob", proj.ID, 3, "m")

	// A member leaving the project: their workspace no longer gets it.
	f.dir.Projects[0].Members = f.dir.Projects[0].Members[:1] // only alice
	f.setDir()
	f.wantGone("ws-bob", proj.ID)
	f.wantPut("ws-alice2", proj.ID, 4, "m")

	// A project leaving the community: its workspaces lose the share.
	f.dir.Communities[0].Projects = []string{"ml"}
	f.setDir()
	f.wantGone("ws-dave", shared.ID)
	f.wantGone("ws-erin", shared.ID)
	f.wantScope("ws-alice", shared.ID, scopeML)

	// A workspace reached by another scope: dave's workspace joins ml, and
	// vision rejoins research: the record moves to project:ml.
	f.dir.Projects[0].Members = append(f.dir.Projects[0].Members, Member{"dave", RoleMember})
	f.dir.Communities[0].Projects = []string{"ml", "vision"}
	f.setDir()
	f.wantScope("ws-dave", shared.ID, scopeResearch)
	f.dir.Workspaces[3].Projects = []string{"vision", "ml"} // ws-dave
	f.setDir()
	f.wantScope("ws-dave", shared.ID, scopeML)
	v := f.record("ws-dave", shared.ID).Version

	// A new curve key: records sealed again, at a new version.
	wk := must(nkeys.CreateCurveKeys())
	f.wsKeys["ws-dave"] = wk
	f.dir.Workspaces[3].CurveKey = must(wk.PublicKey())
	f.setDir()
	if sec := f.record("ws-dave", shared.ID); sec.Version != v+1 || string(sec.Value) != "s" {
		t.Fatalf("after re-keying: %s", recordSummary(sec))
	}

	// A workspace removed from the directory gets tombstones.
	f.dir.Workspaces = slices.DeleteFunc(f.dir.Workspaces, func(w Workspace) bool { return w.ID == "ws-alice2" })
	f.setDir()
	for _, id := range []string{priv.ID, proj.ID, shared.ID} {
		f.wantGone("ws-alice2", id)
	}

	// Nothing changed: nothing written.
	seqs := f.lastSeqs()
	f.setDir()
	if after := f.lastSeqs(); after != seqs {
		t.Fatalf("an unchanged directory wrote: %v -> %v", seqs, after)
	}

	// A bad directory is refused and the old one stays.
	bad := *f.dir
	bad.Workspaces = append(slices.Clone(bad.Workspaces), Workspace{ID: "ws-x", Owner: "nobody", CurveKey: f.dir.Workspaces[0].CurveKey})
	if err := f.svc.SetDirectory(&bad); err == nil || !strings.Contains(err.Error(), "unknown user \"nobody\"") {
		t.Fatalf("bad directory: %v", err)
	}
	if after := f.lastSeqs(); after != seqs {
		t.Fatalf("a refused directory wrote: %v -> %v", seqs, after)
	}
	if _, err := f.client("dave").Update(ctx, "SHARED", []byte("x"), InProject("ml")); !errors.Is(err, ErrForbidden) {
		t.Fatalf("dave, a member of ml, is no creator or admin: %v", err)
	}

	// A user removed: their requests are refused from now on.
	f.dir.Users = slices.DeleteFunc(f.dir.Users, func(u User) bool { return u.ID == "carol" })
	f.dir.Workspaces = slices.DeleteFunc(f.dir.Workspaces, func(w Workspace) bool { return w.Owner == "carol" })
	f.dir.Communities = slices.DeleteFunc(f.dir.Communities, func(c Community) bool { return c.ID == "other" })
	f.setDir()
	if _, err := f.client("carol").List(ctx); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("removed user: %v", err)
	}
}

// TestSetDirectoryWhileServing: directory swaps racing with updates lose
// no update and leave every record matching the final directory.
func TestSetDirectoryWhileServing(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	info := must(alice.Create(ctx, "RACED", []byte("v0"), CreateOptions{Project: "ml"}))
	in, out := *f.dir, *f.dir
	out.Workspaces = slices.Clone(in.Workspaces)
	out.Workspaces[1].Projects = nil // ws-bob leaves ml
	done := make(chan error, 1)
	go func() {
		for i := range 6 {
			d := &in
			if i%2 == 0 {
				d = &out
			}
			if err := f.svc.SetDirectory(d); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range 6 {
		if _, err := alice.Update(ctx, "RACED", []byte{'v', byte('1' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The last directory (in) has ws-bob in ml: it has the last value.
	m, _, err := f.svc.store.get(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-bob", info.ID, m.Version, "v6")
	f.wantPut("ws-alice", info.ID, m.Version, "v6")
}
