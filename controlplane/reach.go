package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

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

// hides are the scopes of the same-named secrets that m, by its higher
// precedence (private over project over community), hides in some of the
// workspaces it reaches: a private secret over a project's, a project
// secret over a community share the project's members rely on. A user who
// makes such a secret is told, so the replacement is never silent.
func (s *Service) hides(ctx context.Context, d *directory, m *secretMeta) ([]protocol.Scope, error) {
	targets := reach(d, m)
	if len(targets) == 0 {
		return nil, nil
	}
	var candidates []protocol.Scope
	seen := map[protocol.Scope]bool{m.Scope: true}
	add := func(sc protocol.Scope) {
		if !seen[sc] && sc.Kind.Precedence() > m.Scope.Kind.Precedence() {
			seen[sc] = true
			candidates = append(candidates, sc)
		}
	}
	for _, ws := range targets {
		w, ok := d.workspace(ws)
		if !ok {
			continue
		}
		for _, p := range w.Projects {
			add(protocol.Scope{Kind: protocol.ScopeProject, ID: p})
		}
		for id, c := range d.communities {
			if slices.ContainsFunc(c.Projects, func(p string) bool { return slices.Contains(w.Projects, p) }) {
				add(protocol.Scope{Kind: protocol.ScopeCommunity, ID: id})
			}
		}
	}
	slices.SortFunc(candidates, func(a, b protocol.Scope) int { return strings.Compare(a.String(), b.String()) })
	var out []protocol.Scope // the scopes the hidden secrets have where m hides them
	for _, sc := range candidates {
		other, err := s.store.lookup(ctx, sc, m.Name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if other.ID == m.ID {
			continue
		}
		// Where other reaches a workspace through its own scope, that is
		// the scope it has there; only where it arrives as sc does m hide
		// it as sc.
		own := map[string]bool{}
		for _, w := range d.recipients(other.Scope) {
			own[w.ID] = true
		}
		for _, ws := range reach(d, other) {
			eff := sc
			if own[ws] {
				eff = other.Scope
			}
			if slices.Contains(targets, ws) && eff.Kind.Precedence() > m.Scope.Kind.Precedence() && !slices.Contains(out, eff) {
				out = append(out, eff)
			}
		}
	}
	slices.SortFunc(out, func(a, b protocol.Scope) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// noteHides sets info.Hides for m and logs what it hides. A failure to
// tell is logged, not returned: the change itself is made.
func (s *Service) noteHides(ctx context.Context, d *directory, m *secretMeta, info *SecretInfo) {
	h, err := s.hides(ctx, d, m)
	if err != nil {
		s.log.Warn("finding the secrets a change hides", "name", m.Name, "id", m.ID, "error", err)
		return
	}
	if len(h) == 0 {
		return
	}
	info.Hides = h
	var scopes []string
	for _, sc := range h {
		scopes = append(scopes, sc.String())
	}
	s.log.Info("secret hides same-named secrets in some workspaces", "name", m.Name, "scope", m.Scope.String(),
		"id", m.ID, "hides", strings.Join(scopes, ","))
}
