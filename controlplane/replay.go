package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NonceBucket is the KV bucket in which the service keeps the nonce of
// every request it accepted, for 2 × MaxClockSkew: long enough that a
// request whose nonce has expired is refused by its timestamp. Every
// instance and every restart shares it, so a captured request cannot be
// replayed after a restart or against another instance. Keys are
// "<user>.<first 16 bytes of the nonce's SHA-256, hex>".
const NonceBucket = "nbsecrets_nonces"

// nonceTTL is how long a nonce is kept: a request is accepted within
// MaxClockSkew of its timestamp on either side.
const nonceTTL = 2 * MaxClockSkew

// How long useNonce asks again while the nonce bucket's stream has no
// responder, and how long it waits between attempts (nats.go's publish
// waits as long again between its own).
var (
	nonceRetryFor  = 5 * time.Second
	nonceRetryWait = 250 * time.Millisecond
)

// nonceBucketConfig is the nonce bucket: one value per key, the bucket's
// TTL on every entry.
var nonceBucketConfig = jetstream.KeyValueConfig{
	Bucket: NonceBucket, History: 1, TTL: nonceTTL, Storage: jetstream.FileStorage,
	Description: "nbsecrets: nonces of accepted requests, against replays",
}

// useNonce records req's nonce in the shared bucket, refusing a request
// whose nonce an instance has accepted before. KV Create fails when the key
// exists, so of two instances handed the same request at once only one
// accepts it.
func (s *Service) useNonce(ctx context.Context, req *requestBody) error {
	sum := sha256.Sum256([]byte(req.Nonce))
	key := req.User + "." + hex.EncodeToString(sum[:16])
	value := []byte(req.Time.UTC().Format("2006-01-02T15:04:05Z"))
	_, err := s.nonceKV.Create(ctx, key, value)
	// No responder for the bucket's subjects at this server: a stream just
	// made whose leader is still being elected, or whose interest has not
	// reached this node yet, and nats.go's own retries (two, 250 ms apart)
	// ran out. Nothing was stored, so asking again is safe: for a while,
	// rather than answering the user an internal error.
	for end := time.Now().Add(nonceRetryFor); errors.Is(err, jetstream.ErrNoStreamResponse) && time.Now().Before(end); {
		s.log.Debug("the nonce bucket has no responder yet; asking again", "user", req.User, "op", req.Op)
		select {
		case <-ctx.Done():
			return fmt.Errorf("recording the request's nonce: %w", err)
		case <-time.After(nonceRetryWait):
		}
		_, err = s.nonceKV.Create(ctx, key, value)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrKeyExists):
		return fmt.Errorf("%w: replayed request (nonce already used, by this or another instance)", ErrUnauthenticated)
	}
	return fmt.Errorf("recording the request's nonce: %w", err)
}

// UserAccountPrefix starts the name of a user's NATS account in the
// per-account configuration (natsauth.UserAccount).
const UserAccountPrefix = "nbsecrets-user-"

// requestInfoHeader is the header in which nats-server tells a service
// which account a request imported from another account came from. The
// server sets it on every request that crosses a service import, replacing
// whatever the sender put there.
const requestInfoHeader = "Nats-Request-Info"

// checkSender refuses a request signed by user that arrived, through an
// import, from the NATS account of another user: a captured request
// replayed by someone else. Where the deployment cannot tell (one shared
// account, no header, an account not named as natsauth names users'), it
// accepts.
func checkSender(m *nats.Msg, user string) error {
	if m.Header == nil {
		return nil
	}
	raw := m.Header.Get(requestInfoHeader)
	if raw == "" {
		return nil
	}
	var ci struct {
		Account string `json:"acc"`
	}
	if json.Unmarshal([]byte(raw), &ci) != nil {
		return nil
	}
	if id, ok := strings.CutPrefix(ci.Account, UserAccountPrefix); ok && id != user {
		return fmt.Errorf("%w: request signed by %s arrived from the NATS account of %s", ErrUnauthenticated, user, printable(id))
	}
	return nil
}
