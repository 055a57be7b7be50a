package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// This file is the service's second door: the operations for a transport
// that authenticates its caller itself (the HTTP API of controlplane/web,
// behind a login). The NATS path checks a signed request and calls the same
// operations (create, update, ...) with the user it signed as; here the
// transport vouches for the user. Either way one implementation decides.

// Args are what an operation acts on, as in a signed request body (see the
// package doc): Name the secret (or a new one's name), Project a new
// secret's project ("" = private), In the project to look Name up in ("" =
// by precedence), NewName an update's new name or a clone's name, and
// Community a share's community.
type Args struct {
	Name, Project, In, NewName, Community string
}

// Caller is a user the transport has authenticated, and the operations it
// may ask for. Make one with [Service.As].
type Caller struct {
	s    *Service
	user string
}

// As returns the operations of user, whom the caller has authenticated. It
// fails with ErrUnauthenticated when the directory has no such user.
func (s *Service) As(user string) (*Caller, error) {
	if _, ok := s.dir.Load().users[user]; !ok {
		return nil, fmt.Errorf("%w: unknown user %q", ErrUnauthenticated, printable(user))
	}
	return &Caller{s: s, user: user}, nil
}

// User is the caller's user id.
func (c *Caller) User() string { return c.user }

// do runs one operation as the caller, counted among the service's requests
// in flight (Stop waits for it) and bounded by the service's request
// timeout; it logs refusals as the NATS path does.
func (c *Caller) do(ctx context.Context, op string, a Args, value []byte, fn func(context.Context, *requestBody, []byte) error) error {
	s := c.s
	s.mu.Lock()
	if s.stopped || !s.started {
		s.mu.Unlock()
		return fmt.Errorf("%w: the service is not serving", ErrUnavailable)
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()
	if _, ok := s.dir.Load().users[c.user]; !ok { // the directory may have changed since As
		return fmt.Errorf("%w: unknown user %q", ErrUnauthenticated, printable(c.user))
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	req := &requestBody{Op: op, User: c.user, Name: a.Name, Project: a.Project, In: a.In, NewName: a.NewName, Community: a.Community}
	err := fn(ctx, req, value)
	if err != nil {
		switch code := codeOf(err); code {
		case "unauthenticated", "forbidden":
			s.log.Warn("request refused", "op", op, "user", c.user, "code", code, "error", err, "via", "http")
		case "internal":
			s.log.Error("request failed", "op", op, "user", c.user, "error", err, "via", "http")
		default:
			s.log.Info("request refused", "op", op, "user", c.user, "code", code, "error", err, "via", "http")
		}
	}
	return err
}

func (c *Caller) one(ctx context.Context, op string, a Args, value []byte,
	fn func(*Service, context.Context, *requestBody, []byte) (*SecretInfo, error)) (*SecretInfo, error) {
	var info *SecretInfo
	err := c.do(ctx, op, a, value, func(ctx context.Context, req *requestBody, value []byte) (err error) {
		info, err = fn(c.s, ctx, req, value)
		return err
	})
	return info, err
}

// noValue adapts an operation that takes no value.
func noValue(fn func(*Service, context.Context, *requestBody) (*SecretInfo, error)) func(*Service, context.Context, *requestBody, []byte) (*SecretInfo, error) {
	return func(s *Service, ctx context.Context, req *requestBody, _ []byte) (*SecretInfo, error) {
		return fn(s, ctx, req)
	}
}

// List is the secrets the caller can see (never a value).
func (c *Caller) List(ctx context.Context) ([]SecretInfo, error) {
	var out []SecretInfo
	err := c.do(ctx, opList, Args{}, nil, func(ctx context.Context, req *requestBody, _ []byte) (err error) {
		out, err = c.s.list(ctx, req)
		return err
	})
	return out, err
}

// Create makes secret a.Name with value, private or in a.Project.
func (c *Caller) Create(ctx context.Context, a Args, value []byte) (*SecretInfo, error) {
	return c.one(ctx, opCreate, a, value, (*Service).create)
}

// Update gives secret a.Name (looked up in a.In, or by precedence) value
// when it is not nil and the name a.NewName when it is not "".
func (c *Caller) Update(ctx context.Context, a Args, value []byte) (*SecretInfo, error) {
	return c.one(ctx, opUpdate, a, value, (*Service).update)
}

// Delete deletes secret a.Name.
func (c *Caller) Delete(ctx context.Context, a Args) (*SecretInfo, error) {
	return c.one(ctx, opDelete, a, nil, noValue((*Service).delete))
}

// Clone copies secret a.Name to a new secret a.NewName, private or in
// a.Project, with value, or the source's value when value is nil.
func (c *Caller) Clone(ctx context.Context, a Args, value []byte) (*SecretInfo, error) {
	return c.one(ctx, opClone, a, value, (*Service).clone)
}

// Share shares secret a.Name with community a.Community.
func (c *Caller) Share(ctx context.Context, a Args) (*SecretInfo, error) {
	return c.one(ctx, opShare, a, nil, noValue((*Service).share))
}

// Unshare withdraws secret a.Name, as community a.Community sees it, from
// the community.
func (c *Caller) Unshare(ctx context.Context, a Args) (*SecretInfo, error) {
	return c.one(ctx, opUnshare, a, nil, noValue((*Service).unshare))
}

// Profile is what a page needs to know of its user: the projects they may
// create secrets in and the communities they administer. Sorted.
type Profile struct {
	User        string   `json:"user"`
	Projects    []string `json:"projects"`
	Communities []string `json:"communities_administered"`
}

// Profile returns the caller's projects and the communities they
// administer, under the directory of the moment.
func (c *Caller) Profile() Profile {
	d := c.s.dir.Load()
	p := Profile{User: c.user, Projects: []string{}, Communities: []string{}}
	for _, sc := range d.scopesOf(c.user) {
		if sc.Kind == protocol.ScopeProject {
			p.Projects = append(p.Projects, sc.ID)
		}
	}
	for id, cm := range d.communities {
		if slices.Contains(cm.Admins, c.user) {
			p.Communities = append(p.Communities, id)
		}
	}
	slices.Sort(p.Communities)
	return p
}

// ErrorCode is the stable code of an operation's error, as the NATS replies
// carry it: "not_found", "exists", "unauthenticated", "forbidden",
// "invalid", "ambiguous", "conflict", "unavailable" or "internal".
func ErrorCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	}
	return codeOf(err)
}
