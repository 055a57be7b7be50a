package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// secretValue is distinctive so that a leak into an error or a log line is
// easy to find.
const secretValue = "Sup3r-S3cret-VALUE-9f4e2a"

var sentinels = []error{
	ErrBadSignature, ErrWrongWorkspace, ErrKeyMismatch, ErrUnknownFormat, ErrMalformed,
	ErrTooLarge, ErrCannotOpen, ErrBindingMismatch, ErrInvalidID,
	ErrInvalidName, ErrForbiddenName, ErrNULInValue, ErrInvalidValue, ErrValueTooLarge,
}

// checkErr fails unless err matches want and no other sentinel, and holds
// no secret value.
func checkErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
	for _, s := range sentinels {
		if s != want && errors.Is(err, s) {
			t.Errorf("error %q also matches %v", err, s)
		}
	}
	checkNoValue(t, err.Error())
}

func checkNoValue(t *testing.T, s string) {
	t.Helper()
	if strings.Contains(s, secretValue) || strings.Contains(s, "S3cret") {
		t.Errorf("the secret value leaks into %q", s)
	}
}

func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	key := RecordKey(wsA, "sec-1")

	t.Run("put", func(t *testing.T) {
		data := f.put(t, f.toA, "sec-1", "DB-PASSWORD", 7, secretValue)
		checkNoValue(t, string(data))
		s, err := f.openA.Open(key, data)
		if err != nil {
			t.Fatal(err)
		}
		want := Record{Format: FormatVersion, Workspace: wsA, SecretID: "sec-1", Name: "DB-PASSWORD",
			Op: OpPut, Version: 7, Scope: f.scope, IssuedAt: f.now, Sealed: s.Sealed}
		if !s.Record.IssuedAt.Equal(want.IssuedAt) {
			t.Errorf("IssuedAt = %v, want %v", s.IssuedAt, want.IssuedAt)
		}
		s.Record.IssuedAt, want.IssuedAt = f.now, f.now
		if fmt.Sprint(s.Record) != fmt.Sprint(want) {
			t.Errorf("record = %+v\nwant %+v", s.Record, want)
		}
		if len(s.Sealed) == 0 {
			t.Error("put record has no sealed value")
		}
		if string(s.Value) != secretValue {
			t.Error("opened value differs from the sealed one")
		}
		r, err := f.openA.Verify(key, data)
		if err != nil {
			t.Fatal(err)
		}
		if r.Key() != key || r.Version != 7 || r.Op != OpPut {
			t.Errorf("Verify = %+v", r)
		}
	})

	t.Run("delete", func(t *testing.T) {
		data := f.del(t, wsA, "sec-1", "DB-PASSWORD", 8)
		s, err := f.openA.Open(key, data)
		if err != nil {
			t.Fatal(err)
		}
		if s.Op != OpDelete || s.Name != "DB-PASSWORD" || s.Version != 8 || s.Value != nil || s.Sealed != nil {
			t.Errorf("tombstone = %+v", s)
		}
	})

	t.Run("empty and unicode values", func(t *testing.T) {
		for _, v := range []string{"", "pässwörd ✓ 秘密\n\ttab", strings.Repeat("x", MaxValueSize)} {
			s, err := f.openA.Open(key, f.put(t, f.toA, "sec-1", "DB-PASSWORD", 1, v))
			if err != nil {
				t.Fatal(err)
			}
			if string(s.Value) != v {
				t.Errorf("value of %d bytes did not round-trip", len(v))
			}
		}
	})

	t.Run("largest record fits", func(t *testing.T) {
		id, ws := strings.Repeat("i", 64), strings.Repeat("w", 64)
		name := "N" + strings.Repeat("a", 62)
		curve := detCurveKey(t, "workspace-w")
		to := Recipient{Workspace: ws, CurveKey: publicKey(t, curve)}
		data, err := f.sealer.Put(to, id, name, ^uint64(0), Scope{ScopeCommunity, strings.Repeat("c", 64)}, bytes.Repeat([]byte{0x7f}, MaxValueSize), f.now)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > MaxRecordSize {
			t.Fatalf("largest record is %d bytes, limit %d", len(data), MaxRecordSize)
		}
		if _, err := f.opener(t, ws, curve).Open(RecordKey(ws, id), data); err != nil {
			t.Fatal(err)
		}
		t.Logf("largest record: %d bytes of %d", len(data), MaxRecordSize)
	})

	t.Run("key rotation", func(t *testing.T) {
		next := detSigningKey(t, "service-sign-next")
		sealer, err := NewSealer(next, f.sealCurve)
		if err != nil {
			t.Fatal(err)
		}
		o, err := NewOpener(wsA, []string{publicKey(t, f.sign), publicKey(t, next)}, publicKey(t, f.sealCurve), f.curveA)
		if err != nil {
			t.Fatal(err)
		}
		data, err := sealer.Put(f.toA, "sec-1", "DB-PASSWORD", 2, f.scope, []byte(secretValue), f.now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.Open(key, data); err != nil {
			t.Fatalf("record signed by the second pinned key: %v", err)
		}
		if _, err := f.openA.Open(key, data); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("Opener without the new key: %v, want %v", err, ErrBadSignature)
		}
	})
}

// TestOpenRejects has one row per way a record can be bad. Every row opens
// with workspace A's Opener unless it says otherwise.
func TestOpenRejects(t *testing.T) {
	f := newFixture(t)
	const id = "sec-1"
	key := RecordKey(wsA, id)
	plain := sealedJSON(t, wsA, id, 3, []byte(secretValue))

	// valid returns a valid signed put record's fields for A.
	valid := func() Record {
		r := f.record(id, "DB-PASSWORD", 3)
		r.Sealed = f.seal(t, plain, f.toA.CurveKey, nil)
		return r
	}
	good := signRecord(t, f.sign, valid())
	goodRec, goodSig := parts(t, good)
	goodRecB64 := b64.EncodeToString(goodRec)
	signed := func(r Record) []byte { return signRecord(t, f.sign, r) }
	with := func(edit func(*Record)) []byte {
		r := valid()
		edit(&r)
		return signed(r)
	}
	// rawRec signs record JSON in which old is replaced by new.
	rawRec := func(old, new string) []byte {
		if !bytes.Contains(goodRec, []byte(old)) {
			t.Fatalf("record has no %q", old)
		}
		return signRaw(t, f.sign, bytes.Replace(goodRec, []byte(old), []byte(new), 1))
	}
	// rawEnv replaces old by new in the valid envelope.
	rawEnv := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("envelope has no %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	withSealed := func(p []byte) []byte { return with(func(r *Record) { r.Sealed = f.seal(t, p, f.toA.CurveKey, nil) }) }

	sig, err := b64.DecodeString(goodSig)
	if err != nil {
		t.Fatal(err)
	}
	flippedSig := bytes.Clone(sig)
	flippedSig[10] ^= 1
	otherSig, _ := parts(t, f.put(t, f.toA, id, "DB-PASSWORD", 4, secretValue))
	_, otherSigStr := parts(t, signRaw(t, f.sign, otherSig))
	undomained, err := f.sign.Sign(goodRec)
	if err != nil {
		t.Fatal(err)
	}
	// The signature is 64 bytes, 86 characters: the last one carries 4
	// padding bits. Setting one gives another spelling of the same bytes.
	last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", goodSig[len(goodSig)-1])
	paddedSig := goodSig[:len(goodSig)-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last|1])

	otherSealer := publicKey(t, detCurveKey(t, "intruder-curve"))
	wrongSealerOpener, err := NewOpener(wsA, []string{publicKey(t, f.sign)}, otherSealer, f.curveA)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		key    *string // default: key
		data   []byte
		opener *Opener // default: f.openA
		want   error
	}{
		{name: "signed by an unpinned key", data: signRecord(t, detSigningKey(t, "intruder"), valid()), want: ErrBadSignature},
		{name: "signature byte changed", data: envelopeJSON(t, 1, goodRecB64, b64.EncodeToString(flippedSig)), want: ErrBadSignature},
		{name: "signature of another record", data: envelopeJSON(t, 1, goodRecB64, otherSigStr), want: ErrBadSignature},
		{name: "signature without the domain string", data: envelopeJSON(t, 1, goodRecB64, b64.EncodeToString(undomained)), want: ErrBadSignature},
		{name: "empty signature", data: envelopeJSON(t, 1, goodRecB64, ""), want: ErrBadSignature},
		{name: "short signature", data: envelopeJSON(t, 1, goodRecB64, b64.EncodeToString(sig[:63])), want: ErrBadSignature},
		{name: "empty record", data: envelopeJSON(t, 1, "", goodSig), want: ErrBadSignature},

		{name: "record for B under B's key", key: ptr(RecordKey(wsB, id)), data: f.put(t, f.toB, id, "DB-PASSWORD", 3, secretValue), want: ErrWrongWorkspace},
		{name: "record for B under A's key", data: f.put(t, f.toB, id, "DB-PASSWORD", 3, secretValue), want: ErrWrongWorkspace},
		{name: "tombstone for B", data: f.del(t, wsB, id, "DB-PASSWORD", 3), want: ErrWrongWorkspace},

		{name: "under another secret's key", key: ptr(RecordKey(wsA, "sec-2")), data: good, want: ErrKeyMismatch},
		{name: "under a longer key", key: ptr(key + ".x"), data: good, want: ErrKeyMismatch},
		{name: "under the workspace alone", key: ptr(wsA), data: good, want: ErrKeyMismatch},
		{name: "under an empty key", key: ptr(""), data: good, want: ErrKeyMismatch},

		{name: "envelope version 2", data: envelopeJSON(t, 2, goodRecB64, goodSig), want: ErrUnknownFormat},
		{name: "envelope version 0", data: envelopeJSON(t, 0, goodRecB64, goodSig), want: ErrUnknownFormat},
		{name: "record version 2", data: with(func(r *Record) { r.Format = 2 }), want: ErrUnknownFormat},
		{name: "record version 0", data: with(func(r *Record) { r.Format = 0 }), want: ErrUnknownFormat},

		{name: "not JSON", data: []byte("hello"), want: ErrMalformed},
		{name: "empty", data: nil, want: ErrMalformed},
		{name: "JSON array", data: []byte(`[1,2]`), want: ErrMalformed},
		{name: "JSON null", data: []byte(`null`), want: ErrMalformed},
		{name: "JSON string", data: []byte(`"x"`), want: ErrMalformed},
		{name: "empty object", data: []byte(`{}`), want: ErrMalformed},
		{name: "trailing brace", data: append(bytes.Clone(good), '}'), want: ErrMalformed},
		{name: "trailing bracket", data: append(bytes.Clone(good), ']'), want: ErrMalformed},
		{name: "two records", data: append(bytes.Clone(good), good...), want: ErrMalformed},
		{name: "trailing garbage", data: append(bytes.Clone(good), "x"...), want: ErrMalformed},
		{name: "member twice", data: rawEnv(`}`, `,"v":1}`), want: ErrMalformed},
		{name: "record member twice", data: rawEnv(`}`, `,"rec":"`+goodRecB64+`"}`), want: ErrMalformed},
		{name: "member name in upper case", data: rawEnv(`"v":`, `"V":`), want: ErrMalformed},
		{name: "member name in mixed case", data: rawEnv(`"rec":`, `"Rec":`), want: ErrMalformed},
		{name: "unknown member", data: rawEnv(`}`, `,"x":1}`), want: ErrMalformed},
		{name: "signature missing", data: []byte(`{"v":1,"rec":"` + goodRecB64 + `"}`), want: ErrMalformed},
		{name: "version missing", data: rawEnv(`"v":1,`, ``), want: ErrMalformed},
		{name: "null record", data: rawEnv(`"rec":"`+goodRecB64+`"`, `"rec":null`), want: ErrMalformed},
		{name: "version as a string", data: rawEnv(`"v":1`, `"v":"1"`), want: ErrMalformed},
		{name: "version as a fraction", data: rawEnv(`"v":1`, `"v":1.5`), want: ErrMalformed},
		{name: "record not base64", data: envelopeJSON(t, 1, "!!"+goodRecB64, goodSig), want: ErrMalformed},
		{name: "record in padded base64", data: envelopeJSON(t, 1, goodRecB64+"==", goodSig), want: ErrMalformed},
		{name: "base64 padding bits set", data: envelopeJSON(t, 1, goodRecB64, paddedSig), want: ErrMalformed},
		{name: "base64 with a line break", data: envelopeJSON(t, 1, goodRecB64[:40]+"\n"+goodRecB64[40:], goodSig), want: ErrMalformed},
		{name: "base64 with a carriage return", data: envelopeJSON(t, 1, goodRecB64, goodSig[:40]+"\r"+goodSig[40:]), want: ErrMalformed},
		{name: "signed record not JSON", data: signRaw(t, f.sign, []byte("not json")), want: ErrMalformed},
		{name: "signed record empty", data: signRaw(t, f.sign, nil), want: ErrMalformed},
		{name: "signed record an array", data: signRaw(t, f.sign, []byte(`[]`)), want: ErrMalformed},
		{name: "signed record with an unknown member", data: rawRec(`"v":1,`, `"v":1,"extra":true,`), want: ErrMalformed},
		{name: "signed record with a member twice", data: rawRec(`"v":1,`, `"v":1,"ws":"ws-a",`), want: ErrMalformed},
		{name: "signed record member in other case", data: rawRec(`"ws":`, `"WS":`), want: ErrMalformed},
		{name: "signed record with trailing data", data: signRaw(t, f.sign, append(bytes.Clone(goodRec), '}')), want: ErrMalformed},
		{name: "signed record without iat", data: rawRec(`"iat":"2026-11-22T10:00:00Z",`, ``), want: ErrMalformed},
		{name: "signed record version as a string", data: rawRec(`"ver":3`, `"ver":"3"`), want: ErrMalformed},
		{name: "signed record null scope", data: rawRec(`"scope":{"kind":"project","id":"proj-1"}`, `"scope":null`), want: ErrMalformed},
		{name: "signed record scope with unknown member", data: rawRec(`"id":"proj-1"`, `"id":"proj-1","x":1`), want: ErrMalformed},
		{name: "signed record scope without id", data: rawRec(`,"id":"proj-1"`, ``), want: ErrMalformed},
		{name: "secret version 0", data: with(func(r *Record) { r.Version = 0 }), want: ErrMalformed},
		{name: "unknown op", data: with(func(r *Record) { r.Op = "upsert" }), want: ErrMalformed},
		{name: "delete carrying a value", data: with(func(r *Record) { r.Op = OpDelete }), want: ErrMalformed},
		{name: "put without a value", data: with(func(r *Record) { r.Sealed = nil }), want: ErrMalformed},
		{name: "unknown scope kind", data: with(func(r *Record) { r.Scope.Kind = "org" }), want: ErrMalformed},
		{name: "sealed plaintext not JSON", data: withSealed([]byte("just text")), want: ErrMalformed},
		{name: "sealed plaintext with unknown member", data: withSealed([]byte(`{"ws":"ws-a","id":"sec-1","ver":3,"val":"","x":1}`)), want: ErrMalformed},
		{name: "sealed plaintext member in other case", data: withSealed([]byte(`{"WS":"ws-a","id":"sec-1","ver":3,"val":""}`)), want: ErrMalformed},
		{name: "sealed plaintext without value", data: withSealed([]byte(`{"ws":"ws-a","id":"sec-1","ver":3}`)), want: ErrMalformed},

		{name: "invalid secret id", key: ptr(wsA + ".sec.1"), data: with(func(r *Record) { r.SecretID = "sec.1" }), want: ErrInvalidID},
		{name: "wildcard secret id", key: ptr(wsA + ".>"), data: with(func(r *Record) { r.SecretID = ">" }), want: ErrInvalidID},
		{name: "empty scope id", data: with(func(r *Record) { r.Scope.ID = "" }), want: ErrInvalidID},

		{name: "larger than the limit", data: append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxRecordSize+1-len(good))...), want: ErrTooLarge},
		{name: "huge", data: bytes.Repeat([]byte("x"), 4*MaxRecordSize), want: ErrTooLarge},

		{name: "invalid name", data: with(func(r *Record) { r.Name = "1DB" }), want: ErrInvalidName},
		{name: "forbidden name", data: with(func(r *Record) { r.Name = "LD_PRELOAD" }), want: ErrForbiddenName},
		{name: "forbidden name in a tombstone", data: with(func(r *Record) { r.Op, r.Sealed, r.Name = OpDelete, nil, "PATH" }), want: ErrForbiddenName},

		{name: "NUL in the value", data: withSealed(sealedJSON(t, wsA, id, 3, []byte(secretValue+"\x00"))), want: ErrNULInValue},
		{name: "value not UTF-8", data: withSealed(sealedJSON(t, wsA, id, 3, []byte(secretValue+"\xff"))), want: ErrInvalidValue},
		{name: "value too large", data: withSealed(sealedJSON(t, wsA, id, 3, bytes.Repeat([]byte("v"), MaxValueSize+1))), want: ErrValueTooLarge},

		{name: "sealed to B's key", data: with(func(r *Record) { r.Sealed = f.seal(t, plain, f.toB.CurveKey, nil) }), want: ErrCannotOpen},
		{name: "sealed by another sealer", data: with(func(r *Record) { r.Sealed = f.seal(t, plain, f.toA.CurveKey, detCurveKey(t, "intruder-curve")) }), want: ErrCannotOpen},
		{name: "sealed by the workspace to itself", data: with(func(r *Record) { r.Sealed = f.seal(t, plain, f.toA.CurveKey, f.curveA) }), want: ErrCannotOpen},
		{name: "sealed garbage", data: with(func(r *Record) { r.Sealed = append([]byte("xkv1"), make([]byte, 80)...) }), want: ErrCannotOpen},
		{name: "sealed too short", data: with(func(r *Record) { r.Sealed = []byte("xkv1") }), want: ErrCannotOpen},
		{name: "Opener pins another sealer", data: good, opener: wrongSealerOpener, want: ErrCannotOpen},
		{name: "Opener for A with B's curve key", data: good, opener: f.opener(t, wsA, f.curveB), want: ErrCannotOpen},

		{name: "sealed for another workspace", data: withSealed(sealedJSON(t, wsB, id, 3, []byte(secretValue))), want: ErrBindingMismatch},
		{name: "sealed for another secret", data: withSealed(sealedJSON(t, wsA, "sec-2", 3, []byte(secretValue))), want: ErrBindingMismatch},
		{name: "sealed for another version", data: withSealed(sealedJSON(t, wsA, id, 2, []byte(secretValue))), want: ErrBindingMismatch},
	}
	if _, err := f.openA.Open(key, good); err != nil {
		t.Fatalf("the valid record is refused: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, o := key, f.openA
			if tt.key != nil {
				k = *tt.key
			}
			if tt.opener != nil {
				o = tt.opener
			}
			s, err := o.Open(k, tt.data)
			if err == nil {
				t.Fatalf("accepted: %+v", s)
			}
			checkErr(t, err, tt.want)
			if s != nil {
				t.Errorf("Open returned a secret with error %v", err)
			}
			// Verify refuses the same records, except those whose fault is
			// inside the box.
			if _, verr := o.Verify(k, tt.data); verr == nil {
				switch tt.want {
				case ErrCannotOpen, ErrBindingMismatch, ErrNULInValue, ErrInvalidValue, ErrValueTooLarge, ErrMalformed:
				default:
					t.Errorf("Verify accepted what Open refuses with %v", err)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestSealerRejects checks that the service cannot make a record that every
// agent would refuse.
func TestSealerRejects(t *testing.T) {
	f := newFixture(t)
	v := []byte(secretValue)
	tests := []struct {
		name string
		make func() ([]byte, error)
		want error
	}{
		{"NUL in the value", func() ([]byte, error) {
			return f.sealer.Put(f.toA, "s1", "TOKEN", 1, f.scope, []byte(secretValue+"\x00x"), f.now)
		}, ErrNULInValue},
		{"value not UTF-8", func() ([]byte, error) {
			return f.sealer.Put(f.toA, "s1", "TOKEN", 1, f.scope, []byte(secretValue+"\xc3"), f.now)
		}, ErrInvalidValue},
		{"value too large", func() ([]byte, error) {
			return f.sealer.Put(f.toA, "s1", "TOKEN", 1, f.scope, bytes.Repeat(v, MaxValueSize/len(v)+1), f.now)
		}, ErrValueTooLarge},
		{"invalid name", func() ([]byte, error) { return f.sealer.Put(f.toA, "s1", "T", 1, f.scope, v, f.now) }, ErrInvalidName},
		{"forbidden name", func() ([]byte, error) { return f.sealer.Put(f.toA, "s1", "PYTHONPATH", 1, f.scope, v, f.now) }, ErrForbiddenName},
		{"invalid secret id", func() ([]byte, error) { return f.sealer.Put(f.toA, "s.1", "TOKEN", 1, f.scope, v, f.now) }, ErrInvalidID},
		{"invalid workspace", func() ([]byte, error) {
			return f.sealer.Put(Recipient{"ws*", f.toA.CurveKey}, "s1", "TOKEN", 1, f.scope, v, f.now)
		}, ErrInvalidID},
		{"version 0", func() ([]byte, error) { return f.sealer.Put(f.toA, "s1", "TOKEN", 0, f.scope, v, f.now) }, ErrMalformed},
		{"unknown scope", func() ([]byte, error) { return f.sealer.Put(f.toA, "s1", "TOKEN", 1, Scope{"team", "t"}, v, f.now) }, ErrMalformed},
		{"delete with invalid name", func() ([]byte, error) { return f.sealer.Delete(wsA, "s1", "a-", 1, f.scope, f.now) }, ErrInvalidName},
		{"delete with forbidden name", func() ([]byte, error) { return f.sealer.Delete(wsA, "s1", "BASH_ENV", 1, f.scope, f.now) }, ErrForbiddenName},
		{"delete with version 0", func() ([]byte, error) { return f.sealer.Delete(wsA, "s1", "TOKEN", 0, f.scope, f.now) }, ErrMalformed},
		{"delete with invalid workspace", func() ([]byte, error) { return f.sealer.Delete("", "s1", "TOKEN", 1, f.scope, f.now) }, ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := tt.make()
			if err == nil {
				t.Fatalf("made a record: %s", data)
			}
			checkErr(t, err, tt.want)
		})
	}
	t.Run("recipient key not a curve key", func(t *testing.T) {
		_, err := f.sealer.Put(Recipient{wsA, publicKey(t, f.sign)}, "s1", "TOKEN", 1, f.scope, v, f.now)
		if err == nil {
			t.Fatal("sealed to an ed25519 key")
		}
		checkNoValue(t, err.Error())
	})
}

// TestFlipEveryByte flips bits of every byte of a put record and a tombstone:
// every result must be refused.
func TestFlipEveryByte(t *testing.T) {
	f := newFixture(t)
	key := RecordKey(wsA, "sec-1")
	for _, data := range [][]byte{
		f.put(t, f.toA, "sec-1", "DB-PASSWORD", 3, secretValue),
		f.del(t, wsA, "sec-1", "DB-PASSWORD", 4),
	} {
		if _, err := f.openA.Open(key, data); err != nil {
			t.Fatal(err)
		}
		for i := range data {
			for _, mask := range []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff} {
				bad := bytes.Clone(data)
				bad[i] ^= mask
				s, err := f.openA.Open(key, bad)
				if err == nil {
					t.Fatalf("byte %d (%q) ^ %#x accepted: %s", i, data[i], mask, bad)
				}
				if s != nil {
					t.Fatalf("byte %d ^ %#x: a secret with the error", i, mask)
				}
				checkNoValue(t, err.Error())
			}
		}
		for n := range data {
			if _, err := f.openA.Open(key, data[:n]); err == nil {
				t.Fatalf("the first %d bytes accepted", n)
			}
		}
	}
}

func TestCrossWorkspace(t *testing.T) {
	f := newFixture(t)
	dataA := f.put(t, f.toA, "sec-1", "TOKEN", 1, secretValue)
	keyA := RecordKey(wsA, "sec-1")

	// B's agent sees a record for A, under A's key or moved under its own.
	for _, key := range []string{keyA, RecordKey(wsB, "sec-1")} {
		if _, err := f.openB.Open(key, dataA); !errors.Is(err, ErrWrongWorkspace) {
			t.Errorf("B opens A's record under %s: %v, want %v", key, err, ErrWrongWorkspace)
		}
		if _, err := f.openB.Verify(key, dataA); !errors.Is(err, ErrWrongWorkspace) {
			t.Errorf("B verifies A's record under %s: %v, want %v", key, err, ErrWrongWorkspace)
		}
	}
	// B's curve key, even behind an Opener that claims to be A's, cannot
	// open A's box.
	if _, err := f.opener(t, wsA, f.curveB).Open(keyA, dataA); !errors.Is(err, ErrCannotOpen) {
		t.Errorf("A's record with B's curve key: %v, want %v", err, ErrCannotOpen)
	}
	rec, _ := parts(t, dataA)
	var r Record
	if err := json.Unmarshal(rec, &r); err != nil {
		t.Fatal(err)
	}
	if _, err := f.curveB.Open(r.Sealed, publicKey(t, f.sealCurve)); err == nil {
		t.Error("B's curve key opens a box sealed to A")
	}
	// A itself still can.
	if _, err := f.openA.Open(keyA, dataA); err != nil {
		t.Fatal(err)
	}
}

func TestNoValueInOutput(t *testing.T) {
	f := newFixture(t)
	s, err := f.openA.Open(RecordKey(wsA, "sec-1"), f.put(t, f.toA, "sec-1", "TOKEN", 1, secretValue))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []any{s.Value, &s.Value, *s, s, []Value{s.Value}, map[string]Value{"k": s.Value}, struct{ V Value }{s.Value}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
			checkNoValue(t, fmt.Sprintf(verb, x))
		}
		out := fmt.Sprintf("%v %+v %#v %s", x, x, x, x)
		checkNoValue(t, out)
		checkNoValue(t, fmt.Sprint(x))
		checkNoValue(t, fmt.Sprintln(x))
		j, err := json.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		checkNoValue(t, string(j))
	}
	if !strings.Contains(fmt.Sprint(s.Value), redacted) {
		t.Errorf("Value prints as %q, want %q", fmt.Sprint(s.Value), redacted)
	}
	if !s.Value.Equal(Value(secretValue)) || string(s.Value) != secretValue {
		t.Error("the value is not there on purpose")
	}
	for _, v := range [][]byte{[]byte(secretValue + "\x00"), []byte(secretValue + "\xff"), bytes.Repeat([]byte(secretValue), MaxValueSize)} {
		if err := ValidateValue(v); err == nil {
			t.Error("ValidateValue accepted a bad value")
		} else {
			checkNoValue(t, err.Error())
		}
	}
}

func TestNewOpenerAndSealerRefuseBadKeys(t *testing.T) {
	f := newFixture(t)
	signPub, sealPub := publicKey(t, f.sign), publicKey(t, f.sealCurve)
	signSeed, err := f.sign.Seed()
	if err != nil {
		t.Fatal(err)
	}
	curveSeed, err := f.sealCurve.Seed()
	if err != nil {
		t.Fatal(err)
	}
	curvePubOnly, err := nkeys.FromPublicKey(publicKey(t, f.curveA))
	if err != nil {
		t.Fatal(err)
	}
	signPubOnly, err := nkeys.FromPublicKey(signPub)
	if err != nil {
		t.Fatal(err)
	}
	openers := []struct {
		name    string
		ws      string
		signers []string
		sealer  string
		curve   nkeys.KeyPair
	}{
		{"invalid workspace", "a.b", []string{signPub}, sealPub, f.curveA},
		{"no signer", wsA, nil, sealPub, f.curveA},
		{"signing seed pinned", wsA, []string{string(signSeed)}, sealPub, f.curveA},
		{"curve key pinned as signer", wsA, []string{sealPub}, sealPub, f.curveA},
		{"garbage signer", wsA, []string{"hello\n"}, sealPub, f.curveA},
		{"curve seed pinned as sealer", wsA, []string{signPub}, string(curveSeed), f.curveA},
		{"ed25519 key pinned as sealer", wsA, []string{signPub}, signPub, f.curveA},
		{"X-prefixed garbage as sealer", wsA, []string{signPub}, "Xhello", f.curveA},
		{"no workspace key", wsA, []string{signPub}, sealPub, nil},
		{"workspace key without seed", wsA, []string{signPub}, sealPub, curvePubOnly},
		{"ed25519 workspace key", wsA, []string{signPub}, sealPub, f.sign},
	}
	for _, tt := range openers {
		t.Run("Opener "+tt.name, func(t *testing.T) {
			o, err := NewOpener(tt.ws, tt.signers, tt.sealer, tt.curve)
			if err == nil {
				t.Fatalf("NewOpener accepted: %+v", o)
			}
			msg := err.Error()
			if strings.Contains(msg, string(signSeed)) || strings.Contains(msg, string(curveSeed)) || strings.Contains(msg, "\n") {
				t.Errorf("error shows a seed or a line break: %q", msg)
			}
		})
	}
	sealers := []struct {
		name        string
		sign, curve nkeys.KeyPair
	}{
		{"nil keys", nil, nil},
		{"curve key as signer", f.sealCurve, f.sealCurve},
		{"public signing key", signPubOnly, f.sealCurve},
		{"ed25519 key as sealer", f.sign, f.sign},
		{"public curve key", f.sign, curvePubOnly},
	}
	for _, tt := range sealers {
		t.Run("Sealer "+tt.name, func(t *testing.T) {
			if s, err := NewSealer(tt.sign, tt.curve); err == nil {
				t.Fatalf("NewSealer accepted: %v", s)
			}
		})
	}
}

func TestErrorsShowKeysSafely(t *testing.T) {
	f := newFixture(t)
	key := "ws-a.\x1b[31mred\nFAKE log line\xff"
	_, err := f.openA.Open(key, []byte("{"))
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	// ContainsAny works on runes: the invalid byte \xff is checked apart.
	if msg := err.Error(); strings.ContainsAny(msg, "\x1b\n") || strings.Contains(msg, "\xff") {
		t.Errorf("error shows control characters: %q", msg)
	}
	_, err = f.openA.Open(RecordKey(wsA, "sec-1"), signRecord(t, f.sign, Record{Format: 1, Workspace: "ws-a\n\x00", SecretID: "sec-1"}))
	if !errors.Is(err, ErrWrongWorkspace) || strings.ContainsAny(err.Error(), "\n\x00") {
		t.Errorf("err = %q", err)
	}
}

func TestLayout(t *testing.T) {
	if got := RecordKey("ws-1", "sec-2"); got != "ws-1.sec-2" {
		t.Errorf("RecordKey = %q", got)
	}
	if got := WorkspaceFilter("ws-1"); got != "$KV.nbsecrets.ws-1.>" {
		t.Errorf("WorkspaceFilter = %q", got)
	}
	if got := StreamName(); got != "KV_nbsecrets" {
		t.Errorf("StreamName = %q", got)
	}
	key, ok := KeyFromSubject("$KV.nbsecrets.ws-1.sec-2")
	if !ok || key != "ws-1.sec-2" {
		t.Errorf("KeyFromSubject = %q, %v", key, ok)
	}
	if _, ok := KeyFromSubject("$KV.other.ws-1.sec-2"); ok {
		t.Error("KeyFromSubject accepted another bucket's subject")
	}
	if r := (&Record{Workspace: "w", SecretID: "s"}); r.Key() != "w.s" {
		t.Errorf("Record.Key = %q", r.Key())
	}
	for kind, want := range map[ScopeKind]int{ScopeUser: 0, ScopeProject: 1, ScopeCommunity: 2, "other": 3} {
		if got := kind.Precedence(); got != want {
			t.Errorf("%s.Precedence() = %d, want %d", kind, got, want)
		}
	}
	if got := (Scope{ScopeUser, "u1"}).String(); got != "user:u1" {
		t.Errorf("Scope.String = %q", got)
	}
}

// TestPutDetMatchesPut checks the test helper that FuzzOpen relies on: it
// writes what Sealer.Put writes, nonce aside.
func TestPutDetMatchesPut(t *testing.T) {
	f := newFixture(t)
	a := f.put(t, f.toA, "sec-1", "TOKEN", 2, secretValue)
	b := f.putDet(t, f.toA, "sec-1", "TOKEN", 2, secretValue)
	if !bytes.Equal(b, f.putDet(t, f.toA, "sec-1", "TOKEN", 2, secretValue)) {
		t.Fatal("putDet is not deterministic")
	}
	sa, err := f.openA.Open(RecordKey(wsA, "sec-1"), a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := f.openA.Open(RecordKey(wsA, "sec-1"), b)
	if err != nil {
		t.Fatal(err)
	}
	sb.Sealed = sa.Sealed
	if fmt.Sprint(sa.Record) != fmt.Sprint(sb.Record) || !sa.Value.Equal(sb.Value) {
		t.Errorf("Put %+v\nputDet %+v", sa.Record, sb.Record)
	}
}

func TestVerifierVerifiesButCannotOpen(t *testing.T) {
	f := newFixture(t)
	data := f.put(t, f.toA, "s1", "TOKEN", 4, "verifier-value")
	v, err := NewVerifier(wsA, []string{publicKey(t, f.sign)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := v.Verify(RecordKey(wsA, "s1"), data)
	if err != nil || r.Version != 4 {
		t.Fatalf("Verify = %+v, %v", r, err)
	}
	if _, err := v.Open(RecordKey(wsA, "s1"), data); !errors.Is(err, ErrVerifyOnly) {
		t.Errorf("Open on a verifier: %v, want ErrVerifyOnly", err)
	}
	if _, err := NewVerifier(wsA, []string{"not a key"}); err == nil {
		t.Error("NewVerifier accepted a bad signing key")
	}
}
