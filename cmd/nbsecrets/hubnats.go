package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

// hubNATS gives hub-service's agents NATS credentials scoped to their
// workspace by auth callout (natsauth/callout.go), on its embedded NATS
// server or on an existing one configured with `nbsecrets nats-config
// --hub`. Each agent makes a NATS user nkey at start and sends its public
// half with its registration; the service keeps it in a map and, when the
// agent connects, answers the server's callout with the workspace's
// permissions. Nothing on the server changes when an agent registers, so
// no other agent's connection drops (before, the embedded server was
// restarted at every change, because nats-server 2.15 does not wire a
// reloaded account's service imports of the JetStream account). A
// workspace that leaves the directory (its server stopped) is refused at
// its next connection; its open connections are closed at once on the
// embedded server, and end when their user JWT expires on an existing one.
// Nothing secret crosses the wire: the seed never leaves the agent.
type hubNATS struct {
	ns     *server.Server // the embedded server; nil with an existing one
	issuer nkeys.KeyPair  // the callout issuer (an account key)
	xkey   nkeys.KeyPair  // the curve key callout requests are sealed to
	expiry time.Duration  // of an agent's user JWT; 0: none
	log    hclog.Logger

	mu      sync.Mutex
	keys    map[string]string   // workspace -> its agent's NATS key
	present map[string]bool     // workspaces of the directory in force
	conns   map[string][]uint64 // agent key -> its connections' ids on ns
	callout *natsauth.Callout
}

const hubNATSConf, hubNATSAuthConf = "nats.conf", "nats-auth.conf"

// defaultAgentExpiry is how long an agent's NATS credentials last on an
// existing NATS server, where the service cannot close a connection: a
// removed workspace's agent keeps its (read-only, own-records) access at
// most that long, and a registered one reconnects that often.
const defaultAgentExpiry = 10 * time.Minute

// hubNATSKeys loads or creates, under stateDir/keys/nats, the service's
// NATS user key (service.nk), the callout issuer's account key
// (callout.nk) and the curve key callout requests are sealed to
// (callout.xk), and returns the service key's path, the issuer and the
// curve key.
func hubNATSKeys(stateDir string) (string, nkeys.KeyPair, nkeys.KeyPair, error) {
	dir := filepath.Join(stateDir, "keys", "nats")
	svcPath := filepath.Join(dir, "service.nk")
	if _, _, err := keyfile.LoadOrCreate(svcPath, false, nkeys.PrefixByteUser); err != nil {
		return "", nil, nil, err
	}
	issuer, _, err := keyfile.LoadOrCreate(filepath.Join(dir, "callout.nk"), false, nkeys.PrefixByteAccount)
	if err != nil {
		return "", nil, nil, err
	}
	xkey, _, err := keyfile.LoadOrCreate(filepath.Join(dir, "callout.xk"), true, nkeys.PrefixByteCurve)
	if err != nil {
		return "", nil, nil, err
	}
	return svcPath, issuer, xkey, nil
}

// hubCalloutConfig is the NATS configuration of stateDir's service keys:
// what the embedded server runs with and what `nats-config --hub` prints.
func hubCalloutConfig(stateDir string, workspaces int) (natsauth.CalloutConfig, error) {
	svcPath, issuer, xkey, err := hubNATSKeys(stateDir)
	if err != nil {
		return natsauth.CalloutConfig{}, err
	}
	kp, err := keyfile.Load(svcPath)
	if err != nil {
		return natsauth.CalloutConfig{}, err
	}
	svcPub, _ := kp.PublicKey()
	issuerPub, _ := issuer.PublicKey()
	xkeyPub, _ := xkey.PublicKey()
	return natsauth.CalloutConfig{ServiceKeys: []string{svcPub}, Issuer: issuerPub, XKey: xkeyPub, Workspaces: workspaces}, nil
}

// newHubNATS is the agents' credentials on an existing NATS server: the
// service's key and the issuer from stateDir.
func newHubNATS(stateDir string, expiry time.Duration, log hclog.Logger) (*hubNATS, nats.Option, error) {
	svcPath, issuer, xkey, err := hubNATSKeys(stateDir)
	if err != nil {
		return nil, nil, err
	}
	o, err := nats.NkeyOptionFromSeed(svcPath)
	if err != nil {
		return nil, nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &hubNATS{issuer: issuer, xkey: xkey, expiry: expiry, log: log.Named("nats"), keys: map[string]string{}, present: map[string]bool{}, conns: map[string][]uint64{}}, o, nil
}

// startHubNATS starts the embedded server on listen (host:port, port 0:
// any) with the callout configuration; it returns the option the service
// connects with. Call startCallout once the service is connected.
func startHubNATS(stateDir, listen string, log hclog.Logger) (*hubNATS, nats.Option, error) {
	h, o, err := newHubNATS(stateDir, 0, log)
	if err != nil {
		return nil, nil, err
	}
	host, port, err := splitListen(listen)
	if err != nil {
		return nil, nil, err
	}
	store := filepath.Join(stateDir, "jetstream")
	if strings.ContainsAny(store+host, "\"\\\n\r") {
		return nil, nil, fmt.Errorf("the state dir %q holds a quote, a backslash or a line break, which the NATS configuration cannot hold", stateDir)
	}
	cfg, err := hubCalloutConfig(stateDir, 0)
	if err != nil {
		return nil, nil, err
	}
	auth, err := natsauth.GenerateCallout(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(filepath.Join(stateDir, hubNATSAuthConf), auth, 0o600); err != nil {
		return nil, nil, err
	}
	conf := fmt.Sprintf(`# nbsecrets hub-service: the embedded NATS server. Written at every start.
server_name: "nbsecrets-hub"
host: "%s"
port: %d
jetstream { store_dir: "%s" }
include "%s"
`, host, port, store, hubNATSAuthConf)
	path := filepath.Join(stateDir, hubNATSConf)
	if err := writeFileAtomic(path, []byte(conf), 0o600); err != nil {
		return nil, nil, err
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded NATS configuration: %w", err)
	}
	opts.NoSigs, opts.NoLog = true, true
	opts.JetStreamLimits.DefaultMaxConsumers = -1
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, nil, errors.New("embedded NATS did not start within 30s")
	}
	h.ns = ns
	return h, o, nil
}

// startCallout answers the server's callout requests on nc, the service's
// connection.
func (h *hubNATS) startCallout(nc *nats.Conn) error {
	co, err := natsauth.StartCallout(nc, natsauth.CalloutOptions{Issuer: h.issuer, XKey: h.xkey, Lookup: h.lookup, Expiry: h.expiry,
		OnAuthorized: h.authorized, Logger: h.log})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.callout = co
	h.mu.Unlock()
	return nil
}

// stop ends the callout and the embedded server.
func (h *hubNATS) stop() {
	h.mu.Lock()
	co := h.callout
	h.mu.Unlock()
	if co != nil {
		_ = co.Stop()
	}
	if h.ns != nil {
		h.ns.Shutdown()
		h.ns.WaitForShutdown()
	}
}

// splitListen parses host:port; port 0 means any (-1 to nats-server).
func splitListen(listen string) (string, int, error) {
	host, p, ok := strings.Cut(listen, ":")
	if !ok {
		return "", 0, fmt.Errorf("NATS listen address %q: want host:port", listen)
	}
	var port int
	if _, err := fmt.Sscan(p, &port); err != nil {
		return "", 0, fmt.Errorf("NATS listen address %q: %w", listen, err)
	}
	if port == 0 {
		port = -1
	}
	return host, port, nil
}

// setAgentKey records the NATS key workspace ws's agent registered with;
// it may connect once ws is in the directory (apply). A new key replaces
// the workspace's old one, whose connections are closed.
func (h *hubNATS) setAgentKey(ws, key string) error {
	if !nkeys.IsValidPublicUserKey(key) {
		return errors.New("not a NATS user nkey (U...)")
	}
	h.mu.Lock()
	for other, k := range h.keys {
		if k == key && other != ws {
			h.mu.Unlock()
			return errors.New("the key is another workspace's")
		}
	}
	old := h.keys[ws]
	h.keys[ws] = key
	var kick []uint64
	if old != "" && old != key {
		kick = h.conns[old]
		delete(h.conns, old)
	}
	h.mu.Unlock()
	h.kick(ws, kick, "the workspace's agent registered a new key")
	return nil
}

// apply makes directory d's workspaces the ones whose agents may connect.
// Those that left are refused from now on; their connections to the
// embedded server are closed.
func (h *hubNATS) apply(d *controlplane.Directory) error {
	present := map[string]bool{}
	for _, w := range d.Workspaces {
		present[w.ID] = true
	}
	h.mu.Lock()
	var gone []string
	var kick [][]uint64
	for ws := range h.present {
		if !present[ws] {
			gone = append(gone, ws)
			kick = append(kick, h.conns[h.keys[ws]])
			delete(h.conns, h.keys[ws])
		}
	}
	h.present = present
	h.mu.Unlock()
	for i, ws := range gone {
		h.kick(ws, kick[i], "the workspace left the directory")
	}
	return nil
}

// lookup is the callout's: the workspace of a registered key in force.
func (h *hubNATS) lookup(key string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ws, k := range h.keys {
		if k == key && h.present[ws] {
			return ws, true
		}
	}
	return "", false
}

// maxConnsPerKey bounds the connection ids kept per key: an agent has one
// connection, and one per reconnection since.
const maxConnsPerKey = 16

// authorized notes a connection the callout let in, to close it when its
// workspace leaves; one whose key went in between is closed now.
func (h *hubNATS) authorized(ws, key, serverID string, cid uint64) {
	if h.ns == nil || serverID != h.ns.ID() {
		return // an existing server: the user JWT's expiry ends it
	}
	h.mu.Lock()
	if h.keys[ws] != key || !h.present[ws] {
		h.mu.Unlock()
		h.kick(ws, []uint64{cid}, "the workspace left while its agent connected")
		return
	}
	ids := append(h.conns[key], cid)
	if len(ids) > maxConnsPerKey {
		ids = slices.Clone(ids[len(ids)-maxConnsPerKey:])
	}
	h.conns[key] = ids
	h.mu.Unlock()
}

// kick closes connections of ws's agent on the embedded server.
func (h *hubNATS) kick(ws string, cids []uint64, reason string) {
	if h.ns == nil {
		return
	}
	for _, cid := range cids {
		if err := h.ns.DisconnectClientByID(cid); err == nil {
			h.log.Info("agent connection closed", "workspace", ws, "client", cid, "reason", reason)
		}
	}
}
