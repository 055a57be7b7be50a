package jupyter

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
)

// Channel names one of a kernel's five sockets.
type Channel int

// The kernel's channels.
const (
	Shell Channel = iota
	Control
	IOPub
	Stdin
	Heartbeat
)

// String returns the channel's name as in the Jupyter documentation.
func (ch Channel) String() string {
	switch ch {
	case Shell:
		return "shell"
	case Control:
		return "control"
	case IOPub:
		return "iopub"
	case Stdin:
		return "stdin"
	case Heartbeat:
		return "hb"
	}
	return "channel(" + strconv.Itoa(int(ch)) + ")"
}

// ConnectionInfo is the content of a kernel connection file
// (kernel-<id>.json).
type ConnectionInfo struct {
	Transport       string `json:"transport"` // "tcp" or "ipc"; empty means "tcp"
	IP              string `json:"ip"`        // address for tcp, path prefix for ipc
	ShellPort       int    `json:"shell_port"`
	IOPubPort       int    `json:"iopub_port"`
	StdinPort       int    `json:"stdin_port"`
	ControlPort     int    `json:"control_port"`
	HBPort          int    `json:"hb_port"`
	Key             string `json:"key"`              // HMAC key as raw bytes; empty means unsigned
	SignatureScheme string `json:"signature_scheme"` // e.g. "hmac-sha256"; empty means "hmac-sha256"
	KernelName      string `json:"kernel_name"`
}

// maxConnectionFile bounds a connection file (Jupyter's are about 300 bytes).
const maxConnectionFile = 64 << 10

// ReadConnectionFile reads and checks a kernel connection file. It reads
// only a regular file of at most 64 KiB: a FIFO or device in its place is
// refused without blocking.
func ReadConnectionFile(path string) (*ConnectionInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("jupyter: reading connection file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("jupyter: reading connection file: %w", err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("jupyter: connection file %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxConnectionFile+1))
	if err != nil {
		return nil, fmt.Errorf("jupyter: reading connection file: %w", err)
	}
	if len(b) > maxConnectionFile {
		return nil, fmt.Errorf("jupyter: connection file %s is larger than %d bytes", path, maxConnectionFile)
	}
	var info ConnectionInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("jupyter: parsing connection file %s: %w", path, err)
	}
	if err := info.Validate(); err != nil {
		return nil, fmt.Errorf("jupyter: connection file %s: %w", path, err)
	}
	return &info, nil
}

// Validate reports whether the transport, address, ports and signature
// scheme are usable.
func (c *ConnectionInfo) Validate() error {
	switch c.Transport {
	case "", "tcp", "ipc":
	default:
		return fmt.Errorf("unsupported transport %q", c.Transport)
	}
	if c.IP == "" {
		return fmt.Errorf("no ip")
	}
	for _, p := range []struct {
		name string
		port int
	}{{"shell_port", c.ShellPort}, {"iopub_port", c.IOPubPort}, {"stdin_port", c.StdinPort}, {"control_port", c.ControlPort}, {"hb_port", c.HBPort}} {
		if p.port <= 0 || p.port > 65535 {
			return fmt.Errorf("bad %s %d", p.name, p.port)
		}
	}
	if _, err := NewCodec([]byte(c.Key), c.SignatureScheme); err != nil {
		return err
	}
	return nil
}

// WriteFile writes the connection file with mode 0600, as Jupyter does.
func (c *ConnectionInfo) WriteFile(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("jupyter: encoding connection file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("jupyter: writing connection file: %w", err)
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("jupyter: writing connection file: %w", werr)
	}
	if cerr != nil {
		return fmt.Errorf("jupyter: writing connection file: %w", cerr)
	}
	return nil
}

// Port returns the port of a channel, or 0 for an unknown channel.
func (c *ConnectionInfo) Port(ch Channel) int {
	switch ch {
	case Shell:
		return c.ShellPort
	case Control:
		return c.ControlPort
	case IOPub:
		return c.IOPubPort
	case Stdin:
		return c.StdinPort
	case Heartbeat:
		return c.HBPort
	}
	return 0
}

// Endpoint returns the ZeroMQ endpoint of a channel: tcp://ip:port, or
// ipc://ip-port for the ipc transport (Jupyter's naming).
func (c *ConnectionInfo) Endpoint(ch Channel) string {
	port := c.Port(ch)
	if c.Transport == "ipc" {
		return "ipc://" + c.IP + "-" + strconv.Itoa(port)
	}
	return "tcp://" + net.JoinHostPort(c.IP, strconv.Itoa(port))
}
