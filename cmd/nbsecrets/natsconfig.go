package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

const natsConfigUsage = `Usage: nbsecrets nats-config --directory FILE [--out FILE] [--keys DIR]
       nbsecrets nats-config --hub [--state-dir DIR] [--out FILE]

Writes the nats-server authorisation of a deployment: an accounts block to
include in the server's own configuration, which sets listen, TLS and
the jetstream block:

    jetstream {
      store_dir: /var/lib/nats
      limits { default_max_consumers: -1 }
    }
    include "nbsecrets-auth.conf"

Every workspace's agent reads the record bucket through a consumer of its
own, and nats-server caps a stream at 1,000 consumers unless the server's
jetstream limits say otherwise (a stream's own -1 does not lift it): without
default_max_consumers: -1 (or a positive count above the number of
workspaces) the 1,001st agent fails with "maximum consumers limit reached".
The included file cannot carry it: a second jetstream block would replace
the server's own.

Every party connects with a NATS nkey of its own. The command makes the
missing ones (seed files, mode 0600, in a directory created 0700) and reuses
those that exist, so running it again after a directory change keeps every
key and adds the new ones:

    DIR/service.nk              the secrets service (nbsecrets serve)
    DIR/workspaces/<id>.nk      the agent of workspace <id> (nbsecrets agent --nkey)
    DIR/users/<id>.nk           the CLI of user <id>

A user's NATS key is not the key that signs the user's requests (publicKey
in the directory file): give each its own.

What each may do:
  - the service (account "nbsecrets", the only one with JetStream) writes
    the record bucket "nbsecrets" and its own bucket "nbsecrets_service" and
    serves nbsecrets.api.v1.* in queue group nbsecrets-service; it cannot
    delete, purge or reconfigure the buckets;
  - the agent of workspace W (account "nbsecrets-ws-W") can only create,
    pull from and delete its one consumer, "nbsecrets-ws-W", filtered on
    $KV.nbsecrets.W.>: it reads W's records and writes nothing;
  - user U (account "nbsecrets-user-U") can only send requests on
    nbsecrets.api.v1.* and receive the replies.
Each party has an account of its own, so no one sees another's replies, and
no request from another account can aim a reply at a record's subject. The
service's account may hold at most two consumers per workspace plus 64, so
an agent cannot flood the server with consumers.

Keep the server's monitoring port private (it lists consumer names), and use
TLS for every NATS connection from another host.

With --hub it prints the configuration of hub-service on an existing NATS
server instead ($NBSECRETS_NATS_URL): run it where the service runs, with
its state dir, and include the output in the server's configuration (see
"On a JupyterHub" in the README). Agents are then authorised by the service
itself (NATS auth callout, nats-server 2.10 or later), each with its own
workspace's permissions, without a change on the server.

The output depends only on the directory and the keys. The server
configuration is written with mode 0600 (to standard output without --out);
reload the server (nats-server --signal reload) after writing it.

Flags:
`

// runNatsConfig is `nbsecrets nats-config`.
func runNatsConfig(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "nats-config", "")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, natsConfigUsage)
		fs.PrintDefaults()
	}
	dirFile := fs.String("directory", "", "directory file: users, projects, communities, workspaces (required)")
	out := fs.String("out", "", "write the server configuration to this file, mode 0600 (default: standard output)")
	keysDir := fs.String("keys", "nats-keys", "directory of the NATS nkey seeds; missing ones are created")
	hubMode := fs.Bool("hub", false, "print hub-service's configuration for an existing NATS server instead: its accounts and the auth callout that gives every registering agent its workspace's credentials")
	hubState := fs.String("state-dir", envOr("NBSECRETS_STATE_DIR", "/var/lib/nbsecrets"), "with --hub: hub-service's state dir, where its NATS keys are (created when missing) ($NBSECRETS_STATE_DIR)")
	hubWorkspaces := fs.Int("workspaces", 1000, "with --hub: how many workspaces the service account's JetStream limits are sized for")
	hubAccountsOut := fs.String("accounts-out", "", "with --hub, for a server with accounts of its own: write the account entries to this file, to include inside its accounts block (needs --authorization-out)")
	hubAuthzOut := fs.String("authorization-out", "", "with --hub: write the auth_callout entry to this file, to include inside the server's authorization block (needs --accounts-out)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *hubMode {
		return runNatsConfigHub(env, fs, hubConfigArgs{stateDir: *hubState, out: *out, accountsOut: *hubAccountsOut, authzOut: *hubAuthzOut, workspaces: *hubWorkspaces})
	}
	if *dirFile == "" || fs.NArg() > 0 {
		fmt.Fprintln(env.stderr, "nbsecrets nats-config: --directory is required and there are no arguments")
		fs.Usage()
		return errUsage
	}
	dir, err := controlplane.LoadDirectory(*dirFile)
	if err != nil {
		return err
	}
	cfg := natsauth.Config{Directory: dir, AgentKeys: map[string]string{}, UserKeys: map[string]string{}}
	key := func(path, who string) (string, error) {
		kp, created, err := keyfile.LoadOrCreate(path, false, nkeys.PrefixByteUser)
		if err != nil {
			return "", fmt.Errorf("NATS key of %s: %w", who, err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return "", fmt.Errorf("NATS key of %s: %w", who, err)
		}
		if created {
			fmt.Fprintf(env.stderr, "created the NATS key of %s: %s (%s)\n", who, path, pub)
		}
		return pub, nil
	}
	svc, err := key(filepath.Join(*keysDir, "service.nk"), "the secrets service")
	if err != nil {
		return err
	}
	cfg.ServiceKeys = []string{svc}
	for _, w := range dir.Workspaces {
		if cfg.AgentKeys[w.ID], err = key(filepath.Join(*keysDir, "workspaces", w.ID+".nk"), "workspace "+w.ID); err != nil {
			return err
		}
	}
	for _, u := range dir.Users {
		if cfg.UserKeys[u.ID], err = key(filepath.Join(*keysDir, "users", u.ID+".nk"), "user "+u.ID); err != nil {
			return err
		}
	}
	conf, err := natsauth.Generate(cfg)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err := env.stdout.Write(conf)
		return err
	}
	if err := writeFileAtomic(*out, conf, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	fmt.Fprintf(env.stderr, "wrote %s: %d workspaces, %d users\n", *out, len(dir.Workspaces), len(dir.Users))
	return nil
}
