package jupyter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// DefaultDialTimeout bounds Dial when its context has no deadline.
const DefaultDialTimeout = 10 * time.Second

// IOPubBuffer is the capacity of the channel returned by [Client.IOPub].
const IOPubBuffer = 256

// dialRetry is how often Dial tries again to connect to a port that is not
// listening yet (a kernel that is still starting). zmq4 sleeps this long
// between tries without looking at the context, so it also bounds how late
// Dial may return after its context ends.
const dialRetry = 25 * time.Millisecond

// Client is a connection to one kernel's shell, control and iopub sockets.
// Its methods are safe for concurrent use.
type Client struct {
	info    ConnectionInfo
	codec   *Codec
	session string

	shell, control, iopub zmq4.Socket

	iopubCh chan *Message
	dropped atomic.Uint64
	bad     atomic.Uint64
	stray   atomic.Uint64

	mu       sync.Mutex
	closed   bool
	err      error         // why the client stopped working; nil while it works
	done     chan struct{} // closed when err is set
	replies  map[string]chan *Message
	watchers map[string]*watcher
	kinfo    *KernelInfo

	wg sync.WaitGroup // readers and in-flight sends
}

// Stats counts messages the client did not deliver.
type Stats struct {
	IOPubDropped uint64 // iopub messages dropped because the IOPub channel was full
	BadMessages  uint64 // messages refused by Decode (bad signature, malformed)
	StrayReplies uint64 // replies no request was waiting for (e.g. after its deadline)
}

// Dial connects to a kernel: DEALER sockets to shell and control, a SUB
// socket subscribed to everything to iopub. It retries until the ports
// accept connections or ctx ends (after DefaultDialTimeout when ctx has no
// deadline). Dial does not wait for the kernel to answer; see
// [Client.Ready].
func Dial(ctx context.Context, info *ConnectionInfo) (*Client, error) {
	if err := info.Validate(); err != nil {
		return nil, fmt.Errorf("jupyter: dial: %w", err)
	}
	codec, err := NewCodec([]byte(info.Key), info.SignatureScheme)
	if err != nil {
		return nil, fmt.Errorf("jupyter: dial: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}

	// The sockets live on their own context; ctx only bounds the dialling.
	sctx, scancel := context.WithCancel(context.Background())
	if pol, ok := policyFrom(ctx); ok { // see DialPolicy
		if err := pol.CheckEndpoints(info); err != nil {
			scancel()
			return nil, fmt.Errorf("jupyter: dial: %w", err)
		}
		sctx = context.WithValue(sctx, guardKey{}, &dialGuard{policy: pol, abort: scancel})
	}
	stop := context.AfterFunc(ctx, scancel)
	opts := []zmq4.Option{
		zmq4.WithDialerRetry(dialRetry),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithLogger(log.New(io.Discard, "", 0)),
	}
	c := &Client{
		info:     *info,
		codec:    codec,
		session:  NewID(),
		shell:    zmq4.NewDealer(sctx, opts...),
		control:  zmq4.NewDealer(sctx, opts...),
		iopub:    zmq4.NewSub(sctx, opts...),
		iopubCh:  make(chan *Message, IOPubBuffer),
		done:     make(chan struct{}),
		replies:  make(map[string]chan *Message),
		watchers: make(map[string]*watcher),
	}
	fail := func(ch Channel, err error) (*Client, error) {
		stop()
		scancel()
		c.closeSockets()
		if ctx.Err() != nil && !errors.Is(err, ErrEndpointRefused) {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("jupyter: dialing %s at %s: %w", ch, info.Endpoint(ch), err)
	}
	for _, s := range []struct {
		ch   Channel
		sock zmq4.Socket
	}{{Shell, c.shell}, {Control, c.control}, {IOPub, c.iopub}} {
		if err := s.sock.Dial(dialEndpoint(info.Endpoint(s.ch))); err != nil {
			return fail(s.ch, err)
		}
	}
	if err := c.iopub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		return fail(IOPub, fmt.Errorf("subscribing: %w", err))
	}
	if !stop() {
		// ctx ended while the last socket connected: the sockets are gone.
		return fail(IOPub, ctx.Err())
	}
	c.wg.Add(3)
	go c.readReplies(Shell, c.shell)
	go c.readReplies(Control, c.control)
	go c.readIOPub()
	return c, nil
}

// Session returns the session id the client writes in its headers.
func (c *Client) Session() string { return c.session }

// Info returns the connection information the client was dialled with.
func (c *Client) Info() ConnectionInfo { return c.info }

// Done is closed when the client stops working: closed, or its connection
// to the kernel lost. Err then says which.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the client works, then an error wrapping ErrClosed
// or ErrDisconnected.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Stats returns counts of messages that were not delivered.
func (c *Client) Stats() Stats {
	return Stats{IOPubDropped: c.dropped.Load(), BadMessages: c.bad.Load(), StrayReplies: c.stray.Load()}
}

// IOPub returns every iopub message the client receives, in order. The
// channel is buffered (IOPubBuffer); when it is full, messages are dropped
// and counted (Stats.IOPubDropped) rather than holding up the reader. It is
// closed when the client is closed.
func (c *Client) IOPub() <-chan *Message { return c.iopubCh }

// Close closes the sockets and returns when every goroutine the client
// started has stopped. Pending requests fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	if c.err == nil {
		c.err = ErrClosed
		close(c.done)
	}
	c.mu.Unlock()
	var err error
	if !already {
		err = c.closeSockets()
	}
	c.wg.Wait()
	return err
}

func (c *Client) closeSockets() error {
	var errs []error
	for _, s := range []zmq4.Socket{c.shell, c.control, c.iopub} {
		// A connection already closed (by the peer, or by the context
		// transport) is not an error of Close.
		if err := s.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("jupyter: closing sockets: %w", err)
	}
	return nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// disconnect marks the client as lost; pending and later requests fail.
func (c *Client) disconnect(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
}

// recv reads one message, reporting whether the reader should go on. A
// receive error means the connection is gone (zmq4 does not reconnect):
// the client is marked lost, and the reader keeps waiting for Close, which
// is the only thing that ends Recv then.
func (c *Client) recv(ch Channel, s zmq4.Socket) (*Message, bool) {
	for {
		zm, err := s.Recv()
		if err != nil {
			if c.isClosed() {
				return nil, false
			}
			c.disconnect(fmt.Errorf("%w: %s: %w", ErrDisconnected, ch, err))
			continue
		}
		m, err := c.codec.Decode(zm.Frames)
		if err != nil {
			c.bad.Add(1)
			continue
		}
		return m, true
	}
}

func (c *Client) readReplies(ch Channel, s zmq4.Socket) {
	defer c.wg.Done()
	for {
		m, ok := c.recv(ch, s)
		if !ok {
			return
		}
		id := m.ParentID()
		c.mu.Lock()
		rc, found := c.replies[id]
		delete(c.replies, id)
		c.mu.Unlock()
		if !found {
			c.stray.Add(1)
			continue
		}
		rc <- m // buffered 1, one reply per request
	}
}

func (c *Client) readIOPub() {
	defer c.wg.Done()
	defer close(c.iopubCh)
	for {
		m, ok := c.recv(IOPub, c.iopub)
		if !ok {
			return
		}
		c.mu.Lock()
		w := c.watchers[m.ParentID()]
		c.mu.Unlock()
		if w != nil {
			w.add(m)
		}
		select {
		case c.iopubCh <- m:
		default:
			c.dropped.Add(1)
		}
	}
}

// watcher collects the iopub messages whose parent is one request.
type watcher struct {
	mu     sync.Mutex
	msgs   []*Message
	notify chan struct{} // capacity 1: "there is something to take"
}

func newWatcher() *watcher { return &watcher{notify: make(chan struct{}, 1)} }

func (w *watcher) add(m *Message) {
	w.mu.Lock()
	w.msgs = append(w.msgs, m)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *watcher) take() []*Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	msgs := w.msgs
	w.msgs = nil
	return msgs
}

func (c *Client) unwatch(id string) {
	c.mu.Lock()
	delete(c.watchers, id)
	c.mu.Unlock()
}

func (c *Client) socket(ch Channel) (zmq4.Socket, error) {
	switch ch {
	case Shell:
		return c.shell, nil
	case Control:
		return c.control, nil
	}
	return nil, fmt.Errorf("jupyter: requests go on shell or control, not %s", ch)
}

// Request sends a request on shell or control and waits for the reply whose
// parent msg_id is the request's. header, if not nil, may change the
// header before it is signed (e.g. set SubshellID). Request returns when the
// reply arrives, ctx ends, or the client is closed or loses its connection.
// A reply that arrives after Request gave up is dropped.
func (c *Client) Request(ctx context.Context, ch Channel, msgType string, content any, header func(*Header)) (*Message, error) {
	m, err := NewMessage(c.session, msgType, content, nil)
	if err != nil {
		return nil, err
	}
	if header != nil {
		header(&m.Header)
	}
	return c.roundTrip(ctx, ch, m, nil)
}

// roundTrip sends m and waits for its reply. If w is not nil it is
// registered for m's iopub messages before m is sent; the caller removes it.
func (c *Client) roundTrip(ctx context.Context, ch Channel, m *Message, w *watcher) (*Message, error) {
	sock, err := c.socket(ch)
	if err != nil {
		return nil, err
	}
	frames, err := c.codec.Encode(m)
	if err != nil {
		return nil, err
	}
	id, msgType := m.Header.MsgID, m.Header.MsgType
	replyc := make(chan *Message, 1)

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.replies[id] = replyc
	if w != nil {
		c.watchers[id] = w
	}
	c.wg.Add(1) // the send below; Close waits for it
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.replies, id)
		c.mu.Unlock()
	}()

	// A send blocks while the kernel does not read (its TCP buffers full),
	// and zmq4 does not look at a context there, so it runs on its own;
	// closing the sockets ends it.
	sent := make(chan error, 1)
	go func() {
		defer c.wg.Done()
		sent <- sock.Send(zmq4.NewMsgFrom(frames...))
	}()
	for {
		select {
		case err := <-sent:
			if err != nil {
				if cerr := c.Err(); cerr != nil {
					return nil, cerr
				}
				return nil, fmt.Errorf("jupyter: sending %s on %s: %w", msgType, ch, err)
			}
			sent = nil
		case r := <-replyc:
			return r, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("jupyter: waiting for %s reply on %s: %w", msgType, ch, ctx.Err())
		case <-c.done:
			return nil, c.Err()
		}
	}
}
