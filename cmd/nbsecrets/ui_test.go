package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestWebUIAddressLoopbackOnly: dev refuses a --ui-addr other hosts can
// reach unless told otherwise, and a malformed one.
func TestWebUIAddressLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:0":    "not a loopback address",
		"10.1.2.3:80":  "not a loopback address",
		"127.0.0.1":    "missing port",
		"example:8080": "not a loopback address",
	} {
		_, err := startWebUI(nil, nil, t.TempDir(), addr, "/", false, hclog.NewNullLogger())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--ui-addr %s: %v, want %q", addr, err, want)
		}
	}
}

// TestUICommandErrors: nbsecrets ui says why it cannot make a login URL.
func TestUICommandErrors(t *testing.T) {
	run1 := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := runUI(context.Background(), &cliEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb}, args)
		return out.String() + errb.String(), err
	}
	empty := t.TempDir()
	if _, err := run1("--state-dir", empty); err == nil || !strings.Contains(err.Error(), "no nbsecrets instance") {
		t.Errorf("no instance: %v", err)
	}
	// An instance that has stopped (its pid is gone).
	if err := os.WriteFile(filepath.Join(empty, devInfoFile), []byte(`{"pid": 999999999, "ui_url": "http://127.0.0.1:1/"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run1("--state-dir", empty); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("stopped instance: %v", err)
	}
	if _, err := run1("--state-dir", empty, "extra"); err != errUsage {
		t.Errorf("extra argument: %v", err)
	}
	// The key is made once and kept.
	keys := filepath.Join(t.TempDir(), "keys")
	k1, err := loadOrCreateLoginKey(keys)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := loadOrCreateLoginKey(keys)
	if err != nil || !bytes.Equal(k1, k2) || len(k1) != 32 {
		t.Fatalf("login key not kept: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(keys, uiLoginKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("login key file: %v %v", fi.Mode(), err)
	}
}
