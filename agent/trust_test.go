package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/internal/testutil"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// goodConn is a connection file's content as Jupyter writes it.
func goodConn(ip string) string {
	return fmt.Sprintf(`{"ip": %q, "transport": "tcp", "shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003,
"control_port": 5004, "hb_port": 5005, "key": "k", "signature_scheme": "hmac-sha256"}`, ip)
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return path
}

// nobody is the uid of another user, for files and listeners that are not
// the agent's; changing owners and starting processes as it needs root.
func nobody(t *testing.T) uint32 {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("playing another user needs root (CI runs as root)")
	}
	if u, err := user.Lookup("nobody"); err == nil {
		if id, err := strconv.ParseUint(u.Uid, 10, 32); err == nil {
			return uint32(id)
		}
	}
	return 65534
}

// Every kind of connection file the agent must not believe is refused with
// a reason naming what is wrong, and none blocks: a FIFO in particular.
func TestKernelTrustRefusesConnectionFiles(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	elsewhere := writeFile(t, filepath.Join(other, "real.json"), goodConn("127.0.0.1"), 0o600)
	fifo := filepath.Join(dir, "kernel-fifo.json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "kernel-link.json")
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	sticky := t.TempDir()
	if err := os.Chmod(sticky, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	group := t.TempDir()
	if err := os.Chmod(group, 0o770); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, why string
		allowRemote     bool
	}{
		{"a kernel's own file", writeFile(t, filepath.Join(dir, "kernel-ok.json"), goodConn("127.0.0.1"), 0o600), "", false},
		{"a FIFO", fifo, "not a regular file (a FIFO)", false},
		{"a symlink", link, "not a regular file (a symlink)", false},
		{"readable by others", writeFile(t, filepath.Join(dir, "kernel-644.json"), goodConn("127.0.0.1"), 0o644), "group or others have access", false},
		{"group bits", writeFile(t, filepath.Join(dir, "kernel-640.json"), goodConn("127.0.0.1"), 0o640), "group or others have access", false},
		{"another host", writeFile(t, filepath.Join(dir, "kernel-remote.json"), goodConn("10.9.8.7"), 0o600), "not loopback", false},
		{"another host, allowed", writeFile(t, filepath.Join(dir, "kernel-remote2.json"), goodConn("10.9.8.7"), 0o600), "", true},
		{"every address", writeFile(t, filepath.Join(dir, "kernel-any.json"), goodConn("0.0.0.0"), 0o600), "not loopback", false},
		{"ipc elsewhere", writeFile(t, filepath.Join(dir, "kernel-ipc.json"),
			strings.Replace(goodConn("/tmp/kernel-x-ipc"), `"tcp"`, `"ipc"`, 1), 0o600), "is not in", false},
		{"ipc beside it", writeFile(t, filepath.Join(dir, "kernel-ipc2.json"),
			strings.Replace(goodConn(filepath.Join(dir, "kernel-x-ipc")), `"tcp"`, `"ipc"`, 1), 0o600), "", false},
		{"too large", writeFile(t, filepath.Join(dir, "kernel-big.json"), strings.Repeat(" ", maxConnFileSize+1), 0o600), "more than", false},
		{"in a dir everyone can write", writeFile(t, filepath.Join(open, "kernel-x.json"), goodConn("127.0.0.1"), 0o600), "writable by group or others", false},
		// /tmp's shape, where jupyter_kernel_test's kernels live: others may
		// add files but not replace this one, and theirs are refused as
		// another uid's (TestKernelTrustRefusesAnotherUsersFiles).
		{"in a sticky dir everyone can write", writeFile(t, filepath.Join(sticky, "tmpab12cd.json"), goodConn("127.0.0.1"), 0o600), "", false},
		{"in a dir the group can write", writeFile(t, filepath.Join(group, "kernel-x.json"), goodConn("127.0.0.1"), 0o600), "writable by group or others", false},
	} {
		done := make(chan error, 1)
		go func() { _, err := (kernelTrust{allowRemote: tc.allowRemote}).read(tc.file); done <- err }()
		var err error
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: reading blocked", tc.name)
		}
		switch {
		case tc.why == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.why != "" && (!errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), tc.why)):
			t.Errorf("%s: err = %v, want a refusal saying %q", tc.name, err, tc.why)
		}
	}
}

// Files and directories of another user are refused (root only: it takes
// chown).
func TestKernelTrustRefusesAnotherUsersFiles(t *testing.T) {
	uid := nobody(t)
	dir := t.TempDir()
	f := writeFile(t, filepath.Join(dir, "kernel-theirs.json"), goodConn("127.0.0.1"), 0o600)
	if err := os.Chown(f, int(uid), int(uid)); err != nil {
		t.Fatal(err)
	}
	if _, err := (kernelTrust{}).read(f); !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), fmt.Sprintf("owned by uid %d", uid)) {
		t.Errorf("another user's file: %v", err)
	}
	theirs := t.TempDir()
	g := writeFile(t, filepath.Join(theirs, "kernel-mine.json"), goodConn("127.0.0.1"), 0o600)
	if err := os.Chown(theirs, int(uid), int(uid)); err != nil {
		t.Fatal(err)
	}
	if _, err := (kernelTrust{}).read(g); !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), fmt.Sprintf("is owned by uid %d", uid)) {
		t.Errorf("a file in another user's dir: %v", err)
	}
	// Another user's file planted in a sticky dir everyone can write (/tmp).
	sticky := t.TempDir()
	if err := os.Chmod(sticky, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	h := writeFile(t, filepath.Join(sticky, "kernel-planted.json"), goodConn("127.0.0.1"), 0o600)
	if err := os.Chown(h, int(uid), int(uid)); err != nil {
		t.Fatal(err)
	}
	if _, err := (kernelTrust{}).read(h); !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), fmt.Sprintf("owned by uid %d", uid)) {
		t.Errorf("another user's file in a sticky dir: %v", err)
	}
	// And a sticky dir of another user is still theirs.
	if err := os.Chown(sticky, int(uid), int(uid)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(h, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := (kernelTrust{}).read(h); !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), fmt.Sprintf("is owned by uid %d", uid)) {
		t.Errorf("a file in another user's sticky dir: %v", err)
	}
}

// dialLog is a fake dialer that records which connection files it was
// asked to dial.
type dialLog struct {
	mu    sync.Mutex
	files map[string]int
	k     *fakeKernel
}

func (d *dialLog) dial(ctx context.Context, file string) (session, error) {
	d.mu.Lock()
	d.files[filepath.Base(file)]++
	d.mu.Unlock()
	return d.k.dialer(ModeControl)(ctx, file)
}

func (d *dialLog) dialled() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for f, n := range d.files {
		out[f] = n
	}
	return out
}

// The attack: a runtime dir holding a FIFO, a symlink, a file others can
// read and one pointing at another host, beside a real kernel's file; and a
// world-writable runtime dir with a well-formed file in it. Only the real
// kernel is served (and it is served: the FIFO does not block discovery);
// each refusal is logged with the file and the reason, never the content;
// the agent stops cleanly.
func TestAgentServesOnlyTrustedConnectionFiles(t *testing.T) {
	st := newStore(aliceWS)
	st.publish(time.Now())
	dir, open := t.TempDir(), t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "kernel-fifo.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := writeFile(t, filepath.Join(t.TempDir(), "x.json"), goodConn("127.0.0.1"), 0o600)
	if err := os.Symlink(target, filepath.Join(dir, "kernel-link.json")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "kernel-644.json"), goodConn("127.0.0.1"), 0o644)
	writeFile(t, filepath.Join(dir, "kernel-remote.json"), goodConn("192.0.2.1"), 0o600)
	writeFile(t, filepath.Join(open, "kernel-planted.json"), goodConn("127.0.0.1"), 0o600)
	writeFile(t, filepath.Join(dir, "kernel-real.json"), goodConn("127.0.0.1"), 0o600)

	var logs testutil.Buffer
	d := &dialLog{files: map[string]int{}, k: newFakeKernel()}
	ks := &kernels{log: hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: io.MultiWriter(&logs, sink{})}),
		st: st, dial: d.dial, probeInterval: time.Hour, applyTimeout: 5 * time.Second, metrics: &metrics{}, workers: map[string]*worker{}}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); _ = ks.run(ctx, []string{dir, open}, time.Hour) }()

	waitFor(t, 20*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].ID != "real" || s[0].State != StateLive {
			return fmt.Errorf("kernels served: %+v", s)
		}
		return nil
	})
	ks.rescan([]string{dir, open}) // a second look changes nothing and logs nothing new
	if got := d.dialled(); len(got) != 1 || got["kernel-real.json"] == 0 {
		t.Errorf("dialled %v, want only kernel-real.json", got)
	}
	out := logs.String()
	for file, why := range map[string]string{
		"kernel-fifo.json":    "a FIFO",
		"kernel-link.json":    "a symlink",
		"kernel-644.json":     "group or others have access",
		"kernel-remote.json":  "not loopback",
		"kernel-planted.json": "writable by group or others",
	} {
		var line string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, file) && strings.Contains(l, "connection file refused") {
				if line != "" {
					t.Errorf("%s refused twice in the log", file)
				}
				line = l
			}
		}
		if !strings.Contains(line, why) {
			t.Errorf("no log line refusing %s for %q; log:\n%s", file, why, out)
		}
	}
	if strings.Contains(out, `"key"`) || strings.Contains(out, "5001") {
		t.Errorf("a log line shows a connection file's content:\n%s", out)
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not stop")
	}
}

// The attack of issue 8: another user listens on the ports a connection
// file in the agent's own runtime dir names (a stale file whose kernel is
// gone, say) and plays a kernel. The agent's real dialler connects, finds
// the listener's uid in /proc/net/tcp, and sends nothing: the listener
// receives 0 bytes, and status shows why.
func TestAgentSendsNothingToAnotherUsersListener(t *testing.T) {
	uid := nobody(t)
	port, received := testutil.ListenAs(t, uid)
	st := newStore(aliceWS)
	if err := st.apply(put("s1", "API-KEY", 1, alice, secretValue("listener")), time.Time{}); err != nil {
		t.Fatal(err)
	}
	st.publish(time.Now())
	dir := t.TempDir()
	info := jupyter.ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", ShellPort: port, ControlPort: port, IOPubPort: port,
		StdinPort: port, HBPort: port, Key: "k", SignatureScheme: "hmac-sha256"}
	if err := info.WriteFile(filepath.Join(dir, "kernel-stale.json")); err != nil {
		t.Fatal(err)
	}
	ks := &kernels{log: testLogger(t), st: st, dial: dialJupyter, probeInterval: time.Hour, applyTimeout: 5 * time.Second,
		metrics: &metrics{}, workers: map[string]*worker{}}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); _ = ks.run(ctx, []string{dir}, time.Hour) }()
	defer func() { cancel(); <-stopped }()

	want := fmt.Sprintf("runs as uid %d, not %d", uid, os.Geteuid())
	waitFor(t, 20*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || !strings.Contains(s[0].LastError, want) {
			return fmt.Errorf("status %+v, want an error saying %q", s, want)
		}
		return nil
	})
	if !received.Scan() || received.Text() != "0" {
		t.Fatalf("the other user's listener received %q bytes, want 0", received.Text())
	}
}

// A refused file that is put right (mode 0600) is served at the next look,
// and a served file that turns untrustworthy stops being served.
func TestRefusedConnectionFileServedOnceFixed(t *testing.T) {
	st := newStore(aliceWS)
	st.publish(time.Now())
	d := &dialLog{files: map[string]int{}, k: newFakeKernel()}
	ks, dir := startKernels(t, st, d.dial)
	f := writeFile(t, filepath.Join(dir, "kernel-fix.json"), goodConn("127.0.0.1"), 0o644)
	ks.rescan([]string{dir})
	if n := len(ks.statuses()); n != 0 {
		t.Fatalf("%d kernels served from a 0644 file", n)
	}
	if err := os.Chmod(f, 0o600); err != nil {
		t.Fatal(err)
	}
	ks.rescan([]string{dir})
	waitFor(t, 20*time.Second, func() error {
		if s := ks.statuses(); len(s) != 1 || s[0].State != StateLive {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	if err := os.Chmod(f, 0o640); err != nil {
		t.Fatal(err)
	}
	ks.rescan([]string{dir})
	if n := len(ks.statuses()); n != 0 {
		t.Errorf("a file turned 0640 is still served (%d kernels)", n)
	}
}
