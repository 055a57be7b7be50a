package kerneltest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

func run(t *testing.T, c *jupyter.Client, code string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := c.Run(ctx, code)
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Reply.Err(); err != nil {
		t.Fatalf("%s: %v %s", code, err, res.Reply.EValue)
	}
	return res.Stdout
}

func TestStart(t *testing.T) {
	dir := t.TempDir()
	k := kerneltest.Start(t, kerneltest.Options{Dir: dir, Env: []string{"NBS_EXTRA=extra"}})
	if want := filepath.Join(dir, "kernel-"+k.ID+".json"); k.ConnFile != want {
		t.Fatalf("ConnFile %q, want %q", k.ConnFile, want)
	}
	st, err := os.Stat(k.ConnFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("connection file mode %v", st.Mode())
	}
	info, err := jupyter.ReadConnectionFile(k.ConnFile)
	if err != nil {
		t.Fatal(err)
	}
	// ipykernel rewrites the file when it starts, without kernel_name.
	info.KernelName = k.Info.KernelName
	if *info != *k.Info || info.Key == "" || info.IP != "127.0.0.1" {
		t.Fatalf("connection file %+v, Info %+v", info, k.Info)
	}
	c := k.Client(t)
	out := run(t, c, "import os, sys\nprint(os.getpid(), os.getpgid(0), sys.executable, os.environ['JUPYTER_RUNTIME_DIR'], os.environ['NBS_EXTRA'])")
	want := strconv.Itoa(k.PID()) + " " + strconv.Itoa(k.PID()) + " " + kerneltest.PythonPath + " " + dir + " extra\n"
	if out != want {
		t.Fatalf("kernel says %q, want %q", out, want)
	}
}

// The prefix runs first and the kernel after it, as with an injector that
// execs the kernel: same PID, same process group.
func TestPrefix(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{Prefix: []string{"/usr/bin/env", "NBS_FROM_PREFIX=yes"}})
	out := run(t, k.Client(t), "import os\nprint(os.environ.get('NBS_FROM_PREFIX'), os.getpid())")
	if want := "yes " + strconv.Itoa(k.PID()) + "\n"; out != want {
		t.Fatalf("kernel says %q, want %q", out, want)
	}
}

func TestNoWaitFailingPrefix(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{Prefix: []string{"/bin/sh", "-c", "echo injector failed >&2; exit 3", "--"}, NoWait: true})
	select {
	case <-k.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("the failing prefix did not exit")
	}
	var ee interface{ ExitCode() int }
	if err := k.ExitErr(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("ExitErr = %v, want exit status 3", k.ExitErr())
	}
	if !strings.Contains(k.Output(), "injector failed") {
		t.Fatalf("output %q", k.Output())
	}
}

// Kill takes the whole process group, including the kernel's children.
func TestKillProcessGroup(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	out := run(t, c, "import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint(p.pid)")
	child, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	k.Kill()
	select {
	case <-k.Exited():
	default:
		t.Fatal("Kill returned before the kernel exited")
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			t.Fatalf("the kernel's child %d survived Kill", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func TestRestart(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	run(t, c, "state = 1")
	pid, ports := k.PID(), *k.Info
	k.Restart(t)
	if k.PID() == pid {
		t.Fatal("restart kept the process")
	}
	if *k.Info != ports {
		t.Fatalf("restart changed the connection: %+v -> %+v", ports, *k.Info)
	}
	if out := run(t, k.Client(t), "print('state' in globals())"); out != "False\n" {
		t.Fatalf("after restart: %q", out)
	}
	// After a Kill, Restart starts it again too.
	k.Kill()
	k.Restart(t)
	run(t, k.Client(t), "pass")
}

// RestartNewPorts starts a new process on the same connection file path
// with five ports the old one did not have, and the key as asked.
func TestRestartNewPorts(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts kerneltest.NewPorts
	}{
		{"rewrite", kerneltest.NewPorts{}},
		{"remove_new_key", kerneltest.NewPorts{Key: true, Remove: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := kerneltest.Start(t, kerneltest.Options{})
			run(t, k.Client(t), "state = 1")
			id, file, pid, old := k.ID, k.ConnFile, k.PID(), *k.Info
			k.RestartNewPorts(t, tc.opts)
			if k.ID != id || k.ConnFile != file {
				t.Fatalf("kernel %s %s became %s %s", id, file, k.ID, k.ConnFile)
			}
			if k.PID() == pid {
				t.Fatal("restart kept the process")
			}
			now := *k.Info
			oldPorts := map[int]bool{old.ShellPort: true, old.IOPubPort: true, old.StdinPort: true, old.ControlPort: true, old.HBPort: true}
			for _, p := range []int{now.ShellPort, now.IOPubPort, now.StdinPort, now.ControlPort, now.HBPort} {
				if oldPorts[p] {
					t.Errorf("port %d kept: %+v -> %+v", p, old, now)
				}
			}
			if keyChanged := now.Key != old.Key; keyChanged != tc.opts.Key || now.Key == "" {
				t.Errorf("key changed %v, want %v", keyChanged, tc.opts.Key)
			}
			info, err := jupyter.ReadConnectionFile(file)
			if err != nil {
				t.Fatal(err)
			}
			info.KernelName = now.KernelName // ipykernel rewrites the file without it
			if *info != now {
				t.Errorf("connection file %+v, Info %+v", info, now)
			}
			if out := run(t, k.Client(t), "print('state' in globals())"); out != "False\n" {
				t.Fatalf("after restart: %q", out)
			}
		})
	}
}
