package agent

// The quiet channel: how a live IPython kernel is re-seeded after first
// contact without a Jupyter message.
//
// Every Jupyter request, on shell or control, makes ipykernel publish
// status busy then idle on iopub, and Jupyter Server takes each as the
// kernel's execution_state and last_activity: re-seeds and probes sent that
// way mark a running cell idle (and get it culled) and keep an abandoned
// kernel active for ever. So at first contact, once the kernel's shell is
// free, the agent sends one silent execute_request on shell (the install,
// quiet_kernel.py): it starts one daemon thread named "nbsecrets" in the
// kernel, or hands a thread a previous agent started the new address, which
// connects back to the agent's quiet socket. From then on each change goes
// over that connection as a length-prefixed JSON frame, the thread applies
// it to os.environ (putenv/unsetenv) and acknowledges its sequence number:
// no iopub message, no status, no activity. Liveness is the connection
// itself (EOF when the kernel dies) and the Jupyter heartbeat channel
// (jupyter.Ping), which ipykernel answers in a thread of its own without
// publishing anything. The install is the one moment the agent moves
// last_activity, at first contact.
//
// The thread outlives an agent: when its connection ends it tries, every
// half second for a while and then every five, to resume at the same path,
// answering the new agent's random challenge with an HMAC under the
// kernel's connection key (which the agent reads from the connection file).
// So an agent restarted under a running cell serves the kernel at once
// without a Jupyter message. A kernel found running a cell with no thread
// to resume is not installed into: a request on shell would wait for the
// cell, and one on control would publish busy/idle in the middle of it. It
// is served the old way (control, or a subshell on ipykernel >= 7) and
// status shows "live:control (waiting for idle to install)" until the cell
// ends; then the install runs on shell.
//
// Threat model. Values must reach only the kernel, and only the agent may
// set a kernel's environment:
//   - The quiet socket sits in the agent's private directory (mode 0700,
//     like the local API's), is mode 0600, and the agent accepts only peers
//     of its own uid (SO_PEERCRED). Other users cannot connect at all.
//   - A process of the same uid that is not the kernel (which could read the
//     kernel's environment from /proc anyway) cannot pose as it: it must
//     present the one-time token (256 bits from crypto/rand, made per
//     install) that reached the kernel only inside the install code, over
//     the kernel's HMAC-signed shell channel. The token is compared in
//     constant time, used once, and dropped when the install ends; the
//     connecting process's pid (SO_PEERCRED) must be the pid it claims and
//     the pid the kernel itself reported in the install's signed reply.
//   - A resume proves the kernel's connection key (HMAC-SHA256 over a
//     fresh 256-bit nonce and the pid, checked against the sessions waiting
//     for one): only a process that can read the kernel's 0600 connection
//     file, which could drive the kernel anyway, can pass it.
//   - The thread checks, before it sends the token, that the socket file
//     and its directory belong to its uid and nobody else can write the
//     directory, and that the peer it reached runs as its uid: a socket
//     planted elsewhere by another user gets nothing.
//   - Frames are capped in size on both sides before anything is
//     allocated; a refused connection is logged with its reason (never a
//     token or value) and closed, and the agent keeps serving.
//   - Values travel only as JSON data: the kernel never compiles them, so no
//     traceback or linecache entry can quote one; the install cell (which
//     holds the token, spent by then) removes itself from IPython's source
//     caches.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

//go:embed quiet_kernel.py
var quietKernelSource string

const (
	// ModeQuiet: ipykernel with the quiet channel installed; re-seeds and
	// liveness never touch Jupyter's channels.
	ModeQuiet Mode = "live:quiet"
	// ModeControlWaiting and ModeSubshellWaiting: a kernel found running a
	// cell, served the old way until the cell ends and the install runs.
	ModeControlWaiting  Mode = "live:control (waiting for idle to install)"
	ModeSubshellWaiting Mode = "live:subshell (waiting for idle to install)"

	quietMaxFrame      = 16 << 20 // a change; as the kernel side caps it
	quietMaxReplyFrame = 4 << 10  // a hello or an ack
	quietHelloTimeout  = 5 * time.Second
)

// quietHub is the agent's end of the quiet channel: the listener, and the
// installs waiting for their kernel to connect back.
type quietHub struct {
	log hclog.Logger

	mu       sync.Mutex
	path     string                    // the socket; "" while not listening
	waiting  map[[32]byte]*quietTicket // by sha256 of the token
	resumers map[*quietResumer]struct{}
	pending  map[net.Conn]struct{} // accepted, hello not read yet
}

func newQuietHub(log hclog.Logger) *quietHub {
	return &quietHub{log: log, waiting: map[[32]byte]*quietTicket{}, pending: map[net.Conn]struct{}{},
		resumers: map[*quietResumer]struct{}{}}
}

// quietTicket is one install waiting for its kernel's connection.
type quietTicket struct {
	token string
	conn  chan *quietConn // capacity 1
}

// socketPath returns the socket's path, or "" when the hub does not listen
// (no quiet channel: kernels are served the old way).
func (h *quietHub) socketPath() string {
	if h == nil {
		return ""
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.path
}

// expect makes a one-time token and waits for a connection presenting it.
func (h *quietHub) expect() (*quietTicket, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("making a token: %w", err)
	}
	t := &quietTicket{token: hex.EncodeToString(raw), conn: make(chan *quietConn, 1)}
	h.mu.Lock()
	h.waiting[sha256.Sum256([]byte(t.token))] = t
	h.mu.Unlock()
	return t, nil
}

// forget drops a ticket (used or given up) and a connection it received
// that nobody took.
func (h *quietHub) forget(t *quietTicket) {
	h.mu.Lock()
	delete(h.waiting, sha256.Sum256([]byte(t.token)))
	h.mu.Unlock()
	select {
	case q := <-t.conn:
		_ = q.Close()
	default:
	}
}

// claim hands c to the ticket of a presented token, once; it reports
// whether there was one. Under the lock, so that a ticket being forgotten
// either gets c before forget drains it or is gone.
func (h *quietHub) claim(token string, c *net.UnixConn, pid int) bool {
	key := sha256.Sum256([]byte(token))
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.waiting[key]
	if t == nil || subtle.ConstantTimeCompare([]byte(t.token), []byte(token)) != 1 {
		return false
	}
	delete(h.waiting, key)
	t.conn <- newQuietConn(c, pid) // capacity 1, one claim per ticket
	return true
}

// setPath says where the hub listens (serve does too): installs name it.
func (h *quietHub) setPath(path string) {
	h.mu.Lock()
	h.path = path
	h.mu.Unlock()
}

// serve accepts kernels' connections on l until ctx ends.
func (h *quietHub) serve(ctx context.Context, l net.Listener, path string) error {
	h.setPath(path)
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		_ = l.Close()
		h.mu.Lock()
		h.path = ""
		for c := range h.pending {
			_ = c.Close()
		}
		h.mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting on the quiet socket: %w", err)
		}
		h.mu.Lock()
		h.pending[c] = struct{}{}
		h.mu.Unlock()
		wg.Add(1)
		go func() { // owned by serve; ends within quietHelloTimeout
			defer wg.Done()
			h.handshake(c.(*net.UnixConn))
		}()
	}
}

// quietHello is the kernel's first frame.
type quietHello struct {
	V      int    `json:"v"`
	Token  string `json:"token"`
	PID    int    `json:"pid"`
	Resume bool   `json:"resume"` // no token: answer a challenge with the kernel's connection key
}

// quietResumer is a session waiting for its kernel's thread to resume:
// a kernel met mid-cell whose thread a previous agent installed.
type quietResumer struct {
	key  []byte          // the kernel's connection key (HMAC key of its channels)
	conn chan *quietConn // capacity 1
}

// expectResume registers a session that takes a resumed connection proving
// key; forgetResume drops it and a connection it got that nobody took.
func (h *quietHub) expectResume(key []byte) *quietResumer {
	r := &quietResumer{key: key, conn: make(chan *quietConn, 1)}
	h.mu.Lock()
	h.resumers[r] = struct{}{}
	h.mu.Unlock()
	return r
}

func (h *quietHub) forgetResume(r *quietResumer) {
	h.mu.Lock()
	delete(h.resumers, r)
	h.mu.Unlock()
	select {
	case q := <-r.conn:
		_ = q.Close()
	default:
	}
}

// resumeMAC is what a kernel's thread answers a challenge with.
func resumeMAC(key, nonce []byte, pid int) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("nbsecrets-quiet-resume\x00"))
	m.Write(nonce)
	m.Write([]byte(strconv.Itoa(pid)))
	return m.Sum(nil)
}

// resume challenges a resuming thread and hands c to the waiting session
// whose kernel's key it proves; it reports whether there was one.
func (h *quietHub) resume(c *net.UnixConn, pid int) (bool, error) {
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return false, err
	}
	if err := writeFrame(c, map[string]string{"nonce": hex.EncodeToString(nonce)}); err != nil {
		return false, err
	}
	body, err := readFrame(c, quietMaxReplyFrame)
	if err != nil {
		return false, err
	}
	var ans struct {
		MAC string `json:"mac"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return false, errors.New("malformed answer")
	}
	mac, err := hex.DecodeString(ans.MAC)
	if err != nil || len(mac) != sha256.Size {
		return false, errors.New("malformed answer")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for r := range h.resumers {
		if hmac.Equal(resumeMAC(r.key, nonce, pid), mac) {
			delete(h.resumers, r)
			r.conn <- newQuietConn(c, pid) // capacity 1, one claim per resumer
			return true, nil
		}
	}
	return false, nil
}

// writeFrame writes v as one length-prefixed JSON frame.
func writeFrame(c net.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	frame := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(frame, uint32(len(b)))
	copy(frame[4:], b)
	_, err = c.Write(frame)
	return err
}

// handshake reads a connection's hello and hands it to the install whose
// token it presents; anything else is refused, logged and closed.
func (h *quietHub) handshake(c *net.UnixConn) {
	defer func() {
		h.mu.Lock()
		delete(h.pending, c)
		h.mu.Unlock()
	}()
	refuse := func(reason string, args ...any) {
		h.log.Warn("quiet channel connection refused", append([]any{"reason", reason}, args...)...)
		_ = c.Close()
	}
	peerPID, err := peerPID(c)
	if err != nil {
		refuse("no peer credentials", "error", err)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(quietHelloTimeout))
	body, err := readFrame(c, quietMaxReplyFrame)
	if err != nil {
		refuse("no hello", "peer_pid", peerPID, "error", err)
		return
	}
	var hello quietHello
	err = json.Unmarshal(body, &hello)
	switch {
	case err != nil || hello.V != 1:
		refuse("malformed hello", "peer_pid", peerPID)
		return
	case hello.PID != peerPID:
		refuse("claimed pid is not the connecting process's", "peer_pid", peerPID, "claimed_pid", hello.PID)
		return
	}
	if hello.Resume {
		_ = c.SetWriteDeadline(time.Now().Add(quietHelloTimeout))
		ok, err := h.resume(c, hello.PID)
		switch {
		case err != nil:
			refuse("resume: "+err.Error(), "peer_pid", peerPID)
		case !ok:
			// A thread whose previous agent is gone tries until this one
			// dials its kernel: not worth a warning.
			h.log.Debug("quiet channel resume refused: no kernel waiting for it", "peer_pid", peerPID)
			_ = c.Close()
		default:
			_ = c.SetDeadline(time.Time{})
		}
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if !h.claim(hello.Token, c, hello.PID) {
		refuse("unknown or already used token", "peer_pid", peerPID)
	}
}

func peerPID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	err = raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err = errors.Join(err, serr); err != nil {
		return 0, fmt.Errorf("reading peer credentials: %w", err)
	}
	return int(cred.Pid), nil
}

// readFrame reads one length-prefixed frame, refusing one over max before
// allocating it.
func readFrame(r io.Reader, max uint32) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if n > max {
		return nil, fmt.Errorf("frame of %d bytes over the limit of %d", n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// quietConn is one kernel's quiet connection, owned by its session.
type quietConn struct {
	c    *net.UnixConn
	pid  int
	acks chan quietAck
	done chan struct{} // closed when the connection is lost or closed

	mu  sync.Mutex // one change at a time
	seq uint64
}

type quietAck struct {
	Seq   uint64 `json:"seq"`
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

func newQuietConn(c *net.UnixConn, pid int) *quietConn {
	q := &quietConn{c: c, pid: pid, acks: make(chan quietAck, 1), done: make(chan struct{})}
	go q.read() // ends when the connection closes (EOF, or Close)
	return q
}

func (q *quietConn) read() {
	defer close(q.done)
	for {
		b, err := readFrame(q.c, quietMaxReplyFrame)
		if err != nil {
			return
		}
		var a quietAck
		if json.Unmarshal(b, &a) != nil {
			return // not our thread speaking: drop the connection
		}
		select {
		case q.acks <- a:
		default: // nobody waits (an apply gave up): an old ack
		}
	}
}

// Done is closed when the kernel's end closed (the kernel died, or its
// thread was handed to another agent).
func (q *quietConn) Done() <-chan struct{} { return q.done }

func (q *quietConn) Close() error {
	err := q.c.Close()
	<-q.done
	return err
}

// isExceptionName reports whether s can be the exception class name a
// kernel's failed change reports: `^[A-Za-z_][A-Za-z0-9_.]{0,63}$`. A
// function rather than that regexp: compiling its bounded repetition at
// package init cost every start of the binary, `nbsecrets inject`'s
// included, about 2% of its CPU.
func isExceptionName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || i > 0 && (c == '.' || '0' <= c && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}

// apply sends one change and waits for the kernel's acknowledgement.
func (q *quietConn) apply(ctx context.Context, p Plan, managed string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	seq := q.seq
	unset := p.Unset
	if unset == nil {
		unset = []string{}
	}
	body, err := json.Marshal(map[string]any{"seq": seq, "set": p.Set, "unset": unset, "full": p.Full, "managed": managed})
	if err != nil {
		return fmt.Errorf("encoding the change: %w", err)
	}
	if len(body) > quietMaxFrame {
		clear(body)
		return fmt.Errorf("change of %d bytes over the quiet channel's limit of %d", len(body), quietMaxFrame)
	}
	frame := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	copy(frame[4:], body)
	clear(body)
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	_ = q.c.SetWriteDeadline(dl)
	_, err = q.c.Write(frame)
	clear(frame)
	if err != nil {
		return fmt.Errorf("sending the change: %w", err)
	}
	for {
		select {
		case a := <-q.acks:
			if a.Seq != seq {
				continue // the late ack of a change that timed out
			}
			if !a.OK {
				name := a.Error
				if !isExceptionName(name) {
					name = "(unnamed)"
				}
				return fmt.Errorf("re-seed failed in the kernel: %s", name)
			}
			return nil
		case <-q.done:
			return errors.New("quiet channel closed by the kernel")
		case <-ctx.Done():
			return fmt.Errorf("waiting for the kernel's acknowledgement: %w", ctx.Err())
		}
	}
}

// quietInstallCode is the install cell: the thread's source and one call,
// run by exec in a namespace of its own. It holds the socket path and the
// token, never a value.
func quietInstallCode(path, token string) (string, error) {
	lit, err := json.Marshal(path) // a JSON string is a Python string literal
	if err != nil {
		return "", fmt.Errorf("encoding the install: %w", err)
	}
	src, err := json.Marshal(quietKernelSource + "\n_install(" + string(lit) + ", '" + token + "', '" + token + "')\n")
	if err != nil {
		return "", fmt.Errorf("encoding the install: %w", err)
	}
	// The globals dict keeps the
	// thread's functions alive and out of the user's namespace.
	return "__import__('builtins').exec(" + string(src) + ", {'__name__': '_nbsecrets_quiet_boot', '__builtins__': __import__('builtins')})", nil
}

// quietPIDExpression asks, in the install's reply, for the kernel's pid.
const quietPIDExpression = "__import__('os').getpid()"

// parsePIDExpression reads the pid from an install's user_expressions.
func parsePIDExpression(raw json.RawMessage) (int, error) {
	var r struct {
		Status string            `json:"status"`
		Data   map[string]string `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || r.Status != "ok" {
		return 0, errors.New("the kernel did not report its pid")
	}
	pid, err := strconv.Atoi(r.Data["text/plain"])
	if err != nil || pid <= 0 {
		return 0, errors.New("the kernel reported no valid pid")
	}
	return pid, nil
}
