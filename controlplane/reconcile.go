package controlplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// reconcileTimeout bounds the reconciliation that follows a directory
// change.
const reconcileTimeout = 5 * time.Minute

// maxReportedFailures bounds the errors SetDirectory returns.
const maxReportedFailures = 5

// SetDirectory checks d and makes it the service's directory, while the
// service runs. If d is refused, the old directory stays and nothing
// changes. Then, for every secret, it recomputes which workspaces may see
// it and by which scope, and writes what that changes: sealed records for
// workspaces that gained it (a workspace added later receives everything
// it is entitled to), signed tombstones for workspaces that lost it (a
// workspace removed from a project or from the directory, a project leaving
// a community, a user or project removed). A loss, a change of scope or a
// workspace's new curve key raises the secret's version so that agents take
// the new records; a gain alone does not. Requests keep being served
// meanwhile; each of them uses the directory of the moment. An error after
// the swap means some secrets could not be reconciled; they are retried on
// the next SetDirectory or Start.
func (s *Service) SetDirectory(d *Directory) error {
	nd, err := newDirectory(d)
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	old := s.dir.Swap(nd)
	s.mu.Lock()
	ready := s.ready && !s.stopped
	if ready {
		s.inflight.Add(1)
	}
	s.mu.Unlock()
	if !ready {
		return nil // Start reconciles with it
	}
	if !s.lease.Held() {
		// Another replica holds the background lease and reconciles (it
		// reads the same directory); should it go, whoever takes the lease
		// over reconciles with its own.
		s.inflight.Done()
		s.log.Info("directory changed; the replica holding the background lease reconciles", "workspaces", len(nd.workspaces))
		return nil
	}
	defer s.inflight.Done()
	rekeyed := func(ws string) bool {
		a, ok1 := old.workspace(ws)
		b, ok2 := nd.workspace(ws)
		return ok1 && ok2 && a.CurveKey != b.CurveKey
	}
	ctx, cancel := context.WithTimeout(s.ctx, reconcileTimeout)
	defer cancel()
	changed, failed, err := s.reconcile(ctx, nd, rekeyed)
	s.log.Info("directory changed", "users", len(nd.users), "projects", len(nd.roles), "communities", len(nd.communities),
		"workspaces", len(nd.workspaces), "secrets_changed", changed, "secrets_failed", len(failed))
	if err != nil {
		return err
	}
	if len(failed) > 0 {
		for _, e := range failed {
			s.log.Error("reconciling secret", "error", e)
		}
		return fmt.Errorf("controlplane: %d secrets not reconciled with the new directory: %w",
			len(failed), errors.Join(failed[:min(len(failed), maxReportedFailures)]...))
	}
	return nil
}

// target sets, under directory d, which workspaces get m's value (none
// once deleted) and by which scope, and adds them to those that ever got a
// record of it. A workspace gets the secret by its own scope when that
// reaches it, else through the first community share (by id) that does.
// It reports whether anything changed and whether the version must go up
// for agents to take the new records: a workspace lost the secret, reaches
// it by another scope, had a tombstone and gets it back, or (rekeyed) has a
// new curve key.
func target(m *secretMeta, d *directory, rekeyed func(string) bool) (changed, bump bool) {
	// Sets rather than slices.Contains: with thousands of workspaces the
	// quadratic scans cost more than the records.
	var visible []string
	isVisible := map[string]bool{}
	via := map[string]string{}
	if !m.Deleted {
		for _, w := range d.recipients(m.Scope) {
			visible = append(visible, w.ID)
			isVisible[w.ID] = true
		}
		for _, c := range m.Shares {
			for _, w := range d.recipients(protocol.Scope{Kind: protocol.ScopeCommunity, ID: c}) {
				if !isVisible[w.ID] {
					visible = append(visible, w.ID)
					isVisible[w.ID] = true
					via[w.ID] = c
				}
			}
		}
		slices.Sort(visible)
	}
	wasVisible := make(map[string]bool, len(m.Visible))
	for _, ws := range m.Visible {
		wasVisible[ws] = true
		if !isVisible[ws] || m.Via[ws] != via[ws] || rekeyed != nil && rekeyed(ws) {
			bump = true
		}
	}
	sent := make(map[string]bool, len(m.Sent))
	for _, ws := range m.Sent {
		sent[ws] = true
	}
	for _, ws := range visible {
		if !wasVisible[ws] && sent[ws] {
			bump = true
		}
	}
	if len(via) == 0 {
		via = nil
	}
	changed = bump || !slices.Equal(visible, m.Visible) || !maps.Equal(via, m.Via)
	m.Visible, m.Via = visible, via
	for _, ws := range visible {
		if !sent[ws] {
			m.Sent = append(m.Sent, ws)
			sent[ws] = true
		}
	}
	return changed, bump
}

// reconcile brings every secret in line with directory d and writes the
// records that are behind the store: what a directory change implies, and
// an operation that stopped between the store and the records (a crash).
// It returns how many secrets changed, and the secrets it could not
// reconcile; an error only when ctx ended.
func (s *Service) reconcile(ctx context.Context, d *directory, rekeyed func(string) bool) (int, []error, error) {
	s.revs.reset() // read what the bucket really holds: it may have lost records
	ids, err := s.store.all(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("controlplane: %w", err)
	}
	var changed int
	var failed []error
	for _, id := range ids {
		ch, err := s.reconcileOne(ctx, id, d, rekeyed)
		if err != nil {
			if ctx.Err() != nil {
				return changed, failed, fmt.Errorf("controlplane: reconciling: %w", err)
			}
			failed = append(failed, fmt.Errorf("secret %s: %w", id, err))
			continue
		}
		if ch {
			changed++
		}
	}
	s.log.Debug("reconciled records", "secrets", len(ids), "changed", changed, "failed", len(failed))
	return changed, failed, nil
}

func (s *Service) reconcileOne(ctx context.Context, id string, d *directory, rekeyed func(string) bool) (bool, error) {
	for attempt := 0; ; attempt++ {
		m, rev, err := s.store.get(ctx, id)
		if err != nil {
			return false, err
		}
		changed, bump := target(m, d, rekeyed)
		if bump {
			m.Version++
		}
		if changed {
			err := s.store.put(ctx, m, rev)
			if errors.Is(err, errConflict) && attempt < maxCASRetries {
				continue
			}
			if err != nil {
				return false, err
			}
			s.log.Info("secret retargeted", "name", m.Name, "scope", m.Scope.String(), "id", m.ID,
				"version", m.Version, "workspaces", len(m.Visible))
		}
		if err := s.republish(ctx, m, d); err != nil {
			return changed, err
		}
		if m.Deleted {
			return changed, s.releaseNames(ctx, m)
		}
		return changed, nil
	}
}
