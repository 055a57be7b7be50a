package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// Debian has only ipykernel 6.17 and PyPI is out of reach here, so the
// subshell path (ipykernel >= 7) is tested against protoKernel: a kernel
// that speaks the Jupyter wire protocol as the messaging spec (5.5, kernel
// subshells, JEP 91) describes it, not a real ipykernel 7.

// protoKernel is a fake kernel at the protocol level: ROUTER sockets for
// shell and control, PUB for iopub, REP for heartbeat, messages signed and
// checked with the jupyter Codec. It answers kernel_info (listing "kernel
// subshells" when subshells is set), create_subshell_request on control and
// execute_request on either channel, and records what it received.
type protoKernel struct {
	info      *jupyter.ConnectionInfo
	codec     *jupyter.Codec
	session   string
	subshells bool
	muted     atomic.Bool // drop iopub, as before a subscriber's subscription arrives
	socks     []zmq4.Socket
	iopub     zmq4.Socket
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu       sync.Mutex
	received []received
	created  []string // subshell ids handed out
	got      chan struct{}
}

type received struct {
	ch  jupyter.Channel
	msg *jupyter.Message
}

func startProtoKernel(t *testing.T, dir string, subshells bool) *protoKernel {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opt := zmq4.WithLogger(log.New(io.Discard, "", 0))
	k := &protoKernel{session: jupyter.NewID(), subshells: subshells, cancel: cancel, got: make(chan struct{}, 100),
		info: &jupyter.ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", Key: jupyter.NewID(), SignatureScheme: "hmac-sha256", KernelName: "python3"}}
	var err error
	if k.codec, err = jupyter.NewCodec([]byte(k.info.Key), k.info.SignatureScheme); err != nil {
		t.Fatal(err)
	}
	listen := func(s zmq4.Socket) int {
		t.Helper()
		if err := s.Listen("tcp://127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		k.socks = append(k.socks, s)
		return s.Addr().(*net.TCPAddr).Port
	}
	shell, control, stdin := zmq4.NewRouter(ctx, opt), zmq4.NewRouter(ctx, opt), zmq4.NewRouter(ctx, opt)
	iopub, hb := zmq4.NewPub(ctx, opt), zmq4.NewRep(ctx, opt)
	k.info.ShellPort, k.info.ControlPort, k.info.StdinPort = listen(shell), listen(control), listen(stdin)
	k.info.IOPubPort, k.info.HBPort = listen(iopub), listen(hb)
	k.iopub = iopub
	t.Cleanup(k.stop)
	k.wg.Add(3)
	go k.echo(ctx, hb)
	go k.serve(jupyter.Shell, shell, iopub)
	go k.serve(jupyter.Control, control, iopub)
	if err := k.info.WriteFile(filepath.Join(dir, "kernel-"+jupyter.NewID()+".json")); err != nil {
		t.Fatal(err)
	}
	return k
}

// connFile is the path of the kernel's connection file.
func (k *protoKernel) connFile(dir string) string {
	m, _ := filepath.Glob(filepath.Join(dir, "kernel-*.json"))
	if len(m) != 1 {
		return ""
	}
	return m[0]
}

func (k *protoKernel) stop() {
	k.cancel()
	for _, s := range k.socks {
		s.Close()
	}
	k.wg.Wait()
}

// echo answers the heartbeat: each message back as it came.
func (k *protoKernel) echo(ctx context.Context, s zmq4.Socket) {
	defer k.wg.Done()
	for ctx.Err() == nil {
		m, err := s.Recv()
		if err != nil {
			continue // a pinger gone; Close ends the loop through ctx
		}
		_ = s.Send(m)
	}
}

var protoMu sync.Mutex // iopub is shared by the shell and control loops

func (k *protoKernel) serve(ch jupyter.Channel, s, iopub zmq4.Socket) {
	defer k.wg.Done()
	for {
		raw, err := s.Recv()
		if err != nil {
			return // closed
		}
		m, err := k.codec.Decode(raw.Frames)
		if err != nil {
			continue // a real kernel drops a message with a bad signature
		}
		k.mu.Lock()
		k.received = append(k.received, received{ch, m})
		k.mu.Unlock()
		select {
		case k.got <- struct{}{}:
		default:
		}
		var content any
		switch m.Header.MsgType {
		case "kernel_info_request":
			features := []string{}
			if k.subshells {
				features = append(features, jupyter.FeatureSubshells)
			}
			content = map[string]any{"status": "ok", "protocol_version": "5.5", "implementation": "ipython",
				"implementation_version": "7.0.0", "banner": "",
				"language_info":      map[string]any{"name": "python", "version": "3.11"},
				"supported_features": features}
		case "create_subshell_request":
			if ch != jupyter.Control || !k.subshells {
				continue // ipykernel 6 does not answer it at all
			}
			id := jupyter.NewID()
			k.mu.Lock()
			k.created = append(k.created, id)
			k.mu.Unlock()
			content = map[string]any{"status": "ok", "subshell_id": id}
		case "execute_request":
			content = map[string]any{"status": "ok", "execution_count": 0, "user_expressions": map[string]any{}}
		default:
			continue
		}
		k.publish(iopub, m, "busy")
		reply, err := jupyter.NewMessage(k.session, replyType(m.Header.MsgType), content, &m.Header)
		if err != nil {
			panic(err)
		}
		// The spec: a reply to a subshell request carries the subshell id.
		reply.Header.SubshellID = m.Header.SubshellID
		reply.Identities = m.Identities
		frames, err := k.codec.Encode(reply)
		if err != nil {
			panic(err)
		}
		if s.Send(zmq4.NewMsgFrom(frames...)) != nil {
			return
		}
		k.publish(iopub, m, "idle")
	}
}

// dialProtoKernel starts a protoKernel (listing subshells or not; muted:
// dropping iopub from the start) and opens a session to it. The session is
// closed and ctx, bounding the test's requests, ends with the test.
func dialProtoKernel(t *testing.T, subshells, muted bool) (*protoKernel, session, context.Context) {
	t.Helper()
	dir := t.TempDir()
	k := startProtoKernel(t, dir, subshells)
	k.muted.Store(muted)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	sess, err := dialJupyter(ctx, k.connFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return k, sess, ctx
}

func replyType(req string) string { return req[:len(req)-len("_request")] + "_reply" }

func (k *protoKernel) publish(iopub zmq4.Socket, parent *jupyter.Message, state string) {
	if k.muted.Load() {
		return
	}
	st, _ := jupyter.NewMessage(k.session, "status", map[string]string{"execution_state": state}, &parent.Header)
	st.Identities = [][]byte{[]byte("kernel.status")}
	frames, err := k.codec.Encode(st)
	if err != nil {
		panic(err)
	}
	protoMu.Lock()
	defer protoMu.Unlock()
	_ = iopub.Send(zmq4.NewMsgFrom(frames...))
}

// requests returns the requests of a type received so far.
func (k *protoKernel) requests(msgType string) []received {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []received
	for _, r := range k.received {
		if r.msg.Header.MsgType == msgType {
			out = append(out, r)
		}
	}
	return out
}

func (k *protoKernel) subshellIDs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.created...)
}

var b64Payload = regexp.MustCompile(`b64decode\('([A-Za-z0-9+/=]+)'\)`)

// decodeReseed returns the plan a pythonReseed code carries.
func decodeReseed(code string) (map[string]any, error) {
	m := b64Payload.FindStringSubmatch(code)
	if m == nil {
		return nil, errors.New("no base64 payload in the re-seed code")
	}
	b, err := base64.StdEncoding.DecodeString(m[1])
	if err != nil {
		return nil, err
	}
	var p map[string]any
	return p, json.Unmarshal(b, &p)
}

// TestSubshellReseed: a kernel that lists "kernel subshells" gets a
// create_subshell_request on control, and the re-seed is a silent
// execute_request on shell whose header names that subshell. Tested against
// the protocol as specified (protoKernel), not a real ipykernel 7.
func TestSubshellReseed(t *testing.T) {
	k, sess, ctx := dialProtoKernel(t, true, false)
	if m := sess.Describe().Mode; m != ModeSubshell {
		t.Fatalf("mode %s, want %s", m, ModeSubshell)
	}
	ids := k.subshellIDs()
	if len(ids) != 1 {
		t.Fatalf("%d subshells created, want 1", len(ids))
	}
	for _, r := range k.requests("create_subshell_request") {
		if r.ch != jupyter.Control {
			t.Errorf("create_subshell_request on %s, want control", r.ch)
		}
	}
	v := secretValue("subshell")
	if err := sess.Apply(ctx, Plan{Set: map[string]string{"TOKEN": v}, Unset: []string{"OLD"}}, "TOKEN"); err != nil {
		t.Fatal(err)
	}
	ex := k.requests("execute_request")
	if len(ex) != 1 {
		t.Fatalf("%d execute_requests, want 1", len(ex))
	}
	r := ex[0]
	if r.ch != jupyter.Shell || r.msg.Header.SubshellID != ids[0] {
		t.Errorf("re-seed on %s with subshell_id %q, want shell with %q", r.ch, r.msg.Header.SubshellID, ids[0])
	}
	var content struct {
		Code         string `json:"code"`
		Silent       bool   `json:"silent"`
		StoreHistory bool   `json:"store_history"`
		AllowStdin   bool   `json:"allow_stdin"`
		StopOnError  bool   `json:"stop_on_error"`
	}
	if err := json.Unmarshal(r.msg.Content, &content); err != nil {
		t.Fatal(err)
	}
	if !content.Silent || content.StoreHistory || content.AllowStdin || content.StopOnError {
		t.Errorf("execute_request not silent: %+v", struct{ Silent, StoreHistory, AllowStdin, StopOnError bool }{content.Silent, content.StoreHistory, content.AllowStdin, content.StopOnError})
	}
	p, err := decodeReseed(content.Code)
	if err != nil {
		t.Fatal(err)
	}
	if set, _ := p["set"].(map[string]any); set["TOKEN"] != v || fmt.Sprint(p["unset"]) != "[OLD]" || p["managed"] != "TOKEN" {
		t.Error("the re-seed does not carry the plan")
	}
	// The probe goes to the heartbeat, not to shell or control.
	before := len(k.requests("kernel_info_request"))
	if err := sess.Probe(ctx); err != nil {
		t.Errorf("probe: %v", err)
	}
	if n := len(k.requests("kernel_info_request")) - before; n != 0 {
		t.Errorf("the probe sent %d kernel_info requests; want the heartbeat only", n)
	}
	k.stop()
	if err := sess.Probe(ctx); err == nil {
		t.Error("the probe passed against a kernel whose sockets are closed")
	}
}

// TestNoSubshellsUsesControl: without "kernel subshells" no
// create_subshell_request is sent (ipykernel 6 would never answer it) and
// the re-seed goes to control without a subshell id.
func TestNoSubshellsUsesControl(t *testing.T) {
	k, sess, ctx := dialProtoKernel(t, false, false)
	if m := sess.Describe().Mode; m != ModeControl {
		t.Fatalf("mode %s, want %s", m, ModeControl)
	}
	if err := sess.Apply(ctx, Plan{Set: map[string]string{"X": "y"}, Full: true}, "X"); err != nil {
		t.Fatal(err)
	}
	if n := len(k.requests("create_subshell_request")); n != 0 {
		t.Errorf("%d create_subshell_requests sent to a kernel without subshells", n)
	}
	ex := k.requests("execute_request")
	if len(ex) != 1 || ex[0].ch != jupyter.Control || ex[0].msg.Header.SubshellID != "" {
		t.Fatalf("re-seed: %d requests, want 1 on control without a subshell id", len(ex))
	}
}

// TestSubshellKernelThroughAgent: the agent serves a subshell kernel found
// in its runtime dir: status shows it live in mode live:subshell, holding
// the secret, and every re-seed went to the subshell.
//
// The quiet channel is off: a protocol-level kernel cannot run its install
// (TestQuiet* covers it against ipykernel).
func TestSubshellKernelThroughAgent(t *testing.T) {
	h := newHarness(t)
	a := h.startAgentWith(func(c *Config) { c.NoQuiet = true })
	k := startProtoKernel(t, h.dir, true)
	v1, v2 := secretValue("sub1"), secretValue("sub2")
	h.put("s1", "SUB-TOKEN", 1, v1)
	h.put("s1", "SUB-TOKEN", 2, v2)
	waitFor(t, 20*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].State != StateLive || ks[0].Mode != ModeSubshell || ks[0].Holds["SUB-TOKEN"].Version != 2 {
			return fmt.Errorf("kernels: %+v", ks)
		}
		return nil
	})
	ids := k.subshellIDs()
	ex := k.requests("execute_request")
	if len(ex) == 0 || len(ids) == 0 {
		t.Fatalf("%d re-seeds, %d subshells", len(ex), len(ids))
	}
	for _, r := range ex {
		if r.ch != jupyter.Shell || !slices.Contains(ids, r.msg.Header.SubshellID) {
			t.Errorf("a re-seed went to %s with subshell %q", r.ch, r.msg.Header.SubshellID)
		}
	}
	var last struct{ Code string }
	_ = json.Unmarshal(ex[len(ex)-1].msg.Content, &last)
	p, err := decodeReseed(last.Code)
	if err != nil {
		t.Fatal(err)
	}
	if set, _ := p["set"].(map[string]any); set["SUB-TOKEN"] != v2 {
		t.Error("the last re-seed does not carry the newest value")
	}
}
