package controlplane

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// fixture is a real nats-server, a running service and the people and
// workspaces of its directory:
//
//	alice: admin of project ml, owns ws-alice (projects: ml)
//	bob:   member of project ml, owns ws-bob (projects: ml)
//	carol: no project, owns ws-carol
type fixture struct {
	t      *testing.T
	srv    *server.Server
	nc     *nats.Conn
	svc    *Service
	sign   nkeys.KeyPair
	curve  nkeys.KeyPair
	users  map[string]nkeys.KeyPair
	wsKeys map[string]nkeys.KeyPair
	dir    *Directory
	skew   atomic.Int64 // added to the service's clock, in nanoseconds
	logs   *syncBuffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.Start(t), users: map[string]nkeys.KeyPair{}, wsKeys: map[string]nkeys.KeyPair{}, logs: &syncBuffer{}}
	f.sign = must(nkeys.CreateAccount())
	f.curve = must(nkeys.CreateCurveKeys())
	f.dir = &Directory{Projects: []Project{{ID: "ml", Members: []Member{{"alice", RoleAdmin}, {"bob", RoleMember}}}}}
	for _, u := range []string{"alice", "bob", "carol"} {
		kp := must(nkeys.CreateUser())
		f.users[u] = kp
		f.dir.Users = append(f.dir.Users, User{ID: u, PublicKey: must(kp.PublicKey())})
		ws := "ws-" + u
		wk := must(nkeys.CreateCurveKeys())
		f.wsKeys[ws] = wk
		var projects []string
		if u != "carol" {
			projects = []string{"ml"}
		}
		f.dir.Workspaces = append(f.dir.Workspaces, Workspace{ID: ws, Owner: u, Projects: projects, CurveKey: must(wk.PublicKey())})
	}
	f.nc = f.connect()
	f.svc = f.startService(f.nc)
	return f
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func (f *fixture) connect() *nats.Conn {
	f.t.Helper()
	nc, err := nats.Connect(f.srv.ClientURL(), nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	return nc
}

func (f *fixture) startService(nc *nats.Conn) *Service {
	f.t.Helper()
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: f.logs})
	svc, err := New(Options{Conn: nc, SignKey: f.sign, CurveKey: f.curve, Directory: f.dir, Logger: logger,
		Now: func() time.Time { return time.Now().Add(time.Duration(f.skew.Load())) }})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		if err := svc.Stop(); err != nil {
			f.t.Error(err)
		}
	})
	return svc
}

func (f *fixture) client(user string) *Client {
	return NewClient(f.nc, user, f.users[user], must(f.curve.PublicKey()))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// record reads and opens the record of secret id in workspace ws; nil when
// there is none.
func (f *fixture) record(ws, id string) *protocol.Secret {
	f.t.Helper()
	ctx := ctxT(f.t)
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	key := protocol.RecordKey(ws, id)
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		f.t.Fatalf("get %s: %v", key, err)
	}
	o := must(protocol.NewOpener(ws, []string{must(f.sign.PublicKey())}, must(f.curve.PublicKey()), f.wsKeys[ws]))
	sec, err := o.Open(key, e.Value())
	if err != nil {
		f.t.Fatalf("open %s: %v", key, err)
	}
	return sec
}

// wantPut checks that ws holds secret id at version with value.
func (f *fixture) wantPut(ws, id string, version uint64, value string) {
	f.t.Helper()
	sec := f.record(ws, id)
	switch {
	case sec == nil:
		f.t.Fatalf("%s: no record of %s", ws, id)
	case sec.Op != protocol.OpPut || sec.Version != version || string(sec.Value) != value:
		f.t.Fatalf("%s: record of %s is %s v%d with value %q, want put v%d %q", ws, id, sec.Op, sec.Version, string(sec.Value), version, value)
	}
}

// lastSeqs returns the last sequence of both buckets' streams, to show
// that a refused request wrote nothing.
func (f *fixture) lastSeqs() [2]uint64 {
	f.t.Helper()
	ctx := ctxT(f.t)
	js := must(jetstream.New(f.nc))
	var out [2]uint64
	out[0] = must(must(js.Stream(ctx, protocol.StreamName())).Info(ctx)).State.LastSeq
	// The service bucket's last write other than the background lease's,
	// which its holder renews every few seconds whatever the test does.
	st := must(js.Stream(ctx, "KV_"+ServiceBucket))
	prefix := "$KV." + ServiceBucket + "."
	info := must(st.Info(ctx, jetstream.WithSubjectFilter(prefix+">")))
	for subj := range info.State.Subjects {
		if subj == prefix+leaseKey {
			continue
		}
		out[1] = max(out[1], must(st.GetLastMsgForSubject(ctx, subj)).Sequence)
	}
	return out
}

func TestCreateUpdateDeletePrivate(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")

	info, err := alice.Create(ctx, "DB_PASSWORD", []byte("hunter2"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 1 || info.Name != "DB_PASSWORD" || info.Scope != (protocol.Scope{Kind: protocol.ScopeUser, ID: "alice"}) || info.UpdatedBy != "alice" {
		t.Fatalf("created %+v", info)
	}
	if protocol.ValidateID(info.ID) != nil {
		t.Fatalf("secret id %q is not a valid id", info.ID)
	}
	f.wantPut("ws-alice", info.ID, 1, "hunter2")
	for _, ws := range []string{"ws-bob", "ws-carol"} {
		if sec := f.record(ws, info.ID); sec != nil {
			t.Fatalf("%s got alice's private secret", ws)
		}
	}

	up, err := alice.Update(ctx, "DB_PASSWORD", []byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	if up.ID != info.ID || up.Version != 2 {
		t.Fatalf("updated %+v", up)
	}
	f.wantPut("ws-alice", info.ID, 2, "correct horse")

	// nil keeps the value under a new version.
	if _, err := alice.Update(ctx, "DB_PASSWORD", nil); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 3, "correct horse")

	if err := alice.Delete(ctx, "DB_PASSWORD"); err != nil {
		t.Fatal(err)
	}
	sec := f.record("ws-alice", info.ID)
	if sec == nil || sec.Op != protocol.OpDelete || sec.Version != 4 || sec.Name != "DB_PASSWORD" || sec.Value != nil {
		t.Fatalf("after delete: %+v", sec)
	}
	if _, err := alice.Update(ctx, "DB_PASSWORD", []byte("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a deleted secret: %v", err)
	}
	if err := alice.Delete(ctx, "DB_PASSWORD"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if list, err := alice.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("list after delete: %v %v", list, err)
	}

	// The name is free again, for a new secret with a new id.
	again, err := alice.Create(ctx, "DB_PASSWORD", []byte("new"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID == info.ID || again.Version != 1 {
		t.Fatalf("re-created %+v (old id %s)", again, info.ID)
	}
	f.wantPut("ws-alice", again.ID, 1, "new")
}

func TestProjectSecrets(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice, bob, carol := f.client("alice"), f.client("bob"), f.client("carol")

	info, err := bob.Create(ctx, "API_TOKEN", []byte("tok-1"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	if info.Scope != (protocol.Scope{Kind: protocol.ScopeProject, ID: "ml"}) {
		t.Fatalf("scope %v", info.Scope)
	}
	f.wantPut("ws-alice", info.ID, 1, "tok-1")
	f.wantPut("ws-bob", info.ID, 1, "tok-1")
	if f.record("ws-carol", info.ID) != nil {
		t.Fatal("carol's workspace got a project secret")
	}

	if _, err := carol.Create(ctx, "CAROLS", []byte("x"), CreateOptions{Project: "ml"}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("non-member create: %v", err)
	}
	if _, err := carol.Update(ctx, "API_TOKEN", []byte("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("non-member update: %v", err)
	}
	if _, err := bob.Create(ctx, "API_TOKEN", []byte("x"), CreateOptions{Project: "ml"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate create: %v", err)
	}

	// An admin may change any project secret; a member only their own.
	if _, err := alice.Update(ctx, "API_TOKEN", []byte("tok-2")); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Update(ctx, "API_TOKEN", []byte("tok-3")); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Create(ctx, "ADMIN_ONLY", []byte("a"), CreateOptions{Project: "ml"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Update(ctx, "ADMIN_ONLY", []byte("b")); !errors.Is(err, ErrForbidden) {
		t.Fatalf("member updating the admin's secret: %v", err)
	}
	if err := bob.Delete(ctx, "ADMIN_ONLY"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("member deleting the admin's secret: %v", err)
	}
	f.wantPut("ws-bob", info.ID, 3, "tok-3")

	// The same name private and in the project: the private one wins.
	priv, err := alice.Create(ctx, "API_TOKEN", []byte("mine"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if up, err := alice.Update(ctx, "API_TOKEN", []byte("mine-2")); err != nil || up.ID != priv.ID {
		t.Fatalf("update resolved to %+v, %v; want the private secret", up, err)
	}
	list, err := alice.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list {
		got = append(got, fmt.Sprintf("%s %s v%d", s.Scope, s.Name, s.Version))
	}
	want := []string{"user:alice API_TOKEN v2", "project:ml ADMIN_ONLY v1", "project:ml API_TOKEN v3"}
	if !slices.Equal(got, want) {
		t.Fatalf("alice's list\n got %q\nwant %q", got, want)
	}
	if list, err := carol.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("carol's list: %v %v", list, err)
	}

	if err := bob.Delete(ctx, "API_TOKEN"); err != nil {
		t.Fatal(err)
	}
	for _, ws := range []string{"ws-alice", "ws-bob"} {
		if sec := f.record(ws, info.ID); sec == nil || sec.Op != protocol.OpDelete || sec.Version != 4 {
			t.Fatalf("%s after delete: %+v", ws, sec)
		}
	}
}

func TestInvalidRequests(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	cases := []struct {
		name  string
		value []byte
		want  error
	}{
		{"ab", []byte("v"), protocol.ErrInvalidName},
		{"1ABC", []byte("v"), protocol.ErrInvalidName},
		{"LD_PRELOAD", []byte("v"), protocol.ErrForbiddenName},
		{"GOOD_NAME", nil, ErrInvalid},
		{"GOOD_NAME", []byte{}, ErrInvalid},
		{"GOOD_NAME", []byte("a\x00b"), protocol.ErrNULInValue},
		{"GOOD_NAME", bytes.Repeat([]byte("a"), protocol.MaxValueSize+1), protocol.ErrValueTooLarge},
	}
	for _, c := range cases {
		_, err := alice.Create(ctx, c.name, c.value, CreateOptions{})
		if !errors.Is(err, c.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("create %q: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := alice.Create(ctx, "GOOD_NAME", []byte("v"), CreateOptions{Project: "nope"}); !errors.Is(err, ErrForbidden) {
		t.Errorf("unknown project: %v", err)
	}
	if _, err := alice.Update(ctx, "GOOD_NAME", []byte("v")); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if _, err := alice.Update(ctx, "bad.name.>", []byte("v")); !errors.Is(err, ErrInvalid) {
		t.Errorf("name with subject characters: %v", err)
	}
	// A value bigger than the limit sent around the client's check.
	raw := f.rawRequest(t, alice, &requestBody{Op: opCreate, Name: "BIG"}, bytes.Repeat([]byte("a"), protocol.MaxValueSize+1))
	if e := f.send(t, opCreate, raw); e == nil || e.Code != "invalid" {
		t.Errorf("oversized value: %+v", e)
	}
}

func TestAmbiguousProjectName(t *testing.T) {
	f := newFixture(t)
	f.dir.Projects = append(f.dir.Projects, Project{ID: "ops", Members: []Member{{"alice", RoleAdmin}}})
	svc := f.svc
	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	f.svc = f.startService(f.nc)
	ctx := ctxT(t)
	alice := f.client("alice")
	for _, p := range []string{"ml", "ops"} {
		if _, err := alice.Create(ctx, "SHARED", []byte(p), CreateOptions{Project: p}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.Update(ctx, "SHARED", []byte("x")); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("ambiguous update: %v", err)
	}
}

// rawRequest encodes a request as client c would, for tests that tamper
// with it.
func (f *fixture) rawRequest(t *testing.T, c *Client, req *requestBody, value []byte) []byte {
	t.Helper()
	data, err := c.encode(req, value)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// send sends raw bytes on op's subject and returns the error reply, nil for
// success.
func (f *fixture) send(t *testing.T, op string, data []byte) *replyError {
	t.Helper()
	msg, err := f.nc.Request(SubjectPrefix+op, data, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep reply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		t.Fatal(err)
	}
	return rep.Error
}

// tamper decodes an envelope, lets fn change the signed body and re-encodes
// it with the old signature.
func tamper(t *testing.T, data []byte, fn func(*requestBody)) []byte {
	t.Helper()
	var env requestEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	var req requestBody
	if err := json.Unmarshal(must(b64.DecodeString(env.Req)), &req); err != nil {
		t.Fatal(err)
	}
	fn(&req)
	env.Req = b64.EncodeToString(must(json.Marshal(req)))
	return must(json.Marshal(env))
}

func TestForgedRequestsRefused(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	info, err := alice.Create(ctx, "DB_PASSWORD", []byte("original"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	servicePub := must(f.curve.PublicKey())
	update := &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}
	stranger := must(nkeys.CreateUser())

	// A good request, sent once to prove it works and then replayed.
	replayed := f.rawRequest(t, alice, &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("replayed"))
	if e := f.send(t, opUpdate, replayed); e != nil {
		t.Fatalf("first send: %+v", e)
	}
	f.wantPut("ws-alice", info.ID, 2, "replayed")

	// Bob seals his own request around the box of one of alice's.
	aliceReq := f.rawRequest(t, alice, &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("lifted"))
	var lifted requestBody
	var env requestEnvelope
	_ = json.Unmarshal(aliceReq, &env)
	_ = json.Unmarshal(must(b64.DecodeString(env.Req)), &lifted)
	liftedReq := func() []byte {
		// Re-sign as bob with alice's sealed box.
		c := f.client("bob")
		req := &requestBody{Op: opCreate, Name: "STOLEN"}
		req.User, req.Time, req.Nonce = "bob", time.Now().UTC(), newNonce()
		req.EphemeralKey, req.Sealed = lifted.EphemeralKey, lifted.Sealed
		raw := must(json.Marshal(req))
		sig := must(c.key.Sign(append([]byte(requestDomain), raw...)))
		return must(json.Marshal(requestEnvelope{V: 1, Req: b64.EncodeToString(raw), Sig: b64.EncodeToString(sig)}))
	}()

	skewed := func(d time.Duration) []byte {
		c := NewClient(f.nc, "alice", f.users["alice"], servicePub)
		c.now = func() time.Time { return time.Now().Add(d) }
		return f.rawRequest(t, c, &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("skewed"))
	}

	cases := []struct {
		name string
		op   string
		data []byte
		why  string
	}{
		{"wrong key", opUpdate, f.rawRequest(t, NewClient(f.nc, "alice", stranger, servicePub), update, []byte("forged")), "bad signature for user alice"},
		{"other user's id", opUpdate, f.rawRequest(t, NewClient(f.nc, "alice", f.users["bob"], servicePub), &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("forged")), "bad signature for user alice"},
		{"unknown user", opUpdate, f.rawRequest(t, NewClient(f.nc, "mallory", stranger, servicePub), &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("forged")), "unknown user \"mallory\""},
		{"tampered name", opDelete, tamper(t, f.rawRequest(t, alice, &requestBody{Op: opDelete, Name: "OTHER_NAME"}, nil), func(r *requestBody) { r.Name = "DB_PASSWORD" }), "bad signature"},
		{"tampered value", opUpdate, tamper(t, f.rawRequest(t, alice, &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("a")), func(r *requestBody) { r.Sealed = lifted.Sealed; r.EphemeralKey = lifted.EphemeralKey }), "bad signature"},
		{"replayed nonce", opUpdate, replayed, "replayed request"},
		{"stale timestamp", opUpdate, skewed(-3 * time.Minute), "from the service's clock"},
		{"future timestamp", opUpdate, skewed(3 * time.Minute), "from the service's clock"},
		{"other operation's subject", opDelete, f.rawRequest(t, alice, &requestBody{Op: opUpdate, Name: "DB_PASSWORD"}, []byte("x")), "signed for \"update\" sent to \"delete\""},
		{"box lifted from another user's request", opCreate, liftedReq, "sealed value belongs to another request"},
		{"not an envelope", opUpdate, []byte(`{"name":"DB_PASSWORD"}`), "not a signed envelope"},
		{"bad signature encoding", opUpdate, []byte(`{"v":1,"req":"e30","sig":"!!"}`), "bad base64"},
	}
	before := f.lastSeqs()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := f.send(t, c.op, c.data)
			if e == nil || e.Code != "unauthenticated" {
				t.Fatalf("reply %+v, want unauthenticated", e)
			}
			if !strings.HasPrefix(e.Message, ErrUnauthenticated.Error()) || !strings.Contains(e.Message, c.why) {
				t.Fatalf("message %q, want one saying %q", e.Message, c.why)
			}
			if after := f.lastSeqs(); after != before {
				t.Fatalf("streams changed: %v -> %v", before, after)
			}
		})
	}
	f.wantPut("ws-alice", info.ID, 2, "replayed")
	// The client maps the code back.
	c := NewClient(f.nc, "alice", stranger, servicePub)
	if _, err := c.Update(ctx, "DB_PASSWORD", []byte("x")); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("client error: %v", err)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	f := newFixture(t)
	// A second instance in the same queue group on its own connection, as
	// several replicas would run.
	f.startService(f.connect())
	ctx := ctxT(t)
	info, err := f.client("alice").Create(ctx, "COUNTER", []byte("v0"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 6, 4
	var mu sync.Mutex
	versions := map[uint64]string{}
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		c := NewClient(f.connect(), "alice", f.users["alice"], must(f.curve.PublicKey()))
		wg.Go(func() {
			for i := range each {
				val := fmt.Sprintf("w%d-%d", w, i)
				up, err := c.Update(ctx, "COUNTER", []byte(val))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, dup := versions[up.Version]; dup {
					errs <- fmt.Errorf("version %d given to %s and %s", up.Version, prev, val)
				}
				versions[up.Version] = val
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if len(versions) != writers*each {
		t.Fatalf("%d distinct versions, want %d", len(versions), writers*each)
	}
	for v := uint64(2); v <= writers*each+1; v++ {
		if _, ok := versions[v]; !ok {
			t.Fatalf("version %d missing: %v", v, versions)
		}
	}
	last := uint64(writers*each + 1)
	f.wantPut("ws-alice", info.ID, last, versions[last])
	if strings.Count(f.logs.String(), "concurrent change, retrying") == 0 {
		t.Log("no compare-and-set conflict happened in this run")
	}
}

// TestOlderRecordNeverReplacesNewer publishes an older version of a secret
// after a newer one, as a slow request racing a fast one would: the newer
// record must stay. It fails, unlike TestConcurrentUpdates, every time the
// service cannot read its own records' versions back.
func TestOlderRecordNeverReplacesNewer(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	info, err := alice.Create(ctx, "ORDERED", []byte("v1"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Update(ctx, "ORDERED", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 2, "v2")

	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	key := protocol.RecordKey("ws-alice", info.ID)
	e := must(kv.Get(ctx, key))
	if v, err := f.svc.recordVersion("ws-alice", key, e.Value()); err != nil || v != 2 {
		t.Fatalf("recordVersion of our own v2 record = %d, %v", v, err)
	}

	m, _, err := f.svc.store.get(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 1
	if err := f.svc.publish(ctx, m, []byte("stale"), f.svc.dir.Load()); err != nil {
		t.Fatal(err)
	}
	f.wantPut("ws-alice", info.ID, 2, "v2")
	if after := must(kv.Get(ctx, key)); after.Revision() != e.Revision() {
		t.Fatalf("an older record was written over the newer one: revision %d -> %d", e.Revision(), after.Revision())
	}
}

func TestRestartKeepsSecrets(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	info, err := f.client("alice").Create(ctx, "KEEP_ME", []byte("v1"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	f.nc.Close()
	f.srv = natstest.Restart(t, f.srv)
	f.nc = f.connect()
	f.svc = f.startService(f.nc)

	list, err := f.client("alice").List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != info.ID || list[0].Version != 1 {
		t.Fatalf("after restart: %+v", list)
	}
	up, err := f.client("alice").Update(ctx, "KEEP_ME", nil)
	if err != nil {
		t.Fatal(err)
	}
	if up.Version != 2 {
		t.Fatalf("version after restart %d", up.Version)
	}
	f.wantPut("ws-alice", info.ID, 2, "v1")
	if _, err := f.client("alice").Create(ctx, "KEEP_ME", []byte("x"), CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("name not kept unique across restart: %v", err)
	}
}

// TestStartRepairsRecords loses a workspace's record (as when the service
// stopped between its store and the records) and starts the service again.
func TestStartRepairsRecords(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	info, err := f.client("alice").Create(ctx, "REPAIR", []byte("v1"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kv := must(must(jetstream.New(f.nc)).KeyValue(ctx, protocol.Bucket))
	if err := kv.Purge(ctx, protocol.RecordKey("ws-alice", info.ID)); err != nil {
		t.Fatal(err)
	}
	if f.record("ws-alice", info.ID) != nil {
		t.Fatal("record still there")
	}
	if err := f.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	f.svc = f.startService(f.nc)
	f.wantPut("ws-alice", info.ID, 1, "v1")
}

func TestNoPlaintextAtRest(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	alice := f.client("alice")
	values := []string{"plaintext-canary-7f3a9c", "second-canary-b81e22", "project-canary-44d0e1"}
	if _, err := alice.Create(ctx, "CANARY_NAME", []byte(values[0]), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Update(ctx, "CANARY_NAME", []byte(values[1])); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Create(ctx, "PROJECT_CANARY", []byte(values[2]), CreateOptions{Project: "ml"}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	dir := natstest.StoreDir(t, f.srv)
	f.srv.Shutdown() // flushes the stores to disk
	f.srv.WaitForShutdown()

	var all bytes.Buffer
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		all.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(all.Bytes(), []byte("CANARY_NAME")) || !bytes.Contains(all.Bytes(), []byte(ServiceBucket)) {
		t.Fatal("the scan does not see the stores (no secret name found)")
	}
	for _, v := range values {
		for _, form := range encodings(v) {
			if bytes.Contains(all.Bytes(), []byte(form)) {
				t.Errorf("store holds value %q in the clear (as %q)", v, form)
			}
		}
		if strings.Contains(f.logs.String(), v) {
			t.Errorf("log holds value %q", v)
		}
	}
}

// encodings are the forms a value could take in JSON or a log: as is,
// base64 (each alignment, both alphabets) and hex.
func encodings(v string) []string {
	forms := []string{v, hex.EncodeToString([]byte(v))}
	for pad := range 3 {
		p := strings.Repeat("\x00", pad) + v
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
			// Keep the characters that depend on v alone.
			s := strings.TrimRight(enc.EncodeToString([]byte(p)), "=")
			forms = append(forms, s[(pad*4+2)/3:len(s)-3])
		}
	}
	return forms
}

func TestUnavailable(t *testing.T) {
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kp := must(nkeys.CreateUser())
	c := NewClient(nc, "alice", kp, must(must(nkeys.CreateCurveKeys()).PublicKey()))
	if _, err := c.List(ctxT(t)); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), SubjectPrefix+"list") {
		t.Fatalf("no service: %v", err)
	}
}

func TestNewRefusesBadDirectory(t *testing.T) {
	user := must(must(nkeys.CreateUser()).PublicKey())
	curve := must(must(nkeys.CreateCurveKeys()).PublicKey())
	good := func() *Directory {
		return &Directory{
			Users:      []User{{ID: "alice", PublicKey: user}},
			Projects:   []Project{{ID: "p", Members: []Member{{"alice", RoleAdmin}}}},
			Workspaces: []Workspace{{ID: "w", Owner: "alice", Projects: []string{"p"}, CurveKey: curve}},
		}
	}
	cases := map[string]func(*Directory){
		"bad user id":           func(d *Directory) { d.Users[0].ID = "a.b" },
		"duplicate user":        func(d *Directory) { d.Users = append(d.Users, d.Users[0]) },
		"curve key as user key": func(d *Directory) { d.Users[0].PublicKey = curve },
		"unknown member":        func(d *Directory) { d.Projects[0].Members[0].User = "bob" },
		"bad role":              func(d *Directory) { d.Projects[0].Members[0].Role = "owner" },
		"unknown owner":         func(d *Directory) { d.Workspaces[0].Owner = "bob" },
		"unknown project":       func(d *Directory) { d.Workspaces[0].Projects = []string{"q"} },
		"bad curve key":         func(d *Directory) { d.Workspaces[0].CurveKey = user },
		"community project": func(d *Directory) {
			d.Communities = []Community{{ID: "c", Projects: []string{"q"}}}
		},
	}
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	opts := Options{Conn: nc, SignKey: must(nkeys.CreateAccount()), CurveKey: must(nkeys.CreateCurveKeys())}
	opts.Directory = good()
	if _, err := New(opts); err != nil {
		t.Fatalf("good directory: %v", err)
	}
	for name, mutate := range cases {
		d := good()
		mutate(d)
		opts.Directory = d
		if _, err := New(opts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	opts.Directory = good()
	opts.CurveKey = opts.SignKey
	if _, err := New(opts); err == nil {
		t.Error("signing key as curve key: accepted")
	}
}

// syncBuffer is the shared test buffer: safe for concurrent writes.
type syncBuffer = testutil.Buffer

// TestReplyAimedAtARecordIsRefused: a genuine, signed request whose reply
// subject is a record's subject is neither carried out nor answered, so
// its reply cannot overwrite a record.
func TestReplyAimedAtARecordIsRefused(t *testing.T) {
	f := newFixture(t)
	c := f.client("alice")
	before := f.lastSeqs()
	data := f.rawRequest(t, c, &requestBody{Op: opCreate, Name: "INJECTED"}, []byte("never-stored"))
	target := "$KV." + protocol.Bucket + ".ws-alice.victim"
	if err := f.nc.PublishRequest(SubjectPrefix+opCreate, target, data); err != nil {
		t.Fatal(err)
	}
	// A request sent after it, on an inbox, is answered: by then the first
	// one has been refused (a queue subscription handles them in order).
	if _, err := c.List(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if after := f.lastSeqs(); after != before {
		t.Errorf("streams changed: %v -> %v", before, after)
	}
	if !strings.Contains(f.logs.String(), "reply subject is not an inbox") {
		t.Error("no log line for the refused request")
	}
}

// TestNoChangeAfterTheClientsDeadline: a request whose client has given up
// (its deadline passed, as the service's clock reads it) changes nothing,
// so a request held up under a lost NATS node cannot land on top of the
// change its client made next.
func TestNoChangeAfterTheClientsDeadline(t *testing.T) {
	f := newFixture(t)
	alice := f.client("alice")
	created, err := alice.Create(ctxT(t), "LATE", []byte("late-first"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The service's clock is a minute ahead (within the accepted skew):
	// a client that waits 30 s has given up by the service's reckoning.
	f.skew.Store(int64(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := alice.Update(ctx, "LATE", []byte("late-held-up")); err == nil || !strings.Contains(err.Error(), "deadline passed") {
		t.Fatalf("an update past its deadline: %v, want it refused", err)
	}
	if _, err := alice.Create(ctx, "LATE2", []byte("late-other"), CreateOptions{}); err == nil || !strings.Contains(err.Error(), "deadline passed") {
		t.Fatalf("a create past its deadline: %v, want it refused", err)
	}
	f.skew.Store(0)
	if rec := f.record("ws-alice", created.ID); rec == nil || rec.Version != created.Version || string(rec.Value) != "late-first" {
		t.Fatalf("the record after a refused late update: %+v, want version %d unchanged", rec, created.Version)
	}
	list, err := alice.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == "LATE2" {
			t.Fatal("a create past its deadline made the secret")
		}
	}
	// In time, the same update goes through.
	info, err := alice.Update(ctxT(t), "LATE", []byte("late-second"))
	if err != nil || info.Version != created.Version+1 {
		t.Fatalf("an update in time: %+v, %v", info, err)
	}
}

// TestLastSeqsSeesWrites: the "nothing was written" checks built on
// lastSeqs can fail: a create moves both figures.
func TestLastSeqsSeesWrites(t *testing.T) {
	f := newFixture(t)
	before := f.lastSeqs()
	if _, err := f.client("alice").Create(ctxT(t), "SEQ_CHECK", []byte("v"), CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	after := f.lastSeqs()
	if after[0] == before[0] || after[1] == before[1] {
		t.Fatalf("a create left lastSeqs at %v (before %v)", after, before)
	}
}
