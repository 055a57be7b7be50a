package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestAPIEveryOperation walks every route with the rules of the service:
// create (private and project), list, read one, rename, new value, clone,
// share and unshare, rollout, delete.
func TestAPIEveryOperation(t *testing.T) {
	f := newFixture(t)
	alice, bob, carol := f.as("alice"), f.as("bob"), f.as("carol")

	var me struct {
		controlplane.Profile
	}
	alice.api("GET", "/me", nil, 200, &me)
	if me.User != "alice" || !slices.Equal(me.Projects, []string{"ml"}) || !slices.Equal(me.Communities, []string{"research"}) {
		t.Fatalf("me: %+v", me)
	}

	priv := alice.create("DB_PASSWORD", "", secretValue("private"))
	if priv.Scope.Kind != protocol.ScopeUser || priv.Version == 0 || !slices.Equal(priv.Workspaces, []string{"ws-alice"}) {
		t.Fatalf("private secret: %+v", priv)
	}
	proj := alice.create("API_TOKEN", "ml", secretValue("project"))
	if proj.Scope != (protocol.Scope{Kind: protocol.ScopeProject, ID: "ml"}) || !slices.Equal(proj.Workspaces, []string{"ws-alice", "ws-bob"}) {
		t.Fatalf("project secret: %+v", proj)
	}
	// A private secret that shadows the project one, as the list notes.
	shadow := bob.create("API_TOKEN", "", secretValue("bob-private"))

	var bl listResp
	bob.api("GET", "/secrets", nil, 200, &bl)
	var names []string
	for _, s := range bl.Secrets {
		names = append(names, s.Name+"@"+s.Scope.String())
		if s.ID == proj.ID && (s.ShadowedBy == nil || s.ShadowedBy.Kind != protocol.ScopeUser || s.Editable) {
			t.Errorf("bob's view of ml's API_TOKEN: %+v, want shadowed by his own, not editable", s)
		}
	}
	if !slices.Equal(names, []string{"API_TOKEN@user:bob", "API_TOKEN@project:ml"}) {
		t.Fatalf("bob's list: %v", names)
	}

	var got secretResp
	bob.api("GET", "/secrets/"+proj.ID, nil, 200, &got)
	if got.Secret.ID != proj.ID || got.Secret.Name != "API_TOKEN" {
		t.Fatalf("read one: %+v", got.Secret)
	}
	// Bob's update of his own API_TOKEN must not touch ml's (same name).
	var up secretResp
	bob.api("PATCH", "/secrets/"+shadow.ID, map[string]string{"value": secretValue("bob-new")}, 200, &up)
	if up.Secret.ID != shadow.ID || up.Secret.Version != shadow.Version+1 {
		t.Fatalf("bob's update: %+v", up.Secret)
	}
	alice.api("GET", "/secrets/"+proj.ID, nil, 200, &got)
	if got.Secret.Version != proj.Version {
		t.Fatalf("ml's API_TOKEN moved to version %d by bob's update of his own", got.Secret.Version)
	}

	// Rename and new value in one, based on the version shown.
	r := alice.do("PATCH", "/secrets/api/v1/secrets/"+proj.ID, map[string]string{"name": "ML_TOKEN", "value": secretValue("project-2")},
		map[string]string{"If-Match": fmt.Sprintf("%q", fmt.Sprint(proj.Version))})
	if r.status != 200 {
		t.Fatalf("rename: %d %s", r.status, r.body)
	}
	json.Unmarshal(r.body, &up)
	if up.Secret.Name != "ML_TOKEN" || up.Secret.ID != proj.ID || up.Secret.Version != proj.Version+1 {
		t.Fatalf("renamed: %+v", up.Secret)
	}

	// Clone, keeping the value, into alice's private scope.
	var cl secretResp
	alice.api("POST", "/secrets/"+proj.ID+"/clone", map[string]string{"name": "ML_TOKEN_COPY"}, 201, &cl)
	if cl.Secret.ID == proj.ID || cl.Secret.Scope.Kind != protocol.ScopeUser || cl.Secret.Name != "ML_TOKEN_COPY" {
		t.Fatalf("clone: %+v", cl.Secret)
	}

	// Share with research: carol's workspace (vision) receives it, and
	// carol sees it through the community; then withdraw it.
	var sh secretResp
	alice.api("PUT", "/secrets/"+proj.ID+"/communities/research", nil, 200, &sh)
	if !slices.Equal(sh.Secret.Communities, []string{"research"}) || !slices.Contains(sh.Secret.Workspaces, "ws-carol") {
		t.Fatalf("shared: %+v", sh.Secret)
	}
	var cle listResp
	carol.api("GET", "/secrets", nil, 200, &cle)
	if len(cle.Secrets) != 1 || cle.Secrets[0].ID != proj.ID || cle.Secrets[0].Via != "research" || cle.Secrets[0].Editable {
		t.Fatalf("carol's list: %+v", cle.Secrets)
	}
	// Carol may clone what reaches her, not change it.
	carol.api("POST", "/secrets/"+proj.ID+"/clone", map[string]string{"name": "VISION_TOKEN", "project": "vision"}, 201, &cl)
	wantError(t, carol.do("PATCH", "/secrets/api/v1/secrets/"+proj.ID, map[string]string{"value": secretValue("carol")}, nil),
		403, "forbidden", "community share")

	var ro rolloutView
	alice.api("GET", "/secrets/"+proj.ID+"/rollout", nil, 200, &ro)
	var wss []string
	for _, w := range ro.Workspaces {
		wss = append(wss, w.ID)
	}
	if ro.Version != sh.Secret.Version || !slices.Equal(wss, []string{"ws-alice", "ws-bob", "ws-carol"}) {
		t.Fatalf("rollout: %+v", ro)
	}

	var un secretResp
	alice.api("DELETE", "/secrets/"+proj.ID+"/communities/research", nil, 200, &un)
	if len(un.Secret.Communities) != 0 || slices.Contains(un.Secret.Workspaces, "ws-carol") {
		t.Fatalf("unshared: %+v", un.Secret)
	}
	carol.api("GET", "/secrets/"+proj.ID, nil, 404, nil)

	var del secretResp
	alice.api("DELETE", "/secrets/"+proj.ID, nil, 200, &del)
	if del.Secret.ID != proj.ID {
		t.Fatalf("deleted: %+v", del.Secret)
	}
	alice.api("GET", "/secrets/"+proj.ID, nil, 404, nil)
	alice.api("GET", "/secrets/"+priv.ID, nil, 200, nil)
}

// TestAPIErrors performs every refusal and checks its status, stable code
// and words.
func TestAPIErrors(t *testing.T) {
	f := newFixture(t)
	alice, bob, carol := f.as("alice"), f.as("bob"), f.as("carol")
	proj := alice.create("API_TOKEN", "ml", secretValue("v"))
	priv := alice.create("MINE", "", secretValue("v"))
	bobs := bob.create("BOBS", "ml", secretValue("v"))
	api := "/secrets/api/v1"

	t.Run("unauthenticated", func(t *testing.T) {
		anon := f.anonymous()
		wantError(t, anon.do("GET", api+"/secrets", nil, nil), 401, "unauthenticated", "not logged in")
		wantError(t, anon.do("POST", api+"/secrets", map[string]string{"name": "NEW_ONE", "value": secretValue("v")}, nil), 401, "unauthenticated")
		forged := f.anonymous()
		forged.hc.Jar.SetCookies(must(url.Parse(f.ts.URL+"/secrets/")), []*http.Cookie{{Name: SessionCookie, Value: "made-up", Path: "/secrets/"}})
		wantError(t, forged.do("GET", api+"/secrets", nil, nil), 401, "unauthenticated")
	})
	t.Run("csrf", func(t *testing.T) {
		body := map[string]string{"name": "NEW_ONE", "value": secretValue("v")}
		wantError(t, alice.do("POST", api+"/secrets", body, map[string]string{"X-CSRF-Token": ""}), 403, "csrf", "CSRF token")
		wantError(t, alice.do("POST", api+"/secrets", body, map[string]string{"X-CSRF-Token": bob.csrf}), 403, "csrf", "CSRF token")
		wantError(t, alice.do("DELETE", api+"/secrets/"+priv.ID, nil, map[string]string{"Origin": "http://evil.example"}), 403, "csrf", "origin")
		wantError(t, alice.do("PATCH", api+"/secrets/"+priv.ID, body, map[string]string{"Sec-Fetch-Site": "cross-site"}), 403, "csrf", "another site")
		// A form post without the token changes nothing either.
		r := alice.do("POST", "/secrets/secrets/"+priv.ID+"/delete", url.Values{"csrf": {"wrong"}}, nil)
		if r.status != 403 || !strings.Contains(string(r.body), "CSRF") {
			t.Fatalf("form without CSRF token: %d %s", r.status, r.body)
		}
		alice.api("GET", "/secrets/"+priv.ID, nil, 200, nil)
	})
	t.Run("invalid_name", func(t *testing.T) {
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "1abc", "value": secretValue("v")}, nil), 400, "invalid_name", "Latin letter")
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "LD_PRELOAD", "value": secretValue("v")}, nil), 400, "invalid_name", "LD_PRELOAD")
		wantError(t, alice.do("PATCH", api+"/secrets/"+priv.ID, map[string]string{"name": "a b"}, nil), 400, "invalid_name", "character 2")
		wantError(t, alice.do("POST", api+"/secrets/"+priv.ID+"/clone", map[string]string{"name": "x"}, nil), 400, "invalid_name", "shorter than 3")
	})
	t.Run("invalid_value", func(t *testing.T) {
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "NUL_VALUE", "value": "a\x00b"}, nil), 400, "invalid_value", "NUL")
		wantError(t, alice.do("POST", api+"/secrets", []byte(`{"name":"NUM_VALUE","value":42}`), nil), 400, "invalid_value", "JSON string")
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "NO_VALUE"}, nil), 400, "invalid_value", "value is required")
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "EMPTY_VALUE", "value": ""}, nil), 400, "invalid", "empty value")
	})
	t.Run("invalid", func(t *testing.T) {
		wantError(t, alice.do("POST", api+"/secrets", []byte(`{"name":"X_Y_Z","value":"v","colour":"red"}`), nil), 400, "invalid", `"colour"`)
		wantError(t, alice.do("POST", api+"/secrets", []byte(`{"name":`), nil), 400, "invalid", "not a JSON object")
		wantError(t, alice.do("POST", api+"/secrets", []byte(`{"name":"A_B_C","value":"v"} {}`), nil), 400, "invalid", "trailing")
		wantError(t, alice.do("PATCH", api+"/secrets/"+priv.ID, map[string]string{}, map[string]string{"If-Match": "yesterday"}), 400, "invalid", "If-Match")
		wantError(t, alice.do("POST", api+"/secrets", []byte(`name=A`), map[string]string{"Content-Type": "text/plain"}), 400, "invalid", "Content-Type")
		wantError(t, alice.do("PUT", api+"/secrets/"+priv.ID+"/communities/re%20search", nil, nil), 400, "invalid", "community")
		wantError(t, alice.do("PATCH", api+"/secrets/"+priv.ID, map[string]string{"project": "ml"}, nil), 400, "invalid", "clone it")
	})
	t.Run("too_large", func(t *testing.T) {
		big := strings.Repeat("x", protocol.MaxValueSize+1)
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "BIG_ONE", "value": big}, nil), 413, "too_large", "limit 65536")
		huge := `{"name":"HUGE","value":"` + strings.Repeat(`\u0041`, maxBody/6+1) + `"}`
		wantError(t, alice.do("POST", api+"/secrets", []byte(huge), nil), 413, "too_large", "request body over")
	})
	t.Run("forbidden", func(t *testing.T) {
		wantError(t, bob.do("PATCH", api+"/secrets/"+proj.ID, map[string]string{"value": secretValue("v")}, nil), 403, "forbidden", "only a project admin or its creator")
		wantError(t, bob.do("DELETE", api+"/secrets/"+proj.ID, nil, nil), 403, "forbidden", "project admin")
		wantError(t, bob.do("PUT", api+"/secrets/"+bobs.ID+"/communities/research", nil, nil), 403, "forbidden", "only an admin of community")
		wantError(t, carol.do("POST", api+"/secrets", map[string]string{"name": "IN_ML", "project": "ml", "value": secretValue("v")}, nil), 403, "forbidden", "not a member of project")
		wantError(t, carol.do("POST", api+"/secrets/"+proj.ID+"/clone", map[string]string{"name": "STOLEN"}, nil), 404, "not_found")
		alice.api("PUT", "/secrets/"+proj.ID+"/communities/research", nil, 200, nil)
		wantError(t, bob.do("DELETE", api+"/secrets/"+proj.ID+"/communities/research", nil, nil), 403, "forbidden", "only an admin of community")
		// Carol sees it through research now, and still may not change it.
		wantError(t, carol.do("DELETE", api+"/secrets/"+proj.ID, nil, nil), 403, "forbidden", "community share")
	})
	t.Run("not_found", func(t *testing.T) {
		wantError(t, alice.do("GET", api+"/secrets/nosuchsecret", nil, nil), 404, "not_found", "nosuchsecret")
		wantError(t, bob.do("GET", api+"/secrets/"+priv.ID, nil, nil), 404, "not_found")
		wantError(t, bob.do("DELETE", api+"/secrets/"+priv.ID, nil, nil), 404, "not_found")
		wantError(t, alice.do("GET", api+"/nothing/here", nil, nil), 404, "not_found", "no API route")
		wantError(t, alice.do("PUT", api+"/secrets/"+priv.ID+"/communities/nosuch", nil, nil), 404, "not_found", "no community")
	})
	t.Run("exists", func(t *testing.T) {
		wantError(t, alice.do("POST", api+"/secrets", map[string]string{"name": "MINE", "value": secretValue("v")}, nil), 409, "exists", "MINE")
		// A private secret may share a name with a project one; a rename
		// into a name the scope holds is refused.
		alice.create("OTHER", "", secretValue("v"))
		wantError(t, alice.do("PATCH", api+"/secrets/"+priv.ID, map[string]string{"name": "OTHER"}, nil), 409, "exists", "OTHER")
	})
	t.Run("conflict", func(t *testing.T) {
		var cur secretResp
		alice.api("GET", "/secrets/"+priv.ID, nil, 200, &cur)
		alice.api("PATCH", "/secrets/"+priv.ID, map[string]string{"value": secretValue("v")}, 200, nil) // someone else's edit
		old := fmt.Sprintf(`"%d"`, cur.Secret.Version)
		wantError(t, alice.do("PATCH", api+"/secrets/"+priv.ID, map[string]string{"value": secretValue("v")}, map[string]string{"If-Match": old}),
			409, "conflict", "changed meanwhile")
		wantError(t, alice.do("DELETE", api+"/secrets/"+priv.ID, nil, map[string]string{"If-Match": old}), 409, "conflict", "changed meanwhile")
		alice.api("GET", "/secrets/"+priv.ID, nil, 200, nil)
	})
	t.Run("unavailable", func(t *testing.T) {
		if err := f.svc.Stop(); err != nil {
			t.Fatal(err)
		}
		wantError(t, alice.do("GET", api+"/secrets", nil, nil), 503, "unavailable", "not serving")
	})
}

// TestOpenAPIMatchesRoutes holds openapi.json to the routes the server
// registers: every API route is documented, and nothing else is.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	f := newFixture(t)
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for p, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	routes := f.web.APIRoutes()
	slices.Sort(documented)
	slices.Sort(routes)
	if !slices.Equal(documented, routes) {
		t.Fatalf("openapi.json documents\n  %v\nthe server registers\n  %v", documented, routes)
	}
	if len(routes) < 11 {
		t.Fatalf("only %d API routes: %v", len(routes), routes)
	}
	// And the document served is the one checked.
	r := f.as("alice").do("GET", "/secrets/api/v1/openapi.json", nil, nil)
	if r.status != 200 || string(r.body) != string(OpenAPI()) {
		t.Fatalf("served openapi.json: %d", r.status)
	}
}
