package jupyter

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// ProtocolVersion is the messaging protocol version this package writes in
// headers.
const ProtocolVersion = "5.3"

// Username is the username this package writes in headers.
const Username = "nbsecrets"

// Header is a message header (and a parent header).
type Header struct {
	MsgID    string `json:"msg_id"`
	Session  string `json:"session"`
	Username string `json:"username"`
	Date     string `json:"date"`
	MsgType  string `json:"msg_type"`
	Version  string `json:"version"`
	// SubshellID routes a shell request to a subshell (ipykernel >= 7).
	SubshellID string `json:"subshell_id,omitempty"`
}

// Message is one Jupyter message.
type Message struct {
	// Identities are the ZeroMQ routing frames before "<IDS|MSG>". On iopub
	// it is the topic, such as "kernel.<id>.status".
	Identities [][]byte
	Header     Header
	// ParentHeader is the header of the request this message answers; nil
	// (encoded as {}) when there is none.
	ParentHeader *Header
	// Metadata is encoded as {} when nil.
	Metadata map[string]any
	// Content is the message body as raw JSON; encoded as {} when empty.
	Content json.RawMessage
	// Buffers are extra binary frames after the content.
	Buffers [][]byte
}

// ParentID returns the parent's msg_id, or "" when the message has no parent.
func (m *Message) ParentID() string {
	if m.ParentHeader == nil {
		return ""
	}
	return m.ParentHeader.MsgID
}

// NewMessage makes a message with a fresh random msg_id, the current time,
// an empty metadata dict and content encoded as JSON (nil content is {}).
// parent is copied.
func NewMessage(session, msgType string, content any, parent *Header) (*Message, error) {
	raw, err := marshalContent(content)
	if err != nil {
		return nil, fmt.Errorf("jupyter: encoding %s content: %w", msgType, err)
	}
	m := &Message{
		Header: Header{
			MsgID:    NewID(),
			Session:  session,
			Username: Username,
			Date:     time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
			MsgType:  msgType,
			Version:  ProtocolVersion,
		},
		Metadata: map[string]any{},
		Content:  raw,
	}
	if parent != nil {
		p := *parent
		m.ParentHeader = &p
	}
	return m, nil
}

func marshalContent(content any) (json.RawMessage, error) {
	switch c := content.(type) {
	case nil:
		return json.RawMessage("{}"), nil
	case json.RawMessage:
		if len(c) == 0 {
			return json.RawMessage("{}"), nil
		}
		if !json.Valid(c) {
			return nil, fmt.Errorf("invalid JSON")
		}
		return c, nil
	}
	b, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// NewID returns a random version 4 UUID in hex without dashes, as
// jupyter_client makes msg_ids and session ids.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("jupyter: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:])
}
