// Package testutil holds the small helpers the test suites share: polling
// with a deadline instead of sleeping, and a buffer safe for a process's or
// a logger's concurrent writes.
package testutil

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// WaitFor polls cond every few milliseconds until it returns nil, and fails
// the test with cond's last error once total has passed.
func WaitFor(t testing.TB, total time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(5 * time.Millisecond) // the poll interval, not synchronisation
	}
}

// Buffer is a bytes.Buffer safe for concurrent writes and reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Len returns how many bytes were written so far.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Len()
}

// ListenAs starts a TCP listener on loopback running as uid (root only:
// it sets the process's credentials), which prints its port, then, for
// each connection, the number of bytes it received: a process of another
// user playing a kernel. It is killed when the test ends.
func ListenAs(t *testing.T, uid uint32) (port int, received *bufio.Scanner) {
	t.Helper()
	const prog = `
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
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
	cmd := exec.Command("/usr/bin/python3", "-c", prog)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Dir = "/"
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a listener as uid %d: %v", uid, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatalf("the listener as uid %d printed no port: %v", uid, sc.Err())
	}
	if port, err = strconv.Atoi(sc.Text()); err != nil {
		t.Fatal(err)
	}
	return port, sc
}

// LeakCheck is a package's check that no secret value a test makes ever
// reaches its logs (or whatever else the tests route to it, such as HTTP
// replies): tests write their log output to it and make their values with
// Value; Run, from TestMain, fails the package if one appears. It is safe
// for concurrent use.
type LeakCheck struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	values []string
}

// Write records p for the check.
func (l *LeakCheck) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything recorded so far.
func (l *LeakCheck) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Value makes a distinctive value, label-<16 hex digits>, and registers it.
func (l *LeakCheck) Value(label string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	v := label + "-" + hex.EncodeToString(b)
	l.mu.Lock()
	l.values = append(l.values, v)
	l.mu.Unlock()
	return v
}

// Run runs the package's tests, then fails it if a registered value
// appears in what was recorded (what names it, for the messages: "logs",
// say); it returns the exit code for os.Exit.
func (l *LeakCheck) Run(m *testing.M, what string) int {
	code := m.Run()
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := l.buf.String()
	for _, v := range l.values {
		if strings.Contains(seen, v) {
			fmt.Fprintf(os.Stderr, "FAIL: a secret value made by the tests appears in the %s (%d bytes checked)\n", what, len(seen))
			code = 1
		}
	}
	if code == 0 {
		fmt.Fprintf(os.Stderr, "leak check: %d values, %d bytes of %s, none leaked\n", len(l.values), len(seen), what)
	}
	return code
}
