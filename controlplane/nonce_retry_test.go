package controlplane

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestNonceBucketWithoutResponder: the first request after a service made
// its buckets on a fresh cluster can find nobody answering for the nonce
// bucket's subjects at the service's server (its stream's leader not yet
// elected, or its interest not yet routed there; seen under load in the
// cluster tests). Here the bucket is gone for real while a request comes,
// and back once the service has asked at least once more: the request is
// carried out, not answered with an internal error. A bucket that stays
// gone still ends in an error, after the retries.
func TestNonceBucketWithoutResponder(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	js := must(jetstream.New(f.nc))
	if err := js.DeleteKeyValue(ctx, NonceBucket); err != nil {
		t.Fatal(err)
	}
	retried := "the nonce bucket has no responder yet; asking again"
	done := make(chan error, 1)
	go func() { // owned by the test: ends with the request
		_, err := f.client("alice").Create(ctx, "FIRST", []byte("first-value"), CreateOptions{})
		done <- err
	}()
	for !strings.Contains(f.logs.String(), retried) {
		select {
		case err := <-done:
			t.Fatalf("the request ended (%v) before the service asked the nonce bucket again", err)
		case <-time.After(20 * time.Millisecond): // polling, not synchronisation
		}
	}
	if _, err := js.CreateKeyValue(ctx, nonceBucketConfig); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("create while the nonce bucket came back: %v", err)
	}
	f.wantPut("ws-alice", must(f.client("alice").List(ctx))[0].ID, 1, "first-value")

	// Gone for good: an error once the retries run out, nothing written.
	before := f.lastSeqs()
	if err := js.DeleteKeyValue(ctx, NonceBucket); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := f.client("alice").Create(ctx, "SECOND", []byte("second-value"), CreateOptions{})
	if !errors.Is(err, ErrInternal) || !strings.Contains(err.Error(), "recording the request's nonce") {
		t.Fatalf("create with no nonce bucket: %v, want an internal error", err)
	}
	if took := time.Since(start); took < nonceRetryFor {
		t.Errorf("gave up after %v, before the %v of retries", took, nonceRetryFor)
	}
	if after := f.lastSeqs(); after != before {
		t.Errorf("the buckets went from %v to %v: a refused request wrote", before, after)
	}
	if strings.Contains(f.logs.String(), "-value") {
		t.Error("a secret value appears in a log line")
	}
}
