package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// The fixture's keys are derived from fixed labels, so that records written
// into the fuzz corpus stay valid from one run to the next.

// detSeed returns 32 bytes derived from label.
func detSeed(label string) []byte {
	sum := sha256.Sum256([]byte("nbsecrets-protocol-test/" + label))
	return sum[:]
}

func detSigningKey(tb testing.TB, label string) nkeys.KeyPair {
	tb.Helper()
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteAccount, detSeed(label))
	if err != nil {
		tb.Fatalf("signing key %s: %v", label, err)
	}
	return kp
}

func detCurveKey(tb testing.TB, label string) nkeys.KeyPair {
	tb.Helper()
	kp, err := nkeys.CreateCurveKeysWithRand(bytes.NewReader(detSeed(label)))
	if err != nil {
		tb.Fatalf("curve key %s: %v", label, err)
	}
	return kp
}

func publicKey(tb testing.TB, kp nkeys.KeyPair) string {
	tb.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		tb.Fatal(err)
	}
	return pub
}

const (
	wsA = "ws-a"
	wsB = "ws-b"
)

// fixture is a secrets service and two workspaces, A and B.
type fixture struct {
	sign, sealCurve nkeys.KeyPair // the service's keys
	sealer          *Sealer
	curveA, curveB  nkeys.KeyPair // the workspaces' curve keys
	toA, toB        Recipient
	openA, openB    *Opener
	scope           Scope
	now             time.Time
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	f := &fixture{
		sign:      detSigningKey(tb, "service-sign"),
		sealCurve: detCurveKey(tb, "service-curve"),
		curveA:    detCurveKey(tb, "workspace-a"),
		curveB:    detCurveKey(tb, "workspace-b"),
		scope:     Scope{Kind: ScopeProject, ID: "proj-1"},
		now:       time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC),
	}
	var err error
	if f.sealer, err = NewSealer(f.sign, f.sealCurve); err != nil {
		tb.Fatal(err)
	}
	f.toA = Recipient{Workspace: wsA, CurveKey: publicKey(tb, f.curveA)}
	f.toB = Recipient{Workspace: wsB, CurveKey: publicKey(tb, f.curveB)}
	f.openA = f.opener(tb, wsA, f.curveA)
	f.openB = f.opener(tb, wsB, f.curveB)
	return f
}

// opener returns an Opener for workspace that pins the fixture's service
// keys and opens with curve.
func (f *fixture) opener(tb testing.TB, workspace string, curve nkeys.KeyPair) *Opener {
	tb.Helper()
	o, err := NewOpener(workspace, []string{publicKey(tb, f.sign)}, publicKey(tb, f.sealCurve), curve)
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

// put is Sealer.Put that fails the test on error.
func (f *fixture) put(tb testing.TB, to Recipient, id, name string, version uint64, value string) []byte {
	tb.Helper()
	data, err := f.sealer.Put(to, id, name, version, f.scope, []byte(value), f.now)
	if err != nil {
		tb.Fatalf("Put: %v", err)
	}
	return data
}

// del is Sealer.Delete that fails the test on error.
func (f *fixture) del(tb testing.TB, workspace, id, name string, version uint64) []byte {
	tb.Helper()
	data, err := f.sealer.Delete(workspace, id, name, version, f.scope, f.now)
	if err != nil {
		tb.Fatalf("Delete: %v", err)
	}
	return data
}

// record returns the fields of a valid put record for workspace A.
func (f *fixture) record(id, name string, version uint64) Record {
	return Record{Format: FormatVersion, Workspace: wsA, SecretID: id, Name: name, Op: OpPut,
		Version: version, Scope: f.scope, IssuedAt: f.now}
}

// seal seals plain from the fixture's service curve key (or from, if not
// nil) to the curve public key to.
func (f *fixture) seal(tb testing.TB, plain []byte, to string, from nkeys.KeyPair) []byte {
	tb.Helper()
	if from == nil {
		from = f.sealCurve
	}
	box, err := from.Seal(plain, to)
	if err != nil {
		tb.Fatal(err)
	}
	return box
}

// sealedJSON is the box plaintext for a value.
func sealedJSON(tb testing.TB, ws, id string, version uint64, value []byte) []byte {
	tb.Helper()
	plain, err := json.Marshal(sealedPlain{ws, id, version, value})
	if err != nil {
		tb.Fatal(err)
	}
	return plain
}

// signRecord marshals r and signs it as a Sealer does, with kp.
func signRecord(tb testing.TB, kp nkeys.KeyPair, r Record) []byte {
	tb.Helper()
	rec, err := json.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	return signRaw(tb, kp, rec)
}

// signRaw signs arbitrary record bytes with kp and wraps them in an envelope.
func signRaw(tb testing.TB, kp nkeys.KeyPair, rec []byte) []byte {
	tb.Helper()
	sig, err := kp.Sign(append([]byte(signingDomain), rec...))
	if err != nil {
		tb.Fatal(err)
	}
	return envelopeJSON(tb, FormatVersion, b64.EncodeToString(rec), b64.EncodeToString(sig))
}

func envelopeJSON(tb testing.TB, v int, rec, sig string) []byte {
	tb.Helper()
	out, err := json.Marshal(envelope{V: v, Rec: rec, Sig: sig})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// parts splits an encoded record into its envelope strings and signed bytes.
func parts(tb testing.TB, data []byte) (rec []byte, sig string) {
	tb.Helper()
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		tb.Fatal(err)
	}
	rec, err := b64.DecodeString(env.Rec)
	if err != nil {
		tb.Fatal(err)
	}
	return rec, env.Sig
}

// putDet makes the record Sealer.Put makes, but with a nonce derived from
// the record, so that the bytes are the same in every process: fuzz workers
// rebuild the fixture, and the seed corpus must match what they know.
func (f *fixture) putDet(tb testing.TB, to Recipient, id, name string, version uint64, value string) []byte {
	tb.Helper()
	r := Record{Format: FormatVersion, Workspace: to.Workspace, SecretID: id, Name: name, Op: OpPut,
		Version: version, Scope: f.scope, IssuedAt: f.now.UTC()}
	nonce := bytes.NewReader(detSeed(RecordKey(to.Workspace, id) + "/" + name))
	box, err := f.sealCurve.SealWithRand(sealedJSON(tb, to.Workspace, id, version, []byte(value)), to.CurveKey, nonce)
	if err != nil {
		tb.Fatal(err)
	}
	r.Sealed = box
	return signRecord(tb, f.sign, r)
}
