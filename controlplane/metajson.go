package controlplane

import (
	"encoding/json"
	"slices"
)

// The stored form of a secretMeta lists each workspace once: Visible as
// is, and instead of Sent (a superset of Visible) only Gone, the workspaces
// that were given a record but no longer see the secret (they hold a
// tombstone). Sent listed every visible workspace a second time, which at
// 20,000 workspaces made the stored secret about 1 MB, NATS' default
// payload limit. A secret stored with "sent" (before Gone) still reads.

// storedMeta is secretMeta's JSON form: Sent replaced by Gone.
type storedMeta struct {
	secretMetaFields
	Sent []string `json:"sent,omitempty"` // read only: secrets stored before Gone
	Gone []string `json:"gone,omitempty"`
}

// secretMetaFields is secretMeta without its methods (so that encoding it
// does not recurse into MarshalJSON), with Sent left out of the JSON.
type secretMetaFields secretMeta

// MarshalJSON writes m with Gone in place of Sent.
func (m *secretMeta) MarshalJSON() ([]byte, error) {
	visible := make(map[string]bool, len(m.Visible))
	for _, ws := range m.Visible {
		visible[ws] = true
	}
	var gone []string
	for _, ws := range m.Sent {
		if !visible[ws] {
			gone = append(gone, ws)
		}
	}
	slices.Sort(gone)
	f := secretMetaFields(*m)
	f.Sent = nil
	return json.Marshal(storedMeta{secretMetaFields: f, Gone: gone})
}

// UnmarshalJSON reads m and makes Sent again: Visible and Gone (or, for a
// secret stored before Gone, the stored Sent with Visible added).
func (m *secretMeta) UnmarshalJSON(b []byte) error {
	var s storedMeta
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*m = secretMeta(s.secretMetaFields)
	seen := make(map[string]bool, len(m.Visible)+len(s.Gone)+len(s.Sent))
	m.Sent = make([]string, 0, len(m.Visible)+len(s.Gone)+len(s.Sent))
	for _, list := range [][]string{s.Sent, m.Visible, s.Gone} {
		for _, ws := range list {
			if !seen[ws] {
				seen[ws] = true
				m.Sent = append(m.Sent, ws)
			}
		}
	}
	if len(m.Sent) == 0 {
		m.Sent = nil
	}
	return nil
}
