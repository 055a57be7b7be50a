package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/controlplane/hub"
	"github.com/nbsecrets/nbsecrets/controlplane/web"
	"github.com/nbsecrets/nbsecrets/internal/keyfile"
)

// runHubService is `nbsecrets hub-service`: the secrets service as a
// JupyterHub-managed service (deploy/jupyterhub/nbsecrets_config.py starts
// it). Who exists comes from the hub; the web UI and the HTTP API are
// served under $JUPYTERHUB_SERVICE_PREFIX behind the hub's OAuth; agents
// register at <prefix>api/v1/hub/agents.
//
// Environment from the hub: JUPYTERHUB_API_URL, JUPYTERHUB_API_TOKEN (the
// service's token: lists users and groups, OAuth client secret),
// JUPYTERHUB_SERVICE_URL (where to listen), JUPYTERHUB_SERVICE_PREFIX,
// JUPYTERHUB_CLIENT_ID (default service-$JUPYTERHUB_SERVICE_NAME),
// JUPYTERHUB_BASE_URL (for the login redirect).
//
// Agents connect to NATS with the key they registered and are authorised
// by the service itself (auth callout, hubnats.go), on the embedded server
// or on an existing one ($NBSECRETS_NATS_URL) configured with `nbsecrets
// nats-config --hub`.
func runHubService(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "hub-service", "[flags]")
	stateDir := fs.String("state-dir", envOr("NBSECRETS_STATE_DIR", "/var/lib/nbsecrets"), "service state: keys and the embedded NATS server's JetStream store ($NBSECRETS_STATE_DIR)")
	natsURL := fs.String("nats", envOr("NBSECRETS_NATS_URL", ""), "an existing NATS server with JetStream; empty runs an embedded one on loopback ($NBSECRETS_NATS_URL)")
	auth := addNATSAuthFlags(fs)
	natsListen := fs.String("nats-listen", envOr("NBSECRETS_NATS_LISTEN", "127.0.0.1:0"), "the embedded NATS server's address; port 0 picks one (agents learn it when they register) ($NBSECRETS_NATS_LISTEN)")
	agentExpiry := fs.Duration("agent-nats-expiry", envDuration("NBSECRETS_AGENT_NATS_EXPIRY", defaultAgentExpiry), "how long an agent's NATS credentials last on an existing NATS server (--nats), where a stopped server's agent is cut off only when they expire; the embedded server closes its connection at once ($NBSECRETS_AGENT_NATS_EXPIRY)")
	agentNATS := fs.String("agent-nats-url", envOr("NBSECRETS_AGENT_NATS_URL", ""), "the NATS URL agents are told (default: the one the service uses) ($NBSECRETS_AGENT_NATS_URL)")
	prefix := fs.String("group-prefix", envOr("NBSECRETS_GROUP_PREFIX", ""), "only hub groups starting with this are projects; empty: every group ($NBSECRETS_GROUP_PREFIX)")
	comms := fs.String("communities", envOr("NBSECRETS_COMMUNITIES_FILE", ""), "the communities file: {\"communities\":[{\"id\",\"admins\",\"projects\"}]} ($NBSECRETS_COMMUNITIES_FILE)")
	poll := fs.Duration("poll", hub.DefaultInterval, "how often the hub's groups are read (how soon a group change takes effect)")
	usersPoll := fs.Duration("users-poll", hub.DefaultUsersInterval, "how often the hub's whole user list is read (hub admins, running servers; a new user a group names or an agent registers for is read at once)")
	proofKey := fs.String("server-proof-key", envOr("NBSECRETS_SERVER_PROOF_KEY_FILE", ""), "the key of the hub's server proofs, which tell a user's servers apart on JupyterHub 3 (nbsecrets_config.py makes it) ($NBSECRETS_SERVER_PROOF_KEY_FILE)")
	listen := fs.String("listen", "", "address to serve HTTP on (default: the host and port of $JUPYTERHUB_SERVICE_URL)")
	live := liveFlag(fs)
	batchSigs := batchSignaturesFlag(fs)
	logLevel, logJSON := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	liveOn, err := live()
	if err != nil {
		return err
	}
	apiURL, token := os.Getenv("JUPYTERHUB_API_URL"), os.Getenv("JUPYTERHUB_API_TOKEN")
	if apiURL == "" || token == "" {
		return errors.New("JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN are not set: run it as a hub-managed service (deploy/jupyterhub/nbsecrets_config.py)")
	}
	svcPrefix := cmp.Or(os.Getenv("JUPYTERHUB_SERVICE_PREFIX"), "/services/nbsecrets/")
	clientID := cmp.Or(os.Getenv("JUPYTERHUB_CLIENT_ID"), "service-"+cmp.Or(os.Getenv("JUPYTERHUB_SERVICE_NAME"), "nbsecrets"))
	if *listen == "" {
		u, err := url.Parse(os.Getenv("JUPYTERHUB_SERVICE_URL"))
		if err != nil || u.Host == "" {
			return errors.New("no --listen and no usable $JUPYTERHUB_SERVICE_URL")
		}
		*listen = u.Host
	}
	log, err := newLogger(env.stderr, *logLevel, *logJSON)
	if err != nil {
		return err
	}
	communities, err := hub.LoadCommunities(*comms)
	if err != nil {
		return err
	}
	var serverProofKey []byte
	if *proofKey != "" {
		if serverProofKey, err = hub.LoadProofKey(*proofKey); err != nil {
			return err
		}
	} else {
		log.Warn("no server proof key: on a hub whose server tokens do not name their server (JupyterHub 3), agents cannot register")
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the state dir: %w", err)
	}
	keys := filepath.Join(dir, "keys")
	signKP, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "service.sign.nk"), false, nkeys.PrefixByteAccount)
	if err != nil {
		return err
	}
	curveKP, _, err := keyfile.LoadOrCreate(filepath.Join(keys, "service.curve.nk"), true, nkeys.PrefixByteCurve)
	if err != nil {
		return err
	}
	signPub, _ := signKP.PublicKey()
	curvePub, _ := curveKP.PublicKey()

	// Agents get NATS credentials of their workspace by auth callout
	// (hubnats.go), from the embedded server or an existing one configured
	// with `nbsecrets nats-config --hub --state-dir DIR`.
	var natsOpts []nats.Option
	var agentsNATS *hubNATS
	if *natsURL == "" {
		var o nats.Option
		if agentsNATS, o, err = startHubNATS(dir, *natsListen, log); err != nil {
			return err
		}
		natsOpts = []nats.Option{o}
		*natsURL = agentsNATS.ns.ClientURL()
	} else {
		var o nats.Option
		if agentsNATS, o, err = newHubNATS(dir, *agentExpiry, log); err != nil {
			return err
		}
		if natsOpts, err = auth.options(); err != nil {
			return err
		}
		if *auth.creds == "" && *auth.nkey == "" {
			natsOpts = append(natsOpts, o) // the key nats-config --hub printed
		}
	}
	defer agentsNATS.stop()
	nc, err := nats.Connect(*natsURL, append([]nats.Option{nats.Name("nbsecrets-service"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond)}, natsOpts...)...)
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", *natsURL, err)
	}
	defer nc.Close()
	if err := agentsNATS.startCallout(nc); err != nil {
		return err
	}

	client := &hub.Client{APIURL: apiURL, Token: token}
	src, err := hub.NewSource(hub.SourceOptions{Client: client, GroupPrefix: *prefix, Communities: communities, Interval: *poll,
		UsersInterval: *usersPoll, Logger: log})
	if err != nil {
		return err
	}
	var first *controlplane.Directory
	for attempt := 0; ; attempt++ {
		if first, err = src.Directory(ctx); err == nil {
			break
		}
		if attempt == 30 || ctx.Err() != nil {
			return fmt.Errorf("asking the hub who exists: %w", err)
		}
		log.Warn("the hub does not answer yet", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err := agentsNATS.apply(first); err != nil {
		return err
	}
	svc, err := controlplane.New(controlplane.Options{Conn: nc, SignKey: signKP, CurveKey: curveKP, Directory: first, Logger: log.Named("service"),
		Live: liveOn, SingleSignatures: !*batchSigs})
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return fmt.Errorf("starting the secrets service: %w", err)
	}
	defer svc.Stop()
	// A directory from the hub reaches the agents' NATS authorisation
	// first (an agent that registered can connect), then the service (its
	// records).
	apply := func(d *controlplane.Directory) error {
		if err := agentsNATS.apply(d); err != nil {
			return err
		}
		return svc.SetDirectory(d)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { // owned here: stopWatch ends it
		defer close(watched)
		src.Watch(wctx, apply)
	}()
	defer func() { stopWatch(); <-watched }()

	oauth, err := hub.NewOAuth(hub.OAuthOptions{Client: client, ClientID: clientID, Prefix: svcPrefix,
		AuthorizeURL: cmp.Or(os.Getenv("JUPYTERHUB_BASE_URL"), "/") + "hub/api/oauth2/authorize", Seen: src.EnsureUser, Logger: log})
	if err != nil {
		return err
	}
	rollout, err := web.StartRollout(nc, log.Named("web"))
	if err != nil {
		return err
	}
	defer rollout.Stop()
	ui, err := web.New(web.Options{Service: svc, Auth: oauth, BasePath: svcPrefix, Rollout: rollout, Logger: log})
	if err != nil {
		return err
	}
	reg := &hub.Registrar{Source: src, Client: client, Logger: log.Named("register"), ProofKey: serverProofKey,
		Reply: hub.RegisterReply{NATSURL: cmp.Or(*agentNATS, *natsURL), ServiceKeys: []string{signPub}, ServiceCurveKey: curvePub}}
	reg.AddNATSUser = agentsNATS.setAgentKey
	mux := http.NewServeMux()
	mux.Handle(strings.TrimSuffix(svcPrefix, "/")+"/"+hub.RegisterPath, reg)
	mux.Handle("/", oauth.Wrap(ui))
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }() // owned here: Shutdown ends it
	log.Info("serving the hub", "listen", l.Addr().String(), "prefix", svcPrefix, "nats", *natsURL, "sign_key", signPub, "curve_key", curvePub)
	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("serving HTTP: %w", err)
	}
	ui.Close() // ends the rollout event streams, which Shutdown would wait for
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-served
	log.Info("stopping")
	return nil
}
