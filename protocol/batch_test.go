package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"testing"
)

// batchEntry is one record of a test batch: a put of value (a tombstone
// when del) for workspace to, secret id.
type batchEntry struct {
	to    Recipient
	id    string
	value string
	del   bool
}

// batch signs the entries as one Batch with the fixture's sealer.
func (f *fixture) batch(tb testing.TB, version uint64, entries ...batchEntry) [][]byte {
	tb.Helper()
	return f.batchWith(tb, f.sealer, version, entries...)
}

func (f *fixture) batchWith(tb testing.TB, s *Sealer, version uint64, entries ...batchEntry) [][]byte {
	tb.Helper()
	b := s.NewBatch()
	for i, e := range entries {
		var idx int
		var err error
		if e.del {
			idx, err = b.Delete(e.to.Workspace, e.id, "DB-PASSWORD", version, f.scope, f.now)
		} else {
			idx, err = b.Put(e.to, e.id, "DB-PASSWORD", version, f.scope, []byte(e.value), f.now)
		}
		if err != nil || idx != i {
			tb.Fatalf("entry %d: index %d, %v", i, idx, err)
		}
	}
	if b.Len() != len(entries) {
		tb.Fatalf("Len %d, want %d", b.Len(), len(entries))
	}
	out, err := b.Sign()
	if err != nil {
		tb.Fatal(err)
	}
	if len(out) != len(entries) || b.Len() != 0 {
		tb.Fatalf("Sign: %d records for %d, %d left", len(out), len(entries), b.Len())
	}
	return out
}

// batchDet signs n put records for workspace A (secret ids "b0", "b1", ...,
// value secretValue) as one batch, with nonces and salts derived from the
// records: the same bytes in every process, for the fuzz corpus.
func (f *fixture) batchDet(tb testing.TB, n int) [][]byte {
	tb.Helper()
	b := f.sealer.NewBatch()
	for i := range n {
		id := fmt.Sprintf("b%d", i)
		r := f.record(id, "DB-PASSWORD", 5)
		box, err := f.sealCurve.SealWithRand(sealedJSON(tb, wsA, id, 5, []byte(secretValue)), f.toA.CurveKey, bytes.NewReader(detSeed("batch-nonce/"+id)))
		if err != nil {
			tb.Fatal(err)
		}
		r.Sealed = box
		if _, err := b.add(&r); err != nil {
			tb.Fatal(err)
		}
	}
	out, err := b.signWith(bytes.NewReader(bytes.Repeat(detSeed("batch-salt"), n)))
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// envelopeOf decodes a record's envelope with encoding/json, for editing.
func envelopeOf(tb testing.TB, data []byte) envelope {
	tb.Helper()
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		tb.Fatal(err)
	}
	return env
}

// marshalEnvelope encodes env as json.Marshal does: the one form.
func marshalEnvelope(tb testing.TB, env envelope) []byte {
	tb.Helper()
	out, err := json.Marshal(env)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// mth is RFC 6962's Merkle Tree Hash, written from its definition.
func mth(leaves []hash) hash {
	if len(leaves) == 1 {
		return leaves[0]
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := mth(leaves[:k]), mth(leaves[k:])
	return sha256.Sum256(append(append([]byte{0x01}, l[:]...), r[:]...))
}

// TestBatchTree: the tree is RFC 6962's, every leaf's path leads to its
// root, its length is what pathLen says, and no other index takes that
// path to the root. (The path does not fix the tree's size: leaf 0 of 3
// and of 4 take the same steps. The batch signature covers the size.)
func TestBatchTree(t *testing.T) {
	for n := 1; n <= 70; n++ {
		leaves := make([]hash, n)
		for i := range leaves {
			leaves[i] = sha256.Sum256([]byte{byte(i), byte(n)})
		}
		root, paths := treePaths(leaves)
		if root != mth(leaves) {
			t.Fatalf("n %d: root differs from RFC 6962's", n)
		}
		for i := range leaves {
			p := proof{idx: uint64(i), n: uint64(n), path: paths[i]}
			got, err := p.root(leaves[i])
			if err != nil || got != root {
				t.Fatalf("n %d, leaf %d: %v", n, i, err)
			}
			if len(paths[i]) != pathLen(uint64(i), uint64(n)) || len(paths[i]) > bits.Len(uint(n-1)) {
				t.Fatalf("n %d, leaf %d: path of %d, pathLen %d", n, i, len(paths[i]), pathLen(uint64(i), uint64(n)))
			}
			for j := range n {
				q := proof{idx: uint64(j), n: uint64(n), path: paths[i]}
				if got, err := q.root(leaves[i]); j != i && err == nil && got == root {
					t.Fatalf("n %d: leaf %d's path leads to the root from index %d too", n, i, j)
				}
			}
		}
	}
	// The largest tree allowed: the last leaf's path is MaxBatchPath long.
	if l := pathLen(1<<MaxBatchPath-2, 1<<MaxBatchPath); l != MaxBatchPath {
		t.Fatalf("pathLen at the limit %d", l)
	}
}

// TestBatchRoundTrip: every record of batches of 1 to 20 and of 257 opens
// to what was put; a batch of one is the single form.
func TestBatchRoundTrip(t *testing.T) {
	f := newFixture(t)
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 20, 257} {
		var entries []batchEntry
		for i := range n {
			e := batchEntry{to: f.toA, id: fmt.Sprintf("s%d", i), value: fmt.Sprintf("%s-%d", secretValue, i)}
			switch i % 3 {
			case 1:
				e.del = true
			case 2:
				e.to = f.toB
			}
			entries = append(entries, e)
		}
		out := f.batch(t, 9, entries...)
		for i, data := range out {
			checkNoValue(t, string(data))
			e := entries[i]
			o := f.openA
			if e.to.Workspace == wsB {
				o = f.openB
			}
			s, err := o.Open(RecordKey(e.to.Workspace, e.id), data)
			if err != nil {
				t.Fatalf("batch of %d, record %d: %v", n, i, err)
			}
			if s.Version != 9 || s.SecretID != e.id || s.Name != "DB-PASSWORD" {
				t.Fatalf("batch of %d, record %d: %+v", n, i, s.Record)
			}
			if e.del != (s.Op == OpDelete) || !e.del && string(s.Value) != e.value {
				t.Fatalf("batch of %d, record %d: op %s, value differs", n, i, s.Op)
			}
			if isBatch := bytes.Contains(data, []byte(`"path":[`)); isBatch != (n > 1) {
				t.Fatalf("batch of %d: batch form %v", n, isBatch)
			}
		}
	}
	if out, err := f.sealer.NewBatch().Sign(); out != nil || err != nil {
		t.Fatalf("empty batch: %v, %v", out, err)
	}
}

// TestBatchAttacks performs, against workspace A's Opener, the attacks on
// batch records: each must be refused with its sentinel.
func TestBatchAttacks(t *testing.T) {
	f := newFixture(t)
	entries := []batchEntry{
		{to: f.toA, id: "s0", value: secretValue}, {to: f.toB, id: "s0", value: secretValue},
		{to: f.toA, id: "s2", value: secretValue}, {to: f.toA, id: "s3", del: true},
		{to: f.toB, id: "s4", del: true},
	}
	one := f.batch(t, 3, entries...)   // batch 1
	other := f.batch(t, 3, entries...) // the same records, another batch (other salts and nonces)
	key := func(i int) string { return RecordKey(entries[i].to.Workspace, entries[i].id) }
	for i, data := range one {
		o := f.openA
		if entries[i].to.Workspace == wsB {
			o = f.openB
		}
		if _, err := o.Open(key(i), data); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	env2 := envelopeOf(t, one[2]) // A's put s2: leaf 2 of 5, path of 3
	if len(env2.Path) != 3 || *env2.Idx != 2 || *env2.N != 5 {
		t.Fatalf("record 2: idx %d, n %d, path %d", *env2.Idx, *env2.N, len(env2.Path))
	}
	edit := func(data []byte, fn func(*envelope)) []byte {
		env := envelopeOf(t, data)
		fn(&env)
		return marshalEnvelope(t, env)
	}
	u := func(v uint64) *uint64 { return &v }
	hashB64 := func(b []byte) string { return b64.EncodeToString(b) }

	// A single record's signature and a batch root's.
	single := f.put(t, f.toA, "s2", "DB-PASSWORD", 3, secretValue)
	singleEnv := envelopeOf(t, single)
	leaves := make([]hash, len(one))
	for i, data := range one {
		_, signed, _, pr, err := readEnvelope(data)
		if err != nil {
			t.Fatal(err)
		}
		leaves[i] = leafHash(&pr.salt, signed)
	}
	root, _ := treePaths(leaves)
	rootMsg := rootMessage(&root, 5)
	if f.openA.signers[0].Verify(rootMsg, mustB64(t, env2.Sig)) != nil {
		t.Fatal("the batch signature does not cover the root message")
	}
	// An inner node: leaves 0 and 1's parent, and the path that leads from
	// it to the root (leaves 2-3's parent, leaf 4).
	n01 := nodeHash(&leaves[0], &leaves[1])
	n23 := nodeHash(&leaves[2], &leaves[3])
	innerRec := append(append([]byte(nil), leaves[0][:]...), leaves[1][:]...)

	// Another sealer (unpinned signing key), same records.
	intruder, err := NewSealer(detSigningKey(t, "intruder"), f.sealCurve)
	if err != nil {
		t.Fatal(err)
	}
	forged := f.batchWith(t, intruder, 3, entries...)

	tests := []struct {
		name string
		key  string // default: key(2)
		data []byte
		want error
	}{
		{name: "signed by an unpinned key", data: forged[2], want: ErrBadSignature},
		{name: "moved to another batch: its signature", data: edit(one[2], func(e *envelope) { e.Sig = envelopeOf(t, other[2]).Sig }), want: ErrBadSignature},
		{name: "moved to another batch: its proof and signature", data: edit(other[2], func(e *envelope) { e.Rec = env2.Rec }), want: ErrBadSignature},
		{name: "another record with this proof", data: edit(one[2], func(e *envelope) { e.Rec = envelopeOf(t, one[3]).Rec }), want: ErrBadSignature},
		{name: "the path of another leaf", data: edit(one[2], func(e *envelope) { e.Path = envelopeOf(t, one[3]).Path }), want: ErrBadSignature},
		{name: "the path and index of another leaf", data: edit(one[2], func(e *envelope) {
			o := envelopeOf(t, one[0])
			e.Path, e.Idx = o.Path, o.Idx
		}), want: ErrBadSignature},
		{name: "the salt of another leaf", data: edit(one[2], func(e *envelope) { e.Salt = envelopeOf(t, one[3]).Salt }), want: ErrBadSignature},
		{name: "index + 1", data: edit(one[2], func(e *envelope) { e.Idx = u(3) }), want: ErrBadSignature},
		{name: "index - 1", data: edit(one[2], func(e *envelope) { e.Idx = u(1) }), want: ErrBadSignature},
		{name: "index 0", data: edit(one[2], func(e *envelope) { e.Idx = u(0) }), want: ErrBadSignature},
		{name: "index of the last leaf", data: edit(one[2], func(e *envelope) { e.Idx = u(4) }), want: ErrBadSignature},
		{name: "index out of range", data: edit(one[2], func(e *envelope) { e.Idx = u(5) }), want: ErrMalformed},
		{name: "index far out of range", data: edit(one[2], func(e *envelope) { e.Idx = u(1 << 63) }), want: ErrMalformed},
		{name: "another leaf count", data: edit(one[2], func(e *envelope) { e.N = u(6) }), want: ErrBadSignature},
		{name: "leaf count 4", data: edit(one[2], func(e *envelope) { e.N = u(4) }), want: ErrBadSignature},
		{name: "leaf count 1", data: edit(one[2], func(e *envelope) { e.N = u(1) }), want: ErrMalformed},
		{name: "leaf count 0", data: edit(one[2], func(e *envelope) { e.N = u(0) }), want: ErrMalformed},
		{name: "leaf count over 2^32", data: edit(one[2], func(e *envelope) { e.N = u(1<<32 + 1) }), want: ErrMalformed},
		{name: "truncated path", data: edit(one[2], func(e *envelope) { e.Path = e.Path[:2] }), want: ErrBadSignature},
		{name: "path without its first hash", data: edit(one[2], func(e *envelope) { e.Path = e.Path[1:] }), want: ErrBadSignature},
		{name: "extended path", data: edit(one[2], func(e *envelope) { e.Path = append(e.Path, e.Path[0]) }), want: ErrBadSignature},
		{name: "path extended by the root", data: edit(one[2], func(e *envelope) { e.Path = append(e.Path, hashB64(root[:])) }), want: ErrBadSignature},
		{name: "empty path", data: bytes.Replace(one[2], []byte(`"path":["`+strings.Join(env2.Path, `","`)+`"]`), []byte(`"path":[]`), 1), want: ErrMalformed},
		{name: "path of 33 hashes", data: edit(one[2], func(e *envelope) {
			for len(e.Path) < 33 {
				e.Path = append(e.Path, e.Path[0])
			}
		}), want: ErrMalformed},
		{name: "path of 32 hashes", data: edit(one[2], func(e *envelope) {
			for len(e.Path) < 32 {
				e.Path = append(e.Path, e.Path[0])
			}
		}), want: ErrBadSignature},
		{name: "a hash of 31 bytes", data: edit(one[2], func(e *envelope) { e.Path[1] = hashB64(mustB64(t, e.Path[1])[:31]) }), want: ErrMalformed},
		{name: "a hash of 33 bytes", data: edit(one[2], func(e *envelope) { e.Path[1] = hashB64(append(mustB64(t, e.Path[1]), 0)) }), want: ErrMalformed},
		{name: "an empty hash", data: edit(one[2], func(e *envelope) { e.Path[0] = "" }), want: ErrMalformed},
		{name: "a hash changed", data: edit(one[2], func(e *envelope) {
			h := mustB64(t, e.Path[2])
			h[31] ^= 1
			e.Path[2] = hashB64(h)
		}), want: ErrBadSignature},
		{name: "a salt of 15 bytes", data: edit(one[2], func(e *envelope) { e.Salt = hashB64(mustB64(t, e.Salt)[:15]) }), want: ErrMalformed},
		{name: "no salt", data: edit(one[2], func(e *envelope) { e.Salt = "" }), want: ErrMalformed},
		{name: "no leaf count", data: edit(one[2], func(e *envelope) { e.N = nil }), want: ErrMalformed},
		{name: "no index", data: edit(one[2], func(e *envelope) { e.Idx = nil }), want: ErrMalformed},
		{name: "no path", data: edit(one[2], func(e *envelope) { e.Path = nil }), want: ErrMalformed},

		// Domain separation.
		{name: "an inner node as a leaf, its own path", data: edit(one[2], func(e *envelope) {
			e.Rec, e.Idx, e.Path = b64.EncodeToString(innerRec), u(0), []string{hashB64(n23[:]), env2.Path[2]}
		}), want: ErrBadSignature},
		{name: "an inner node as a leaf of a smaller tree", data: edit(one[2], func(e *envelope) {
			e.Rec, e.Idx, e.N, e.Path = b64.EncodeToString(innerRec), u(0), u(3), []string{hashB64(n23[:]), env2.Path[2]}
		}), want: ErrBadSignature},
		{name: "an inner node's bytes as the record, under the root's signature", data: envelopeJSON(t, 1,
			b64.EncodeToString(append(append([]byte{0x01}, n01[:]...), n23[:]...)), env2.Sig), want: ErrBadSignature},
		{name: "a batch root's signature as a single record's", data: envelopeJSON(t, 1, env2.Rec, env2.Sig), want: ErrBadSignature},
		{name: "a batch root's signature over the root message as the record", data: envelopeJSON(t, 1,
			b64.EncodeToString(rootMsg), env2.Sig), want: ErrBadSignature},
		{name: "a batch root's signature over the root message after the domain", data: envelopeJSON(t, 1,
			b64.EncodeToString(rootMsg[len(batchDomain):]), env2.Sig), want: ErrBadSignature},
		{name: "a single record's signature as a batch root's", data: edit(one[2], func(e *envelope) { e.Sig = singleEnv.Sig }), want: ErrBadSignature},
		{name: "a single record with a proof added", data: edit(single, func(e *envelope) {
			e.Idx, e.N, e.Salt, e.Path = env2.Idx, env2.N, env2.Salt, env2.Path
		}), want: ErrBadSignature},

		// Another workspace's record from the same batch.
		{name: "B's record under B's key", key: key(1), data: one[1], want: ErrWrongWorkspace},
		{name: "B's record under A's key", key: RecordKey(wsA, "s0"), data: one[1], want: ErrWrongWorkspace},
		{name: "B's tombstone under A's key", key: RecordKey(wsA, "s4"), data: one[4], want: ErrWrongWorkspace},
		{name: "A's record under another key", key: RecordKey(wsA, "s3"), data: one[2], want: ErrKeyMismatch},
		{name: "A's tombstone under another key", key: RecordKey(wsA, "s2"), data: one[3], want: ErrKeyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := tt.key
			if k == "" {
				k = key(2)
			}
			s, err := f.openA.Open(k, tt.data)
			if err == nil {
				t.Fatalf("accepted: %+v", s.Record)
			}
			if s != nil {
				t.Fatal("a secret with the error")
			}
			checkErr(t, err, tt.want)
			if _, verr := f.openA.Verify(k, tt.data); !errors.Is(verr, tt.want) {
				t.Fatalf("Verify: %v, Open: %v", verr, err)
			}
		})
	}
	// B's own record still opens for B, and A's for A after all that.
	if _, err := f.openB.Open(key(1), one[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := f.openA.Open(key(2), one[2]); err != nil {
		t.Fatal(err)
	}
}

func mustB64(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := b64.DecodeString(s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestBatchFlipEveryByte flips bits of every byte of a batch put and a
// batch tombstone and cuts them short: every result must be refused.
func TestBatchFlipEveryByte(t *testing.T) {
	f := newFixture(t)
	out := f.batch(t, 3,
		batchEntry{to: f.toB, id: "s0", value: secretValue}, batchEntry{to: f.toA, id: "s1", value: secretValue},
		batchEntry{to: f.toA, id: "s2", value: secretValue}, batchEntry{to: f.toA, id: "s3", del: true},
		batchEntry{to: f.toB, id: "s4", value: secretValue})
	for _, c := range []struct {
		key  string
		data []byte
	}{{RecordKey(wsA, "s2"), out[2]}, {RecordKey(wsA, "s3"), out[3]}} {
		if _, err := f.openA.Open(c.key, c.data); err != nil {
			t.Fatal(err)
		}
		for i := range c.data {
			for _, mask := range []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff} {
				bad := bytes.Clone(c.data)
				bad[i] ^= mask
				s, err := f.openA.Open(c.key, bad)
				if err == nil {
					t.Fatalf("byte %d (%q) ^ %#x accepted: %s", i, c.data[i], mask, bad)
				}
				if s != nil {
					t.Fatalf("byte %d ^ %#x: a secret with the error", i, mask)
				}
				checkNoValue(t, err.Error())
			}
		}
		for n := range c.data {
			if _, err := f.openA.Open(c.key, c.data[:n]); err == nil {
				t.Fatalf("the first %d bytes accepted", n)
			}
		}
	}
}

// TestBatchOneFormOnly: a batch envelope the strict parse takes but the
// Sealer never writes is refused as not in the one form; one the strict
// parse refuses too gets its reason.
func TestBatchOneFormOnly(t *testing.T) {
	f := newFixture(t)
	out := f.batch(t, 3, batchEntry{to: f.toA, id: "s0", value: secretValue}, batchEntry{to: f.toA, id: "s1", value: secretValue},
		batchEntry{to: f.toA, id: "s2", value: secretValue})
	good := out[2] // leaf 2 of 3: a path of one hash
	key := RecordKey(wsA, "s2")
	if _, err := f.openA.Open(key, good); err != nil {
		t.Fatal(err)
	}
	env := envelopeOf(t, good)
	repl := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("envelope has no %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	tests := []struct {
		name   string
		data   []byte
		reason string // in the error; "one form" when the strict parse takes the bytes
	}{
		{"a space before the path", repl(`,"path"`, `, "path"`), "one form"},
		{"a space in the path", repl(`["`, `[ "`), "one form"},
		{"index with a leading zero", repl(`"idx":2`, `"idx":02`), "not JSON"},
		{"index as 2.0", repl(`"idx":2`, `"idx":2.0`), "wrong type"},
		{"index as a string", repl(`"idx":2`, `"idx":"2"`), "wrong type"},
		{"negative index", repl(`"idx":2`, `"idx":-2`), "wrong type"},
		{"leaf count with an exponent", repl(`"n":3`, `"n":3e0`), "wrong type"},
		{"proof members in another order", repl(`"idx":2,"n":3`, `"n":3,"idx":2`), "one form"},
		{"proof before the signature", []byte(fmt.Sprintf(`{"v":1,"rec":"%s","idx":2,"n":3,"salt":"%s","path":["%s"],"sig":"%s"}`, env.Rec, env.Salt, env.Path[0], env.Sig)), "one form"},
		{"an escaped letter in the path", repl(`"path"`, `"p\u0061th"`), "one form"},
		{"a hash with padding", repl(env.Path[0], env.Path[0]+"="), "bad base64"},
		{"a hash with a line break", repl(env.Path[0], env.Path[0][:10]+`\n`+env.Path[0][10:]), "bad base64"},
		{"a path member given twice", repl(`]}`, `],"path":[]}`), "twice"},
		{"a null path", repl(`"path":["`+env.Path[0]+`"]`, `"path":null`), "null"},
		{"a null hash", repl(`["`+env.Path[0]+`"]`, `[null]`), "bytes"},
		{"a path of a string", repl(`["`+env.Path[0]+`"]`, `"`+env.Path[0]+`"`), "wrong type"},
		{"an unknown member", repl(`]}`, `],"root":"x"}`), "unknown member"},
		{"data after the object", append(bytes.Clone(good), ' ', '{', '}'), "after the object"},
		{"a salt member only", marshalEnvelope(t, envelope{V: 1, Rec: env.Rec, Sig: env.Sig, Salt: env.Salt}), `member "idx" missing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := f.openA.Open(key, tt.data)
			if err == nil {
				t.Fatalf("accepted: %+v", s.Record)
			}
			checkErr(t, err, ErrMalformed)
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not say %q", err, tt.reason)
			}
			if tt.reason == "one form" {
				if _, _, _, _, err := decodeEnvelope(tt.data); err != nil {
					t.Fatalf("the strict parse refuses the envelope too (%v): not a case of the one form", err)
				}
			}
		})
	}
}

// TestAppendBatchEnvelopeIsJSON: the hand-written batch envelope is byte
// for byte what json.Marshal writes, and readEnvelope reads it back.
func TestAppendBatchEnvelopeIsJSON(t *testing.T) {
	for _, pathLen := range []int{1, 2, 5, MaxBatchPath} {
		p := &proof{idx: uint64(pathLen), n: 1 << pathLen, path: make([]hash, pathLen)}
		for i := range p.path {
			p.path[i] = sha256.Sum256([]byte{byte(i)})
		}
		copy(p.salt[:], "0123456789abcdef")
		rec, sig := []byte(`{"v":1}`), bytes.Repeat([]byte{0xbe}, 64)
		env := envelope{V: 1, Rec: b64.EncodeToString(rec), Sig: b64.EncodeToString(sig), Idx: &p.idx, N: &p.n, Salt: b64.EncodeToString(p.salt[:])}
		for _, h := range p.path {
			env.Path = append(env.Path, b64.EncodeToString(h[:]))
		}
		want := marshalEnvelope(t, env)
		got := appendBatchEnvelope(nil, 1, rec, sig, p)
		if !bytes.Equal(got, want) {
			t.Fatalf("path %d: %s, json.Marshal writes %s", pathLen, got, want)
		}
		if len(got) > envelopeLen(len(rec))+maxProofLen {
			t.Fatalf("path %d: %d bytes, over the bound %d", pathLen, len(got), envelopeLen(len(rec))+maxProofLen)
		}
		_, signed, sig2, pr, err := readEnvelope(got)
		if err != nil || !bytes.Equal(signed[len(signingDomain):], rec) || !bytes.Equal(sig2, sig) || fmt.Sprint(pr) != fmt.Sprint(p) {
			t.Fatalf("path %d: read back %v", pathLen, err)
		}
	}
}

// TestBatchLimits: Put refuses a value whose record could outgrow
// MaxRecordSize with a proof, and a full batch refuses more.
func TestBatchLimits(t *testing.T) {
	f := newFixture(t)
	b := f.sealer.NewBatch()
	if _, err := b.Put(f.toA, "s0", "DB-PASSWORD", 1, f.scope, []byte(strings.Repeat("v", MaxValueSize)), f.now); err != nil {
		t.Fatalf("the largest value: %v", err)
	}
	if _, err := b.Put(f.toA, "s1", "DB-PASSWORD", 1, f.scope, []byte(strings.Repeat("v", MaxValueSize+1)), f.now); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("a value too large: %v", err)
	}
	if _, err := b.Put(f.toA, "bad id!", "DB-PASSWORD", 1, f.scope, []byte("x"), f.now); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("a bad id: %v", err)
	}
	if _, err := b.Delete(wsA, "s1", "PATH", 1, f.scope, f.now); !errors.Is(err, ErrForbiddenName) {
		t.Fatalf("a forbidden name: %v", err)
	}
	if b.Len() != 1 {
		t.Fatalf("Len %d after refusals", b.Len())
	}
	// Records around the largest that fits with the longest proof: those
	// over it are refused, though their single form would fit.
	r := f.record("s2", "DB-PASSWORD", 1)
	r.Sealed = make([]byte, 1)
	base, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	maxRec := (MaxRecordSize - maxProofLen - envelopeLen(0)) * 3 / 4
	around := (maxRec - len(base) + 4) * 3 / 4
	accepted, refused := 0, 0
	for size := around - 24; size < around+24; size++ {
		r.Sealed = make([]byte, size)
		rec, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.add(&r)
		switch fits := envelopeLen(len(rec))+maxProofLen <= MaxRecordSize; {
		case fits && err == nil:
			accepted++
		case !fits && errors.Is(err, ErrTooLarge):
			refused++
			if single, err := f.sealer.sign1(&r); err != nil || len(single) > MaxRecordSize {
				t.Fatalf("single form of a %d-byte record: %v", len(rec), err)
			}
		default:
			t.Fatalf("record of %d bytes: %v", len(rec), err)
		}
	}
	if accepted == 0 || refused == 0 {
		t.Fatalf("%d accepted, %d refused: the sizes miss the limit", accepted, refused)
	}
	out, err := b.Sign()
	if err != nil {
		t.Fatal(err)
	}
	for i, data := range out {
		if len(data) > MaxRecordSize {
			t.Fatalf("record %d: %d bytes", i, len(data))
		}
	}
	b.recs = make([][]byte, MaxBatch)
	if _, err := b.Delete(wsA, "s1", "DB-PASSWORD", 1, f.scope, f.now); !errors.Is(err, ErrBatchFull) {
		t.Fatalf("a full batch: %v", err)
	}
}

// TestBatchPathHidesSiblings: A's record and B's tombstone in one batch.
// A knows every byte of B's tombstone but the workspace, and guesses it
// right; the sibling hash in A's path still does not confirm the guess,
// since B's leaf is salted (with B's salt, the guess is B's leaf).
func TestBatchPathHidesSiblings(t *testing.T) {
	f := newFixture(t)
	out := f.batch(t, 3, batchEntry{to: f.toA, id: "s0", value: secretValue}, batchEntry{to: f.toB, id: "s0", del: true})
	envA, envB := envelopeOf(t, out[0]), envelopeOf(t, out[1])
	guess, err := deleteRecord(wsB, "s0", "DB-PASSWORD", 3, f.scope, f.now)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := json.Marshal(guess)
	if err != nil {
		t.Fatal(err)
	}
	signed := append([]byte(signingDomain), rec...)
	sibling := mustB64(t, envA.Path[0])
	var salt [saltSize]byte
	if h := leafHash(&salt, signed); bytes.Equal(h[:], sibling) {
		t.Fatal("a zero salt confirms the guess")
	}
	if h := sha256.Sum256(append([]byte{0x00}, signed...)); bytes.Equal(h[:], sibling) {
		t.Fatal("an unsalted hash confirms the guess")
	}
	copy(salt[:], mustB64(t, envB.Salt))
	if h := leafHash(&salt, signed); !bytes.Equal(h[:], sibling) {
		t.Fatal("the guess is not B's tombstone: the test proves nothing")
	}
}
