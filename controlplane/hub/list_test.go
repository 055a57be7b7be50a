package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

func names(users []User) []string {
	var out []string
	for _, u := range users {
		out = append(out, u.Name)
	}
	return out
}

func someUsers(n int) []User {
	us := make([]User, n)
	for i := range us {
		us[i] = User{Name: fmt.Sprintf("u%03d", i), Kind: "user"}
	}
	return us
}

// TestListPages: a hub whose api_page_max_limit is below what the service
// asks for still yields every user (a short page is not the end: the
// envelope's total says where the end is).
func TestListPages(t *testing.T) {
	h := newFakeHub(t)
	h.maxLimit = 50
	h.set(someUsers(120), nil)
	users, err := h.client().Users(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(users), names(someUsers(120))) {
		t.Fatalf("%d users, want all 120 in order: %v", len(users), names(users))
	}
	if n := h.count.requests.Load(); n != 3 {
		t.Errorf("%d requests for 120 users in pages of 50 overlapping by one, want 3", n)
	}
}

// TestListChangesWhileRead: a user deleted from a page already read, while
// the next is being read, shifts the rest by one; the service notices and
// reads the list again rather than miss the user after the deleted one
// (who would lose, and then regain, every secret).
func TestListChangesWhileRead(t *testing.T) {
	for _, c := range []struct {
		what   string
		change func(h *fakeHub)
	}{
		{"a user deleted", func(h *fakeHub) { h.users = slices.Delete(slices.Clone(h.users), 10, 11) }},
		{"a user deleted and one added", func(h *fakeHub) {
			h.users = append(slices.Delete(slices.Clone(h.users), 10, 11), User{Name: "new", Kind: "user"})
		}},
		{"a user added", func(h *fakeHub) { h.users = append(slices.Clone(h.users), User{Name: "new", Kind: "user"}) }},
	} {
		t.Run(c.what, func(t *testing.T) {
			h := newFakeHub(t)
			h.maxLimit = 50
			h.set(someUsers(120), nil)
			changed := false
			h.afterPage = func(r *http.Request) {
				if !changed && strings.HasPrefix(r.URL.Path, "/hub/api/users") {
					changed = true
					c.change(h)
				}
			}
			users, err := h.client().Users(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			h.mu.Lock()
			want := names(h.users)
			h.mu.Unlock()
			if !slices.Equal(names(users), want) {
				t.Fatalf("read %d users %v, want the hub's %d after the change", len(users), names(users), len(want))
			}
		})
	}
}

// TestListNeverSettles: a list that changes on every read fails the poll,
// and the directory in force stays (nobody loses secrets to a half-read
// list).
func TestListNeverSettles(t *testing.T) {
	h := newFakeHub(t)
	h.maxLimit = 50
	h.set(someUsers(120), []Group{{Name: "ml", Users: []string{"u000", "u119"}}})
	src, _ := NewSource(SourceOptions{Client: h.client()})
	var applied []*controlplane.Directory
	src.apply = func(d *controlplane.Directory) error { applied = append(applied, d); return nil }
	if _, err := src.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := 0
	h.afterPage = func(r *http.Request) {
		if r.URL.Query().Get("offset") == "0" && strings.HasPrefix(r.URL.Path, "/hub/api/users") {
			n++
			h.users = slices.Delete(slices.Clone(h.users), 5, 6)
		}
	}
	_, err := src.refresh(context.Background(), pollUsers)
	if err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("refresh of a list that never settles: %v", err)
	}
	if len(applied) != 1 {
		t.Errorf("applied %d directories, want only the first", len(applied))
	}
}

// TestListPlain: a hub that answers a plain list (one older than
// JupyterHub 2.0, which knows no pagination) gives the whole list at once.
func TestListPlain(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(someUsers(300))
	}))
	defer srv.Close()
	users, err := (&Client{APIURL: srv.URL, Token: "t"}).Users(context.Background())
	if err != nil || len(users) != 300 {
		t.Fatalf("%d users, %v; want the 300 of the plain list", len(users), err)
	}
}

// TestListMalformed: an envelope without its pagination, or one that says
// another offset than the one asked for, is an error, not a short list.
func TestListMalformed(t *testing.T) {
	for name, reply := range map[string]string{
		"no pagination": `{"items": [{"name": "a"}]}`,
		"wrong offset":  `{"items": [{"name": "a"}], "_pagination": {"offset": 5, "limit": 200, "total": 1}}`,
		"not json":      `<html>`,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(reply))
		}))
		_, err := (&Client{APIURL: srv.URL, Token: "t"}).Users(context.Background())
		srv.Close()
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
