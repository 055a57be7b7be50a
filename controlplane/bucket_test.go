package controlplane

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// TestEnsureBucketAsksAgain: a JetStream request that nobody answers (a
// cluster between leaders drops it) is asked again with a deadline of its
// own, rather than waiting out the whole start-up on one request, and the
// error at the end names the bucket.
func TestEnsureBucketAsksAgain(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("host: 127.0.0.1\nport: -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ns := natstest.StartConfig(t, conf) // no JetStream: the test plays a silent one
	nc := must(nats.Connect(ns.ClientURL()))
	defer nc.Close()
	var asked atomic.Int32
	sub := must(nc.Subscribe("$JS.API.STREAM.INFO.KV_silent", func(*nats.Msg) { asked.Add(1) }))
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { bucketAttempt = d }(bucketAttempt)
	bucketAttempt = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := ensureBucket(ctx, must(jetstream.New(nc)), jetstream.KeyValueConfig{Bucket: "silent"})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "KV bucket silent") {
		t.Fatalf("ensureBucket: %v", err)
	}
	if n := asked.Load(); n < 3 {
		t.Fatalf("the bucket was asked for %d times in 2s with 200ms attempts; want it asked again", n)
	}
}
