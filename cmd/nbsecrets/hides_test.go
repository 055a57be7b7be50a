package main

import (
	"strings"
	"testing"
)

// TestCreateSaysWhatItHides: a secret that replaces a same-named one in
// someone's kernels says so when it is made.
func TestCreateSaysWhatItHides(t *testing.T) {
	in := newSecretInstance(t)
	if code, _, errs := in.run("project value", "create", "NOTE_KEY", "--project", "ml", "--as", "bob"); code != 0 {
		t.Fatalf("bob's create: exit %d: %s", code, errs)
	}
	code, out, errs := in.run("private value", "create", "NOTE_KEY", "--as", "alice")
	if code != 0 {
		t.Fatalf("alice's create: exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "Created secret NOTE_KEY") ||
		!strings.Contains(errs, "note: NOTE_KEY now hides the secret of the same name in project:ml") {
		t.Fatalf("stdout %q, stderr %q: want the note that it hides project ml's NOTE_KEY", out, errs)
	}
	if code, _, errs := in.run("other", "create", "LONE_KEY", "--as", "alice"); code != 0 || strings.Contains(errs, "hides") {
		t.Fatalf("a secret that hides nothing: exit %d, stderr %q", code, errs)
	}
}
