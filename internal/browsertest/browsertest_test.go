package browsertest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const smokePage = `<!doctype html><title>browsertest smoke</title>
<input id="name"><button id="go" onclick="fetch('/hello?name='+encodeURIComponent(document.getElementById('name').value)).then(r=>r.text()).then(t=>document.getElementById('out').textContent=t)">go</button>
<p id="out">waiting</p>`

// TestSmoke drives Debian's chromium through a page served by the test:
// an event from the driver, a message to it, a click that makes a request
// the server answers, a screenshot, and the result back in Go.
func TestSmoke(t *testing.T) {
	b := Require(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hello" {
			fmt.Fprintf(w, "hello %s from go", r.URL.Query().Get("name"))
			return
		}
		fmt.Fprint(w, smokePage)
	}))
	defer srv.Close()

	d := b.Start(t, Options{Script: "testdata/smoke.js", Args: map[string]string{"url": srv.URL}, Timeout: 2 * time.Minute})
	loaded := d.WaitEvent(t, "loaded", time.Minute)
	if !strings.Contains(string(loaded), "browsertest smoke") {
		t.Errorf("loaded event %s: want the page's title", loaded)
	}
	d.Send(t, map[string]string{"name": "nbsecrets"})
	var res struct {
		Text, Shot, UA string
	}
	d.Wait(t, &res)
	if res.Text != "hello nbsecrets from go" {
		t.Errorf("the page shows %q after the click", res.Text)
	}
	if !strings.Contains(res.UA, "Chrome/") {
		t.Errorf("user agent %q is not chromium's", res.UA)
	}
	if filepath.Dir(res.Shot) != d.ScreenshotDir {
		t.Errorf("screenshot %s is not in %s", res.Shot, d.ScreenshotDir)
	}
	if fi, err := os.Stat(res.Shot); err != nil || fi.Size() == 0 {
		t.Errorf("screenshot: %v", err)
	}
}

// TestDriverFailure: a driver that throws is an error naming its message,
// with a failure screenshot, and a kept screenshot dir when asked.
func TestDriverFailure(t *testing.T) {
	b := Require(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "<title>fail</title><p>about to fail</p>")
	}))
	defer srv.Close()
	keep := filepath.Join(t.TempDir(), "docs")
	d := b.Start(t, Options{Script: "testdata/fail.js", Args: map[string]string{"url": srv.URL, "marker": "m-42"}, ScreenshotDir: keep})
	if _, err := d.waitEvent("never", 2*time.Minute); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("waiting for an event the driver never sends: %v", err)
	}
	_, err := d.Result()
	if err == nil {
		t.Fatal("a failing driver gave no error")
	}
	if !strings.Contains(err.Error(), "deliberate failure m-42") {
		t.Errorf("the error does not carry the driver's: %v", err)
	}
	if _, err := os.Stat(filepath.Join(keep, "failure.png")); err != nil {
		t.Errorf("no failure screenshot in the requested dir: %v", err)
	}
}
