package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// TestFastSealIsNkeysFormat checks the cached-key box against nkeys itself:
// nkeys' Open opens it, it has the same layout and length as nkeys' Seal,
// and it is fresh each time (a new nonce).
func TestFastSealIsNkeysFormat(t *testing.T) {
	f := newFixture(t)
	if f.sealer.fast.seed == nil || f.sealer.fast.priv == nil {
		t.Fatal("the fixture's keys give their seeds, but the fast path is off")
	}
	plain := []byte("a plaintext of some length")
	sealerPub := publicKey(t, f.sealCurve)
	for range 3 { // the second and third use the cached key
		got, err := f.sealer.fast.seal(f.sealCurve, plain, f.toA.CurveKey)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := f.sealCurve.Seal(plain, f.toA.CurveKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(ref) || !bytes.HasPrefix(got, []byte(nkeys.XKeyVersionV1)) {
			t.Fatalf("box of %d bytes, nkeys makes %d; prefix %q", len(got), len(ref), got[:4])
		}
		opened, err := f.curveA.Open(got, sealerPub)
		if err != nil || !bytes.Equal(opened, plain) {
			t.Fatalf("nkeys cannot open the fast box: %v", err)
		}
		if _, err := f.curveB.Open(got, sealerPub); err == nil {
			t.Fatal("another workspace's key opens the box")
		}
		again, _ := f.sealer.fast.seal(f.sealCurve, plain, f.toA.CurveKey)
		if bytes.Equal(again[:4+xkeyNonceLen], got[:4+xkeyNonceLen]) {
			t.Fatal("two boxes share a nonce")
		}
	}
	if _, err := f.sealer.fast.seal(f.sealCurve, plain, "XNOTAKEY"); !errors.Is(err, nkeys.ErrInvalidRecipient) {
		t.Fatalf("bad recipient: %v", err)
	}
	if _, err := f.sealer.fast.seal(f.sealCurve, plain, publicKey(t, f.sign)); err == nil {
		t.Fatal("sealed to an ed25519 key")
	}
}

// TestFastSignIsNkeysSign checks that the cached ed25519 key signs exactly
// as the nkeys KeyPair does (ed25519 is deterministic), so agents that
// verify with nkeys accept it.
func TestFastSignIsNkeysSign(t *testing.T) {
	f := newFixture(t)
	msg := []byte(signingDomain + `{"v":1}`)
	got, err := f.sealer.fast.sign(f.sign, msg)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := f.sign.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ref) {
		t.Fatal("the cached key's signature differs from nkeys'")
	}
	if err := f.sign.Verify(msg, got); err != nil {
		t.Fatal(err)
	}
}

// TestRecipientRekeyed: a workspace with a new curve key gets a box its new
// key opens and its old key does not (the cache is by recipient key).
func TestRecipientRekeyed(t *testing.T) {
	f := newFixture(t)
	value := []byte("v1")
	old := f.put(t, f.toA, "sec-1", "DB-PASSWORD", 1, string(value))
	if _, err := f.openA.Open(RecordKey(wsA, "sec-1"), old); err != nil {
		t.Fatal(err)
	}
	newKey := detCurveKey(t, "workspace-a-rotated")
	data, err := f.sealer.Put(Recipient{Workspace: wsA, CurveKey: publicKey(t, newKey)}, "sec-1", "DB-PASSWORD", 2, f.scope, value, f.now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.openA.Open(RecordKey(wsA, "sec-1"), data); !errors.Is(err, ErrCannotOpen) {
		t.Fatalf("the old key opens a record sealed to the new one: %v", err)
	}
	o, err := NewOpener(wsA, []string{publicKey(t, f.sign)}, publicKey(t, f.sealCurve), newKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.Open(RecordKey(wsA, "sec-1"), data)
	if err != nil || !s.Value.Equal(value) {
		t.Fatalf("the new key cannot open its record: %v", err)
	}
}

// noSeed is a KeyPair that signs and seals but will not give its seed (as
// one backed by a hardware key would): the Sealer falls back to nkeys.
type noSeed struct{ nkeys.KeyPair }

func (noSeed) Seed() ([]byte, error) { return nil, errors.New("no seed here") }

func TestSealerWithoutSeedsFallsBack(t *testing.T) {
	f := newFixture(t)
	s, err := NewSealer(noSeed{f.sign}, noSeed{f.sealCurve})
	if err != nil {
		t.Fatal(err)
	}
	if s.fast.priv != nil || s.fast.seed != nil {
		t.Fatal("fast keys without seeds")
	}
	data, err := s.Put(f.toA, "sec-1", "DB-PASSWORD", 1, f.scope, []byte("v"), f.now)
	if err != nil {
		t.Fatal(err)
	}
	if sec, err := f.openA.Open(RecordKey(wsA, "sec-1"), data); err != nil || string(sec.Value) != "v" {
		t.Fatalf("fallback record: %v", err)
	}
}

// BenchmarkSealFanout compares one record for a recipient seen before: the
// Sealer's cached keys against nkeys' Seal and Sign.
func BenchmarkSealFanout(b *testing.B) {
	f := newFixture(b)
	value := []byte(strings.Repeat("v", 32))
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.sealer.Put(f.toA, "sec-1", "DB-PASSWORD", 1, f.scope, value, f.now); err != nil {
				b.Fatal(err)
			}
		}
	})
	slow, err := NewSealer(noSeed{f.sign}, noSeed{f.sealCurve})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("nkeys", func(b *testing.B) {
		for b.Loop() {
			if _, err := slow.Put(f.toA, "sec-1", "DB-PASSWORD", 1, f.scope, value, f.now); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestOpenPrecomputedIsNkeysOpen checks the Opener's precomputed box key
// against nkeys' Open: it opens what nkeys seals, and refuses exactly what
// nkeys refuses (a flipped byte anywhere, another version, a short box, a
// box sealed by another key or for another workspace).
func TestOpenPrecomputedIsNkeysOpen(t *testing.T) {
	f := newFixture(t)
	if f.openA.shared == nil {
		t.Fatal("the fixture's workspace key gives its seed, but the Opener's fast path is off")
	}
	sealerPub := publicKey(t, f.sealCurve)
	plain := []byte("a plaintext of some length")
	box, err := f.sealCurve.Seal(plain, publicKey(t, f.curveA))
	if err != nil {
		t.Fatal(err)
	}
	got, err := openPrecomputed(box, f.openA.shared)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("precomputed open of an nkeys box: %q, %v", got, err)
	}
	for i := range box {
		bad := bytes.Clone(box)
		bad[i] ^= 0x01
		_, errFast := openPrecomputed(bad, f.openA.shared)
		_, errRef := f.curveA.Open(bad, sealerPub)
		if errFast == nil || errRef == nil {
			t.Fatalf("byte %d flipped: precomputed %v, nkeys %v; both must refuse", i, errFast, errRef)
		}
	}
	for _, short := range [][]byte{nil, box[:4], box[:4+xkeyNonceLen]} {
		if _, err := openPrecomputed(short, f.openA.shared); err == nil {
			t.Fatalf("a box of %d bytes opened", len(short))
		}
	}
	other, err := detCurveKey(t, "another-sealer").Seal(plain, publicKey(t, f.curveA))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openPrecomputed(other, f.openA.shared); err == nil {
		t.Fatal("a box from another sealing key opened")
	}
	forB, err := f.sealCurve.Seal(plain, publicKey(t, f.curveB))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openPrecomputed(forB, f.openA.shared); err == nil {
		t.Fatal("a box for another workspace opened")
	}
}
