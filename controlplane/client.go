package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// defaultTimeout bounds a request whose context has no deadline.
const defaultTimeout = 10 * time.Second

// Client calls the secrets service as one user. Every request is signed
// with the user's nkey and carries a fresh timestamp and nonce; a value is
// sealed to the service's curve key with a one-time curve key, so no value
// crosses NATS in the clear. A Client is safe for concurrent use.
type Client struct {
	nc         *nats.Conn
	user       string
	key        nkeys.KeyPair
	serviceKey string
	now        func() time.Time
}

// NewClient returns a Client that acts as userID, signing with userKey (the
// user's ed25519 nkey with its seed), and seals values to serviceCurveKey
// (the service's curve public key, "X...").
func NewClient(nc *nats.Conn, userID string, userKey nkeys.KeyPair, serviceCurveKey string) *Client {
	return &Client{nc: nc, user: userID, key: userKey, serviceKey: serviceCurveKey, now: time.Now}
}

// Create makes a secret called name with value: private to the caller, or
// shared with opt.Project. It fails with ErrExists when the scope already
// has a secret of that name.
func (c *Client) Create(ctx context.Context, name string, value []byte, opt CreateOptions) (*SecretInfo, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if err := checkValue(value); err != nil {
		return nil, err
	}
	rep, err := c.call(ctx, &requestBody{Op: opCreate, Name: name, Project: opt.Project}, value)
	if err != nil {
		return nil, err
	}
	return rep.secret()
}

// Option changes what an operation acts on. Each option's documentation
// says which operations take it; the others ignore it.
type Option func(*requestBody)

// InProject picks the secret called name in project p (update, delete,
// share; for clone, the source). Default: the name is resolved by
// precedence, the caller's own secret first, then the one project secret
// of that name among the caller's projects (ErrAmbiguous when there are
// several).
func InProject(p string) Option { return func(r *requestBody) { r.In = p } }

// Rename gives the secret a new name in an update. Default: the name stays.
// The secret keeps its id, so workspaces unset the old variable and set the
// new one.
func Rename(newName string) Option { return func(r *requestBody) { r.NewName = newName } }

// ToProject puts a clone in project p. Default: private to the caller.
func ToProject(p string) Option { return func(r *requestBody) { r.Project = p } }

func apply(r *requestBody, opts []Option) *requestBody {
	for _, o := range opts {
		o(r)
	}
	return r
}

// Update gives the secret called name a new value; nil keeps the value
// (and, without Rename, only re-sends it under a new version). Options:
// Rename, InProject.
func (c *Client) Update(ctx context.Context, name string, value []byte, opts ...Option) (*SecretInfo, error) {
	if value != nil {
		if err := checkValue(value); err != nil {
			return nil, err
		}
	}
	req := apply(&requestBody{Op: opUpdate, Name: name}, opts)
	if req.NewName != "" {
		if err := validName(req.NewName); err != nil {
			return nil, err
		}
	}
	rep, err := c.call(ctx, req, value)
	if err != nil {
		return nil, err
	}
	return rep.secret()
}

// Delete destroys the secret called name: every workspace that had it gets
// a signed tombstone. Options: InProject.
func (c *Client) Delete(ctx context.Context, name string, opts ...Option) error {
	_, err := c.call(ctx, apply(&requestBody{Op: opDelete, Name: name}, opts), nil)
	return err
}

// Clone makes newName, an independent copy (a new id) of the secret called
// name, which may be one the caller can only use (shared through a
// community). value is the copy's value; nil copies the source's. Later
// changes to either leave the other alone. Options: ToProject (where the
// copy goes), InProject (where the source is).
func (c *Client) Clone(ctx context.Context, name, newName string, value []byte, opts ...Option) (*SecretInfo, error) {
	if err := validName(newName); err != nil {
		return nil, err
	}
	if value != nil {
		if err := checkValue(value); err != nil {
			return nil, err
		}
	}
	rep, err := c.call(ctx, apply(&requestBody{Op: opClone, Name: name, NewName: newName}, opts), value)
	if err != nil {
		return nil, err
	}
	return rep.secret()
}

// Share shares the secret called name with community: it then reaches
// every workspace of the community's projects. The caller must be an admin
// of the community and allowed to change the secret. Options: InProject.
func (c *Client) Share(ctx context.Context, name, community string, opts ...Option) (*SecretInfo, error) {
	rep, err := c.call(ctx, apply(&requestBody{Op: opShare, Name: name, Community: community}, opts), nil)
	if err != nil {
		return nil, err
	}
	return rep.secret()
}

// Unshare withdraws the secret shared with community under name; only an
// admin of the community may. Workspaces that had it only through the
// share lose it.
func (c *Client) Unshare(ctx context.Context, name, community string) (*SecretInfo, error) {
	rep, err := c.call(ctx, &requestBody{Op: opUnshare, Name: name, Community: community}, nil)
	if err != nil {
		return nil, err
	}
	return rep.secret()
}

// List returns the secrets the caller can see: their own, their projects',
// then those shared with their communities, with who receives each. It
// never returns a value.
func (c *Client) List(ctx context.Context) ([]SecretInfo, error) {
	rep, err := c.call(ctx, &requestBody{Op: opList}, nil)
	if err != nil {
		return nil, err
	}
	return rep.Secrets, nil
}

func (r *reply) secret() (*SecretInfo, error) {
	if r.Secret == nil {
		return nil, fmt.Errorf("%w: reply without a secret", ErrInternal)
	}
	return r.Secret, nil
}

// call signs req, seals value into it when value is not nil, sends it and
// decodes the reply, turning an error reply into its sentinel.
func (c *Client) call(ctx context.Context, req *requestBody, value []byte) (*reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	req.Deadline, _ = ctx.Deadline() // the service changes nothing after it
	data, err := c.encode(req, value)
	if err != nil {
		return nil, err
	}
	subject := SubjectPrefix + req.Op
	msg, err := c.nc.RequestWithContext(ctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w: no secrets service answers on %s", ErrUnavailable, subject)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, fmt.Errorf("%w: no reply on %s in time: %w", ErrUnavailable, subject, err)
	case err != nil:
		return nil, fmt.Errorf("%w: request on %s: %w", ErrUnavailable, subject, err)
	}
	var rep reply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return nil, fmt.Errorf("%w: malformed reply on %s", ErrInternal, subject)
	}
	if rep.Error != nil {
		return nil, fromCode(rep.Error.Code, protocol.SafeText(rep.Error.Message, maxReplyMessage))
	}
	if err := checkReply(&rep); err != nil {
		return nil, fmt.Errorf("%w: malformed reply on %s: %w", ErrInternal, subject, err)
	}
	return &rep, nil
}

// encode fills in the caller, time and nonce of req, seals value into it
// when value is not nil, and signs it.
func (c *Client) encode(req *requestBody, value []byte) ([]byte, error) {
	req.User = c.user
	req.Time = c.now().UTC()
	req.Nonce = newNonce()
	if value != nil {
		if err := c.seal(req, value); err != nil {
			return nil, err
		}
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("controlplane: encoding request: %w", err)
	}
	sig, err := c.key.Sign(append([]byte(requestDomain), raw...))
	if err != nil {
		return nil, fmt.Errorf("controlplane: signing request as %s: %w", c.user, err)
	}
	data, err := json.Marshal(requestEnvelope{V: 1, Req: b64.EncodeToString(raw), Sig: b64.EncodeToString(sig)})
	if err != nil {
		return nil, fmt.Errorf("controlplane: encoding request: %w", err)
	}
	return data, nil
}

// seal boxes value, bound to this request, from a one-time curve key to the
// service's curve key.
func (c *Client) seal(req *requestBody, value []byte) error {
	if !nkeys.IsValidPublicCurveKey(c.serviceKey) {
		return fmt.Errorf("%w: service curve key is not a curve public key (X...)", ErrInvalid)
	}
	eph, err := nkeys.CreateCurveKeys()
	if err != nil {
		return fmt.Errorf("controlplane: one-time key: %w", err)
	}
	defer eph.Wipe()
	if req.EphemeralKey, err = eph.PublicKey(); err != nil {
		return fmt.Errorf("controlplane: one-time key: %w", err)
	}
	plain, err := json.Marshal(sealedValue{User: req.User, Nonce: req.Nonce, Value: value})
	if err != nil {
		return fmt.Errorf("controlplane: encoding value: %w", err)
	}
	defer clear(plain)
	if req.Sealed, err = eph.Seal(plain, c.serviceKey); err != nil {
		return fmt.Errorf("controlplane: sealing value: %w", err)
	}
	return nil
}
