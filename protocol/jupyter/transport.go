package jupyter

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// zmq4 performs the ZMTP handshake on a dialled connection with no
// deadline, so a peer that accepts TCP but never greets (a stopped kernel)
// would hang Dial forever. These transports tie each connection to the
// socket's context: cancelling it (on Close, or when Dial's context ends)
// closes the connection and unblocks the handshake.
const (
	tcpScheme = "nbsecrets-tcp"
	ipcScheme = "nbsecrets-ipc"
)

func init() {
	// Registration fails only on a duplicate name, which cannot happen for
	// names private to this package.
	_ = zmq4.RegisterTransport(tcpScheme, ctxTransport{network: "tcp", base: transport.New("tcp")})
	_ = zmq4.RegisterTransport(ipcScheme, ctxTransport{network: "unix", base: transport.New("unix")})
}

type ctxTransport struct {
	network string
	base    transport.Transport
}

// Dial connects, checks the listener when the context carries a dial
// policy (before zmq4 writes anything to it), and bounds what the peer may
// make zmq4 allocate (see MaxMessageSize).
func (t ctxTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	conn, err := d.DialContext(ctx, t.network, addr)
	if err != nil {
		return nil, err
	}
	if g := guardFrom(ctx); g != nil {
		if err := g.checkPeer(conn); err != nil {
			_ = conn.Close()
			g.abort() // zmq4 would retry a refused endpoint until Dial's deadline
			return nil, err
		}
	}
	context.AfterFunc(ctx, func() { conn.Close() })
	return newLimitConn(conn, MaxMessageSize), nil
}

func (t ctxTransport) Listen(context.Context, string) (net.Listener, error) {
	return nil, errors.New("jupyter: listening is not supported")
}

func (t ctxTransport) Addr(ep string) (string, error) { return t.base.Addr(ep) }

// dialEndpoint maps a public endpoint to its context-bound transport.
func dialEndpoint(ep string) string {
	switch {
	case strings.HasPrefix(ep, "tcp://"):
		return tcpScheme + ep[len("tcp"):]
	case strings.HasPrefix(ep, "ipc://"):
		return ipcScheme + ep[len("ipc"):]
	}
	return ep
}
