package jupyter

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

func TestParseListeners(t *testing.T) {
	// Two listeners on port 0x1F90 (8080): one on 127.0.0.1 by uid 1000,
	// one on 10.0.0.1 by uid 0 (another address), and an established
	// connection from that port by uid 7 (not a listener).
	v4 := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 74124 1 0 100 0 0 10 0
   1: 0100000A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 74125 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D000 01 00000000:00000000 00:00000000 00000000     7        0 74126 1 0 100 0 0 10 0
`
	got, err := parseListeners([]byte(v4), net.ParseIP("127.0.0.1"), 8080)
	if err != nil || len(got) != 1 || got[0] != 1000 {
		t.Errorf("127.0.0.1:8080: %v, %v; want [1000]", got, err)
	}
	// A wildcard IPv6 listener (::) by uid 33 accepts 127.0.0.1 too.
	v6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 1 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    44        0 2 1 0 100 0 0 10 0
`
	if got, err := parseListeners([]byte(v6), net.ParseIP("127.0.0.1"), 8080); err != nil || len(got) != 1 || got[0] != 33 {
		t.Errorf("wildcard :: : %v, %v; want [33]", got, err)
	}
	if got, err := parseListeners([]byte(v6), net.ParseIP("::1"), 80); err != nil || len(got) != 1 || got[0] != 44 {
		t.Errorf("[::1]:80: %v, %v; want [44]", got, err)
	}
	if _, err := parseListeners([]byte(v4+"   3: zz:1F90 00000000:0000 0A 0 0 0 5 0 1\n"), net.ParseIP("127.0.0.1"), 8080); err == nil {
		t.Error("a malformed address was accepted")
	}
}

// The kernel's own table: a listener this process opens is found, as this
// process's uid, on IPv4 and (where there is one) IPv6 loopback.
func TestTCPListenerUIDsFindsOwnListener(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s: %v (skipped)", addr, err)
			continue
		}
		ta := l.Addr().(*net.TCPAddr)
		uids, err := tcpListenerUIDs(ta.IP, ta.Port)
		l.Close()
		if err != nil || len(uids) != 1 || uids[0] != uint32(os.Geteuid()) {
			t.Errorf("%s: uids %v, err %v; want [%d]", ta, uids, err, os.Geteuid())
		}
	}
}

func TestCheckEndpoints(t *testing.T) {
	dir := "/run/user/1000/jupyter"
	for _, tc := range []struct {
		name string
		p    DialPolicy
		info ConnectionInfo
		ok   bool
	}{
		{"loopback", DialPolicy{}, ConnectionInfo{IP: "127.0.0.1"}, true},
		{"loopback tcp", DialPolicy{}, ConnectionInfo{Transport: "tcp", IP: "127.0.0.5"}, true},
		{"ipv6 loopback", DialPolicy{}, ConnectionInfo{IP: "::1"}, true},
		{"localhost", DialPolicy{}, ConnectionInfo{IP: "localhost"}, true},
		{"another host", DialPolicy{}, ConnectionInfo{IP: "10.1.2.3"}, false},
		{"all addresses", DialPolicy{}, ConnectionInfo{IP: "0.0.0.0"}, false},
		{"a name", DialPolicy{}, ConnectionInfo{IP: "kernels.example.com"}, false},
		{"another host, allowed", DialPolicy{AllowRemote: true}, ConnectionInfo{IP: "10.1.2.3"}, true},
		{"ipc beside the file", DialPolicy{IPCDir: dir}, ConnectionInfo{Transport: "ipc", IP: dir + "/kernel-1-ipc"}, true},
		{"ipc elsewhere", DialPolicy{IPCDir: dir}, ConnectionInfo{Transport: "ipc", IP: "/tmp/kernel-1-ipc"}, false},
		{"ipc escaping", DialPolicy{IPCDir: dir}, ConnectionInfo{Transport: "ipc", IP: dir + "/../kernel-1-ipc"}, false},
		{"ipc relative", DialPolicy{IPCDir: dir}, ConnectionInfo{Transport: "ipc", IP: "kernel-ipc"}, false},
		{"ipc without a dir", DialPolicy{}, ConnectionInfo{Transport: "ipc", IP: dir + "/kernel-1-ipc"}, false},
	} {
		err := tc.p.CheckEndpoints(&tc.info)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrEndpointRefused) {
			t.Errorf("%s: err = %v, want ErrEndpointRefused", tc.name, err)
		}
	}
}

// otherUID returns the uid of nobody, to play a process of another user;
// it needs root to start one.
func otherUID(t *testing.T) uint32 {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("starting a listener as another uid needs root (CI runs as root)")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("no /usr/bin/python3 to listen as another uid")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return 65534
	}
	id, _ := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(id)
}

// A fake kernel of another user listening on the ports of a connection
// file gets nothing: Dial checks the listener's uid after connecting and
// before zmq4 sends its greeting, and fails naming the uid. The same
// listener is sent the greeting when no policy is set: the check, not the
// listener, is what keeps the bytes back.
func TestDialRefusesAListenerOfAnotherUser(t *testing.T) {
	uid := otherUID(t)
	port, received := testutil.ListenAs(t, uid)
	info := &ConnectionInfo{IP: "127.0.0.1", ShellPort: port, ControlPort: port, IOPubPort: port, StdinPort: port, HBPort: port,
		Key: "k", SignatureScheme: "hmac-sha256"}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := Dial(WithDialPolicy(ctx, DialPolicy{PeerUID: uint32(os.Geteuid())}), info)
	if !errors.Is(err, ErrEndpointRefused) || !strings.Contains(err.Error(), "uid "+strconv.Itoa(int(uid))) {
		t.Fatalf("Dial to another user's listener: %v; want ErrEndpointRefused naming uid %d", err, uid)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("the refusal took %v: zmq4 kept retrying", time.Since(start))
	}
	if !received.Scan() || received.Text() != "0" {
		t.Fatalf("the other user's listener received %q bytes, want 0", received.Text())
	}
	t.Logf("refused: %v", err)

	// Control: without a policy the same listener is sent the greeting.
	cctx, ccancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ccancel()
	if c, err := Dial(cctx, info); err == nil {
		c.Close()
	}
	if !received.Scan() || received.Text() == "0" {
		t.Fatalf("without a policy the listener received %q bytes; the control proves nothing", received.Text())
	}
}

// A FIFO in place of a connection file is refused at once, not read (which
// would block until some process writes to it).
func TestReadConnectionFileRefusesAFIFO(t *testing.T) {
	f := t.TempDir() + "/kernel-fifo.json"
	if err := syscall.Mkfifo(f, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadConnectionFile(f); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("err = %v, want not a regular file", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("ReadConnectionFile blocked on a FIFO")
	}
}

// The same for ipc: a unix socket another user listens on, in the
// connection file's directory, gets nothing (SO_PEERCRED names its uid).
func TestDialRefusesAnIPCListenerOfAnotherUser(t *testing.T) {
	uid := otherUID(t)
	// A dir the other user can reach and write in (t.TempDir's parent is
	// 0700); the agent itself would refuse such a dir.
	dir, err := os.MkdirTemp("", "ipc-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	const prog = `
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    print(n, flush=True)
    c.close()
`
	ip := dir + "/kernel-x-ipc"
	cmd := exec.Command("/usr/bin/python3", "-c", prog, ip+"-1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Dir, cmd.Stderr = "/", os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	received := bufio.NewScanner(out)
	if !received.Scan() || received.Text() != "ready" {
		t.Fatalf("the ipc listener did not start: %v", received.Err())
	}
	info := &ConnectionInfo{Transport: "ipc", IP: ip, ShellPort: 1, ControlPort: 1, IOPubPort: 1, StdinPort: 1, HBPort: 1,
		Key: "k", SignatureScheme: "hmac-sha256"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = Dial(WithDialPolicy(ctx, DialPolicy{IPCDir: dir, PeerUID: uint32(os.Geteuid())}), info)
	if !errors.Is(err, ErrEndpointRefused) || !strings.Contains(err.Error(), "uid "+strconv.Itoa(int(uid))) {
		t.Fatalf("Dial to another user's ipc listener: %v; want ErrEndpointRefused naming uid %d", err, uid)
	}
	if !received.Scan() || received.Text() != "0" {
		t.Fatalf("the other user's ipc listener received %q bytes, want 0", received.Text())
	}
}
