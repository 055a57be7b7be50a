package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/protocol"
)

// Options configure a Service.
type Options struct {
	// Conn is the NATS connection, to a server with JetStream. Required.
	Conn *nats.Conn
	// SignKey is the ed25519 nkey (with its seed) that signs records; agents
	// pin its public key. Required.
	SignKey nkeys.KeyPair
	// CurveKey is the service's curve key (with its seed): it seals records
	// to workspaces, opens values that clients sealed to its public key and
	// seals values at rest to itself. Required.
	CurveKey nkeys.KeyPair
	// Directory is who exists and who belongs where. Required; New checks
	// it and keeps its own copy.
	Directory *Directory
	// Logger receives key/value logs (op, user, name, version; never a
	// value). Nil discards them.
	Logger hclog.Logger
	// Now is the clock for request timestamps and record times. Nil means
	// time.Now.
	Now func() time.Time
	// Names tightens the names of shared secrets; the zero value adds
	// nothing to the reserved list (see NamePolicy).
	Names NamePolicy
	// LeaseTTL is how long the background lease lasts unless its holder
	// renews it (see lease.go): when the holder is gone, another replica
	// takes the background work over within about this long. 0 means
	// DefaultLeaseTTL. It must exceed the replicas' clock skew.
	LeaseTTL time.Duration
	// ReconcileInterval is how often the lease holder reconciles every
	// secret with the directory besides directory changes and take-overs,
	// rewriting records the bucket lost. 0 means never.
	ReconcileInterval time.Duration
	// Replicas is how many copies of each KV bucket a JetStream cluster
	// keeps when the service creates the buckets (3 on a three-node
	// cluster). 0 means 1. Buckets that exist keep their own setting.
	Replicas int
	// Live makes the records stream republish each record to LivePrefix
	// (see live.go) for agents in live delivery: set when the service
	// creates the bucket, added to one that exists (which takes
	// $JS.API.STREAM.UPDATE of the records stream). False: no republish;
	// a RePublish already set stays.
	Live bool
	// SingleSignatures signs every record alone, as services before batch
	// signatures did, for as long as agents older than them read the
	// bucket (they refuse a batch record): a rolling upgrade's first step.
	// False: a fan-out signs each chunk of records once (protocol.Batch).
	SingleSignatures bool
}

// QueueGroup is the NATS queue group the service subscribes in, so that
// several instances can share the API.
const QueueGroup = "nbsecrets-service"

const (
	requestTimeout = 15 * time.Second // bounds the JetStream work of one request
	maxInFlight    = 16               // requests handled at once
	maxCASRetries  = 64               // retries of a compare-and-set that keeps losing
)

// Service is the secrets service. Make one with New, then Start it.
type Service struct {
	nc       *nats.Conn
	sealer   *protocol.Sealer
	signPub  string // public signing key, to read back our own records
	curvePub string
	curve    nkeys.KeyPair
	dir      atomic.Pointer[directory] // swapped by SetDirectory
	dirMu    sync.Mutex                // serialises directory swaps and their reconciliation
	log      hclog.Logger
	now      func() time.Time
	nonces   nonceCache
	names    NamePolicy
	replicas int  // of the buckets the service creates
	live     bool // Options.Live
	single   bool // Options.SingleSignatures
	leaseTTL time.Duration
	every    time.Duration  // ReconcileInterval
	lease    *lease         // the background lease, from Start
	bg       sync.WaitGroup // the lease's goroutines
	// wroteHook, when set (tests), runs after each record written.
	wroteHook func()

	records jetstream.KeyValue // protocol.Bucket
	nonceKV jetstream.KeyValue // NonceBucket
	store   *store             // ServiceBucket
	openers sync.Map           // workspace id -> *protocol.Opener, to read our own records back
	revs    revCache           // record key -> revision and version last written or verified
	// verified counts the records read back and verified before being
	// replaced (the slow path of writeRecord).
	verified atomic.Int64

	ctx    context.Context // cancelled by Stop once requests are done
	cancel context.CancelFunc
	slots  chan struct{}

	mu       sync.Mutex
	started  bool
	ready    bool // Start has reconciled: SetDirectory must reconcile too
	stopped  bool
	sub      *nats.Subscription
	inflight sync.WaitGroup
}

// New checks opts and returns a Service that is not yet serving.
func New(opts Options) (*Service, error) {
	if opts.Conn == nil {
		return nil, errors.New("controlplane: no NATS connection")
	}
	if opts.SignKey == nil || opts.CurveKey == nil {
		return nil, errors.New("controlplane: signing and curve keys are required")
	}
	sealer, err := protocol.NewSealer(opts.SignKey, opts.CurveKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	signPub, err := opts.SignKey.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("controlplane: signing key: %w", err)
	}
	curvePub, err := opts.CurveKey.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("controlplane: curve key: %w", err)
	}
	dir, err := newDirectory(opts.Directory)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s := &Service{
		nc: opts.Conn, sealer: sealer, signPub: signPub, curvePub: curvePub, curve: opts.CurveKey,
		log: opts.Logger, now: opts.Now, slots: make(chan struct{}, maxInFlight), names: opts.Names,
		replicas: max(opts.Replicas, 1), live: opts.Live, single: opts.SingleSignatures, leaseTTL: opts.LeaseTTL, every: opts.ReconcileInterval,
	}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	s.log = s.log.Named("controlplane")
	if s.now == nil {
		s.now = time.Now
	}
	s.dir.Store(dir)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Start creates the KV buckets if they are missing, brings every
// workspace's records up to date with the service's store (finishing what a
// crash interrupted), and subscribes to the API. It returns once the
// service is serving.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started || s.stopped {
		s.mu.Unlock()
		return errors.New("controlplane: service already started")
	}
	s.started = true
	s.mu.Unlock()

	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("controlplane: jetstream: %w", err)
	}
	recordsCfg := jetstream.KeyValueConfig{
		Bucket: protocol.Bucket, History: 1, Storage: jetstream.FileStorage, Replicas: s.replicas,
		Description: "nbsecrets: signed, sealed secret records per workspace",
	}
	if s.live {
		recordsCfg.RePublish = liveRePublish()
	}
	s.records, err = ensureBucket(ctx, js, recordsCfg)
	if err != nil {
		return err
	}
	if s.live {
		if err := s.ensureRePublish(ctx, js); err != nil {
			return err
		}
	}
	kv, err := ensureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket: ServiceBucket, History: 1, Storage: jetstream.FileStorage, Replicas: s.replicas,
		Description: "nbsecrets: the secrets service's own state (values sealed)",
	})
	if err != nil {
		return err
	}
	s.store = &store{kv: kv, curve: s.curve, pub: s.curvePub}
	nonceCfg := nonceBucketConfig
	nonceCfg.Replicas = s.replicas
	if s.nonceKV, err = ensureBucket(ctx, js, nonceCfg); err != nil {
		return err
	}
	s.lease = newLease(kv, s.leaseTTL, s.now, s.log)
	// One try for the lease before the reconciliation every start makes,
	// so that taking it does not make a second one at once.
	s.lease.tick(ctx)
	select {
	case <-s.lease.gained:
	default:
	}
	s.dirMu.Lock()
	_, failed, err := s.reconcile(ctx, s.dir.Load(), nil)
	if err == nil {
		s.mu.Lock()
		s.ready = true
		s.mu.Unlock()
	}
	s.dirMu.Unlock()
	if err != nil {
		return err
	}
	for _, err := range failed {
		s.log.Error("reconciling secret", "error", err)
	}
	sub, err := s.nc.QueueSubscribe(SubjectPrefix+"*", QueueGroup, s.dispatch)
	if err != nil {
		return fmt.Errorf("controlplane: subscribing to %s*: %w", SubjectPrefix, err)
	}
	if err := s.nc.FlushTimeout(requestTimeout); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("controlplane: subscribing to %s*: %w", SubjectPrefix, err)
	}
	s.mu.Lock()
	s.sub = sub
	s.mu.Unlock()
	s.background(s.ctx, s.every)
	s.log.Info("serving", "subject", SubjectPrefix+"*", "sign_key", s.signPub, "curve_key", s.curvePub, "batch_signatures", !s.single)
	return nil
}

// Stop stops taking requests and waits for those under way. It does not
// close the connection.
func (s *Service) Stop() error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	sub := s.sub
	s.mu.Unlock()
	var err error
	if sub != nil {
		if err = sub.Unsubscribe(); errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
			err = nil
		}
	}
	s.inflight.Wait()
	s.cancel()
	s.bg.Wait() // the lease released
	if err != nil {
		return fmt.Errorf("controlplane: stopping: %w", err)
	}
	return nil
}

// ensureBucket binds to a KV bucket, creating it if it is missing.
func ensureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, bucketAttempt)
		kv, err := ensureBucketOnce(actx, js, cfg)
		cancel()
		if err == nil {
			return kv, nil
		}
		// A JetStream cluster electing its leaders (a node restarting, all
		// of them starting at once) can leave a request unanswered or
		// answer that JetStream is not there yet: ask again, each time with
		// a deadline of its own, until ctx ends.
		transient := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) ||
			errors.Is(err, jetstream.ErrJetStreamNotEnabled)
		if !transient || ctx.Err() != nil {
			return nil, fmt.Errorf("controlplane: KV bucket %s: %w", cfg.Bucket, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("controlplane: KV bucket %s: %w", cfg.Bucket, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// bucketAttempt is how long ensureBucket waits for one answer.
var bucketAttempt = 5 * time.Second

func ensureBucketOnce(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	return kv, err
}

// dispatch runs on the subscription's goroutine: it hands the request to a
// goroutine of its own, at most maxInFlight at once.
func (s *Service) dispatch(m *nats.Msg) {
	if !inboxReply(m.Reply) {
		// A reply aimed at another subject could land in a stream (a
		// record's subject): never carry out or answer such a request.
		s.log.Warn("request refused: its reply subject is not an inbox", "subject", m.Subject, "reply", m.Reply)
		return
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	s.slots <- struct{}{}
	go func() {
		defer func() {
			<-s.slots
			s.inflight.Done()
		}()
		s.handle(m)
	}()
}

// inboxReply reports whether a request's reply subject is one the service
// may answer on: none, a client inbox (_INBOX.) or a reply the server maps
// across accounts (_R_.). The per-account NATS configuration of nats-config
// already keeps replies from reaching a stream; this is the second check,
// for deployments that put everyone in one account.
func inboxReply(reply string) bool {
	return reply == "" || strings.HasPrefix(reply, "_INBOX.") || strings.HasPrefix(reply, "_R_.")
}

// handle authenticates one request, carries it out and replies.
func (s *Service) handle(m *nats.Msg) {
	op := strings.TrimPrefix(m.Subject, SubjectPrefix)
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout+time.Duration(len(s.dir.Load().workspaces))*perRecordTime)
	defer cancel()

	var rep reply
	req, value, err := s.authenticate(op, m.Data)
	if err == nil {
		err = checkSender(m, req.User)
		ctx = withCommitDeadline(ctx, req.Deadline)
	}
	if err == nil {
		err = s.useNonce(ctx, req)
	}
	if err == nil {
		switch op {
		case opCreate:
			rep.Secret, err = s.create(ctx, req, value)
		case opUpdate:
			rep.Secret, err = s.update(ctx, req, value)
		case opDelete:
			rep.Secret, err = s.delete(ctx, req)
		case opList:
			rep.Secrets, err = s.list(ctx, req)
		case opClone:
			rep.Secret, err = s.clone(ctx, req, value)
		case opShare:
			rep.Secret, err = s.share(ctx, req)
		case opUnshare:
			rep.Secret, err = s.unshare(ctx, req)
		default:
			err = fmt.Errorf("%w: unknown operation %q", ErrInvalid, op)
		}
	}
	clear(value)
	if err != nil {
		code := codeOf(err)
		rep = reply{Error: &replyError{Code: code, Message: err.Error()}}
		user := ""
		if req != nil {
			user = req.User
		}
		switch code {
		case "unauthenticated", "forbidden":
			s.log.Warn("request refused", "op", op, "user", user, "code", code, "error", err)
		case "internal":
			s.log.Error("request failed", "op", op, "user", user, "error", err)
		default:
			s.log.Info("request refused", "op", op, "user", user, "code", code, "error", err)
		}
	}
	if m.Reply == "" {
		return
	}
	data, err := json.Marshal(&rep)
	if err != nil {
		s.log.Error("encoding reply", "op", op, "error", err)
		return
	}
	if err := m.Respond(data); err != nil {
		s.log.Warn("sending reply", "op", op, "error", err)
	}
}

// authenticate checks a request and returns its body and, when it carries
// one, the value it sealed to the service (the caller clears it). In order:
// size, envelope, signature by the user's key from the directory, operation
// matching the subject, timestamp within MaxClockSkew, nonce not seen
// before. Only then does it open the value.
func (s *Service) authenticate(op string, data []byte) (*requestBody, []byte, error) {
	if len(data) > maxRequestSize {
		return nil, nil, fmt.Errorf("%w: request of %d bytes, limit %d", ErrInvalid, len(data), maxRequestSize)
	}
	var env requestEnvelope
	if err := decodeStrict(data, &env); err != nil {
		return nil, nil, fmt.Errorf("%w: request is not a signed envelope", ErrUnauthenticated)
	}
	if env.V != 1 {
		return nil, nil, fmt.Errorf("%w: unknown request format %d", ErrInvalid, env.V)
	}
	raw, err1 := b64.DecodeString(env.Req)
	sig, err2 := b64.DecodeString(env.Sig)
	if err1 != nil || err2 != nil {
		return nil, nil, fmt.Errorf("%w: request envelope has bad base64", ErrUnauthenticated)
	}
	var req requestBody
	if err := decodeStrict(raw, &req); err != nil {
		return nil, nil, fmt.Errorf("%w: signed request is malformed", ErrUnauthenticated)
	}
	key, ok := s.dir.Load().users[req.User]
	if !ok {
		return nil, nil, fmt.Errorf("%w: unknown user %q", ErrUnauthenticated, printable(req.User))
	}
	if err := key.Verify(append([]byte(requestDomain), raw...), sig); err != nil {
		return nil, nil, fmt.Errorf("%w: bad signature for user %s", ErrUnauthenticated, req.User)
	}
	if req.Op != op {
		return &req, nil, fmt.Errorf("%w: request signed for %q sent to %q", ErrUnauthenticated, printable(req.Op), printable(op))
	}
	now := s.now()
	if skew := now.Sub(req.Time); skew > MaxClockSkew || skew < -MaxClockSkew {
		return &req, nil, fmt.Errorf("%w: request time %s is %v from the service's clock (limit ±%v)",
			ErrUnauthenticated, req.Time.UTC().Format(time.RFC3339), skew.Round(time.Second), MaxClockSkew)
	}
	if len(req.Nonce) < 16 || len(req.Nonce) > 64 {
		return &req, nil, fmt.Errorf("%w: nonce must be 16 to 64 characters", ErrUnauthenticated)
	}
	if !s.nonces.add(req.User+" "+req.Nonce, req.Time.Add(MaxClockSkew), now) {
		return &req, nil, fmt.Errorf("%w: replayed request (nonce already used)", ErrUnauthenticated)
	}
	if req.Sealed == nil {
		return &req, nil, nil
	}
	if !nkeys.IsValidPublicCurveKey(req.EphemeralKey) {
		return &req, nil, fmt.Errorf("%w: ephemeral key is not a curve public key", ErrInvalid)
	}
	plain, err := s.curve.Open(req.Sealed, req.EphemeralKey)
	if err != nil {
		return &req, nil, fmt.Errorf("%w: sealed value cannot be opened with the service's key (wrong service curve key?)", ErrInvalid)
	}
	var sv sealedValue
	err = json.Unmarshal(plain, &sv)
	clear(plain)
	if err != nil {
		return &req, nil, fmt.Errorf("%w: sealed value is malformed", ErrInvalid)
	}
	if sv.User != req.User || sv.Nonce != req.Nonce {
		clear(sv.Value)
		return &req, nil, fmt.Errorf("%w: sealed value belongs to another request", ErrUnauthenticated)
	}
	if sv.Value == nil {
		sv.Value = []byte{}
	}
	return &req, sv.Value, nil
}

// checkValue refuses an empty or invalid value.
func checkValue(value []byte) error {
	if len(value) == 0 {
		return fmt.Errorf("%w: empty value", ErrInvalid)
	}
	if err := protocol.ValidateValue(value); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// checkLookupName refuses a name that no secret can have. Names refused
// only as reserved pass, so that a secret made before a name was reserved
// can still be changed or deleted.
func checkLookupName(name string) error {
	if err := protocol.ValidateName(name); err != nil && !errors.Is(err, protocol.ErrForbiddenName) {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// nonceCache remembers the nonces of accepted requests until their
// timestamps fall out of the window, after which the timestamp check
// refuses a replay anyway.
type nonceCache struct {
	mu        sync.Mutex
	seen      map[string]time.Time // nonce -> when it may be forgotten
	nextPrune time.Time
}

// add records key until then and reports whether it was new.
func (c *nonceCache) add(key string, until, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = make(map[string]time.Time)
	}
	if !now.Before(c.nextPrune) {
		for k, t := range c.seen {
			if now.After(t) {
				delete(c.seen, k)
			}
		}
		c.nextPrune = now.Add(MaxClockSkew / 4)
	}
	if t, ok := c.seen[key]; ok && !now.After(t) {
		return false
	}
	c.seen[key] = until
	return true
}

// printable makes a string from a refused request safe to log and to echo:
// control characters and invalid UTF-8 become "?".
func printable(s string) string {
	more := ""
	if len(s) > 64 {
		s, more = s[:64], "..."
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s) + more
}
