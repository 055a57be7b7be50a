package hub

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// RegisterPath is the registration endpoint under the service's prefix.
const RegisterPath = "api/v1/hub/agents"

// RegisterRequest is what an agent sends to RegisterPath, with its
// server's $JUPYTERHUB_API_TOKEN in "Authorization: token ...".
type RegisterRequest struct {
	User     string `json:"user"`      // $JUPYTERHUB_USER
	Server   string `json:"server"`    // $JUPYTERHUB_SERVER_NAME, "" for the default server
	CurveKey string `json:"curve_key"` // the curve public key the agent made at start
	// NATSKey is the NATS user nkey the agent made at start, when the
	// service hands out per-workspace NATS credentials.
	NATSKey string `json:"nats_key,omitempty"`
	// ServerProof is $NBSECRETS_SERVER_PROOF, the hub's proof that the
	// token is the one it gave this server (see ServerProof): needed
	// where the hub's token scopes do not name the server (JupyterHub 3).
	ServerProof string `json:"server_proof,omitempty"`
}

// RegisterReply is the service's answer: where to read records and what
// to check them against.
type RegisterReply struct {
	Workspace       string   `json:"workspace"`
	NATSURL         string   `json:"nats_url"`
	ServiceKeys     []string `json:"service_keys"`
	ServiceCurveKey string   `json:"service_curve_key"`
	Owner           string   `json:"owner"`
	Projects        []string `json:"projects"`
	Communities     []string `json:"communities"`
}

// Registrar serves RegisterPath: it checks the agent's token with the hub,
// requires it to be the token of the user and the server the agent claims
// to serve (the token's server scopes, else the server proof), adds
// the workspace with its curve key to the directory and applies it, and
// only then answers. An agent registers again periodically; the reply
// carries its access as it is then.
type Registrar struct {
	Source *Source
	Client *Client
	// Reply fills in what every agent is told: NATSURL, ServiceKeys,
	// ServiceCurveKey.
	Reply RegisterReply
	// AddNATSUser, when set, gives the workspace's agent a NATS user for
	// its key (per-workspace credentials) before the reply is sent.
	AddNATSUser func(workspace, nkey string) error
	// ProofKey checks server proofs (LoadProofKey). Nil: only a hub that
	// binds server tokens to their server (JupyterHub 4+) can register
	// agents.
	ProofKey []byte
	Logger   hclog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time

	mu       sync.Mutex
	verified map[[32]byte]verifiedReg // sha256(token) -> the registration the hub vouched for
}

// reverifyAfter is how long the hub's word on a token serves the same
// registration again: an agent registers every few seconds, and asking
// the hub each time would cost a large hub a request per agent per
// registration. A registration that differs in anything is checked with
// the hub at once.
const reverifyAfter = 30 * time.Second

// maxVerified bounds the registrations remembered.
const maxVerified = 100000

// verifiedReg is a registration accepted with a token, and when the hub
// vouched for the token.
type verifiedReg struct {
	req RegisterRequest
	at  time.Time
}

// vouched says whether the hub vouched for token with req less than
// reverifyAfter ago.
func (g *Registrar) vouched(token string, req RegisterRequest, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	v, ok := g.verified[sha256.Sum256([]byte(token))]
	return ok && v.req == req && now.Sub(v.at) < reverifyAfter && !now.Before(v.at)
}

// remember records that the hub vouched for token with req at now.
func (g *Registrar) remember(token string, req RegisterRequest, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.verified == nil {
		g.verified = map[[32]byte]verifiedReg{}
	}
	if len(g.verified) >= maxVerified {
		for k, v := range g.verified {
			if now.Sub(v.at) >= reverifyAfter {
				delete(g.verified, k)
			}
		}
		if len(g.verified) >= maxVerified {
			clear(g.verified)
		}
	}
	g.verified[sha256.Sum256([]byte(token))] = verifiedReg{req, now}
}

func (g *Registrar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := g.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	fail := func(status int, code, msg string) {
		if status != http.StatusInternalServerError {
			log.Warn("agent registration refused", "code", code, "reason", msg, "remote", r.RemoteAddr)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	}
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "invalid", "POST only")
		return
	}
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "token") && !strings.EqualFold(scheme, "bearer") || token == "" {
		fail(http.StatusUnauthorized, "unauthenticated", "no hub token: send the server's $JUPYTERHUB_API_TOKEN as \"Authorization: token ...\"")
		return
	}
	var req RegisterRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 8<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(http.StatusBadRequest, "invalid", "malformed registration: "+err.Error())
		return
	}
	now := time.Now()
	if g.Now != nil {
		now = g.Now()
	}
	if g.vouched(token, req, now) {
		g.register(w, r, req, fail, log)
		return
	}
	u, err := g.Client.UserForToken(r.Context(), token)
	if err != nil {
		if errors.Is(err, ErrBadToken) {
			fail(http.StatusUnauthorized, "unauthenticated", "the hub does not accept the token")
			return
		}
		log.Error("asking the hub about an agent's token", "error", err)
		fail(http.StatusServiceUnavailable, "unavailable", "the hub cannot be asked now")
		return
	}
	if u.Name != req.User {
		fail(http.StatusForbidden, "forbidden", fmt.Sprintf("the token is %s's, not %s's", u.Name, printable(req.User)))
		return
	}
	if _, err := WorkspaceID(req.User, req.Server); err != nil {
		fail(http.StatusBadRequest, "invalid", err.Error())
		return
	}
	if err := proveServer(g.ProofKey, u.Name, req.Server, token, u.Scopes, req.ServerProof); err != nil {
		fail(http.StatusForbidden, "forbidden", err.Error())
		return
	}
	if g.register(w, r, req, fail, log) {
		g.remember(token, req, now)
	}
}

// register applies a registration the hub vouched for and answers it; it
// says whether it succeeded.
func (g *Registrar) register(w http.ResponseWriter, r *http.Request, req RegisterRequest, fail func(int, string, string), log hclog.Logger) bool {
	ws, err := WorkspaceID(req.User, req.Server)
	if err != nil {
		fail(http.StatusBadRequest, "invalid", err.Error())
		return false
	}
	if g.AddNATSUser != nil {
		if err := g.AddNATSUser(ws, req.NATSKey); err != nil {
			fail(http.StatusBadRequest, "invalid", "nats_key: "+err.Error())
			return false
		}
	}
	d, err := g.Source.Register(r.Context(), Registration{Workspace: ws, User: req.User, Server: req.Server, CurveKey: req.CurveKey})
	if err != nil {
		if strings.HasPrefix(err.Error(), "curve_key") {
			fail(http.StatusBadRequest, "invalid", err.Error())
			return false
		}
		log.Error("registering a workspace", "workspace", ws, "error", err)
		fail(http.StatusServiceUnavailable, "unavailable", "registration could not be applied now")
		return false
	}
	access, ok := d.AccessOf(ws)
	if !ok {
		fail(http.StatusServiceUnavailable, "unavailable", "the workspace is not in the directory yet")
		return false
	}
	rep := g.Reply
	rep.Workspace, rep.Owner, rep.Projects, rep.Communities = ws, access.Owner, access.Projects, access.Communities
	if rep.Projects == nil {
		rep.Projects = []string{}
	}
	if rep.Communities == nil {
		rep.Communities = []string{}
	}
	log.Debug("agent registered", "workspace", ws, "user", req.User, "server", req.Server)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rep)
	return true
}

// printable shortens a string from a request for an error.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return fmt.Sprintf("%q", s)
}
