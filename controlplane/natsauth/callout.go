package natsauth

// Auth callout: NATS credentials for agents that register at run time
// (hub-service), on its embedded server and on an existing NATS server,
// without changing the server's configuration when an agent comes or goes.
//
// # The model
//
// The server's configuration is fixed ([GenerateCallout]): the service's
// account "nbsecrets" (JetStream, the service's users, which also answer
// the auth callout) and one account for every agent, "nbsecrets-agents",
// that imports from the service's account, as services, the JetStream API
// requests of any workspace's one consumer, and exports the agents' status
// subjects to the service as a stream. An agent connects with the NATS
// user nkey it registered; the server asks the service
// ($SYS.REQ.USER.AUTH), the service checks the nkey's signature over the
// server's nonce, looks the key up among the registered workspaces and
// answers with a user JWT, signed by the callout issuer, that places the
// connection in "nbsecrets-agents" with the permissions of
// [CalloutAgentPermissions]: exactly [AgentPermissions] of its workspace,
// except that it subscribes only to its own inbox prefix
// ([AgentInboxPrefix]), not to every inbox of the shared account. A
// registration is a map entry in the service: nothing on the server
// changes and no connection drops. nats-server in server-configuration
// mode can only place a callout user in an account its configuration
// names, which is why the agents share one account rather than having one
// each as [Generate]'s do; operator mode could push an account JWT per
// agent, but asks a platform team for an operator, a resolver and a system
// account, and the account-per-agent wiring is what a reload fails to
// apply (see cmd/nbsecrets/hubnats.go).
//
// What it guarantees, attacked in callout_test.go the way natsauth_test.go
// attacks [Generate]'s configuration:
//   - no connection without a registered key and a valid signature over
//     the server's nonce; a key registered for one workspace only;
//   - an agent creates, pulls from and deletes only its own consumer, on
//     its own workspace's filter, and reads or writes nothing else (its
//     publish permissions are [AgentPermissions]);
//   - it cannot subscribe to another agent's inbox (the subscribe
//     permission is its own prefix), so it sees no other agent's
//     deliveries or API replies;
//   - no reply subject of an agent's request reaches a stream: the
//     requests cross an import, so the server rewrites the reply, and the
//     reply subject lives in the agents' account, where no stream is.
//
// What it does not guarantee, unlike an account per agent:
//   - an agent can name any subject of the agents' account as the reply of
//     its own requests, so the server may deliver its consumer's messages
//     (records sealed to its own workspace and signed for it) or a
//     JetStream API response onto another agent's inbox, if it knew that
//     inbox's random name (it cannot subscribe there to learn it), or onto
//     another workspace's status subject: the service takes a status only
//     when it names the workspace of its subject (protocol.DecodeStatus),
//     which neither a record nor an API response does, and an agent opens
//     only records signed for its workspace;
//   - as with an account per agent, the agent's consumer lives in the
//     service's account, so a push consumer it creates under its own name
//     delivers its own records onto a subject of its choosing there: the
//     server refuses a deliver subject its stream stores ("forms a
//     cycle"), and the messages keep their record subjects: the status
//     receiver refuses them (tested), and to the API they are a record
//     of the service's, not a request a user signed;
//   - a workspace removed while its agent is connected keeps the
//     permissions it was given until the connection ends: the embedded
//     server's connections are closed at once (hub-service kicks them by
//     id), on an existing server the user JWT's expiry ends it, and the
//     agent's reconnection is then refused.
//
// The callout requests of agents carry their public nkey and a signature
// over a nonce, nothing secret, but any client that fails its own
// authentication on the server is asked about too, and its connect options
// can hold a password: with an xkey (hub-service always sets one) the
// server seals each request to the service and the service its response,
// and the requests are delivered in the service's account only. The
// service logs a refusal with the key and host, never the options.

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// AgentsAccount is the account every callout-authorised agent is placed in.
const AgentsAccount = "nbsecrets-agents"

// AuthCalloutSubject is where nats-server sends the authorisation requests.
const AuthCalloutSubject = "$SYS.REQ.USER.AUTH"

// xkeyHeader carries the server's public curve key on a sealed request.
const xkeyHeader = "Nats-Server-Xkey"

// AgentInboxPrefix is the inbox prefix (nats.CustomInboxPrefix) of
// workspace ws's agent in the agents' shared account: it may subscribe
// under it only.
func AgentInboxPrefix(ws string) string { return "_INBOX." + ws }

// CalloutAgentPermissions are the permissions the callout gives the agent
// of workspace ws: AgentPermissions, with the subscriptions confined to
// its own inbox prefix and its own live subject (every workspace's live
// subjects reach the shared account; each agent may subscribe to its own).
func CalloutAgentPermissions(ws string) Permissions {
	p := AgentPermissions(ws)
	p.Subscribe = []string{AgentInboxPrefix(ws) + ".>", liveSubject(ws), leaderElected}
	return p
}

// CalloutConfig is what GenerateCallout needs.
type CalloutConfig struct {
	// ServiceKeys are the NATS user nkeys of the secrets service's
	// instances; they connect without the callout and answer it. At least
	// one.
	ServiceKeys []string
	// Issuer is the public account nkey (A...) whose seed the service signs
	// its callout responses with. Required.
	Issuer string
	// XKey, when set, is the public curve key (X...) the server seals its
	// callout requests to and the service seals its responses with: a
	// request carries the connecting client's connect options, which for
	// a client of another account that failed its own authentication can
	// hold a password.
	XKey string
	// Workspaces is how many workspaces the limits are sized for; 0 means
	// 1000.
	Workspaces int
	// Limits bound the service account's JetStream (see JetStreamLimits).
	Limits JetStreamLimits
}

// GenerateCallout renders the nats-server configuration for agents that
// the service authorises by auth callout: the accounts block and an
// authorization block with auth_callout, to include in the server's
// configuration (which sets listen, TLS and jetstream) when that has no
// accounts or authorization block of its own (a second block replaces the
// first); otherwise use GenerateCalloutParts. Connections in other
// accounts of the server's own configuration keep their authentication
// (allowed_accounts names only the agents' account); unknown users go to
// the callout, which refuses every key no agent registered. The output
// depends only on cfg.
func GenerateCallout(cfg CalloutConfig) ([]byte, error) {
	accounts, authz, err := GenerateCalloutParts(cfg)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("# nbsecrets: NATS accounts and auth callout for hub agents, generated by\n")
	b.WriteString("# 'nbsecrets nats-config --hub'. Include this file in the server's configuration;\n")
	b.WriteString("# do not edit it by hand. Only the account " + q(ServiceAccount) + " has JetStream; every\n")
	b.WriteString("# agent is authorised by the secrets service (auth callout) into " + q(AgentsAccount) + "\n")
	b.WriteString("# with the permissions of its own workspace.\n")
	b.WriteString("accounts {\n")
	b.Write(accounts)
	b.WriteString("}\nauthorization {\n")
	b.Write(authz)
	b.WriteString("}\n")
	return []byte(b.String()), nil
}

// GenerateCalloutParts renders GenerateCallout's two blocks without their
// braces, for a server whose configuration has accounts and an
// authorization block of its own: accounts goes inside its accounts block
// (include "nbsecrets-accounts.conf" there), authz inside its
// authorization block.
func GenerateCalloutParts(cfg CalloutConfig) (accounts, authz []byte, err error) {
	if len(cfg.ServiceKeys) == 0 {
		return nil, nil, fmt.Errorf("%w: no NATS key for the secrets service", ErrInvalid)
	}
	if !nkeys.IsValidPublicAccountKey(cfg.Issuer) {
		return nil, nil, fmt.Errorf("%w: the callout issuer is not a public account nkey (A...)", ErrInvalid)
	}
	if cfg.XKey != "" && !nkeys.IsValidPublicCurveKey(cfg.XKey) {
		return nil, nil, fmt.Errorf("%w: the callout xkey is not a public curve key (X...)", ErrInvalid)
	}
	services := slices.Clone(cfg.ServiceKeys)
	sort.Strings(services)
	for i, k := range services {
		if !nkeys.IsValidPublicUserKey(k) {
			return nil, nil, fmt.Errorf("%w: service key %d is not a public user nkey (U...)", ErrInvalid, i+1)
		}
		if i > 0 && services[i-1] == k {
			return nil, nil, fmt.Errorf("%w: a service key is listed twice", ErrInvalid)
		}
	}
	n := cfg.Workspaces
	if n <= 0 {
		n = 1000
	}
	create := jsAPI + "CONSUMER.CREATE." + recordStream + ".*.$KV." + protocol.Bucket + ".*.>"
	next := jsAPI + "CONSUMER.MSG.NEXT." + recordStream + ".*"
	del := jsAPI + "CONSUMER.DELETE." + recordStream + ".*"
	status := protocol.StatusSubjectPrefix + "*"
	liveAll := controlplane.LivePrefix + ">" // each agent subscribes to its own only

	svcPerm := ServicePermissions()
	svcPerm.Subscribe = append(svcPerm.Subscribe, AuthCalloutSubject)

	var b strings.Builder
	fmt.Fprintf(&b, "  %s {\n", q(ServiceAccount))
	lim := cfg.Limits.withDefaults(n)
	fmt.Fprintf(&b, "    jetstream {\n      max_consumers: %d\n      max_streams: %d\n      max_memory: %d\n      max_store: %d\n    }\n",
		lim.MaxConsumers, lim.MaxStreams, lim.MaxMemory, lim.MaxStore)
	b.WriteString("    users: [\n")
	for _, k := range services {
		writeUser(&b, k, svcPerm)
	}
	b.WriteString("    ]\n")
	acc := list([]string{AgentsAccount})
	b.WriteString("    exports: [\n")
	fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(create), acc)
	fmt.Fprintf(&b, "      {service: %s, response_type: stream, accounts: %s}\n", q(next), acc)
	fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(del), acc)
	fmt.Fprintf(&b, "      {service: %s, accounts: %s}\n", q(jsAPIInfo), acc)
	fmt.Fprintf(&b, "      {stream: %s, accounts: %s}\n", q(liveAll), acc)
	fmt.Fprintf(&b, "      {stream: %s, accounts: %s}\n", q(leaderElected), acc)
	b.WriteString("    ]\n")
	fmt.Fprintf(&b, "    imports: [{stream: {account: %s, subject: %s}}]\n", q(AgentsAccount), q(status))
	b.WriteString("  }\n")
	fmt.Fprintf(&b, "  %s {\n", q(AgentsAccount))
	fmt.Fprintf(&b, "    exports: [{stream: %s, accounts: [%s]}]\n", q(status), q(ServiceAccount))
	b.WriteString("    imports: [\n")
	for _, s := range []string{create, next, del, jsAPIInfo} {
		fmt.Fprintf(&b, "      {service: {account: %s, subject: %s}}\n", q(ServiceAccount), q(s))
	}
	fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}}\n", q(ServiceAccount), q(liveAll))
	fmt.Fprintf(&b, "      {stream: {account: %s, subject: %s}}\n", q(ServiceAccount), q(leaderElected))
	b.WriteString("    ]\n")
	b.WriteString("  }\n")

	var a strings.Builder
	a.WriteString("  auth_callout {\n")
	fmt.Fprintf(&a, "    issuer: %s\n", q(cfg.Issuer))
	fmt.Fprintf(&a, "    account: %s\n", q(ServiceAccount))
	fmt.Fprintf(&a, "    auth_users: %s\n", list(services))
	fmt.Fprintf(&a, "    allowed_accounts: %s\n", acc)
	if cfg.XKey != "" {
		fmt.Fprintf(&a, "    xkey: %s\n", q(cfg.XKey))
	}
	a.WriteString("  }\n")
	return []byte(b.String()), []byte(a.String()), nil
}

// CalloutOptions configure a Callout.
type CalloutOptions struct {
	// Issuer signs the responses and the user JWTs; its public key is the
	// configuration's auth_callout issuer. Required.
	Issuer nkeys.KeyPair
	// XKey, when set, opens the server's sealed requests and seals the
	// responses (the configuration's auth_callout xkey is its public key).
	XKey nkeys.KeyPair
	// Lookup returns the workspace whose agent registered the public user
	// nkey, and false for a key no agent registered. Required; called
	// concurrently.
	Lookup func(nkey string) (workspace string, ok bool)
	// Expiry is how long a user JWT is valid; the server closes the
	// connection when it expires and the agent's reconnection is asked
	// about again. 0: no expiry (a removed workspace's connection must be
	// closed another way, OnAuthorized's client id).
	Expiry time.Duration
	// OnAuthorized, when set, is told of every authorised connection: its
	// workspace and key, the server's id and the client's id on that
	// server (what closes it: Server.DisconnectClientByID, or the system
	// account's $SYS.REQ.SERVER.<id>.KICK).
	OnAuthorized func(workspace, nkey, serverID string, clientID uint64)
	// Logger logs refusals (key and reason); nil discards.
	Logger hclog.Logger
}

// Callout answers nats-server's auth callout requests on a connection of
// the service's account. Make one with StartCallout; Stop ends it.
type Callout struct {
	opts   CalloutOptions
	issuer string
	log    hclog.Logger
	sub    *nats.Subscription

	mu      sync.Mutex
	stopped bool
}

// StartCallout subscribes to AuthCalloutSubject on nc.
func StartCallout(nc *nats.Conn, opts CalloutOptions) (*Callout, error) {
	if opts.Issuer == nil || opts.Lookup == nil {
		return nil, errors.New("natsauth: callout: Issuer and Lookup are required")
	}
	pub, err := opts.Issuer.PublicKey()
	if err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, errors.New("natsauth: callout: the issuer is not an account nkey")
	}
	c := &Callout{opts: opts, issuer: pub, log: opts.Logger}
	if c.log == nil {
		c.log = hclog.NewNullLogger()
	}
	c.log = c.log.Named("callout")
	sub, err := nc.Subscribe(AuthCalloutSubject, c.handle)
	if err != nil {
		return nil, fmt.Errorf("natsauth: subscribing to %s: %w", AuthCalloutSubject, err)
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsauth: subscribing to %s: %w", AuthCalloutSubject, err)
	}
	c.sub = sub
	return c, nil
}

// Stop ends the subscription; connections are then refused (the server
// times the callout out).
func (c *Callout) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	if err := c.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("natsauth: stopping the callout: %w", err)
	}
	return nil
}

// maxRequest bounds a callout request (a JWT of the client's connect
// options; TLS chains can make it a few KiB).
const maxRequest = 64 << 10

func (c *Callout) handle(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	if len(m.Data) > maxRequest {
		c.log.Warn("auth callout request refused", "reason", fmt.Sprintf("request of %d bytes, limit %d", len(m.Data), maxRequest))
		return
	}
	data, serverXKey := m.Data, m.Header.Get(xkeyHeader)
	switch {
	case c.opts.XKey != nil && serverXKey == "":
		c.log.Warn("auth callout request refused", "reason", "not sealed, and the service expects sealed requests (xkey)")
		return
	case c.opts.XKey != nil:
		opened, err := c.opts.XKey.Open(data, serverXKey)
		if err != nil {
			c.log.Warn("auth callout request refused", "reason", "cannot open the sealed request: "+err.Error())
			return
		}
		data = opened
	}
	req, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		c.log.Warn("auth callout request refused", "reason", "malformed request: "+err.Error())
		return
	}
	ws, uj, reason := c.authorize(req)
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	if resp == nil {
		c.log.Warn("auth callout request refused", "reason", "no user nkey in the request")
		return
	}
	resp.Audience = req.Server.ID
	if reason != "" {
		resp.Error = reason
		c.log.Warn("agent connection refused", "nkey", req.ConnectOptions.Nkey, "host", req.ClientInformation.Host, "reason", reason)
	} else {
		resp.Jwt = uj
	}
	tok, err := resp.Encode(c.opts.Issuer)
	if err != nil {
		c.log.Error("encoding the auth callout response", "error", err)
		return
	}
	out := []byte(tok)
	if c.opts.XKey != nil {
		if out, err = c.opts.XKey.Seal(out, serverXKey); err != nil {
			c.log.Error("sealing the auth callout response", "error", err)
			return
		}
	}
	if err := m.Respond(out); err != nil {
		c.log.Warn("answering the auth callout", "error", err)
		return
	}
	if reason == "" {
		c.log.Debug("agent connection authorised", "workspace", ws, "client", req.ClientInformation.ID)
		if c.opts.OnAuthorized != nil {
			c.opts.OnAuthorized(ws, req.ConnectOptions.Nkey, req.Server.ID, req.ClientInformation.ID)
		}
	}
}

// authorize checks req and returns the workspace and the user JWT, or the
// reason it is refused.
func (c *Callout) authorize(req *jwt.AuthorizationRequestClaims) (string, string, string) {
	if !nkeys.IsValidPublicUserKey(req.UserNkey) || !nkeys.IsValidPublicServerKey(req.Server.ID) {
		return "", "", "malformed request"
	}
	key, sig, nonce := req.ConnectOptions.Nkey, req.ConnectOptions.SignedNonce, req.ClientInformation.Nonce
	if key == "" || sig == "" || nonce == "" {
		return "", "", "no nkey signature: agents connect with their registered NATS nkey"
	}
	kp, err := nkeys.FromPublicKey(key)
	if err != nil || !nkeys.IsValidPublicUserKey(key) {
		return "", "", "not a user nkey"
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(sig); err != nil {
			return "", "", "malformed signature"
		}
	}
	if err := kp.Verify([]byte(nonce), raw); err != nil {
		return "", "", "bad signature over the server's nonce"
	}
	ws, ok := c.opts.Lookup(key)
	if !ok {
		return "", "", "no registered agent has this key"
	}
	if err := protocol.ValidateID(ws); err != nil {
		return "", "", "registered workspace id is invalid"
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Audience = AgentsAccount
	uc.Name = "nbsecrets-agent-" + ws
	p := CalloutAgentPermissions(ws)
	uc.Pub.Allow.Add(p.Publish...)
	uc.Sub.Allow.Add(p.Subscribe...)
	if c.opts.Expiry > 0 {
		uc.Expires = time.Now().Add(c.opts.Expiry).Unix()
	}
	uj, err := uc.Encode(c.opts.Issuer)
	if err != nil {
		return "", "", "internal error"
	}
	return ws, uj, ""
}
