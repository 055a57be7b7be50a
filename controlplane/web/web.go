package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

//go:embed templates/*.html static/*
var assets embed.FS

//go:embed openapi.json
var openAPI []byte

// OpenAPI is the API's OpenAPI 3 document (also served at
// <base>/api/v1/openapi.json).
func OpenAPI() []byte { return slices.Clone(openAPI) }

// Options configure a Server.
type Options struct {
	// Service carries out the operations. Required, started.
	Service *controlplane.Service
	// Auth says who sends each request. Required: without an identity
	// source there is no UI.
	Auth Authenticator
	// BasePath is where the UI and API are mounted, "/" or "/prefix/"
	// (a missing trailing slash is added). "" means "/".
	BasePath string
	// Rollout, when set, feeds the live rollout view from the agents'
	// status messages. Nil: the view shows who receives a secret only.
	Rollout *Rollout
	// Logger receives request refusals (route, user, code; never a
	// value). Nil discards.
	Logger hclog.Logger
}

// Server is the HTTP API and the web UI. It is an http.Handler.
type Server struct {
	svc     *controlplane.Service
	auth    Authenticator
	base    string
	rollout *Rollout
	log     hclog.Logger
	mux     *http.ServeMux
	routes  []route
	pages   *pages

	closeOnce sync.Once
	closed    chan struct{} // Close ends the event streams
}

// Close ends the rollout event streams, which http.Server.Shutdown would
// otherwise wait for. Call it before Shutdown.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
}

// route is one registered handler: the OpenAPI test checks the API's.
type route struct {
	method, pattern string // pattern relative to the base path, "{id}" style
	api             bool
}

// maxBody bounds a request body: a value of protocol.MaxValueSize, JSON
// escaped (up to 6 bytes a byte), plus the rest.
const maxBody = 6*protocol.MaxValueSize + 4096

// New returns the Server of opts.
func New(opts Options) (*Server, error) {
	if opts.Service == nil {
		return nil, errors.New("web: no service")
	}
	if opts.Auth == nil {
		return nil, errors.New("web: no identity source: the UI stays off")
	}
	base := opts.BasePath
	if base == "" {
		base = "/"
	}
	if !strings.HasPrefix(base, "/") || strings.ContainsAny(base, "{}?#* ") {
		return nil, fmt.Errorf("web: base path %q must start with / and hold no pattern characters", base)
	}
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	s := &Server{svc: opts.Service, auth: opts.Auth, base: base, rollout: opts.Rollout, log: opts.Logger, mux: http.NewServeMux(),
		closed: make(chan struct{})}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	s.log = s.log.Named("web")
	p, err := newPages(s)
	if err != nil {
		return nil, err
	}
	s.pages = p
	s.apiRoutes()
	s.uiRoutes()
	return s, nil
}

// handle registers h for method and pattern (relative to the base path).
func (s *Server) handle(method, pattern string, api bool, h http.HandlerFunc) {
	s.routes = append(s.routes, route{method: method, pattern: pattern, api: api})
	full := s.base + strings.TrimPrefix(pattern, "/")
	if pattern == "/" {
		full = s.base + "{$}"
	}
	s.mux.HandleFunc(method+" "+full, h)
}

// APIRoutes lists the API's routes as "METHOD /api/v1/...", for the test
// that holds them to the OpenAPI document.
func (s *Server) APIRoutes() []string {
	var out []string
	for _, r := range s.routes {
		if r.api {
			out = append(out, r.method+" "+r.pattern)
		}
	}
	return out
}

// ServeHTTP sets the security headers of every reply and serves the route.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// same-origin, not no-referrer: under no-referrer a browser sends
	// "Origin: null" with a form's POST, which checkCSRF refuses.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

// Base is the base path, with its trailing slash.
func (s *Server) Base() string { return s.base }

// --- errors

// apiError is the JSON of every refusal: {"error":{"code":..,"message":..}}.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	status  int
}

func (e *apiError) Error() string { return e.Message }

// Stable error codes and their statuses.
var errorStatus = map[string]int{
	"invalid_name":    http.StatusBadRequest,
	"invalid_value":   http.StatusBadRequest,
	"invalid":         http.StatusBadRequest,
	"unauthenticated": http.StatusUnauthorized,
	"csrf":            http.StatusForbidden,
	"forbidden":       http.StatusForbidden,
	"not_found":       http.StatusNotFound,
	"exists":          http.StatusConflict,
	"conflict":        http.StatusConflict,
	"ambiguous":       http.StatusConflict,
	"too_large":       http.StatusRequestEntityTooLarge,
	"unavailable":     http.StatusServiceUnavailable,
	"internal":        http.StatusInternalServerError,
}

func newError(code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...), status: errorStatus[code]}
}

// toAPIError maps an operation's error to its code and status.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	code := controlplane.ErrorCode(err)
	switch {
	case errors.Is(err, protocol.ErrValueTooLarge):
		code = "too_large"
	case errors.Is(err, protocol.ErrInvalidName), errors.Is(err, protocol.ErrForbiddenName):
		code = "invalid_name"
	case errors.Is(err, protocol.ErrNULInValue), errors.Is(err, protocol.ErrInvalidValue):
		code = "invalid_value"
	}
	status, ok := errorStatus[code]
	if !ok {
		code, status = "internal", http.StatusInternalServerError
	}
	msg := err.Error()
	if code == "internal" {
		msg = "internal error (see the service's log)"
	}
	return &apiError{Code: code, Message: strings.TrimPrefix(msg, "controlplane: "), status: status}
}

// --- the operations, shared by the API and the pages

// find returns the secret id as the caller's list shows it.
func find(ctx context.Context, c *controlplane.Caller, id string) (*controlplane.SecretInfo, error) {
	if protocol.ValidateID(id) != nil {
		return nil, newError("not_found", "no secret %q", printable(id))
	}
	list, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	for i := range list {
		if list[i].ID == id {
			return &list[i], nil
		}
	}
	return nil, newError("not_found", "no secret %q among those %s can see", id, c.User())
}

// addressOf is how the operations name info: its name, in its project. A
// secret seen only through a community share whose name one of the
// caller's own secrets also has cannot be named without reaching that one.
func addressOf(info *controlplane.SecretInfo) (controlplane.Args, error) {
	a := controlplane.Args{Name: info.Name}
	switch {
	case info.Via != "" && info.ShadowedBy != nil && info.ShadowedBy.Kind != protocol.ScopeCommunity:
		return a, newError("conflict", "%q reaches you through community %s, and your secret in %s has the same name: act on that one, or rename it first",
			info.Name, info.Via, info.ShadowedBy)
	case info.Via == "" && info.Scope.Kind == protocol.ScopeProject:
		a.In = info.Scope.ID
	}
	return a, nil
}

// checkVersion refuses a change based on a version that is no longer the
// secret's (want 0: no check).
func checkVersion(info *controlplane.SecretInfo, want uint64) error {
	if want != 0 && want != info.Version {
		return newError("conflict", "%q changed meanwhile: version %d, not %d; reload and try again", info.Name, info.Version, want)
	}
	return nil
}

// changeArgs are the parameters of update and clone.
type changeArgs struct {
	Name    string // update: "" keeps the name
	Value   []byte // nil: keep (update) or copy (clone)
	Project string // clone: the copy's project, "" = private
	Version uint64 // update, delete: the version the change is based on, 0 = any
}

func (s *Server) update(ctx context.Context, c *controlplane.Caller, id string, ch changeArgs) (*controlplane.SecretInfo, error) {
	info, err := find(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(info, ch.Version); err != nil {
		return nil, err
	}
	a, err := addressOf(info)
	if err != nil {
		return nil, err
	}
	if ch.Name != "" && ch.Name != info.Name {
		a.NewName = ch.Name
	}
	return c.Update(ctx, a, ch.Value)
}

func (s *Server) remove(ctx context.Context, c *controlplane.Caller, id string, version uint64) (*controlplane.SecretInfo, error) {
	info, err := find(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(info, version); err != nil {
		return nil, err
	}
	a, err := addressOf(info)
	if err != nil {
		return nil, err
	}
	return c.Delete(ctx, a)
}

func (s *Server) clone(ctx context.Context, c *controlplane.Caller, id string, ch changeArgs) (*controlplane.SecretInfo, error) {
	info, err := find(ctx, c, id)
	if err != nil {
		return nil, err
	}
	a, err := addressOf(info)
	if err != nil {
		return nil, err
	}
	a.NewName, a.Project = ch.Name, ch.Project
	return c.Clone(ctx, a, ch.Value)
}

func (s *Server) setShared(ctx context.Context, c *controlplane.Caller, id, community string, on bool) (*controlplane.SecretInfo, error) {
	info, err := find(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if !on {
		if !slices.Contains(info.Communities, community) {
			if protocol.ValidateID(community) != nil {
				return nil, newError("invalid", "community: %v", protocol.ValidateID(community))
			}
			return info, nil // not shared: nothing to withdraw
		}
		return c.Unshare(ctx, controlplane.Args{Name: info.Name, Community: community})
	}
	a, err := addressOf(info)
	if err != nil {
		return nil, err
	}
	a.Community = community
	return c.Share(ctx, a)
}

// caller authenticates r and returns its operations; for a state-changing
// request it checks the CSRF token (csrf, from the header or the form).
func (s *Server) caller(r *http.Request, csrf string) (*controlplane.Caller, Identity, error) {
	id, err := s.auth.Authenticate(r)
	if err != nil {
		return nil, id, newError("unauthenticated", "not logged in: open the URL that nbsecrets ui prints")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := checkCSRF(r, id, csrf); err != nil {
			s.log.Warn("request refused", "route", r.Pattern, "user", id.User, "code", "csrf", "reason", err.Error())
			return nil, id, newError("csrf", "request refused: %v", err)
		}
	}
	c, err := s.svc.As(id.User)
	if err != nil {
		return nil, id, err
	}
	return c, id, nil
}

// printable shortens and cleans a string from a request for an error.
func printable(v string) string {
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return strconv.QuoteToASCII(v)[1 : len(strconv.QuoteToASCII(v))-1]
}

// writeJSON writes v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func staticFS() fs.FS {
	sub, _ := fs.Sub(assets, "static")
	return sub
}
