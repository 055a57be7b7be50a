package agent

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// TestKernelNewPortsReseeded: a kernel manager restarts a kernel on NEW
// ports (jupyter_client's restart_kernel(newports=True), after a kernel
// died soon after its start): the kernel is gone, its connection file is
// written again with other ports, and a new kernel starts on it under the
// same id, without the injector, so without the secrets in its
// environment. The agent follows the file to the new ports and re-seeds the
// new kernel live, then keeps it current.
//
// Two ways of writing the file again: in place with a new key, and removed
// then written anew with the same key, which is what jupyter_client does
// (cleanup_random_ports, then write_connection_file).
func TestKernelNewPortsReseeded(t *testing.T) {
	for _, tc := range []struct {
		name string
		how  kerneltest.NewPorts
	}{
		{"rewritten_new_key", kerneltest.NewPorts{Key: true}},
		{"recreated_same_key", kerneltest.NewPorts{Remove: true}},
	} {
		t.Run(tc.name, func(t *testing.T) { testKernelNewPorts(t, tc.how) })
	}
}

func testKernelNewPorts(t *testing.T, how kerneltest.NewPorts) {
	const name = "MOVES_PORTS"
	h := newHarness(t)
	a := h.startAgent()
	k := kerneltest.Start(t, kerneltest.Options{Dir: h.dir})
	cA := k.Client(t)
	v1, v2 := secretValue("ports1"), secretValue("ports2")
	h.put("s1", name, 1, v1)
	waitEnv(t, cA, name, v1)
	waitKernelStatus(t, a, k.ID, "kernel A live with version 1", func(s KernelStatus) bool {
		return s.State == StateLive && s.Holds[name].Version == 1
	})

	// The manager's restart: A dies (Kill returns once it has exited), the
	// file is written again with new ports, B starts on it.
	oldInfo, pidA := *k.Info, k.PID()
	k.Kill()
	select {
	case <-k.Exited():
	default:
		t.Fatal("kernel A still runs after Kill")
	}
	restarted := time.Now()
	k.RestartNewPorts(t, how)
	newInfo := *k.Info
	if k.PID() == pidA {
		t.Fatal("kernel B is kernel A's process")
	}
	for _, p := range ports(&newInfo) {
		for _, o := range ports(&oldInfo) {
			if p == o {
				t.Fatalf("port %d kept across the restart: %+v -> %+v", p, oldInfo, newInfo)
			}
		}
	}
	if got, err := jupyter.ReadConnectionFile(k.ConnFile); err != nil || got.ShellPort != newInfo.ShellPort {
		t.Fatalf("connection file after the restart: %+v, %v; want shell port %d", got, err, newInfo.ShellPort)
	}
	// B's environment at its start lacks the secret: only a live re-seed
	// can give it one. (JUPYTER_RUNTIME_DIR, which kerneltest sets, shows
	// the start environment is read at all.)
	if !startEnvHas(t, k.PID(), "JUPYTER_RUNTIME_DIR") || startEnvHas(t, k.PID(), name) {
		t.Fatalf("kernel B's start environment: JUPYTER_RUNTIME_DIR %v, %s %v (want true, false)",
			startEnvHas(t, k.PID(), "JUPYTER_RUNTIME_DIR"), name, startEnvHas(t, k.PID(), name))
	}

	cB := k.Client(t) // a new client, to the new ports
	waitEnv(t, cB, name, v1)
	st := waitKernelStatus(t, a, k.ID, "kernel B re-seeded with version 1", func(s KernelStatus) bool {
		return s.State == StateLive && s.Holds[name].Version == 1 && s.LastReseed.After(restarted)
	})
	if st.ConnectionFile != k.ConnFile {
		t.Errorf("status connection file %q, want %q", st.ConnectionFile, k.ConnFile)
	}

	// Nothing of the agent's may still reach for A's ports: listen on them
	// (those still free) and count who connects while a change goes through.
	// zmq4 retries a dial every 25 ms, so a session or dialer of the agent's
	// still aimed at A would connect here. The test's own client to A goes
	// first.
	cA.Close()
	stray := listenOn(t, ports(&oldInfo))

	h.put("s1", name, 2, v2)
	waitEnv(t, cB, name, v2)
	waitKernelStatus(t, a, k.ID, "kernel B at version 2", func(s KernelStatus) bool {
		return s.State == StateLive && s.Holds[name].Version == 2
	})
	if n := stray(); n != 0 {
		t.Errorf("%d connections to kernel A's old ports after the restart", n)
	}
}

// ports returns a connection's five ports.
func ports(info *jupyter.ConnectionInfo) []int {
	return []int{info.ShellPort, info.IOPubPort, info.StdinPort, info.ControlPort, info.HBPort}
}

// waitKernelStatus polls the agent's status until it shows exactly one
// kernel, id, for which cond holds, and returns that kernel's status.
func waitKernelStatus(t *testing.T, a *runningAgent, id, what string, cond func(KernelStatus) bool) KernelStatus {
	t.Helper()
	var got KernelStatus
	waitFor(t, 30*time.Second, func() error {
		ks := a.Status().Kernels
		if len(ks) != 1 || ks[0].ID != id {
			return fmt.Errorf("%s: status kernels %+v, want one, %s", what, ks, id)
		}
		if !cond(ks[0]) {
			return fmt.Errorf("%s: status %+v", what, ks[0])
		}
		got = ks[0]
		return nil
	})
	return got
}

// startEnvHas reports whether the environment process pid started with
// (/proc/PID/environ, which later putenv calls do not change) has name.
func startEnvHas(t *testing.T, pid int, name string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatalf("reading the kernel's start environment: %v", err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if bytes.HasPrefix(kv, []byte(name+"=")) {
			return true
		}
	}
	return false
}

// listenOn listens on each of ports that is free and counts connections.
// The returned function stops listening and returns the count.
func listenOn(t *testing.T, ports []int) func() int64 {
	t.Helper()
	var n atomic.Int64
	var wg sync.WaitGroup
	var ls []net.Listener
	for _, p := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Logf("old port %d not free (%v); not watched", p, err)
			continue
		}
		ls = append(ls, l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("accept on old port %d: %v", p, err)
					}
					return
				}
				n.Add(1)
				c.Close()
			}
		}()
	}
	stop := func() int64 {
		for _, l := range ls {
			l.Close()
		}
		wg.Wait()
		return n.Load()
	}
	t.Cleanup(func() { stop() })
	return stop
}
