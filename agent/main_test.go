package agent

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

// Every log line any test of this package produces goes to logSink; every
// secret value a test makes is registered in values. TestMain fails the
// package if a value ever appears in a log line.
var (
	logMu  sync.Mutex
	logBuf bytes.Buffer
	values []string
)

type sink struct{}

func (sink) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return logBuf.Write(p)
}

// testLogger logs at trace level, the most talkative, to the sink and to
// the test's own log.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Trace,
		Output: io.MultiWriter(sink{}, tWriter{t})})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// secretValue makes a distinctive value and registers it for the leak check.
func secretValue(label string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	v := label + "-" + hex.EncodeToString(b)
	logMu.Lock()
	values = append(values, v)
	logMu.Unlock()
	return v
}

func TestMain(m *testing.M) {
	code := m.Run()
	logMu.Lock()
	logs := logBuf.String()
	for _, v := range values {
		if strings.Contains(logs, v) {
			fmt.Fprintf(os.Stderr, "FAIL: a secret value made by the tests appears in the logs (%d bytes of logs checked)\n", len(logs))
			code = 1
		}
	}
	if code == 0 {
		fmt.Fprintf(os.Stderr, "log leak check: %d values, %d lines of logs, none leaked\n", len(values), strings.Count(logs, "\n"))
	}
	logMu.Unlock()
	os.Exit(code)
}
