package web

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// Every log line and every HTTP reply body the tests of this package see go
// to the sink; every value a test makes is registered. TestMain fails the
// package if a value ever appears in either.
var (
	sinkMu  sync.Mutex
	sinkBuf bytes.Buffer
	values  []string
)

type sink struct{}

func (sink) Write(p []byte) (int, error) {
	sinkMu.Lock()
	defer sinkMu.Unlock()
	return sinkBuf.Write(p)
}

func testLogger(t testing.TB) hclog.Logger {
	if _, ok := t.(*testing.B); ok { // a benchmark: to the leak check only, no per-line test log
		return hclog.New(&hclog.LoggerOptions{Name: "bench", Level: hclog.Info, Output: sink{}})
	}
	return hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Trace, Output: io.MultiWriter(sink{}, tWriter{t})})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// secretValue makes a distinctive value and registers it for the leak check.
func secretValue(label string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	v := label + "-" + hex.EncodeToString(b)
	sinkMu.Lock()
	values = append(values, v)
	sinkMu.Unlock()
	return v
}

func TestMain(m *testing.M) {
	code := m.Run()
	sinkMu.Lock()
	seen := sinkBuf.String()
	for _, v := range values {
		if strings.Contains(seen, v) {
			fmt.Fprintf(os.Stderr, "FAIL: a secret value made by the tests appears in a log line or an HTTP reply (%d bytes checked)\n", len(seen))
			code = 1
		}
	}
	if code == 0 {
		fmt.Fprintf(os.Stderr, "leak check: %d values, %d bytes of logs and replies, none leaked\n", len(values), len(seen))
	}
	sinkMu.Unlock()
	os.Exit(code)
}
