package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

// runServe is `nbsecrets serve`: the secrets service alone, against a
// production NATS with JetStream.
//
//	nbsecrets serve --nats URL [--creds FILE] --directory FILE
//	                --sign-key FILE --curve-key FILE [--log-level LEVEL] [--log-json]
//	                [--shared-name-pattern RE] [--admins-name-shared]
//
// --sign-key is the seed file (0600) of the ed25519 nkey that signs records
// and --curve-key that of the curve key that seals them; agents pin their
// public keys, which the service logs when it starts ("serving ...
// sign_key=... curve_key=..."). The directory file (format: package
// controlplane, deploy/directory.example.json) is reloaded without a
// restart on SIGHUP and when it changes on disk (fsnotify on its
// directory, and a check every reloadInterval; only when its bytes
// changed). A file that does not load is refused with a log line and the
// previous directory stays. Each flag has an environment variable.
//
// Several replicas may serve the same NATS at once (they share requests in
// a queue group; every write is a compare-and-set): the one holding the
// background lease (a key in the service bucket, renewed every 5s, taken
// over 15s after its holder is gone) reconciles after a directory change.
func runServe(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "serve", "--nats URL [--creds FILE] --directory FILE --sign-key FILE --curve-key FILE [flags]")
	url := fs.String("nats", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma-separated ($NATS_URL)")
	auth := addNATSAuthFlags(fs)
	dirFile := fs.String("directory", envOr("NBSECRETS_DIRECTORY", ""), "directory file: users, projects, communities, workspaces (required) ($NBSECRETS_DIRECTORY)")
	signKey := fs.String("sign-key", envOr("NBSECRETS_SIGN_KEY", ""), "seed file of the service's ed25519 signing nkey, mode 0600 (required) ($NBSECRETS_SIGN_KEY)")
	curveKey := fs.String("curve-key", envOr("NBSECRETS_CURVE_KEY", ""), "seed file of the service's curve key, mode 0600 (required) ($NBSECRETS_CURVE_KEY)")
	names := addNameFlags(fs)
	live := liveFlag(fs)
	batchSigs := batchSignaturesFlag(fs)
	replicas := fs.Int("bucket-replicas", envInt("NBSECRETS_BUCKET_REPLICAS", 1), "copies of each KV bucket the service creates: 3 on a three-node JetStream cluster ($NBSECRETS_BUCKET_REPLICAS)")
	reconcileEvery := fs.Duration("reconcile-interval", envDuration("NBSECRETS_RECONCILE_INTERVAL", 0), "how often the replica holding the background lease rewrites records the bucket lost; 0: only at start, take-over and directory changes ($NBSECRETS_RECONCILE_INTERVAL)")
	healthAddr := fs.String("health-addr", envOr("NBSECRETS_HEALTH_ADDR", ""), "serve /healthz, /readyz and /metrics on this host:port (for probes and scrapers; names no user, secret or workspace); empty: off ($NBSECRETS_HEALTH_ADDR)")
	logLevel, logJSON := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkEnvNumbers(); err != nil {
		return err
	}
	liveOn, err := live()
	if err != nil {
		return err
	}
	if *replicas < 1 || *replicas > 5 {
		return fmt.Errorf("--bucket-replicas %d: JetStream keeps 1 to 5 copies", *replicas)
	}
	if *reconcileEvery < 0 {
		return fmt.Errorf("--reconcile-interval %v: must not be negative", *reconcileEvery)
	}
	var missing []string
	for _, f := range []struct{ name, v string }{{"--directory", *dirFile}, {"--sign-key", *signKey}, {"--curve-key", *curveKey}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 || fs.NArg() != 0 {
		if len(missing) > 0 {
			fmt.Fprintf(env.stderr, "nbsecrets serve: missing %v\n", missing)
		}
		fs.Usage()
		return errUsage
	}
	log, err := newLogger(env.stderr, *logLevel, *logJSON)
	if err != nil {
		return err
	}
	signKP, err := keyfile.Load(*signKey)
	if err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	curveKP, err := keyfile.Load(*curveKey)
	if err != nil {
		return fmt.Errorf("curve key: %w", err)
	}
	path, err := filepath.Abs(*dirFile)
	if err != nil {
		return err
	}
	src := &fileSource{path: path, log: log.Named("directory")}
	dir, err := src.Directory(ctx)
	if err != nil {
		return err
	}

	authOpts, err := auth.options()
	if err != nil {
		return err
	}
	opts := append([]nats.Option{nats.Name("nbsecrets-service"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}, authOpts...)
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", *url, err)
	}
	defer nc.Close()
	health := &serveHealth{nc: nc}
	if *healthAddr != "" {
		stop, err := startServeHealth(ctx, *healthAddr, health, log.Named("health"))
		if err != nil {
			return err
		}
		defer stop()
	}
	namePolicy, err := names.policy()
	if err != nil {
		return err
	}
	svc, err := controlplane.New(controlplane.Options{Conn: nc, SignKey: signKP, CurveKey: curveKP, Directory: dir, Logger: log,
		Names: namePolicy, Replicas: *replicas, ReconcileInterval: *reconcileEvery, Live: liveOn,
		SingleSignatures: !*batchSigs})
	if err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = svc.Start(startCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("starting the secrets service: %w", err)
	}
	defer svc.Stop()
	health.svc.Store(svc)
	log.Info("directory loaded", "path", path, "users", len(dir.Users), "projects", len(dir.Projects),
		"communities", len(dir.Communities), "workspaces", len(dir.Workspaces))

	src.Watch(ctx, svc.SetDirectory)
	log.Info("stopping")
	return nil
}

// parseDirectory decodes and checks a directory file's bytes.
func parseDirectory(path string, data []byte) (*controlplane.Directory, error) {
	d, err := controlplane.DecodeDirectory(bytes.NewReader(data))
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// reloadInterval is how often watchDirectory reads the file besides
// fsnotify and SIGHUP, in case an event is missed (network filesystems,
// a ConfigMap's symlink swap).
const reloadInterval = 30 * time.Second

// reloadSettle lets a burst of events (an editor's write, rename and
// chmod) become one reload.
const reloadSettle = 100 * time.Millisecond

// goWatchDirectory runs watchDirectory on a goroutine of its own; stop
// ends it and waits for it.
func goWatchDirectory(ctx context.Context, path string, current []byte, log hclog.Logger, apply func([]byte) error) (stop func()) {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchDirectory(wctx, path, current, log, apply)
	}()
	return func() { cancel(); <-done }
}

// watchDirectory runs until ctx ends. It calls apply with the file's bytes
// on SIGHUP, and when fsnotify reports a change in the file's directory or
// every reloadInterval, if the bytes differ from the last ones seen
// (current at first). A failed apply is logged; the caller keeps its old
// directory and the same bytes are not tried again until they change or
// SIGHUP.
func watchDirectory(ctx context.Context, path string, current []byte, log hclog.Logger, apply func([]byte) error) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var events <-chan fsnotify.Event
	var errs <-chan error
	if w, err := fsnotify.NewWatcher(); err != nil {
		log.Warn("cannot watch the directory file; relying on SIGHUP and polling", "error", err)
	} else {
		defer w.Close()
		if err := w.Add(filepath.Dir(path)); err != nil {
			log.Warn("cannot watch the directory file; relying on SIGHUP and polling", "dir", filepath.Dir(path), "error", err)
		} else {
			events, errs = w.Events, w.Errors
		}
	}
	tick := time.NewTicker(reloadInterval)
	defer tick.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	last := current
	reload := func(force bool, why string) {
		data, err := os.ReadFile(path)
		if err != nil {
			log.Error("directory file unreadable; keeping the previous directory", "path", path, "error", err)
			return
		}
		if !force && bytes.Equal(data, last) {
			return
		}
		last = data
		if err := apply(data); err != nil {
			log.Error("directory refused; keeping the previous one", "path", path, "trigger", why, "error", err)
			return
		}
		log.Info("directory reloaded", "path", path, "trigger", why)
	}
	// A change made between the caller's read and the watch above raised
	// no event: look once now.
	reload(false, "file changed")
	log.Debug("watching the directory file", "path", path)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			reload(true, "SIGHUP")
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if filepath.Clean(ev.Name) == path || filepath.Base(ev.Name) == "..data" {
				settle.Reset(reloadSettle)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if !errors.Is(err, fsnotify.ErrEventOverflow) {
				log.Warn("watching the directory file", "error", err)
			}
			settle.Reset(reloadSettle)
		case <-settle.C:
			reload(false, "file changed")
		case <-tick.C:
			reload(false, "poll")
		}
	}
}

// envInt is the integer in the environment variable name, or def when it
// is unset or not an integer.
func envInt(name string, def int) int {
	var v int
	if _, err := fmt.Sscan(os.Getenv(name), &v); err != nil {
		return def
	}
	return v
}

// envDuration is the duration in the environment variable name, or def
// when it is unset or not a duration.
func envDuration(name string, def time.Duration) time.Duration {
	v, err := time.ParseDuration(os.Getenv(name))
	if err != nil {
		return def
	}
	return v
}

// checkEnvNumbers refuses a malformed NBSECRETS_BUCKET_REPLICAS or
// NBSECRETS_RECONCILE_INTERVAL rather than falling back to the default.
func checkEnvNumbers() error {
	if v := os.Getenv("NBSECRETS_BUCKET_REPLICAS"); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil {
			return fmt.Errorf("NBSECRETS_BUCKET_REPLICAS=%q is not a number", v)
		}
	}
	if v := os.Getenv("NBSECRETS_RECONCILE_INTERVAL"); v != "" {
		if _, err := time.ParseDuration(v); err != nil {
			return fmt.Errorf("NBSECRETS_RECONCILE_INTERVAL=%q: %w", v, err)
		}
	}
	return nil
}
