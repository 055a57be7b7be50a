package controlplane

import (
	"errors"
	"testing"
)

// TestCallerSameAsNATS: the operations a transport runs through As are the
// NATS path's: the same result, and for each refusal the same error code
// and words.
func TestCallerSameAsNATS(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := must(f.svc.As("alice"))
	bobHTTP := must(f.svc.As("bob"))
	bobNATS := f.client("bob")

	info, err := alice.Create(ctx, Args{Name: "ML_TOKEN", Project: "ml"}, []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-bob", info.ID, info.Version, "v1")
	up, err := alice.Update(ctx, Args{Name: "ML_TOKEN", In: "ml"}, []byte("v2"))
	if err != nil || up.ID != info.ID || up.Version != info.Version+1 {
		t.Fatalf("update through As: %+v %v", up, err)
	}
	f.wantPut("ws-bob", info.ID, up.Version, "v2")

	for name, pair := range map[string][2]error{
		"update by a member": {
			second(bobHTTP.Update(ctx, Args{Name: "ML_TOKEN", In: "ml"}, []byte("x"))),
			second(bobNATS.Update(ctx, "ML_TOKEN", []byte("x"), InProject("ml"))),
		},
		"invalid name": {
			second(bobHTTP.Create(ctx, Args{Name: "9x"}, []byte("x"))),
			second(bobNATS.Create(ctx, "9x", []byte("x"), CreateOptions{})),
		},
		"unknown": {
			second(bobHTTP.Delete(ctx, Args{Name: "NOPE_NOPE"})),
			bobNATS.Delete(ctx, "NOPE_NOPE"),
		},
	} {
		h, n := pair[0], pair[1]
		if h == nil || n == nil || ErrorCode(h) != ErrorCode(n) || h.Error() != n.Error() {
			t.Errorf("%s: through As %q (%s), through NATS %q (%s)", name, h, ErrorCode(h), n, ErrorCode(n))
		}
	}
	list, err := bobHTTP.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != info.ID || list[0].Editable {
		t.Fatalf("bob's list through As: %+v %v", list, err)
	}
	if p := alice.Profile(); p.User != "alice" || len(p.Projects) != 1 || p.Projects[0] != "ml" {
		t.Fatalf("alice's profile: %+v", p)
	}

	if _, err := f.svc.As("mallory"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("As an unknown user: %v", err)
	}
	if err := f.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.List(ctx); !errors.Is(err, ErrUnavailable) || ErrorCode(err) != "unavailable" {
		t.Fatalf("after Stop: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }
