package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/browsertest"
	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
)

// TestWebUIInBrowser drives the web UI of a real `nbsecrets dev` in
// Debian's chromium (testdata/webui.js): alice logs in with the URL that
// `nbsecrets ui` prints, creates a private and a project secret, edits,
// clones, shares with a community as its admin; bob is refused sharing as
// a mere member; alice deletes and reads "Secret destroyed". Meanwhile a
// real ipykernel started through the wrapped kernelspec sees every change
// in os.environ, and the rollout view shows it reaching each new version.
// No page, log line or state-dir file holds a value. The screenshots go to
// a temporary directory, or to docs/ (which the README shows) when
// NBSECRETS_UPDATE_DOCS=1, so an ordinary run leaves the checkout clean.
func TestWebUIInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, runs a kernel and a browser")
	}
	b := browsertest.Require(t)
	kerneltest.Python(t)
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	state := filepath.Join(tmp, "state")
	runtimeDir := filepath.Join(tmp, "runtime")
	dataDir := filepath.Join(tmp, "jupyter")
	dirFile := filepath.Join(tmp, "directory.json")
	if err := os.WriteFile(dirFile, []byte(`{
  "users": [{"id": "alice"}, {"id": "bob"}],
  "projects": [
    {"id": "ml", "members": [{"user": "alice", "role": "admin"}, {"user": "bob", "role": "member"}]},
    {"id": "vision", "members": [{"user": "alice", "role": "member"}]}],
  "communities": [{"id": "research", "admins": ["alice"], "projects": ["vision"]}],
  "workspaces": [
    {"id": "ws-alice", "owner": "alice", "projects": ["ml"]},
    {"id": "ws-vision", "owner": "alice", "projects": ["vision"]}]
}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "JUPYTER_DATA_DIR="+dataDir, "JUPYTER_RUNTIME_DIR="+runtimeDir, "NBSECRETS_LOG_LEVEL=debug")
	d := startDev(t, bin, env, "--state-dir", state, "--directory", dirFile, "--workspace", "ws-alice")
	info, err := readDevInfo(state)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.UIURL, "http://127.0.0.1:") || !strings.Contains(d.out.String(), "login?token=") {
		t.Fatalf("dev's web UI: %q\n%s", info.UIURL, d.out.String())
	}
	loginURL := func(user string) string {
		t.Helper()
		cmd := exec.Command(bin, "ui", "--state-dir", state, "--as", user)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nbsecrets ui --as %s: %v", user, err)
		}
		return strings.TrimSpace(string(out))
	}

	// A kernel started through the kernelspec dev wrapped: its argv up to
	// "--" is the injector.
	var spec struct {
		Argv []string `json:"argv"`
	}
	raw, err := os.ReadFile(filepath.Join(dataDir, "kernels", "python3", "kernel.json"))
	if err != nil {
		t.Fatalf("the wrapped kernelspec: %v", err)
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	sep := slices.Index(spec.Argv, "--")
	if sep < 0 || spec.Argv[0] != bin {
		t.Fatalf("kernelspec argv %q does not run the injector", spec.Argv)
	}
	k := kerneltest.Start(t, kerneltest.Options{Dir: runtimeDir, Prefix: spec.Argv[:sep+1]})
	c := k.Client(t)

	values := map[string]string{}
	for _, n := range []string{"v1", "v2", "v3", "v4", "v5"} {
		values[n] = "webui-" + n + "-" + randHex(t)
	}
	docs := t.TempDir()
	if os.Getenv("NBSECRETS_UPDATE_DOCS") == "1" {
		var err error
		if docs, err = filepath.Abs(filepath.Join("..", "..", "docs")); err != nil {
			t.Fatal(err)
		}
	}
	drv := b.Start(t, browsertest.Options{Script: "testdata/webui.js", Timeout: 5 * time.Minute, ScreenshotDir: docs,
		Args: map[string]any{"aliceLogin": loginURL("alice"), "bobLogin": loginURL("bob"), "base": info.UIURL, "kernel": k.ID,
			"v1": values["v1"], "v2": values["v2"], "v3": values["v3"], "v4": values["v4"], "v5": values["v5"]}})

	// wantEnv waits until the kernel's os.environ has each name at its
	// value ("" = unset), then lets the driver go on.
	wantEnv := func(step string, want map[string]string) {
		t.Helper()
		drv.WaitEvent(t, step, 3*time.Minute)
		pollUntil(t, 30*time.Second, func() error {
			for name, v := range want {
				d := "unset"
				if v != "" {
					d = digest(v)
				}
				if kernelDigest(t, c, name, step) != d {
					return fmt.Errorf("after %s, the kernel's %s is not as the page says", step, name)
				}
			}
			return nil
		})
		t.Logf("%s: the kernel sees it", step)
		drv.Send(t, map[string]any{"ok": true})
	}
	wantEnv("private-created", map[string]string{"DB_PASSWORD": values["v1"]})
	wantEnv("project-created", map[string]string{"API_TOKEN": values["v2"]})
	wantEnv("edited", map[string]string{"DB_PASS": values["v3"], "DB_PASSWORD": ""})
	wantEnv("cloned", map[string]string{"API_TOKEN_COPY": values["v4"], "API_TOKEN": values["v2"]})
	wantEnv("shared", map[string]string{"API_TOKEN": values["v2"]})
	wantEnv("refused", map[string]string{"BOB_TOKEN": values["v5"]})
	wantEnv("deleted", map[string]string{"DB_PASS": ""})
	var res struct {
		HTML            []string `json:"html"`
		Destroyed       string   `json:"destroyed"`
		SaveToPageMs    float64  `json:"saveToPageMs"`
		SaveToCurrentMs float64  `json:"saveToCurrentMs"`
	}
	drv.Wait(t, &res)
	t.Logf("from the click on Save: the secret's page loaded after %.0f ms, its rollout view showed the kernel at the new version after %.0f ms",
		res.SaveToPageMs, res.SaveToCurrentMs)
	if res.Destroyed != "Secret destroyed" || len(res.HTML) < 7 {
		t.Fatalf("driver result: %q, %d pages", res.Destroyed, len(res.HTML))
	}

	// No value in any page, in dev's output and logs, or in any file of the
	// state dir.
	texts := map[string]string{"dev stdout": d.out.String(), "dev stderr": d.err.String()}
	for i, h := range res.HTML {
		texts[fmt.Sprintf("page %d", i)] = h
	}
	err = filepath.WalkDir(state, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		texts[path] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for where, text := range texts {
		for n, v := range values {
			if strings.Contains(text, v) {
				t.Errorf("value %s appears in %s", n, where)
			}
		}
	}
	t.Logf("checked %d pages, dev's output and %d state files: no value; screenshots in %s", len(res.HTML), len(texts)-len(res.HTML)-2, docs)
}
