package controlplane

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// TestTwoReplicas runs two services on one NATS with a short lease, sends
// changes that land on both (the queue group shares the requests), and
// kills one of them (its connection closed, no goodbye) in the middle of a
// fan-out to 60 workspaces. It checks that exactly one replica holds the
// background lease at a time, that the survivor takes it over and
// completes the interrupted fan-out, that every workspace ends at the
// store's version with the store's value, and that no version of a record
// was ever stored twice with different contents.
func TestTwoReplicas(t *testing.T) {
	const n = 60
	srv := natstest.Start(t)
	sign, curve, user := must(nkeys.CreateAccount()), must(nkeys.CreateCurveKeys()), must(nkeys.CreateUser())
	dir := &Directory{Users: []User{{ID: "alice", PublicKey: must(user.PublicKey())}},
		Projects: []Project{{ID: "ml", Members: []Member{{"alice", RoleAdmin}}}}}
	wsKeys := map[string]nkeys.KeyPair{}
	for i := range n {
		ws := fmt.Sprintf("ws-%03d", i)
		k := must(nkeys.CreateCurveKeys())
		wsKeys[ws] = k
		dir.Workspaces = append(dir.Workspaces, Workspace{ID: ws, Owner: "alice", Projects: []string{"ml"}, CurveKey: must(k.PublicKey())})
	}
	logs := &syncBuffer{}
	connect := func() *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	const ttl = 1500 * time.Millisecond
	start := func(name string, nc *nats.Conn, hook func()) *Service {
		svc, err := New(Options{Conn: nc, SignKey: sign, CurveKey: curve, Directory: dir, LeaseTTL: ttl,
			Logger: hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Debug, Output: logs})})
		if err != nil {
			t.Fatal(err)
		}
		svc.wroteHook = hook
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := svc.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })
		return svc
	}

	// Every stored record, watched from the start: key and version to the
	// digest of its contents.
	nc := connect()
	js := must(jetstream.New(nc))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var seenMu sync.Mutex
	seen := map[string][32]byte{}
	var conflicts []string

	ncA := connect()
	var armed atomic.Bool
	var writes, total atomic.Int64
	killed := make(chan struct{})
	var killOnce sync.Once
	a := start("a", ncA, func() {
		// In the middle of a fan-out (a third of the records written),
		// the replica's connection goes: nothing more leaves it.
		total.Add(1)
		if armed.Load() && writes.Add(1) == n/3 {
			killOnce.Do(func() { ncA.Close(); close(killed) })
		}
	})
	b := start("b", connect(), nil)
	// Exactly one holds the lease. Held is each replica's own belief, and
	// the holder's renewal (every TTL/3, each try given that long) can time
	// out on a loaded machine: the holder then believes it lost the lease,
	// which the other cannot take before the expiry, until its next tick.
	// So neither may hold it for a moment; both never (that takes a holder
	// that did not try to renew for a whole TTL). Watched for three TTLs,
	// then until exactly one holds it.
	held := func() (bool, bool) { return a.lease.Held(), b.lease.Held() }
	watch := time.Now().Add(3 * ttl)
	for ha, hb := held(); time.Now().Before(watch) || ha == hb; ha, hb = held() {
		if ha && hb {
			t.Fatal("lease held by a and b at once")
		}
		if time.Now().After(watch.Add(30 * time.Second)) {
			t.Fatal("lease held by neither a nor b for 30s")
		}
		time.Sleep(20 * time.Millisecond) // sampling, not synchronisation
	}
	cons, err := js.OrderedConsumer(ctx, protocol.StreamName(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		key, _ := protocol.KeyFromSubject(m.Subject())
		var ws string
		if i := len(key) - len(".") - 32; i > 0 {
			ws = key[:i]
		}
		o, err := protocol.NewVerifier(ws, []string{must(sign.PublicKey())})
		if err != nil {
			return
		}
		r, err := o.Verify(key, m.Data())
		if err != nil {
			return
		}
		id := fmt.Sprintf("%s@%d", key, r.Version)
		sum := sha256.Sum256(m.Data())
		seenMu.Lock()
		if prev, ok := seen[id]; ok && prev != sum {
			conflicts = append(conflicts, id)
		}
		seen[id] = sum
		seenMu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	client := NewClient(connect(), "alice", user, must(curve.PublicKey()))
	info, err := client.Create(ctx, "SHARED", []byte("replica-value-0"), CreateOptions{Project: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	// Changes from two clients at once: the queue group hands them to both
	// replicas. Once a few have gone through, replica a is set to die in
	// the middle of its next fan-out.
	var wg sync.WaitGroup
	var acked atomic.Int64
	for c := range 2 {
		cl := NewClient(connect(), "alice", user, must(curve.PublicKey()))
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-killed:
					if i > 5 {
						return
					}
				default:
					if i > 15 {
						return
					}
				}
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := cl.Update(cctx, "SHARED", []byte(fmt.Sprintf("replica-value-%d-%d", c, i)))
				ccancel()
				if err != nil && i < 2 {
					t.Logf("client %d update %d: %v", c, i, err)
				}
				if err == nil {
					if acked.Add(1) == 4 {
						armed.Store(true)
					}
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatalf("replica a never took a change to fan out (%d changes acknowledged, a wrote %d records)", acked.Load(), total.Load())
	}

	// The survivor takes the lease over and reconciles: every workspace
	// ends at the store's version, with the store's value.
	deadline := time.Now().Add(time.Minute)
	for !b.lease.Held() {
		if time.Now().After(deadline) {
			t.Fatal("replica b never took the lease over")
		}
		time.Sleep(20 * time.Millisecond) // polling, not synchronisation
	}
	m, _, err := b.store.get(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	value, err := b.store.open(m)
	if err != nil {
		t.Fatal(err)
	}
	kv := must(js.KeyValue(ctx, protocol.Bucket))
	for ws, k := range wsKeys {
		o := must(protocol.NewOpener(ws, []string{must(sign.PublicKey())}, must(curve.PublicKey()), k))
		for {
			e, err := kv.Get(ctx, protocol.RecordKey(ws, info.ID))
			if err != nil {
				t.Fatal(err)
			}
			sec, err := o.Open(e.Key(), e.Value())
			if err != nil {
				t.Fatal(err)
			}
			if sec.Version == m.Version {
				if !sec.Value.Equal(value) {
					t.Fatalf("%s: version %d with another value than the store's", ws, sec.Version)
				}
				break
			}
			if sec.Version > m.Version || time.Now().After(deadline) {
				t.Fatalf("%s: record at version %d, the store at %d", ws, sec.Version, m.Version)
			}
			time.Sleep(20 * time.Millisecond) // polling, not synchronisation
		}
	}
	seenMu.Lock()
	defer seenMu.Unlock()
	if len(conflicts) > 0 {
		t.Fatalf("records stored twice with different contents for one version: %v", conflicts[:min(5, len(conflicts))])
	}
	t.Logf("%d changes acknowledged; version %d everywhere; %d record versions watched", acked.Load(), m.Version, len(seen))
}
