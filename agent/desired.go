package agent

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// Workspace is what this agent's workspace may have: its own user's private
// secrets, its projects' secrets and those shared with its communities.
type Workspace struct {
	ID          string   // workspace id, the key prefix of its records
	Owner       string   // the user who owns the workspace
	Projects    []string // projects the workspace works in
	Communities []string // communities whose shares reach the workspace
}

// Allows reports whether a secret of scope s may reach the workspace.
func (w Workspace) Allows(s protocol.Scope) bool {
	switch s.Kind {
	case protocol.ScopeUser:
		return s.ID == w.Owner
	case protocol.ScopeProject:
		return slices.Contains(w.Projects, s.ID)
	case protocol.ScopeCommunity:
		return slices.Contains(w.Communities, s.ID)
	}
	return false
}

// ErrScopeNotAllowed is a record whose scope this workspace may not have.
var ErrScopeNotAllowed = errors.New("agent: secret scope not allowed for this workspace")

// errStale is a record whose version is not newer than the one applied.
var errStale = errors.New("agent: record version not newer than the one held (replay or reorder)")

// Var is one variable of the desired environment. Value never prints. Its
// buffer is shared between snapshots and must not be modified (see store).
type Var struct {
	Value    protocol.Value
	Version  uint64
	SecretID string
	Scope    protocol.Scope
}

// Shadow is a secret hidden by another of the same name with a higher
// precedence scope (user over project over community).
type Shadow struct {
	Name     string
	SecretID string
	Scope    protocol.Scope
	By       protocol.Scope
}

// Desired is an immutable snapshot of the workspace's desired environment.
type Desired struct {
	Gen       uint64         // increases with every published change
	ChangedAt time.Time      // when the newest record in it was stored in JetStream (zero: unknown)
	Env       map[string]Var // variable name → value
	Shadowed  []Shadow       // secrets hidden by a same-named one
	// OverBudget are the secrets left out because the workspace's
	// environment would pass the budget (protocol.MaxWorkspaceSecrets,
	// MaxWorkspaceEnvBytes); By is empty.
	OverBudget []Shadow
}

// Names returns the variable names in order.
func (d *Desired) Names() []string {
	names := make([]string, 0, len(d.Env))
	for n := range d.Env {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// store holds the opened records and derives the desired environment. Sync
// writes to it; kernel workers and the local API read snapshots.
//
// Ownership of values: apply takes ownership of a record's value buffer,
// and from then on the buffer is immutable. A published Desired shares it
// (no copy per publish), and a snapshot may be read by any goroutine at any
// later time (a kernel worker building a plan, the local API encoding
// /v1/env), so nothing ever writes to or wipes a value buffer once the
// store holds it: a replaced or revoked value is dropped and left to the
// garbage collector. Wiping it while a snapshot was being encoded sent a
// kernel a value with NUL bytes in it (issue 8). Wiping would not keep a
// value out of memory anyway: plans, JSON encodings and the kernels'
// environments hold copies as strings.
type store struct {
	ws Workspace

	mu       sync.Mutex
	versions map[string]uint64 // secret id → newest version seen, put or delete
	// floor is, per secret id, the newest version an earlier run of the
	// agent held (the state file): a record older than that is a replay.
	floor    map[string]uint64
	puts     map[string]*protocol.Secret // secret id → current value
	desired  *Desired                    // last published snapshot
	dirty    bool                        // puts changed since the last publish
	changed  time.Time                   // stream time of the newest record since the last publish
	loaded   chan struct{}               // closed once the first full load is published
	isLoaded bool
	lastSync time.Time
	applied  uint64
	refused  map[string]uint64 // reason → count
	subs     map[chan struct{}]struct{}
}

func newStore(ws Workspace) *store {
	return &store{
		ws:       ws,
		versions: map[string]uint64{},
		floor:    map[string]uint64{},
		puts:     map[string]*protocol.Secret{},
		desired:  &Desired{Env: map[string]Var{}},
		loaded:   make(chan struct{}),
		refused:  map[string]uint64{},
		subs:     map[chan struct{}]struct{}{},
	}
}

// apply takes one opened record, stored in JetStream at at. It refuses a
// record whose scope the workspace may not have and ignores one not newer
// than what it holds. The change is not visible until publish.
func (s *store) apply(sec *protocol.Secret, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.versions[sec.SecretID]; ok && sec.Version <= v {
		return fmt.Errorf("%w: version %d, holding %d", errStale, sec.Version, v)
	}
	if f, ok := s.floor[sec.SecretID]; ok && sec.Version < f {
		return fmt.Errorf("%w: version %d, an earlier run of this agent held %d", errStale, sec.Version, f)
	}
	if sec.Op == protocol.OpPut && !s.ws.Allows(sec.Scope) {
		return fmt.Errorf("%w: %s", ErrScopeNotAllowed, sec.Scope)
	}
	s.versions[sec.SecretID] = sec.Version
	// The replaced value is not wiped: published snapshots share its
	// buffer (see store).
	switch sec.Op {
	case protocol.OpPut:
		s.puts[sec.SecretID] = sec
	case protocol.OpDelete:
		delete(s.puts, sec.SecretID)
	}
	s.dirty = true
	if at.After(s.changed) {
		s.changed = at
	}
	s.applied++
	return nil
}

// setAccess replaces what the workspace may have. Secrets it may no longer
// have leave the desired state at the next publish; their versions become
// the floor, so that the same record, read again once access returns, is
// taken and an older one is still refused. Records it may now have were
// refused before and need reading again (the syncer does that).
func (s *store) setAccess(ws Workspace) (dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ws = ws
	for id, sec := range s.puts {
		if ws.Allows(sec.Scope) {
			continue
		}
		s.floor[id] = max(s.floor[id], s.versions[id])
		delete(s.versions, id)
		delete(s.puts, id) // not wiped: snapshots may share the buffer
		s.dirty = true
		dropped++
	}
	return dropped
}

// version returns the newest version seen of a secret.
func (s *store) version(id string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.versions[id]
	return v, ok
}

// versionsCopy returns the newest version seen per secret id, the floor
// included, for the state file.
func (s *store) versionsCopy() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.versions)+len(s.floor))
	for id, v := range s.floor {
		out[id] = v
	}
	for id, v := range s.versions {
		out[id] = max(out[id], v)
	}
	return out
}

// refuse counts a refused record by reason.
func (s *store) refuse(reason string) {
	s.mu.Lock()
	s.refused[reason]++
	s.mu.Unlock()
}

// publish makes the changes since the last publish visible as one new
// snapshot and wakes the subscribers: a burst of records becomes one change.
// The first publish after start marks the initial load complete.
func (s *store) publish(now time.Time) {
	s.mu.Lock()
	s.lastSync = now
	if !s.dirty && s.isLoaded {
		s.mu.Unlock()
		return
	}
	s.dirty = false
	s.desired = buildDesired(s.desired.Gen+1, s.puts)
	s.desired.ChangedAt, s.changed = s.changed, time.Time{}
	if !s.isLoaded {
		s.isLoaded = true
		close(s.loaded)
	}
	subs := make([]chan struct{}, 0, len(s.subs))
	for c := range s.subs {
		subs = append(subs, c)
	}
	s.mu.Unlock()
	for _, c := range subs {
		select {
		case c <- struct{}{}:
		default: // already woken: it will read the newest snapshot
		}
	}
}

// buildDesired resolves the puts into an environment. When two secrets share
// a name the one with the higher precedence scope wins (user, then project,
// then community); between equals the lower secret id wins, so every agent
// decides the same way. In that same order secrets fill the per-workspace
// budget: those that would pass it are left out (OverBudget), so that too
// many or too large secrets, which the service should have refused, cannot
// take the kernels' environment past ARG_MAX.
func buildDesired(gen uint64, puts map[string]*protocol.Secret) *Desired {
	d := &Desired{Gen: gen, Env: make(map[string]Var, len(puts))}
	ids := make([]string, 0, len(puts))
	for id := range puts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := puts[ids[i]], puts[ids[j]]
		if pa, pb := a.Scope.Kind.Precedence(), b.Scope.Kind.Precedence(); pa != pb {
			return pa < pb
		}
		return ids[i] < ids[j]
	})
	bytes := 0
	for _, id := range ids {
		p := puts[id]
		if w, ok := d.Env[p.Name]; ok {
			d.Shadowed = append(d.Shadowed, Shadow{Name: p.Name, SecretID: id, Scope: p.Scope, By: w.Scope})
			continue
		}
		cost := protocol.EnvSize(p.Name, len(p.Value))
		if len(d.Env) >= protocol.MaxWorkspaceSecrets || bytes+cost > protocol.MaxWorkspaceEnvBytes {
			d.OverBudget = append(d.OverBudget, Shadow{Name: p.Name, SecretID: id, Scope: p.Scope})
			continue
		}
		bytes += cost
		d.Env[p.Name] = Var{Value: p.Value, Version: p.Version, SecretID: id, Scope: p.Scope}
	}
	return d
}

// snapshot returns the current desired environment and whether the first
// load is complete.
func (s *store) snapshot() (*Desired, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.desired, s.isLoaded
}

// subscribe returns a channel that receives a token after each publish
// (coalesced: at most one pending) and a function to unsubscribe.
func (s *store) subscribe() (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[c] = struct{}{}
	s.mu.Unlock()
	return c, func() {
		s.mu.Lock()
		delete(s.subs, c)
		s.mu.Unlock()
	}
}

// Plan is what one re-seed does to a kernel: variables to set and names to
// unset. Full means the kernel's holdings are unknown (first contact, after
// a reconnect): the kernel removes every name it was given before that is
// not in Set, using the list it keeps in ManagedVar.
type Plan struct {
	Set   map[string]string
	Unset []string
	Full  bool
}

// Empty reports whether the plan changes nothing.
func (p Plan) Empty() bool { return !p.Full && len(p.Set) == 0 && len(p.Unset) == 0 }

// ManagedVar is the variable in which a kernel keeps the names nbsecrets
// gave it (names only), so that an agent that restarts, or an injector that
// starts the kernel again, knows what to remove.
const ManagedVar = localapi.ManagedVar

// Held is which secret, at which version, a kernel holds under a name.
type Held struct {
	SecretID string `json:"secret_id"`
	Version  uint64 `json:"version"`
}

// plan decides what a kernel holding held (name → secret and version; nil
// when unknown) must be sent to reach d. Only what changed is sent.
func plan(held map[string]Held, d *Desired) Plan {
	if held == nil {
		p := Plan{Set: make(map[string]string, len(d.Env)), Full: true}
		for n, v := range d.Env {
			p.Set[n] = string(v.Value)
		}
		return p
	}
	p := Plan{Set: map[string]string{}}
	for n, v := range d.Env {
		if h, ok := held[n]; !ok || h != (Held{v.SecretID, v.Version}) {
			p.Set[n] = string(v.Value)
		}
	}
	for n := range held {
		if _, ok := d.Env[n]; !ok {
			p.Unset = append(p.Unset, n)
		}
	}
	sort.Strings(p.Unset)
	return p
}

// holdings is what a kernel holds after a plan for d was applied.
func holdings(d *Desired) map[string]Held {
	h := make(map[string]Held, len(d.Env))
	for n, v := range d.Env {
		h[n] = Held{v.SecretID, v.Version}
	}
	return h
}

// managedList is the value of ManagedVar for the names of d.
func managedList(d *Desired) string { return strings.Join(d.Names(), ",") }
