package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// startLiveService starts a service with Options.Live on its own
// connection to f's server.
func (f *fixture) startLiveService() *Service {
	f.t.Helper()
	svc, err := New(Options{Conn: f.connect(), SignKey: f.sign, CurveKey: f.curve, Directory: f.dir, Live: true,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: f.logs})})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = svc.Stop() })
	return svc
}

func recordsRePublish(t *testing.T, nc *nats.Conn) *jetstream.RePublish {
	t.Helper()
	st, err := must(jetstream.New(nc)).Stream(ctxT(t), protocol.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().Config.RePublish
}

// TestLiveRePublish: without Options.Live the records stream republishes
// nothing; a service with it adds the RePublish to the existing stream
// (keeping the rest), and each record written then arrives on
// nbsecrets.live.<ws>.<secret> with the headers agents check.
func TestLiveRePublish(t *testing.T) {
	f := newFixture(t)
	if rp := recordsRePublish(t, f.nc); rp != nil {
		t.Fatalf("records stream republishes without Options.Live: %+v", rp)
	}
	f.startLiveService()
	rp := recordsRePublish(t, f.nc)
	if rp == nil || rp.Source != "$KV."+protocol.Bucket+".>" || rp.Destination != LivePrefix+">" {
		t.Fatalf("RePublish after a live service started: %+v", rp)
	}
	st := must(must(jetstream.New(f.nc)).Stream(ctxT(t), protocol.StreamName()))
	if cfg := st.CachedInfo().Config; cfg.MaxMsgsPerSubject != 1 || cfg.Storage != jetstream.FileStorage {
		t.Errorf("the update changed the bucket: history %d, storage %v", cfg.MaxMsgsPerSubject, cfg.Storage)
	}

	sub := must(f.nc.SubscribeSync(LivePrefix + "ws-carol.>"))
	if err := f.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	info, err := f.client("carol").Create(ctxT(t), "LIVE_TOKEN", []byte("live-value"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no republished record: %v", err)
	}
	key := protocol.RecordKey("ws-carol", info.ID)
	if m.Subject != LivePrefix+key || m.Header.Get("Nats-Subject") != "$KV."+protocol.Bucket+"."+key ||
		m.Header.Get("Nats-Stream") != protocol.StreamName() || m.Header.Get("Nats-Last-Sequence") != "0" ||
		m.Header.Get("Nats-Sequence") == "" {
		t.Errorf("republished record: subject %s, headers %v", m.Subject, m.Header)
	}
	if sec := f.record("ws-carol", info.ID); sec == nil || sec.Name != "LIVE_TOKEN" {
		t.Errorf("stored record: %+v", sec)
	}
}

// TestLiveRePublishOnCreate: a live service creating the bucket creates it
// republishing.
func TestLiveRePublishOnCreate(t *testing.T) {
	f := &fixture{t: t, logs: &syncBuffer{}}
	g := newFixture(t) // directory and keys; its server already has a bucket
	f.srv, f.sign, f.curve, f.dir, f.users, f.wsKeys = natstest.Start(t), g.sign, g.curve, g.dir, g.users, g.wsKeys
	f.nc = f.connect()
	f.startLiveService()
	if rp := recordsRePublish(t, f.nc); rp == nil || rp.Destination != LivePrefix+">" {
		t.Fatalf("RePublish of a bucket a live service made: %+v", rp)
	}
}
