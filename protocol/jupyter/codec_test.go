package jupyter_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

func mustCodec(t testing.TB, key, scheme string) *jupyter.Codec {
	t.Helper()
	c, err := jupyter.NewCodec([]byte(key), scheme)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCodecRoundTrip(t *testing.T) {
	parent := &jupyter.Header{MsgID: "p1", Session: "s", Username: "u", Date: "d", MsgType: "execute_request", Version: "5.3"}
	base := func() *jupyter.Message {
		return &jupyter.Message{
			Header:   jupyter.Header{MsgID: "m1", Session: "s", Username: "u", Date: "d", MsgType: "execute_reply", Version: "5.3"},
			Metadata: map[string]any{},
			Content:  json.RawMessage(`{"status":"ok"}`),
		}
	}
	tests := []struct {
		name   string
		key    string
		scheme string
		edit   func(*jupyter.Message)
		want   func(*jupyter.Message) // the expected decoded form, from the input
	}{
		{name: "plain", key: "k"},
		{name: "unsigned", key: ""},
		{name: "sha512", key: "k", scheme: "hmac-sha512"},
		{name: "default scheme", key: "k", scheme: ""},
		{name: "identities", key: "k", edit: func(m *jupyter.Message) {
			m.Identities = [][]byte{[]byte("a"), {}, []byte("kernel.x.status")}
		}},
		{name: "parent", key: "k", edit: func(m *jupyter.Message) { m.ParentHeader = parent }},
		{name: "zero parent is none", key: "k", edit: func(m *jupyter.Message) { m.ParentHeader = &jupyter.Header{} },
			want: func(m *jupyter.Message) { m.ParentHeader = nil }},
		{name: "subshell", key: "k", edit: func(m *jupyter.Message) { m.Header.SubshellID = "sub-1" }},
		{name: "metadata", key: "k", edit: func(m *jupyter.Message) {
			m.Metadata = map[string]any{"started": "t", "n": 1.5, "nested": map[string]any{"a": []any{true, nil}}}
		}},
		{name: "nil metadata", key: "k", edit: func(m *jupyter.Message) { m.Metadata = nil },
			want: func(m *jupyter.Message) { m.Metadata = map[string]any{} }},
		{name: "empty content", key: "k", edit: func(m *jupyter.Message) { m.Content = nil },
			want: func(m *jupyter.Message) { m.Content = json.RawMessage("{}") }},
		{name: "buffers", key: "k", edit: func(m *jupyter.Message) { m.Buffers = [][]byte{{0, 1, 2}, {}, []byte("<IDS|MSG>")} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustCodec(t, tt.key, tt.scheme)
			in := base()
			if tt.edit != nil {
				tt.edit(in)
			}
			frames, err := c.Encode(in)
			if err != nil {
				t.Fatal(err)
			}
			sig := frames[len(in.Identities)+1]
			if (tt.key == "") != (len(sig) == 0) {
				t.Fatalf("signature frame %q with key %q", sig, tt.key)
			}
			got, err := c.Decode(frames)
			if err != nil {
				t.Fatal(err)
			}
			want := base()
			if tt.edit != nil {
				tt.edit(want)
			}
			if tt.want != nil {
				tt.want(want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestCodecRefuses(t *testing.T) {
	c := mustCodec(t, "key", "hmac-sha256")
	m, err := jupyter.NewMessage("s", "status", map[string]string{"execution_state": "idle"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, err := c.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	with := func(i int, v string) [][]byte {
		f := append([][]byte{}, good...)
		f[i] = []byte(v)
		return f
	}
	unsigned := mustCodec(t, "", "")
	// raw builds unsigned frames from header, parent, metadata, content.
	raw := func(frames ...string) [][]byte {
		fs := [][]byte{[]byte(jupyter.Delimiter), nil}
		for _, f := range frames {
			fs = append(fs, []byte(f))
		}
		return fs
	}
	tests := []struct {
		name   string
		codec  *jupyter.Codec
		frames [][]byte
		want   error
	}{
		{"wrong key", mustCodec(t, "other", ""), good, jupyter.ErrBadSignature},
		{"other scheme", mustCodec(t, "key", "hmac-sha512"), good, jupyter.ErrBadSignature},
		{"tampered content", c, with(5, `{"execution_state":"busy"}`), jupyter.ErrBadSignature},
		{"tampered header", c, with(2, strings.Replace(string(good[2]), "status", "stream", 1)), jupyter.ErrBadSignature},
		{"no signature", c, with(1, ""), jupyter.ErrBadSignature},
		{"signature not hex", c, with(1, "zz"), jupyter.ErrBadSignature},
		{"short signature", c, with(1, string(good[1][:10])), jupyter.ErrBadSignature},
		{"no delimiter", c, good[1:], jupyter.ErrMalformed},
		{"too few frames", c, good[:5], jupyter.ErrMalformed},
		{"nothing", c, nil, jupyter.ErrMalformed},
		{"header not object", unsigned, raw(`[]`, `{}`, `{}`, `{}`), jupyter.ErrMalformed},
		{"header without msg_type", unsigned, raw(`{"msg_id":"x"}`, `{}`, `{}`, `{}`), jupyter.ErrMalformed},
		{"header field type", unsigned, raw(`{"msg_id":1,"msg_type":"a"}`, `{}`, `{}`, `{}`), jupyter.ErrMalformed},
		{"parent null", unsigned, raw(`{"msg_type":"a"}`, `null`, `{}`, `{}`), jupyter.ErrMalformed},
		{"metadata list", unsigned, raw(`{"msg_type":"a"}`, `{}`, `[1]`, `{}`), jupyter.ErrMalformed},
		{"content not JSON", unsigned, raw(`{"msg_type":"a"}`, `{}`, `{}`, `{"a":`), jupyter.ErrMalformed},
		{"content not object", unsigned, raw(`{"msg_type":"a"}`, `{}`, `{}`, `"a"`), jupyter.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.codec.Decode(tt.frames)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %+v, %v; want %v", got, err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "jupyter: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestEncodeRefuses(t *testing.T) {
	c := mustCodec(t, "k", "")
	m, _ := jupyter.NewMessage("s", "x", nil, nil)
	m.Identities = [][]byte{[]byte(jupyter.Delimiter)}
	if _, err := c.Encode(m); !errors.Is(err, jupyter.ErrMalformed) {
		t.Fatalf("identity = delimiter: %v", err)
	}
	m, _ = jupyter.NewMessage("s", "x", nil, nil)
	m.Content = json.RawMessage(`{`)
	if _, err := c.Encode(m); !errors.Is(err, jupyter.ErrMalformed) {
		t.Fatalf("bad content: %v", err)
	}
	if _, err := jupyter.NewMessage("s", "x", json.RawMessage(`{`), nil); err == nil {
		t.Fatal("NewMessage took invalid raw JSON")
	}
}

func TestNewCodecSchemes(t *testing.T) {
	for _, s := range []string{"", "hmac-sha256", "hmac-sha512", "hmac-sha1", "hmac-md5"} {
		if _, err := jupyter.NewCodec([]byte("k"), s); err != nil {
			t.Errorf("NewCodec(%q) = %v", s, err)
		}
	}
	if _, err := jupyter.NewCodec([]byte("k"), "hmac-sha3"); err == nil {
		t.Error("NewCodec accepted an unknown scheme")
	}
}

func TestNewMessage(t *testing.T) {
	parent := &jupyter.Header{MsgID: "p", MsgType: "execute_request"}
	a, err := jupyter.NewMessage("sess", "execute_request", map[string]int{"a": 1}, parent)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := jupyter.NewMessage("sess", "execute_request", map[string]int{"a": 1}, parent)
	if a.Header.MsgID == b.Header.MsgID || len(a.Header.MsgID) != 32 {
		t.Fatalf("msg_ids %q and %q", a.Header.MsgID, b.Header.MsgID)
	}
	parent.MsgID = "changed"
	if a.ParentID() != "p" {
		t.Fatal("NewMessage did not copy the parent header")
	}
	if a.Header.Session != "sess" || a.Header.Version != jupyter.ProtocolVersion || string(a.Content) != `{"a":1}` || a.Metadata == nil {
		t.Fatalf("message %+v", a)
	}
	// Two encodings of the same request differ, so a kernel never sees a
	// signature twice.
	c := mustCodec(t, "k", "")
	fa, _ := c.Encode(a)
	fb, _ := c.Encode(b)
	if string(fa[1]) == string(fb[1]) {
		t.Fatal("two requests share a signature")
	}
}

func TestConnectionFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kernel-1.json")
	// As jupyter_client writes it.
	const file = `{"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
"hb_port": 50005, "ip": "127.0.0.1", "key": "a0436f6c-1916-498b-8eb9-e81ab9368e84",
"transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "python3"}`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	info, err := jupyter.ReadConnectionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := jupyter.ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", ShellPort: 50001, IOPubPort: 50002, StdinPort: 50003,
		ControlPort: 50004, HBPort: 50005, Key: "a0436f6c-1916-498b-8eb9-e81ab9368e84", SignatureScheme: "hmac-sha256", KernelName: "python3"}
	if *info != want {
		t.Fatalf("got %+v", *info)
	}
	for ch, ep := range map[jupyter.Channel]string{
		jupyter.Shell: "tcp://127.0.0.1:50001", jupyter.IOPub: "tcp://127.0.0.1:50002", jupyter.Stdin: "tcp://127.0.0.1:50003",
		jupyter.Control: "tcp://127.0.0.1:50004", jupyter.Heartbeat: "tcp://127.0.0.1:50005",
	} {
		if got := info.Endpoint(ch); got != ep {
			t.Errorf("Endpoint(%v) = %q, want %q", ch, got, ep)
		}
	}
	ipc := want
	ipc.Transport, ipc.IP = "ipc", "/run/kernel-ipc"
	if got := ipc.Endpoint(jupyter.Control); got != "ipc:///run/kernel-ipc-50004" {
		t.Errorf("ipc endpoint %q", got)
	}
	v6 := want
	v6.IP = "::1"
	if got := v6.Endpoint(jupyter.Shell); got != "tcp://[::1]:50001" {
		t.Errorf("v6 endpoint %q", got)
	}

	out := filepath.Join(dir, "kernel-2.json")
	if err := info.WriteFile(out); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("written file: %v %v", st.Mode(), err)
	}
	again, err := jupyter.ReadConnectionFile(out)
	if err != nil || *again != want {
		t.Fatalf("reread: %+v %v", again, err)
	}

	for name, bad := range map[string]string{
		"not json":   `{`,
		"no port":    `{"ip":"127.0.0.1","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4}`,
		"transport":  `{"transport":"udp","ip":"127.0.0.1","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5}`,
		"scheme":     `{"ip":"127.0.0.1","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"signature_scheme":"rot13"}`,
		"no ip":      `{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5}`,
		"port range": `{"ip":"127.0.0.1","shell_port":70000,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5}`,
	} {
		p := filepath.Join(dir, "bad.json")
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := jupyter.ReadConnectionFile(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := jupyter.ReadConnectionFile(filepath.Join(dir, "absent.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v", err)
	}
}

func hmacSHA256(key []byte, frames [][]byte) []byte {
	mac := hmac.New(sha256.New, key)
	for _, f := range frames {
		mac.Write(f)
	}
	return mac.Sum(nil)
}
