package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nkeys"
)

// FormatVersion is the record format this package writes and reads.
const FormatVersion = 1

// MaxRecordSize is the largest encoded record accepted: a sealed value of
// MaxValueSize bytes, base64 twice, plus the envelope.
const MaxRecordSize = 192 << 10

// Bucket is the JetStream KV bucket that holds every workspace's records.
const Bucket = "nbsecrets"

// signingDomain separates record signatures from any other use of the key.
const signingDomain = "nbsecrets-record-v1\n"

// Record errors, one per way a record can be bad. They are wrapped with the
// key and the reason; a value never appears in them.
var (
	ErrBadSignature    = errors.New("protocol: bad record signature")
	ErrWrongWorkspace  = errors.New("protocol: record addressed to another workspace")
	ErrKeyMismatch     = errors.New("protocol: record stored under another key than it claims")
	ErrUnknownFormat   = errors.New("protocol: unknown record format version")
	ErrMalformed       = errors.New("protocol: malformed record")
	ErrTooLarge        = errors.New("protocol: record too large")
	ErrCannotOpen      = errors.New("protocol: sealed value cannot be opened")
	ErrBindingMismatch = errors.New("protocol: sealed value belongs to another record")
	ErrInvalidID       = errors.New("protocol: invalid identifier")
)

// Op is what a record does to a secret.
type Op string

// The operations.
const (
	OpPut    Op = "put"    // the secret exists with this value
	OpDelete Op = "delete" // the secret is gone from this workspace (a signed tombstone)
)

// ScopeKind says who a secret belongs to.
type ScopeKind string

// The scopes, in order of precedence when two secrets visible to one
// workspace have the same name: a user's own secret overrides a project's,
// which overrides a community's.
const (
	ScopeUser      ScopeKind = "user"
	ScopeProject   ScopeKind = "project"
	ScopeCommunity ScopeKind = "community"
)

// Precedence orders scopes when names collide: lower wins.
func (k ScopeKind) Precedence() int {
	switch k {
	case ScopeUser:
		return 0
	case ScopeProject:
		return 1
	case ScopeCommunity:
		return 2
	}
	return 3
}

// Scope is the owner of a secret: a user, a project or a community.
type Scope struct {
	Kind ScopeKind `json:"kind"`
	ID   string    `json:"id"`
}

func (s Scope) String() string { return string(s.Kind) + ":" + s.ID }

// Validate checks the kind and the id.
func (s Scope) Validate() error {
	switch s.Kind {
	case ScopeUser, ScopeProject, ScopeCommunity:
	default:
		return fmt.Errorf("%w: unknown scope kind %q", ErrMalformed, printable(string(s.Kind)))
	}
	return ValidateID(s.ID)
}

// Record is the signed part of a secret record. Sealed is the box holding
// the value (nil for a delete).
type Record struct {
	Format    int       `json:"v"`
	Workspace string    `json:"ws"`
	SecretID  string    `json:"id"`
	Name      string    `json:"name"`
	Op        Op        `json:"op"`
	Version   uint64    `json:"ver"`
	Scope     Scope     `json:"scope"`
	IssuedAt  time.Time `json:"iat"`
	Sealed    []byte    `json:"sealed,omitempty"`
}

// Key is the KV key the record belongs under.
func (r *Record) Key() string { return RecordKey(r.Workspace, r.SecretID) }

// Value is a secret value. Its String, GoString and Format print a
// placeholder, so that a value handed to a logger or fmt by mistake does not
// leak; use []byte(v) or string(v) on purpose.
type Value []byte

const redacted = "[redacted]"

func (Value) String() string               { return redacted }
func (Value) GoString() string             { return redacted }
func (Value) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(redacted)) }
func (Value) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (v Value) Equal(o Value) bool         { return bytes.Equal(v, o) }

// Secret is an opened record: the record and, for a put, its value.
type Secret struct {
	Record
	Value Value
}

// ValidateID checks a workspace, secret, user, project or community id: 1 to
// 64 letters, digits, hyphens or underscores, so that it is one NATS subject
// token with no wildcard.
func ValidateID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("%w %q: must be 1 to 64 characters", ErrInvalidID, printable(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isLetter(c) && !isDigit(c) && c != '-' && c != '_' {
			return fmt.Errorf("%w %q: only letters, digits, hyphens and underscores", ErrInvalidID, printable(id))
		}
	}
	return nil
}

// RecordKey is the KV key of a workspace's record for a secret.
func RecordKey(workspace, secretID string) string { return workspace + "." + secretID }

// WorkspaceFilter is the single subject filter that selects exactly one
// workspace's records in the bucket's stream.
func WorkspaceFilter(workspace string) string { return "$KV." + Bucket + "." + workspace + ".>" }

// StreamName is the JetStream stream behind the bucket.
func StreamName() string { return "KV_" + Bucket }

// KeyFromSubject returns the KV key of a record's subject.
func KeyFromSubject(subject string) (string, bool) {
	return strings.CutPrefix(subject, "$KV."+Bucket+".")
}

// Recipient is a workspace as the sealing side sees it.
type Recipient struct {
	Workspace string // workspace id
	CurveKey  string // the workspace's curve public key ("X...")
}

// Sealer makes records: the secrets service's side.
type Sealer struct {
	sign  nkeys.KeyPair
	curve nkeys.KeyPair
	fast  *fastKeys // the same keys, cached for speed (fastseal.go)
}

// NewSealer returns a Sealer that signs with sign (any ed25519 nkey with a
// seed) and seals with curve (a curve nkey with a seed).
func NewSealer(sign, curve nkeys.KeyPair) (*Sealer, error) {
	if sign == nil || curve == nil {
		return nil, errors.New("protocol: missing signing or sealing key")
	}
	if _, err := sign.Sign([]byte("probe")); err != nil {
		return nil, fmt.Errorf("protocol: signing key cannot sign: %w", err)
	}
	if !canSeal(curve) {
		return nil, errors.New("protocol: sealing key is not a curve key with a seed")
	}
	return &Sealer{sign: sign, curve: curve, fast: newFastKeys(sign, curve)}, nil
}

// canSeal reports whether kp is a curve key with its seed: it seals a probe
// to itself.
func canSeal(kp nkeys.KeyPair) bool {
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicCurveKey(pub) {
		return false
	}
	_, err = kp.Seal([]byte("probe"), pub)
	return err == nil
}

// sealedPlain is what the box holds: the value bound to its record.
type sealedPlain struct {
	Workspace string `json:"ws"`
	SecretID  string `json:"id"`
	Version   uint64 `json:"ver"`
	Value     []byte `json:"val"`
}

// Put makes a record that gives the workspace the secret's value.
func (s *Sealer) Put(to Recipient, secretID, name string, version uint64, scope Scope, value []byte, now time.Time) ([]byte, error) {
	r, err := s.putRecord(to, secretID, name, version, scope, value, now)
	if err != nil {
		return nil, err
	}
	return s.sign1(r)
}

// putRecord makes the record of a put, its value sealed, not signed.
func (s *Sealer) putRecord(to Recipient, secretID, name string, version uint64, scope Scope, value []byte, now time.Time) (*Record, error) {
	if err := ValidateValue(value); err != nil {
		return nil, err
	}
	r := Record{Format: FormatVersion, Workspace: to.Workspace, SecretID: secretID, Name: name,
		Op: OpPut, Version: version, Scope: scope, IssuedAt: now.UTC()}
	if err := r.validate(); err != nil {
		return nil, err
	}
	plain, err := json.Marshal(sealedPlain{to.Workspace, secretID, version, value})
	if err != nil {
		return nil, fmt.Errorf("protocol: encoding sealed value: %w", err)
	}
	r.Sealed, err = s.fast.seal(s.curve, plain, to.CurveKey)
	clear(plain)
	if err != nil {
		return nil, fmt.Errorf("protocol: sealing for workspace %s: %w", to.Workspace, err)
	}
	return &r, nil
}

// Delete makes a signed tombstone: the workspace no longer has the secret.
func (s *Sealer) Delete(workspace, secretID, name string, version uint64, scope Scope, now time.Time) ([]byte, error) {
	r, err := deleteRecord(workspace, secretID, name, version, scope, now)
	if err != nil {
		return nil, err
	}
	return s.sign1(r)
}

// deleteRecord makes the record of a tombstone, not signed.
func deleteRecord(workspace, secretID, name string, version uint64, scope Scope, now time.Time) (*Record, error) {
	r := Record{Format: FormatVersion, Workspace: workspace, SecretID: secretID, Name: name,
		Op: OpDelete, Version: version, Scope: scope, IssuedAt: now.UTC()}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

type envelope struct {
	V   int    `json:"v"`
	Rec string `json:"rec"`
	Sig string `json:"sig"`
	// A batch record's proof (batch.go): all four or none.
	Idx  *uint64  `json:"idx,omitempty"`
	N    *uint64  `json:"n,omitempty"`
	Salt string   `json:"salt,omitempty"`
	Path []string `json:"path,omitempty"`
}

// proofMembers are the envelope members of a batch record's proof.
var proofMembers = []string{"idx", "n", "salt", "path"}

var b64 = base64.RawURLEncoding

// decodeB64 decodes s and refuses any encoding but the one b64 writes:
// non-zero padding bits in the last character and line breaks (which the
// base64 package skips) would give one record several encodings.
func decodeB64(s string) ([]byte, error) {
	out, err := b64.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if b64.EncodedLen(len(out)) != len(s) {
		return nil, errors.New("base64 with line breaks")
	}
	return out, nil
}

// members parses data as exactly one JSON object whose member names are all
// in names and returns its members. It refuses what encoding/json alone lets
// through: a name that matches only without regard to case, a member given
// twice (json keeps the last), a null member (json leaves the field as it
// was), and anything after the object (Decoder.More is false before a
// trailing "}" or "]"). Its errors never quote a member's value.
func members(data []byte, names ...string) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	m := make(map[string]json.RawMessage, len(names))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("not JSON")
		}
		name, _ := tok.(string)
		if !slices.Contains(names, name) {
			return nil, fmt.Errorf("unknown member %q", printable(name))
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("member %q given twice", name)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, errors.New("not JSON")
		}
		if string(raw) == "null" {
			return nil, fmt.Errorf("member %q is null", name)
		}
		m[name] = raw
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errors.New("not JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return m, nil
}

// require reports the first of names missing from m.
func require(m map[string]json.RawMessage, names ...string) error {
	for _, n := range names {
		if _, ok := m[n]; !ok {
			return fmt.Errorf("member %q missing", n)
		}
	}
	return nil
}

// decodeEnvelope parses the outer, unsigned layer of a record. An attacker
// who can write to the bucket controls these bytes, so the parse is exact:
// one encoding per signed record. A batch record's proof comes back as pr,
// nil for the single form.
func decodeEnvelope(data []byte) (env envelope, rec, sig []byte, pr *proof, err error) {
	m, err := members(data, "v", "rec", "sig", "idx", "n", "salt", "path")
	if err == nil {
		err = require(m, "v", "rec", "sig")
	}
	batch := false
	for _, n := range proofMembers {
		_, ok := m[n]
		batch = batch || ok
	}
	if err == nil && batch {
		err = require(m, proofMembers...)
	}
	if err != nil {
		return env, nil, nil, nil, fmt.Errorf("%w: envelope: %v", ErrMalformed, err)
	}
	if json.Unmarshal(m["v"], &env.V) != nil || json.Unmarshal(m["rec"], &env.Rec) != nil || json.Unmarshal(m["sig"], &env.Sig) != nil ||
		batch && (json.Unmarshal(m["idx"], &env.Idx) != nil || json.Unmarshal(m["n"], &env.N) != nil ||
			json.Unmarshal(m["salt"], &env.Salt) != nil || json.Unmarshal(m["path"], &env.Path) != nil) {
		return env, nil, nil, nil, fmt.Errorf("%w: envelope: a member has the wrong type", ErrMalformed)
	}
	if env.V != FormatVersion {
		return env, nil, nil, nil, fmt.Errorf("%w: %d", ErrUnknownFormat, env.V)
	}
	rec, err1 := decodeB64(env.Rec)
	sig, err2 := decodeB64(env.Sig)
	if err1 != nil || err2 != nil {
		return env, nil, nil, nil, fmt.Errorf("%w: bad base64", ErrMalformed)
	}
	if batch {
		if pr, err = decodeProof(&env); err != nil {
			return env, nil, nil, nil, fmt.Errorf("%w: envelope: %v", ErrMalformed, err)
		}
	}
	return env, rec, sig, pr, nil
}

// decodeProof reads and checks the proof members of a batch envelope.
func decodeProof(env *envelope) (*proof, error) {
	if env.Idx == nil || env.N == nil || env.Path == nil {
		return nil, errors.New("a proof member is null")
	}
	p := &proof{idx: *env.Idx, n: *env.N}
	if len(env.Path) > MaxBatchPath {
		// Before decoding them: the envelope bounds the count anyway.
		return nil, fmt.Errorf("audit path of %d hashes: limit %d", len(env.Path), MaxBatchPath)
	}
	salt, err := decodeB64(env.Salt)
	if err != nil {
		return nil, errors.New("salt: bad base64")
	}
	if len(salt) != saltSize {
		return nil, fmt.Errorf("salt of %d bytes, not %d", len(salt), saltSize)
	}
	copy(p.salt[:], salt)
	p.path = make([]hash, len(env.Path))
	for i, s := range env.Path {
		h, err := decodeB64(s)
		if err != nil {
			return nil, fmt.Errorf("audit path hash %d: bad base64", i+1)
		}
		if len(h) != len(hash{}) {
			return nil, fmt.Errorf("audit path hash %d of %d bytes, not %d", i+1, len(h), len(hash{}))
		}
		copy(p.path[i][:], h)
	}
	if err := checkProof(p); err != nil {
		return nil, err
	}
	return p, nil
}

// decodeRecord parses the signed record. Its bytes are the signer's, but the
// parse is as strict as the envelope's so that a signed record has one
// meaning whatever reads it.
func decodeRecord(rec []byte) (Record, error) {
	var r Record
	m, err := members(rec, "v", "ws", "id", "name", "op", "ver", "scope", "iat", "sealed")
	if err == nil {
		err = require(m, "v", "ws", "id", "name", "op", "ver", "scope", "iat")
	}
	if err == nil {
		var sm map[string]json.RawMessage
		if sm, err = members(m["scope"], "kind", "id"); err == nil {
			err = require(sm, "kind", "id")
		}
	}
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(rec))
		dec.DisallowUnknownFields()
		if dec.Decode(&r) != nil {
			err = errors.New("a member has the wrong type")
		}
	}
	if err != nil {
		return Record{}, fmt.Errorf("%w: signed record: %v", ErrMalformed, err)
	}
	return r, nil
}

// decodeSealed parses the opened box. It may hold a value, so no error
// quotes it or a json error about it.
func decodeSealed(plain []byte) (sealedPlain, error) {
	var p sealedPlain
	m, err := members(plain, "ws", "id", "ver", "val")
	defer func() {
		for _, raw := range m {
			clear(raw)
		}
	}()
	if err == nil {
		err = require(m, "ws", "id", "ver", "val")
	}
	if err == nil && json.Unmarshal(plain, &p) != nil {
		err = errors.New("wrong type")
	}
	if err != nil {
		clear(p.Value)
		return sealedPlain{}, fmt.Errorf("%w: sealed value is not JSON of the sealed form", ErrMalformed)
	}
	return p, nil
}

func (s *Sealer) sign1(r *Record) ([]byte, error) {
	rec, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("protocol: encoding record: %w", err)
	}
	return s.signRec(rec)
}

// signRec signs the record's bytes in the single form.
func (s *Sealer) signRec(rec []byte) ([]byte, error) {
	sig, err := s.fast.sign(s.sign, append([]byte(signingDomain), rec...))
	if err != nil {
		return nil, fmt.Errorf("protocol: signing record: %w", err)
	}
	out := appendEnvelope(nil, FormatVersion, rec, sig)
	if len(out) > MaxRecordSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(out), MaxRecordSize)
	}
	return out, nil
}

// validate checks the fields every record must have, whoever made it.
func (r *Record) validate() error {
	if r.Format != FormatVersion {
		return fmt.Errorf("%w: %d", ErrUnknownFormat, r.Format)
	}
	if err := ValidateID(r.Workspace); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if err := ValidateID(r.SecretID); err != nil {
		return fmt.Errorf("secret id: %w", err)
	}
	if err := ValidateName(r.Name); err != nil {
		return err
	}
	if err := r.Scope.Validate(); err != nil {
		return fmt.Errorf("scope: %w", err)
	}
	if r.Version == 0 {
		return fmt.Errorf("%w: version 0", ErrMalformed)
	}
	switch r.Op {
	case OpPut:
	case OpDelete:
		if len(r.Sealed) != 0 {
			return fmt.Errorf("%w: delete carries a value", ErrMalformed)
		}
	default:
		return fmt.Errorf("%w: unknown op %q", ErrMalformed, printable(string(r.Op)))
	}
	return nil
}

// Opener reads records: a workspace agent's side.
type Opener struct {
	workspace string
	signers   []nkeys.KeyPair
	sealerKey string
	curve     nkeys.KeyPair
	shared    *[32]byte // box key of curve and sealerKey (fastseal.go); nil: nkeys' Open
}

// NewOpener returns an Opener for workspace that accepts records signed by
// any of signers (pinned public nkeys of the service; more than one allows a
// key rotation), sealed by the service's curve public key sealerKey, and
// opens them with the workspace's curve key.
func NewOpener(workspace string, signers []string, sealerKey string, curve nkeys.KeyPair) (*Opener, error) {
	if curve == nil || !canSeal(curve) {
		return nil, errors.New("protocol: workspace key is not a curve key with a seed")
	}
	o, err := NewVerifier(workspace, signers)
	if err != nil {
		return nil, err
	}
	if !nkeys.IsValidPublicCurveKey(sealerKey) {
		return nil, fmt.Errorf("protocol: pinned sealing key is not a curve public nkey%s", seedHint(sealerKey))
	}
	o.sealerKey, o.curve = sealerKey, curve
	o.shared = openerSharedKey(curve, sealerKey)
	return o, nil
}

// ErrVerifyOnly is Open on an Opener made by NewVerifier.
var ErrVerifyOnly = errors.New("protocol: verify-only opener has no workspace key")

// NewVerifier returns an Opener that can Verify records of workspace signed
// by any of signers but cannot Open values: what the secrets service uses to
// read back the versions of records it wrote.
func NewVerifier(workspace string, signers []string) (*Opener, error) {
	if err := ValidateID(workspace); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if len(signers) == 0 {
		return nil, errors.New("protocol: no pinned signing key")
	}
	o := &Opener{workspace: workspace}
	// The errors below never quote a key: a seed pinned by mistake would
	// end up in a log.
	for i, pub := range signers {
		kp, err := nkeys.FromPublicKey(pub)
		if err != nil || nkeys.IsValidPublicCurveKey(pub) {
			return nil, fmt.Errorf("protocol: pinned signing key %d is not an ed25519 public nkey%s", i+1, seedHint(pub))
		}
		o.signers = append(o.signers, kp)
	}
	return o, nil
}

// seedHint says so when a key that should be public looks like a seed.
func seedHint(key string) string {
	if strings.HasPrefix(key, "S") {
		return " (it looks like a seed: pin the public key)"
	}
	return ""
}

// SignerKeys returns the pinned public signing keys.
func (o *Opener) SignerKeys() []string {
	out := make([]string, 0, len(o.signers))
	for _, kp := range o.signers {
		if pub, err := kp.PublicKey(); err == nil {
			out = append(out, pub)
		}
	}
	return out
}

// Workspace returns the workspace whose records the Opener accepts.
func (o *Opener) Workspace() string { return o.workspace }

// Verify checks a record stored under key and returns it without opening its
// value. It checks, in order: size, envelope, format version, signature
// (of a batch record: its audit path to a root, and the signature of that
// root; batch.go), record fields, workspace, key.
//
// Verify is stateless: a signed record stays valid, so whoever can write to
// the bucket can put an older record for the same key back. The caller keeps
// the highest Version it has applied per key and ignores anything not newer.
func (o *Opener) Verify(key string, data []byte) (*Record, error) {
	if len(data) > MaxRecordSize {
		return nil, fmt.Errorf("record %s: %w: %d bytes, limit %d", printable(key), ErrTooLarge, len(data), MaxRecordSize)
	}
	v, signed, sig, pr, err := readEnvelope(data)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", printable(key), err)
	}
	msg := signed
	if pr != nil {
		// A batch record: the signature covers the root its path leads to.
		root, err := pr.root(leafHash(&pr.salt, signed))
		if err != nil {
			return nil, fmt.Errorf("record %s: %w: %v", printable(key), ErrBadSignature, err)
		}
		msg = rootMessage(&root, pr.n)
	}
	ok := false
	for _, kp := range o.signers {
		if kp.Verify(msg, sig) == nil {
			ok = true
			break
		}
	}
	if !ok {
		return nil, fmt.Errorf("record %s: %w", printable(key), ErrBadSignature)
	}
	r, err := readRecord(signed[len(signingDomain):])
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", printable(key), err)
	}
	if r.Format != v {
		return nil, fmt.Errorf("record %s: %w: envelope says %d, record %d", printable(key), ErrUnknownFormat, v, r.Format)
	}
	if r.Workspace != o.workspace {
		return nil, fmt.Errorf("record %s: %w: for %q, this is %q", printable(key), ErrWrongWorkspace, printable(r.Workspace), o.workspace)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("record %s: %w", printable(key), err)
	}
	if r.Op == OpPut && len(r.Sealed) == 0 {
		return nil, fmt.Errorf("record %s: %w: put carries no value", printable(key), ErrMalformed)
	}
	if key != r.Key() {
		return nil, fmt.Errorf("record %s: %w: record claims %s", printable(key), ErrKeyMismatch, r.Key())
	}
	return &r, nil
}

// Open verifies a record stored under key (see Verify) and, for a put,
// opens its value and checks that the value was sealed for this record.
func (o *Opener) Open(key string, data []byte) (*Secret, error) {
	if o.curve == nil {
		return nil, ErrVerifyOnly
	}
	r, err := o.Verify(key, data)
	if err != nil {
		return nil, err
	}
	s := &Secret{Record: *r}
	if r.Op == OpDelete {
		return s, nil
	}
	var plain []byte
	if o.shared != nil {
		plain, err = openPrecomputed(r.Sealed, o.shared)
	} else {
		plain, err = o.curve.Open(r.Sealed, o.sealerKey)
	}
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", key, ErrCannotOpen)
	}
	p, err := readSealed(plain)
	clear(plain)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	if p.Workspace != r.Workspace || p.SecretID != r.SecretID || p.Version != r.Version {
		clear(p.Value)
		return nil, fmt.Errorf("record %s: %w", key, ErrBindingMismatch)
	}
	if err := ValidateValue(p.Value); err != nil {
		clear(p.Value)
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	s.Value = Value(p.Value)
	return s, nil
}
