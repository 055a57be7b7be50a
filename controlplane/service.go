package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
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
	dir      *directory
	log      hclog.Logger
	now      func() time.Time
	nonces   nonceCache

	records jetstream.KeyValue // protocol.Bucket
	store   *store             // ServiceBucket
	openers sync.Map           // workspace id -> *protocol.Opener, to read our own records back

	ctx    context.Context // cancelled by Stop once requests are done
	cancel context.CancelFunc
	slots  chan struct{}

	mu       sync.Mutex
	started  bool
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
		dir: dir, log: opts.Logger, now: opts.Now, slots: make(chan struct{}, maxInFlight),
	}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	s.log = s.log.Named("controlplane")
	if s.now == nil {
		s.now = time.Now
	}
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
	s.records, err = ensureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket: protocol.Bucket, History: 1, Storage: jetstream.FileStorage,
		Description: "nbsecrets: signed, sealed secret records per workspace",
	})
	if err != nil {
		return err
	}
	kv, err := ensureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket: ServiceBucket, History: 1, Storage: jetstream.FileStorage,
		Description: "nbsecrets: the secrets service's own state (values sealed)",
	})
	if err != nil {
		return err
	}
	s.store = &store{kv: kv, curve: s.curve, pub: s.curvePub}
	if err := s.reconcile(ctx); err != nil {
		return err
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
	s.log.Info("serving", "subject", SubjectPrefix+"*", "sign_key", s.signPub, "curve_key", s.curvePub)
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
	if err != nil {
		return fmt.Errorf("controlplane: stopping: %w", err)
	}
	return nil
}

// ensureBucket binds to a KV bucket, creating it if it is missing.
func ensureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("controlplane: KV bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// dispatch runs on the subscription's goroutine: it hands the request to a
// goroutine of its own, at most maxInFlight at once.
func (s *Service) dispatch(m *nats.Msg) {
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

// handle authenticates one request, carries it out and replies.
func (s *Service) handle(m *nats.Msg) {
	op := strings.TrimPrefix(m.Subject, SubjectPrefix)
	ctx, cancel := context.WithTimeout(s.ctx, requestTimeout)
	defer cancel()

	var rep reply
	req, value, err := s.authenticate(op, m.Data)
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
	key, ok := s.dir.users[req.User]
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

func (s *Service) create(ctx context.Context, req *requestBody, value []byte) (*SecretInfo, error) {
	if err := protocol.ValidateName(req.Name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := checkValue(value); err != nil {
		return nil, err
	}
	scope := protocol.Scope{Kind: protocol.ScopeUser, ID: req.User}
	if req.Project != "" {
		if err := protocol.ValidateID(req.Project); err != nil {
			return nil, fmt.Errorf("%w: project: %w", ErrInvalid, err)
		}
		scope = protocol.Scope{Kind: protocol.ScopeProject, ID: req.Project}
	}
	if err := s.dir.mayCreate(req.User, scope); err != nil {
		return nil, err
	}
	id := newSecretID()
	if err := s.store.claimName(ctx, scope, req.Name, id); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	m := &secretMeta{ID: id, Name: req.Name, Scope: scope, Version: 1,
		CreatedAt: now, CreatedBy: req.User, UpdatedAt: now, UpdatedBy: req.User}
	var err error
	if m.Sealed, err = s.store.seal(id, value); err == nil {
		s.target(m)
		err = s.store.put(ctx, m, 0)
	}
	if err != nil {
		return nil, errors.Join(err, s.store.releaseName(ctx, scope, req.Name, id))
	}
	if err := s.publish(ctx, m, value); err != nil {
		return nil, err
	}
	s.log.Info("secret created", "op", opCreate, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	info := m.info()
	return &info, nil
}

// update sets a secret's value; with value nil it keeps the value and only
// bumps the version and re-sends the records.
func (s *Service) update(ctx context.Context, req *requestBody, value []byte) (*SecretInfo, error) {
	if value != nil {
		if err := checkValue(value); err != nil {
			return nil, err
		}
	}
	found, err := s.resolve(ctx, req.User, req.Name)
	if err != nil {
		return nil, err
	}
	m, err := s.change(ctx, found.ID, req.User, func(m *secretMeta) error {
		if value == nil {
			return nil
		}
		sealed, err := s.store.seal(m.ID, value)
		m.Sealed = sealed
		return err
	})
	if err != nil {
		return nil, err
	}
	if value == nil {
		if value, err = s.store.open(m); err != nil {
			return nil, err
		}
		defer clear(value)
	}
	if err := s.publish(ctx, m, value); err != nil {
		return nil, err
	}
	s.log.Info("secret updated", "op", opUpdate, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"id", m.ID, "version", m.Version, "workspaces", len(m.Visible))
	info := m.info()
	return &info, nil
}

func (s *Service) delete(ctx context.Context, req *requestBody) (*SecretInfo, error) {
	found, err := s.resolve(ctx, req.User, req.Name)
	if err != nil {
		return nil, err
	}
	m, err := s.change(ctx, found.ID, req.User, func(m *secretMeta) error {
		m.Deleted = true
		m.Sealed = nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := s.publish(ctx, m, nil); err != nil {
		return nil, err
	}
	if err := s.store.releaseName(ctx, m.Scope, m.Name, m.ID); err != nil {
		return nil, err
	}
	s.log.Info("secret deleted", "op", opDelete, "user", req.User, "name", m.Name, "scope", m.Scope.String(),
		"id", m.ID, "version", m.Version, "workspaces", len(m.Sent))
	info := m.info()
	return &info, nil
}

func (s *Service) list(ctx context.Context, req *requestBody) ([]SecretInfo, error) {
	out := []SecretInfo{}
	for _, scope := range s.dir.scopesOf(req.User) {
		ms, err := s.store.inScope(ctx, scope)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			out = append(out, m.info())
		}
	}
	s.log.Debug("secrets listed", "op", opList, "user", req.User, "count", len(out))
	return out, nil
}

// resolve finds the secret user means by name: the user's own if there is
// one, else the one project secret of that name among the user's projects.
func (s *Service) resolve(ctx context.Context, user, name string) (*secretMeta, error) {
	if err := checkLookupName(name); err != nil {
		return nil, err
	}
	var found []*secretMeta
	for _, scope := range s.dir.scopesOf(user) {
		m, err := s.store.lookup(ctx, scope, name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if scope.Kind == protocol.ScopeUser {
			return m, nil
		}
		found = append(found, m)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: %q is neither private to %s nor in one of their projects", ErrNotFound, name, user)
	case 1:
		return found[0], nil
	}
	var scopes []string
	for _, m := range found {
		scopes = append(scopes, m.Scope.String())
	}
	return nil, fmt.Errorf("%w: %q exists in %s", ErrAmbiguous, name, strings.Join(scopes, ", "))
}

// change applies fn to the secret id as user, bumps its version and writes
// it with compare-and-set, reading and applying again when another writer
// got there first. fn checks nothing about permissions: change does.
func (s *Service) change(ctx context.Context, id, user string, fn func(*secretMeta) error) (*secretMeta, error) {
	for attempt := 0; ; attempt++ {
		m, rev, err := s.store.get(ctx, id)
		if err != nil {
			return nil, err
		}
		if m.Deleted {
			return nil, fmt.Errorf("%w: %q in %s was deleted", ErrNotFound, m.Name, m.Scope)
		}
		if err := s.dir.mayWrite(user, m.Scope, m.CreatedBy); err != nil {
			return nil, err
		}
		if err := fn(m); err != nil {
			return nil, err
		}
		m.Version++
		m.UpdatedAt = s.now().UTC()
		m.UpdatedBy = user
		s.target(m)
		err = s.store.put(ctx, m, rev)
		if errors.Is(err, errConflict) && attempt < maxCASRetries {
			s.log.Debug("concurrent change, retrying", "id", id, "attempt", attempt+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		return m, nil
	}
}

// target sets which workspaces get m's value (none once deleted) and adds
// them to those that ever got a record of it.
func (s *Service) target(m *secretMeta) {
	m.Visible = nil
	if !m.Deleted {
		for _, w := range s.dir.recipients(m.Scope) {
			m.Visible = append(m.Visible, w.ID)
		}
	}
	for _, ws := range m.Visible {
		if !slices.Contains(m.Sent, ws) {
			m.Sent = append(m.Sent, ws)
		}
	}
}

// publish writes m's record for every workspace that ever had the secret:
// the value for those in m.Visible, a tombstone for the others.
func (s *Service) publish(ctx context.Context, m *secretMeta, value []byte) error {
	now := s.now()
	var errs []error
	for _, ws := range m.Sent {
		var data []byte
		var err error
		if w, ok := s.dir.workspace(ws); ok && slices.Contains(m.Visible, ws) {
			data, err = s.sealer.Put(protocol.Recipient{Workspace: ws, CurveKey: w.CurveKey}, m.ID, m.Name, m.Version, m.Scope, value, now)
		} else {
			data, err = s.sealer.Delete(ws, m.ID, m.Name, m.Version, m.Scope, now)
		}
		if err == nil {
			err = s.writeRecord(ctx, ws, m.ID, m.Version, data)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("record of %s for workspace %s: %w", m.ID, ws, err))
		}
	}
	return errors.Join(errs...)
}

// writeRecord puts data under the workspace's key for the secret unless the
// record there already has version or a later one, with compare-and-set:
// when two writers race, the later version stays.
func (s *Service) writeRecord(ctx context.Context, ws, id string, version uint64, data []byte) error {
	key := protocol.RecordKey(ws, id)
	for attempt := 0; ; attempt++ {
		e, err := s.records.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = s.records.Create(ctx, key, data)
		case err != nil:
		default:
			var have uint64
			if have, err = s.recordVersion(ws, key, e.Value()); err != nil {
				return fmt.Errorf("writing %s: %w", key, err)
			}
			if have >= version {
				return nil
			}
			_, err = s.records.Update(ctx, key, data, e.Revision())
		}
		if err == nil {
			return nil
		}
		if (errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)) && attempt < maxCASRetries {
			continue
		}
		return fmt.Errorf("writing %s: %w", key, err)
	}
}

// recordVersion is the version of the record data under key in workspace
// ws when it is one we signed, 0 when it is not (garbage, or signed by
// another key): writeRecord then replaces it. An error means that records
// cannot be checked at all; writeRecord must not write then, since without
// the version check an older record could replace a newer one.
func (s *Service) recordVersion(ws, key string, data []byte) (uint64, error) {
	o, err := s.opener(ws)
	if err != nil {
		return 0, err
	}
	r, err := o.Verify(key, data)
	if err != nil {
		s.log.Warn("replacing a record that is not ours", "key", key, "error", err)
		return 0, nil
	}
	return r.Version, nil
}

// opener returns the verify-only Opener that checks our records for
// workspace ws (signature, workspace, key) to read their versions.
func (s *Service) opener(ws string) (*protocol.Opener, error) {
	if o, ok := s.openers.Load(ws); ok {
		return o.(*protocol.Opener), nil
	}
	o, err := protocol.NewVerifier(ws, []string{s.signPub})
	if err != nil {
		return nil, fmt.Errorf("cannot verify records of workspace %s: %w", ws, err)
	}
	actual, _ := s.openers.LoadOrStore(ws, o)
	return actual.(*protocol.Opener), nil
}

// reconcile rewrites every workspace's records from the store where they
// are behind: an operation that stopped between the store and the records
// (a crash) is finished here. A secret that cannot be reconciled is logged
// and skipped.
func (s *Service) reconcile(ctx context.Context) error {
	ids, err := s.store.all(ctx)
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	for _, id := range ids {
		if err := s.reconcileOne(ctx, id); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("controlplane: reconciling: %w", err)
			}
			s.log.Error("reconciling secret", "id", id, "error", err)
		}
	}
	s.log.Debug("reconciled records", "secrets", len(ids))
	return nil
}

func (s *Service) reconcileOne(ctx context.Context, id string) error {
	m, _, err := s.store.get(ctx, id)
	if err != nil {
		return err
	}
	var value []byte
	if !m.Deleted {
		if value, err = s.store.open(m); err != nil {
			return err
		}
		defer clear(value)
	}
	if err := s.publish(ctx, m, value); err != nil {
		return err
	}
	if m.Deleted {
		return s.store.releaseName(ctx, m.Scope, m.Name, m.ID)
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
