package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// Authenticator says who sends a request. Identity sources plug in here:
// [DevLogin] under nbsecrets dev, JupyterHub OAuth later. Authenticate
// returns the user id, or an error wrapping ErrNoIdentity when the request
// carries no (valid) identity; the page then asks the user to log in. It
// also returns the CSRF token tied to the caller's session, which every
// state-changing request must carry.
type Authenticator interface {
	Authenticate(r *http.Request) (Identity, error)
}

// Identity is an authenticated caller: a user id of the directory and the
// CSRF token of the session.
type Identity struct {
	User string
	CSRF string
}

// ErrNoIdentity is the error of a request that carries no valid identity.
var ErrNoIdentity = errors.New("web: not logged in")

// LoginHandler is an Authenticator that also logs users in at
// <base>/login: DevLogin. An identity source that logs in elsewhere (an
// OAuth redirect) implements only Authenticator.
type LoginHandler interface {
	Authenticator
	// Login serves GET <base>/login; on success it sets the session and
	// redirects to next.
	Login(w http.ResponseWriter, r *http.Request, secure bool, path, next string)
	// Logout ends the request's session.
	Logout(w http.ResponseWriter, r *http.Request, path string)
}

// SessionCookie is the name of the session cookie.
const SessionCookie = "nbsecrets_session"

// Session and login token lifetimes.
const (
	sessionTTL = 12 * time.Hour
	// LoginTokenTTL bounds how long a login URL works if nobody uses it.
	LoginTokenTTL = 15 * time.Minute
	maxSessions   = 4096
)

// DevLogin is the identity source of nbsecrets dev: one-time login tokens,
// minted by whoever holds the login key (nbsecrets ui reads it from the
// state dir, mode 0600), exchanged at <base>/login?token=... for a session
// cookie (HttpOnly, SameSite=Strict). A token works once and for
// LoginTokenTTL; sessions live in memory for 12 hours.
type DevLogin struct {
	key []byte
	log hclog.Logger
	now func() time.Time

	mu       sync.Mutex
	used     map[string]time.Time // token nonce -> expiry
	sessions map[string]session   // sha256 of the cookie value -> session
}

type session struct {
	user    string
	csrf    string
	expires time.Time
}

// NewDevLogin returns a DevLogin that accepts tokens made with key (at
// least 32 bytes), logging logins and refusals (never a token) to log (nil
// discards). now nil means time.Now.
func NewDevLogin(key []byte, log hclog.Logger, now func() time.Time) (*DevLogin, error) {
	if len(key) < 32 {
		return nil, errors.New("web: login key shorter than 32 bytes")
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &DevLogin{key: append([]byte(nil), key...), log: log, now: now, used: map[string]time.Time{}, sessions: map[string]session{}}, nil
}

// loginClaims are a login token's contents.
type loginClaims struct {
	User    string `json:"u"`
	Expires int64  `json:"exp"` // unix seconds
	Nonce   string `json:"n"`
}

var b64 = base64.RawURLEncoding

// MintLoginToken makes a one-time login token for user with key, valid
// until now+LoginTokenTTL.
func MintLoginToken(key []byte, user string, now time.Time) (string, error) {
	if err := protocol.ValidateID(user); err != nil {
		return "", fmt.Errorf("login token: user: %w", err)
	}
	body, err := json.Marshal(loginClaims{User: user, Expires: now.Add(LoginTokenTTL).Unix(), Nonce: randomToken()})
	if err != nil {
		return "", err
	}
	enc := b64.EncodeToString(body)
	return enc + "." + b64.EncodeToString(mac(key, enc)), nil
}

func mac(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("nbsecrets-login-v1\n" + msg))
	return h.Sum(nil)
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return b64.EncodeToString(b[:])
}

func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return string(h[:])
}

// redeem checks a login token and marks it used.
func (d *DevLogin) redeem(token string) (string, error) {
	enc, sig, ok := strings.Cut(token, ".")
	if !ok || len(token) > 1024 {
		return "", errors.New("malformed login token")
	}
	got, err := b64.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(d.key, enc)) {
		return "", errors.New("login token not signed by this instance's login key")
	}
	raw, err := b64.DecodeString(enc)
	if err != nil {
		return "", errors.New("malformed login token")
	}
	var c loginClaims
	if err := json.Unmarshal(raw, &c); err != nil || c.Nonce == "" {
		return "", errors.New("malformed login token")
	}
	now := d.now()
	exp := time.Unix(c.Expires, 0)
	if now.After(exp) {
		return "", errors.New("login token expired (run nbsecrets ui again)")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for n, t := range d.used {
		if now.After(t) {
			delete(d.used, n)
		}
	}
	if _, ok := d.used[c.Nonce]; ok {
		return "", errors.New("login token already used (run nbsecrets ui again)")
	}
	d.used[c.Nonce] = exp
	return c.User, nil
}

// Login exchanges ?token= for a session cookie.
func (d *DevLogin) Login(w http.ResponseWriter, r *http.Request, secure bool, path, next string) {
	user, err := d.redeem(r.URL.Query().Get("token"))
	if err != nil {
		d.log.Warn("login refused", "reason", err.Error())
		http.Error(w, "login refused: "+err.Error(), http.StatusForbidden)
		return
	}
	cookie := randomToken()
	now := d.now()
	d.mu.Lock()
	for k, s := range d.sessions {
		if now.After(s.expires) {
			delete(d.sessions, k)
		}
	}
	if len(d.sessions) >= maxSessions {
		d.mu.Unlock()
		http.Error(w, "too many sessions", http.StatusServiceUnavailable)
		return
	}
	d.sessions[hashOf(cookie)] = session{user: user, csrf: randomToken(), expires: now.Add(sessionTTL)}
	d.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: cookie, Path: path, HttpOnly: true, Secure: secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(sessionTTL / time.Second)})
	d.log.Info("logged in", "user", user)
	// The redirect leaves the token's URL behind: the next page's
	// Referer, sent to this server only (Referrer-Policy same-origin), is
	// the base path.
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// Logout ends the session and clears the cookie.
func (d *DevLogin) Logout(w http.ResponseWriter, r *http.Request, path string) {
	if c, err := r.Cookie(SessionCookie); err == nil {
		d.mu.Lock()
		delete(d.sessions, hashOf(c.Value))
		d.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: path, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

// Authenticate returns the session's user and CSRF token.
func (d *DevLogin) Authenticate(r *http.Request) (Identity, error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return Identity{}, ErrNoIdentity
	}
	d.mu.Lock()
	s, ok := d.sessions[hashOf(c.Value)]
	d.mu.Unlock()
	if !ok || d.now().After(s.expires) {
		return Identity{}, fmt.Errorf("%w: session unknown or expired", ErrNoIdentity)
	}
	return Identity{User: s.user, CSRF: s.csrf}, nil
}

// checkCSRF refuses a state-changing request whose CSRF token (header
// X-CSRF-Token or form field csrf) does not match the session's, or whose
// Origin (or Sec-Fetch-Site) says it came from another site.
func checkCSRF(r *http.Request, id Identity, token string) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("request from another site (Sec-Fetch-Site %s)", site)
	}
	if o := r.Header.Get("Origin"); o != "" {
		want := "http://" + r.Host
		if r.TLS != nil {
			want = "https://" + r.Host
		}
		if o != want {
			return fmt.Errorf("request from origin %q, not %q", o, want)
		}
	}
	if token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(id.CSRF)) != 1 {
		return errors.New("missing or wrong CSRF token")
	}
	return nil
}
