package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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
}

// NewSealer returns a Sealer that signs with sign (any ed25519 nkey with a
// seed) and seals with curve (a curve nkey with a seed).
func NewSealer(sign, curve nkeys.KeyPair) (*Sealer, error) {
	if _, err := sign.Sign([]byte("probe")); err != nil {
		return nil, fmt.Errorf("protocol: signing key cannot sign: %w", err)
	}
	if pub, err := curve.PublicKey(); err != nil || !strings.HasPrefix(pub, "X") {
		return nil, errors.New("protocol: sealing key is not a curve key")
	}
	return &Sealer{sign: sign, curve: curve}, nil
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
	r.Sealed, err = s.curve.Seal(plain, to.CurveKey)
	clear(plain)
	if err != nil {
		return nil, fmt.Errorf("protocol: sealing for workspace %s: %w", to.Workspace, err)
	}
	return s.sign1(&r)
}

// Delete makes a signed tombstone: the workspace no longer has the secret.
func (s *Sealer) Delete(workspace, secretID, name string, version uint64, scope Scope, now time.Time) ([]byte, error) {
	r := Record{Format: FormatVersion, Workspace: workspace, SecretID: secretID, Name: name,
		Op: OpDelete, Version: version, Scope: scope, IssuedAt: now.UTC()}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return s.sign1(&r)
}

type envelope struct {
	V   int    `json:"v"`
	Rec string `json:"rec"`
	Sig string `json:"sig"`
}

var b64 = base64.RawURLEncoding

func (s *Sealer) sign1(r *Record) ([]byte, error) {
	rec, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("protocol: encoding record: %w", err)
	}
	sig, err := s.sign.Sign(append([]byte(signingDomain), rec...))
	if err != nil {
		return nil, fmt.Errorf("protocol: signing record: %w", err)
	}
	out, err := json.Marshal(envelope{V: FormatVersion, Rec: b64.EncodeToString(rec), Sig: b64.EncodeToString(sig)})
	if err != nil {
		return nil, fmt.Errorf("protocol: encoding envelope: %w", err)
	}
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
}

// NewOpener returns an Opener for workspace that accepts records signed by
// any of signers (pinned public nkeys of the service; more than one allows a
// key rotation), sealed by the service's curve public key sealerKey, and
// opens them with the workspace's curve key.
func NewOpener(workspace string, signers []string, sealerKey string, curve nkeys.KeyPair) (*Opener, error) {
	if err := ValidateID(workspace); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if len(signers) == 0 {
		return nil, errors.New("protocol: no pinned signing key")
	}
	o := &Opener{workspace: workspace, sealerKey: sealerKey, curve: curve}
	for _, pub := range signers {
		kp, err := nkeys.FromPublicKey(pub)
		if err != nil || strings.HasPrefix(pub, "X") {
			return nil, fmt.Errorf("protocol: pinned signing key %q is not an ed25519 public nkey", printable(pub))
		}
		o.signers = append(o.signers, kp)
	}
	if !strings.HasPrefix(sealerKey, "X") {
		return nil, fmt.Errorf("protocol: pinned sealing key %q is not a curve public key", printable(sealerKey))
	}
	return o, nil
}

// Verify checks a record stored under key and returns it without opening its
// value. It checks, in order: size, envelope, format version, signature,
// record fields, workspace, key.
func (o *Opener) Verify(key string, data []byte) (*Record, error) {
	if len(data) > MaxRecordSize {
		return nil, fmt.Errorf("record %s: %w: %d bytes, limit %d", printable(key), ErrTooLarge, len(data), MaxRecordSize)
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil || dec.More() {
		return nil, fmt.Errorf("record %s: %w: envelope is not JSON of the record form", printable(key), ErrMalformed)
	}
	if env.V != FormatVersion {
		return nil, fmt.Errorf("record %s: %w: %d", printable(key), ErrUnknownFormat, env.V)
	}
	rec, err1 := b64.DecodeString(env.Rec)
	sig, err2 := b64.DecodeString(env.Sig)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("record %s: %w: bad base64", printable(key), ErrMalformed)
	}
	signed := append([]byte(signingDomain), rec...)
	ok := false
	for _, kp := range o.signers {
		if kp.Verify(signed, sig) == nil {
			ok = true
			break
		}
	}
	if !ok {
		return nil, fmt.Errorf("record %s: %w", printable(key), ErrBadSignature)
	}
	var r Record
	dec = json.NewDecoder(bytes.NewReader(rec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || dec.More() {
		return nil, fmt.Errorf("record %s: %w: signed record is not JSON of the record form", printable(key), ErrMalformed)
	}
	if r.Format != env.V {
		return nil, fmt.Errorf("record %s: %w: envelope says %d, record %d", printable(key), ErrUnknownFormat, env.V, r.Format)
	}
	if r.Workspace != o.workspace {
		return nil, fmt.Errorf("record %s: %w: for %q, this is %q", printable(key), ErrWrongWorkspace, printable(r.Workspace), o.workspace)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("record %s: %w", printable(key), err)
	}
	if key != r.Key() {
		return nil, fmt.Errorf("record %s: %w: record claims %s", printable(key), ErrKeyMismatch, r.Key())
	}
	return &r, nil
}

// Open verifies a record stored under key (see Verify) and, for a put,
// opens its value and checks that the value was sealed for this record.
func (o *Opener) Open(key string, data []byte) (*Secret, error) {
	r, err := o.Verify(key, data)
	if err != nil {
		return nil, err
	}
	s := &Secret{Record: *r}
	if r.Op == OpDelete {
		return s, nil
	}
	plain, err := o.curve.Open(r.Sealed, o.sealerKey)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", key, ErrCannotOpen)
	}
	var p sealedPlain
	err = json.Unmarshal(plain, &p)
	clear(plain)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w: sealed value is not JSON of the sealed form", key, ErrMalformed)
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
