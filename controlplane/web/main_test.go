package web

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// Every log line and every HTTP reply body the tests of this package see go
// to leaks (through sink); every value a test makes is registered there.
// TestMain fails the package if a value ever appears in either.
var leaks testutil.LeakCheck

type sink struct{}

func (sink) Write(p []byte) (int, error) { return leaks.Write(p) }

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
func secretValue(label string) string { return leaks.Value(label) }

func TestMain(m *testing.M) { os.Exit(leaks.Run(m, "logs and HTTP replies")) }
