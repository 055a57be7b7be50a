package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/nbsecrets/nbsecrets/injector"

	"github.com/nats-io/nats.go"

	"github.com/hashicorp/go-hclog"
)

// newLogger is the one root logger of a command: key/value pairs on stderr.
func newLogger(w io.Writer, level string, json bool) (hclog.Logger, error) {
	lvl := hclog.LevelFromString(level)
	if lvl == hclog.NoLevel {
		return nil, fmt.Errorf("unknown log level %q (trace, debug, info, warn, error)", level)
	}
	return hclog.New(&hclog.LoggerOptions{Name: "nbsecrets", Level: lvl, Output: w, JSONFormat: json}), nil
}

// logFlags adds --log-level and --log-json.
func logFlags(fs *flag.FlagSet) (level *string, json *bool) {
	return fs.String("log-level", envOr("NBSECRETS_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error ($NBSECRETS_LOG_LEVEL)"),
		fs.Bool("log-json", false, "log as JSON lines")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// jupyterRuntimeDir is where Jupyter writes connection files:
// $JUPYTER_RUNTIME_DIR, else <data dir>/runtime.
func jupyterRuntimeDir() string {
	if d := os.Getenv("JUPYTER_RUNTIME_DIR"); d != "" {
		return d
	}
	return filepath.Join(injector.DefaultDataDir(), "runtime")
}

// listFlag is a comma-separated, repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// natsAuthFlags are the NATS client credential and TLS flags, spelled as the
// NATS tools spell them.
type natsAuthFlags struct {
	creds, nkey, ca, cert, key *string
}

func addNATSAuthFlags(fs *flag.FlagSet) *natsAuthFlags {
	return &natsAuthFlags{
		creds: fs.String("creds", envOr("NATS_CREDS", ""), "NATS credentials file (user JWT and nkey seed) ($NATS_CREDS)"),
		nkey:  fs.String("nkey", envOr("NATS_NKEY", ""), "NATS nkey seed file, for nkey authentication, e.g. from 'nbsecrets nats-config' ($NATS_NKEY)"),
		ca:    fs.String("tlsca", envOr("NATS_CA", ""), "CA certificate to verify the NATS server ($NATS_CA)"),
		cert:  fs.String("tlscert", envOr("NATS_CERT", ""), "client certificate for NATS ($NATS_CERT)"),
		key:   fs.String("tlskey", envOr("NATS_KEY", ""), "client certificate key for NATS ($NATS_KEY)"),
	}
}

// options turns the flags into nats.Options.
func (f *natsAuthFlags) options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case *f.creds != "" && *f.nkey != "":
		return nil, errors.New("give --creds or --nkey, not both")
	case *f.creds != "":
		opts = append(opts, nats.UserCredentials(*f.creds))
	case *f.nkey != "":
		o, err := nats.NkeyOptionFromSeed(*f.nkey)
		if err != nil {
			return nil, fmt.Errorf("nkey: %w", err)
		}
		opts = append(opts, o)
	}
	if *f.ca != "" {
		opts = append(opts, nats.RootCAs(*f.ca))
	}
	if *f.cert != "" || *f.key != "" {
		opts = append(opts, nats.ClientCert(*f.cert, *f.key))
	}
	return opts, nil
}

// lowMemory makes the garbage collector keep a long-running sidecar's heap
// small (GOGC=50: measured in make bench, the agent's peak RSS drops from
// about 21 to 19 MB) unless the operator set GOGC.
func lowMemory() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
}
