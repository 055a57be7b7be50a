package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// The readers of a record's three layers: the envelope, the signed record
// and the sealed plaintext. Each accepts exactly the bytes the Sealer
// writes (encoding/json's form: members in the order of the struct, no
// spaces, a []byte in padded standard base64, the envelope's strings in
// unpadded base64url), which is one encoding per record and, as that form
// cannot hold a member twice, an unknown or null member, a name in another
// case or anything after the object, everything members() refuses.
//
// They are the fast path: the envelope is read by hand in one pass; the
// record and the plaintext are split before their last member (the box, the
// value: all of their size), whose base64 is decoded strictly, and the
// small rest goes through json.Unmarshal and must come back from
// json.Marshal byte for byte. When a reader refuses, the strict parse of
// decodeEnvelope, decodeRecord or decodeSealed runs to name the fault, so
// that a bad record gets the error and the reason it always got; if that
// parse accepts the bytes (spaces, another member order, an escape the
// Sealer does not write), the error says the record is not in the one form.

// errNotCanonical is the reason given for bytes the strict parse takes but
// the Sealer would not have written.
var errNotCanonical = errors.New("not in the one form the service writes (encoding/json's: members in order, no spaces)")

var b64Std = base64.StdEncoding.Strict()

// readEnvelope reads data, which must be exactly
//
//	{"v":N,"rec":"<base64url>","sig":"<base64url>"}
//
// as sign1 writes it, or a batch record's
//
//	{"v":N,"rec":"<base64url>","sig":"<base64url>","idx":I,"n":N,"salt":"<base64url>","path":["<base64url>",...]}
//
// as Batch.Sign writes it, and returns the format version, the signing
// domain followed by the record's bytes (what the signature covers, or for
// a batch record what its leaf hashes: the record is
// signed[len(signingDomain):]), the signature and a batch record's proof
// (nil for the single form). It refuses as decodeEnvelope does.
func readEnvelope(data []byte) (v int, signed, sig []byte, pr *proof, err error) {
	v, signed, sig, pr, ok := parseEnvelope(data)
	if !ok {
		if _, _, _, _, err := decodeEnvelope(data); err != nil {
			return 0, nil, nil, nil, err
		}
		return 0, nil, nil, nil, fmt.Errorf("%w: envelope: %v", ErrMalformed, errNotCanonical)
	}
	if v != FormatVersion {
		return 0, nil, nil, nil, fmt.Errorf("%w: %d", ErrUnknownFormat, v)
	}
	return v, signed, sig, pr, nil
}

func parseEnvelope(data []byte) (v int, signed, sig []byte, pr *proof, ok bool) {
	rest, ok := bytes.CutPrefix(data, []byte(`{"v":`))
	if !ok {
		return 0, nil, nil, nil, false
	}
	i := 0
	for i < len(rest) && (rest[i] == '-' || '0' <= rest[i] && rest[i] <= '9') {
		i++
	}
	v, err := strconv.Atoi(string(rest[:i]))
	if err != nil || strconv.Itoa(v) != string(rest[:i]) {
		return 0, nil, nil, nil, false // not an int, or not as json writes one
	}
	rest, ok = bytes.CutPrefix(rest[i:], []byte(`,"rec":"`))
	if !ok {
		return 0, nil, nil, nil, false
	}
	recB64, rest, ok := bytes.Cut(rest, []byte(`"`))
	if !ok {
		return 0, nil, nil, nil, false
	}
	sigB64, ok := bytes.CutPrefix(rest, []byte(`,"sig":"`))
	if !ok {
		return 0, nil, nil, nil, false
	}
	sigB64, rest, ok = bytes.Cut(sigB64, []byte(`"`))
	if !ok {
		return 0, nil, nil, nil, false
	}
	if string(rest) != "}" {
		if pr, ok = parseProof(rest); !ok {
			return 0, nil, nil, nil, false
		}
	}
	// The strict decoder refuses every byte outside the alphabet but line
	// breaks, which it skips: the length check catches those.
	signed = make([]byte, len(signingDomain)+b64.DecodedLen(len(recB64)))
	copy(signed, signingDomain)
	n, err := b64.Strict().Decode(signed[len(signingDomain):], recB64)
	if err != nil || b64.EncodedLen(n) != len(recB64) {
		return 0, nil, nil, nil, false
	}
	signed = signed[:len(signingDomain)+n]
	sig = make([]byte, b64.DecodedLen(len(sigB64)))
	n, err = b64.Strict().Decode(sig, sigB64)
	if err != nil || b64.EncodedLen(n) != len(sigB64) {
		return 0, nil, nil, nil, false
	}
	return v, signed, sig[:n], pr, true
}

// parseProof reads what follows the signature in a batch record's
// envelope, appendProof's members and the closing brace, and checks the
// proof's limits (checkProof).
func parseProof(b []byte) (*proof, bool) {
	var p proof
	var ok bool
	if b, ok = bytes.CutPrefix(b, []byte(`,"idx":`)); !ok {
		return nil, false
	}
	if p.idx, b, ok = cutUint(b); !ok {
		return nil, false
	}
	if b, ok = bytes.CutPrefix(b, []byte(`,"n":`)); !ok {
		return nil, false
	}
	if p.n, b, ok = cutUint(b); !ok {
		return nil, false
	}
	if b, ok = bytes.CutPrefix(b, []byte(`,"salt":"`)); !ok {
		return nil, false
	}
	var salt []byte
	if salt, b, ok = bytes.Cut(b, []byte(`"`)); !ok || !decodeB64Into(p.salt[:], salt) {
		return nil, false
	}
	if b, ok = bytes.CutPrefix(b, []byte(`,"path":[`)); !ok {
		return nil, false
	}
	for len(p.path) <= MaxBatchPath {
		if len(p.path) > 0 {
			if string(b) == "]}" {
				return &p, checkProof(&p) == nil
			}
			if b, ok = bytes.CutPrefix(b, []byte(`,`)); !ok {
				return nil, false
			}
		}
		var h []byte
		if b, ok = bytes.CutPrefix(b, []byte(`"`)); !ok {
			return nil, false
		}
		if h, b, ok = bytes.Cut(b, []byte(`"`)); !ok {
			return nil, false
		}
		p.path = append(p.path, hash{})
		if !decodeB64Into(p.path[len(p.path)-1][:], h) {
			return nil, false
		}
	}
	return nil, false // more than MaxBatchPath hashes
}

// cutUint reads a decimal uint64 as json writes one at the start of b.
func cutUint(b []byte) (uint64, []byte, bool) {
	i := 0
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	n, err := strconv.ParseUint(string(b[:i]), 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != string(b[:i]) {
		return 0, nil, false
	}
	return n, b[i:], true
}

// decodeB64Into decodes s, in b64's one form, into dst, which it must fill
// exactly.
func decodeB64Into(dst, s []byte) bool {
	if len(s) != b64.EncodedLen(len(dst)) {
		return false
	}
	n, err := b64.Strict().Decode(dst, s)
	return err == nil && n == len(dst)
}

// appendEnvelope appends the envelope of a signed record to dst: the bytes
// json.Marshal writes of envelope{v, base64url(rec), base64url(sig)}
// (base64url needs no escape in a JSON string), without building the
// strings first.
func appendEnvelope(dst []byte, v int, rec, sig []byte) []byte {
	dst = slices.Grow(dst, 40+b64.EncodedLen(len(rec))+b64.EncodedLen(len(sig)))
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(v), 10)
	dst = append(dst, `,"rec":"`...)
	dst = b64.AppendEncode(dst, rec)
	dst = append(dst, `","sig":"`...)
	dst = b64.AppendEncode(dst, sig)
	return append(dst, `"}`...)
}

// decodeStdB64 decodes b, which must be padded standard base64 exactly as
// encoding/json writes a []byte: no padding bits, no line breaks (the
// strict decoder skips them: the length check refuses them), nothing
// outside the alphabet and the padding (the decoder refuses it).
func decodeStdB64(b []byte) ([]byte, bool) {
	out := make([]byte, b64Std.DecodedLen(len(b)))
	n, err := b64Std.Decode(out, b)
	if err != nil || b64Std.EncodedLen(n) != len(b) {
		clear(out)
		return nil, false
	}
	return out[:n], true
}

// splitLast splits obj, a JSON object, before its last member when that is
// a base64 string called name: head is the object without it (a copy, with
// its closing brace) and b64 the member's characters up to the closing
// quote and brace that end obj. ok is false when obj does not end so. The
// member's opening is looked for from the start: in the one form it is
// not found earlier (the head's strings hold no unescaped quote), and if
// it is, b64 holds a quote, which no base64 decoder takes.
func splitLast(obj []byte, name string) (head, b64 []byte, ok bool) {
	open := `,"` + name + `":"`
	i := bytes.Index(obj, []byte(open))
	if i < 0 || !bytes.HasSuffix(obj, []byte(`"}`)) || i+len(open) > len(obj)-2 {
		return nil, nil, false
	}
	head = make([]byte, i+1)
	copy(head, obj[:i])
	head[i] = '}'
	return head, obj[i+len(open) : len(obj)-2], true
}

// sameJSON reports whether v, marshalled, is exactly b.
func sameJSON(v any, b []byte) bool {
	out, err := json.Marshal(v)
	if err != nil {
		return false
	}
	ok := bytes.Equal(out, b)
	clear(out)
	return ok
}

// readRecord reads the signed record, which must be exactly what
// json.Marshal writes of a Record. It refuses as decodeRecord does.
func readRecord(rec []byte) (Record, error) {
	if r, ok := parseRecord(rec); ok {
		return r, nil
	}
	if _, err := decodeRecord(rec); err != nil {
		return Record{}, err
	}
	return Record{}, fmt.Errorf("%w: signed record: %v", ErrMalformed, errNotCanonical)
}

func parseRecord(rec []byte) (Record, bool) {
	head, sealed := rec, []byte(nil)
	if h, b, ok := splitLast(rec, "sealed"); ok {
		// A put: the box is the last member. An empty one is not written
		// (omitempty), so "" is not the form.
		if len(b) == 0 {
			return Record{}, false
		}
		if sealed, ok = decodeStdB64(b); !ok {
			return Record{}, false
		}
		head = h
	}
	var r Record
	if json.Unmarshal(head, &r) != nil || r.Sealed != nil || !sameJSON(&r, head) {
		return Record{}, false
	}
	r.Sealed = sealed
	return r, true
}

// sealedHead is the sealed plaintext without its value.
type sealedHead struct {
	Workspace string `json:"ws"`
	SecretID  string `json:"id"`
	Version   uint64 `json:"ver"`
}

// readSealed reads the opened box, which must be exactly what json.Marshal
// writes of a sealedPlain with a value (not null). It refuses as
// decodeSealed does, and neither its errors nor anything it leaves behind
// hold the value.
func readSealed(plain []byte) (sealedPlain, error) {
	if p, ok := parseSealed(plain); ok {
		return p, nil
	}
	p, err := decodeSealed(plain)
	if err != nil {
		return sealedPlain{}, err
	}
	clear(p.Value)
	return sealedPlain{}, fmt.Errorf("%w: sealed value is not in the one form the service writes", ErrMalformed)
}

func parseSealed(plain []byte) (sealedPlain, bool) {
	head, b, ok := splitLast(plain, "val") // an empty value is "val":"", b empty
	if !ok {
		return sealedPlain{}, false
	}
	defer clear(head)
	value, ok := decodeStdB64(b)
	if !ok {
		return sealedPlain{}, false
	}
	var h sealedHead
	if json.Unmarshal(head, &h) != nil || !sameJSON(&h, head) {
		clear(value)
		return sealedPlain{}, false
	}
	return sealedPlain{Workspace: h.Workspace, SecretID: h.SecretID, Version: h.Version, Value: value}, true
}
