package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// ServiceBucket is the KV bucket that holds the service's own state: each
// secret's metadata and its value sealed to the service's own curve key.
//
// Keys:
//
//	secrets.<secret id>                   the secret (secretMeta JSON)
//	names.<scope kind>.<scope id>.<name>  the id of the live secret of that name in that scope
//	                                      (for a community: shared with it)
const ServiceBucket = "nbsecrets_service"

// secretMeta is one secret as the service keeps it.
type secretMeta struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Scope     protocol.Scope `json:"scope"`
	Version   uint64         `json:"version"`
	Deleted   bool           `json:"deleted,omitempty"`
	CreatedAt time.Time      `json:"created_at"`
	CreatedBy string         `json:"created_by"`
	UpdatedAt time.Time      `json:"updated_at"`
	UpdatedBy string         `json:"updated_by"`
	// Sealed is the value (atRest JSON) in a box from the service's curve
	// key to itself; nil once deleted.
	Sealed []byte `json:"sealed,omitempty"`
	// Size is the value's length in bytes, for the per-workspace budget;
	// 0 in secrets stored before it was recorded.
	Size int `json:"size,omitempty"`
	// Shares are the communities the secret is shared with, sorted.
	Shares []string `json:"shares,omitempty"`
	// Visible are the workspaces that get the value at Version, sorted.
	// Via maps those that get it only through a community share to that
	// community (their records carry the community's scope). Sent are all
	// workspaces that were ever given a record of this secret, a superset
	// of Visible: those not in Visible get a tombstone. The stored form
	// lists each workspace once: Sent is stored as Gone, those not in
	// Visible (metajson.go).
	Visible []string          `json:"visible,omitempty"`
	Via     map[string]string `json:"via,omitempty"`
	Sent    []string          `json:"sent,omitempty"`
}

func (m *secretMeta) info() SecretInfo {
	return SecretInfo{ID: m.ID, Name: m.Name, Scope: m.Scope, Version: m.Version, UpdatedAt: m.UpdatedAt, UpdatedBy: m.UpdatedBy,
		CreatedBy: m.CreatedBy, Communities: slices.Clone(m.Shares), Workspaces: slices.Clone(m.Visible)}
}

// recordScope is the scope of the record workspace ws gets: the secret's
// own, or that of the community share that brings it there.
func (m *secretMeta) recordScope(ws string) protocol.Scope {
	if c, ok := m.Via[ws]; ok {
		return protocol.Scope{Kind: protocol.ScopeCommunity, ID: c}
	}
	return m.Scope
}

// names are the scopes under which m's name is claimed: its own and one
// per community it is shared with.
func (m *secretMeta) names() []protocol.Scope {
	out := []protocol.Scope{m.Scope}
	for _, c := range m.Shares {
		out = append(out, protocol.Scope{Kind: protocol.ScopeCommunity, ID: c})
	}
	return out
}

// hasName reports whether m, live, is called name in scope: its own scope,
// or a community it is shared with.
func (m *secretMeta) hasName(scope protocol.Scope, name string) bool {
	if m.Deleted || m.Name != name {
		return false
	}
	return m.Scope == scope || scope.Kind == protocol.ScopeCommunity && slices.Contains(m.Shares, scope.ID)
}

// atRest is the plaintext of secretMeta.Sealed, bound to its secret.
type atRest struct {
	ID    string `json:"id"`
	Value []byte `json:"val"`
}

// store is the service's state in ServiceBucket.
type store struct {
	kv    jetstream.KeyValue
	curve nkeys.KeyPair // the service's curve key
	pub   string        // its public key
}

// errConflict is a lost compare-and-set: read again and retry.
var errConflict = errors.New("controlplane: concurrent change")

func secretKey(id string) string { return "secrets." + id }

func nameKey(scope protocol.Scope, name string) string {
	return "names." + string(scope.Kind) + "." + scope.ID + "." + name
}

// newSecretID returns a random secret id: 32 hex digits.
func newSecretID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// seal boxes value for the store, bound to the secret id.
func (st *store) seal(id string, value []byte) ([]byte, error) {
	plain, err := json.Marshal(atRest{ID: id, Value: value})
	if err != nil {
		return nil, fmt.Errorf("encoding value for the store: %w", err)
	}
	defer clear(plain)
	box, err := st.curve.Seal(plain, st.pub)
	if err != nil {
		return nil, fmt.Errorf("sealing value for the store: %w", err)
	}
	return box, nil
}

// open returns the value of m. The caller clears it after use.
func (st *store) open(m *secretMeta) ([]byte, error) {
	plain, err := st.curve.Open(m.Sealed, st.pub)
	if err != nil {
		return nil, fmt.Errorf("secret %s: stored value cannot be opened: %w", m.ID, err)
	}
	defer clear(plain)
	var a atRest
	if err := json.Unmarshal(plain, &a); err != nil {
		return nil, fmt.Errorf("secret %s: stored value is malformed", m.ID)
	}
	if a.ID != m.ID {
		clear(a.Value)
		return nil, fmt.Errorf("secret %s: stored value belongs to another secret", m.ID)
	}
	return a.Value, nil
}

// get reads a secret and the revision to update it at.
func (st *store) get(ctx context.Context, id string) (*secretMeta, uint64, error) {
	e, err := st.kv.Get(ctx, secretKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("%w: no secret with id %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reading secret %s: %w", id, err)
	}
	var m secretMeta
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return nil, 0, fmt.Errorf("reading secret %s: %w", id, err)
	}
	return &m, e.Revision(), nil
}

// put writes m: created when rev is 0, else only over revision rev
// (errConflict when someone wrote in between).
func (st *store) put(ctx context.Context, m *secretMeta, rev uint64) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding secret %s: %w", m.ID, err)
	}
	if rev == 0 {
		_, err = st.kv.Create(ctx, secretKey(m.ID), b)
	} else {
		_, err = st.kv.Update(ctx, secretKey(m.ID), b, rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return fmt.Errorf("writing secret %s: %w", m.ID, errConflict)
	case err != nil:
		return fmt.Errorf("writing secret %s: %w", m.ID, err)
	}
	return nil
}

// claimName makes name in scope point at id. It fails with ErrExists when
// a live secret has the name. A claim left by an operation that did not
// finish (no secret, or a deleted one) is taken over.
func (st *store) claimName(ctx context.Context, scope protocol.Scope, name, id string) error {
	key := nameKey(scope, name)
	for {
		_, err := st.kv.Create(ctx, key, []byte(id))
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("claiming name %s in %s: %w", name, scope, err)
		}
		e, err := st.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return fmt.Errorf("claiming name %s in %s: %w", name, scope, err)
		}
		if _, err := st.live(ctx, string(e.Value()), scope, name); !errors.Is(err, ErrNotFound) {
			if err == nil {
				return fmt.Errorf("%w: %q in %s", ErrExists, name, scope)
			}
			return err
		}
		_, err = st.kv.Update(ctx, key, []byte(id), e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("claiming name %s in %s: %w", name, scope, err)
		}
		return nil
	}
}

// releaseName removes name in scope if it still points at id.
func (st *store) releaseName(ctx context.Context, scope protocol.Scope, name, id string) error {
	key := nameKey(scope, name)
	e, err := st.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("releasing name %s in %s: %w", name, scope, err)
	}
	if string(e.Value()) != id {
		return nil
	}
	err = st.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("releasing name %s in %s: %w", name, scope, err)
	}
	return nil
}

// live returns secret id if it exists, is not deleted and still has
// name in scope (its own, or a community it is shared with); else
// ErrNotFound.
func (st *store) live(ctx context.Context, id string, scope protocol.Scope, name string) (*secretMeta, error) {
	m, _, err := st.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !m.hasName(scope, name) {
		return nil, fmt.Errorf("%w: %q in %s", ErrNotFound, name, scope)
	}
	return m, nil
}

// lookup returns the live secret called name in scope.
func (st *store) lookup(ctx context.Context, scope protocol.Scope, name string) (*secretMeta, error) {
	e, err := st.kv.Get(ctx, nameKey(scope, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %q in %s", ErrNotFound, name, scope)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up %s in %s: %w", name, scope, err)
	}
	return st.live(ctx, string(e.Value()), scope, name)
}

// inScope returns the live secrets of scope, by name.
func (st *store) inScope(ctx context.Context, scope protocol.Scope) ([]*secretMeta, error) {
	ids, err := st.keys(ctx, "names."+string(scope.Kind)+"."+scope.ID+".*")
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", scope, err)
	}
	var out []*secretMeta
	for _, key := range ids {
		e, err := st.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", scope, err)
		}
		m, err := st.live(ctx, string(e.Value()), scope, lastToken(key))
		if errors.Is(err, ErrNotFound) {
			continue // a claim left behind
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b *secretMeta) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// all returns the ids of every secret the store holds, deleted ones too.
func (st *store) all(ctx context.Context) ([]string, error) {
	keys, err := st.keys(ctx, "secrets.*")
	if err != nil {
		return nil, fmt.Errorf("listing secrets: %w", err)
	}
	for i, k := range keys {
		keys[i] = lastToken(k)
	}
	return keys, nil
}

// keys lists the keys matching filter.
func (st *store) keys(ctx context.Context, filter string) ([]string, error) {
	kl, err := st.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, err
	}
	defer kl.Stop()
	var keys []string
	for k := range kl.Keys() {
		keys = append(keys, k)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// lastToken is what follows the last dot of key.
func lastToken(key string) string { return key[strings.LastIndexByte(key, '.')+1:] }
