package controlplane

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestCommunityAdminCannotReadShares performs issue 9's finding 5: an admin
// of a community who is in none of its projects clones a secret shared with
// the community to read its value. He is refused, nothing is written, and
// his workspace gets nothing; he may still list the share's name and
// withdraw it, which is what administering a community is for. A member of
// a project the share reaches still clones it.
func TestCommunityAdminCannotReadShares(t *testing.T) {
	f := newWorld(t)
	ctx := ctxT(t)
	// carol administers community "other" (project vision) and is in no
	// project; dave, vision's admin, administers it too.
	for i := range f.dir.Communities {
		if f.dir.Communities[i].ID == "other" {
			f.dir.Communities[i].Admins = append(f.dir.Communities[i].Admins, "dave")
		}
	}
	f.setDir()
	dave, carol, erin := f.client("dave"), f.client("carol"), f.client("erin")
	sec, err := dave.Create(ctx, "VISION_TOKEN", []byte("vision-only-value"), CreateOptions{Project: "vision"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.Share(ctx, "VISION_TOKEN", "other"); err != nil {
		t.Fatal(err)
	}

	before := f.lastSeqs()
	_, err = carol.Clone(ctx, "VISION_TOKEN", "CAROLS_COPY", nil)
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "reaches none of carol's workspaces") {
		t.Fatalf("community admin's clone: %v, want forbidden", err)
	}
	if after := f.lastSeqs(); after != before {
		t.Fatalf("the refused clone wrote: %v -> %v", before, after)
	}
	if !strings.Contains(f.logs.String(), "reaches none of carol's workspaces") {
		t.Error("the refused clone was not logged")
	}
	f.wantGone("ws-carol", sec.ID)

	// What administering the community grants: its names, and unshare.
	list, err := carol.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(i SecretInfo) bool { return i.ID == sec.ID && i.Via == "other" }) {
		t.Fatalf("carol's list does not show the share's name: %+v", list)
	}

	// A member whose workspace the secret reaches clones it.
	cl, err := erin.Clone(ctx, "VISION_TOKEN", "ERINS_COPY", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-erin", cl.ID, 1, "vision-only-value")

	if _, err := carol.Unshare(ctx, "VISION_TOKEN", "other"); err != nil {
		t.Fatalf("community admin unshare: %v", err)
	}
}
