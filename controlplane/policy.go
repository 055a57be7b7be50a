package controlplane

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// NamePolicy tightens which names secrets may have in shared scopes (a
// project, or shared with a community) beyond the built-in reserved list
// (protocol.ReservedClasses), which can never be complete: a secret of a
// shared scope reaches the kernels of other people, and any variable some
// tool of theirs reads can change what that tool does.
//
// The zero value is the default: any project member may create project
// secrets of any name the reserved list allows. That is the rule the
// platforms nbsecrets serves have (a member creates the team's keys), and
// the reserved list covers the classes known to run code or redirect
// traffic. A platform whose members do not trust each other with that, or
// whose kernels run tools with variables of their own, sets one or both
// fields.
type NamePolicy struct {
	// SharedPattern, when set, must match the whole name of every project
	// secret and every name shared with a community (for example
	// `^TEAM_[A-Z0-9_]+$`, or `^[A-Z0-9_]+_(KEY|TOKEN|PASSWORD|SECRET)$`).
	// Private secrets are not checked: they reach only their owner.
	SharedPattern *regexp.Regexp
	// AdminsNameShared, when true, lets only a project's admins create its
	// secrets, clone into it or rename its secrets; members may still
	// update the values of the secrets they created.
	AdminsNameShared bool
}

// checkShared reports why user may not give a secret of scope the name,
// under the policy, or nil.
func (p NamePolicy) checkShared(d *directory, user string, scope protocol.Scope, name string) error {
	if scope.Kind == protocol.ScopeUser {
		return nil
	}
	if p.SharedPattern != nil && !p.SharedPattern.MatchString(name) {
		return fmt.Errorf("%w: %q does not match the pattern this service requires of shared secret names (%s)",
			ErrForbidden, name, p.SharedPattern)
	}
	if p.AdminsNameShared && scope.Kind == protocol.ScopeProject && d.roles[scope.ID][user] != RoleAdmin {
		return fmt.Errorf("%w: on this service only an admin of project %q names its secrets (create, clone into, rename)",
			ErrForbidden, scope.ID)
	}
	return nil
}

// valueSize is the size of m's value: Size when recorded, else the size of
// its sealed form, which is larger.
func valueSize(m *secretMeta) int {
	if m.Size > 0 {
		return m.Size
	}
	return len(m.Sealed)
}

// checkBudget reports which workspaces would hold more than the
// per-workspace budget (protocol.MaxWorkspaceSecrets,
// protocol.MaxWorkspaceEnvBytes) if secret m, as changed (name, value size
// and shares), reached the workspaces it reaches under d, or nil. Every
// live secret reaching a workspace counts, including those a same-named
// one hides there. Two changes that race may each pass; the agent enforces
// the budget too.
func (s *Service) checkBudget(ctx context.Context, d *directory, m *secretMeta) error {
	targets := reach(d, m)
	if len(targets) == 0 {
		return nil
	}
	scopesOf := map[string][]protocol.Scope{} // workspace -> the scopes whose secrets reach it
	need := map[protocol.Scope]bool{}
	for _, ws := range targets {
		w, ok := d.workspace(ws)
		if !ok {
			continue
		}
		scopes := []protocol.Scope{{Kind: protocol.ScopeUser, ID: w.Owner}}
		for _, p := range w.Projects {
			scopes = append(scopes, protocol.Scope{Kind: protocol.ScopeProject, ID: p})
		}
		for id, c := range d.communities {
			if slices.ContainsFunc(c.Projects, func(p string) bool { return slices.Contains(w.Projects, p) }) {
				scopes = append(scopes, protocol.Scope{Kind: protocol.ScopeCommunity, ID: id})
			}
		}
		scopesOf[ws] = scopes
		for _, sc := range scopes {
			need[sc] = true
		}
	}
	byScope, err := s.budgetEntries(ctx, need)
	if err != nil {
		return err
	}
	var over []string
	for _, ws := range targets {
		scopes, ok := scopesOf[ws]
		if !ok {
			continue
		}
		seen := map[string]bool{m.ID: true}
		count, bytes := 1, protocol.EnvSize(m.Name, valueSize(m))
		for _, sc := range scopes {
			for _, e := range byScope[sc] {
				if !seen[e.id] {
					seen[e.id] = true
					count++
					bytes += e.cost
				}
			}
		}
		if count > protocol.MaxWorkspaceSecrets || bytes > protocol.MaxWorkspaceEnvBytes {
			over = append(over, fmt.Sprintf("%s (%d secrets, %d bytes)", ws, count, bytes))
		}
	}
	if len(over) > 0 {
		const show = 10
		more := ""
		if len(over) > show {
			more = fmt.Sprintf(" and %d more", len(over)-show)
			over = over[:show]
		}
		return fmt.Errorf("%w: %q would take workspaces over the budget of %d secrets and %d bytes of environment per workspace: %s%s",
			ErrInvalid, m.Name, protocol.MaxWorkspaceSecrets, protocol.MaxWorkspaceEnvBytes, strings.Join(over, ", "), more)
	}
	return nil
}

// budgetEntry is one live secret as the budget counts it.
type budgetEntry struct {
	id   string
	cost int // protocol.EnvSize
}

// budgetEntries returns the live secrets of each scope in need. It lists
// the name claims once, whatever the number of scopes (every listing is a
// consumer on the service's bucket), then reads the secrets of those
// scopes.
func (s *Service) budgetEntries(ctx context.Context, need map[protocol.Scope]bool) (map[protocol.Scope][]budgetEntry, error) {
	out := map[protocol.Scope][]budgetEntry{}
	var keys []string
	if len(need) == 1 {
		for sc := range need {
			k, err := s.store.keys(ctx, "names."+string(sc.Kind)+"."+sc.ID+".*")
			if err != nil {
				return nil, fmt.Errorf("listing %s: %w", sc, err)
			}
			keys = k
		}
	} else {
		k, err := s.store.keys(ctx, "names.>")
		if err != nil {
			return nil, fmt.Errorf("listing secret names: %w", err)
		}
		keys = k
	}
	for _, key := range keys {
		// names.<kind>.<id>.<name>
		parts := strings.SplitN(key, ".", 4)
		if len(parts) != 4 {
			continue
		}
		sc := protocol.Scope{Kind: protocol.ScopeKind(parts[1]), ID: parts[2]}
		if !need[sc] {
			continue
		}
		e, err := s.store.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", sc, err)
		}
		o, err := s.store.live(ctx, string(e.Value()), sc, parts[3])
		if errors.Is(err, ErrNotFound) {
			continue // a claim left behind
		}
		if err != nil {
			return nil, err
		}
		out[sc] = append(out[sc], budgetEntry{o.ID, protocol.EnvSize(o.Name, valueSize(o))})
	}
	return out, nil
}
