package main

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

// hubNATS is hub-service's embedded NATS server with per-workspace
// credentials. Each agent makes a NATS user nkey at start and sends its
// public half with its registration; the service adds it to the
// workspace's account (natsauth: the agent may create an ordered consumer
// on its own workspace's records and nothing else) and reloads the server
// before it answers. A workspace that leaves the directory (its server
// stopped) loses its account at the next reload. Nothing secret crosses
// the wire: the seed never leaves the agent. This is the configuration
// nbsecrets nats-config generates, applied live, rather than NATS's auth
// callout: the permissions are the same ones production uses and tests,
// and they need no second service on the NATS side.
type hubNATS struct {
	ns       *server.Server
	stateDir string
	listen   string // as at start: a reload must not change it
	svcKey   string

	mu   sync.Mutex
	keys map[string]string // workspace -> its agent's NATS key

	// applied is the accounts configuration the server runs with; conn,
	// once set, is the service's connection, which apply waits for after
	// a restart. Both only under apply's caller's serialisation (the
	// hub source refreshes one at a time).
	applied []byte
	conn    *nats.Conn
}

const hubNATSConf, hubNATSAuthConf = "nats.conf", "nats-auth.conf"

// startHubNATS starts the server on listen (host:port, port 0: any) with
// only the service's account; it returns the option the service connects
// with.
func startHubNATS(stateDir, listen string) (*hubNATS, nats.Option, error) {
	svcPath := filepath.Join(stateDir, "keys", "nats", "service.nk")
	kp, _, err := keyfile.LoadOrCreate(svcPath, false, nkeys.PrefixByteUser)
	if err != nil {
		return nil, nil, err
	}
	pub, _ := kp.PublicKey()
	h := &hubNATS{stateDir: stateDir, listen: listen, svcKey: pub, keys: map[string]string{}}
	opts, err := h.options(listen, &controlplane.Directory{})
	if err != nil {
		return nil, nil, err
	}
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
	// Restarts keep the port agents were told.
	if addr, ok := ns.Addr().(*net.TCPAddr); ok {
		h.listen = net.JoinHostPort(addr.IP.String(), fmt.Sprint(addr.Port))
	}
	o, err := nats.NkeyOptionFromSeed(svcPath)
	if err != nil {
		h.stop()
		return nil, nil, err
	}
	return h, o, nil
}

func (h *hubNATS) stop() { h.ns.Shutdown(); h.ns.WaitForShutdown() }

// options writes the server's configuration for directory d's workspaces
// that have registered a key, and reads it back.
func (h *hubNATS) options(listen string, d *controlplane.Directory) (*server.Options, error) {
	host, port, err := splitListen(listen)
	if err != nil {
		return nil, err
	}
	store := filepath.Join(h.stateDir, "jetstream")
	if strings.ContainsAny(store+host, "\"\\\n\r") {
		return nil, fmt.Errorf("the state dir %q holds a quote, a backslash or a line break, which the NATS configuration cannot hold", h.stateDir)
	}
	h.mu.Lock()
	keys := maps.Clone(h.keys)
	h.mu.Unlock()
	// Hub users have no NATS door (they use the HTTP API): no user
	// accounts. Workspaces without a key yet are left out.
	cfg := natsauth.Config{Directory: &controlplane.Directory{}, ServiceKeys: []string{h.svcKey}, AgentKeys: map[string]string{}}
	for _, w := range d.Workspaces {
		if k, ok := keys[w.ID]; ok {
			cfg.Directory.Workspaces = append(cfg.Directory.Workspaces, w)
			cfg.AgentKeys[w.ID] = k
		}
	}
	auth, err := natsauth.Generate(cfg)
	if err != nil {
		return nil, err
	}
	h.applied = auth
	if err := writeFileAtomic(filepath.Join(h.stateDir, hubNATSAuthConf), auth, 0o600); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`# nbsecrets hub-service: the embedded NATS server. Written at every change.
server_name: "nbsecrets-hub"
host: "%s"
port: %d
jetstream { store_dir: "%s" }
include "%s"
`, host, port, store, hubNATSAuthConf)
	path := filepath.Join(h.stateDir, hubNATSConf)
	if err := writeFileAtomic(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS configuration: %w", err)
	}
	opts.NoSigs, opts.NoLog = true, true
	opts.JetStreamLimits.DefaultMaxConsumers = -1
	return opts, nil
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
// the next apply gives it an account.
func (h *hubNATS) setAgentKey(ws, key string) error {
	if !nkeys.IsValidPublicUserKey(key) {
		return errors.New("not a NATS user nkey (U...)")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for other, k := range h.keys {
		if k == key && other != ws {
			return errors.New("the key is another workspace's")
		}
	}
	h.keys[ws] = key
	return nil
}

// apply gives the server directory d's workspaces' accounts. The server
// is restarted on the same port, not reloaded: nats-server 2.15 does not
// wire a service import of an account that a reload adds to the
// JetStream account's exports (the new agent's consumer requests get "no
// responders"; nats-io/nats-server#8560 is the same defect for stream
// imports). A restart costs every connected agent a reconnect (its
// ordered consumer resumes where it was) and happens only when the
// accounts change: a server starting or stopping.
func (h *hubNATS) apply(d *controlplane.Directory) error {
	prev := h.applied
	opts, err := h.options(h.listen, d)
	if err != nil {
		return err
	}
	if bytes.Equal(prev, h.applied) {
		return nil
	}
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("restarting the embedded NATS server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("the embedded NATS server did not restart within 30s")
	}
	h.ns = ns
	if h.conn != nil {
		deadline := time.Now().Add(30 * time.Second)
		for !h.conn.IsConnected() {
			if time.Now().After(deadline) {
				return errors.New("the service did not reconnect to the restarted NATS server within 30s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}
