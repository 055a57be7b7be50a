package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// publish writes m's record for every workspace that ever had the secret:
// the value for those in m.Visible that d still holds, a tombstone for the
// others. Each record carries the scope by which its workspace may have
// the secret (m.recordScope).
func (s *Service) publish(ctx context.Context, m *secretMeta, value []byte, d *directory) error {
	now := s.now()
	var errs []error
	for _, ws := range m.Sent {
		var data []byte
		var err error
		scope := m.recordScope(ws)
		if w, ok := d.workspace(ws); ok && slices.Contains(m.Visible, ws) {
			data, err = s.sealer.Put(protocol.Recipient{Workspace: ws, CurveKey: w.CurveKey}, m.ID, m.Name, m.Version, scope, value, now)
		} else {
			data, err = s.sealer.Delete(ws, m.ID, m.Name, m.Version, scope, now)
		}
		if err == nil {
			err = s.writeRecord(ctx, ws, m.ID, m.Version, data)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("record of %s for workspace %s: %w", m.ID, ws, err))
		}
	}
	return errors.Join(errs...)
}

// writeRecord puts data under the workspace's key for the secret unless the
// record there already has version or a later one, with compare-and-set:
// when two writers race, the later version stays.
func (s *Service) writeRecord(ctx context.Context, ws, id string, version uint64, data []byte) error {
	key := protocol.RecordKey(ws, id)
	for attempt := 0; ; attempt++ {
		e, err := s.records.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = s.records.Create(ctx, key, data)
		case err != nil:
		default:
			var have uint64
			if have, err = s.recordVersion(ws, key, e.Value()); err != nil {
				return fmt.Errorf("writing %s: %w", key, err)
			}
			if have >= version {
				return nil
			}
			_, err = s.records.Update(ctx, key, data, e.Revision())
		}
		if err == nil {
			return nil
		}
		if (errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)) && attempt < maxCASRetries {
			continue
		}
		return fmt.Errorf("writing %s: %w", key, err)
	}
}

// recordVersion is the version of the record data under key in workspace
// ws when it is one we signed, 0 when it is not (garbage, or signed by
// another key): writeRecord then replaces it. An error means that records
// cannot be checked at all; writeRecord must not write then, since without
// the version check an older record could replace a newer one.
func (s *Service) recordVersion(ws, key string, data []byte) (uint64, error) {
	o, err := s.opener(ws)
	if err != nil {
		return 0, err
	}
	r, err := o.Verify(key, data)
	if err != nil {
		s.log.Warn("replacing a record that is not ours", "key", key, "error", err)
		return 0, nil
	}
	return r.Version, nil
}

// opener returns the verify-only Opener that checks our records for
// workspace ws (signature, workspace, key) to read their versions.
func (s *Service) opener(ws string) (*protocol.Opener, error) {
	if o, ok := s.openers.Load(ws); ok {
		return o.(*protocol.Opener), nil
	}
	o, err := protocol.NewVerifier(ws, []string{s.signPub})
	if err != nil {
		return nil, fmt.Errorf("cannot verify records of workspace %s: %w", ws, err)
	}
	actual, _ := s.openers.LoadOrStore(ws, o)
	return actual.(*protocol.Opener), nil
}
