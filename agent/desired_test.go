package agent

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

func put(id, name string, ver uint64, scope protocol.Scope, value string) *protocol.Secret {
	return &protocol.Secret{Record: protocol.Record{SecretID: id, Name: name, Op: protocol.OpPut, Version: ver, Scope: scope},
		Value: protocol.Value(value)}
}

func del(id, name string, ver uint64, scope protocol.Scope) *protocol.Secret {
	return &protocol.Secret{Record: protocol.Record{SecretID: id, Name: name, Op: protocol.OpDelete, Version: ver, Scope: scope}}
}

var (
	alice   = protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}
	bob     = protocol.Scope{Kind: protocol.ScopeUser, ID: "bob"}
	projP   = protocol.Scope{Kind: protocol.ScopeProject, ID: "p"}
	projQ   = protocol.Scope{Kind: protocol.ScopeProject, ID: "q"}
	commC   = protocol.Scope{Kind: protocol.ScopeCommunity, ID: "c"}
	aliceWS = Workspace{ID: "ws1", Owner: "alice", Projects: []string{"p"}, Communities: []string{"c"}}
)

func TestWorkspaceAllows(t *testing.T) {
	for _, tc := range []struct {
		scope protocol.Scope
		want  bool
	}{
		{alice, true}, {bob, false}, {projP, true}, {projQ, false}, {commC, true},
		{protocol.Scope{Kind: protocol.ScopeCommunity, ID: "d"}, false},
		{protocol.Scope{Kind: "team", ID: "p"}, false},
	} {
		if got := aliceWS.Allows(tc.scope); got != tc.want {
			t.Errorf("Allows(%s) = %v, want %v", tc.scope, got, tc.want)
		}
	}
}

func TestStoreApply(t *testing.T) {
	st := newStore(aliceWS)
	mustApply := func(s *protocol.Secret) {
		t.Helper()
		if err := st.apply(s, time.Time{}); err != nil {
			t.Fatalf("apply %s v%d: %v", s.SecretID, s.Version, err)
		}
	}
	mustApply(put("s1", "DB-PASSWORD", 1, alice, "one"))
	mustApply(put("s2", "TOKEN", 4, projP, "two"))

	// Replays and out-of-scope records are refused and change nothing.
	if err := st.apply(put("s1", "DB-PASSWORD", 1, alice, "old"), time.Time{}); !errors.Is(err, errStale) {
		t.Errorf("same version: %v, want errStale", err)
	}
	mustApply(put("s1", "DB-PASSWORD", 3, alice, "three"))
	if err := st.apply(put("s1", "DB-PASSWORD", 2, alice, "older"), time.Time{}); !errors.Is(err, errStale) {
		t.Errorf("older version: %v, want errStale", err)
	}
	if err := st.apply(put("s9", "OTHER", 1, bob, "bobs"), time.Time{}); !errors.Is(err, ErrScopeNotAllowed) {
		t.Errorf("bob's secret: %v, want ErrScopeNotAllowed", err)
	}
	if err := st.apply(put("s8", "OTHER", 1, projQ, "q"), time.Time{}); !errors.Is(err, ErrScopeNotAllowed) {
		t.Errorf("project q: %v, want ErrScopeNotAllowed", err)
	}
	if d, loaded := st.snapshot(); loaded || len(d.Env) != 0 {
		t.Fatalf("before publish: loaded=%v env=%v; want nothing visible", loaded, d.Names())
	}
	st.publish(time.Now())
	d, loaded := st.snapshot()
	if !loaded {
		t.Fatal("not loaded after first publish")
	}
	if got := d.Names(); !reflect.DeepEqual(got, []string{"DB-PASSWORD", "TOKEN"}) {
		t.Fatalf("names = %v", got)
	}
	if v := d.Env["DB-PASSWORD"]; string(v.Value) != "three" || v.Version != 3 {
		t.Errorf("DB-PASSWORD = version %d, want 3 with the newest value", v.Version)
	}
	// A tombstone removes; a put older than the tombstone cannot revive.
	mustApply(del("s2", "TOKEN", 5, projP))
	if err := st.apply(put("s2", "TOKEN", 4, projP, "two"), time.Time{}); !errors.Is(err, errStale) {
		t.Errorf("put older than tombstone: %v, want errStale", err)
	}
	st.publish(time.Now())
	if d, _ := st.snapshot(); !reflect.DeepEqual(d.Names(), []string{"DB-PASSWORD"}) {
		t.Errorf("after delete: %v", d.Names())
	}
}

func TestPrecedence(t *testing.T) {
	st := newStore(aliceWS)
	for _, s := range []*protocol.Secret{
		put("a-comm", "KEY", 9, commC, "community"),
		put("b-proj", "KEY", 1, projP, "project"),
		put("c-user", "KEY", 1, alice, "private"),
		put("d-proj", "OTHER", 1, projP, "x"),
		put("c-proj", "OTHER", 1, projP, "y"),
	} {
		if err := st.apply(s, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	st.publish(time.Now())
	d, _ := st.snapshot()
	if v := d.Env["KEY"]; v.SecretID != "c-user" {
		t.Errorf("KEY from %s, want the private secret c-user", v.SecretID)
	}
	if v := d.Env["OTHER"]; v.SecretID != "c-proj" {
		t.Errorf("OTHER from %s, want the lower id c-proj between equals", v.SecretID)
	}
	if len(d.Shadowed) != 3 {
		t.Errorf("shadowed = %+v, want 3", d.Shadowed)
	}
	// The user's secret going away lets the project's show again.
	if err := st.apply(del("c-user", "KEY", 2, alice), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	if d, _ := st.snapshot(); d.Env["KEY"].SecretID != "b-proj" {
		t.Errorf("after delete KEY from %s, want b-proj", d.Env["KEY"].SecretID)
	}
}

func desiredOf(vars map[string]Var) *Desired { return &Desired{Env: vars} }

func TestPlan(t *testing.T) {
	d := desiredOf(map[string]Var{
		"A": {Value: protocol.Value("a2"), Version: 2, SecretID: "s1"},
		"B": {Value: protocol.Value("b1"), Version: 1, SecretID: "s2"},
	})
	for _, tc := range []struct {
		name string
		held map[string]Held
		want Plan
	}{
		{"unknown holdings: full", nil, Plan{Set: map[string]string{"A": "a2", "B": "b1"}, Full: true}},
		{"in step: nothing", map[string]Held{"A": {"s1", 2}, "B": {"s2", 1}}, Plan{Set: map[string]string{}}},
		{"one newer", map[string]Held{"A": {"s1", 1}, "B": {"s2", 1}}, Plan{Set: map[string]string{"A": "a2"}}},
		{"one new, one gone", map[string]Held{"A": {"s1", 2}, "C": {"s3", 7}}, Plan{Set: map[string]string{"B": "b1"}, Unset: []string{"C"}}},
		{"same version, other secret", map[string]Held{"A": {"s9", 2}, "B": {"s2", 1}}, Plan{Set: map[string]string{"A": "a2"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := plan(tc.held, d)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan = %+v, want %+v", got, tc.want)
			}
		})
	}
	if !(Plan{Set: map[string]string{}}).Empty() || (Plan{Full: true}).Empty() {
		t.Error("Empty wrong")
	}
}
