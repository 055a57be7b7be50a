package hub

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/web"
)

// fakeHub is JupyterHub's REST API as the service uses it: users, groups,
// /user for any token it issued, and the OAuth token endpoint, which
// checks the client secret, the redirect URI and the PKCE verifier.
type fakeHub struct {
	t        *testing.T
	srv      *httptest.Server
	svcToken string

	mu         sync.Mutex
	users      []User
	groups     []Group
	tokens     map[string]string     // token -> user
	scopes     map[string][]string   // token -> the scopes /user reports
	codes      map[string]string     // code -> user
	challenges map[string]string     // code -> S256 challenge
	maxLimit   int                   // the hub's api_page_max_limit
	failing    bool                  // list requests fail with 503
	afterPage  func(r *http.Request) // called, h.mu held, after a list page
	count      counter
}

func newFakeHub(t *testing.T) *fakeHub {
	h := &fakeHub{t: t, svcToken: "service-token", maxLimit: 200, tokens: map[string]string{}, scopes: map[string][]string{}, codes: map[string]string{}, challenges: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hub/api/users", h.asService(func(w http.ResponseWriter, r *http.Request) {
		users := h.users
		if r.URL.Query().Get("state") == "active" {
			users = activeUsers(users)
		}
		hubPages(w, r, users, h.maxLimit)
	}))
	mux.HandleFunc("GET /hub/api/users/{name}", h.asService(func(w http.ResponseWriter, r *http.Request) {
		i := slices.IndexFunc(h.users, func(u User) bool { return u.Name == r.PathValue("name") })
		if i < 0 {
			http.Error(w, `{"status":404}`, http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(h.users[i])
	}))
	mux.HandleFunc("GET /hub/api/groups", h.asService(func(w http.ResponseWriter, r *http.Request) {
		hubPages(w, r, h.groups, h.maxLimit)
	}))
	mux.HandleFunc("GET /hub/api/user", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "token ")
		name, ok := h.tokens[tok]
		if !ok {
			http.Error(w, `{"status":403}`, http.StatusForbidden)
			return
		}
		_ = json.NewEncoder(w).Encode(User{Name: name, Kind: "user", Scopes: h.scopes[tok]})
	})
	mux.HandleFunc("POST /hub/api/oauth2/token", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		_ = r.ParseForm()
		f := r.PostForm
		code := f.Get("code")
		user, ok := h.codes[code]
		sum := sha256.Sum256([]byte(f.Get("code_verifier")))
		if !ok || f.Get("client_secret") != h.svcToken || f.Get("client_id") != "service-nbsecrets" ||
			f.Get("grant_type") != "authorization_code" || f.Get("redirect_uri") != "/services/nbsecrets/oauth_callback" ||
			b64.EncodeToString(sum[:]) != h.challenges[code] {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
			return
		}
		delete(h.codes, code)
		tok := "oauth-" + code
		h.tokens[tok] = user
		_ = json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "token_type": "Bearer"})
	})
	h.srv = httptest.NewServer(h.count.wrap(mux))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *fakeHub) asService(serve http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "token "+h.svcToken {
			http.Error(w, `{"status":403}`, http.StatusForbidden)
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.failing {
			http.Error(w, `{"status":503}`, http.StatusServiceUnavailable)
			return
		}
		serve(w, r)
		if h.afterPage != nil {
			h.afterPage(r)
		}
	}
}

func (h *fakeHub) client() *Client {
	return &Client{APIURL: h.srv.URL + "/hub/api", Token: h.svcToken}
}

func (h *fakeHub) set(users []User, groups []Group) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.users, h.groups = users, groups
}

func curveKey(t *testing.T) string {
	kp, err := nkeys.CreateCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return pub
}

func roles(d *controlplane.Directory, project string) map[string]string {
	out := map[string]string{}
	for _, p := range d.Projects {
		if p.ID == project {
			for _, m := range p.Members {
				out[m.User] = m.Role
			}
		}
	}
	return out
}

func TestSourceDirectory(t *testing.T) {
	h := newFakeHub(t)
	running := map[string]Server{"": {Ready: true}}
	h.set([]User{
		{Name: "alice", Servers: running}, {Name: "bob", Servers: running}, {Name: "carol", Servers: running},
		{Name: "dave", Admin: true}, {Name: "eve@example.org"},
	}, []Group{
		{Name: "ml", Users: []string{"alice", "bob", "eve@example.org"}},
		{Name: "ml-admins", Users: []string{"bob"}},
		{Name: "vision", Users: []string{"carol"}},
		{Name: "ops-admins", Users: []string{"alice"}}, // no group "ops": a project of its own
		{Name: "bad group"},
	})
	src, err := NewSource(SourceOptions{Client: h.client(), Communities: []controlplane.Community{
		{ID: "research", Admins: []string{"alice", "ghost"}, Projects: []string{"ml", "vision", "gone"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var applied []*controlplane.Directory
	src.apply = func(d *controlplane.Directory) error { applied = append(applied, d); return nil }
	ctx := context.Background()
	if _, err := src.Register(ctx, Registration{Workspace: "alice", User: "alice", CurveKey: curveKey(t)}); err != nil {
		t.Fatal(err)
	}
	d, err := src.Register(ctx, Registration{Workspace: "carol--gpu", User: "carol", Server: "gpu", CurveKey: curveKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("the hub's directory does not validate: %v", err)
	}
	var users []string
	for _, u := range d.Users {
		users = append(users, u.ID)
	}
	if !slices.Equal(users, []string{"alice", "bob", "carol", "dave"}) {
		t.Errorf("users %v: eve@example.org is not a valid id and must be skipped", users)
	}
	var projects []string
	for _, p := range d.Projects {
		projects = append(projects, p.ID)
	}
	if !slices.Equal(projects, []string{"ml", "ops-admins", "vision"}) {
		t.Errorf("projects %v", projects)
	}
	if got := roles(d, "ml"); !maps(got, map[string]string{"alice": "member", "bob": "admin", "dave": "admin"}) {
		t.Errorf("ml roles %v: bob through ml-admins, dave as hub admin", got)
	}
	if got := roles(d, "vision"); !maps(got, map[string]string{"carol": "member", "dave": "admin"}) {
		t.Errorf("vision roles %v", got)
	}
	if len(d.Communities) != 1 || !slices.Equal(d.Communities[0].Admins, []string{"alice"}) || !slices.Equal(d.Communities[0].Projects, []string{"ml", "vision"}) {
		t.Errorf("communities %+v: unknown users and projects dropped", d.Communities)
	}
	a, ok := d.AccessOf("alice")
	if !ok || !slices.Equal(a.Projects, []string{"ml", "ops-admins"}) || !slices.Equal(a.Communities, []string{"research"}) {
		t.Errorf("alice's workspace: %+v", a)
	}
	if a, _ := d.AccessOf("carol--gpu"); a.Owner != "carol" || !slices.Equal(a.Projects, []string{"vision"}) {
		t.Errorf("carol's named server: %+v", a)
	}
	// dave administers ml without being in the group: no workspace of his
	// would receive it (he has none here), and the directory says admin.
	if len(applied) != 2 {
		t.Errorf("applied %d directories, want one per registration", len(applied))
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestSourcePrefix(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}}, []Group{{Name: "nbs-ml", Users: []string{"alice"}}, {Name: "staff", Users: []string{"alice"}}})
	src, _ := NewSource(SourceOptions{Client: h.client(), GroupPrefix: "nbs-"})
	d, err := src.Directory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Projects) != 1 || d.Projects[0].ID != "ml" {
		t.Errorf("projects %+v, want only ml (from nbs-ml)", d.Projects)
	}
}

// TestSourceWatch: a group change on the hub reaches apply at the next
// poll, a poll that changes nothing applies nothing, and a workspace
// whose server the hub stops listing is dropped after the grace period.
func TestSourceWatch(t *testing.T) {
	h := newFakeHub(t)
	running := map[string]Server{"": {Ready: true}}
	h.set([]User{{Name: "alice", Servers: running}, {Name: "bob", Servers: running}}, []Group{{Name: "ml", Users: []string{"alice", "bob"}}})
	now := time.Now()
	var clockMu sync.Mutex
	src, _ := NewSource(SourceOptions{Client: h.client(), Interval: 20 * time.Millisecond, UsersInterval: 20 * time.Millisecond, Now: func() time.Time {
		clockMu.Lock()
		defer clockMu.Unlock()
		return now
	}})
	got := make(chan *controlplane.Directory, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx, func(d *controlplane.Directory) error { got <- d; return nil })
	}()
	defer func() { cancel(); <-done }()
	next := func(what string) *controlplane.Directory {
		t.Helper()
		select {
		case d := <-got:
			return d
		case <-time.After(10 * time.Second):
			t.Fatalf("no directory applied: %s", what)
			return nil
		}
	}
	next("the first")
	if _, err := src.Register(ctx, Registration{Workspace: "bob", User: "bob", CurveKey: curveKey(t)}); err != nil {
		t.Fatal(err)
	}
	if a, _ := next("bob's registration").AccessOf("bob"); !slices.Equal(a.Projects, []string{"ml"}) {
		t.Fatalf("bob's access %+v", a)
	}
	h.set([]User{{Name: "alice", Servers: running}, {Name: "bob", Servers: running}}, []Group{{Name: "ml", Users: []string{"alice"}}})
	if a, _ := next("bob leaving ml").AccessOf("bob"); len(a.Projects) != 0 {
		t.Fatalf("bob's access after leaving ml: %+v", a)
	}
	select {
	case d := <-got:
		t.Fatalf("applied an unchanged directory: %+v", d)
	case <-time.After(200 * time.Millisecond):
	}
	// bob's server stops: within the grace period the workspace stays.
	h.set([]User{{Name: "alice", Servers: running}, {Name: "bob", Servers: map[string]Server{}}}, []Group{{Name: "ml", Users: []string{"alice"}}})
	select {
	case d := <-got:
		t.Fatalf("dropped a workspace within its grace period: %+v", d.Workspaces)
	case <-time.After(200 * time.Millisecond):
	}
	clockMu.Lock()
	now = now.Add(2 * startGrace)
	clockMu.Unlock()
	if d := next("bob's stopped server"); len(d.Workspaces) != 0 {
		t.Fatalf("workspaces %+v after bob's server stopped", d.Workspaces)
	}
}

func TestRegistrarRefuses(t *testing.T) {
	h := newFakeHub(t)
	h.set([]User{{Name: "alice"}, {Name: "bob"}}, nil)
	h.tokens["alice-server-token"] = "alice"
	h.scopes["alice-server-token"] = []string{"access:servers!server=alice/", "users:activity!user=alice"}
	h.tokens["bob-server-token"] = "bob"
	src, _ := NewSource(SourceOptions{Client: h.client()})
	src.apply = func(*controlplane.Directory) error { return nil }
	reg := &Registrar{Source: src, Client: h.client(), Reply: RegisterReply{NATSURL: "nats://x", ServiceKeys: []string{"A"}, ServiceCurveKey: "X"}}
	post := func(auth string, body any) (int, string) {
		b, _ := json.Marshal(body)
		r := httptest.NewRequest("POST", "/services/nbsecrets/"+RegisterPath, strings.NewReader(string(b)))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		reg.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	good := RegisterRequest{User: "alice", CurveKey: curveKey(t)}
	for _, c := range []struct {
		what   string
		auth   string
		body   any
		status int
	}{
		{"no token", "", good, http.StatusUnauthorized},
		{"a forged token", "token forged-token", good, http.StatusUnauthorized},
		{"basic auth", "Basic YWxpY2U6eA==", good, http.StatusUnauthorized},
		{"bob's token for alice's server", "token bob-server-token", good, http.StatusForbidden},
		{"a bad curve key", "token alice-server-token", RegisterRequest{User: "alice", CurveKey: "UABC"}, http.StatusBadRequest},
		{"an unknown field", "token alice-server-token", map[string]string{"user": "alice", "curve_key": good.CurveKey, "admin": "true"}, http.StatusBadRequest},
		{"a server name that makes no workspace id", "token alice-server-token", RegisterRequest{User: "alice", Server: "a b", CurveKey: good.CurveKey}, http.StatusBadRequest},
	} {
		if status, body := post(c.auth, c.body); status != c.status {
			t.Errorf("%s: %d %s, want %d", c.what, status, body, c.status)
		}
	}
	if len(src.regs) != 0 {
		t.Fatalf("refused registrations were kept: %v", src.regs)
	}
	status, body := post("token alice-server-token", good)
	var rep RegisterReply
	if status != http.StatusOK || json.Unmarshal([]byte(body), &rep) != nil || rep.Workspace != "alice" || rep.Owner != "alice" || rep.NATSURL != "nats://x" {
		t.Fatalf("alice's own registration: %d %s", status, body)
	}
}

// oauthFixture is an OAuth in front of a handler that says who called.
func oauthFixture(t *testing.T) (*fakeHub, *OAuth, http.Handler, *time.Time) {
	h := newFakeHub(t)
	now := time.Now()
	o, err := NewOAuth(OAuthOptions{Client: h.client(), ClientID: "service-nbsecrets", Prefix: "/services/nbsecrets/",
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := o.Authenticate(r)
		if err != nil {
			http.Error(w, "401", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("user=" + id.User))
	})
	return h, o, o.Wrap(inner), &now
}

func serve(hd http.Handler, method, target string, cookies []*http.Cookie, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for _, c := range cookies {
		r.AddCookie(c)
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	hd.ServeHTTP(w, r)
	return w
}

func cookieNamed(w *httptest.ResponseRecorder, name string) *http.Cookie {
	for _, c := range w.Result().Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// login goes through the flow as a browser would and returns the session
// cookie.
func login(t *testing.T, h *fakeHub, hd http.Handler, user string) *http.Cookie {
	t.Helper()
	w := serve(hd, "GET", "/services/nbsecrets/new", nil)
	if w.Code != http.StatusFound {
		t.Fatalf("a page without a session: %d, want a redirect to the hub", w.Code)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	q := loc.Query()
	if loc.Path != "/hub/api/oauth2/authorize" || q.Get("client_id") != "service-nbsecrets" || q.Get("state") == "" ||
		q.Get("code_challenge_method") != "S256" || q.Get("redirect_uri") != "/services/nbsecrets/oauth_callback" {
		t.Fatalf("redirected to %s", loc)
	}
	st := cookieNamed(w, stateCookie)
	if st == nil || st.Path != "/services/nbsecrets/oauth_callback" || !st.HttpOnly {
		t.Fatalf("state cookie %+v", st)
	}
	code := "code-" + random()[:8]
	h.mu.Lock()
	h.codes[code], h.challenges[code] = user, q.Get("code_challenge")
	h.mu.Unlock()
	w = serve(hd, "GET", "/services/nbsecrets/oauth_callback?code="+code+"&state="+url.QueryEscape(q.Get("state")), []*http.Cookie{st})
	if w.Code != http.StatusFound || w.Header().Get("Location") != "/services/nbsecrets/new" {
		t.Fatalf("callback: %d to %q: %s", w.Code, w.Header().Get("Location"), w.Body)
	}
	s := cookieNamed(w, SessionCookie)
	if s == nil || s.Path != "/services/nbsecrets/" || !s.HttpOnly || strings.Contains(s.Value, "oauth-") {
		t.Fatalf("session cookie %+v: scoped to the prefix, HttpOnly, the token inside encrypted", s)
	}
	return s
}

func TestOAuthLogin(t *testing.T) {
	h, _, hd, _ := oauthFixture(t)
	h.set([]User{{Name: "alice"}}, nil)
	s := login(t, h, hd, "alice")
	if w := serve(hd, "GET", "/services/nbsecrets/", []*http.Cookie{s}); w.Body.String() != "user=alice" {
		t.Fatalf("with the session: %d %s", w.Code, w.Body)
	}
	// The API answers 401 rather than redirecting.
	if w := serve(hd, "GET", "/services/nbsecrets/api/v1/secrets", nil); w.Code != http.StatusUnauthorized {
		t.Fatalf("the API without a session: %d", w.Code)
	}
}

func TestOAuthRefuses(t *testing.T) {
	h, o, hd, now := oauthFixture(t)
	start := serve(hd, "GET", "/services/nbsecrets/", nil)
	st := cookieNamed(start, stateCookie)
	loc, _ := url.Parse(start.Header().Get("Location"))
	state := loc.Query().Get("state")
	h.mu.Lock()
	h.codes["c1"], h.challenges["c1"] = "alice", loc.Query().Get("code_challenge")
	h.codes["c2"], h.challenges["c2"] = "alice", "not-the-challenge"
	h.mu.Unlock()
	for _, c := range []struct {
		what    string
		target  string
		cookies []*http.Cookie
	}{
		{"no state cookie (login CSRF)", "/services/nbsecrets/oauth_callback?code=c1&state=" + state, nil},
		{"a state that is not the cookie's", "/services/nbsecrets/oauth_callback?code=c1&state=forged", []*http.Cookie{st}},
		{"a forged state cookie", "/services/nbsecrets/oauth_callback?code=c1&state=" + state, []*http.Cookie{{Name: stateCookie, Value: "AAAA" + st.Value[4:]}}},
		{"a code issued for another PKCE challenge", "/services/nbsecrets/oauth_callback?code=c2&state=" + state, []*http.Cookie{st}},
		{"an unknown code", "/services/nbsecrets/oauth_callback?code=nope&state=" + state, []*http.Cookie{st}},
	} {
		w := serve(hd, "GET", c.target, c.cookies)
		if w.Code != http.StatusForbidden || cookieNamed(w, SessionCookie) != nil {
			t.Errorf("%s: %d, session %v; want 403 and no session", c.what, w.Code, cookieNamed(w, SessionCookie))
		}
	}
	// A state cookie is not a session cookie, though the same key seals both.
	r := httptest.NewRequest("GET", "/services/nbsecrets/", nil)
	r.AddCookie(&http.Cookie{Name: SessionCookie, Value: st.Value})
	if _, err := o.Authenticate(r); !errors.Is(err, web.ErrNoIdentity) {
		t.Errorf("a state cookie passed as a session: %v", err)
	}
	// Header tokens: the hub's word, nothing else.
	h.mu.Lock()
	h.tokens["alice-token"] = "alice"
	h.mu.Unlock()
	for _, c := range []struct{ auth, want string }{
		{"token alice-token", "user=alice"}, {"Bearer alice-token", "user=alice"},
		{"token forged", "401\n"}, {"Basic YWxpY2U6eA==", "401\n"}, {"token alice-token extra\r\n", "401\n"},
	} {
		if w := serve(hd, "GET", "/services/nbsecrets/api/v1/me", nil, "Authorization", c.auth); w.Body.String() != c.want {
			t.Errorf("Authorization %q: %q, want %q", c.auth, w.Body.String(), c.want)
		}
	}
	// A revoked token stops working once the hub is asked again.
	s := login(t, h, hd, "alice")
	h.mu.Lock()
	for tok, u := range h.tokens {
		if u == "alice" {
			delete(h.tokens, tok)
		}
	}
	h.mu.Unlock()
	*now = now.Add(tokenCheck + time.Second)
	if w := serve(hd, "GET", "/services/nbsecrets/api/v1/me", []*http.Cookie{s}); w.Code != http.StatusUnauthorized {
		t.Errorf("a session whose token the hub revoked: %d %s", w.Code, w.Body)
	}
	if w := serve(hd, "GET", "/services/nbsecrets/api/v1/me", nil, "Authorization", "token alice-token"); w.Code != http.StatusUnauthorized {
		t.Errorf("a revoked API token: %d", w.Code)
	}
}
