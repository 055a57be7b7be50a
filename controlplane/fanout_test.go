package controlplane

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestFanoutManyWorkspaces shares a project secret with 100 workspaces and
// updates it: every workspace gets a record it can open, at the right
// version, and the update neither reads nor verifies the records it
// replaces (the service wrote them and knows their revisions).
func TestFanoutManyWorkspaces(t *testing.T) {
	const n = 100
	f := newFixture(t)
	for i := range n {
		f.addWorkspace(fmt.Sprintf("ws-many-%03d", i), "bob", "ml")
	}
	f.setDir()
	ctx := ctxT(t)
	alice := f.client("alice")
	info, err := alice.Create(ctx, "SHARED_TOKEN", []byte("one"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	before := f.svc.verified.Load()
	if _, err := alice.Update(ctx, "SHARED_TOKEN", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if got := f.svc.verified.Load() - before; got != 0 {
		t.Errorf("the update verified %d records it had written itself", got)
	}
	for i := range n {
		f.wantPut(fmt.Sprintf("ws-many-%03d", i), info.ID, 2, "two")
	}
	f.wantPut("ws-alice", info.ID, 2, "two")
}

// TestStaleRevisionCache: records replaced behind the service's back (by
// another replica, or by anyone who can write the bucket) make its cached
// revision wrong. The compare-and-set on that revision then fails, and the
// service reads the record again: it replaces an older or foreign record,
// and leaves a newer one alone, never writing a second record with other
// contents for the same version.
func TestStaleRevisionCache(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	info, err := alice.Create(ctx, "RACED", []byte("v1"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	key := protocol.RecordKey("ws-alice", info.ID)

	// Someone writes garbage over our v1: the next update still lands.
	if _, err := kv.Put(ctx, key, []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Update(ctx, "RACED", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 2, "v2")

	// A second service (same keys, its own cache) writes version 3.
	other := f.startService(f.connect())
	m, _, err := other.store.get(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 3
	if err := other.publish(ctx, m, []byte("v3 by the other"), other.dir.Load()); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 3, "v3 by the other")
	rev := must(kv.Get(ctx, key)).Revision()

	// The first service, whose cache says v2, publishes its own version 3.
	if err := f.svc.publish(ctx, m, []byte("v3 by the first"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 3, "v3 by the other")
	if got := must(kv.Get(ctx, key)).Revision(); got != rev {
		t.Fatalf("a second record for version 3 was written: revision %d -> %d", rev, got)
	}
	// And version 4 goes over it.
	m.Version = 4
	if err := f.svc.publish(ctx, m, []byte("v4"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 4, "v4")
}

// TestStaleRevisionCacheFanout is TestStaleRevisionCache for a secret of
// many workspaces, whose records go out as asynchronous compare-and-set
// publishes on the cached revisions: a key written behind the service's
// back fails its compare-and-set and is read again; a garbage record is
// replaced; a record at the same version written by another service is
// left alone (never a second record with other contents for one version);
// every other key is written without being read or verified.
func TestStaleRevisionCacheFanout(t *testing.T) {
	const n = 20
	f := newFixture(t)
	for i := range n {
		f.addWorkspace(fmt.Sprintf("ws-stale-%02d", i), "bob", "ml")
	}
	f.setDir()
	ctx := ctxT(t)
	alice := f.client("alice")
	info, err := alice.Create(ctx, "RACED_MANY", []byte("v1"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	key := func(i int) string { return protocol.RecordKey(fmt.Sprintf("ws-stale-%02d", i), info.ID) }

	// Garbage over workspace 0's record: the update replaces it.
	if _, err := kv.Put(ctx, key(0), []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	before := f.svc.verified.Load()
	if _, err := alice.Update(ctx, "RACED_MANY", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if got := f.svc.verified.Load() - before; got != 1 {
		t.Errorf("the update verified %d records, want 1 (the one replaced behind its back)", got)
	}
	for i := range n {
		f.wantPut(fmt.Sprintf("ws-stale-%02d", i), info.ID, 2, "v2")
	}

	// Another service writes version 3 for the even workspaces only.
	other := f.startService(f.connect())
	m, _, err := other.store.get(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 3
	even := *m
	even.Sent = nil
	for i := 0; i < n; i += 2 {
		even.Sent = append(even.Sent, fmt.Sprintf("ws-stale-%02d", i))
	}
	if err := other.publish(ctx, &even, []byte("v3 by the other"), other.dir.Load()); err != nil {
		t.Fatal(err)
	}
	revs := map[int]uint64{}
	for i := 0; i < n; i += 2 {
		revs[i] = must(kv.Get(ctx, key(i))).Revision()
	}

	// The first service, whose cache says v2 everywhere, publishes its own
	// version 3 to all: the odd ones get it, the even ones keep the other's.
	if err := f.svc.publish(ctx, m, []byte("v3 by the first"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ws := fmt.Sprintf("ws-stale-%02d", i)
		if i%2 == 0 {
			f.wantPut(ws, info.ID, 3, "v3 by the other")
			if got := must(kv.Get(ctx, key(i))).Revision(); got != revs[i] {
				t.Errorf("%s: a second record for version 3 was written: revision %d -> %d", ws, revs[i], got)
			}
		} else {
			f.wantPut(ws, info.ID, 3, "v3 by the first")
		}
	}
	// And version 4 goes over all of them.
	m.Version = 4
	if err := f.svc.publish(ctx, m, []byte("v4"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		f.wantPut(fmt.Sprintf("ws-stale-%02d", i), info.ID, 4, "v4")
	}
}
