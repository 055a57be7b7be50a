package kerneltest

import (
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// TestWaitReadyPortTakenByAnother: when a port picked for the kernel is
// taken by another process before the kernel binds it, a client can reach
// that process (which drops the connection) before the kernel has exited
// with "Address already in use". waitReady must report errPortTaken, so
// that Start tries new ports, rather than the lost connection (a flake seen
// with test packages running in parallel).
func TestWaitReadyPortTakenByAnother(t *testing.T) {
	// The other process: accepts connections and drops them at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { l.Close(); wg.Wait() }()
	port := l.Addr().(*net.TCPAddr).Port

	// The "kernel": fails to bind a moment after starting, as ipykernel
	// does when a port is taken.
	if err := fakeKernel(t, "sleep 1; echo 'zmq.error.ZMQError: Address already in use' >&2; exit 1", port).waitReady(); !errors.Is(err, errPortTaken) {
		t.Fatalf("waitReady: %v, want errPortTaken", err)
	}
}

// fakeKernel starts a shell script in a kernel's place, its connection info
// naming port for every channel. It is killed when the test ends.
func fakeKernel(t *testing.T, script string, port int) *Kernel {
	t.Helper()
	k := &Kernel{ID: "fake", t: t, argv: []string{"/bin/sh", "-c", script},
		Info: &jupyter.ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", Key: newUUID(), SignatureScheme: "hmac-sha256",
			ShellPort: port, IOPubPort: port, StdinPort: port, ControlPort: port, HBPort: port}}
	if err := k.spawn(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Kill)
	return k
}

// TestWaitReadyBindFailedKernelHangs: ipykernel 6.17 can print "Address
// already in use" and then not exit (a thread it started keeps it alive).
// waitReady must see that in its output rather than wait out StartTimeout
// (seen once: it waited 60 s for an answer, then failed the test).
func TestWaitReadyBindFailedKernelHangs(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0") // nothing will answer here
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := fakeKernel(t, "echo 'zmq.error.ZMQError: Address already in use' >&2; exec sleep 600", port).waitReady(); !errors.Is(err, errPortTaken) {
		t.Fatalf("waitReady: %v, want errPortTaken", err)
	}
}
