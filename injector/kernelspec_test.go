package injector

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	testBinary = "/opt/nbsecrets/bin/nbsecrets"
	testSocket = "/run/nbsecrets/agent.sock"
)

var systemPython3 = map[string]any{
	"argv":           []string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
	"display_name":   "Python 3 (ipykernel)",
	"language":       "python",
	"env":            map[string]string{"FOO": "bar"},
	"interrupt_mode": "signal",
	"metadata":       map[string]any{"debugger": true},
}

// writeSpec makes dataDir/kernels/name with kernel.json and a logo.
func writeSpec(t *testing.T, dataDir, name string, spec any) string {
	t.Helper()
	dir := filepath.Join(dataDir, "kernels", name)
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.MarshalIndent(spec, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	for path, content := range map[string][]byte{
		"kernel.json":    b,
		"logo-64x64.png": []byte("png of " + dataDir),
		"sub/kernel.js":  []byte("js"),
		"logo-32x32.png": []byte("small png"),
	} {
		if err := os.WriteFile(filepath.Join(dir, path), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type readSpec struct {
	Argv          []string          `json:"argv"`
	DisplayName   string            `json:"display_name"`
	Language      string            `json:"language"`
	Env           map[string]string `json:"env"`
	InterruptMode string            `json:"interrupt_mode"`
	Metadata      struct {
		Debugger  bool      `json:"debugger"`
		Nbsecrets *WrapInfo `json:"nbsecrets"`
	} `json:"metadata"`
}

func readKernelJSON(t *testing.T, dir string) (readSpec, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s readSpec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("kernel.json: %v\n%s", err, b)
	}
	return s, b
}

func wrapped(binary, socket string, argv ...string) []string {
	return WrapperArgv(binary, socket, argv)
}

var python3Argv = []string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"}

// noLeftovers checks the data dir holds no temporary directory or file.
func noLeftovers(t *testing.T, dataDir string) {
	t.Helper()
	filepath.WalkDir(dataDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".") {
			t.Errorf("leftover %s", path)
		}
		return nil
	})
}

func TestInstallKernelspec(t *testing.T) {
	tests := []struct {
		name     string
		kernel   string
		setup    func(t *testing.T, data, sys string) // makes the specs
		wantOrig func(data, sys string) string
		wantArgv []string
		wantErr  error
	}{
		{
			name:     "system spec copied and wrapped",
			setup:    func(t *testing.T, data, sys string) { writeSpec(t, sys, "python3", systemPython3) },
			wantOrig: func(data, sys string) string { return filepath.Join(sys, "kernels", "python3") },
			wantArgv: python3Argv,
		},
		{
			name:     "builtin python3 when none is installed",
			setup:    func(t *testing.T, data, sys string) {},
			wantOrig: func(data, sys string) string { return Builtin },
			wantArgv: python3Argv,
		},
		{
			name:    "other kernels are not invented",
			kernel:  "ir",
			setup:   func(t *testing.T, data, sys string) {},
			wantErr: ErrKernelspecNotFound,
		},
		{
			name:   "names compared without regard to case",
			kernel: "bash",
			setup: func(t *testing.T, data, sys string) {
				writeSpec(t, sys, "Bash", map[string]any{"argv": []string{"python3", "-m", "bash_kernel", "-f", "{connection_file}"}, "display_name": "Bash", "language": "bash"})
			},
			wantOrig: func(data, sys string) string { return filepath.Join(sys, "kernels", "Bash") },
			wantArgv: []string{"python3", "-m", "bash_kernel", "-f", "{connection_file}"},
		},
		{
			name: "a wrapper without its metadata is not wrapped twice",
			setup: func(t *testing.T, data, sys string) {
				writeSpec(t, sys, "python3", map[string]any{"argv": wrapped("/old/nbsecrets", "/old.sock", python3Argv...), "display_name": "P", "language": "python"})
			},
			wantOrig: func(data, sys string) string { return filepath.Join(sys, "kernels", "python3") },
			wantArgv: python3Argv,
		},
		{
			name: "user spec in the data dir wrapped in place",
			setup: func(t *testing.T, data, sys string) {
				writeSpec(t, sys, "python3", map[string]any{"argv": []string{"/usr/bin/python3", "-m", "system"}, "display_name": "sys", "language": "python"})
				writeSpec(t, data, "python3", systemPython3)
			},
			wantOrig: func(data, sys string) string { return filepath.Join(data, "kernels", "python3") },
			wantArgv: python3Argv,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, sys := t.TempDir(), t.TempDir()
			tt.setup(t, data, sys)
			userBefore, _ := os.ReadFile(filepath.Join(data, "kernels", "python3", "kernel.json"))
			opts := KernelspecOptions{Name: tt.kernel, DataDir: data, Binary: testBinary, Socket: testSocket, SearchPath: []string{data, sys}}
			dir, err := InstallKernelspec(opts)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("InstallKernelspec = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			name := tt.kernel
			if name == "" {
				name = "python3"
			}
			if want := filepath.Join(data, "kernels", name); dir != want {
				t.Errorf("dir = %q, want %q", dir, want)
			}
			s, first := readKernelJSON(t, dir)
			if want := wrapped(testBinary, testSocket, tt.wantArgv...); !reflect.DeepEqual(s.Argv, want) {
				t.Errorf("argv = %q, want %q", s.Argv, want)
			}
			info := s.Metadata.Nbsecrets
			if info == nil {
				t.Fatalf("no metadata.nbsecrets")
			}
			if !reflect.DeepEqual(info.WrappedArgv, tt.wantArgv) || info.Original != tt.wantOrig(data, sys) {
				t.Errorf("metadata.nbsecrets = %+v, want wrapped %q original %q", info, tt.wantArgv, tt.wantOrig(data, sys))
			}
			if info.Original == filepath.Join(data, "kernels", "python3") {
				if !jsonEqual(t, info.ReplacedUserSpec, userBefore) {
					t.Errorf("replaced_user_spec = %s, want %s", info.ReplacedUserSpec, userBefore)
				}
			} else if len(info.ReplacedUserSpec) != 0 {
				t.Errorf("replaced_user_spec = %s, want none", info.ReplacedUserSpec)
			}
			if info.Original != Builtin {
				// Resources come along; the other fields are kept.
				for _, f := range []string{"logo-64x64.png", "logo-32x32.png", "sub/kernel.js"} {
					want, _ := os.ReadFile(filepath.Join(info.Original, f))
					if got, err := os.ReadFile(filepath.Join(dir, f)); err != nil || !bytes.Equal(got, want) {
						t.Errorf("%s: %q, %v; want a copy of the original", f, got, err)
					}
				}
			}
			if tt.name == "system spec copied and wrapped" || strings.HasPrefix(tt.name, "user spec") {
				if s.DisplayName != "Python 3 (ipykernel)" || s.Language != "python" || s.Env["FOO"] != "bar" || s.InterruptMode != "signal" || !s.Metadata.Debugger {
					t.Errorf("fields not kept: %+v", s)
				}
			}
			if info.Original == Builtin && (s.DisplayName != "Python 3 (ipykernel)" || s.Language != "python") {
				t.Errorf("builtin spec: %+v", s)
			}
			if fi, err := os.Stat(filepath.Join(dir, "kernel.json")); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("kernel.json mode: %v %v", fi.Mode(), err)
			}

			// Idempotent: the same install changes no byte.
			if _, err := InstallKernelspec(opts); err != nil {
				t.Fatal(err)
			}
			if _, again := readKernelJSON(t, dir); !bytes.Equal(again, first) {
				t.Errorf("second install changed kernel.json:\n%s\nthen\n%s", first, again)
			}
			// A new binary and socket are updated in place, never wrapped twice.
			opts.Binary, opts.Socket = "/new/nbsecrets", "/new/agent.sock"
			if _, err := InstallKernelspec(opts); err != nil {
				t.Fatal(err)
			}
			s2, _ := readKernelJSON(t, dir)
			if want := wrapped("/new/nbsecrets", "/new/agent.sock", tt.wantArgv...); !reflect.DeepEqual(s2.Argv, want) {
				t.Errorf("after update argv = %q, want %q", s2.Argv, want)
			}
			if !reflect.DeepEqual(s2.Metadata.Nbsecrets, info) {
				t.Errorf("after update metadata = %+v, want %+v", s2.Metadata.Nbsecrets, info)
			}
			noLeftovers(t, data)

			// Uninstall: the user's spec comes back, or the directory goes.
			if err := UninstallKernelspec(opts); err != nil {
				t.Fatal(err)
			}
			if len(userBefore) > 0 {
				after, err := os.ReadFile(filepath.Join(data, "kernels", "python3", "kernel.json"))
				if err != nil || !jsonEqual(t, after, userBefore) {
					t.Errorf("restored user spec = %s, %v; want %s", after, err, userBefore)
				}
				if _, err := os.Stat(filepath.Join(dir, "logo-64x64.png")); err != nil {
					t.Errorf("the user's logo is gone: %v", err)
				}
			} else if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after uninstall %s: %v, want it gone", dir, err)
			}
			noLeftovers(t, data)
			if err := UninstallKernelspec(opts); !errors.Is(err, ErrNotInstalled) {
				t.Errorf("second uninstall = %v, want ErrNotInstalled", err)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func TestInstallKernelspecShadowed(t *testing.T) {
	first, data, sys := t.TempDir(), t.TempDir(), t.TempDir()
	writeSpec(t, first, "python3", systemPython3)
	writeSpec(t, sys, "python3", systemPython3)
	_, err := InstallKernelspec(KernelspecOptions{DataDir: data, Binary: testBinary, Socket: testSocket, SearchPath: []string{first, data, sys}})
	if !errors.Is(err, ErrShadowed) || !strings.Contains(err.Error(), first) {
		t.Errorf("InstallKernelspec = %v, want ErrShadowed naming %s", err, first)
	}
	if _, err := os.Stat(filepath.Join(data, "kernels")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something was written: %v", err)
	}
	// A data dir outside the search path is the caller's business: the
	// first spec found is wrapped.
	elsewhere := t.TempDir()
	dir, err := InstallKernelspec(KernelspecOptions{DataDir: elsewhere, Binary: testBinary, Socket: testSocket, SearchPath: []string{first, data, sys}})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := readKernelJSON(t, dir); s.Metadata.Nbsecrets.Original != filepath.Join(first, "kernels", "python3") {
		t.Errorf("wrapped %s, want the first in the search path", s.Metadata.Nbsecrets.Original)
	}
}

func TestInstallKernelspecInvalid(t *testing.T) {
	data := t.TempDir()
	for _, o := range []KernelspecOptions{
		{Name: "../evil", DataDir: data, Binary: testBinary},
		{Name: "..", DataDir: data, Binary: testBinary},
		{Name: "a/b", DataDir: data, Binary: testBinary},
		{DataDir: data, Binary: "nbsecrets"},
		{DataDir: data, Binary: ""},
	} {
		o.SearchPath = []string{}
		if _, err := InstallKernelspec(o); err == nil {
			t.Errorf("InstallKernelspec(%+v) succeeded", o)
		}
	}
	// A broken spec in the data dir is an error, not overwritten.
	dir := filepath.Join(data, "kernels", "python3")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "kernel.json"), []byte("{not json"), 0o644)
	if _, err := InstallKernelspec(KernelspecOptions{DataDir: data, Binary: testBinary, SearchPath: []string{}}); err == nil {
		t.Error("installed over a broken kernel.json")
	}
}

func TestUninstallKernelspecNotOurs(t *testing.T) {
	data := t.TempDir()
	dir := writeSpec(t, data, "python3", systemPython3)
	before, _ := os.ReadFile(filepath.Join(dir, "kernel.json"))
	err := UninstallKernelspec(KernelspecOptions{DataDir: data})
	if !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "kernel.json") {
		t.Errorf("UninstallKernelspec = %v, want ErrNotInstalled naming the file", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "kernel.json")); !bytes.Equal(after, before) {
		t.Error("a spec nbsecrets did not install was changed")
	}
	if err := UninstallKernelspec(KernelspecOptions{Name: "nothing", DataDir: data}); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("uninstalling a missing spec = %v, want ErrNotInstalled", err)
	}
}

func TestKernelspecNoSocket(t *testing.T) {
	data := t.TempDir()
	dir, err := InstallKernelspec(KernelspecOptions{DataDir: data, Binary: testBinary, SearchPath: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := readKernelJSON(t, dir)
	if want := append([]string{testBinary, "inject", "--"}, python3Argv...); !reflect.DeepEqual(s.Argv, want) {
		t.Errorf("argv = %q, want %q", s.Argv, want)
	}
}

// TestKernelspecDefaults: the zero DataDir and SearchPath follow Jupyter's
// environment variables. Not parallel: it sets the environment.
func TestKernelspecDefaults(t *testing.T) {
	home, xdg, jdata, jpath := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	writeSpec(t, jpath, "mykernel", map[string]any{"argv": []string{"/bin/mykernel", "{connection_file}"}, "display_name": "Mine", "language": "x"})
	tests := []struct {
		name         string
		env          map[string]string
		wantDataDir  string
		wantSearched []string
	}{
		{"JUPYTER_DATA_DIR", map[string]string{"HOME": home, "XDG_DATA_HOME": xdg, "JUPYTER_DATA_DIR": jdata, "JUPYTER_PATH": ""},
			jdata, []string{jdata, "/usr/local/share/jupyter", "/usr/share/jupyter"}},
		{"XDG_DATA_HOME", map[string]string{"HOME": home, "XDG_DATA_HOME": xdg, "JUPYTER_DATA_DIR": "", "JUPYTER_PATH": ""},
			filepath.Join(xdg, "jupyter"), []string{filepath.Join(xdg, "jupyter"), "/usr/local/share/jupyter", "/usr/share/jupyter"}},
		{"HOME", map[string]string{"HOME": home, "XDG_DATA_HOME": "", "JUPYTER_DATA_DIR": "", "JUPYTER_PATH": ""},
			filepath.Join(home, ".local/share/jupyter"), []string{filepath.Join(home, ".local/share/jupyter"), "/usr/local/share/jupyter", "/usr/share/jupyter"}},
		{"JUPYTER_PATH first", map[string]string{"HOME": home, "XDG_DATA_HOME": "", "JUPYTER_DATA_DIR": jdata, "JUPYTER_PATH": jpath + "/:" + jdata + ":"},
			jdata, []string{jpath, jdata, "/usr/local/share/jupyter", "/usr/share/jupyter"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			if got := DefaultDataDir(); got != tt.wantDataDir {
				t.Errorf("DefaultDataDir() = %q, want %q", got, tt.wantDataDir)
			}
			if got := DefaultSearchPath(); !reflect.DeepEqual(got, tt.wantSearched) {
				t.Errorf("DefaultSearchPath() = %q, want %q", got, tt.wantSearched)
			}
		})
	}

	// Install with every default but the binary: JUPYTER_DATA_DIR is where
	// it goes, JUPYTER_PATH (which comes first for Jupyter) where the
	// original is found. Wrapping into JUPYTER_PATH's own dir is what works.
	t.Setenv("JUPYTER_DATA_DIR", jdata)
	t.Setenv("JUPYTER_PATH", jpath)
	if _, err := InstallKernelspec(KernelspecOptions{Name: "mykernel", Binary: testBinary}); !errors.Is(err, ErrShadowed) {
		t.Errorf("install under a JUPYTER_PATH spec = %v, want ErrShadowed", err)
	}
	t.Setenv("JUPYTER_PATH", jdata+":"+jpath)
	dir, err := InstallKernelspec(KernelspecOptions{Name: "mykernel", Binary: testBinary})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(jdata, "kernels", "mykernel"); dir != want {
		t.Errorf("installed in %q, want %q", dir, want)
	}
	s, _ := readKernelJSON(t, dir)
	if want := wrapped(testBinary, "", "/bin/mykernel", "{connection_file}"); !reflect.DeepEqual(s.Argv, want) {
		t.Errorf("argv = %q, want %q", s.Argv, want)
	}
	if err := UninstallKernelspec(KernelspecOptions{Name: "mykernel"}); err != nil {
		t.Fatal(err)
	}
}

const python = "/usr/bin/python3"

// requireJupyterClient skips unless /usr/bin/python3 has jupyter_client,
// or fails when NBSECRETS_REQUIRE_KERNEL=1.
func requireJupyterClient(t *testing.T) {
	t.Helper()
	if err := exec.Command(python, "-c", "import jupyter_client").Run(); err != nil {
		if os.Getenv("NBSECRETS_REQUIRE_KERNEL") == "1" {
			t.Fatalf("%s cannot import jupyter_client (%v) and NBSECRETS_REQUIRE_KERNEL=1; run make deps", python, err)
		}
		t.Skipf("%s has no jupyter_client (%v); make deps installs it", python, err)
	}
}

// TestKernelspecJupyterClient: the real jupyter_client, with
// JUPYTER_DATA_DIR set, finds the wrapper, and the command it builds has
// the connection file where ConnectionFile finds it.
func TestKernelspecJupyterClient(t *testing.T) {
	requireJupyterClient(t)
	home := t.TempDir()
	data := filepath.Join(home, "data")
	for k, v := range map[string]string{"HOME": home, "JUPYTER_DATA_DIR": data, "JUPYTER_PATH": "", "XDG_DATA_HOME": "", "IPYTHONDIR": filepath.Join(home, "ipython")} {
		t.Setenv(k, v)
	}
	for _, name := range []string{"python3", "nbs-test"} {
		t.Run(name, func(t *testing.T) {
			opts := KernelspecOptions{Name: name, Binary: testBinary, Socket: testSocket}
			if name != "python3" {
				// A user's own spec, wrapped in place.
				writeSpec(t, data, name, map[string]any{"argv": []string{python, "-m", "ipykernel_launcher", "-f", "{connection_file}"}, "display_name": "Mine", "language": "python"})
			}
			dir, err := InstallKernelspec(opts)
			if err != nil {
				t.Fatal(err)
			}
			s, _ := readKernelJSON(t, dir)
			script := `
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
name = sys.argv[1]
spec = KernelSpecManager().get_kernel_spec(name)
km = KernelManager(kernel_name=name)
km.connection_file = "/run/test/kernel-abc.json"
km._launch_args = {}
print(json.dumps({"argv": spec.argv, "resource_dir": spec.resource_dir, "cmd": km.format_kernel_cmd()}))
`
			out, err := exec.Command(python, "-c", script, name).Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					t.Fatalf("python: %v\n%s", err, ee.Stderr)
				}
				t.Fatal(err)
			}
			var got struct {
				Argv        []string `json:"argv"`
				ResourceDir string   `json:"resource_dir"`
				Cmd         []string `json:"cmd"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("python said %q: %v", out, err)
			}
			if !reflect.DeepEqual(got.Argv, s.Argv) || got.Argv[0] != testBinary || got.ResourceDir != dir {
				t.Errorf("jupyter_client sees argv %q in %s, want %q in %s", got.Argv, got.ResourceDir, s.Argv, dir)
			}
			if cf := ConnectionFile(got.Cmd[5:]); cf != "/run/test/kernel-abc.json" {
				t.Errorf("ConnectionFile(%q) = %q", got.Cmd, cf)
			}
			if err := UninstallKernelspec(opts); err != nil {
				t.Fatal(err)
			}
		})
	}
}
