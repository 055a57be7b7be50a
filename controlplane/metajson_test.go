package controlplane

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nbsecrets/nbsecrets/protocol"
)

func TestSecretMetaStoredListsEachWorkspaceOnce(t *testing.T) {
	m := &secretMeta{ID: "0123456789abcdef0123456789abcdef", Name: "TOKEN", Version: 3,
		Scope:   protocol.Scope{Kind: protocol.ScopeProject, ID: "p"},
		Visible: []string{"wa", "wc"}, Via: map[string]string{"wc": "comm"},
		Sent: []string{"wa", "wb", "wc", "wd"}}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["sent"]; ok {
		t.Errorf("stored form still has sent: %s", b)
	}
	if got := string(raw["gone"]); got != `["wb","wd"]` {
		t.Errorf("gone = %s, want the sent workspaces that are not visible", got)
	}
	var back secretMeta
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	slices.Sort(back.Sent)
	if !slices.Equal(back.Sent, m.Sent) || !slices.Equal(back.Visible, m.Visible) || back.Via["wc"] != "comm" ||
		back.ID != m.ID || back.Name != m.Name || back.Version != m.Version || back.Scope != m.Scope {
		t.Errorf("read back %+v, want %+v", back, *m)
	}
}

func TestSecretMetaReadsSentOfOlderStoredForm(t *testing.T) {
	// As stored before "gone": sent a superset of visible.
	old := `{"id":"x","name":"N","scope":{"kind":"project","id":"p"},"version":2,"created_at":"2026-01-01T00:00:00Z",` +
		`"created_by":"u","updated_at":"2026-01-01T00:00:00Z","updated_by":"u","visible":["wa"],"sent":["wa","wb"]}`
	var m secretMeta
	if err := json.Unmarshal([]byte(old), &m); err != nil {
		t.Fatal(err)
	}
	slices.Sort(m.Sent)
	if !slices.Equal(m.Sent, []string{"wa", "wb"}) || !slices.Equal(m.Visible, []string{"wa"}) {
		t.Fatalf("sent %v visible %v, want [wa wb] [wa]", m.Sent, m.Visible)
	}
	// Written again, wb (no longer visible) is kept as gone: its tombstone
	// is not forgotten.
	b, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"gone":["wb"]`) || strings.Contains(string(b), `"sent"`) {
		t.Errorf("rewritten as %s", b)
	}
}

func TestSecretMetaStoredSizeHalved(t *testing.T) {
	const n = 20000
	m := &secretMeta{ID: "0123456789abcdef0123456789abcdef", Name: "TOKEN", Version: 1,
		Scope: protocol.Scope{Kind: protocol.ScopeProject, ID: "p"}}
	for i := range n {
		ws := fmt.Sprintf("workspace-%05d", i)
		m.Visible = append(m.Visible, ws)
		m.Sent = append(m.Sent, ws)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	type both secretMetaFields // the old form: sent in full
	old, err := json.Marshal(both(*m))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d workspaces: stored %d bytes, %d with sent listed in full", n, len(b), len(old))
	if len(b) > len(old)/2+1024 {
		t.Errorf("stored %d bytes, want at most half of %d", len(b), len(old))
	}
}
