package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// This file holds the operations. Each checks permissions before it writes
// anything, so a refused request changes nothing, and checks them again
// inside change, against the directory of the moment, on every
// compare-and-set attempt.

// validName refuses a name a new secret may not have, saying which rule it
// breaks.
func validName(name string) error {
	if err := protocol.ValidateName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// targetScope is the scope of a new secret: the project, or private.
func targetScope(user, project string) (protocol.Scope, error) {
	if project == "" {
		return protocol.Scope{Kind: protocol.ScopeUser, ID: user}, nil
	}
	if err := protocol.ValidateID(project); err != nil {
		return protocol.Scope{}, fmt.Errorf("%w: project: %w", ErrInvalid, err)
	}
	return protocol.Scope{Kind: protocol.ScopeProject, ID: project}, nil
}

func (s *Service) create(ctx context.Context, req *requestBody, value []byte) (*SecretInfo, error) {
	if err := validName(req.Name); err != nil {
		return nil, err
	}
	if err := checkValue(value); err != nil {
		return nil, err
	}
	scope, err := targetScope(req.User, req.Project)
	if err != nil {
		return nil, err
	}
	m, err := s.createSecret(ctx, req.User, scope, req.Name, value)
	if err != nil {
		return nil, err
	}
	s.log.Info("secret created", "op", opCreate, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	info := m.info()
	s.noteHides(ctx, s.dir.Load(), m, &info)
	return &info, nil
}

// createSecret makes a new secret with a new id: it claims the name, stores
// the secret and publishes its records.
func (s *Service) createSecret(ctx context.Context, user string, scope protocol.Scope, name string, value []byte) (*secretMeta, error) {
	d := s.dir.Load()
	if err := d.mayCreate(user, scope); err != nil {
		return nil, err
	}
	if err := s.names.checkShared(d, user, scope, name); err != nil {
		return nil, err
	}
	id := newSecretID()
	now := s.now().UTC()
	m := &secretMeta{ID: id, Name: name, Scope: scope, Version: 1,
		CreatedAt: now, CreatedBy: user, UpdatedAt: now, UpdatedBy: user, Size: len(value)}
	target(m, d, nil)
	if err := s.checkBudget(ctx, d, m); err != nil {
		return nil, err
	}
	if err := s.store.claimName(ctx, scope, name, id); err != nil {
		return nil, err
	}
	var err error
	if m.Sealed, err = s.store.seal(id, value); err == nil {
		if err = s.mayCommit(ctx); err == nil {
			err = s.store.put(ctx, m, 0)
		}
	}
	if err != nil {
		return nil, errors.Join(err, s.store.releaseName(ctx, scope, name, id))
	}
	if err := s.publish(ctx, m, value, d); err != nil {
		return nil, err
	}
	return m, nil
}

// update sets a secret's value and/or its name; with neither it keeps both
// and only bumps the version and re-sends the records. A rename keeps the
// secret's id: every workspace's record changes name at the new version,
// so agents unset the old variable and set the new one.
func (s *Service) update(ctx context.Context, req *requestBody, value []byte) (*SecretInfo, error) {
	if value != nil {
		if err := checkValue(value); err != nil {
			return nil, err
		}
	}
	d := s.dir.Load()
	found, err := s.resolve(ctx, d, req.User, req.Name, req.In, false)
	if err != nil {
		return nil, err
	}
	if err := d.mayWrite(req.User, found.Scope, found.CreatedBy); err != nil {
		return nil, err
	}
	rename := req.NewName != "" && req.NewName != found.Name
	if err := s.checkChange(ctx, d, req.User, found, rename, req.NewName, value); err != nil {
		return nil, err
	}
	var claimed []protocol.Scope
	release := func() error {
		var errs []error
		for _, sc := range claimed {
			errs = append(errs, s.store.releaseName(ctx, sc, req.NewName, found.ID))
		}
		return errors.Join(errs...)
	}
	if rename {
		if err := validName(req.NewName); err != nil {
			return nil, err
		}
		for _, sc := range found.names() {
			if err := s.store.claimName(ctx, sc, req.NewName, found.ID); err != nil {
				return nil, errors.Join(err, release())
			}
			claimed = append(claimed, sc)
		}
	}
	m, d, err := s.change(ctx, found.ID, req.User, func(d *directory, m *secretMeta) error {
		if err := d.mayWrite(req.User, m.Scope, m.CreatedBy); err != nil {
			return err
		}
		if rename {
			if m.Name != found.Name || !slices.Equal(m.Shares, found.Shares) {
				return fmt.Errorf("%w: %q was renamed, shared or unshared meanwhile; try again", ErrConflict, found.Name)
			}
			m.Name = req.NewName
		}
		if value == nil {
			return nil
		}
		sealed, err := s.store.seal(m.ID, value)
		m.Sealed, m.Size = sealed, len(value)
		return err
	})
	if err != nil {
		return nil, errors.Join(err, release())
	}
	if value == nil {
		if value, err = s.store.open(m); err != nil {
			return nil, err
		}
		defer clear(value)
	}
	if err := s.publish(ctx, m, value, d); err != nil {
		return nil, err
	}
	if rename {
		var errs []error
		for _, sc := range found.names() {
			errs = append(errs, s.store.releaseName(ctx, sc, found.Name, found.ID))
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		s.log.Info("secret renamed", "op", opUpdate, "user", req.User, "name", m.Name, "old_name", found.Name,
			"scope", m.Scope.String(), "id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	} else {
		s.log.Info("secret updated", "op", opUpdate, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
			"id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	}
	info := m.info()
	if rename {
		s.noteHides(ctx, d, m, &info)
	}
	return &info, nil
}

func (s *Service) delete(ctx context.Context, req *requestBody) (*SecretInfo, error) {
	found, err := s.resolve(ctx, s.dir.Load(), req.User, req.Name, req.In, false)
	if err != nil {
		return nil, err
	}
	m, d, err := s.change(ctx, found.ID, req.User, func(d *directory, m *secretMeta) error {
		if err := d.mayWrite(req.User, m.Scope, m.CreatedBy); err != nil {
			return err
		}
		m.Deleted = true
		m.Sealed = nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := s.publish(ctx, m, nil, d); err != nil {
		return nil, err
	}
	if err := s.releaseNames(ctx, m); err != nil {
		return nil, err
	}
	s.log.Info("secret deleted", "op", opDelete, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"id", m.ID, "version", m.Version, "workspaces", len(m.Sent))
	info := m.info()
	return &info, nil
}

// releaseNames frees every name a deleted secret held.
func (s *Service) releaseNames(ctx context.Context, m *secretMeta) error {
	var errs []error
	for _, sc := range m.names() {
		errs = append(errs, s.store.releaseName(ctx, sc, m.Name, m.ID))
	}
	return errors.Join(errs...)
}

// clone copies a secret the caller can use (their own, a project's or one
// shared with them through a community) into a new, independent secret:
// private to the caller or in req.Project, called req.NewName, with value
// or, when value is nil, the source's value.
func (s *Service) clone(ctx context.Context, req *requestBody, value []byte) (*SecretInfo, error) {
	if err := validName(req.NewName); err != nil {
		return nil, err
	}
	if value != nil {
		if err := checkValue(value); err != nil {
			return nil, err
		}
	}
	scope, err := targetScope(req.User, req.Project)
	if err != nil {
		return nil, err
	}
	d := s.dir.Load()
	if err := d.mayCreate(req.User, scope); err != nil {
		return nil, err
	}
	src, err := s.resolve(ctx, d, req.User, req.Name, req.In, true)
	if err != nil {
		return nil, err
	}
	if err := d.mayRead(req.User, src); err != nil {
		return nil, err
	}
	if value == nil {
		if value, err = s.store.open(src); err != nil {
			return nil, err
		}
		defer clear(value)
	}
	m, err := s.createSecret(ctx, req.User, scope, req.NewName, value)
	if err != nil {
		return nil, err
	}
	s.log.Info("secret cloned", "op", opClone, "user", req.User, "name", m.Name, "scope", m.Scope.String(), "id", m.ID,
		"from_name", src.Name, "from_scope", src.Scope.String(), "from_id", src.ID, "workspaces", len(m.Visible))
	info := m.info()
	s.noteHides(ctx, s.dir.Load(), m, &info)
	return &info, nil
}

// share shares a secret with a community. The caller must be an admin of
// the community and may change the secret. The records of the workspaces it
// reaches only through the share carry the community's scope. Sharing a
// secret already shared with the community changes nothing.
func (s *Service) share(ctx context.Context, req *requestBody) (*SecretInfo, error) {
	if err := protocol.ValidateID(req.Community); err != nil {
		return nil, fmt.Errorf("%w: community: %w", ErrInvalid, err)
	}
	d := s.dir.Load()
	if err := d.mayAdminister(req.User, req.Community); err != nil {
		return nil, err
	}
	found, err := s.resolve(ctx, d, req.User, req.Name, req.In, false)
	if err != nil {
		return nil, err
	}
	if err := d.mayWrite(req.User, found.Scope, found.CreatedBy); err != nil {
		return nil, err
	}
	if slices.Contains(found.Shares, req.Community) {
		info := found.info()
		return &info, nil
	}
	cscope := protocol.Scope{Kind: protocol.ScopeCommunity, ID: req.Community}
	if err := s.names.checkShared(d, req.User, cscope, found.Name); err != nil {
		return nil, err
	}
	shared := *found
	shared.Shares = append(slices.Clone(found.Shares), req.Community)
	if err := s.checkBudget(ctx, d, &shared); err != nil {
		return nil, err
	}
	if err := s.store.claimName(ctx, cscope, found.Name, found.ID); err != nil {
		if errors.Is(err, ErrExists) {
			return nil, fmt.Errorf("%w: community %s already has a shared secret called %q", ErrExists, req.Community, found.Name)
		}
		return nil, err
	}
	m, d, err := s.change(ctx, found.ID, req.User, func(d *directory, m *secretMeta) error {
		if err := d.mayAdminister(req.User, req.Community); err != nil {
			return err
		}
		if err := d.mayWrite(req.User, m.Scope, m.CreatedBy); err != nil {
			return err
		}
		if m.Name != found.Name {
			return fmt.Errorf("%w: %q was renamed meanwhile; try again", ErrConflict, found.Name)
		}
		if !slices.Contains(m.Shares, req.Community) {
			m.Shares = append(m.Shares, req.Community)
			slices.Sort(m.Shares)
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(err, s.store.releaseName(ctx, cscope, found.Name, found.ID))
	}
	if err := s.republish(ctx, m, d); err != nil {
		return nil, err
	}
	s.log.Info("secret shared", "op", opShare, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"community", req.Community, "id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	info := m.info()
	return &info, nil
}

// unshare withdraws a secret, named as the community sees it, from the
// community; only an admin of the community may. The workspaces that had
// it only through the share get tombstones.
func (s *Service) unshare(ctx context.Context, req *requestBody) (*SecretInfo, error) {
	if err := protocol.ValidateID(req.Community); err != nil {
		return nil, fmt.Errorf("%w: community: %w", ErrInvalid, err)
	}
	if err := checkLookupName(req.Name); err != nil {
		return nil, err
	}
	d := s.dir.Load()
	if err := d.mayAdminister(req.User, req.Community); err != nil {
		return nil, err
	}
	cscope := protocol.Scope{Kind: protocol.ScopeCommunity, ID: req.Community}
	found, err := s.store.lookup(ctx, cscope, req.Name)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: no secret %q is shared with community %s", ErrNotFound, req.Name, req.Community)
	}
	if err != nil {
		return nil, err
	}
	m, d, err := s.change(ctx, found.ID, req.User, func(d *directory, m *secretMeta) error {
		if err := d.mayAdminister(req.User, req.Community); err != nil {
			return err
		}
		i := slices.Index(m.Shares, req.Community)
		if i < 0 || m.Name != req.Name {
			return fmt.Errorf("%w: no secret %q is shared with community %s", ErrNotFound, req.Name, req.Community)
		}
		m.Shares = slices.Delete(m.Shares, i, i+1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := s.republish(ctx, m, d); err != nil {
		return nil, err
	}
	if err := s.store.releaseName(ctx, cscope, m.Name, m.ID); err != nil {
		return nil, err
	}
	s.log.Info("secret unshared", "op", opUnshare, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"community", req.Community, "id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	info := m.info()
	return &info, nil
}

// republish publishes m's records with its stored value.
func (s *Service) republish(ctx context.Context, m *secretMeta, d *directory) error {
	var value []byte
	if !m.Deleted {
		var err error
		if value, err = s.store.open(m); err != nil {
			return err
		}
		defer clear(value)
	}
	return s.publish(ctx, m, value, d)
}

// list returns the secrets user can see: their own, their projects', then
// those shared with their communities (the ones holding a project they are
// a member of, and the ones they administer), each once.
func (s *Service) list(ctx context.Context, req *requestBody) ([]SecretInfo, error) {
	d := s.dir.Load()
	out := []SecretInfo{}
	seen := map[string]bool{}
	for _, scope := range d.scopesOf(req.User) {
		ms, err := s.store.inScope(ctx, scope)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			seen[m.ID] = true
			info := m.info()
			info.Editable = d.mayWrite(req.User, m.Scope, m.CreatedBy) == nil
			out = append(out, info)
		}
	}
	for _, scope := range d.communitiesOf(req.User) {
		ms, err := s.store.inScope(ctx, scope)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if seen[m.ID] {
				continue
			}
			seen[m.ID] = true
			info := m.info()
			info.Via = scope.ID
			out = append(out, info)
		}
	}
	markShadowed(out)
	s.log.Debug("secrets listed", "op", opList, "user", req.User, "count", len(out))
	return out, nil
}

// markShadowed sets ShadowedBy on every entry that a same-named entry of a
// higher precedence scope hides in the caller's workspaces (as the agent
// decides: user over project over community, then the lower secret id).
func markShadowed(list []SecretInfo) {
	seenAs := func(i SecretInfo) protocol.Scope {
		if i.Via != "" {
			return protocol.Scope{Kind: protocol.ScopeCommunity, ID: i.Via}
		}
		return i.Scope
	}
	winner := map[string]int{}
	for i, e := range list {
		w, ok := winner[e.Name]
		if !ok {
			winner[e.Name] = i
			continue
		}
		a, b := seenAs(e).Kind.Precedence(), seenAs(list[w]).Kind.Precedence()
		if a < b || a == b && e.ID < list[w].ID {
			winner[e.Name] = i
		}
	}
	for i, e := range list {
		if w := winner[e.Name]; w != i {
			by := seenAs(list[w])
			list[i].ShadowedBy = &by
		}
	}
}

// resolve finds the secret user means by name: in project in when given,
// else the user's own if there is one, else the one project secret of that
// name among the user's projects. With use, a secret shared with one of the
// user's communities is found too (for clone, which only reads); without,
// finding only such a secret is refused as forbidden: it can be used but
// not changed there.
func (s *Service) resolve(ctx context.Context, d *directory, user, name, in string, use bool) (*secretMeta, error) {
	if err := checkLookupName(name); err != nil {
		return nil, err
	}
	scopes := d.scopesOf(user)
	if in != "" {
		if err := protocol.ValidateID(in); err != nil {
			return nil, fmt.Errorf("%w: project: %w", ErrInvalid, err)
		}
		sc := protocol.Scope{Kind: protocol.ScopeProject, ID: in}
		if !slices.Contains(scopes, sc) {
			return nil, fmt.Errorf("%w: %s is not a member of project %q", ErrForbidden, user, in)
		}
		scopes = []protocol.Scope{sc}
	}
	found, err := s.lookupIn(ctx, scopes, name)
	if err != nil {
		return nil, err
	}
	if len(found) > 0 && found[0].Scope.Kind == protocol.ScopeUser {
		return found[0], nil
	}
	if len(found) == 0 && in == "" {
		shared, err := s.lookupIn(ctx, d.communitiesOf(user), name)
		if err != nil {
			return nil, err
		}
		if len(shared) > 0 && !use {
			var via []string
			for _, m := range shared {
				via = append(via, m.Scope.String())
			}
			return nil, fmt.Errorf("%w: %q reaches %s through a community share (owned by %s): it can be used but changed only where it belongs",
				ErrForbidden, name, user, strings.Join(via, ", "))
		}
		found = shared
	}
	switch len(found) {
	case 0:
		if in != "" {
			return nil, fmt.Errorf("%w: %q is not in project %s", ErrNotFound, name, in)
		}
		return nil, fmt.Errorf("%w: %q is neither private to %s nor in one of their projects", ErrNotFound, name, user)
	case 1:
		return found[0], nil
	}
	var scopesOf []string
	for _, m := range found {
		scopesOf = append(scopesOf, m.Scope.String())
	}
	return nil, fmt.Errorf("%w: %q exists in %s (pick one with --project)", ErrAmbiguous, name, strings.Join(scopesOf, ", "))
}

// lookupIn returns the live secrets called name in scopes, each once, in
// the order of scopes.
func (s *Service) lookupIn(ctx context.Context, scopes []protocol.Scope, name string) ([]*secretMeta, error) {
	var found []*secretMeta
	for _, scope := range scopes {
		m, err := s.store.lookup(ctx, scope, name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(found, func(f *secretMeta) bool { return f.ID == m.ID }) {
			found = append(found, m)
		}
	}
	return found, nil
}

// change applies fn to the secret id as user, bumps its version, retargets
// it and writes it with compare-and-set, reading and applying again when
// another writer got there first. fn checks the permissions, against the
// directory of the moment, which change returns with the secret.
func (s *Service) change(ctx context.Context, id, user string, fn func(*directory, *secretMeta) error) (*secretMeta, *directory, error) {
	for attempt := 0; ; attempt++ {
		m, rev, err := s.store.get(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		if m.Deleted {
			return nil, nil, fmt.Errorf("%w: %q in %s was deleted", ErrNotFound, m.Name, m.Scope)
		}
		d := s.dir.Load()
		if err := fn(d, m); err != nil {
			return nil, nil, err
		}
		m.Version++
		m.UpdatedAt = s.now().UTC()
		m.UpdatedBy = user
		target(m, d, nil)
		if err := s.mayCommit(ctx); err != nil {
			return nil, nil, err
		}
		err = s.store.put(ctx, m, rev)
		if errors.Is(err, errConflict) && attempt < maxCASRetries {
			s.log.Debug("concurrent change, retrying", "id", id, "attempt", attempt+1)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		return m, d, nil
	}
}

// checkChange checks an update of found before it writes: a new name
// against the name policy in every scope the secret is named in, and the
// secret as it would be (name, value size) against the per-workspace
// budget.
func (s *Service) checkChange(ctx context.Context, d *directory, user string, found *secretMeta, rename bool, newName string, value []byte) error {
	changed := *found
	if rename {
		for _, sc := range found.names() {
			if err := s.names.checkShared(d, user, sc, newName); err != nil {
				return err
			}
		}
		changed.Name = newName
	}
	if value != nil {
		changed.Size = len(value)
	}
	if changed.Name == found.Name && valueSize(&changed) <= valueSize(found) {
		return nil // nothing grows
	}
	return s.checkBudget(ctx, d, &changed)
}
