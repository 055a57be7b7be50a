package jupyter_test

import (
	"encoding/json"
	"fmt"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

func ExampleCodec_Encode() {
	codec, err := jupyter.NewCodec([]byte("secret"), "hmac-sha256")
	if err != nil {
		panic(err)
	}
	// NewMessage would pick a fresh msg_id and the current time; they are
	// fixed here so the output is stable.
	m := &jupyter.Message{
		Header: jupyter.Header{
			MsgID:    "6c3f0b7ad2f94c2e9d7b1a2e3f4a5b6c",
			Session:  "s1",
			Username: "nbsecrets",
			Date:     "2025-01-02T03:04:05.000000Z",
			MsgType:  "kernel_info_request",
			Version:  "5.3",
		},
	}
	frames, err := codec.Encode(m)
	if err != nil {
		panic(err)
	}
	for _, f := range frames {
		fmt.Println(string(f))
	}
	// Output:
	// <IDS|MSG>
	// 833b391c84612c4bf4b8095fe5aa7f0d46b4a02c3286e7f37156ebc27801f2eb
	// {"msg_id":"6c3f0b7ad2f94c2e9d7b1a2e3f4a5b6c","session":"s1","username":"nbsecrets","date":"2025-01-02T03:04:05.000000Z","msg_type":"kernel_info_request","version":"5.3"}
	// {}
	// {}
	// {}
}

func ExampleCodec_Decode() {
	codec, err := jupyter.NewCodec([]byte("secret"), "hmac-sha256")
	if err != nil {
		panic(err)
	}
	request, err := jupyter.NewMessage("s1", "execute_request", map[string]any{"code": "1+1", "silent": true}, nil)
	if err != nil {
		panic(err)
	}
	reply, err := jupyter.NewMessage("kernel-session", "execute_reply",
		map[string]any{"status": "ok", "execution_count": 3}, &request.Header)
	if err != nil {
		panic(err)
	}
	reply.Identities = [][]byte{[]byte("kernel.1234.execute_reply")}
	frames, err := codec.Encode(reply)
	if err != nil {
		panic(err)
	}

	m, err := codec.Decode(frames)
	if err != nil {
		panic(err)
	}
	var content struct {
		Status         string `json:"status"`
		ExecutionCount int    `json:"execution_count"`
	}
	if err := json.Unmarshal(m.Content, &content); err != nil {
		panic(err)
	}
	fmt.Println(string(m.Identities[0]))
	fmt.Println(m.Header.MsgType, m.ParentID() == request.Header.MsgID)
	fmt.Println(content.Status, content.ExecutionCount)

	// One changed byte and the message is refused.
	frames[len(frames)-1] = []byte(`{"status":"ok","execution_count":4}`)
	_, err = codec.Decode(frames)
	fmt.Println(err)
	// Output:
	// kernel.1234.execute_reply
	// execute_reply true
	// ok 3
	// jupyter: bad message signature
}
