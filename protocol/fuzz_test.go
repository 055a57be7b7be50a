package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzOpen feeds arbitrary keys and bytes to an Opener. It must never
// panic, and it may accept only what the pinned key signed: every accepted
// input must open to one of the records the seed corpus was made from (the
// fixture's keys are fixed, so those records stay valid in the corpus).
func FuzzOpen(f *testing.F) {
	fx := newFixture(f)
	type known struct {
		key   string
		rec   Record
		value string
	}
	var signed []known
	add := func(key string, data []byte, value string) {
		s, err := fx.openA.Open(key, data)
		if err != nil {
			f.Fatal(err)
		}
		signed = append(signed, known{key, s.Record, value})
		f.Add(key, data)
	}
	add(RecordKey(wsA, "sec-1"), fx.putDet(f, fx.toA, "sec-1", "DB-PASSWORD", 3, secretValue), secretValue)
	add(RecordKey(wsA, "sec-1"), fx.del(f, wsA, "sec-1", "DB-PASSWORD", 4), "")
	add(RecordKey(wsA, "s2"), fx.putDet(f, fx.toA, "s2", "api_key", 1, ""), "")
	add(RecordKey(wsA, "s3"), fx.putDet(f, fx.toA, "s3", "Unicode-1", 9, "ü ✓\n"), "ü ✓\n")
	for i, data := range fx.batchDet(f, 5) { // batch records, each with its proof
		add(RecordKey(wsA, fmt.Sprintf("b%d", i)), data, secretValue)
	}
	// Records that must be refused, as starting points.
	f.Add(RecordKey(wsB, "sec-1"), fx.putDet(f, fx.toB, "sec-1", "DB-PASSWORD", 3, secretValue))
	f.Add(RecordKey(wsA, "sec-1"), signRecord(f, detSigningKey(f, "intruder"), fx.record("sec-1", "DB-PASSWORD", 3)))
	f.Add(RecordKey(wsA, "sec-1"), []byte(`{"v":1,"rec":"","sig":""}`))
	f.Add("", []byte(`{"V":1,"REC":"e30","sig":"AA"}}`))

	f.Fuzz(func(t *testing.T, key string, data []byte) {
		s, err := fx.openA.Open(key, data)
		r, verr := fx.openA.Verify(key, data)
		if err != nil {
			if s != nil {
				t.Fatalf("a secret with error %v", err)
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Fatalf("error shows the value: %v", err)
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("error is not UTF-8: %q", err)
			}
			matched := false
			for _, sentinel := range sentinels {
				matched = matched || errors.Is(err, sentinel)
			}
			if !matched {
				t.Fatalf("error matches no sentinel: %v", err)
			}
			return
		}
		if verr != nil {
			t.Fatalf("Open accepts, Verify refuses: %v", verr)
		}
		if fmt.Sprint(*r) != fmt.Sprint(s.Record) {
			t.Fatalf("Verify %+v, Open %+v", *r, s.Record)
		}
		for _, k := range signed {
			if k.key == key && fmt.Sprint(k.rec) == fmt.Sprint(s.Record) && bytes.Equal(k.rec.Sealed, s.Sealed) && string(s.Value) == k.value {
				return
			}
		}
		t.Fatalf("accepted a record that was never signed: key %q, %+v", key, s.Record)
	})
}

// FuzzValidateName checks ValidateName against the regular expression of
// the name rule and the forbidden list.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"DB-PASSWORD", "abc", "ab", "a-", "a_b", "1ab", "PATH", "ld_preload", "ab\x00", "é12",
		"Z" + strings.Repeat("x", 62), "Z" + strings.Repeat("x", 63), "abc\n", "ab-c_"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		checkAgainstOracle(t, name)
		if err := ValidateName(name); err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error has a line break: %q", err)
		}
	})
}
