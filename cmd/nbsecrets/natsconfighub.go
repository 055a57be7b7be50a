package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/nbsecrets/nbsecrets/controlplane/natsauth"
)

// hubConfigArgs are nats-config --hub's flags.
type hubConfigArgs struct {
	stateDir, out, accountsOut, authzOut string
	workspaces                           int
}

// runNatsConfigHub is `nbsecrets nats-config --hub`: the accounts and the
// auth_callout block that an existing NATS server needs for hub-service
// (natsauth.GenerateCallout), with the service's NATS key and the callout
// issuer from the state dir's keys/nats (created when missing, and used by
// hub-service when it runs with --nats and no --nkey or --creds). With
// --accounts-out and --authorization-out it writes the two parts for a
// server whose configuration has those blocks already (a second accounts
// block would replace the first).
func runNatsConfigHub(env *cliEnv, fs *flag.FlagSet, a hubConfigArgs) error {
	split := a.accountsOut != "" || a.authzOut != ""
	if fs.NArg() > 0 || (split && (a.accountsOut == "" || a.authzOut == "" || a.out != "")) {
		fmt.Fprintln(env.stderr, "nbsecrets nats-config --hub: no arguments; --accounts-out and --authorization-out go together, without --out")
		fs.Usage()
		return errUsage
	}
	cfg, err := hubCalloutConfig(a.stateDir, a.workspaces)
	if err != nil {
		return err
	}
	if split {
		accounts, authz, err := natsauth.GenerateCalloutParts(cfg)
		if err != nil {
			return err
		}
		const head = "# nbsecrets (nats-config --hub): include inside the server's %s block; do not edit.\n"
		if err := errors.Join(writeFileAtomic(a.accountsOut, append([]byte(fmt.Sprintf(head, "accounts")), accounts...), 0o600),
			writeFileAtomic(a.authzOut, append([]byte(fmt.Sprintf(head, "authorization")), authz...), 0o600)); err != nil {
			return fmt.Errorf("writing the configuration: %w", err)
		}
		fmt.Fprintf(env.stderr, "wrote %s (inside accounts { }) and %s (inside authorization { }); reload the server\n", a.accountsOut, a.authzOut)
		return nil
	}
	conf, err := natsauth.GenerateCallout(cfg)
	if err != nil {
		return err
	}
	if a.out == "" {
		_, err := env.stdout.Write(conf)
		return err
	}
	if err := writeFileAtomic(a.out, conf, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", a.out, err)
	}
	fmt.Fprintf(env.stderr, "wrote %s: the nbsecrets accounts and auth callout; include it in the server's configuration and reload it\n", a.out)
	return nil
}
