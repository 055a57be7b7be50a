package jupyter

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DialPolicy says which kernels Dial may connect to. A connection file is
// only a claim: anyone who can write one where the agent looks, or who
// listens on a port a stale one names, would otherwise receive what the
// agent sends. Attach a policy to Dial's context with [WithDialPolicy];
// without one Dial checks nothing (tests, benchmarks, tools).
type DialPolicy struct {
	// AllowRemote accepts TCP endpoints on addresses other than loopback.
	// False: only 127.0.0.0/8, ::1 and "localhost".
	AllowRemote bool
	// IPCDir is the directory an ipc endpoint must be in: the directory of
	// the connection file, which the caller checked. Empty: ipc refused.
	IPCDir string
	// PeerUID is the uid every listener dialled must run as. For TCP it is
	// read from /proc/net/tcp and /proc/net/tcp6 (the listening socket's
	// owner; a loopback port with no listener there is refused); for ipc
	// from the unix socket's peer credentials. A remote listener (allowed
	// by AllowRemote) cannot be checked and is accepted.
	PeerUID uint32
}

type policyKey struct{}

// WithDialPolicy returns a context that makes Dial enforce p.
func WithDialPolicy(ctx context.Context, p DialPolicy) context.Context {
	return context.WithValue(ctx, policyKey{}, p)
}

func policyFrom(ctx context.Context) (DialPolicy, bool) {
	p, ok := ctx.Value(policyKey{}).(DialPolicy)
	return p, ok
}

// ErrEndpointRefused is a connection file whose endpoints the dial policy
// does not allow, or a listener that does not run as the expected uid.
var ErrEndpointRefused = errors.New("jupyter: endpoint refused")

// CheckEndpoints reports whether info's endpoints are allowed by p.
func (p DialPolicy) CheckEndpoints(info *ConnectionInfo) error {
	switch info.Transport {
	case "", "tcp":
		if p.AllowRemote || info.IP == "localhost" {
			return nil
		}
		if ip := net.ParseIP(info.IP); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("%w: tcp address %q is not loopback (allowing others is a setting)", ErrEndpointRefused, info.IP)
		}
		return nil
	case "ipc":
		if p.IPCDir == "" {
			return fmt.Errorf("%w: ipc endpoints are not allowed here", ErrEndpointRefused)
		}
		if !filepath.IsAbs(info.IP) || filepath.Dir(filepath.Clean(info.IP)) != filepath.Clean(p.IPCDir) {
			return fmt.Errorf("%w: ipc path %q is not in %s", ErrEndpointRefused, info.IP, p.IPCDir)
		}
		return nil
	}
	return fmt.Errorf("%w: transport %q", ErrEndpointRefused, info.Transport)
}

// dialGuard travels in the sockets' context to the transport, which checks
// each connection's listener before zmq4 writes a byte to it.
type dialGuard struct {
	policy DialPolicy
	abort  context.CancelFunc // stops zmq4 retrying a refused endpoint
}

type guardKey struct{}

func guardFrom(ctx context.Context) *dialGuard {
	g, _ := ctx.Value(guardKey{}).(*dialGuard)
	return g
}

// checkPeer checks the listener at the other end of a dialled connection.
func (g *dialGuard) checkPeer(conn net.Conn) error {
	switch c := conn.(type) {
	case *net.TCPConn:
		ra, ok := c.RemoteAddr().(*net.TCPAddr)
		if !ok {
			return fmt.Errorf("%w: no remote address", ErrEndpointRefused)
		}
		uids, err := tcpListenerUIDs(ra.IP, ra.Port)
		if err != nil {
			return fmt.Errorf("%w: finding the listener of %s: %w", ErrEndpointRefused, ra, err)
		}
		if len(uids) == 0 {
			if !ra.IP.IsLoopback() && g.policy.AllowRemote {
				return nil // another host: nothing to check here
			}
			return fmt.Errorf("%w: no listener on %s in /proc/net/tcp", ErrEndpointRefused, ra)
		}
		for _, u := range uids {
			if u != g.policy.PeerUID {
				return fmt.Errorf("%w: the listener on %s runs as uid %d, not %d", ErrEndpointRefused, ra, u, g.policy.PeerUID)
			}
		}
		return nil
	case *net.UnixConn:
		raw, err := c.SyscallConn()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrEndpointRefused, err)
		}
		var cred *unix.Ucred
		var serr error
		if err := raw.Control(func(fd uintptr) {
			cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		}); err != nil || serr != nil {
			return fmt.Errorf("%w: reading peer credentials: %w", ErrEndpointRefused, errors.Join(err, serr))
		}
		if cred.Uid != g.policy.PeerUID {
			return fmt.Errorf("%w: the listener on %s runs as uid %d, not %d", ErrEndpointRefused, c.RemoteAddr(), cred.Uid, g.policy.PeerUID)
		}
		return nil
	}
	return fmt.Errorf("%w: cannot check a %T", ErrEndpointRefused, conn)
}

// procNetTCP are the kernel's tables of TCP sockets in this network
// namespace.
var procNetTCP = []string{"/proc/net/tcp", "/proc/net/tcp6"}

// tcpListenerUIDs returns the owners of the sockets listening on port that
// accept connections to ip: bound to ip itself or to the wildcard address.
func tcpListenerUIDs(ip net.IP, port int) ([]uint32, error) {
	var uids []uint32
	var errs []error
	for _, f := range procNetTCP {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		u, err := parseListeners(b, ip, port)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		}
		uids = append(uids, u...)
	}
	return uids, errors.Join(errs...)
}

// parseListeners reads a /proc/net/tcp{,6} table: "sl local rem st ... uid
// timeout inode ...", addresses in hex in host byte order per 32-bit word,
// state 0A for LISTEN.
func parseListeners(table []byte, ip net.IP, port int) ([]uint32, error) {
	var uids []uint32
	for i, line := range bytes.Split(table, []byte("\n")) {
		f := strings.Fields(string(line))
		if i == 0 || len(f) < 10 {
			continue // the header, or the empty last line
		}
		if f[3] != "0A" {
			continue
		}
		addr, p, ok := strings.Cut(f[1], ":")
		if !ok {
			return nil, fmt.Errorf("line %d: bad local address %q", i, f[1])
		}
		lport, err := strconv.ParseUint(p, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad port %q", i, p)
		}
		if int(lport) != port {
			continue
		}
		lip, err := procIP(addr)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i, err)
		}
		if !lip.Equal(ip) && !lip.IsUnspecified() {
			continue
		}
		uid, err := strconv.ParseUint(f[7], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad uid %q", i, f[7])
		}
		uids = append(uids, uint32(uid))
	}
	return uids, nil
}

// procIP decodes an address of /proc/net/tcp: 8 or 32 hex digits, each
// 32-bit word in host byte order.
func procIP(s string) (net.IP, error) {
	b, err := hex.DecodeString(s)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return nil, fmt.Errorf("bad address %q", s)
	}
	ip := make(net.IP, len(b))
	for i := 0; i < len(b); i += 4 {
		binary.BigEndian.PutUint32(ip[i:], binary.NativeEndian.Uint32(b[i:]))
	}
	return ip, nil
}
