package hub

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// hub3Scopes and hub4Scopes are what GET /hub/api/user reports for a
// server's token: JupyterHub 3.0's "server" role reaches all of the user's
// servers, 4.0's only the one it was made for.
func hub3Scopes(user string) []string {
	return []string{"access:servers!user=" + user, "users:activity!user=" + user}
}

func hub4Scopes(user, server string) []string {
	return []string{"access:servers!server=" + user + "/" + server, "users:activity!user=" + user}
}

// TestRegistrarServerIdentity performs the attacks of issue 11: the token
// of alice's server "a" registering as her server "b", as her default
// server, or as a server of bob's, on a hub that binds server tokens to
// their server (4.x scopes) and on one that does not (3.0, where the
// hub's server proof decides).
func TestRegistrarServerIdentity(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	otherKey := bytes.Repeat([]byte{8}, 32)
	for _, hubVersion := range []string{"3.0", "4.x"} {
		t.Run(hubVersion, func(t *testing.T) {
			h := newFakeHub(t)
			h.set([]User{{Name: "alice"}, {Name: "bob"}}, nil)
			scopes := func(user, server string) []string {
				if hubVersion == "3.0" {
					return hub3Scopes(user)
				}
				return hub4Scopes(user, server)
			}
			h.tokens["tok-alice-a"], h.scopes["tok-alice-a"] = "alice", scopes("alice", "a")
			h.tokens["tok-alice-b"], h.scopes["tok-alice-b"] = "alice", scopes("alice", "b")
			h.tokens["tok-bob"], h.scopes["tok-bob"] = "bob", scopes("bob", "")
			// alice's own API token (the hub's token page): all she may do.
			h.tokens["tok-alice-personal"], h.scopes["tok-alice-personal"] = "alice", []string{"access:servers!user=alice", "read:users!user=alice"}
			src, _ := NewSource(SourceOptions{Client: h.client()})
			src.apply = func(*controlplane.Directory) error { return nil }
			reg := &Registrar{Source: src, Client: h.client(), ProofKey: key}
			post := func(token string, req RegisterRequest) (int, string) {
				req.CurveKey = curveKey(t)
				b, _ := json.Marshal(req)
				r := httptest.NewRequest("POST", "/services/nbsecrets/"+RegisterPath, bytes.NewReader(b))
				r.Header.Set("Authorization", "token "+token)
				w := httptest.NewRecorder()
				reg.ServeHTTP(w, r)
				return w.Code, w.Body.String()
			}
			proofA := ServerProof(key, "alice", "a", "tok-alice-a")
			for _, c := range []struct {
				what  string
				token string
				req   RegisterRequest
			}{
				{"a's token and proof claiming b", "tok-alice-a", RegisterRequest{User: "alice", Server: "b", ServerProof: proofA}},
				{"a's token claiming b, no proof", "tok-alice-a", RegisterRequest{User: "alice", Server: "b"}},
				{"a's token claiming alice's default server", "tok-alice-a", RegisterRequest{User: "alice", Server: "", ServerProof: proofA}},
				{"a's token claiming bob's server", "tok-alice-a", RegisterRequest{User: "bob", Server: "", ServerProof: proofA}},
				{"a's token claiming bob's server a", "tok-alice-a", RegisterRequest{User: "bob", Server: "a", ServerProof: proofA}},
				{"a's token with a proof for b made with b's token", "tok-alice-a", RegisterRequest{User: "alice", Server: "b", ServerProof: ServerProof(key, "alice", "b", "tok-alice-b")}},
				{"a's token with a proof for a under another key", "tok-alice-a", RegisterRequest{User: "alice", Server: "a", ServerProof: ServerProof(otherKey, "alice", "a", "tok-alice-a")}},
				{"a's token with a malformed proof", "tok-alice-a", RegisterRequest{User: "alice", Server: "a", ServerProof: "v1.x"}},
				{"b's token with a's proof claiming a", "tok-alice-b", RegisterRequest{User: "alice", Server: "a", ServerProof: proofA}},
				{"alice's personal token claiming a", "tok-alice-personal", RegisterRequest{User: "alice", Server: "a"}},
				{"alice's personal token with a's proof", "tok-alice-personal", RegisterRequest{User: "alice", Server: "a", ServerProof: proofA}},
			} {
				status, body := post(c.token, c.req)
				if status != http.StatusForbidden {
					t.Errorf("%s: %d %s, want 403", c.what, status, body)
				}
				if strings.Contains(body, "tok-") || strings.Contains(body, proofA[3:]) {
					t.Errorf("%s: the refusal repeats the token or the proof: %s", c.what, body)
				}
			}
			if len(src.regs) != 0 {
				t.Fatalf("refused registrations were kept: %v", src.regs)
			}
			// The right server registers: with its proof on either hub, and
			// on 4.x with its token alone.
			if status, body := post("tok-alice-a", RegisterRequest{User: "alice", Server: "a", ServerProof: proofA}); status != http.StatusOK || !strings.Contains(body, `"workspace":"alice--a"`) {
				t.Errorf("server a with its proof: %d %s", status, body)
			}
			status, body := post("tok-alice-b", RegisterRequest{User: "alice", Server: "b"})
			if want := map[string]int{"3.0": http.StatusForbidden, "4.x": http.StatusOK}[hubVersion]; status != want {
				t.Errorf("server b with its token and no proof: %d %s, want %d", status, body, want)
			}
			if status, body := post("tok-bob", RegisterRequest{User: "bob", Server: "", ServerProof: ServerProof(key, "bob", "", "tok-bob")}); status != http.StatusOK {
				t.Errorf("bob's default server with its proof: %d %s", status, body)
			}
		})
	}
}

// TestRegistrarNoProofKey: a service without the proof key on a 3.0 hub
// cannot tell servers apart, so it registers none rather than trusting
// the claim; a proof is then worthless too.
func TestRegistrarNoProofKey(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, nil)
	h.tokens["tok"], h.scopes["tok"] = "alice", hub3Scopes("alice")
	src, _ := NewSource(SourceOptions{Client: h.client()})
	src.apply = func(*controlplane.Directory) error { return nil }
	reg := &Registrar{Source: src, Client: h.client()}
	for _, proof := range []string{"", ServerProof(bytes.Repeat([]byte{1}, 32), "alice", "", "tok")} {
		b, _ := json.Marshal(RegisterRequest{User: "alice", CurveKey: curveKey(t), ServerProof: proof})
		r := httptest.NewRequest("POST", "/x", bytes.NewReader(b))
		r.Header.Set("Authorization", "token tok")
		w := httptest.NewRecorder()
		reg.ServeHTTP(w, r)
		if w.Code != http.StatusForbidden {
			t.Errorf("proof %v without a key: %d %s, want 403", proof != "", w.Code, w.Body.String())
		}
	}
}

func TestTokenServers(t *testing.T) {
	for _, c := range []struct {
		scopes []string
		want   []string
		bound  bool
	}{
		{hub4Scopes("alice", ""), []string{""}, true},
		{hub4Scopes("alice", "gpu"), []string{"gpu"}, true},
		{hub3Scopes("alice"), nil, false},
		{[]string{"access:servers"}, nil, false},
		{[]string{"access:servers!server=alice/a", "access:servers!group=ml"}, nil, false},
		{[]string{"access:servers!server=bob/a"}, nil, false},
		{[]string{"read:users!user=alice"}, nil, false},
	} {
		got, bound := tokenServers("alice", c.scopes)
		if bound != c.bound || len(got) != len(c.want) || (len(got) > 0 && got[0] != c.want[0]) {
			t.Errorf("tokenServers(%v) = %q, %v; want %q, %v", c.scopes, got, bound, c.want, c.bound)
		}
	}
}

func TestLoadProofKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := strings.Repeat("ab", 32)
	if k, err := LoadProofKey(write("good", good+"\n", 0o600)); err != nil || len(k) != 32 {
		t.Errorf("a good key: %d bytes, %v", len(k), err)
	}
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"loose":  {good, 0o644, "group or others"},
		"short":  {"abcd", 0o600, "at least 32"},
		"nothex": {strings.Repeat("zz", 32), 0o600, "not hex"},
	} {
		_, err := LoadProofKey(write(name, c.content, c.mode))
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), c.content) {
			t.Errorf("%s: %v, want an error saying %q without the content", name, err, c.want)
		}
	}
	if _, err := LoadProofKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing key file loaded")
	}
}

// TestRegistrarReverifies: an agent's periodic registration, unchanged,
// is served on the hub's word of less than reverifyAfter ago; anything
// changed, or an older word, asks the hub again, so a token the hub no
// longer accepts is refused then.
func TestRegistrarReverifies(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, nil)
	h.tokens["tok"], h.scopes["tok"] = "alice", hub4Scopes("alice", "")
	src, _ := NewSource(SourceOptions{Client: h.client()})
	src.apply = func(*controlplane.Directory) error { return nil }
	now := time.Now()
	reg := &Registrar{Source: src, Client: h.client(), Now: func() time.Time { return now }}
	post := func(req RegisterRequest) int {
		b, _ := json.Marshal(req)
		r := httptest.NewRequest("POST", "/x", bytes.NewReader(b))
		r.Header.Set("Authorization", "token tok")
		w := httptest.NewRecorder()
		reg.ServeHTTP(w, r)
		return w.Code
	}
	userCalls := func() int64 { return h.count.requests.Load() }
	req := RegisterRequest{User: "alice", CurveKey: curveKey(t)}
	if code := post(req); code != http.StatusOK {
		t.Fatalf("first registration: %d", code)
	}
	base := userCalls()
	for range 3 {
		now = now.Add(5 * time.Second)
		if code := post(req); code != http.StatusOK {
			t.Fatalf("re-registration: %d", code)
		}
	}
	if n := userCalls() - base; n != 0 {
		t.Errorf("unchanged re-registrations within %v asked the hub %d times", reverifyAfter, n)
	}
	changed := req
	changed.CurveKey = curveKey(t)
	if code := post(changed); code != http.StatusOK || userCalls()-base != 1 {
		t.Errorf("a new curve key: %d, %d hub calls; want 200 after asking the hub", code, userCalls()-base)
	}
	// The server stops: the hub deletes its token.
	h.mu.Lock()
	delete(h.tokens, "tok")
	h.mu.Unlock()
	other := changed
	other.Server = "x"
	if code := post(other); code != http.StatusUnauthorized {
		t.Errorf("a changed registration with a token the hub dropped: %d, want 401", code)
	}
	now = now.Add(reverifyAfter)
	if code := post(changed); code != http.StatusUnauthorized {
		t.Errorf("a registration %v after the hub's word, with a token it dropped: %d, want 401", reverifyAfter, code)
	}
}
