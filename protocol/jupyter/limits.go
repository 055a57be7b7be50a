package jupyter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
)

// MaxMessageSize bounds one ZeroMQ message a kernel may send the client: all
// its frames together (identities, signature, the four dicts, buffers).
// zmq4 allocates a frame's announced length before reading it, and before
// any signature can be checked, so without a bound one header announcing
// 1 TiB from whatever listens on a kernel's port kills the process ("fatal
// error: runtime: out of memory"). Every connection Dial makes is read
// through a ZMTP 3 frame scanner that fails the connection when a frame
// would take a message past this bound, before zmq4 sees the frame's
// header. 64 MiB is far above what a kernel sends on the channels the
// client reads (replies, and iopub, where a large plot or a long output is
// a few MiB); a kernel that publishes a bigger message loses the agent's
// connection, which reconnects and serves it again.
const MaxMessageSize = 64 << 20

// ErrMessageTooLarge is a peer announcing a frame that would take its
// message past MaxMessageSize; the connection is closed.
var ErrMessageTooLarge = errors.New("jupyter: peer announced a ZeroMQ message larger than the limit")

// ZMTP 3 framing (rfc.zeromq.org/spec/23): a 64-byte greeting, then frames
// of a flags byte, a length (1 byte, or 8 bytes big-endian when the LONG
// flag is set) and the body. MORE says another frame of the same message
// follows; commands are single frames.
const (
	zmtpGreeting = 64
	zmtpMore     = 0x01
	zmtpLong     = 0x02
)

// limitConn is a net.Conn whose reads pass through a ZMTP frame scanner
// (see MaxMessageSize). Writes are untouched.
type limitConn struct {
	net.Conn
	max uint64

	mu    sync.Mutex // one reader at a time in practice; the lock keeps the scanner sound regardless
	err   error      // sticky: the connection failed the limit
	greet int        // greeting bytes still to come
	hdr   [9]byte    // the frame header being read
	hdrN  int        // bytes of hdr read
	body  uint64     // body bytes of the current frame still to come
	msg   uint64     // bytes of the current message so far
}

// newLimitConn wraps a freshly dialled connection, before the greeting.
func newLimitConn(c net.Conn, max uint64) *limitConn {
	return &limitConn{Conn: c, max: max, greet: zmtpGreeting}
}

// Read reads from the connection and scans what it read; when the bytes
// read announce a frame over the limit it closes the connection and returns
// the error instead of the bytes, so the reader never sees the header.
func (c *limitConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if serr := c.scan(p[:n]); serr != nil {
		c.err = serr
		_ = c.Conn.Close()
		clear(p[:n])
		return 0, serr
	}
	return n, err
}

// scan follows the framing over b, the next bytes of the stream.
func (c *limitConn) scan(b []byte) error {
	for len(b) > 0 {
		switch {
		case c.greet > 0:
			k := min(c.greet, len(b))
			c.greet -= k
			b = b[k:]
		case c.body > 0:
			k := min(c.body, uint64(len(b)))
			c.body -= k
			b = b[k:]
		default: // a frame header
			c.hdr[c.hdrN] = b[0]
			c.hdrN++
			b = b[1:]
			flags := c.hdr[0]
			need := 2
			if flags&zmtpLong != 0 {
				need = 9
			}
			if c.hdrN < need {
				continue
			}
			c.hdrN = 0
			size := uint64(c.hdr[1])
			if need == 9 {
				size = binary.BigEndian.Uint64(c.hdr[1:9])
			}
			if size > c.max-c.msg {
				return fmt.Errorf("%w: a frame of %d bytes after %d bytes of its message (limit %d)",
					ErrMessageTooLarge, size, c.msg, c.max)
			}
			c.body = size
			if flags&zmtpMore != 0 {
				c.msg += size
			} else {
				c.msg = 0 // the last frame: the next header starts a new message
			}
		}
	}
	return nil
}
