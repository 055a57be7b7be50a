package jupyter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"
)

// frame encodes one ZMTP frame header and body.
func frame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		h := make([]byte, 9)
		h[0] = flags | zmtpLong
		binary.BigEndian.PutUint64(h[1:], uint64(len(body)))
		return append(h, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

// trickleConn returns its stream a few bytes per Read, so headers are split
// across reads.
type trickleConn struct {
	net.Conn
	r   io.Reader
	rnd *rand.Rand
}

func (c *trickleConn) Close() error { return nil }

func (c *trickleConn) Read(p []byte) (int, error) {
	n := 1 + c.rnd.IntN(7)
	return c.r.Read(p[:min(n, len(p))])
}

func scanAll(t *testing.T, stream []byte, max uint64) ([]byte, error) {
	t.Helper()
	c := newLimitConn(&trickleConn{r: bytes.NewReader(stream), rnd: rand.New(rand.NewPCG(1, 2))}, max)
	return io.ReadAll(c)
}

func greeting() []byte {
	g := make([]byte, zmtpGreeting)
	g[0], g[9], g[10] = 0xff, 0x7f, 3
	copy(g[12:], "NULL")
	// A greeting's filler may hold anything, even what looks like a header.
	for i := 33; i < len(g); i++ {
		g[i] = 0xff
	}
	return g
}

func TestLimitConnPassesFramesWithinTheLimit(t *testing.T) {
	var s []byte
	s = append(s, greeting()...)
	s = append(s, frame(0x04, []byte("\x05READY"))...)                   // a command
	s = append(s, frame(zmtpMore, nil)...)                               // an empty frame
	s = append(s, frame(zmtpMore, bytes.Repeat([]byte{0x02}, 300))...)   // long, body of LONG flags
	s = append(s, frame(0, bytes.Repeat([]byte{0xff}, 700))...)          // last frame: 1000 bytes in all
	s = append(s, frame(0, bytes.Repeat([]byte{zmtpLong | 1}, 1000))...) // a new message, also 1000
	got, err := scanAll(t, s, 1000)
	if err != nil {
		t.Fatalf("stream within the limit refused: %v", err)
	}
	if !bytes.Equal(got, s) {
		t.Fatal("the scanner changed the stream")
	}
}

func TestLimitConnRefusesLargeFramesAndMessages(t *testing.T) {
	huge := append(greeting(), 0x06, 0, 0, 1, 0, 0, 0, 0, 0) // a command of 1 TiB
	for name, s := range map[string][]byte{
		"1 TiB command":         huge,
		"one frame too large":   append(greeting(), frame(0, make([]byte, 1001))...),
		"message of two frames": append(append(greeting(), frame(zmtpMore, make([]byte, 600))...), frame(0, make([]byte, 401))...),
	} {
		got, err := scanAll(t, s, 1000)
		if !errors.Is(err, ErrMessageTooLarge) {
			t.Errorf("%s: err = %v, want ErrMessageTooLarge", name, err)
		}
		// The reader got the greeting and at most the frames before; never
		// the whole header that announces the size.
		if len(got) >= len(s)-1 {
			t.Errorf("%s: the reader got %d of %d bytes", name, len(got), len(s))
		}
	}
}

// rogue listens on loopback and, for each connection, completes the ZMTP
// greeting and then announces a frame of 1 TiB, as a process listening on a
// stale connection file's port can. readyFirst completes the handshake
// (READY as socketType) before it; without huge the rogue only listens.
func rogue(t *testing.T, socketType string, readyFirst, huge bool) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write(greeting()); err != nil {
					return
				}
				if _, err := io.ReadFull(c, make([]byte, zmtpGreeting)); err != nil {
					return
				}
				if readyFirst {
					body := []byte("\x05READY\x0bSocket-Type")
					body = binary.BigEndian.AppendUint32(body, uint32(len(socketType)))
					body = append(body, socketType...)
					if _, err := c.Write(frame(0x04, body)); err != nil {
						return
					}
				}
				if huge {
					_, _ = c.Write([]byte{0x02, 0, 0, 1, 0, 0, 0, 0, 0}) // 1 TiB, LONG, last frame
				}
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// One header announcing 1 TiB used to make zmq4 allocate it ("fatal error:
// runtime: out of memory"). Now Dial fails, naming the limit, and the
// process allocates nothing of the sort.
func TestDialRefusesAHugeFrameInTheHandshake(t *testing.T) {
	port := rogue(t, "ROUTER", false, true)
	info := &ConnectionInfo{IP: "127.0.0.1", ShellPort: port, ControlPort: port, IOPubPort: port, StdinPort: port, HBPort: port,
		Key: "k", SignatureScheme: "hmac-sha256"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := allocated()
	c, err := Dial(ctx, info)
	if err == nil {
		c.Close()
		t.Fatal("Dial to a peer announcing 1 TiB succeeded")
	}
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	if got := allocated() - before; got > 16<<20 {
		t.Errorf("the dial allocated %d bytes", got)
	}
	t.Logf("refused: %v", err)
}

// The same after a complete handshake: the client's connection fails, the
// client reports it lost, and the process lives on.
func TestClientDropsAPeerAnnouncingAHugeMessage(t *testing.T) {
	router, pub := rogue(t, "ROUTER", true, true), rogue(t, "PUB", true, false)
	info := &ConnectionInfo{IP: "127.0.0.1", ShellPort: router, ControlPort: router, IOPubPort: pub, StdinPort: router, HBPort: router,
		Key: "k", SignatureScheme: "hmac-sha256"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := allocated()
	c, err := Dial(ctx, info)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the client did not notice the oversized message")
	}
	if err := c.Err(); !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("Err = %v, want ErrDisconnected wrapping ErrMessageTooLarge", err)
	}
	if got := allocated() - before; got > 16<<20 {
		t.Errorf("the client allocated %d bytes", got)
	}
}

// refLimit is a plain reading of a whole ZMTP stream: the offset of the
// first frame header that takes its message past max, or -1.
func refLimit(s []byte, max uint64) int {
	if len(s) < zmtpGreeting {
		return -1
	}
	var msg uint64
	for i := zmtpGreeting; i < len(s); {
		flags := s[i]
		var size uint64
		n := 2
		if flags&zmtpLong != 0 {
			n = 9
			if i+n > len(s) {
				return -1
			}
			size = binary.BigEndian.Uint64(s[i+1 : i+9])
		} else {
			if i+n > len(s) {
				return -1
			}
			size = uint64(s[i+1])
		}
		if size > max-msg {
			return i
		}
		if flags&zmtpMore != 0 {
			msg += size
		} else {
			msg = 0
		}
		if size > uint64(len(s)-i-n) {
			return -1 // the stream ends inside this frame
		}
		i += n + int(size)
	}
	return -1
}

// FuzzLimitConn: read in random chunks, the scanner passes a stream through
// unchanged exactly when the plain reading finds no frame over the limit,
// and otherwise stops before the offending header is complete.
func FuzzLimitConn(f *testing.F) {
	f.Add(append(greeting(), frame(zmtpMore, []byte("abc"))...), uint16(10), uint64(1))
	f.Add(append(greeting(), 0x06, 0, 0, 1, 0, 0, 0, 0, 0), uint16(1000), uint64(2))
	f.Add(append(append(greeting(), frame(zmtpMore, make([]byte, 6))...), frame(0, make([]byte, 5))...), uint16(10), uint64(3))
	f.Fuzz(func(t *testing.T, s []byte, max uint16, seed uint64) {
		c := newLimitConn(&trickleConn{r: bytes.NewReader(s), rnd: rand.New(rand.NewPCG(seed, 7))}, uint64(max))
		got, err := io.ReadAll(c)
		bad := refLimit(s, uint64(max))
		switch {
		case bad < 0 && (err != nil || !bytes.Equal(got, s)):
			t.Fatalf("a stream within the limit: err %v, %d of %d bytes", err, len(got), len(s))
		case bad >= 0 && !errors.Is(err, ErrMessageTooLarge):
			t.Fatalf("frame over the limit at %d not refused: err %v", bad, err)
		case bad >= 0 && (len(got) > bad+8 || !bytes.Equal(got, s[:len(got)])):
			t.Fatalf("%d bytes passed, the bad header starts at %d", len(got), bad)
		}
	})
}
