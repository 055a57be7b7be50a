package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// fixture is a real nats-server, a running service, the web server over it
// and a logged-in browser-like client per user:
//
//	alice: admin of project ml, admin of community research, owns ws-alice (ml)
//	bob:   member of project ml, owns ws-bob (ml)
//	carol: admin of project vision, owns ws-carol (vision)
//	research: a community of project vision, administered by alice
type fixture struct {
	t       testing.TB
	srv     *server.Server
	nc      *nats.Conn
	svc     *controlplane.Service
	web     *Server
	login   *DevLogin
	key     []byte
	ts      *httptest.Server
	rollout *Rollout
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.Start(t)}
	dir := &controlplane.Directory{
		Projects: []controlplane.Project{
			{ID: "ml", Members: []controlplane.Member{{User: "alice", Role: controlplane.RoleAdmin}, {User: "bob", Role: controlplane.RoleMember}}},
			{ID: "vision", Members: []controlplane.Member{{User: "carol", Role: controlplane.RoleAdmin}}},
		},
		Communities: []controlplane.Community{{ID: "research", Admins: []string{"alice"}, Projects: []string{"vision"}}},
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		dir.Users = append(dir.Users, controlplane.User{ID: u, PublicKey: must(must(nkeys.CreateUser()).PublicKey())})
		p := "ml"
		if u == "carol" {
			p = "vision"
		}
		dir.Workspaces = append(dir.Workspaces, controlplane.Workspace{ID: "ws-" + u, Owner: u, Projects: []string{p},
			CurveKey: must(must(nkeys.CreateCurveKeys()).PublicKey())})
	}
	var err error
	f.nc, err = nats.Connect(f.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.nc.Close)
	log := testLogger(t)
	f.svc = must(controlplane.New(controlplane.Options{Conn: f.nc, SignKey: must(nkeys.CreateAccount()),
		CurveKey: must(nkeys.CreateCurveKeys()), Directory: dir, Logger: log}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.svc.Stop() })
	f.rollout = must(StartRollout(f.nc, log))
	t.Cleanup(func() { _ = f.rollout.Stop() })
	f.key = make([]byte, 32)
	_, _ = rand.Read(f.key)
	f.login = must(NewDevLogin(f.key, log, nil))
	f.web = must(New(Options{Service: f.svc, Auth: f.login, Rollout: f.rollout, Logger: log, BasePath: "/secrets/"}))
	f.ts = httptest.NewServer(f.web)
	t.Cleanup(func() { f.web.Close(); f.ts.Close() })
	return f
}

// client is one browser: a cookie jar and, once logged in, the CSRF token.
type client struct {
	f    *fixture
	user string
	hc   *http.Client
	csrf string
}

func (f *fixture) anonymous() *client {
	jar, _ := cookiejar.New(nil)
	return &client{f: f, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// as logs user in through a one-time login URL.
func (f *fixture) as(user string) *client {
	f.t.Helper()
	c := f.anonymous()
	c.user = user
	tok := must(MintLoginToken(f.key, user, time.Now()))
	resp := c.do("GET", "/secrets/login?token="+url.QueryEscape(tok), nil, nil)
	if resp.status != http.StatusSeeOther {
		f.t.Fatalf("login as %s: status %d: %s", user, resp.status, resp.body)
	}
	me := c.do("GET", "/secrets/api/v1/me", nil, nil)
	var m struct {
		CSRF string `json:"csrf_token"`
	}
	if err := json.Unmarshal(me.body, &m); err != nil || m.CSRF == "" {
		f.t.Fatalf("me: %d %s", me.status, me.body)
	}
	c.csrf = m.CSRF
	return c
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request; body may be a []byte, url.Values (a form) or any JSON
// value. Each reply body goes to the leak check's sink.
func (c *client) do(method, path string, body any, header map[string]string) reply {
	c.f.t.Helper()
	var r io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		r, ct = bytes.NewReader(b), "application/json"
	case url.Values:
		if c.csrf != "" && b.Get("csrf") == "" {
			b.Set("csrf", c.csrf)
		}
		r, ct = strings.NewReader(b.Encode()), "application/x-www-form-urlencoded"
	default:
		r, ct = bytes.NewReader(must(json.Marshal(b))), "application/json"
	}
	req := must(http.NewRequest(method, c.f.ts.URL+path, r))
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if method != "GET" && c.csrf != "" {
		req.Header.Set("X-CSRF-Token", c.csrf)
	}
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	_, _ = sink{}.Write(data)
	_, _ = sink{}.Write([]byte(resp.Header.Get("Set-Cookie") + resp.Header.Get("Location") + "\n"))
	return reply{status: resp.StatusCode, header: resp.Header, body: data}
}

// api sends a JSON request to the API and decodes the reply into out (if
// not nil), failing unless the status is want.
func (c *client) api(method, path string, body any, want int, out any) reply {
	c.f.t.Helper()
	r := c.do(method, "/secrets/api/v1"+path, body, nil)
	if r.status != want {
		c.f.t.Fatalf("%s %s as %s: status %d, want %d: %s", method, path, c.user, r.status, want, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			c.f.t.Fatalf("%s %s: decoding %s: %v", method, path, r.body, err)
		}
	}
	return r
}

type secretResp struct {
	Secret controlplane.SecretInfo `json:"secret"`
}

type listResp struct {
	Secrets []controlplane.SecretInfo `json:"secrets"`
}

type errResp struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// create makes a secret through the API and returns it.
func (c *client) create(name, project, value string) controlplane.SecretInfo {
	c.f.t.Helper()
	var r secretResp
	c.api("POST", "/secrets", map[string]string{"name": name, "project": project, "value": value}, http.StatusCreated, &r)
	return r.Secret
}

// wantError checks an error reply's status and code, and that its message
// says what was wrong (contains each of words).
func wantError(t *testing.T, r reply, status int, code string, words ...string) {
	t.Helper()
	var e errResp
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("want JSON error %s, got %d %s", code, r.status, r.body)
	}
	if r.status != status || e.Error.Code != code {
		t.Fatalf("want %d %s, got %d %s: %s", status, code, r.status, e.Error.Code, e.Error.Message)
	}
	for _, w := range words {
		if !strings.Contains(e.Error.Message, w) {
			t.Errorf("error %q does not say %q", e.Error.Message, w)
		}
	}
}
