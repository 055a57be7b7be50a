package jupyter_test

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"testing"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// FuzzDecode feeds Decode arbitrary frames (the input split at NUL bytes).
// Decode must not panic, and whatever it accepts must encode and decode
// again to the same message. mode picks the codec: 0 unsigned; 1 keyed,
// frames as given; 2 keyed, with the signature frame recomputed first so
// that the parsing behind the HMAC check is reached.
func FuzzDecode(f *testing.F) {
	const key = "fuzz-key"
	signed := mustCodec(f, key, "hmac-sha256")
	unsigned := mustCodec(f, "", "")

	for _, seed := range []*jupyter.Message{
		{Header: jupyter.Header{MsgID: "1", MsgType: "status"}, Content: []byte(`{"execution_state":"idle"}`),
			Identities: [][]byte{[]byte("kernel.k.status")}},
		{Header: jupyter.Header{MsgID: "2", MsgType: "execute_reply", SubshellID: "s"},
			ParentHeader: &jupyter.Header{MsgID: "1", MsgType: "execute_request"},
			Metadata:     map[string]any{"a": []any{1.0, "x", nil, map[string]any{}}},
			Content:      []byte(`{"status":"ok","execution_count":1}`), Buffers: [][]byte{[]byte("buf")}},
	} {
		for _, c := range []*jupyter.Codec{signed, unsigned} {
			frames, err := c.Encode(seed)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(bytes.Join(frames, []byte{0}), byte(0))
			f.Add(bytes.Join(frames, []byte{0}), byte(1))
			f.Add(bytes.Join(frames, []byte{0}), byte(2))
		}
	}
	f.Add([]byte("<IDS|MSG>\x00\x00{\"msg_type\":\"a\"}\x00{}\x00{}\x00{}"), byte(0))
	f.Add([]byte("id\x00<IDS|MSG>\x00\x00{\"msg_type\":\"\\ud800\"}\x00{\"msg_id\":\"\xff\"}\x00{\"k\":1e308}\x00{ }"), byte(2))

	f.Fuzz(func(t *testing.T, data []byte, mode byte) {
		frames := bytes.Split(data, []byte{0})
		codec := unsigned
		if mode%3 != 0 {
			codec = signed
		}
		if mode%3 == 2 {
			resign(frames, key)
		}
		m, err := codec.Decode(frames)
		if err != nil {
			return
		}
		again, err := codec.Encode(m)
		if err != nil {
			t.Fatalf("decoded message does not encode: %v\n%+v", err, m)
		}
		m2, err := codec.Decode(again)
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the message:\n%+v\n%+v", m, m2)
		}
	})
}

// resign replaces the signature frame with the HMAC of the four frames
// after it, when the frames have that shape.
func resign(frames [][]byte, key string) {
	for i, fr := range frames {
		if string(fr) != jupyter.Delimiter {
			continue
		}
		if len(frames) < i+6 {
			return
		}
		frames[i+1] = []byte(hex.EncodeToString(hmacSHA256([]byte(key), frames[i+2:i+6])))
		return
	}
}
