// Package natstest runs a real, in-process nats-server with JetStream for
// tests: on 127.0.0.1, a random port, its store in the test's temporary
// directory, shut down when the test ends. Restart stops a server and starts
// a new one on the same port and store, as a crashed or upgraded server would
// come back.
package natstest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds how long a server may take to accept connections.
const readyTimeout = 10 * time.Second

// started maps each server this package started to the options that make it
// again (same port, same store), for Restart.
var started sync.Map // *server.Server -> *server.Options

// Start starts a nats-server with JetStream on 127.0.0.1 and a random port,
// its store under t.TempDir(), and shuts it down when the test ends. Its
// URL is s.ClientURL(). Like `nbsecrets dev` and the recommended server
// configuration, it lifts nats-server's default cap of 1,000 consumers per
// stream (one ordered consumer per agent reads the record bucket).
func Start(t testing.TB) *server.Server {
	t.Helper()
	return start(t, &server.Options{
		Host:            "127.0.0.1",
		Port:            -1,
		JetStream:       true,
		StoreDir:        t.TempDir(),
		NoLog:           true,
		NoSigs:          true,
		JetStreamLimits: server.JSLimitOpts{DefaultMaxConsumers: -1},
	})
}

// Restart shuts s down (if it is still running) and starts a new server on
// the same port with the same JetStream store. s must have come from Start or
// Restart. Clients that reconnect find the new server at the same URL with
// the same streams.
func Restart(t testing.TB, s *server.Server) *server.Server {
	t.Helper()
	v, ok := started.Load(s)
	if !ok {
		t.Fatalf("natstest: Restart of a server that natstest did not start")
	}
	opts := v.(*server.Options)
	s.Shutdown()
	s.WaitForShutdown()
	started.Delete(s)
	return start(t, opts.Clone())
}

// StoreDir is the JetStream store directory a server from Start uses (the
// server keeps its streams under StoreDir/jetstream).
func StoreDir(t testing.TB, s *server.Server) string {
	t.Helper()
	v, ok := started.Load(s)
	if !ok {
		t.Fatalf("natstest: StoreDir of a server that natstest did not start")
	}
	return v.(*server.Options).StoreDir
}

func start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(readyTimeout) {
		s.Shutdown()
		t.Fatalf("natstest: server on %s:%d not ready within %v", opts.Host, opts.Port, readyTimeout)
	}
	// Pin the port the server picked so that a restart reuses it.
	again := opts.Clone()
	again.Port = s.Addr().(*net.TCPAddr).Port
	started.Store(s, again)
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
		started.Delete(s)
	})
	return s
}

// StartConfig runs an embedded server from the configuration file at path,
// as nats-server would read it, after adjust (if any) has changed the
// options; it fails the test naming the file when nats-server refuses it.
// The server stops when the test ends.
func StartConfig(t testing.TB, path string, adjust ...func(*server.Options)) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("natstest: nats-server refuses %s: %v", path, err)
	}
	opts.NoLog, opts.NoSigs = true, true
	for _, f := range adjust {
		f(opts)
	}
	return start(t, opts)
}
