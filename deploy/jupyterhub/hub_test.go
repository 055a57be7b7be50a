// Package jupyterhub_test runs nbsecrets on a real JupyterHub with the
// config fragment of this directory (nbsecrets_config.py), end to end.
package jupyterhub_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/browsertest"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/internal/testutil"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

type lockedBuffer = testutil.Buffer

// buildBinary builds cmd/nbsecrets into dir.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "nbsecrets")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/nbsecrets").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func randHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func digest(v string) string {
	s := sha256.Sum256([]byte(v))
	return hex.EncodeToString(s[:])
}

// kernelDigest is the sha256 of os.environ[name] in the kernel, or "unset".
func kernelDigest(t *testing.T, c *jupyter.Client, name, _ string) string {
	t.Helper()
	return kernelRun(t, c, fmt.Sprintf("import os as _o, hashlib as _h\n_v = _o.environ.get(%q)\nprint('unset' if _v is None else _h.sha256(_v.encode()).hexdigest())\ndel _o, _h, _v", name))
}

// requireHubEnv turns a missing JupyterHub (or not being root) from a skip
// into a failure; CI sets it.
const requireHubEnv = "NBSECRETS_REQUIRE_HUB"

// TestJupyterHub runs Debian's JupyterHub 3.0 with the config fragment
// deploy/jupyterhub/nbsecrets_config.py, DummyAuthenticator and a local
// spawner, three users and a group ml holding two of them, and goes
// through the flow: each server started through the hub's REST
// API (and its agent with it), a kernel in each, alice logs in through
// the hub in Chromium and creates a project secret for ml in the web UI,
// alice's and bob's running kernels get it live and carol's does not;
// bob leaves ml through the hub's API and his kernel loses it; the Python
// API from alice's kernel makes a private secret that reaches only her;
// forged, missing and other users' tokens are refused; stopping a server
// stops its agent and leaves no process behind.
func TestJupyterHub(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a JupyterHub, servers, kernels and a browser")
	}
	need := func(format string, args ...any) {
		t.Helper()
		if os.Getenv(requireHubEnv) == "1" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	for _, bin := range []string{"jupyterhub", "configurable-http-proxy", "jupyterhub-singleuser"} {
		if _, err := exec.LookPath(bin); err != nil {
			need("%s not found: apt-get install -y jupyterhub", bin)
		}
	}
	if os.Geteuid() != 0 {
		need("the hub test runs the hub as root (its spawners switch users)")
	}
	kerneltest.Python(t)
	browser := browsertest.Require(t)
	t.Run("SimpleLocalProcessSpawner", func(t *testing.T) { testHub(t, browser, "simple") })
	t.Run("LocalProcessSpawner", func(t *testing.T) { testHub(t, browser, "localprocess") })
	// $NBSECRETS_NATS_URL: a NATS server of the platform's, configured
	// with nats-config --hub (agents authorised by auth callout).
	t.Run("ExistingNATS", func(t *testing.T) { testHub(t, browser, "simple+nats") })
}

// systemUsers makes the system users LocalProcessSpawner runs servers as,
// with homes under dir, and removes those it made when the test ends.
// dir and its parent become world-searchable so that the users reach the
// binary and their homes.
func systemUsers(t *testing.T, dir string, users []string) map[string][2]int {
	t.Helper()
	ids := map[string][2]int{}
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range users {
		home := filepath.Join(dir, "home", u)
		if _, err := exec.Command("id", "-u", u).Output(); err != nil {
			if out, err := exec.Command("useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh", u).CombinedOutput(); err != nil {
				t.Fatalf("useradd %s: %v: %s", u, err, out)
			}
			t.Cleanup(func() { _ = exec.Command("userdel", u).Run() })
		}
		uid, _ := exec.Command("id", "-u", u).Output()
		gid, _ := exec.Command("id", "-g", u).Output()
		n, _ := strconv.Atoi(strings.TrimSpace(string(uid)))
		g, _ := strconv.Atoi(strings.TrimSpace(string(gid)))
		ids[u] = [2]int{n, g}
		if err := os.MkdirAll(home, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(home, n, g); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// hubRun is a running JupyterHub of one test.
type hubRun struct {
	t       *testing.T
	url     string // the proxy: http://127.0.0.1:PORT
	token   string // an admin service's API token
	tmp     string
	log     *lockedBuffer
	cmd     *exec.Cmd
	done    chan error
	mu      sync.Mutex
	servers map[string]int // user -> the spawned process (the agent)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startHub writes a jupyterhub_config.py that loads the fragment and runs
// the hub until the test ends.
func startHub(t *testing.T, bin, spawner string, users []string, groups map[string][]string) *hubRun {
	t.Helper()
	tmp := t.TempDir()
	spawner, natsMode, _ := strings.Cut(spawner, "+") // "+nats": an existing NATS server
	var ids map[string][2]int
	if spawner == "localprocess" {
		ids = systemUsers(t, tmp, users)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	fragment := filepath.Join(wd, "nbsecrets_config.py")
	pyAPI := filepath.Join(wd, "..", "python")
	h := &hubRun{t: t, tmp: tmp, token: "tester-" + randHex(t) + randHex(t), log: &lockedBuffer{}, done: make(chan error, 1), servers: map[string]int{}}
	port, proxyAPI, hubPort := freePort(t), freePort(t), freePort(t)
	h.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	groupsJSON, _ := json.Marshal(groups)
	usersJSON, _ := json.Marshal(users)
	for _, u := range users {
		rt := filepath.Join(tmp, "runtime", u)
		if err := os.MkdirAll(rt, 0o700); err != nil {
			t.Fatal(err)
		}
		if id, ok := ids[u]; ok {
			_ = os.Chmod(filepath.Dir(rt), 0o755)
			if err := os.Chown(rt, id[0], id[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	conf := fmt.Sprintf(`c = get_config()
import json
c.JupyterHub.ip = '127.0.0.1'
c.JupyterHub.port = %d
c.JupyterHub.hub_ip = '127.0.0.1'
c.JupyterHub.hub_port = %d
c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:%d'
c.JupyterHub.db_url = 'sqlite:///%s/jupyterhub.sqlite'
c.JupyterHub.cookie_secret_file = '%s/cookie_secret'
c.JupyterHub.pid_file = '%s/jupyterhub.pid'
c.ConfigurableHTTPProxy.pid_file = '%s/proxy.pid'
c.JupyterHub.authenticator_class = 'dummy'
c.JupyterHub.spawner_class = %q
c.SimpleLocalProcessSpawner.home_dir_template = '%s/home/{username}'
c.Spawner.args = ['--allow-root']
c.Spawner.default_url = '/tree'
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {
    'JUPYTER_RUNTIME_DIR': lambda spawner: '%s/runtime/' + spawner.user.name,
    'PYTHONPATH': %q,
}
c.Authenticator.allowed_users = set(json.loads(%q))
c.JupyterHub.load_groups = json.loads(%q)
c.JupyterHub.services = [{'name': 'tester', 'api_token': %q}]
c.JupyterHub.load_roles = [{'name': 'admin', 'services': ['tester']}]
load_subconfig(%q)
`, port, hubPort, proxyAPI, tmp, tmp, tmp, tmp, spawner, tmp, tmp, pyAPI, usersJSON, groupsJSON, h.token, fragment)
	confPath := filepath.Join(tmp, "jupyterhub_config.py")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command("jupyterhub", "-f", confPath)
	h.cmd.Dir = tmp
	h.cmd.Env = append(os.Environ(), "NODE_PATH=/usr/share/nodejs", "NBSECRETS="+bin,
		"NBSECRETS_STATE_DIR="+filepath.Join(tmp, "state"), "NBSECRETS_LOG_LEVEL=debug")
	if natsMode == "nats" {
		h.cmd.Env = append(h.cmd.Env, "NBSECRETS_NATS_URL="+startExistingNATS(t, bin, filepath.Join(tmp, "state")))
	}
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- h.cmd.Wait() }() // ends with the hub
	t.Cleanup(h.stop)
	h.waitFor("the hub and the nbsecrets service to answer", 90*time.Second, func() error {
		if _, err := h.api("GET", "/hub/api/", nil); err != nil {
			return err
		}
		_, err := h.do("GET", "/services/nbsecrets/api/v1/openapi.json", "", nil, nil)
		return err
	})
	return h
}

// stop ends the hub (which stops the servers and the service), then kills
// anything of the run that is left.
func (h *hubRun) stop() {
	select {
	case <-h.done:
	default:
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.done:
		case <-time.After(60 * time.Second):
			_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
			<-h.done
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, pid := range h.servers {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	if h.t.Failed() {
		h.t.Logf("hub log (tail):\n%s", tail(h.log.String(), 12000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (h *hubRun) waitFor(what string, total time.Duration, f func() error) {
	h.t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("waiting %v for %s: %v", total, what, err)
		}
		select {
		case err := <-h.done:
			h.done <- err
			h.t.Fatalf("the hub exited (%v) while waiting for %s", err, what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// httpError is a reply with an unexpected status.
type httpError struct {
	status int
	body   string
}

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

// do sends a request through the proxy with Authorization "token TOKEN"
// (none when token is ""), and decodes a 2xx JSON reply into out.
func (h *hubRun) do(method, path, token string, body any, out any, headers ...string) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.url+path, rd)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "token "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := (&http.Client{Timeout: 120 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, &httpError{resp.StatusCode, strings.TrimSpace(string(data))}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w: %s", method, path, err, data)
		}
	}
	return resp.StatusCode, nil
}

// api calls the hub's REST API as the admin service.
func (h *hubRun) api(method, path string, body any) (map[string]any, error) {
	var out map[string]any
	_, err := h.do(method, path, h.token, body, &out)
	return out, err
}

// startServer starts user's default server and waits until the hub says
// it is ready; it returns the pid the spawner started (the agent).
func (h *hubRun) startServer(user string) int {
	h.t.Helper()
	if _, err := h.do("POST", "/hub/api/users/"+user+"/server", h.token, nil, nil); err != nil {
		h.t.Fatalf("starting %s's server: %v", user, err)
	}
	var pid int
	h.waitFor(user+"'s server to be ready", 120*time.Second, func() error {
		u, err := h.api("GET", "/hub/api/users/"+user, nil)
		if err != nil {
			return err
		}
		srv, _ := u["servers"].(map[string]any)[""].(map[string]any)
		if srv == nil || srv["ready"] != true {
			return fmt.Errorf("not ready: %v", srv)
		}
		if state, ok := srv["state"].(map[string]any); ok {
			if p, ok := state["pid"].(float64); ok {
				pid = int(p)
			}
		}
		return nil
	})
	h.mu.Lock()
	h.servers[user] = pid
	h.mu.Unlock()
	return pid
}

// startKernel starts a python3 kernel in user's server through the
// server's REST API and connects to it.
func (h *hubRun) startKernel(user string) (*jupyter.Client, string) {
	h.t.Helper()
	var k struct {
		ID string `json:"id"`
	}
	if _, err := h.do("POST", "/user/"+user+"/api/kernels", h.token, map[string]string{"name": "python3"}, &k); err != nil {
		h.t.Fatalf("starting a kernel for %s: %v", user, err)
	}
	file := filepath.Join(h.tmp, "runtime", user, "kernel-"+k.ID+".json")
	var info *jupyter.ConnectionInfo
	h.waitFor(user+"'s kernel connection file", 60*time.Second, func() (err error) {
		info, err = jupyter.ReadConnectionFile(file)
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := jupyter.Dial(ctx, info)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	if err := c.Ready(ctx); err != nil {
		h.t.Fatal(err)
	}
	return c, k.ID
}

// run runs code in a kernel and returns its stdout, trimmed.
func kernelRun(t *testing.T, c *jupyter.Client, code string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := c.Run(ctx, code)
	if err != nil {
		t.Fatalf("running code in a kernel: %v", err)
	}
	if res.Reply != nil && res.Reply.Status != "ok" {
		t.Errorf("code in a kernel raised %s (%s)", res.Reply.EName, res.Reply.EValue)
	}
	return strings.TrimSpace(res.Stdout)
}

// waitDigest polls the kernel until os.environ[name] has the digest want
// ("unset": absent) and returns how long that took.
func waitDigest(t *testing.T, c *jupyter.Client, who, name, want string, total time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got string
	for time.Since(start) < total {
		if got = kernelDigest(t, c, name, who); got == want {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s's kernel: %s is %s after %v, want %s", who, name, got, total, want)
	return 0
}

// hubPollInterval is the service's default poll of the hub.
const hubPollInterval = 2 * time.Second

var agentReady = regexp.MustCompile(`agent ready: workspace=(\S+) .*registered_ms=(\d+) ready_ms=(\d+)`)

func testHub(t *testing.T, browser *browsertest.Browser, spawner string) {
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // the users of LocalProcessSpawner run it
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Dir(tmp), 0o755)
	users := []string{"alice", "bob", "carol"}
	hubStart := time.Now()
	h := startHub(t, bin, spawner, users, map[string][]string{"ml": {"alice", "bob"}})
	t.Logf("hub and service up in %v", time.Since(hubStart).Round(time.Millisecond))

	// Every server, started through the hub's REST API, with its agent.
	pids := map[string]int{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pid := h.startServer(u)
			mu.Lock()
			pids[u] = pid
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, m := range agentReady.FindAllStringSubmatch(h.log.String(), -1) {
		t.Logf("measured: agent of %s registered in %s ms, ready (records loaded) in %s ms after it started", m[1], m[2], m[3])
	}
	// A registration changes nothing on the NATS server (auth callout): no
	// agent lost its connection while the others registered.
	if n := strings.Count(h.log.String(), "NATS disconnected"); n != 0 {
		t.Errorf("agents were disconnected from NATS %d times while servers started", n)
	}
	kernels, ids := map[string]*jupyter.Client{}, map[string]string{}
	for _, u := range users {
		kernels[u], ids[u] = h.startKernel(u)
	}

	// alice logs in through the hub in Chromium and creates ML_TOKEN for ml.
	value := "hub-e2e-" + randHex(t)
	valueFile := filepath.Join(tmp, "value")
	if err := os.WriteFile(valueFile, []byte(value), 0o600); err != nil {
		t.Fatal(err)
	}
	var ui struct {
		Landed       string   `json:"landed"`
		Redirects    []string `json:"redirects"`
		Row          string   `json:"row"`
		PageHasValue bool     `json:"pageHasValue"`
		Cookies      []struct {
			Name     string `json:"name"`
			Path     string `json:"path"`
			HTTPOnly bool   `json:"httpOnly"`
		} `json:"cookies"`
	}
	browser.Run(t, browsertest.Options{Script: "testdata/hub_ui.js", Timeout: 3 * time.Minute,
		Args: map[string]any{"hub": h.url, "user": "alice", "name": "ML_TOKEN", "project": "ml", "valueFile": valueFile}}, &ui)
	created := time.Now()
	if !slices.Contains(ui.Redirects, "/hub/api/oauth2/authorize") || !slices.Contains(ui.Redirects, "/services/nbsecrets/oauth_callback") {
		t.Errorf("the service was not reached through the hub's OAuth: navigations %v", ui.Redirects)
	}
	if ui.PageHasValue {
		t.Error("the secrets page shows the value")
	}
	if !strings.Contains(ui.Row, "ML_TOKEN") || !strings.Contains(ui.Row, "ml") {
		t.Errorf("the list row is %q", ui.Row)
	}
	for _, c := range ui.Cookies {
		if c.Name == "nbsecrets-hub-session" && (c.Path != "/services/nbsecrets/" || !c.HTTPOnly) {
			t.Errorf("session cookie scoped to %q, HttpOnly %v; want /services/nbsecrets/ and HttpOnly", c.Path, c.HTTPOnly)
		}
	}

	// alice's and bob's running kernels see it live; carol's does not.
	want := digest(value)
	for _, u := range []string{"alice", "bob"} {
		waitDigest(t, kernels[u], u, "ML_TOKEN", want, 30*time.Second)
	}
	t.Logf("measured: alice's and bob's kernels held ML_TOKEN %v after the browser's create returned", time.Since(created).Round(time.Millisecond))
	if got := kernelDigest(t, kernels["carol"], "ML_TOKEN", "carol"); got != "unset" {
		t.Errorf("carol's kernel has ML_TOKEN (%s)", got)
	}

	// Tokens: the service takes only a token the hub vouches for, and an
	// agent only for its own user.
	bobToken := kernelRun(t, kernels["bob"], "import os; print(os.environ['JUPYTERHUB_API_TOKEN'])")
	if got := kernelRun(t, kernels["bob"], "import os; print(os.environ.get('NBSECRETS_SERVER_PROOF', 'unset'))"); got != "unset" {
		t.Error("bob's kernel has the server proof in its environment")
	}
	// bob's server proof, as a process of his could read it from his
	// agent's environment: it proves his default server and nothing else.
	bobProof := serverProofOf(t, pids["bob"])
	const curveKey = "XAB3NMW2T5X3LDPHVXDFYDRXQJQ6UB5JTVRI6AEJCUY3NVO7FULKYHGN"
	alices := map[string]string{"user": "alice", "server": "", "curve_key": curveKey}
	for _, c := range []struct {
		what, token string
		reg         map[string]string
		status      int
	}{
		{"bob's server token claiming alice's server", bobToken, alices, http.StatusForbidden},
		{"bob's server token and proof claiming alice's server", bobToken, map[string]string{"user": "alice", "server": "", "curve_key": curveKey, "server_proof": bobProof}, http.StatusForbidden},
		{"bob's server token claiming his server \"other\"", bobToken, map[string]string{"user": "bob", "server": "other", "curve_key": curveKey}, http.StatusForbidden},
		{"bob's server token and proof claiming his server \"other\"", bobToken, map[string]string{"user": "bob", "server": "other", "curve_key": curveKey, "server_proof": bobProof}, http.StatusForbidden},
		{"bob's server token claiming his own server without its proof (a 3.0 token names no server)", bobToken, map[string]string{"user": "bob", "server": "", "curve_key": curveKey}, http.StatusForbidden},
		{"a forged token", "forged" + randHex(t), alices, http.StatusUnauthorized},
		{"no token", "", alices, http.StatusUnauthorized},
	} {
		if status, err := h.do("POST", "/services/nbsecrets/api/v1/hub/agents", c.token, c.reg, nil); status != c.status {
			t.Errorf("registration with %s: status %d (%v), want %d", c.what, status, err, c.status)
		}
	}
	for _, c := range []struct{ what, token string }{{"a forged token", "forged" + randHex(t)}, {"no token", ""}} {
		if status, _ := h.do("GET", "/services/nbsecrets/api/v1/secrets", c.token, nil, nil); status != http.StatusUnauthorized {
			t.Errorf("the API with %s: status %d, want 401", c.what, status)
		}
	}
	var me struct {
		User string `json:"user"`
		CSRF string `json:"csrf_token"`
	}
	if _, err := h.do("GET", "/services/nbsecrets/api/v1/me", bobToken, nil, &me); err != nil || me.User != "bob" {
		t.Errorf("the API with bob's server token: user %q, %v", me.User, err)
	}
	// The Python API from alice's kernel: a private secret, only hers.
	// The kernel reads the values from a file (not from its code, which
	// its history would keep); under LocalProcessSpawner it runs as alice.
	privFile := filepath.Join(tmp, "private")
	private := "hub-private-" + randHex(t)
	if err := os.WriteFile(privFile, []byte(private), 0o644); err != nil {
		t.Fatal(err)
	}
	out := kernelRun(t, kernels["alice"], fmt.Sprintf(`import nbsecrets
s = nbsecrets.create_secret("ALICE_ONLY", open(%q).read())
print(s["scope"]["kind"], s["name"], sorted(x["name"] for x in nbsecrets.get_secrets()), nbsecrets.get_secret("ALICE_ONLY")["version"])`, privFile))
	if out != "user ALICE_ONLY ['ALICE_ONLY', 'ML_TOKEN'] 1" {
		t.Errorf("the Python API in alice's kernel printed %q", out)
	}
	waitDigest(t, kernels["alice"], "alice", "ALICE_ONLY", digest(private), 30*time.Second)
	if got := kernelRun(t, kernels["alice"], `import nbsecrets, hashlib; print(hashlib.sha256(nbsecrets.get("ALICE_ONLY").encode()).hexdigest())`); got != digest(private) {
		t.Errorf("nbsecrets.get in alice's kernel: digest %s", got)
	}
	for _, u := range []string{"bob", "carol"} {
		if got := kernelDigest(t, kernels[u], "ALICE_ONLY", u); got != "unset" {
			t.Errorf("%s's kernel has alice's private secret", u)
		}
	}
	if out := kernelRun(t, kernels["bob"], `import nbsecrets
try:
    nbsecrets.delete_secret("ALICE_ONLY")
except nbsecrets.NbsecretsError as e:
    print(e.code)`); out != "not_found" {
		t.Errorf("bob deleting alice's private secret through the Python API: %q, want not_found", out)
	}
	rotated := "hub-rotated-" + randHex(t)
	if err := os.WriteFile(privFile, []byte(rotated), 0o644); err != nil {
		t.Fatal(err)
	}
	kernelRun(t, kernels["alice"], fmt.Sprintf(`nbsecrets.update_secret("ALICE_ONLY", value=open(%q).read())`, privFile))
	waitDigest(t, kernels["alice"], "alice", "ALICE_ONLY", digest(rotated), 30*time.Second)
	kernelRun(t, kernels["alice"], `nbsecrets.delete_secret("ALICE_ONLY")`)
	waitDigest(t, kernels["alice"], "alice", "ALICE_ONLY", "unset", 30*time.Second)

	// bob leaves ml on the hub: his running kernel loses ML_TOKEN.
	removed := time.Now()
	if _, err := h.do("DELETE", "/hub/api/groups/ml/users", h.token, map[string][]string{"users": {"bob"}}, nil); err != nil {
		t.Fatalf("removing bob from ml: %v", err)
	}
	waitDigest(t, kernels["bob"], "bob", "ML_TOKEN", "unset", 60*time.Second)
	t.Logf("measured: bob's kernel lost ML_TOKEN %v after the hub's group change (the service polls the hub every %v)",
		time.Since(removed).Round(time.Millisecond), hubPollInterval)
	if got := kernelDigest(t, kernels["alice"], "ML_TOKEN", "alice"); got != want {
		t.Errorf("alice's kernel lost ML_TOKEN when bob left (%s)", got)
	}

	// Stopping carol's server stops her agent, server and kernel.
	kpid, _ := strconv.Atoi(kernelRun(t, kernels["carol"], "import os; print(os.getpid())"))
	stopped := time.Now()
	if _, err := h.do("DELETE", "/hub/api/users/carol/server", h.token, nil, nil); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("stopping carol's server: %v", err)
	}
	h.waitFor("carol's agent, server and kernel to exit", 90*time.Second, func() error {
		for what, pid := range map[string]int{"agent": pids["carol"], "kernel": kpid} {
			if pid > 0 && alive(pid) {
				return fmt.Errorf("carol's %s (pid %d) is still running", what, pid)
			}
		}
		if left := processesWith("JUPYTERHUB_USER=carol"); len(left) > 0 {
			return fmt.Errorf("processes of carol's server left: %v", left)
		}
		return nil
	})
	// The hub's SIGINT (and SIGTERM 30 s later, SIGKILL after 60 s) would
	// end it anyway: the agent must stop on its own, well before.
	if d := time.Since(stopped); d > 25*time.Second {
		t.Errorf("carol's server took %v to stop: the agent did not exit with its server", d)
	} else {
		t.Logf("measured: carol's server, agent and kernel gone %v after the hub's stop", d.Round(time.Millisecond))
	}
	if logs := h.log.String(); strings.Contains(logs, value) || strings.Contains(logs, private) || strings.Contains(logs, rotated) {
		t.Error("a secret value appears in the hub's, the service's or an agent's log")
	}
}

// alive reports whether pid runs (a zombie does not count).
// serverProofOf reads $NBSECRETS_SERVER_PROOF from the environment of the
// process pid (the agent the spawner started).
func serverProofOf(t *testing.T, pid int) string {
	t.Helper()
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("reading the agent's environment: %v", err)
	}
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "NBSECRETS_SERVER_PROOF="); ok && v != "" {
			return v
		}
	}
	t.Fatal("the hub gave the server no NBSECRETS_SERVER_PROOF")
	return ""
}

func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(data), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// processesWith lists the live processes whose environment holds entry.
func processesWith(entry string) []int {
	var out []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(string(env), "\x00"), entry) && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}
