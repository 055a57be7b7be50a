package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

// dev's embedded NATS server runs with the per-account authorisation that
// `nbsecrets nats-config` generates for production (package natsauth):
// no connection without an nkey, an account per party, and each party
// allowed exactly what it needs. Without it, any local user could connect
// to the loopback port, answer the CLI in place of the service, keep its
// signed requests, and delete the JetStream streams. The NATS keys are
// seed files (0600) in the state dir (0700):
//
//	STATE/keys/nats/service.nk          the secrets service
//	STATE/keys/nats/workspaces/<id>.nk  the agent of workspace <id>
//	STATE/keys/nats/users/<id>.nk       the CLI of user <id>
//
// and the server's configuration is STATE/nats.conf, which includes the
// generated STATE/nats-auth.conf.
const (
	devNATSConf     = "nats.conf"
	devNATSAuthConf = "nats-auth.conf"
)

// devNATSKeyPath is the seed file of a NATS key of dev: kind "service"
// (id ignored), "workspaces" or "users".
func devNATSKeyPath(stateDir, kind, id string) string {
	if kind == "service" {
		return filepath.Join(stateDir, "keys", "nats", "service.nk")
	}
	return filepath.Join(stateDir, "keys", "nats", kind, id+".nk")
}

// devNATSOption is the nats.Option that authenticates with a NATS key of
// dev.
func devNATSOption(stateDir, kind, id string) (nats.Option, error) {
	o, err := nats.NkeyOptionFromSeed(devNATSKeyPath(stateDir, kind, id))
	if err != nil {
		return nil, fmt.Errorf("NATS key of %s %s: %w", kind, id, err)
	}
	return o, nil
}

// writeDevNATSAuth makes the missing NATS keys of d's parties and writes
// the accounts and permissions that natsauth generates for them.
func writeDevNATSAuth(stateDir string, d *controlplane.Directory) error {
	key := func(kind, id string) (string, error) {
		kp, _, err := keyfile.LoadOrCreate(devNATSKeyPath(stateDir, kind, id), false, nkeys.PrefixByteUser)
		if err != nil {
			return "", fmt.Errorf("NATS key of %s %s: %w", kind, id, err)
		}
		return kp.PublicKey()
	}
	cfg := natsauth.Config{Directory: d, AgentKeys: map[string]string{}, UserKeys: map[string]string{}}
	svc, err := key("service", "")
	if err != nil {
		return err
	}
	cfg.ServiceKeys = []string{svc}
	for _, w := range d.Workspaces {
		if cfg.AgentKeys[w.ID], err = key("workspaces", w.ID); err != nil {
			return err
		}
	}
	for _, u := range d.Users {
		if cfg.UserKeys[u.ID], err = key("users", u.ID); err != nil {
			return err
		}
	}
	conf, err := natsauth.Generate(cfg)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(stateDir, devNATSAuthConf), conf, 0o600)
}

// devNATSOptions writes dev's server configuration (loopback, a random
// port, JetStream under the state dir, the generated accounts) and reads it
// back as server options.
func devNATSOptions(stateDir string, d *controlplane.Directory) (*server.Options, error) {
	store := filepath.Join(stateDir, "jetstream")
	if strings.ContainsAny(store, "\"\\\n\r") {
		return nil, fmt.Errorf("the state dir %q holds a quote, a backslash or a line break, which the NATS configuration cannot hold", stateDir)
	}
	if err := writeDevNATSAuth(stateDir, d); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`# nbsecrets dev: the embedded NATS server. Written at every start.
server_name: "nbsecrets-dev"
host: "127.0.0.1"
port: -1
jetstream { store_dir: "%s" }
include "%s"
`, store, devNATSAuthConf)
	path := filepath.Join(stateDir, devNATSConf)
	if err := writeFileAtomic(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS configuration: %w", err)
	}
	opts.NoSigs, opts.NoLog = true, true
	// No cap on consumers per stream: nats-server's default of 1,000 would
	// refuse the 1,001st workspace's agent.
	opts.JetStreamLimits.DefaultMaxConsumers = -1
	return opts, nil
}

// migrateDevStore moves the JetStream store of a dev instance that ran
// before dev had accounts (everything in the server's global account,
// "$G") to the service's account, so that its secrets are still there. It
// reports whether it moved anything.
func migrateDevStore(stateDir string) (bool, error) {
	base := filepath.Join(stateDir, "jetstream", "jetstream")
	from, to := filepath.Join(base, "$G"), filepath.Join(base, natsauth.ServiceAccount)
	if _, err := os.Stat(filepath.Join(from, "streams")); err != nil {
		return false, nil // nothing from before
	}
	if _, err := os.Stat(to); err == nil {
		return false, nil // already in place
	}
	if err := os.Rename(from, to); err != nil {
		return false, fmt.Errorf("moving the JetStream store of an earlier dev instance to the service's account: %w", err)
	}
	return true, nil
}

// startDevNATS starts dev's embedded NATS server for directory d.
func startDevNATS(stateDir string, d *controlplane.Directory) (*server.Server, error) {
	if _, err := migrateDevStore(stateDir); err != nil {
		return nil, err
	}
	opts, err := devNATSOptions(stateDir, d)
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("embedded NATS did not start within 10s")
	}
	return ns, nil
}

// reloadDevNATS gives the running server the accounts of directory d
// (users and workspaces added or removed) without a restart.
func reloadDevNATS(ns *server.Server, stateDir string, d *controlplane.Directory) error {
	opts, err := devNATSOptions(stateDir, d)
	if err != nil {
		return err
	}
	if err := ns.ReloadOptions(opts); err != nil {
		return fmt.Errorf("reloading the embedded NATS server's accounts: %w", err)
	}
	return nil
}

// devNATSUserOption authenticates user's CLI to a dev instance, nil when
// the state dir holds no NATS key for the user (an instance without
// authentication, as tests run).
func devNATSUserOption(stateDir, user string) (nats.Option, error) {
	if _, err := os.Stat(devNATSKeyPath(stateDir, "users", user)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return devNATSOption(stateDir, "users", user)
}
