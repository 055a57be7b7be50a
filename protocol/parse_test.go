package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestAppendEnvelopeIsJSON: the hand-written envelope is byte for byte what
// json.Marshal writes, for every length of record and signature modulo 3
// and any version.
func TestAppendEnvelopeIsJSON(t *testing.T) {
	for _, v := range []int{0, 1, 2, -1, 1 << 40} {
		for n := range 7 {
			rec, sig := bytes.Repeat([]byte{0xfb, 0xff, '"'}, n)[:n*3-n%3], bytes.Repeat([]byte{0xbe}, n)
			want, err := json.Marshal(envelope{V: v, Rec: b64.EncodeToString(rec), Sig: b64.EncodeToString(sig)})
			if err != nil {
				t.Fatal(err)
			}
			if got := appendEnvelope(nil, v, rec, sig); !bytes.Equal(got, want) {
				t.Errorf("v %d, %d/%d bytes: %s, json.Marshal writes %s", v, len(rec), len(sig), got, want)
			}
		}
	}
}

// TestOneFormOnly: bytes that the strict member parse takes but that the
// Sealer never writes (spaces, another member order, an escape, base64
// with padding bits or a line break inside the box or the value, which
// encoding/json's own base64 decoding skips or ignores) are refused as
// malformed, each layer naming itself, where the parse before took them:
// one record, one encoding.
func TestOneFormOnly(t *testing.T) {
	f := newFixture(t)
	const id = "sec-1"
	key := RecordKey(wsA, id)
	// A value whose base64 and whose box's base64 both end in padding, so
	// that their last character has spare bits to set.
	var (
		value, sealedB64, valB64 string
		good, goodRec            []byte
		goodSig                  string
		r                        Record
	)
	for _, suffix := range []string{"", "x", "xx", "xxx", "xxxx"} {
		value = secretValue + suffix
		good = f.put(t, f.toA, id, "DB-PASSWORD", 3, value)
		goodRec, goodSig = parts(t, good)
		if err := json.Unmarshal(goodRec, &r); err != nil {
			t.Fatal(err)
		}
		sealedB64, valB64 = b64Std.EncodeToString(r.Sealed), b64Std.EncodeToString([]byte(value))
		if strings.HasSuffix(sealedB64, "=") && strings.HasSuffix(valB64, "=") {
			break
		}
	}
	plain := sealedJSON(t, wsA, id, 3, []byte(value))
	setPadBit := func(s string) string {
		i := strings.IndexByte(s, '=') - 1
		if i < 0 {
			t.Fatalf("no padding in %q", s)
		}
		const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
		return s[:i] + string(alpha[strings.IndexByte(alpha, s[i])|1]) + s[i+1:]
	}
	if !strings.Contains(valB64, "=") {
		t.Fatalf("the value's base64 %q has no padding: pick another value", valB64)
	}
	withRec := func(rec []byte) []byte { return signRaw(t, f.sign, rec) }
	withPlain := func(p []byte) []byte {
		rr := r
		rr.Sealed = f.seal(t, p, f.toA.CurveKey, nil)
		return signRecord(t, f.sign, rr)
	}
	recRepl := func(old, new string) []byte {
		if !bytes.Contains(goodRec, []byte(old)) {
			t.Fatalf("record has no %q", old)
		}
		return bytes.Replace(goodRec, []byte(old), []byte(new), 1)
	}
	plainRepl := func(old, new string) []byte {
		if !bytes.Contains(plain, []byte(old)) {
			t.Fatalf("plaintext has no %q", old)
		}
		return bytes.Replace(plain, []byte(old), []byte(new), 1)
	}
	tests := []struct {
		name  string
		data  []byte
		layer string // the strict parse of this layer takes the bytes
	}{
		{"envelope with a space", bytes.Replace(good, []byte(`,"sig"`), []byte(`, "sig"`), 1), "envelope"},
		{"envelope with a line break at the end", append(bytes.Clone(good), '\n'), "envelope"},
		{"envelope members in another order", []byte(fmt.Sprintf(`{"rec":"%s","v":1,"sig":"%s"}`, b64.EncodeToString(goodRec), goodSig)), "envelope"},
		{"envelope with an escaped letter", bytes.Replace(good, []byte(`"rec"`), []byte(`"r\u0065c"`), 1), "envelope"},
		{"envelope version 1.0e0", bytes.Replace(good, []byte(`"v":1`), []byte(`"v":1.0e0`), 1), ""},
		{"record with a space", withRec(recRepl(`,"op"`, ` ,"op"`)), "record"},
		{"record members in another order", withRec(recRepl(`"v":1,"ws":"ws-a"`, `"ws":"ws-a","v":1`)), "record"},
		{"record with an escaped letter", withRec(recRepl(`"name":"DB`, `"name":"\u0044B`)), "record"},
		{"record time with zero milliseconds", withRec(recRepl(`10:00:00Z`, `10:00:00.000Z`)), "record"},
		{"record box with a line break", withRec(recRepl(sealedB64[:8], sealedB64[:4]+`\n`+sealedB64[4:8])), "record"},
		{"record box with padding bits", withRec(recRepl(sealedB64, setPadBit(sealedB64))), "record"},
		{"plaintext with a space", withPlain(plainRepl(`,"ver"`, `, "ver"`)), "sealed"},
		{"plaintext members in another order", withPlain(plainRepl(`"ws":"ws-a","id":"sec-1"`, `"id":"sec-1","ws":"ws-a"`)), "sealed"},
		{"plaintext value with a line break", withPlain(plainRepl(valB64[:8], valB64[:4]+`\r\n`+valB64[4:8])), "sealed"},
		{"plaintext value with padding bits", withPlain(plainRepl(valB64, setPadBit(valB64))), "sealed"},
		{"plaintext version with an exponent", withPlain(plainRepl(`"ver":3`, `"ver":3e0`)), ""},
	}
	if _, err := f.openA.Open(key, good); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The strict parse of the layer alone takes these bytes.
			switch tt.layer {
			case "envelope":
				if _, _, _, _, err := decodeEnvelope(tt.data); err != nil {
					t.Fatalf("the strict parse refuses the envelope too (%v): not a case of the one form", err)
				}
			case "record", "sealed":
				env, rec, _, _, err := decodeEnvelope(tt.data)
				if err != nil || env.V != 1 {
					t.Fatalf("envelope: %v", err)
				}
				r, err := decodeRecord(rec)
				if err != nil {
					t.Fatalf("the strict parse refuses the record too (%v): not a case of the one form", err)
				}
				if tt.layer == "sealed" {
					p, err := f.curveA.Open(r.Sealed, publicKey(t, f.sealCurve))
					if err != nil {
						t.Fatal(err)
					}
					if _, err := decodeSealed(p); err != nil {
						t.Fatalf("the strict parse refuses the plaintext too (%v): not a case of the one form", err)
					}
				}
			}
			s, err := f.openA.Open(key, tt.data)
			if err == nil {
				t.Fatalf("accepted: %+v", s)
			}
			checkErr(t, err, ErrMalformed)
			if tt.layer != "" && !strings.Contains(err.Error(), "one form") {
				t.Errorf("error %q does not say the record is not in the one form", err)
			}
		})
	}
}

// FuzzReaders checks the fast readers of the three layers against the
// strict member parse: whatever a reader takes, the strict parse takes and
// reads the same; whatever the strict parse takes that json.Marshal writes
// back byte for byte (the one form), the reader takes; and a reader's
// refusal has the strict parse's sentinel.
func FuzzReaders(f *testing.F) {
	fx := newFixture(f)
	data := fx.putDet(f, fx.toA, "sec-1", "DB-PASSWORD", 3, secretValue)
	rec, _ := parts(f, data)
	f.Add(uint8(0), data)
	f.Add(uint8(0), fx.batchDet(f, 5)[3])
	f.Add(uint8(1), rec)
	f.Add(uint8(1), func() []byte { r, _ := parts(f, fx.del(f, wsA, "sec-1", "DB-PASSWORD", 4)); return r }())
	f.Add(uint8(2), sealedJSON(f, wsA, "sec-1", 3, []byte(secretValue)))
	f.Add(uint8(2), sealedJSON(f, wsA, "sec-1", 3, []byte{}))
	f.Add(uint8(2), []byte(`{"ws":"a","id":"b","ver":1,"val":null}`))
	f.Fuzz(func(t *testing.T, layer uint8, b []byte) {
		switch layer % 3 {
		case 0:
			v, signed, sig, pr, err := readEnvelope(b)
			env, rec, sig2, pr2, err2 := decodeEnvelope(b)
			switch {
			case err == nil && (err2 != nil || env.V != v || !bytes.Equal(rec, signed[len(signingDomain):]) || !bytes.Equal(sig, sig2) ||
				!bytes.HasPrefix(signed, []byte(signingDomain)) || fmt.Sprint(pr) != fmt.Sprint(pr2)):
				t.Fatalf("readEnvelope takes what the strict parse reads otherwise (%v)", err2)
			case err == nil && !bytes.Equal(writeEnvelope(v, rec, sig, pr), b):
				t.Fatal("readEnvelope takes bytes the Sealer does not write")
			case err != nil && err2 == nil && bytes.Equal(writeEnvelope(env.V, rec, sig2, pr2), b) && !errors.Is(err, ErrUnknownFormat):
				t.Fatalf("readEnvelope refuses the one form: %v", err)
			case err != nil && err2 != nil && !sameSentinel(err, err2):
				t.Fatalf("readEnvelope: %v, the strict parse: %v", err, err2)
			}
		case 1:
			r, err := readRecord(b)
			r2, err2 := decodeRecord(b)
			canonical := false
			if err2 == nil {
				out, merr := json.Marshal(&r2)
				canonical = merr == nil && bytes.Equal(out, b)
			}
			switch {
			case err == nil && (err2 != nil || fmt.Sprint(r) != fmt.Sprint(r2) || !bytes.Equal(r.Sealed, r2.Sealed)):
				t.Fatalf("readRecord takes what the strict parse reads otherwise (%v)", err2)
			case err == nil && !canonical:
				t.Fatal("readRecord takes bytes json.Marshal does not write")
			case err != nil && canonical:
				t.Fatalf("readRecord refuses the one form: %v", err)
			case err != nil && err2 != nil && !sameSentinel(err, err2):
				t.Fatalf("readRecord: %v, the strict parse: %v", err, err2)
			}
		case 2:
			p, err := readSealed(b)
			p2, err2 := decodeSealed(b)
			canonical := false
			if err2 == nil {
				out, merr := json.Marshal(p2)
				canonical = merr == nil && bytes.Equal(out, b)
			}
			switch {
			case err == nil && (err2 != nil || p.Workspace != p2.Workspace || p.SecretID != p2.SecretID || p.Version != p2.Version || !bytes.Equal(p.Value, p2.Value)):
				t.Fatalf("readSealed takes what the strict parse reads otherwise (%v)", err2)
			case err == nil && !canonical:
				t.Fatal("readSealed takes bytes json.Marshal does not write")
			case err != nil && canonical:
				t.Fatalf("readSealed refuses the one form: %v", err)
			case err != nil && err2 != nil && !sameSentinel(err, err2):
				t.Fatalf("readSealed: %v, the strict parse: %v", err, err2)
			}
		}
	})
}

// writeEnvelope is the envelope the Sealer writes, single or batch form.
func writeEnvelope(v int, rec, sig []byte, pr *proof) []byte {
	if pr == nil {
		return appendEnvelope(nil, v, rec, sig)
	}
	return appendBatchEnvelope(nil, v, rec, sig, pr)
}

// sameSentinel reports whether a and b match the same sentinels.
func sameSentinel(a, b error) bool {
	for _, s := range sentinels {
		if errors.Is(a, s) != errors.Is(b, s) {
			return false
		}
	}
	return true
}
