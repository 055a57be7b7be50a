package jupyter

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
)

// Delimiter separates the routing identities from the message proper.
const Delimiter = "<IDS|MSG>"

// Errors of this package. They are wrapped with context; test with errors.Is.
var (
	// ErrBadSignature: a message's HMAC does not match.
	ErrBadSignature = errors.New("jupyter: bad message signature")
	// ErrMalformed: frames that are not a Jupyter message, or a message
	// that cannot be encoded.
	ErrMalformed = errors.New("jupyter: malformed message")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("jupyter: client closed")
	// ErrDisconnected: the connection to the kernel was lost (the kernel
	// died or restarted). The client is of no further use; dial again.
	ErrDisconnected = errors.New("jupyter: connection to kernel lost")
	// ErrUnsupported: the kernel does not offer the requested feature.
	ErrUnsupported = errors.New("jupyter: not supported by this kernel")
)

var schemes = map[string]func() hash.Hash{
	"hmac-sha256": sha256.New,
	"hmac-sha384": sha512.New384,
	"hmac-sha512": sha512.New,
	"hmac-sha224": sha256.New224,
	"hmac-sha1":   sha1.New,
	"hmac-md5":    md5.New,
}

// Codec signs, encodes, checks and decodes messages for one key. It is safe
// for concurrent use.
type Codec struct {
	key  []byte
	hash func() hash.Hash
}

// NewCodec returns a codec for a connection file's key and
// signature_scheme. An empty key means unsigned messages (the signature
// frame is empty and not checked); an empty scheme means "hmac-sha256".
func NewCodec(key []byte, scheme string) (*Codec, error) {
	if scheme == "" {
		scheme = "hmac-sha256"
	}
	h, ok := schemes[scheme]
	if !ok {
		return nil, fmt.Errorf("jupyter: unknown signature scheme %q", scheme)
	}
	c := &Codec{hash: h}
	if len(key) > 0 {
		c.key = bytes.Clone(key)
	}
	return c, nil
}

func (c *Codec) sign(frames [][]byte) []byte {
	if len(c.key) == 0 {
		return nil
	}
	mac := hmac.New(c.hash, c.key)
	for _, f := range frames {
		mac.Write(f)
	}
	return mac.Sum(nil)
}

// Encode returns the frames of m, signed:
// [identities..., "<IDS|MSG>", hmac_hex, header, parent, metadata, content, buffers...].
func (c *Codec) Encode(m *Message) ([][]byte, error) {
	for _, id := range m.Identities {
		if string(id) == Delimiter {
			return nil, fmt.Errorf("%w: identity equals the delimiter", ErrMalformed)
		}
	}
	header, err := json.Marshal(&m.Header)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	parent := []byte("{}")
	if m.ParentHeader != nil && *m.ParentHeader != (Header{}) {
		if parent, err = json.Marshal(m.ParentHeader); err != nil {
			return nil, fmt.Errorf("%w: parent header: %w", ErrMalformed, err)
		}
	}
	metadata := []byte("{}")
	if len(m.Metadata) > 0 {
		if metadata, err = json.Marshal(m.Metadata); err != nil {
			return nil, fmt.Errorf("%w: metadata: %w", ErrMalformed, err)
		}
	}
	content := []byte(m.Content)
	if len(content) == 0 {
		content = []byte("{}")
	} else if !json.Valid(content) {
		return nil, fmt.Errorf("%w: content is not JSON", ErrMalformed)
	}

	frames := make([][]byte, 0, len(m.Identities)+6+len(m.Buffers))
	frames = append(frames, m.Identities...)
	frames = append(frames, []byte(Delimiter), nil, header, parent, metadata, content)
	dicts := frames[len(m.Identities)+2 : len(m.Identities)+6]
	if sig := c.sign(dicts); sig != nil {
		frames[len(m.Identities)+1] = []byte(hex.EncodeToString(sig))
	} else {
		frames[len(m.Identities)+1] = []byte{}
	}
	frames = append(frames, m.Buffers...)
	return frames, nil
}

// Decode checks the signature of a message's frames (in constant time) and
// decodes it. The message may share memory with frames. A parent header of
// {} decodes as nil, metadata is never nil, identities and buffers are nil
// when absent. Errors wrap ErrBadSignature or ErrMalformed.
func (c *Codec) Decode(frames [][]byte) (*Message, error) {
	delim := -1
	for i, f := range frames {
		if string(f) == Delimiter {
			delim = i
			break
		}
	}
	if delim < 0 {
		return nil, fmt.Errorf("%w: no %s delimiter", ErrMalformed, Delimiter)
	}
	rest := frames[delim+1:]
	if len(rest) < 5 {
		return nil, fmt.Errorf("%w: %d frames after the delimiter, want at least 5", ErrMalformed, len(rest))
	}
	sig, dicts := rest[0], rest[1:5]
	if len(c.key) > 0 {
		got := make([]byte, hex.DecodedLen(len(sig)))
		if _, err := hex.Decode(got, sig); err != nil {
			return nil, fmt.Errorf("%w: signature is not hex", ErrBadSignature)
		}
		if !hmac.Equal(got, c.sign(dicts)) {
			return nil, ErrBadSignature
		}
	}

	m := &Message{}
	if delim > 0 {
		m.Identities = frames[:delim:delim]
	}
	if err := decodeObject(dicts[0], &m.Header); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	if m.Header.MsgType == "" {
		return nil, fmt.Errorf("%w: header has no msg_type", ErrMalformed)
	}
	var parent Header
	if err := decodeObject(dicts[1], &parent); err != nil {
		return nil, fmt.Errorf("%w: parent header: %w", ErrMalformed, err)
	}
	if parent != (Header{}) {
		m.ParentHeader = &parent
	}
	if err := decodeObject(dicts[2], &m.Metadata); err != nil {
		return nil, fmt.Errorf("%w: metadata: %w", ErrMalformed, err)
	}
	if m.Metadata == nil {
		m.Metadata = map[string]any{}
	}
	if !isObject(dicts[3]) || !json.Valid(dicts[3]) {
		return nil, fmt.Errorf("%w: content is not a JSON object", ErrMalformed)
	}
	m.Content = json.RawMessage(dicts[3])
	if len(rest) > 5 {
		m.Buffers = rest[5:]
	}
	return m, nil
}

// decodeObject unmarshals a frame that must be a JSON object.
func decodeObject(b []byte, v any) error {
	if !isObject(b) {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(b, v)
}

func isObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}
