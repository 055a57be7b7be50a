package controlplane

import (
	"fmt"
	"slices"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// reach is the set of workspaces that secret m reaches under directory d:
// those of its own scope and those of every community it is shared with,
// sorted, each once. Unlike target it changes nothing.
func reach(d *directory, m *secretMeta) []string {
	var out []string
	add := func(scope protocol.Scope) {
		for _, w := range d.recipients(scope) {
			out = append(out, w.ID)
		}
	}
	add(m.Scope)
	for _, c := range m.Shares {
		add(protocol.Scope{Kind: protocol.ScopeCommunity, ID: c})
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// mayRead reports why user may not read secret m's value (clone it, or
// anything else that copies a value), or nil. A user reads their own
// private secrets, and any other secret only when it reaches one of their
// workspaces: administering a community lets a user share and unshare
// secrets with it and list their names, not read them.
func (d *directory) mayRead(user string, m *secretMeta) error {
	if m.Scope == (protocol.Scope{Kind: protocol.ScopeUser, ID: user}) {
		return nil
	}
	for _, ws := range reach(d, m) {
		if w, ok := d.workspace(ws); ok && w.Owner == user {
			return nil
		}
	}
	return fmt.Errorf("%w: %q (%s) reaches none of %s's workspaces: its value cannot be read or copied by them",
		ErrForbidden, m.Name, m.Scope, user)
}
