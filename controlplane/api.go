package controlplane

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// SubjectPrefix starts every API subject: a request for operation op is
// sent to SubjectPrefix+op ("nbsecrets.api.v1.create", ...).
const SubjectPrefix = "nbsecrets.api.v1."

// The operations, each the last token of its subject.
const (
	opCreate  = "create"
	opUpdate  = "update"
	opDelete  = "delete"
	opList    = "list"
	opClone   = "clone"
	opShare   = "share"
	opUnshare = "unshare"
)

// MaxClockSkew is how far a request's timestamp may be from the service's
// clock, either way. The service remembers each nonce for as long.
const MaxClockSkew = 2 * time.Minute

// maxRequestSize bounds a request: a sealed value of MaxValueSize, base64
// twice, plus the envelope.
const maxRequestSize = 192 << 10

// requestDomain separates request signatures from any other use of a user's
// key.
const requestDomain = "nbsecrets-api-v1\n"

// A request on the wire is JSON:
//
//	{"v":1,"req":"<base64url of the request body JSON>","sig":"<base64url ed25519 signature>"}
//
// The signature is the user's nkey over requestDomain followed by the exact
// body bytes.
type requestEnvelope struct {
	V   int    `json:"v"`
	Req string `json:"req"`
	Sig string `json:"sig"`
}

// requestBody is what a user signs.
type requestBody struct {
	Op    string    `json:"op"`   // must match the subject's last token
	User  string    `json:"user"` // who signs
	Time  time.Time `json:"ts"`
	Nonce string    `json:"nonce"` // random, never reused
	// Deadline is when the client gives up waiting for the reply (zero:
	// none said). The service makes no change after it: a request that
	// was held up (a NATS node lost under it) and finishes after its
	// client has moved on must not land on top of a newer change.
	Deadline time.Time `json:"deadline,omitzero"`
	Name     string    `json:"name,omitempty"`
	// Project is, for create and clone, the project of the new secret ("" =
	// private to the caller).
	Project string `json:"project,omitempty"`
	// In picks the secret called Name in this project instead of resolving
	// the name by precedence (the caller's own first).
	In string `json:"in,omitempty"`
	// NewName is, for update, the secret's new name ("" = keep it) and, for
	// clone, the copy's name.
	NewName string `json:"new_name,omitempty"`
	// Community is the community of share and unshare.
	Community string `json:"community,omitempty"`
	// EphemeralKey is the client's one-time curve public key; Sealed is the
	// value box (sealedValue) from it to the service's curve key. Both are
	// empty when the request carries no value.
	EphemeralKey string `json:"epk,omitempty"`
	Sealed       []byte `json:"sealed,omitempty"`
}

// sealedValue is the plaintext of requestBody.Sealed. A box has no
// associated data, so the value is bound to its request here: a box lifted
// from another user's request does not open as this user's.
type sealedValue struct {
	User  string `json:"user"`
	Nonce string `json:"nonce"`
	Value []byte `json:"val"`
}

// reply is the service's answer: a result or an error.
type reply struct {
	Secret  *SecretInfo  `json:"secret,omitempty"`
	Secrets []SecretInfo `json:"secrets,omitempty"`
	Error   *replyError  `json:"error,omitempty"`
}

type replyError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// SecretInfo describes a secret. It never holds a value.
type SecretInfo struct {
	ID    string         `json:"id"`
	Name  string         `json:"name"`
	Scope protocol.Scope `json:"scope"` // who owns it: user:<id> or project:<id>
	// Version counts the secret's record changes: the user's and those a
	// directory change caused (a workspace losing or gaining it).
	Version   uint64    `json:"version"`
	UpdatedAt time.Time `json:"updated_at"` // the last change a user made
	UpdatedBy string    `json:"updated_by"`
	CreatedBy string    `json:"created_by,omitempty"`
	// Communities are those the secret is shared with.
	Communities []string `json:"communities,omitempty"`
	// Workspaces are those that receive it now.
	Workspaces []string `json:"workspaces,omitempty"`
	// In a list: whether the caller may change it, the community share
	// through which the caller sees it when it is not in one of the
	// caller's own scopes, and the scope of a same-named secret that wins
	// over it in the caller's workspaces (private over project over
	// community).
	Editable   bool            `json:"editable"`
	Via        string          `json:"via,omitempty"`
	ShadowedBy *protocol.Scope `json:"shadowed_by,omitempty"`
	// In the reply to a create, clone or rename: the scopes of same-named
	// secrets that this one now hides in some of the workspaces it reaches
	// (private over project over community).
	Hides []protocol.Scope `json:"hides,omitempty"`
}

// CreateOptions are the choices of a create. The zero value makes a secret
// private to the caller.
type CreateOptions struct {
	// Project shares the secret with a project the caller is a member of;
	// "" keeps it private.
	Project string
}

var b64 = base64.RawURLEncoding

// newNonce returns 16 random bytes, base64url.
func newNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return b64.EncodeToString(b[:])
}

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}
