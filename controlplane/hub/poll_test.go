package hub

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// TestPollGroupsOften: the poll every Interval reads the groups only; a
// user a group names whom the last list lacks is read on their own at
// once (a user just created and added to a group gets the group's secrets
// within one poll); the users' own changes (a hub admin appointed) come
// with the users poll.
func TestPollGroupsOften(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, []Group{{Name: "ml", Users: []string{"alice"}}})
	now := time.Now()
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	src, _ := NewSource(SourceOptions{Client: h.client(), Now: clock})
	var applied []*controlplane.Directory
	src.apply = func(d *controlplane.Directory) error { applied = append(applied, d); return nil }
	ctx := context.Background()
	if _, err := src.refresh(ctx, pollGroups); err != nil {
		t.Fatal(err)
	}
	usersRead := func() int64 {
		return h.count.requests.Load()
	}
	before := usersRead()
	advance(DefaultInterval)
	if _, err := src.refresh(ctx, pollGroups); err != nil {
		t.Fatal(err)
	}
	if n := usersRead() - before; n != 1 {
		t.Errorf("a quiet poll made %d requests, want 1 (the groups)", n)
	}
	before = usersRead()
	// A user created, then added to ml: read at the next poll.
	h.set([]User{{Name: "alice"}, {Name: "newbie"}}, []Group{{Name: "ml", Users: []string{"alice", "newbie"}}})
	advance(DefaultInterval)
	d, err := src.refresh(ctx, pollGroups)
	if err != nil {
		t.Fatal(err)
	}
	if got := roles(d, "ml"); got["newbie"] != controlplane.RoleMember {
		t.Errorf("ml's members after newbie joined: %v", got)
	}
	if n := usersRead() - before; n != 2 {
		t.Errorf("the poll that found newbie made %d requests, want 2 (the groups, newbie)", n)
	}
	// A hub admin appointed: seen when the users are due.
	h.set([]User{{Name: "alice", Admin: true}, {Name: "newbie"}}, []Group{{Name: "ml", Users: []string{"alice", "newbie"}}})
	advance(DefaultInterval)
	d, _ = src.refresh(ctx, pollGroups)
	if got := roles(d, "ml"); got["alice"] == controlplane.RoleAdmin {
		t.Errorf("the users were read before they were due: %v", got)
	}
	d, _ = src.refresh(ctx, pollUsersOnly)
	if got := roles(d, "ml"); got["alice"] != controlplane.RoleAdmin {
		t.Errorf("alice, a hub admin, is not ml's admin after the users poll: %v", got)
	}
	if len(applied) != 3 {
		t.Errorf("applied %d directories, want 3 (first, newbie, alice admin)", len(applied))
	}
}

// TestRegisterUnchanged: an agent's periodic registration, the same key
// for the same server, asks the hub nothing and builds nothing; a new
// key is applied; a registration for a user the last list lacks has the
// list read first (a user created moments before their server started).
func TestRegisterUnchanged(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, nil)
	src, _ := NewSource(SourceOptions{Client: h.client()})
	applied := 0
	src.apply = func(*controlplane.Directory) error { applied++; return nil }
	ctx := context.Background()
	key := curveKey(t)
	if _, err := src.Register(ctx, Registration{Workspace: "alice", User: "alice", CurveKey: key}); err != nil {
		t.Fatal(err)
	}
	requests, builds := h.count.requests.Load(), applied
	for range 3 {
		d, err := src.Register(ctx, Registration{Workspace: "alice", User: "alice", CurveKey: key})
		if err != nil {
			t.Fatal(err)
		}
		if a, ok := d.AccessOf("alice"); !ok || a.Owner != "alice" {
			t.Fatalf("the directory of an unchanged registration lacks it: %+v", d.Workspaces)
		}
	}
	if n := h.count.requests.Load() - requests; n != 0 || applied != builds {
		t.Errorf("unchanged registrations: %d hub requests, %d directories applied; want none", n, applied-builds)
	}
	newKey := curveKey(t)
	d, err := src.Register(ctx, Registration{Workspace: "alice", User: "alice", CurveKey: newKey})
	if err != nil || applied != builds+1 {
		t.Fatalf("a new key: %v, %d applied", err, applied-builds)
	}
	if i := slices.IndexFunc(d.Workspaces, func(w controlplane.Workspace) bool { return w.ID == "alice" }); i < 0 || d.Workspaces[i].CurveKey != newKey {
		t.Errorf("the new key is not in force: %+v", d.Workspaces)
	}
	h.set([]User{{Name: "alice"}, {Name: "bob"}}, nil)
	d, err = src.Register(ctx, Registration{Workspace: "bob", User: "bob", CurveKey: curveKey(t)})
	if err != nil {
		t.Fatalf("bob, created after the last users poll: %v", err)
	}
	if _, ok := d.AccessOf("bob"); !ok {
		t.Errorf("bob's workspace is not in the directory: %+v", d.Workspaces)
	}
}

func TestNextWait(t *testing.T) {
	const i, m = 2 * time.Second, time.Minute
	for _, c := range []struct {
		failures int
		took     time.Duration
		want     time.Duration
	}{
		{0, 10 * time.Millisecond, i},
		{1, 0, 4 * time.Second},
		{2, 0, 8 * time.Second},
		{5, 0, m},
		{100, 0, m},
		{0, time.Second, 4 * time.Second}, // a slow hub: 4x its time
		{0, time.Hour, m},
	} {
		if got := nextWait(i, m, c.failures, c.took); got != c.want {
			t.Errorf("nextWait(%d failures, took %v) = %v, want %v", c.failures, c.took, got, c.want)
		}
	}
}

// TestWatchRecovers: a hub that fails is polled again (after backing off)
// and its changes are applied once it answers.
func TestWatchRecovers(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, []Group{{Name: "ml", Users: []string{"alice"}}})
	h.failing = true
	src, _ := NewSource(SourceOptions{Client: h.client(), Interval: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond})
	got := make(chan *controlplane.Directory, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx, func(d *controlplane.Directory) error { got <- d; return nil })
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for h.count.requests.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling for the failures, not synchronising
	}
	select {
	case d := <-got:
		t.Fatalf("applied a directory from a failing hub: %+v", d)
	default:
	}
	h.mu.Lock()
	h.failing = false
	h.mu.Unlock()
	select {
	case d := <-got:
		if roles(d, "ml")["alice"] != controlplane.RoleMember {
			t.Errorf("the directory after recovery: %+v", d.Projects)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no directory applied after the hub recovered")
	}
}

// TestEnsureUser: a user the hub vouches for (a login) whom the last user
// list lacks is read on their own at once.
func TestEnsureUser(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, nil)
	now := time.Now()
	src, _ := NewSource(SourceOptions{Client: h.client(), Now: func() time.Time { return now }})
	var last *controlplane.Directory
	src.apply = func(d *controlplane.Directory) error { last = d; return nil }
	ctx := context.Background()
	if _, err := src.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	h.set([]User{{Name: "alice"}, {Name: "newbie"}}, nil)
	before := h.count.requests.Load()
	src.EnsureUser(ctx, "alice")
	if n := h.count.requests.Load() - before; n != 0 {
		t.Errorf("a known user made %d requests", n)
	}
	src.EnsureUser(ctx, "newbie")
	if !slices.ContainsFunc(last.Users, func(u controlplane.User) bool { return u.ID == "newbie" }) {
		t.Fatalf("newbie is not in the directory: %+v", last.Users)
	}
	if n := h.count.requests.Load() - before; n != 1 {
		t.Errorf("newbie's login made %d requests, want 1 (GET /users/newbie)", n)
	}
	// Deleted since the hub vouched for them: nobody added.
	src.EnsureUser(ctx, "ghost")
	if slices.ContainsFunc(last.Users, func(u controlplane.User) bool { return u.ID == "ghost" }) {
		t.Errorf("a user the hub does not have is in the directory: %+v", last.Users)
	}
}

// TestAddedDuringUsersRead: a user read on their own while a read of the
// whole list is under way stays, though that list's pages (read before
// the user was created) lack them; the next whole read decides.
func TestAddedDuringUsersRead(t *testing.T) {
	h := newFakeHub(t)
	h.maxLimit = 50
	h.set(someUsers(120), nil)
	src, _ := NewSource(SourceOptions{Client: h.client()})
	src.apply = func(*controlplane.Directory) error { return nil }
	ctx := context.Background()
	if _, err := src.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	once := false
	h.afterPage = func(r *http.Request) {
		if once || r.URL.Path != "/hub/api/users" {
			return
		}
		once = true
		// What addUsers does once GET /users/newbie has answered.
		src.mu.Lock()
		src.users = append(slices.Clone(src.users), User{Name: "newbie"})
		src.added["newbie"] = time.Now()
		src.mu.Unlock()
	}
	has := func() bool {
		src.mu.Lock()
		defer src.mu.Unlock()
		return slices.ContainsFunc(src.users, func(u User) bool { return u.Name == "newbie" })
	}
	if err := src.fetchUsers(ctx); err != nil {
		t.Fatal(err)
	}
	if !has() {
		t.Fatal("the user read on their own during the list's read was dropped")
	}
	if err := src.fetchUsers(ctx); err != nil {
		t.Fatal(err)
	}
	if has() {
		t.Error("a user no whole list began after has was kept")
	}
}
