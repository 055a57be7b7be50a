package jupyterhub_test

import (
	"os/exec"
	"testing"
)

// TestPythonAPI runs the notebook module's own tests (deploy/python,
// standard library only) against their fake service: create, list, get,
// update, delete, the getpass prompt of get(), and errors that name a code
// and never a value.
func TestPythonAPI(t *testing.T) {
	py, err := exec.LookPath("/usr/bin/python3")
	if err != nil {
		t.Skip("no /usr/bin/python3")
	}
	cmd := exec.Command(py, "-m", "unittest", "discover", "-v", "-s", "../python", "-p", "test_*.py")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("the Python API's tests: %v", err)
	}
}
