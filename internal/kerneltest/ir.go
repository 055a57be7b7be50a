package kerneltest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// IRkernelSpec is the kernelspec Debian's r-cran-irkernel installs.
const IRkernelSpec = "/usr/share/jupyter/kernels/ir/kernel.json"

const irInstallHint = "apt-get install -y r-cran-irkernel"

var (
	irOnce sync.Once
	irArgv []string
	irErr  error
)

// IRkernel returns an Options.Argv that starts Debian's IRkernel as its
// kernelspec does (argv with {connection_file} filled in), after checking
// that the kernelspec is there and that R loads IRkernel. If not, it fails
// the test when NBSECRETS_REQUIRE_KERNEL=1 and skips it otherwise, naming
// the package to install. Start such kernels with KernelName "ir".
func IRkernel(t testing.TB) func(connFile string) []string {
	t.Helper()
	irOnce.Do(func() {
		b, err := os.ReadFile(IRkernelSpec)
		if err != nil {
			irErr = fmt.Errorf("no IRkernel kernelspec: %w", err)
			return
		}
		var spec struct {
			Argv     []string `json:"argv"`
			Language string   `json:"language"`
		}
		if err := json.Unmarshal(b, &spec); err != nil || len(spec.Argv) == 0 {
			irErr = fmt.Errorf("%s: not a kernelspec with an argv (%v)", IRkernelSpec, err)
			return
		}
		if !containsConnFile(spec.Argv) {
			irErr = fmt.Errorf("%s: argv has no {connection_file}", IRkernelSpec)
			return
		}
		if out, err := exec.Command(spec.Argv[0], "--slave", "-e", "library(IRkernel)").CombinedOutput(); err != nil {
			irErr = fmt.Errorf("%s cannot load IRkernel: %w: %s", spec.Argv[0], err, strings.TrimSpace(string(out)))
			return
		}
		irArgv = spec.Argv
	})
	requireOr(t, irErr, irInstallHint)
	return func(connFile string) []string {
		argv := make([]string, len(irArgv))
		for i, a := range irArgv {
			argv[i] = strings.ReplaceAll(a, "{connection_file}", connFile)
		}
		return argv
	}
}

// Rscript returns the path of Rscript (r-base-core, which r-cran-irkernel
// pulls in), skipping or failing the test as IRkernel does when it is
// missing.
func Rscript(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("Rscript")
	requireOr(t, err, irInstallHint)
	return p
}

func containsConnFile(argv []string) bool {
	for _, a := range argv {
		if strings.Contains(a, "{connection_file}") {
			return true
		}
	}
	return false
}

// requireOr skips the test when err is set, or fails it when the
// environment sets NBSECRETS_REQUIRE_KERNEL=1.
func requireOr(t testing.TB, err error, hint string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("real-kernel test: %v; install with: %s", err, hint)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
