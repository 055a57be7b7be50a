package protocol

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strconv"
	"time"
)

// Batch signatures: one ed25519 signature for many records. A fan-out
// writes one record per workspace, and the signature was most of the
// service's time per record; a Batch hashes its records into a Merkle tree
// in the manner of RFC 6962/9162 (Certificate Transparency), signs the
// root once and gives each record its audit path. Each record is still
// verified on its own: the verifier rebuilds the root from the record, its
// salt, its index and its path, and checks the signature over the root.
//
//	leaf = SHA-256(0x00 || salt || "nbsecrets-record-v1\n" || record)
//	node = SHA-256(0x01 || left || right)
//	signed message = "nbsecrets-batch-v1\n" || root || leaf count (uint64, big-endian)
//
// The tree of n leaves is RFC 9162's: the left subtree holds the largest
// power of two below n. Domain separation: a leaf hash starts with 0x00
// and an inner node's with 0x01, so no inner node passes as a leaf; a
// single record's signed message starts "nbsecrets-record-v1\n" and a
// root's "nbsecrets-batch-v1\n", so neither signature passes as the other.
// The salt, 16 random bytes per leaf, hides the siblings' records from
// whoever holds a path: without it a workspace could confirm a guess of
// another's tombstone in the same batch, of which it knows every field
// but the workspace (a tombstone has no random box). The leaf count is signed; the index is not, but the
// path leads to the signed root only from the leaf's own place.
//
// On the wire a batch record is the single form with four more members,
// in this order (json.Marshal of envelope):
//
//	{"v":1,"rec":"…","sig":"…","idx":I,"n":N,"salt":"<base64url>","path":["<base64url>",…]}
//
// with 2 <= N <= 2^32, I < N, a 16-byte salt and 1 to 32 hashes of 32 bytes,
// leaf first. A batch of one record is written in the single form.

// batchDomain separates a batch root's signature from a record's.
const batchDomain = "nbsecrets-batch-v1\n"

// saltSize is the length of a leaf's salt.
const saltSize = 16

// MaxBatchPath is the longest audit path accepted: a tree of up to 2^32
// records.
const MaxBatchPath = 32

// MaxBatch is the most records a Batch signs at once.
const MaxBatch = 1 << 16

// hash is a SHA-256 sum: a leaf or a node of a batch's tree.
type hash = [sha256.Size]byte

// proof is what a batch record carries besides the single form: where its
// leaf is and the way to the signed root.
type proof struct {
	idx, n uint64
	salt   [saltSize]byte
	path   []hash // siblings, leaf first
}

// leafHash is the tree's leaf of a record; signed is signingDomain
// followed by the record's bytes.
func leafHash(salt *[saltSize]byte, signed []byte) hash {
	h := sha256.New()
	h.Write([]byte{0x00})
	h.Write(salt[:])
	h.Write(signed)
	var out hash
	h.Sum(out[:0])
	return out
}

// nodeHash is the inner node over left and right.
func nodeHash(left, right *hash) hash {
	var buf [1 + 2*sha256.Size]byte
	buf[0] = 0x01
	copy(buf[1:], left[:])
	copy(buf[1+sha256.Size:], right[:])
	return sha256.Sum256(buf[:])
}

// rootMessage is what the signature of a batch covers.
func rootMessage(root *hash, n uint64) []byte {
	msg := make([]byte, 0, len(batchDomain)+sha256.Size+8)
	msg = append(msg, batchDomain...)
	msg = append(msg, root[:]...)
	return binary.BigEndian.AppendUint64(msg, n)
}

// root computes the tree's root from leaf and the path, as RFC 9162
// 2.1.3.2 verifies an inclusion proof. It fails when the path has not the
// length that leaf idx of a tree of n needs.
func (p *proof) root(leaf hash) (hash, error) {
	if p.n == 0 || p.idx >= p.n {
		return hash{}, fmt.Errorf("leaf %d of a batch of %d", p.idx, p.n)
	}
	fn, sn := p.idx, p.n-1
	r := leaf
	for i := range p.path {
		if sn == 0 {
			return hash{}, p.lengthError()
		}
		if fn&1 == 1 || fn == sn {
			r = nodeHash(&p.path[i], &r)
			for fn&1 == 0 && fn != 0 {
				fn >>= 1
				sn >>= 1
			}
		} else {
			r = nodeHash(&r, &p.path[i])
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 {
		return hash{}, p.lengthError()
	}
	return r, nil
}

func (p *proof) lengthError() error {
	return fmt.Errorf("audit path of %d hashes, leaf %d of a batch of %d needs %d", len(p.path), p.idx, p.n, pathLen(p.idx, p.n))
}

// pathLen is the length of the audit path of leaf idx < n.
func pathLen(idx, n uint64) int {
	fn, sn, l := idx, n-1, 0
	for sn != 0 {
		if fn&1 == 0 && fn == sn {
			for fn&1 == 0 && fn != 0 {
				fn >>= 1
				sn >>= 1
			}
		}
		fn >>= 1
		sn >>= 1
		l++
	}
	return l
}

// treePaths returns the root of the tree over leaves (at least one) and
// each leaf's audit path, leaf first.
func treePaths(leaves []hash) (hash, [][]hash) {
	paths := make([][]hash, len(leaves))
	depth := bits.Len(uint(len(leaves) - 1)) // the longest path
	for i := range paths {
		paths[i] = make([]hash, 0, depth)
	}
	var build func(lo, hi int) hash
	build = func(lo, hi int) hash {
		if hi-lo == 1 {
			return leaves[lo]
		}
		k := 1 << (bits.Len(uint(hi-lo-1)) - 1) // the largest power of two below hi-lo
		left, right := build(lo, lo+k), build(lo+k, hi)
		for i := lo; i < lo+k; i++ {
			paths[i] = append(paths[i], right)
		}
		for i := lo + k; i < hi; i++ {
			paths[i] = append(paths[i], left)
		}
		return nodeHash(&left, &right)
	}
	return build(0, len(leaves)), paths
}

// checkProof checks the limits of a proof read from an envelope.
func checkProof(p *proof) error {
	switch {
	case p.n < 2:
		return fmt.Errorf("batch of %d records: a batch has 2 or more", p.n)
	case p.n > 1<<MaxBatchPath:
		return fmt.Errorf("batch of %d records: limit %d", p.n, uint64(1)<<MaxBatchPath)
	case p.idx >= p.n:
		return fmt.Errorf("index %d of a batch of %d", p.idx, p.n)
	case len(p.path) == 0:
		return errors.New("empty audit path")
	case len(p.path) > MaxBatchPath:
		return fmt.Errorf("audit path of %d hashes: limit %d", len(p.path), MaxBatchPath)
	}
	return nil
}

// ErrBatchFull is Batch.Put or Delete on a Batch that holds MaxBatch
// records.
var ErrBatchFull = errors.New("protocol: batch full")

// Batch collects records that a Sealer signs together with one signature:
// Put and Delete add one each, Sign signs them all. A Batch is not safe
// for concurrent use; the Sealer behind it is.
type Batch struct {
	s    *Sealer
	recs [][]byte // the records' bytes, in the order added
}

// NewBatch returns an empty Batch signed by s.
func (s *Sealer) NewBatch() *Batch { return &Batch{s: s} }

// Len is the number of records in the batch.
func (b *Batch) Len() int { return len(b.recs) }

// Put adds the record that Sealer.Put would make and returns its index in
// what Sign returns. On error nothing is added.
func (b *Batch) Put(to Recipient, secretID, name string, version uint64, scope Scope, value []byte, now time.Time) (int, error) {
	if len(b.recs) >= MaxBatch {
		return 0, ErrBatchFull
	}
	r, err := b.s.putRecord(to, secretID, name, version, scope, value, now)
	if err != nil {
		return 0, err
	}
	return b.add(r)
}

// Delete adds the tombstone that Sealer.Delete would make and returns its
// index in what Sign returns. On error nothing is added.
func (b *Batch) Delete(workspace, secretID, name string, version uint64, scope Scope, now time.Time) (int, error) {
	if len(b.recs) >= MaxBatch {
		return 0, ErrBatchFull
	}
	r, err := deleteRecord(workspace, secretID, name, version, scope, now)
	if err != nil {
		return 0, err
	}
	return b.add(r)
}

// maxProofLen bounds what a proof adds to an envelope.
var maxProofLen = len(appendProof(nil, &proof{idx: 1<<MaxBatchPath - 1, n: 1 << MaxBatchPath, path: make([]hash, MaxBatchPath)}))

func (b *Batch) add(r *Record) (int, error) {
	rec, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("protocol: encoding record: %w", err)
	}
	// The largest the record can get, so that Sign cannot fail on size.
	if n := envelopeLen(len(rec)) + maxProofLen; n > MaxRecordSize {
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, MaxRecordSize)
	}
	b.recs = append(b.recs, rec)
	return len(b.recs) - 1, nil
}

// Sign signs the records added since the last Sign and returns them
// encoded, in the order added; the Batch is then empty. One record is
// signed in the single form, as Sealer.Put would; none gives nil.
func (b *Batch) Sign() ([][]byte, error) { return b.signWith(rand.Reader) }

// SignEach signs the records added since the last Sign each alone, in the
// single form, as Sealer.Put and Delete would, and returns them in the
// order added; the Batch is then empty. It is for a service that still
// has readers older than batch signatures (serve --batch-signatures=false).
func (b *Batch) SignEach() ([][]byte, error) {
	recs := b.recs
	b.recs = nil
	out := make([][]byte, 0, len(recs))
	for _, rec := range recs {
		data, err := b.s.signRec(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, data)
	}
	return out, nil
}

// signWith is Sign with the salts read from random.
func (b *Batch) signWith(random io.Reader) ([][]byte, error) {
	recs := b.recs
	b.recs = nil
	switch len(recs) {
	case 0:
		return nil, nil
	case 1:
		out, err := b.s.signRec(recs[0])
		if err != nil {
			return nil, err
		}
		return [][]byte{out}, nil
	}
	salts := make([][saltSize]byte, len(recs))
	for i := range salts {
		if _, err := io.ReadFull(random, salts[i][:]); err != nil {
			return nil, fmt.Errorf("protocol: salt: %w", err)
		}
	}
	leaves := make([]hash, len(recs))
	signed := make([]byte, 0, len(signingDomain)+256)
	for i, rec := range recs {
		signed = append(append(signed[:0], signingDomain...), rec...)
		leaves[i] = leafHash(&salts[i], signed)
	}
	root, paths := treePaths(leaves)
	n := uint64(len(recs))
	sig, err := b.s.fast.sign(b.s.sign, rootMessage(&root, n))
	if err != nil {
		return nil, fmt.Errorf("protocol: signing batch: %w", err)
	}
	out := make([][]byte, len(recs))
	for i, rec := range recs {
		p := proof{idx: uint64(i), n: n, salt: salts[i], path: paths[i]}
		out[i] = appendBatchEnvelope(nil, FormatVersion, rec, sig, &p)
	}
	return out, nil
}

// appendBatchEnvelope appends the envelope of a batch record to dst: the
// bytes json.Marshal writes of the envelope with its proof members.
func appendBatchEnvelope(dst []byte, v int, rec, sig []byte, p *proof) []byte {
	dst = slices.Grow(dst, envelopeLen(len(rec))+len(`,"idx":,"n":,"salt":"","path":[]`)+40+b64.EncodedLen(saltSize)+len(p.path)*(b64.EncodedLen(sha256.Size)+3))
	dst = appendEnvelope(dst, v, rec, sig)
	dst = dst[:len(dst)-1] // the closing brace
	dst = appendProof(dst, p)
	return append(dst, '}')
}

// appendProof appends the proof's members, each after a comma.
func appendProof(dst []byte, p *proof) []byte {
	dst = append(dst, `,"idx":`...)
	dst = strconv.AppendUint(dst, p.idx, 10)
	dst = append(dst, `,"n":`...)
	dst = strconv.AppendUint(dst, p.n, 10)
	dst = append(dst, `,"salt":"`...)
	dst = b64.AppendEncode(dst, p.salt[:])
	dst = append(dst, `","path":[`...)
	for i := range p.path {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = b64.AppendEncode(dst, p.path[i][:])
		dst = append(dst, '"')
	}
	return append(dst, ']')
}

// envelopeLen is the length of the single-form envelope of a record of
// recLen bytes with an ed25519 signature.
func envelopeLen(recLen int) int {
	return len(`{"v":1,"rec":"","sig":""}`) + b64.EncodedLen(recLen) + b64.EncodedLen(64)
}
