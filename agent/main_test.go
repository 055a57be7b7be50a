package agent

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/internal/testutil"
)

// Every log line any test of this package produces goes to leaks (through
// sink); every secret value a test makes is registered there. TestMain
// fails the package if a value ever appears in a log line.
var leaks testutil.LeakCheck

type sink struct{}

func (sink) Write(p []byte) (int, error) { return leaks.Write(p) }

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
func secretValue(label string) string { return leaks.Value(label) }

func TestMain(m *testing.M) { os.Exit(leaks.Run(m, "logs")) }
