package injector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Kernelspec errors.
var (
	// ErrKernelspecNotFound: no kernelspec of that name in the search path
	// (and it is not python3, which has a built-in spec).
	ErrKernelspecNotFound = errors.New("injector: kernelspec not found")
	// ErrNotInstalled: uninstalling a kernelspec nbsecrets did not install.
	ErrNotInstalled = errors.New("injector: kernelspec not installed by nbsecrets")
	// ErrShadowed: a directory Jupyter searches before the data dir holds a
	// kernelspec of the same name, so the wrapper would never be used.
	ErrShadowed = errors.New("injector: kernelspec shadowed")
)

// MetadataKey is the key under a kernel.json's "metadata" where
// InstallKernelspec records what it wrapped (a WrapInfo).
const MetadataKey = "nbsecrets"

// Builtin is WrapInfo.Original for ipykernel's built-in python3 spec.
const Builtin = "builtin"

// builtinPython3 is what ipykernel 6 gives jupyter_client for python3 when
// no kernelspec is installed, with Debian's interpreter.
var builtinPython3 = map[string]any{
	"argv":         []string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
	"display_name": "Python 3 (ipykernel)",
	"language":     "python",
	"metadata":     map[string]any{"debugger": true},
}

// KernelspecOptions say which kernelspec to wrap and where.
type KernelspecOptions struct {
	// Name is the kernelspec's name. Zero means "python3".
	Name string
	// DataDir is the Jupyter data directory the wrapper goes into (as
	// DataDir/kernels/Name). Zero means DefaultDataDir().
	DataDir string
	// Binary is the absolute path of the nbsecrets binary the wrapper runs.
	// Required for install.
	Binary string
	// Socket is the agent's socket the wrapper passes as --socket. Zero
	// means no --socket: inject then uses $NBSECRETS_SOCKET, else the
	// default state directory's socket.
	Socket string
	// SearchPath is the Jupyter data directories (each holding kernels/) in
	// which to look for the original spec, first first. Nil means
	// DefaultSearchPath().
	SearchPath []string
}

// WrapInfo is what InstallKernelspec records under metadata.nbsecrets.
type WrapInfo struct {
	// WrappedArgv is the original spec's argv, what inject runs.
	WrappedArgv []string `json:"wrapped_argv"`
	// Original is the directory of the spec that was wrapped, or Builtin.
	Original string `json:"original"`
	// ReplacedUserSpec is the kernel.json that was in the data dir before
	// the wrapper replaced it, restored by UninstallKernelspec; absent when
	// the wrapper has a directory of its own.
	ReplacedUserSpec json.RawMessage `json:"replaced_user_spec,omitempty"`
}

// DefaultDataDir is Jupyter's user data directory on Linux:
// $JUPYTER_DATA_DIR, else $XDG_DATA_HOME/jupyter, else ~/.local/share/jupyter.
func DefaultDataDir() string {
	if d := os.Getenv("JUPYTER_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "jupyter")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/"
	}
	return filepath.Join(home, ".local", "share", "jupyter")
}

// DefaultSearchPath is Jupyter's data path on Linux, as jupyter_core builds
// it: the $JUPYTER_PATH entries, DefaultDataDir(), /usr/local/share/jupyter,
// /usr/share/jupyter. (It does not know the Python environment's own
// sys.prefix directory, which for Debian's /usr/bin/python3 is
// /usr/share/jupyter anyway.)
func DefaultSearchPath() []string {
	var dirs []string
	for _, d := range filepath.SplitList(os.Getenv("JUPYTER_PATH")) {
		if d = strings.TrimRight(d, "/"); d != "" {
			dirs = append(dirs, d)
		}
	}
	dirs = append(dirs, DefaultDataDir(), "/usr/local/share/jupyter", "/usr/share/jupyter")
	var out []string
	for _, d := range dirs {
		if !containsDir(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// validKernelName is jupyter_client's rule (it lowercases names first).
var validKernelName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

func (o KernelspecOptions) withDefaults() (KernelspecOptions, error) {
	if o.Name == "" {
		o.Name = "python3"
	}
	if !validKernelName.MatchString(o.Name) || o.Name == "." || o.Name == ".." {
		return o, fmt.Errorf("invalid kernelspec name %q: letters, digits, '.', '_' and '-' only", o.Name)
	}
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir()
	}
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return o, fmt.Errorf("data dir: %w", err)
	}
	o.DataDir = abs
	if o.SearchPath == nil {
		o.SearchPath = DefaultSearchPath()
	}
	return o, nil
}

// InstallKernelspec writes DataDir/kernels/Name, a kernelspec that runs the
// original spec's argv through `Binary inject --socket Socket --`, and
// returns its directory. The original is the spec of that name already in
// DataDir (wrapped in place, its kernel.json kept in the metadata for
// UninstallKernelspec), else the first in SearchPath (copied with its other
// files: logos...), else for python3 ipykernel's built-in spec. Installing
// over an nbsecrets wrapper updates Binary and Socket in place and never
// wraps twice. It refuses (ErrShadowed) when a directory Jupyter searches
// before DataDir holds a spec of that name, since Jupyter would never run
// the wrapper.
func InstallKernelspec(opts KernelspecOptions) (path string, err error) {
	o, err := opts.withDefaults()
	if err != nil {
		return "", err
	}
	if !filepath.IsAbs(o.Binary) {
		return "", fmt.Errorf("nbsecrets binary %q: not an absolute path", o.Binary)
	}
	kernelsDir := filepath.Join(o.DataDir, "kernels")
	if err := checkShadowed(o); err != nil {
		return "", err
	}

	if dir := findSpecDir(kernelsDir, o.Name); dir != "" {
		return dir, wrapInPlace(dir, o)
	}

	orig, spec, err := findOriginal(o)
	if err != nil {
		return "", err
	}
	info := WrapInfo{WrappedArgv: baseArgv(spec), Original: orig}
	if len(info.WrappedArgv) == 0 {
		return "", fmt.Errorf("kernelspec %s: no argv", orig)
	}
	b, err := wrapSpec(spec, info, o)
	if err != nil {
		return "", err
	}

	// Build the whole directory aside (outside kernels/, where Jupyter
	// would list it) and rename it into place.
	if err := os.MkdirAll(kernelsDir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", kernelsDir, err)
	}
	tmp, err := os.MkdirTemp(o.DataDir, ".nbsecrets-kernelspec-*")
	if err != nil {
		return "", fmt.Errorf("creating the kernelspec: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("creating the kernelspec: %w", err)
	}
	if orig != Builtin {
		if err := copyResources(orig, tmp); err != nil {
			return "", fmt.Errorf("copying %s: %w", orig, err)
		}
	}
	if err := writeFileAtomic(filepath.Join(tmp, "kernel.json"), b, 0o644); err != nil {
		return "", fmt.Errorf("writing kernel.json: %w", err)
	}
	dir := filepath.Join(kernelsDir, o.Name)
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("installing the kernelspec at %s: %w", dir, err)
	}
	return dir, nil
}

// UninstallKernelspec undoes InstallKernelspec: it restores the user spec
// the wrapper replaced, or removes the wrapper's directory. A spec nbsecrets
// did not install is left alone (ErrNotInstalled).
func UninstallKernelspec(opts KernelspecOptions) error {
	o, err := opts.withDefaults()
	if err != nil {
		return err
	}
	kernelsDir := filepath.Join(o.DataDir, "kernels")
	dir := findSpecDir(kernelsDir, o.Name)
	if dir == "" {
		return fmt.Errorf("%w: no kernelspec %q in %s", ErrNotInstalled, o.Name, kernelsDir)
	}
	kj := filepath.Join(dir, "kernel.json")
	raw, err := os.ReadFile(kj)
	if err != nil {
		return fmt.Errorf("reading %s: %w", kj, err)
	}
	spec, err := parseSpec(raw)
	if err != nil {
		return fmt.Errorf("reading %s: %w", kj, err)
	}
	info, ours := wrapInfo(spec)
	if !ours {
		return fmt.Errorf("%w: %s has no metadata.%s; left as it is", ErrNotInstalled, kj, MetadataKey)
	}
	if len(info.ReplacedUserSpec) > 0 && string(info.ReplacedUserSpec) != "null" {
		var buf bytes.Buffer
		if err := json.Indent(&buf, info.ReplacedUserSpec, "", " "); err != nil {
			return fmt.Errorf("restoring the replaced kernelspec: %w", err)
		}
		buf.WriteByte('\n')
		if err := writeFileAtomic(kj, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("restoring %s: %w", kj, err)
		}
		return nil
	}
	// Move it out of kernels/ in one step, then delete.
	aside, err := os.MkdirTemp(o.DataDir, ".nbsecrets-removed-*")
	if err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	if err := os.Rename(dir, filepath.Join(aside, o.Name)); err != nil {
		_ = os.Remove(aside)
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	if err := os.RemoveAll(aside); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// wrapInPlace wraps the spec already in the data dir: an nbsecrets wrapper
// gets the new binary and socket, a user's spec is wrapped and kept in the
// metadata.
func wrapInPlace(dir string, o KernelspecOptions) error {
	kj := filepath.Join(dir, "kernel.json")
	raw, err := os.ReadFile(kj)
	if err != nil {
		return fmt.Errorf("reading %s: %w", kj, err)
	}
	spec, err := parseSpec(raw)
	if err != nil {
		return fmt.Errorf("reading %s: %w", kj, err)
	}
	info, ours := wrapInfo(spec)
	if !ours {
		var compact bytes.Buffer
		if err := json.Compact(&compact, raw); err != nil {
			return fmt.Errorf("reading %s: %w", kj, err)
		}
		info = WrapInfo{WrappedArgv: baseArgv(spec), Original: dir, ReplacedUserSpec: compact.Bytes()}
	}
	if len(info.WrappedArgv) == 0 {
		return fmt.Errorf("kernelspec %s: no argv", kj)
	}
	b, err := wrapSpec(spec, info, o)
	if err != nil {
		return err
	}
	if bytes.Equal(b, raw) {
		return nil
	}
	if err := writeFileAtomic(kj, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", kj, err)
	}
	return nil
}

// checkShadowed fails when a directory before DataDir in the search path
// holds a spec of that name. A DataDir outside the search path is the
// caller's choice (Jupyter sees it only if told to) and is not checked.
func checkShadowed(o KernelspecOptions) error {
	i := slices.IndexFunc(o.SearchPath, func(d string) bool { return sameDir(d, o.DataDir) })
	if i < 0 {
		return nil
	}
	for _, d := range o.SearchPath[:i] {
		if found := findSpecDir(filepath.Join(d, "kernels"), o.Name); found != "" {
			return fmt.Errorf("%w: Jupyter finds %s before %s (earlier in its data path, JUPYTER_PATH); install into that data dir (--data-dir %s) or remove it",
				ErrShadowed, found, filepath.Join(o.DataDir, "kernels", o.Name), d)
		}
	}
	return nil
}

// findOriginal finds the spec to wrap in the search path (DataDir left out:
// the caller looked there), else ipykernel's built-in python3.
func findOriginal(o KernelspecOptions) (dir string, spec map[string]json.RawMessage, err error) {
	var searched []string
	for _, d := range o.SearchPath {
		if sameDir(d, o.DataDir) {
			continue
		}
		kd := filepath.Join(d, "kernels")
		searched = append(searched, kd)
		found := findSpecDir(kd, o.Name)
		if found == "" {
			continue
		}
		kj := filepath.Join(found, "kernel.json")
		raw, err := os.ReadFile(kj)
		if err != nil {
			return "", nil, fmt.Errorf("reading %s: %w", kj, err)
		}
		spec, err := parseSpec(raw)
		if err != nil {
			return "", nil, fmt.Errorf("reading %s: %w", kj, err)
		}
		return found, spec, nil
	}
	if strings.EqualFold(o.Name, "python3") {
		b, _ := json.Marshal(builtinPython3)
		spec, err := parseSpec(b)
		return Builtin, spec, err
	}
	return "", nil, fmt.Errorf("%w: no kernelspec %q in %s or %s", ErrKernelspecNotFound, o.Name,
		filepath.Join(o.DataDir, "kernels"), strings.Join(searched, ", "))
}

// findSpecDir returns the directory of kernelsDir holding the spec name
// (a directory with a kernel.json), compared without regard to case as
// jupyter_client does, an exact match first; "" when there is none.
func findSpecDir(kernelsDir, name string) string {
	isSpec := func(dir string) bool {
		fi, err := os.Stat(filepath.Join(dir, "kernel.json"))
		return err == nil && fi.Mode().IsRegular()
	}
	if dir := filepath.Join(kernelsDir, name); isSpec(dir) {
		return dir
	}
	entries, err := os.ReadDir(kernelsDir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if strings.EqualFold(e.Name(), name) {
			if dir := filepath.Join(kernelsDir, e.Name()); isSpec(dir) {
				return dir
			}
		}
	}
	return ""
}

// parseSpec reads a kernel.json, keeping every field as it is.
func parseSpec(raw []byte) (map[string]json.RawMessage, error) {
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, fmt.Errorf("not a kernelspec: %w", err)
	}
	if spec == nil {
		return nil, errors.New("not a kernelspec: not a JSON object")
	}
	return spec, nil
}

// specArgv returns a spec's argv, nil when it has none.
func specArgv(spec map[string]json.RawMessage) []string {
	var argv []string
	if err := json.Unmarshal(spec["argv"], &argv); err != nil {
		return nil
	}
	return argv
}

// wrapInfo returns a spec's metadata.nbsecrets and whether it has one.
func wrapInfo(spec map[string]json.RawMessage) (WrapInfo, bool) {
	var md map[string]json.RawMessage
	if err := json.Unmarshal(spec["metadata"], &md); err != nil || md[MetadataKey] == nil {
		return WrapInfo{}, false
	}
	var info WrapInfo
	if err := json.Unmarshal(md[MetadataKey], &info); err != nil {
		return WrapInfo{}, false
	}
	return info, true
}

// baseArgv returns the argv a spec runs without any nbsecrets wrapper
// around it: the recorded one, or what follows "--" in an argv of the form
// `.../nbsecrets inject ... -- ARGV...` that lost its metadata.
func baseArgv(spec map[string]json.RawMessage) []string {
	if info, ok := wrapInfo(spec); ok && len(info.WrappedArgv) > 0 {
		return info.WrappedArgv
	}
	argv := specArgv(spec)
	if len(argv) >= 2 && argv[1] == "inject" && strings.HasPrefix(filepath.Base(argv[0]), "nbsecrets") {
		for i := 2; i < len(argv); i++ {
			if argv[i] == "--" {
				if len(argv) > i+1 {
					return argv[i+1:]
				}
				break
			}
		}
	}
	return argv
}

// WrapperArgv is the argv of a wrapping kernelspec: binary inject
// [--socket socket] -- argv...
func WrapperArgv(binary, socket string, argv []string) []string {
	out := []string{binary, "inject"}
	if socket != "" {
		out = append(out, "--socket", socket)
	}
	out = append(out, "--")
	return append(out, argv...)
}

// wrapSpec returns the wrapper's kernel.json: spec with the wrapper argv and
// info in metadata, every other field kept.
func wrapSpec(spec map[string]json.RawMessage, info WrapInfo, o KernelspecOptions) ([]byte, error) {
	out := make(map[string]any, len(spec)+1)
	for k, v := range spec {
		out[k] = v
	}
	out["argv"] = WrapperArgv(o.Binary, o.Socket, info.WrappedArgv)
	md := map[string]any{}
	var old map[string]json.RawMessage
	if json.Unmarshal(spec["metadata"], &old) == nil {
		for k, v := range old {
			md[k] = v
		}
	}
	md[MetadataKey] = info
	out["metadata"] = md
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		return nil, fmt.Errorf("encoding kernel.json: %w", err)
	}
	return buf.Bytes(), nil
}

// copyResources copies the files of a spec directory (logos, kernel.js...)
// but kernel.json into dst, following symbolic links to files.
func copyResources(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if rel == "." || rel == "kernel.json" {
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		fi, err := os.Stat(path) // follows a link
		if err != nil || !fi.Mode().IsRegular() {
			return nil // a dangling link, a socket...: not a resource
		}
		return copyFile(path, target, fi.Mode().Perm())
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// writeFileAtomic writes b to path with mode perm through a temporary file
// in the same directory and a rename, so Jupyter never reads half a file.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	err = errors.Join(err, tmp.Chmod(perm), tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func containsDir(dirs []string, d string) bool {
	for _, x := range dirs {
		if filepath.Clean(x) == filepath.Clean(d) {
			return true
		}
	}
	return false
}
