package web

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestLogin: a login URL works once, only with this instance's key, only
// before it expires; the session cookie is HttpOnly and SameSite=Strict;
// logging out ends the session.
func TestLogin(t *testing.T) {
	f := newFixture(t)
	tok := must(MintLoginToken(f.key, "alice", time.Now()))
	c := f.anonymous()
	r := c.do("GET", "/secrets/login?token="+url.QueryEscape(tok), nil, nil)
	if r.status != http.StatusSeeOther || r.header.Get("Location") != "/secrets/" {
		t.Fatalf("login: %d %s", r.status, r.header.Get("Location"))
	}
	set := r.header.Get("Set-Cookie")
	for _, want := range []string{SessionCookie + "=", "HttpOnly", "SameSite=Strict", "Path=/secrets/"} {
		if !strings.Contains(set, want) {
			t.Errorf("session cookie %q lacks %s", set, want)
		}
	}
	if p := c.do("GET", "/secrets/", nil, nil); p.status != 200 || !strings.Contains(string(p.body), "alice") {
		t.Fatalf("list after login: %d", p.status)
	}

	again := f.anonymous()
	if r := again.do("GET", "/secrets/login?token="+url.QueryEscape(tok), nil, nil); r.status != 403 || !strings.Contains(string(r.body), "already used") {
		t.Fatalf("second use of a login URL: %d %s", r.status, r.body)
	}
	otherKey := make([]byte, 32)
	_, _ = rand.Read(otherKey)
	forged := must(MintLoginToken(otherKey, "alice", time.Now()))
	if r := again.do("GET", "/secrets/login?token="+url.QueryEscape(forged), nil, nil); r.status != 403 || !strings.Contains(string(r.body), "not signed") {
		t.Fatalf("forged login URL: %d %s", r.status, r.body)
	}
	old := must(MintLoginToken(f.key, "alice", time.Now().Add(-LoginTokenTTL-time.Minute)))
	if r := again.do("GET", "/secrets/login?token="+url.QueryEscape(old), nil, nil); r.status != 403 || !strings.Contains(string(r.body), "expired") {
		t.Fatalf("expired login URL: %d %s", r.status, r.body)
	}
	// A token for a user the directory does not have logs in nobody.
	ghost := f.anonymous()
	ghost.do("GET", "/secrets/login?token="+url.QueryEscape(must(MintLoginToken(f.key, "mallory", time.Now()))), nil, nil)
	wantError(t, ghost.do("GET", "/secrets/api/v1/secrets", nil, nil), 401, "unauthenticated")
	if r := again.do("GET", "/secrets/", nil, nil); r.status != 401 || !strings.Contains(string(r.body), "nbsecrets ui") {
		t.Fatalf("list without a session: %d %s", r.status, r.body)
	}

	alice := f.as("alice")
	if r := alice.do("POST", "/secrets/logout", url.Values{}, nil); r.status != 200 {
		t.Fatalf("logout: %d", r.status)
	}
	wantError(t, alice.do("GET", "/secrets/api/v1/secrets", nil, nil), 401, "unauthenticated")
}

// TestPages drives the seeds' screens through their forms as a browser
// would: New Secret -> Create, info page, Edit -> Save, Clone -> Create,
// Access (admin: on; member: refused), Delete -> "Secret destroyed"; every
// page has the CSP, no inline script, and never a value.
func TestPages(t *testing.T) {
	f := newFixture(t)
	alice, bob := f.as("alice"), f.as("bob")
	page := func(c *client, method, path string, form url.Values, want int) string {
		t.Helper()
		var body any
		if form != nil {
			body = form
		}
		r := c.do(method, "/secrets/"+path, body, nil)
		if r.status != want {
			t.Fatalf("%s %s as %s: %d, want %d: %s", method, path, c.user, r.status, want, r.body)
		}
		csp := r.header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Fatalf("%s: CSP %q", path, csp)
		}
		if strings.Contains(r.header.Get("Content-Type"), "html") {
			for _, m := range regexp.MustCompile(`(?is)<script[^>]*>.*?</script>|\son[a-z]+\s*=`).FindAllString(string(r.body), -1) {
				if !regexp.MustCompile(`^<script src="[^"]+" defer></script>$`).MatchString(m) {
					t.Fatalf("%s: inline script or handler %q", path, m)
				}
			}
		}
		return string(r.body)
	}
	follow := func(c *client, form url.Values, path string) string {
		t.Helper()
		r := c.do("POST", "/secrets/"+path, form, nil)
		if r.status != http.StatusSeeOther {
			t.Fatalf("POST %s: %d %s", path, r.status, r.body)
		}
		return strings.TrimPrefix(r.header.Get("Location"), "/secrets/")
	}

	if body := page(alice, "GET", "", nil, 200); !strings.Contains(body, "New Secret") || !strings.Contains(body, "No secrets yet") {
		t.Fatalf("empty list page: %s", body)
	}
	if body := page(alice, "GET", "new", nil, 200); !strings.Contains(body, ">Create<") || !strings.Contains(body, "Private") || !strings.Contains(body, `<option value="ml"`) {
		t.Fatalf("New Secret page: %s", body)
	}
	v1 := secretValue("page-v1")
	loc := follow(alice, url.Values{"name": {"DB_PASSWORD"}, "value": {v1}, "scope": {"project"}, "project": {"ml"}}, "new")
	id := strings.TrimPrefix(loc, "secrets/")
	info := page(alice, "GET", loc, nil, 200)
	for _, want := range []string{"DB_PASSWORD", "Project ml", ">Clone<", ">Edit<", ">Delete<", ">Access<", "write-only", "ws-bob"} {
		if !strings.Contains(info, want) {
			t.Errorf("info page lacks %q", want)
		}
	}
	// A refused create shows the service's words and not the value typed.
	v := secretValue("refused")
	if body := page(alice, "POST", "new", url.Values{"name": {"9lives"}, "value": {v}, "scope": {"private"}}, 400); !strings.Contains(body, "must start with a Latin letter") {
		t.Fatalf("refused create: %s", body)
	}
	if body := page(alice, "POST", "new", url.Values{"name": {"DB_PASSWORD"}, "value": {v}, "scope": {"project"}, "project": {"ml"}}, 409); !strings.Contains(body, "already exists") {
		t.Fatalf("taken name: %s", body)
	}

	edit := page(alice, "GET", loc+"/edit", nil, 200)
	if !strings.Contains(edit, ">Save<") || !strings.Contains(edit, `name="version" value="1"`) {
		t.Fatalf("Edit page: %s", edit)
	}
	v2 := secretValue("page-v2")
	if got := follow(alice, url.Values{"name": {"DB_PASS"}, "value": {v2}, "version": {"1"}}, loc+"/edit"); got != loc {
		t.Fatalf("Save went to %s", got)
	}
	if info := page(alice, "GET", loc, nil, 200); !strings.Contains(info, "DB_PASS<") || !strings.Contains(info, `id="version">2<`) {
		t.Fatalf("after Save: %s", info)
	}
	// A Save based on a stale version is refused, the form kept.
	if body := page(alice, "POST", loc+"/edit", url.Values{"name": {"DB_PASS"}, "value": {secretValue("stale")}, "version": {"1"}}, 409); !strings.Contains(body, "changed meanwhile") {
		t.Fatalf("stale Save: %s", body)
	}

	if body := page(alice, "GET", loc+"/clone", nil, 200); !strings.Contains(body, "DB_PASS_COPY") {
		t.Fatalf("Clone page: %s", body)
	}
	cloneLoc := follow(alice, url.Values{"name": {"DB_PASS_COPY"}, "scope": {"private"}}, loc+"/clone")
	if cloneLoc == loc || !strings.Contains(page(alice, "GET", cloneLoc, nil, 200), "Private (alice)") {
		t.Fatalf("clone at %s", cloneLoc)
	}

	access := page(alice, "GET", loc+"/access", nil, 200)
	if !strings.Contains(access, `data-community="research"`) || !strings.Contains(access, "Turn on") {
		t.Fatalf("Access tab: %s", access)
	}
	follow(alice, url.Values{"community": {"research"}, "share": {"on"}}, loc+"/access")
	if body := page(alice, "GET", loc+"/access", nil, 200); !strings.Contains(body, "Turn off") || !strings.Contains(body, "Shared with: research") {
		t.Fatalf("after sharing: %s", body)
	}
	// Bob, a member of ml but no admin of research, is refused in the
	// service's words.
	bobsLoc := strings.TrimPrefix(follow(bob, url.Values{"name": {"BOB_TOKEN"}, "value": {secretValue("bob")}, "scope": {"project"}, "project": {"ml"}}, "new"), "")
	if body := page(bob, "POST", bobsLoc+"/access", url.Values{"community": {"research"}, "share": {"on"}}, 403); !strings.Contains(body, "only an admin of community") {
		t.Fatalf("member sharing: %s", body)
	}

	// Bob's private DB_PASS hides ml's in his workspaces: the list says so.
	follow(bob, url.Values{"name": {"DB_PASS"}, "value": {secretValue("bob-own")}, "scope": {"private"}}, "new")
	list := page(bob, "GET", "", nil, 200)
	for _, want := range []string{"DB_PASS", "BOB_TOKEN", "Project ml", "alice", "hidden in your workspaces by the secret of the same name in Private (bob)"} {
		if !strings.Contains(list, want) {
			t.Errorf("bob's list lacks %q", want)
		}
	}

	destroyed := page(alice, "POST", loc+"/delete", url.Values{"version": {"3"}}, 200)
	if !strings.Contains(destroyed, "Secret destroyed") {
		t.Fatalf("Delete: %s", destroyed)
	}
	page(alice, "GET", "secrets/"+id, nil, 404)
	page(alice, "GET", "static/app.js", nil, 200)
}

// TestRolloutView: an agent's status reaches the secret's rollout view; a
// status on another workspace's subject, or malformed, is refused and
// logged, and the view keeps serving.
func TestRolloutView(t *testing.T) {
	f := newFixture(t)
	alice := f.as("alice")
	s := alice.create("ROLLED", "ml", secretValue("r1"))
	publish := func(subject string, st protocol.WorkspaceStatus) {
		t.Helper()
		if err := f.nc.Publish(subject, must(json.Marshal(st))); err != nil {
			t.Fatal(err)
		}
		_ = f.nc.Flush()
	}
	started := time.Now()
	publish(protocol.StatusSubject("ws-bob"), protocol.WorkspaceStatus{Workspace: "ws-bob", Seq: 1, Started: started,
		Secrets: []protocol.StatusSecret{{Name: "ROLLED", SecretID: s.ID, Version: s.Version}},
		Kernels: []protocol.KernelRollout{
			{ID: "k-live", Language: "python", Mode: "live:subshell", State: "ready", Holds: map[string]protocol.HeldSecret{"ROLLED": {SecretID: s.ID, Version: s.Version}}},
			{ID: "k-old", Language: "python", Mode: "start-only", State: "start-only", Holds: map[string]protocol.HeldSecret{}},
		}})
	// Misaddressed: ws-alice's subject claiming to be ws-bob, holding a
	// version that would look current.
	publish(protocol.StatusSubject("ws-alice"), protocol.WorkspaceStatus{Workspace: "ws-bob", Seq: 2, Started: started,
		Kernels: []protocol.KernelRollout{{ID: "k-forged", State: "ready"}}})
	if err := f.nc.Publish(protocol.StatusSubject("ws-alice"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	var ro rolloutView
	deadline := time.Now().Add(20 * time.Second)
	for {
		alice.api("GET", "/secrets/"+s.ID+"/rollout", nil, 200, &ro)
		if len(ro.Workspaces) == 2 && ro.Workspaces[1].Reporting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ws-bob's status never reached the view: %+v", ro)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ro.Workspaces[0].ID != "ws-alice" || ro.Workspaces[0].Reporting || len(ro.Workspaces[0].Kernels) != 0 {
		t.Fatalf("ws-alice took a misaddressed status: %+v", ro.Workspaces[0])
	}
	bob := ro.Workspaces[1]
	if len(bob.Kernels) != 2 || !bob.Kernels[0].Current || bob.Kernels[0].Version != s.Version ||
		bob.Kernels[1].Current || !strings.Contains(bob.Kernels[1].Waiting, "start-only") {
		t.Fatalf("ws-bob: %+v", bob)
	}
	logs := leaks.String()
	if !strings.Contains(logs, "agent status refused") || !strings.Contains(logs, "names workspace") {
		t.Fatalf("misaddressed status not logged")
	}
}

// TestWaitingReason: the rollout view says why a kernel is not at the
// newest version, in the order that matters.
func TestWaitingReason(t *testing.T) {
	seen := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		w    workspaceRollout
		k    protocol.KernelRollout
		want string
	}{
		{workspaceRollout{Silent: true, LastSeen: seen}, protocol.KernelRollout{State: "live"}, "silent since 03:04:05 UTC"},
		{workspaceRollout{Shadowed: "user:bob"}, protocol.KernelRollout{State: "live"}, "hidden in this workspace by the same-named secret of user:bob"},
		{workspaceRollout{}, protocol.KernelRollout{State: "live", PendingRestart: "secret changed", Busy: true}, "a restart is owed (secret changed); a cell is running"},
		{workspaceRollout{}, protocol.KernelRollout{State: "live", PendingRestart: "secret changed"}, "a restart is owed (secret changed)"},
		{workspaceRollout{}, protocol.KernelRollout{State: "start-only"}, "start-only kernel"},
		{workspaceRollout{}, protocol.KernelRollout{State: "unreachable"}, "kernel unreachable"},
		{workspaceRollout{}, protocol.KernelRollout{State: "live", Mode: "live:shell-idle", Busy: true}, "the change arrives when it ends"},
		{workspaceRollout{}, protocol.KernelRollout{State: "connecting"}, "connecting"},
	} {
		if got := waitingReason(c.w, c.k); !strings.Contains(got, c.want) {
			t.Errorf("%+v %+v: %q, want %q", c.w, c.k, got, c.want)
		}
	}
}

// TestRolloutEvents: the rollout view as server-sent events: one when the
// stream opens, one when an agent reports, one when the secret changes,
// and "gone" when it is deleted; a request without a session gets a JSON
// 401 and no stream.
func TestRolloutEvents(t *testing.T) {
	f := newFixture(t)
	alice := f.as("alice")
	s := alice.create("STREAMED", "ml", secretValue("s1"))
	path := "/secrets/api/v1/secrets/" + s.ID + "/rollout/events"
	wantError(t, f.anonymous().do("GET", path, nil, nil), 401, "unauthenticated")

	req := must(http.NewRequest("GET", f.ts.URL+path, nil))
	resp, err := alice.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	type event struct{ name, data string }
	events := make(chan event, 64)
	go func() { // ends when the body is closed
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		var e event
		for sc.Scan() {
			line := sc.Text()
			_, _ = sink{}.Write([]byte(line + "\n"))
			switch {
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				e.data = strings.TrimPrefix(line, "data: ")
			case line == "":
				events <- e
				e = event{}
			}
		}
	}()
	next := func(what string, ok func(e event, ro rolloutView) bool) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case e, open := <-events:
				if !open {
					t.Fatalf("stream ended before %s", what)
				}
				var ro rolloutView
				_ = json.Unmarshal([]byte(e.data), &ro)
				if ok(e, ro) {
					return
				}
			case <-deadline:
				t.Fatalf("no event with %s", what)
			}
		}
	}
	next("the opening view", func(e event, ro rolloutView) bool {
		return e.name == "" && ro.SecretID == s.ID && len(ro.Workspaces) == 2 && !ro.Workspaces[1].Reporting
	})
	st := protocol.WorkspaceStatus{Workspace: "ws-bob", Seq: 1, Started: time.Now(),
		Kernels: []protocol.KernelRollout{{ID: "k1", State: "live", Mode: "live:quiet",
			Holds: map[string]protocol.HeldSecret{"STREAMED": {SecretID: s.ID, Version: s.Version}}}}}
	if err := f.nc.Publish(protocol.StatusSubject("ws-bob"), must(json.Marshal(st))); err != nil {
		t.Fatal(err)
	}
	next("ws-bob's kernel current", func(e event, ro rolloutView) bool {
		return len(ro.Workspaces) == 2 && len(ro.Workspaces[1].Kernels) == 1 && ro.Workspaces[1].Kernels[0].Current
	})
	alice.api("PATCH", "/secrets/"+s.ID, map[string]string{"value": secretValue("s2")}, 200, nil)
	next("the new version, the kernel waiting", func(e event, ro rolloutView) bool {
		return ro.Version == s.Version+1 && len(ro.Workspaces) == 2 && len(ro.Workspaces[1].Kernels) == 1 && !ro.Workspaces[1].Kernels[0].Current
	})
	alice.api("DELETE", "/secrets/"+s.ID, nil, 200, nil)
	next("gone", func(e event, _ rolloutView) bool { return e.name == "gone" && strings.Contains(e.data, "not_found") })
}
