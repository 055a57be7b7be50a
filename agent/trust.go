package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// maxConnFileSize bounds a connection file (Jupyter's are about 300 bytes).
const maxConnFileSize = 64 << 10

// errUntrusted is a connection file, or its directory, that the agent does
// not believe.
var errUntrusted = errors.New("connection file refused")

// kernelTrust decides which kernels the agent believes.
//
// A connection file is only a claim that a kernel listens somewhere, and
// the agent sends whatever kernel it names every value of the workspace. So
// before it sends anything:
//
//   - the directory holding the file (a runtime dir, or an announced
//     file's directory) must be owned by the agent's uid and writable by
//     nobody else (Jupyter makes its runtime dirs 0700), or be a sticky
//     directory owned by root or the agent's uid, such as /tmp: in a
//     directory others can write without the sticky bit, another user can
//     rename the kernel's file away; in a sticky one only its owner can,
//     and Jupyter's own tools write connection files there
//     (jupyter_kernel_test's kernels live in /tmp/tmpXXXX.json), so
//     refusing it would refuse real kernels. What anyone can plant in such
//     a directory fails the next check: the file must be the agent's uid's;
//   - the file must be a regular file (not a symlink, FIFO or device: a
//     FIFO named kernel-x.json used to block discovery for good), owned by
//     the agent's uid, with no group or other permission bits (Jupyter
//     writes 0600), at most 64 KiB; it is opened with O_NOFOLLOW|O_NONBLOCK
//     and checked again on the open descriptor;
//   - its endpoints must be loopback TCP, or ipc in the file's own
//     directory, unless Config.AllowRemoteKernels;
//   - and, at dial time, the process listening on each port must run as
//     the agent's uid (jupyter.DialPolicy: /proc/net/tcp, SO_PEERCRED for
//     ipc), checked after connecting and before the first byte is sent.
//
// A refused file is logged once per file and reason (the file, never its
// content), its kernel is not served, and the agent goes on. What is not
// defended here: a process of the same uid, which can read the kernel's
// environment anyway; and an ancestor directory of the runtime dir that
// others can write (they could swap the runtime dir itself), which an
// administrator must not set up.
//
// The uid expected is always the agent's own (effective) uid.
type kernelTrust struct {
	allowRemote bool // Config.AllowRemoteKernels
}

func (kernelTrust) uid() uint32 { return uint32(os.Geteuid()) }

// checkDir refuses a directory that is not owned by the agent's uid or that
// group or others can write, except a sticky one (such as /tmp) owned by
// root or the agent's uid.
func (kt kernelTrust) checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: directory %s: %w", errUntrusted, dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%w: %s is not a directory", errUntrusted, dir)
	case !ok:
		return fmt.Errorf("%w: directory %s: no owner information", errUntrusted, dir)
	}
	sticky := fi.Mode()&os.ModeSticky != 0
	switch {
	case sticky && (st.Uid == 0 || st.Uid == kt.uid()):
		return nil // /tmp: others may add files, not replace the agent's
	case st.Uid != kt.uid():
		return fmt.Errorf("%w: directory %s is owned by uid %d, not the agent's %d", errUntrusted, dir, st.Uid, kt.uid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%w: directory %s is writable by group or others (%s)", errUntrusted, dir, fi.Mode())
	}
	return nil
}

// read returns the content of a connection file the agent may believe. An
// error wrapping errUntrusted is a refusal; os.ErrNotExist and an empty
// file are a file not there (yet).
func (kt kernelTrust) read(file string) ([]byte, error) {
	if err := kt.checkDir(filepath.Dir(file)); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(file)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file (%s)", errUntrusted, fileType(fi.Mode()))
	}
	// O_NONBLOCK: a FIFO swapped in since the Lstat must not block the open.
	fd, err := unix.Open(file, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%w: a symlink", errUntrusted)
		}
		return nil, &os.PathError{Op: "open", Path: file, Err: err}
	}
	f := os.NewFile(uintptr(fd), file)
	defer f.Close()
	fi, err = f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%w: not a regular file (%s)", errUntrusted, fileType(fi.Mode()))
	case !ok:
		return nil, fmt.Errorf("%w: no owner information", errUntrusted)
	case st.Uid != kt.uid():
		return nil, fmt.Errorf("%w: owned by uid %d, not the agent's %d", errUntrusted, st.Uid, kt.uid())
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%w: group or others have access (mode %04o; Jupyter writes 0600)", errUntrusted, fi.Mode().Perm())
	case fi.Size() > maxConnFileSize:
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errUntrusted, fi.Size(), maxConnFileSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxConnFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConnFileSize {
		return nil, fmt.Errorf("%w: more than %d bytes", errUntrusted, maxConnFileSize)
	}
	// A file being written may not parse yet: that is for the dial to
	// report. One that parses must name endpoints the agent may dial.
	var info jupyter.ConnectionInfo
	if json.Unmarshal(b, &info) == nil && info.Validate() == nil {
		if err := kt.dialPolicy(file).CheckEndpoints(&info); err != nil {
			return nil, fmt.Errorf("%w: %w", errUntrusted, err)
		}
	}
	return b, nil
}

// dialPolicy is what the dial of the kernel of file must check.
func (kt kernelTrust) dialPolicy(file string) jupyter.DialPolicy {
	return jupyter.DialPolicy{AllowRemote: kt.allowRemote, IPCDir: filepath.Dir(file), PeerUID: kt.uid()}
}

func fileType(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "a symlink"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	}
	return m.Type().String()
}

// refuse logs a refused connection file once per reason and stops serving
// the kernel it named, if it was served.
func (ks *kernels) refuse(file string, why error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.refused == nil {
		ks.refused = map[string]string{}
	}
	if ks.refused[file] != why.Error() {
		ks.refused[file] = why.Error()
		ks.log.Warn("connection file refused; its kernel is not served", "kernel", kernelID(file), "file", file, "reason", why)
	}
	if w, ok := ks.workers[file]; ok {
		w.cancel()
		delete(ks.workers, file)
	}
}
