package main

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestRestReturned: the REST step is the last "kernel restarted" line of
// the kernel, through the server, not before the restart began; other
// lines, other kernels, other mechanisms and a cut first line are ignored.
func TestRestReturned(t *testing.T) {
	log := `ed","@timestamp":"2026-05-01T10:00:00.100000Z","kernel":"k1","mechanism":"jupyter-server"}
{"@level":"info","@message":"kernel restarted; reconnecting","@module":"nbsecrets.agent","@timestamp":"2026-05-01T10:00:01.250000Z","kernel":"k1","mechanism":"jupyter-server","reason":"change"}
{"@level":"info","@message":"kernel restarted; reconnecting","@timestamp":"2026-05-01T10:00:02.000000Z","kernel":"k2","mechanism":"jupyter-server"}
{"@level":"info","@message":"kernel restarted; reconnecting","@timestamp":"2026-05-01T10:00:03.000000Z","kernel":"k1","mechanism":"shutdown-request"}
{"@level":"info","@message":"kernel connected","@timestamp":"2026-05-01T10:00:04.000000Z","kernel":"k1"}
`
	began := time.Date(2026, 5, 1, 10, 0, 1, 0, time.UTC)
	got, ok := restReturned(log, "k1", began)
	if want := began.Add(250 * time.Millisecond); !ok || !got.Equal(want) {
		t.Errorf("restReturned = %v, %v; want %v, true", got, ok, want)
	}
	if _, ok := restReturned(log, "k1", began.Add(time.Second)); ok {
		t.Error("a line from before the restart began was taken")
	}
	if _, ok := restReturned(log, "k3", began); ok {
		t.Error("a line of another kernel was taken")
	}
}

// TestPidWatch: the watch returns when the process exits, not before, and
// gives up at its timeout.
func TestPidWatch(t *testing.T) {
	cmd := exec.Command("cat")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	w, err := watchPID(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := w.wait(context.Background(), 100*time.Millisecond); err == nil {
		t.Fatal("wait returned while the process runs")
	}
	stdin.Close() // cat exits at end of input
	if err := w.wait(context.Background(), 10*time.Second); err != nil {
		t.Fatalf("wait after the exit: %v", err)
	}
}
