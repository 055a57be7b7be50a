package hub

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/controlplane/web"
)

// Cookie names. The session cookie is scoped to the service's prefix, the
// state cookie to its OAuth callback.
const (
	SessionCookie = "nbsecrets-hub-session"
	stateCookie   = "nbsecrets-hub-oauth-state"
)

const (
	sessionTTL = 12 * time.Hour
	stateTTL   = 10 * time.Minute
	// tokenCheck is how long the hub's answer about a token is trusted: a
	// user removed or a token revoked on the hub is refused within it.
	tokenCheck = 30 * time.Second
	maxCache   = 4096
)

// OAuthOptions configure an OAuth.
type OAuthOptions struct {
	// Client reaches the hub; its Token is the OAuth client secret.
	// Required.
	Client *Client
	// ClientID is the service's OAuth client id ($JUPYTERHUB_CLIENT_ID,
	// "service-<name>"). Required.
	ClientID string
	// Prefix is the service's URL prefix ($JUPYTERHUB_SERVICE_PREFIX,
	// "/services/nbsecrets/"). Required.
	Prefix string
	// AuthorizeURL is where browsers are sent to log in. Zero:
	// "/hub/api/oauth2/authorize" (on the hub's public host).
	AuthorizeURL string
	// RedirectURI is the callback the hub registered for the service.
	// Zero: Prefix + "oauth_callback", the hub's default.
	RedirectURI string
	// Seen, when set, is told of each user the hub vouches for (at most
	// once per token per tokenCheck): Source.EnsureUser, so that a user
	// created since the last user list can use the service at once.
	Seen func(ctx context.Context, user string)
	// Logger receives logins and refusals (never a token). Nil discards.
	Logger hclog.Logger
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
}

// OAuth is the web UI's and HTTP API's identity source behind a
// JupyterHub: browsers log in with the hub's OAuth (state and PKCE) and
// keep an encrypted session cookie scoped to the service's prefix; API
// clients send a hub API token in "Authorization: token ..." (or
// "Bearer ..."). Either way the hub says who the token belongs to, asked
// again after tokenCheck.
type OAuth struct {
	opts OAuthOptions
	log  hclog.Logger
	aead cipher.AEAD
	mac  []byte

	mu    sync.Mutex
	cache map[string]cached // sha256(token) -> the hub's answer
}

type cached struct {
	user  string
	until time.Time
}

var _ web.Authenticator = (*OAuth)(nil)

// NewOAuth returns an OAuth with fresh cookie keys: sessions end when the
// service restarts (the browser logs in again without a prompt).
func NewOAuth(opts OAuthOptions) (*OAuth, error) {
	if opts.Client == nil || opts.ClientID == "" || opts.Prefix == "" {
		return nil, errors.New("hub: OAuth needs the hub client, the client id and the service prefix")
	}
	if !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	if opts.AuthorizeURL == "" {
		opts.AuthorizeURL = "/hub/api/oauth2/authorize"
	}
	if opts.RedirectURI == "" {
		opts.RedirectURI = opts.Prefix + "oauth_callback"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	key := make([]byte, 64)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("hub: cookie key: %w", err)
	}
	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return nil, fmt.Errorf("hub: cookie key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("hub: cookie key: %w", err)
	}
	return &OAuth{opts: opts, log: log.Named("oauth"), aead: aead, mac: key[32:], cache: map[string]cached{}}, nil
}

var b64 = base64.RawURLEncoding

// seal encrypts v for a cookie named name (the name is the associated
// data: a state cookie cannot pass for a session).
func (o *OAuth) seal(name string, v any) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, o.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return b64.EncodeToString(o.aead.Seal(nonce, nonce, plain, []byte(name))), nil
}

func (o *OAuth) open(name, s string, v any) error {
	raw, err := b64.DecodeString(s)
	if err != nil || len(raw) < o.aead.NonceSize() {
		return errors.New("malformed cookie")
	}
	plain, err := o.aead.Open(nil, raw[:o.aead.NonceSize()], raw[o.aead.NonceSize():], []byte(name))
	if err != nil {
		return errors.New("cookie not sealed by this service")
	}
	return json.Unmarshal(plain, v)
}

type sessionData struct {
	User    string `json:"u"`
	Token   string `json:"t"`
	CSRF    string `json:"c"`
	Expires int64  `json:"e"`
}

type stateData struct {
	State    string `json:"s"`
	Verifier string `json:"v"`
	Next     string `json:"n"`
	Expires  int64  `json:"e"`
}

// Authenticate returns the caller of r: the user of the hub token in its
// Authorization header, else of its session cookie.
func (o *OAuth) Authenticate(r *http.Request) (web.Identity, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || (!strings.EqualFold(scheme, "token") && !strings.EqualFold(scheme, "bearer")) {
			return web.Identity{}, fmt.Errorf("%w: Authorization is neither \"token ...\" nor \"Bearer ...\"", web.ErrNoIdentity)
		}
		user, err := o.userOf(r.Context(), strings.TrimSpace(token))
		if err != nil {
			o.log.Warn("API token refused", "remote", r.RemoteAddr, "error", err)
			return web.Identity{}, fmt.Errorf("%w: %v", web.ErrNoIdentity, err)
		}
		return web.Identity{User: user, CSRF: o.csrfOf(token)}, nil
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return web.Identity{}, web.ErrNoIdentity
	}
	var s sessionData
	if err := o.open(SessionCookie, c.Value, &s); err != nil {
		return web.Identity{}, fmt.Errorf("%w: %v", web.ErrNoIdentity, err)
	}
	if o.opts.Now().Unix() > s.Expires {
		return web.Identity{}, fmt.Errorf("%w: session expired", web.ErrNoIdentity)
	}
	user, err := o.userOf(r.Context(), s.Token)
	if err != nil || user != s.User {
		return web.Identity{}, fmt.Errorf("%w: the hub no longer accepts the session's token", web.ErrNoIdentity)
	}
	return web.Identity{User: s.User, CSRF: s.CSRF}, nil
}

// csrfOf is the CSRF token of requests made with an API token: the API
// asks for one on every change (GET api/v1/me returns it).
func (o *OAuth) csrfOf(token string) string {
	h := hmac.New(sha256.New, o.mac)
	h.Write([]byte("nbsecrets-hub-csrf\n" + token))
	return b64.EncodeToString(h.Sum(nil))
}

// userOf asks the hub (or its recent answer) whose token is.
func (o *OAuth) userOf(ctx context.Context, token string) (string, error) {
	sum := sha256.Sum256([]byte(token))
	key := string(sum[:])
	now := o.opts.Now()
	o.mu.Lock()
	c, ok := o.cache[key]
	o.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.user, nil
	}
	u, err := o.opts.Client.UserForToken(ctx, token)
	if err != nil {
		return "", err
	}
	o.mu.Lock()
	if len(o.cache) >= maxCache {
		for k, v := range o.cache {
			if !now.Before(v.until) {
				delete(o.cache, k)
			}
		}
		if len(o.cache) >= maxCache {
			clear(o.cache)
		}
	}
	o.cache[key] = cached{user: u.Name, until: now.Add(tokenCheck)}
	o.mu.Unlock()
	if o.opts.Seen != nil {
		o.opts.Seen(ctx, u.Name)
	}
	return u.Name, nil
}

// Wrap puts the OAuth flow in front of the web UI: it serves the callback
// and sends a browser that asks for a page without a session to the hub's
// login. The API answers 401 instead, as web does.
func (o *OAuth) Wrap(next http.Handler) http.Handler {
	callback := o.opts.Prefix + "oauth_callback"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == callback {
			o.callback(w, r)
			return
		}
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, o.opts.Prefix) &&
			!strings.HasPrefix(r.URL.Path, o.opts.Prefix+"api/") && !strings.HasPrefix(r.URL.Path, o.opts.Prefix+"static/") {
			if _, err := o.Authenticate(r); err != nil {
				o.login(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// login starts the OAuth flow: a state and a PKCE verifier in a cookie
// for the callback, and a redirect to the hub's authorize endpoint.
func (o *OAuth) login(w http.ResponseWriter, r *http.Request) {
	st := stateData{State: random(), Verifier: random() + random(), Next: r.URL.RequestURI(), Expires: o.opts.Now().Add(stateTTL).Unix()}
	val, err := o.seal(stateCookie, st)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: stateCookie, Value: val, Path: o.opts.Prefix + "oauth_callback",
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode, MaxAge: int(stateTTL / time.Second)})
	challenge := sha256.Sum256([]byte(st.Verifier))
	q := url.Values{
		"client_id":             {o.opts.ClientID},
		"redirect_uri":          {o.opts.RedirectURI},
		"response_type":         {"code"},
		"state":                 {st.State},
		"code_challenge":        {b64.EncodeToString(challenge[:])},
		"code_challenge_method": {"S256"},
	}
	http.Redirect(w, r, o.opts.AuthorizeURL+"?"+q.Encode(), http.StatusFound)
}

// callback finishes the flow: checks the state against the cookie,
// exchanges the code (with the PKCE verifier and the service's token as
// client secret) for an access token, asks the hub whose it is, and sets
// the session cookie.
func (o *OAuth) callback(w http.ResponseWriter, r *http.Request) {
	refuse := func(reason string) {
		o.log.Warn("login refused", "reason", reason, "remote", r.RemoteAddr)
		http.Error(w, "login refused: "+reason, http.StatusForbidden)
	}
	c, err := r.Cookie(stateCookie)
	if err != nil {
		refuse("no OAuth state cookie (start again from the service's page)")
		return
	}
	var st stateData
	if err := o.open(stateCookie, c.Value, &st); err != nil {
		refuse("OAuth state cookie: " + err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: stateCookie, Value: "", Path: o.opts.Prefix + "oauth_callback", MaxAge: -1, HttpOnly: true})
	if o.opts.Now().Unix() > st.Expires {
		refuse("OAuth state expired")
		return
	}
	if got := r.URL.Query().Get("state"); !hmac.Equal([]byte(got), []byte(st.State)) {
		refuse("OAuth state does not match")
		return
	}
	code := r.URL.Query().Get("code")
	if code == "" || len(code) > 1024 {
		refuse("no authorization code")
		return
	}
	token, err := o.exchange(r.Context(), code, st.Verifier)
	if err != nil {
		refuse(err.Error())
		return
	}
	u, err := o.opts.Client.UserForToken(r.Context(), token)
	if err != nil {
		refuse(err.Error())
		return
	}
	val, err := o.seal(SessionCookie, sessionData{User: u.Name, Token: token, CSRF: random(), Expires: o.opts.Now().Add(sessionTTL).Unix()})
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: val, Path: o.opts.Prefix, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode, MaxAge: int(sessionTTL / time.Second)})
	o.log.Info("logged in", "user", u.Name)
	next := st.Next
	if !strings.HasPrefix(next, o.opts.Prefix) || strings.HasPrefix(next, "//") {
		next = o.opts.Prefix
	}
	http.Redirect(w, r, next, http.StatusFound)
}

// exchange trades an authorization code for an access token at
// {api}/oauth2/token.
func (o *OAuth) exchange(ctx context.Context, code, verifier string) (string, error) {
	form := url.Values{
		"client_id":     {o.opts.ClientID},
		"client_secret": {o.opts.Client.Token},
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {o.opts.RedirectURI},
		"code_verifier": {verifier},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(o.opts.Client.APIURL, "/")+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := o.opts.Client.http().Do(req)
	if err != nil {
		return "", fmt.Errorf("exchanging the code: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("exchanging the code: the hub said %s", resp.Status)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tr); err != nil || tr.AccessToken == "" {
		return "", errors.New("exchanging the code: no access token in the hub's reply")
	}
	return tr.AccessToken, nil
}

func random() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return b64.EncodeToString(b[:])
}
