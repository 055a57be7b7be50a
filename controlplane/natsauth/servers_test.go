package natsauth_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/natstest"
)

// A starter runs a real nats-server with the configuration file conf and
// returns its client URL. The server stops when the test ends.
type starter func(t *testing.T, conf string) string

// writeServerConfig writes, under dir, the generated authorisation as
// auth.conf and a server configuration main.conf that includes it the way
// an operator would: loopback, a random port, JetStream with its store in
// dir. It returns main.conf's path.
func writeServerConfig(t *testing.T, dir string, auth []byte) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), auth, 0o600); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf("host: \"127.0.0.1\"\nport: -1\njetstream {\n  store_dir: %q\n}\ninclude \"auth.conf\"\n",
		filepath.Join(dir, "store"))
	path := filepath.Join(dir, "main.conf")
	if err := os.WriteFile(path, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startEmbedded loads conf with server.ProcessConfigFile and runs the
// embedded nats-server.
func startEmbedded(t *testing.T, conf string) string {
	t.Helper()
	return natstest.StartConfig(t, conf).ClientURL()
}

// requireEnv makes a missing nats-server binary a failure instead of a skip.
const requireEnv = "NBSECRETS_REQUIRE_NATS_SERVER"

// nats-server's log lines that startBinary waits for.
var (
	listeningRe = regexp.MustCompile(`Listening for client connections on (\S+:\d+)`)
	readyRe     = regexp.MustCompile(`Server is ready`)
)

// binaryStarter returns a starter for the nats-server binary on PATH (as
// Debian's nats-server package installs it), or skips the test when there
// is none, unless NBSECRETS_REQUIRE_NATS_SERVER=1.
func binaryStarter(t *testing.T) starter {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv(requireEnv) == "1" {
			t.Fatalf("nats-server binary not found on PATH and %s=1", requireEnv)
		}
		t.Skipf("nats-server binary not installed (apt-get install nats-server); set %s=1 to make this a failure", requireEnv)
	}
	return func(t *testing.T, conf string) string {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "-c", conf)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout = cmd.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", bin, err)
		}
		var (
			mu   sync.Mutex
			logs strings.Builder
		)
		found := make(chan string, 1)
		scanned := make(chan struct{})
		go func() { // ends when the process closes stderr
			defer close(scanned)
			sc := bufio.NewScanner(stderr)
			var addr string
			for sc.Scan() {
				line := sc.Text()
				mu.Lock()
				logs.WriteString(line + "\n")
				mu.Unlock()
				if m := listeningRe.FindStringSubmatch(line); m != nil {
					addr = m[1]
				}
				if readyRe.MatchString(line) && addr != "" {
					found <- addr
				}
			}
		}()
		dump := func() string { mu.Lock(); defer mu.Unlock(); return logs.String() }
		t.Cleanup(func() {
			cancel()
			<-scanned
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("nats-server log:\n%s", dump())
			}
		})
		select {
		case addr := <-found:
			out, _ := exec.Command(bin, "--version").Output()
			t.Logf("%s (%s) listening on %s", bin, strings.TrimSpace(string(out)), addr)
			return "nats://" + addr
		case <-scanned:
			t.Fatalf("nats-server exited before it was ready:\n%s", dump())
		case <-time.After(20 * time.Second):
			t.Fatalf("nats-server not ready within 20s:\n%s", dump())
		}
		return ""
	}
}
