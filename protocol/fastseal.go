package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"

	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/nacl/box"
)

// The fast path of a Sealer that fans one secret out to many workspaces.
// nkeys' Seal does an X25519 agreement on every call and its Sign rebuilds
// the ed25519 key from the seed on every call; a Sealer does each once, per
// recipient key and per Sealer, and writes the very same bytes: a box is
// "xkv1" (nkeys.XKeyVersionV1), a 24-byte random nonce and box.Seal's
// output, which is box.Precompute plus SealAfterPrecomputation; an ed25519
// signature is deterministic.

// xkeyNonceLen is the nonce length of nkeys' curve boxes.
const xkeyNonceLen = 24

// maxSharedKeys bounds the cache of precomputed box keys, one per distinct
// recipient key; when it is full it starts over.
const maxSharedKeys = 1 << 17

// fastKeys are a Sealer's keys in the raw forms the fast path uses. Either
// part may be missing (a KeyPair that will not give its seed): the Sealer
// then uses nkeys as it is.
type fastKeys struct {
	priv ed25519.PrivateKey // nil: sign with the nkeys KeyPair
	seed *[32]byte          // the curve private key; nil: seal with the nkeys KeyPair

	mu     sync.Mutex
	shared map[string]*[32]byte // recipient curve public key -> precomputed box key
}

// newFastKeys takes the raw keys out of sign and curve where they give them.
// (nkeys' ed25519 Seed returns its own buffer: it must not be cleared.)
func newFastKeys(sign, curve nkeys.KeyPair) *fastKeys {
	f := &fastKeys{}
	if s, err := sign.Seed(); err == nil {
		if _, raw, err := nkeys.DecodeSeed(s); err == nil && len(raw) == ed25519.SeedSize {
			f.priv = ed25519.NewKeyFromSeed(raw)
			clear(raw)
		}
	}
	if s, err := curve.Seed(); err == nil {
		if p, raw, err := nkeys.DecodeSeed(s); err == nil && p == nkeys.PrefixByteCurve && len(raw) == 32 {
			f.seed = new([32]byte)
			copy(f.seed[:], raw)
			clear(raw)
		}
	}
	return f
}

// sign signs msg as kp.Sign would.
func (f *fastKeys) sign(kp nkeys.KeyPair, msg []byte) ([]byte, error) {
	if f.priv == nil {
		return kp.Sign(msg)
	}
	return ed25519.Sign(f.priv, msg), nil
}

// seal boxes plain for recipient as kp.Seal would.
func (f *fastKeys) seal(kp nkeys.KeyPair, plain []byte, recipient string) ([]byte, error) {
	if f.seed == nil {
		return kp.Seal(plain, recipient)
	}
	key, err := f.sharedKey(recipient)
	if err != nil {
		return nil, err
	}
	var nonce [xkeyNonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	out := make([]byte, 0, len(nkeys.XKeyVersionV1)+xkeyNonceLen+len(plain)+box.Overhead)
	out = append(out, nkeys.XKeyVersionV1...)
	out = append(out, nonce[:]...)
	return box.SealAfterPrecomputation(out, plain, &nonce, key), nil
}

// sharedKey is the precomputed box key between the Sealer and recipient.
func (f *fastKeys) sharedKey(recipient string) (*[32]byte, error) {
	f.mu.Lock()
	key, ok := f.shared[recipient]
	f.mu.Unlock()
	if ok {
		return key, nil
	}
	raw, err := nkeys.Decode(nkeys.PrefixByteCurve, []byte(recipient))
	if err != nil || len(raw) != 32 {
		return nil, nkeys.ErrInvalidRecipient
	}
	var pub [32]byte
	copy(pub[:], raw)
	key = new([32]byte)
	box.Precompute(key, &pub, f.seed)
	f.mu.Lock()
	if f.shared == nil || len(f.shared) >= maxSharedKeys {
		f.shared = make(map[string]*[32]byte)
	}
	f.shared[recipient] = key
	f.mu.Unlock()
	return key, nil
}

// The fast path of an Opener: an agent opens every record from the one
// pinned sealing key, so the box key between that key and the workspace's
// curve key is computed once, when the Opener is made, instead of one
// X25519 agreement per record in nkeys' Open (with a second scalar
// multiplication for the public key crypto/ecdh derives): about half of
// Open's time. The bytes accepted are exactly nkeys' Open's: "xkv1", a
// 24-byte nonce, box.Open's input.

// openerSharedKey precomputes the box key between curve and the sealer's
// public key, or returns nil when curve will not give its seed (Open then
// uses nkeys as it is).
func openerSharedKey(curve nkeys.KeyPair, sealerKey string) *[32]byte {
	s, err := curve.Seed()
	if err != nil {
		return nil
	}
	p, raw, err := nkeys.DecodeSeed(s)
	if err != nil || p != nkeys.PrefixByteCurve || len(raw) != 32 {
		return nil
	}
	var priv [32]byte
	copy(priv[:], raw)
	clear(raw)
	defer clear(priv[:])
	pubRaw, err := nkeys.Decode(nkeys.PrefixByteCurve, []byte(sealerKey))
	if err != nil || len(pubRaw) != 32 {
		return nil
	}
	var pub [32]byte
	copy(pub[:], pubRaw)
	key := new([32]byte)
	box.Precompute(key, &pub, &priv)
	return key
}

// openPrecomputed opens sealed as nkeys' Open(sealed, sender) would, with
// the precomputed key of that sender.
func openPrecomputed(sealed []byte, key *[32]byte) ([]byte, error) {
	vlen := len(nkeys.XKeyVersionV1)
	if len(sealed) <= vlen+xkeyNonceLen {
		return nil, nkeys.ErrInvalidEncrypted
	}
	if string(sealed[:vlen]) != nkeys.XKeyVersionV1 {
		return nil, nkeys.ErrInvalidEncVersion
	}
	var nonce [xkeyNonceLen]byte
	copy(nonce[:], sealed[vlen:vlen+xkeyNonceLen])
	plain, ok := box.OpenAfterPrecomputation(nil, sealed[vlen+xkeyNonceLen:], &nonce, key)
	if !ok {
		return nil, nkeys.ErrCouldNotDecrypt
	}
	return plain, nil
}
