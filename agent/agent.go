package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// Config is an agent's configuration. Zero values say what they mean.
type Config struct {
	Workspace Workspace        // required: who this agent serves and what it may have
	Opener    *protocol.Opener // required: pinned service keys and the workspace's curve key
	Conn      *nats.Conn       // required: the NATS connection (see Connect)

	// RuntimeDirs are the Jupyter runtime directories watched for
	// kernel-*.json. Empty: none (kernels come only from announcements).
	RuntimeDirs []string
	// Socket is the local API's unix socket. Empty: no local API.
	Socket string
	// QuietSocket is the unix socket IPython kernels connect back to for
	// the quiet channel (see quiet.go); kernels must be able to reach the
	// same path. Empty: Socket + ".quiet", or a private temporary directory
	// when Socket is empty too.
	QuietSocket string
	// NoQuiet serves IPython kernels over Jupyter's channels only (control,
	// or a subshell), as before the quiet channel: every re-seed then shows
	// on iopub.
	NoQuiet bool
	// Rescan is how often the runtime dirs are listed besides fsnotify.
	// Zero: 10s.
	Rescan time.Duration
	// Probe is how often a served kernel is checked to still answer.
	// Zero: 15s.
	Probe time.Duration
	// ApplyTimeout bounds one re-seed. Zero: 5s.
	ApplyTimeout time.Duration
	// StateFile keeps, between runs, the newest version of each secret seen
	// (secret ids and versions, no names, no values), so that a restarted
	// agent still refuses an older record put back into the bucket. Empty:
	// none (a restarted agent trusts the newest record it finds).
	StateFile string
	// Logger receives key/value logs; never a value. Nil: no logs.
	Logger hclog.Logger
	// Policy says when a kernel is restarted instead of re-seeded. Zero:
	// never restarted, every change re-seeded live.
	Policy Policy
	// JupyterServer is the server through which kernels are restarted.
	// Nil: a kernel is restarted by asking it to shut down over control
	// and leaving the restart to its manager (see shutdownRestarter).
	JupyterServer *JupyterServer
	// MetricsAddr is the TCP address (host:port) of /healthz, /readyz and
	// /metrics (Prometheus text format). Empty: not served. It must be
	// loopback ("127.0.0.1:9464", "localhost:9464") unless
	// MetricsNonLoopback is set.
	MetricsAddr string
	// MetricsNonLoopback allows a MetricsAddr other hosts can reach. False:
	// such an address is refused.
	MetricsNonLoopback bool
	// AllowRemoteKernels lets the agent serve kernels whose connection
	// files name TCP addresses other than loopback (a kernel in another
	// container of a pod reached by its pod address, say); their
	// listeners' uids cannot be checked. False: only loopback TCP and ipc
	// beside the connection file (see kernelTrust).
	AllowRemoteKernels bool

	// Delivery is how records reach the agent: DeliveryConsumer (a
	// consumer of its own while it runs) or DeliveryLive (the records
	// republished to LiveSubject, a consumer only to read what is stored;
	// the service must republish, see live.go). Empty: DeliveryConsumer.
	Delivery string
	// liveRefresh: tests, the live mode's periodic re-read.
	liveRefresh time.Duration
	// liveJitter: tests, the live mode's wait after a leader election.
	liveJitter time.Duration

	dial dialer // tests: a fake kernel session
}

// Agent serves one workspace's kernels.
type Agent struct {
	state   *stateStore // nil without Config.StateFile
	cfg     Config
	log     hclog.Logger
	st      *store
	kernels *kernels
	metrics *metrics
	obs     observer
	started time.Time
	access  *accessBox // SetAccess to the syncer
	quiet   *quietHub
	// storedReads counts the live mode's reads of what is stored (tests).
	storedReads atomic.Int64
	// delivery is the delivery mode the syncer uses now (Status).
	delivery atomic.Pointer[string]

	mu      sync.Mutex
	running bool
}

// New checks cfg and returns an agent ready to Run.
func New(cfg Config) (*Agent, error) {
	if err := protocol.ValidateID(cfg.Workspace.ID); err != nil {
		return nil, fmt.Errorf("agent: workspace: %w", err)
	}
	if cfg.Opener == nil || cfg.Conn == nil {
		return nil, errors.New("agent: Opener and Conn are required")
	}
	if err := validDelivery(cfg.Delivery); err != nil {
		return nil, err
	}
	if err := checkMetricsAddr(cfg.MetricsAddr, cfg.MetricsNonLoopback); err != nil {
		return nil, err
	}
	if cfg.Rescan == 0 {
		cfg.Rescan = 10 * time.Second
	}
	if cfg.Probe == 0 {
		cfg.Probe = 15 * time.Second
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	var rs restarter = shutdownRestarter{}
	if cfg.JupyterServer != nil {
		if err := cfg.JupyterServer.check(); err != nil {
			return nil, err
		}
		rs = cfg.JupyterServer
	}
	log := cfg.Logger.With("workspace", cfg.Workspace.ID)
	hub := newQuietHub(log.Named("quiet"))
	if cfg.dial == nil {
		cfg.dial = hub.dial
	}
	a := &Agent{cfg: cfg, log: log, st: newStore(cfg.Workspace), metrics: &metrics{}, access: newAccessBox(), quiet: hub}
	if cfg.StateFile != "" {
		a.state = &stateStore{path: cfg.StateFile, ws: cfg.Workspace.ID, keys: cfg.Opener.SignerKeys()}
		floor, err := a.state.load()
		if err != nil {
			log.Warn("state file ignored; replays of older records are refused only from now on", "error", err)
		}
		for id, v := range floor {
			a.st.floor[id] = v
		}
	}
	a.kernels = &kernels{log: log.Named("kernel"), st: a.st, dial: cfg.dial, probeInterval: cfg.Probe,
		applyTimeout: cfg.ApplyTimeout, metrics: a.metrics, workers: map[string]*worker{},
		policy: cfg.Policy, restarter: rs, trust: kernelTrust{allowRemote: cfg.AllowRemoteKernels}}
	if cfg.AllowRemoteKernels {
		log.Warn("kernels on non-loopback addresses are served: their listeners' uids cannot be checked")
	}
	if cfg.Policy.Restarts() {
		log.Info("restart policy", "on_change", cfg.Policy.OnChange, "on_revoke", cfg.Policy.OnRevoke,
			"busy_wait", cfg.Policy.BusyWait, "busy_action", cfg.Policy.BusyAction, "splay", cfg.Policy.Splay,
			"restart_window", cfg.Policy.MinInterval, "mechanism", rs.String())
		if cfg.JupyterServer == nil && cfg.Policy.MinInterval < 10*time.Second {
			log.Warn("restarts without a Jupyter Server leave restarting to the kernel's manager, which gives up after 5 deaths less than 10s apart; a restart window of 10s or more is safer",
				"restart_window", cfg.Policy.MinInterval)
		}
	}
	return a, nil
}

// Run serves until ctx ends: it reads the records, watches the runtime
// dirs, re-seeds kernels and serves the local API. It returns when every
// goroutine it started has stopped.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return errors.New("agent: already running")
	}
	a.running = true
	a.started = time.Now()
	a.mu.Unlock()

	js, err := jetstream.New(a.cfg.Conn)
	if err != nil {
		return fmt.Errorf("agent: jetstream: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	var obsL net.Listener
	if a.cfg.MetricsAddr != "" {
		if obsL, err = a.listenObserve(); err != nil {
			return err
		}
		defer obsL.Close() // for an early return; the server closes it too
	}
	if a.cfg.Socket != "" {
		l, err := listen(a.cfg.Socket, a.log)
		if err != nil {
			return fmt.Errorf("agent: local API: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.serveAPI(ctx, l); err != nil {
				errs <- fmt.Errorf("agent: local API: %w", err)
				cancel()
			}
		}()
	}
	if l, path, cleanup, err := a.listenQuiet(); err != nil {
		// Kernels are still served, the old way; say why.
		a.log.Warn("quiet channel unavailable; IPython kernels are re-seeded over Jupyter's channels, visibly on iopub", "error", err)
	} else if l != nil {
		defer cleanup()
		a.quiet.setPath(path) // before any kernel is dialled
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.quiet.serve(ctx, l, path); err != nil {
				errs <- fmt.Errorf("agent: quiet channel: %w", err)
				cancel()
			}
		}()
	}
	if obsL != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.serveObserve(ctx, obsL); err != nil {
				errs <- fmt.Errorf("agent: metrics: %w", err)
				cancel()
			}
		}()
	}
	s := &syncer{js: js, ws: a.cfg.Workspace.ID, opener: a.cfg.Opener, st: a.st, log: a.log.Named("sync"), now: time.Now,
		published: a.saveState, access: a.access, live: a.cfg.Delivery == DeliveryLive, liveRefresh: a.cfg.liveRefresh,
		storedReads: &a.storedReads, liveJitter: a.cfg.liveJitter, inUse: &a.delivery}
	wg.Add(3)
	go func() { defer wg.Done(); a.publishStatus(ctx) }()
	go func() { defer wg.Done(); s.run(ctx) }()
	go func() {
		defer wg.Done()
		if err := a.kernels.run(ctx, a.cfg.RuntimeDirs, a.cfg.Rescan); err != nil {
			errs <- fmt.Errorf("agent: watching kernels: %w", err)
			cancel()
		}
	}()
	a.log.Info("agent started", "runtime_dirs", a.cfg.RuntimeDirs, "socket", a.cfg.Socket)
	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	a.log.Info("agent stopped")
	return errors.Join(all...)
}

// listenQuiet opens the quiet channel's socket (see Config.QuietSocket);
// a nil listener without error when the channel is off (Config.NoQuiet).
func (a *Agent) listenQuiet() (net.Listener, string, func(), error) {
	if a.cfg.NoQuiet {
		return nil, "", nil, nil
	}
	path := a.cfg.QuietSocket
	cleanup := func() {}
	if path == "" && a.cfg.Socket != "" {
		path = a.cfg.Socket + ".quiet"
	}
	if path == "" {
		dir, err := os.MkdirTemp("", "nbsecrets-quiet-")
		if err != nil {
			return nil, "", nil, err
		}
		path, cleanup = filepath.Join(dir, "quiet.sock"), func() { _ = os.RemoveAll(dir) }
	}
	l, err := listen(path, a.log.Named("quiet"))
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	// Kernels refuse a socket in a directory others can write (another
	// user could have put it there); say so here rather than time out.
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm()&0o022 != 0 {
		_ = l.Close()
		cleanup()
		if err == nil {
			err = fmt.Errorf("directory %s is writable by group or others (mode %#o); kernels would refuse the socket", filepath.Dir(path), fi.Mode().Perm())
		}
		return nil, "", nil, err
	}
	return l, path, cleanup, nil
}

// saveState records the versions held, if the agent keeps a state file.
func (a *Agent) saveState() {
	if a.state == nil {
		return
	}
	if err := a.state.save(a.st.versionsCopy()); err != nil {
		a.log.Warn("cannot write the state file", "error", err)
	}
}

// SetAccess changes what the workspace may have while the agent runs: its
// owner, projects and communities (not its ID). Secrets it may no longer
// have leave every kernel as a deleted one would (a revoke, for the restart
// policy); records it may now have are read again from NATS and applied.
// It returns at once; the agent's reader applies the change, or applies it
// when it starts if it has not yet.
func (a *Agent) SetAccess(ws Workspace) error {
	if ws.ID != a.cfg.Workspace.ID {
		return fmt.Errorf("agent: SetAccess: workspace %q is not this agent's %q", ws.ID, a.cfg.Workspace.ID)
	}
	a.access.put(ws)
	return nil
}

// Loaded is closed once the first load of the records is applied.
func (a *Agent) Loaded() <-chan struct{} { return a.st.loaded }

// AddKernel serves the kernel of a connection file (as an announcement does).
func (a *Agent) AddKernel(connFile string) { a.kernels.add(connFile) }

// SecretStatus is one secret as status shows it: never a value.
type SecretStatus struct {
	Name       string         `json:"name"`
	SecretID   string         `json:"secret_id"`
	Version    uint64         `json:"version"`
	Scope      protocol.Scope `json:"scope"`
	ShadowedBy string         `json:"shadowed_by,omitempty"` // scope of the same-named secret that wins
	OverBudget bool           `json:"over_budget,omitempty"` // left out: the workspace's budget is spent
}

// Status is what the agent holds: names, versions, kernels. Never a value.
type Status struct {
	Workspace      string            `json:"workspace"`
	Owner          string            `json:"owner"`       // what the workspace may have: its owner's secrets,
	Projects       []string          `json:"projects"`    // its projects',
	Communities    []string          `json:"communities"` // and those shared with its communities
	NATS           string            `json:"nats"`
	NATSServer     string            `json:"nats_server,omitempty"`
	Delivery       string            `json:"delivery,omitempty"` // DeliveryLive or DeliveryConsumer: in use now (after a fallback, consumer)
	Loaded         bool              `json:"loaded"`
	LastSync       time.Time         `json:"last_sync,omitzero"`
	Started        time.Time         `json:"started"`
	Secrets        []SecretStatus    `json:"secrets"`
	Kernels        []KernelStatus    `json:"kernels"`
	RecordsApplied uint64            `json:"records_applied"`
	Refused        map[string]uint64 `json:"records_refused"`
	Reseeds        uint64            `json:"reseeds"`
	ReseedErrors   uint64            `json:"reseed_errors"`
}

// Status reports what the agent holds now.
func (a *Agent) Status() Status {
	d, loaded := a.st.snapshot()
	a.mu.Lock()
	started := a.started // written by Run
	a.mu.Unlock()
	a.st.mu.Lock()
	ws := a.st.ws
	st := Status{Workspace: a.cfg.Workspace.ID, Owner: ws.Owner, Projects: slices.Clone(ws.Projects),
		Communities: slices.Clone(ws.Communities), Loaded: loaded, LastSync: a.st.lastSync, Started: started,
		RecordsApplied: a.st.applied, Refused: make(map[string]uint64, len(a.st.refused))}
	for k, v := range a.st.refused {
		st.Refused[k] = v
	}
	a.st.mu.Unlock()
	st.NATS = a.cfg.Conn.Status().String()
	st.NATSServer = a.cfg.Conn.ConnectedUrlRedacted()
	if d := a.delivery.Load(); d != nil {
		st.Delivery = *d
	}
	for _, n := range d.Names() {
		v := d.Env[n]
		st.Secrets = append(st.Secrets, SecretStatus{Name: n, SecretID: v.SecretID, Version: v.Version, Scope: v.Scope})
	}
	for _, sh := range d.Shadowed {
		st.Secrets = append(st.Secrets, SecretStatus{Name: sh.Name, SecretID: sh.SecretID, Scope: sh.Scope, ShadowedBy: sh.By.String()})
	}
	for _, o := range d.OverBudget {
		st.Secrets = append(st.Secrets, SecretStatus{Name: o.Name, SecretID: o.SecretID, Scope: o.Scope, OverBudget: true})
	}
	st.Kernels = a.kernels.statuses()
	a.metrics.mu.Lock()
	st.Reseeds, st.ReseedErrors = a.metrics.reseeds, a.metrics.reseedErrors
	a.metrics.mu.Unlock()
	return st
}

// Connect opens a NATS connection that never gives up: it retries a failed
// first connect, reconnects forever, and logs disconnects and reconnects.
// A subscription the server refuses reports it as its own error
// (nats.PermissionErrOnSubscribe), which live delivery relies on to fall
// back to a consumer. opts come after these defaults (credentials, TLS, a
// name).
func Connect(url string, log hclog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	base := []nats.Option{
		nats.Name("nbsecrets-agent"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.PermissionErrOnSubscribe(true),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() {
				log.Debug("NATS connection closed")
				return
			}
			log.Warn("NATS disconnected; reconnecting", "error", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "server", c.ConnectedUrlRedacted()) }),
		nats.ConnectHandler(func(c *nats.Conn) { log.Info("NATS connected", "server", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("NATS error", "error", err) }),
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("agent: connecting to NATS at %s: %w", url, err)
	}
	return nc, nil
}
