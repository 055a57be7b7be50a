package controlplane

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestFanoutBatchSigned: a fan-out signs each chunk of records once (a
// batch signature, protocol.Batch), whether its records go out through
// writeRecord (keys the service does not know yet: the create) or as
// asynchronous compare-and-set publishes (the update); every workspace
// opens its record, puts and tombstones alike; a single workspace's
// record is signed alone.
func TestFanoutBatchSigned(t *testing.T) {
	const n = 40
	f := newFixture(t)
	var wss []string
	for i := range n {
		ws := fmt.Sprintf("ws-batch-%02d", i)
		f.addWorkspace(ws, "bob", "ml")
		wss = append(wss, ws)
	}
	f.setDir()
	wss = append(wss, "ws-alice", "ws-bob")
	ctx := ctxT(t)
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	// signatures counts the distinct signatures over the records of id in
	// wss, all of which must be in the batch form.
	signatures := func(id string) int {
		t.Helper()
		sigs := map[string]bool{}
		for _, ws := range wss {
			e, err := kv.Get(ctx, protocol.RecordKey(ws, id))
			if err != nil {
				t.Fatalf("%s: %v", ws, err)
			}
			var env struct {
				Sig  string   `json:"sig"`
				Path []string `json:"path"`
			}
			if err := json.Unmarshal(e.Value(), &env); err != nil || len(env.Path) == 0 {
				t.Fatalf("%s: not a batch record (%v): %.80s", ws, err, e.Value())
			}
			sigs[env.Sig] = true
		}
		return len(sigs)
	}
	// 42 workspaces in chunks of minChunk.
	wantSigs := (len(wss) + minChunk - 1) / minChunk

	alice := f.client("alice")
	info, err := alice.Create(ctx, "BATCHED", []byte("one"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	for _, ws := range wss {
		f.wantPut(ws, info.ID, 1, "one")
	}
	if got := signatures(info.ID); got != wantSigs {
		t.Errorf("create: %d signatures over %d records, want %d", got, len(wss), wantSigs)
	}

	before := f.svc.verified.Load()
	if _, err := alice.Update(ctx, "BATCHED", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if got := f.svc.verified.Load() - before; got != 0 {
		t.Errorf("the update verified %d records it had written itself", got)
	}
	for _, ws := range wss {
		f.wantPut(ws, info.ID, 2, "two")
	}
	if got := signatures(info.ID); got != wantSigs {
		t.Errorf("update: %d signatures over %d records, want %d", got, len(wss), wantSigs)
	}

	// Half the workspaces lose the secret: tombstones and puts in the same
	// batches.
	m, _, err := f.svc.store.get(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 3
	m.Visible = nil
	for i, ws := range wss {
		if i%2 == 0 {
			m.Visible = append(m.Visible, ws)
		}
	}
	if err := f.svc.publish(ctx, m, []byte("three"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	for i, ws := range wss {
		if i%2 == 0 {
			f.wantPut(ws, info.ID, 3, "three")
		} else if sec := f.record(ws, info.ID); sec == nil || sec.Op != protocol.OpDelete || sec.Version != 3 {
			t.Fatalf("%s: %+v, want a tombstone at version 3", ws, sec)
		}
	}
	if got := signatures(info.ID); got != wantSigs {
		t.Errorf("puts and tombstones: %d signatures over %d records, want %d", got, len(wss), wantSigs)
	}

	// Reconciliation forgets the revisions and publishes again: every key
	// is read and verified, batch records included, and none is written
	// again.
	js := must(jetstream.New(f.nc))
	lastSeq := func() uint64 {
		return must(must(js.Stream(ctx, protocol.StreamName())).Info(ctx)).State.LastSeq
	}
	seq, verified := lastSeq(), f.svc.verified.Load()
	f.svc.revs.reset()
	if err := f.svc.publish(ctx, m, []byte("three"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	if got := f.svc.verified.Load() - verified; got < int64(len(wss)) {
		t.Errorf("republishing verified %d records, want all %d", got, len(wss))
	}
	if got := lastSeq(); got != seq {
		t.Errorf("republishing the same version wrote %d records", got-seq)
	}

	// A batch record signed by another key, at a higher version, under
	// one workspace's key: the service does not take its version for its
	// own and replaces it.
	intruderSign := must(nkeys.CreateAccount())
	intruder := must(protocol.NewSealer(intruderSign, f.curve))
	b := intruder.NewBatch()
	for _, ws := range wss[:2] {
		if _, err := b.Put(protocol.Recipient{Workspace: ws, CurveKey: must(f.wsKeys[ws].PublicKey())}, info.ID, "BATCHED", 99, m.recordScope(ws), []byte("forged"), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	forged := must(b.Sign())
	if _, err := kv.Put(ctx, protocol.RecordKey(wss[0], info.ID), forged[0]); err != nil {
		t.Fatal(err)
	}
	f.svc.revs.reset()
	m.Version = 4
	if err := f.svc.publish(ctx, m, []byte("four"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	f.wantPut(wss[0], info.ID, 4, "four")
	if !strings.Contains(f.logs.String(), "replacing a record that is not ours") {
		t.Error("the forged record was replaced without a warning")
	}

	// One workspace: the single form.
	priv, err := f.client("carol").Create(ctx, "ALONE", []byte("x"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := must(kv.Get(ctx, protocol.RecordKey("ws-carol", priv.ID)))
	var env map[string]json.RawMessage
	if err := json.Unmarshal(e.Value(), &env); err != nil || len(env) != 3 || env["path"] != nil {
		t.Fatalf("a private secret's record is not in the single form (%v): %s", err, e.Value())
	}
	f.wantPut("ws-carol", priv.ID, 1, "x")
}

// TestChunkSize: chunks of small values are len/fanoutWorkers records
// within [minChunk, maxChunk]; chunks of large values hold no more than
// chunkBytes, as recordBytes estimates records, which it does not
// underestimate.
func TestChunkSize(t *testing.T) {
	for _, c := range []struct{ n, valueLen, want int }{
		{2, 32, minChunk}, {100, 32, minChunk}, {1100, 32, 18}, {10000, 32, 157}, {100000, 32, maxChunk},
		{10000, protocol.MaxValueSize, chunkBytes / recordBytes(protocol.MaxValueSize)},
	} {
		if got := chunkSize(c.n, c.valueLen); got != c.want {
			t.Errorf("chunkSize(%d, %d) = %d, want %d", c.n, c.valueLen, got, c.want)
		}
	}
	sealer := must(protocol.NewSealer(must(nkeys.CreateAccount()), must(nkeys.CreateCurveKeys())))
	to := protocol.Recipient{Workspace: "ws-1", CurveKey: must(must(nkeys.CreateCurveKeys()).PublicKey())}
	for _, valueLen := range []int{0, 1, 100, 4096, protocol.MaxValueSize} {
		if got := chunkSize(1<<20, valueLen); got < 1 || got > 1 && got*recordBytes(valueLen) > chunkBytes {
			t.Errorf("value of %d bytes: chunks of %d records of about %d bytes", valueLen, got, recordBytes(valueLen))
		}
		b := sealer.NewBatch()
		for i := range 300 { // a path of 9 hashes
			if _, err := b.Put(to, fmt.Sprintf("s%d", i), "DB-PASSWORD", 1, protocol.Scope{Kind: protocol.ScopeProject, ID: "ml"}, []byte(strings.Repeat("v", valueLen)), time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		data := must(b.Sign())[299]
		if held := len(data) + len(data)*3/4; held > recordBytes(valueLen) {
			t.Errorf("value of %d bytes: a record and its encoding of about %d bytes, estimated %d", valueLen, held, recordBytes(valueLen))
		}
	}
}

// TestFanoutSingleSignatures: with Options.SingleSignatures (serve
// --batch-signatures=false, for agents older than batch signatures) a
// fan-out writes every record in the single form, {"v","rec","sig"} and
// nothing else, each with a signature of its own, and every workspace
// opens its value.
func TestFanoutSingleSignatures(t *testing.T) {
	const n = 20
	f := newFixture(t)
	f.svc.single = true
	var wss []string
	for i := range n {
		ws := fmt.Sprintf("ws-single-%02d", i)
		f.addWorkspace(ws, "bob", "ml")
		wss = append(wss, ws)
	}
	f.setDir()
	ctx := ctxT(t)
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	alice := f.client("alice")
	info, err := alice.Create(ctx, "SINGLE", []byte("one"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Update(ctx, "SINGLE", []byte("two")); err != nil {
		t.Fatal(err)
	}
	sigs := map[string]bool{}
	for _, ws := range wss {
		f.wantPut(ws, info.ID, 2, "two")
		e, err := kv.Get(ctx, protocol.RecordKey(ws, info.ID))
		if err != nil {
			t.Fatalf("%s: %v", ws, err)
		}
		var env map[string]json.RawMessage
		if err := json.Unmarshal(e.Value(), &env); err != nil {
			t.Fatalf("%s: %v", ws, err)
		}
		if len(env) != 3 || env["v"] == nil || env["rec"] == nil || env["sig"] == nil {
			t.Fatalf("%s: members %v, want exactly v, rec and sig (the single form)", ws, keys(env))
		}
		sigs[string(env["sig"])] = true
	}
	if len(sigs) != len(wss) {
		t.Errorf("%d distinct signatures over %d records, want one each", len(sigs), len(wss))
	}
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
