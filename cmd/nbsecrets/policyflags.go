package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nbsecrets/nbsecrets/agent"
)

// Defaults of the restart policy flags. Restarting is off by default
// (--on-change and --on-revoke reseed); the rest says how considerately a
// policy that restarts does it.
const (
	defaultBusyWait      = 5 * time.Minute
	defaultBusyAction    = agent.BusyRestart
	defaultRestartWindow = 30 * time.Second
)

// policyFlags adds the restart policy flags to fs, each with an
// environment variable (the flag wins):
//
//	--on-change reseed|restart|reseed-or-restart  ($NBSECRETS_ON_CHANGE, default reseed)
//	--on-revoke reseed|restart                    ($NBSECRETS_ON_REVOKE, default reseed)
//	--busy-wait D            wait for a busy kernel ($NBSECRETS_BUSY_WAIT, default 5m)
//	--busy-action restart|give-up                 ($NBSECRETS_BUSY_ACTION, default restart)
//	--splay D                random delay before a restart ($NBSECRETS_SPLAY, default 0s)
//	--restart-window D       at most one restart per kernel per D ($NBSECRETS_RESTART_WINDOW, default 30s)
//	--jupyter-url URL        restart through this Jupyter Server ($NBSECRETS_JUPYTER_URL)
//	--jupyter-token-file F   its token (default $JUPYTER_TOKEN) ($NBSECRETS_JUPYTER_TOKEN_FILE)
//
// After fs is parsed, the returned function builds the policy and the
// server (nil without --jupyter-url). `nbsecrets agent` and `nbsecrets dev`
// share it.
func policyFlags(fs *flag.FlagSet) func() (agent.Policy, *agent.JupyterServer, error) {
	var envErrs []error
	dur := func(name, env string, def time.Duration, usage string) *time.Duration {
		if v := os.Getenv(env); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("$%s: %w", env, err))
			} else {
				def = d
			}
		}
		return fs.Duration(name, def, usage+" ($"+env+")")
	}
	onChange := fs.String("on-change", envOr("NBSECRETS_ON_CHANGE", string(agent.ActReseed)),
		"when a kernel's values change: reseed (live, in place), restart, or reseed-or-restart (restart only kernels that cannot be re-seeded) ($NBSECRETS_ON_CHANGE)")
	onRevoke := fs.String("on-revoke", envOr("NBSECRETS_ON_REVOKE", string(agent.ActReseed)),
		"when a name is taken from a kernel (delete, unshare, rename): reseed, or restart to take back a value copied into a variable ($NBSECRETS_ON_REVOKE)")
	busyWait := dur("busy-wait", "NBSECRETS_BUSY_WAIT", defaultBusyWait, "how long a restart waits for a running cell to end")
	busyAction := fs.String("busy-action", envOr("NBSECRETS_BUSY_ACTION", string(defaultBusyAction)),
		"a kernel still busy after --busy-wait: restart (anyway) or give-up (re-seed instead where possible) ($NBSECRETS_BUSY_ACTION)")
	splay := dur("splay", "NBSECRETS_SPLAY", 0, "random delay up to this before each restart, to spread restarts across kernels")
	window := dur("restart-window", "NBSECRETS_RESTART_WINDOW", defaultRestartWindow,
		"at most one restart per kernel per window; a change inside it is applied when it ends (0: no limit)")
	jupyterURL := fs.String("jupyter-url", envOr("NBSECRETS_JUPYTER_URL", ""),
		"Jupyter Server base URL to restart kernels through (POST /api/kernels/{id}/restart); empty: ask the kernel to shut down and let its manager restart it ($NBSECRETS_JUPYTER_URL)")
	tokenFile := fs.String("jupyter-token-file", envOr("NBSECRETS_JUPYTER_TOKEN_FILE", ""),
		"file holding the Jupyter Server's token (default: $JUPYTER_TOKEN) ($NBSECRETS_JUPYTER_TOKEN_FILE)")
	return func() (agent.Policy, *agent.JupyterServer, error) {
		var pol agent.Policy
		errs := append([]error(nil), envErrs...)
		var err error
		if pol.OnChange, err = agent.ParseChangeAction(*onChange); err != nil {
			errs = append(errs, fmt.Errorf("--on-change: %w", err))
		}
		if pol.OnRevoke, err = agent.ParseChangeAction(*onRevoke); err != nil || pol.OnRevoke == agent.ActReseedOrRestart {
			errs = append(errs, fmt.Errorf("--on-revoke %q: want reseed or restart", *onRevoke))
		}
		if pol.BusyAction, err = agent.ParseBusyAction(*busyAction); err != nil {
			errs = append(errs, fmt.Errorf("--busy-action: %w", err))
		}
		pol.BusyWait, pol.Splay, pol.MinInterval = *busyWait, *splay, *window
		if err := pol.Validate(); err != nil && len(errs) == 0 {
			errs = append(errs, err)
		}
		var js *agent.JupyterServer
		switch {
		case *jupyterURL != "":
			js = &agent.JupyterServer{URL: *jupyterURL, Token: os.Getenv("JUPYTER_TOKEN")}
			if *tokenFile != "" {
				b, err := os.ReadFile(*tokenFile)
				if err != nil {
					errs = append(errs, fmt.Errorf("--jupyter-token-file: %w", err))
				} else if js.Token = strings.TrimSpace(string(b)); js.Token == "" {
					errs = append(errs, fmt.Errorf("--jupyter-token-file %s is empty", *tokenFile))
				}
			}
		case *tokenFile != "":
			errs = append(errs, errors.New("--jupyter-token-file needs --jupyter-url"))
		}
		if err := errors.Join(errs...); err != nil {
			return agent.Policy{}, nil, err
		}
		return pol, js, nil
	}
}
