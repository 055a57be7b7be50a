package jupyter_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbsecrets/nbsecrets/internal/kerneltest"
	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// testCtx returns a context bounded well above anything a healthy kernel
// needs, so a hang fails the test instead of the whole run.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every step until it returns nil or total has passed.
func waitFor(t *testing.T, total, step time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(step)
	}
}

func TestKernelInfo(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ki, err := c.KernelInfo(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if ki.Status != "ok" || ki.Implementation != "ipython" || ki.LanguageInfo.Name != "python" {
		t.Fatalf("kernel_info = %+v", ki)
	}
	if !strings.HasPrefix(ki.ProtocolVersion, "5.") {
		t.Fatalf("protocol_version = %q", ki.ProtocolVersion)
	}
	t.Logf("kernel: %s %s, protocol %s, python %s, features %q",
		ki.Implementation, ki.ImplementationVersion, ki.ProtocolVersion, ki.LanguageInfo.Version, ki.SupportedFeatures)
}

func TestRunCollectsOutput(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ctx := testCtx(t)
	res, err := c.Run(ctx, "import sys\nprint('hello', 6*7)\nprint('oops', file=sys.stderr)\n'result'")
	if err != nil {
		t.Fatal(err)
	}
	if res.Reply.Err() != nil {
		t.Fatalf("reply: %v", res.Reply.Err())
	}
	if res.Stdout != "hello 42\n" || res.Stderr != "oops\n" {
		t.Fatalf("stdout %q stderr %q", res.Stdout, res.Stderr)
	}
	var types []string
	for _, m := range res.Outputs {
		types = append(types, m.Header.MsgType)
	}
	if !strings.Contains(strings.Join(types, ","), "execute_result") {
		t.Fatalf("outputs %v lack execute_result", types)
	}

	res, err = c.Run(ctx, "raise KeyError('k')")
	if err != nil {
		t.Fatal(err)
	}
	var ee *jupyter.ExecError
	if !errors.As(res.Reply.Err(), &ee) || ee.EName != "KeyError" {
		t.Fatalf("reply err = %v, want KeyError", res.Reply.Err())
	}
	if strings.Contains(ee.Error(), "'k'") {
		t.Fatalf("ExecError message %q carries the exception value", ee.Error())
	}
}

// A silent execute changes the environment but not execution_count or
// history.
func TestSilentExecute(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ctx := testCtx(t)
	before, err := c.Run(ctx, "1")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Execute(ctx, jupyter.Shell, "import os; os.environ['NBS_SILENT_MARK'] = 'v1'", jupyter.SilentOptions())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	after, err := c.Run(ctx, "import os, subprocess\n"+
		"print(os.environ['NBS_SILENT_MARK'], subprocess.run(['printenv', 'NBS_SILENT_MARK'], capture_output=True, text=True).stdout.strip(), "+
		"any('NBS_SILENT' + '_MARK' in s for s in In[:-1]), len(In))")
	if err != nil {
		t.Fatal(err)
	}
	if after.Reply.ExecutionCount != before.Reply.ExecutionCount+1 {
		t.Fatalf("execution_count went %d -> %d across one silent execute and one Run", before.Reply.ExecutionCount, after.Reply.ExecutionCount)
	}
	// In holds '' plus the two Run cells.
	if got, want := after.Stdout, "v1 v1 False 3\n"; got != want {
		t.Fatalf("kernel says %q, want %q", got, want)
	}
}

// An execute on control replies while a long cell runs on shell.
func TestControlExecuteDuringBusyShell(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ctx := testCtx(t)
	iopub := c.IOPub()

	type result struct {
		rep *jupyter.ExecuteReply
		err error
	}
	shellDone := make(chan result, 1)
	go func() { // ends with the request; ctx bounds it
		rep, err := c.Execute(ctx, jupyter.Shell, "import time; time.sleep(3)", jupyter.ExecuteOptions{StoreHistory: true})
		shellDone <- result{rep, err}
	}()
	// Wait until the kernel has begun the cell.
	for started := false; !started; {
		select {
		case m := <-iopub:
			started = m.Header.MsgType == "execute_input" && strings.Contains(string(m.Content), "time.sleep(3)")
		case <-ctx.Done():
			t.Fatal("the sleeping cell never started")
		}
	}
	sent := time.Now()
	rep, err := c.Execute(ctx, jupyter.Control, "import os; os.environ['NBS_CTRL'] = '1'", jupyter.SilentOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control execute replied in %v while the shell cell ran", time.Since(sent))
	if rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	select {
	case r := <-shellDone:
		t.Fatalf("the shell cell finished (%v, %v) before control replied", r.rep, r.err)
	default:
	}
	r := <-shellDone
	if r.err != nil || r.rep.Status != "ok" {
		t.Fatalf("shell cell: %+v, %v", r.rep, r.err)
	}
	res, err := c.Run(ctx, "import os; print(os.environ.get('NBS_CTRL'))")
	if err != nil || res.Stdout != "1\n" {
		t.Fatalf("after control execute: %+v, %v", res, err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ctx := testCtx(t)
	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() { // ends with the request
			ch := jupyter.Shell
			if i%2 == 1 {
				ch = jupyter.Control
			}
			rep, err := c.Execute(ctx, ch, "x = "+strconv.Itoa(i), jupyter.SilentOptions())
			if err == nil {
				err = rep.Err()
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestCreateSubshellUnsupported(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ki, err := c.KernelInfo(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.CreateSubshell(testCtx(t))
	if ki.Supports(jupyter.FeatureSubshells) {
		if err != nil || id == "" {
			t.Fatalf("CreateSubshell = %q, %v", id, err)
		}
		rep, err := c.Execute(testCtx(t), jupyter.Shell, "y = 1", jupyter.ExecuteOptions{Silent: true, SubshellID: id})
		if err != nil || rep.Err() != nil {
			t.Fatalf("execute in subshell: %v %v", rep, err)
		}
		return
	}
	if !errors.Is(err, jupyter.ErrUnsupported) {
		t.Fatalf("CreateSubshell on %s %s = %q, %v; want ErrUnsupported", ki.Implementation, ki.ImplementationVersion, id, err)
	}
}

// The kernel refuses a request signed with the wrong key: no reply comes.
func TestKernelRefusesBadSignature(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	info := *k.Info
	info.Key = "not-the-key"
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := jupyter.Dial(ctx, &info)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.KernelInfo(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("KernelInfo with a wrong key = %v, want a deadline error", err)
	}
}

// Replies signed with a key we do not hold are refused by the client.
func TestClientRefusesBadSignature(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	good := k.Client(t)
	// Same key length, different bytes: the kernel would refuse our
	// requests too, so send with the good client and watch a second one
	// with the wrong key on iopub.
	info := *k.Info
	info.Key = strings.Repeat("x", len(info.Key))
	ctx := testCtx(t)
	bad, err := jupyter.Dial(ctx, &info)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	waitFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if _, err := good.Run(ctx, "pass"); err != nil {
			return err
		}
		if n := bad.Stats().BadMessages; n == 0 {
			return errors.New("no message refused yet")
		}
		return nil
	})
	select {
	case m := <-bad.IOPub():
		t.Fatalf("a client with the wrong key delivered %s", m.Header.MsgType)
	default:
	}
}

func TestDialAbsentKernel(t *testing.T) {
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	info := &jupyter.ConnectionInfo{IP: "127.0.0.1", ShellPort: port, IOPubPort: port, StdinPort: port, ControlPort: port, HBPort: port, Key: "k"}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := jupyter.Dial(ctx, info)
	if err == nil {
		c.Close()
		t.Fatal("Dial to an absent kernel succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Dial took %v past a 300ms deadline", d)
	}
}

// A peer that accepts TCP but never speaks ZMTP (as a stopped process's
// listening socket does) must not hang Dial.
func TestDialSilentPeer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	info := &jupyter.ConnectionInfo{IP: "127.0.0.1", ShellPort: port, IOPubPort: port, StdinPort: port, ControlPort: port, HBPort: port, Key: "k"}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := jupyter.Dial(ctx, info)
	if err == nil {
		c.Close()
		t.Fatal("Dial to a silent peer succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want a deadline error", err)
	}
}

// Request honours its deadline against a kernel that does not answer (a
// stopped process), and fails fast once the kernel is dead.
func TestRequestDeadlineAndDeadKernel(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)

	if err := k.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Execute(ctx, jupyter.Control, "pass", jupyter.SilentOptions())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute on a stopped kernel = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Execute took %v past a 300ms deadline", d)
	}
	if err := k.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	k.Kill()
	select {
	case <-c.Done():
	case <-testCtx(t).Done():
		t.Fatal("client did not notice the kernel's death")
	}
	if !errors.Is(c.Err(), jupyter.ErrDisconnected) {
		t.Fatalf("Err = %v, want ErrDisconnected", c.Err())
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := c.KernelInfo(ctx2); !errors.Is(err, jupyter.ErrDisconnected) {
		t.Fatalf("KernelInfo on a dead kernel = %v, want ErrDisconnected", err)
	}
}

func TestRestartKeepsPorts(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	c := k.Client(t)
	ctx := testCtx(t)
	if _, err := c.Run(ctx, "marker = 1"); err != nil {
		t.Fatal(err)
	}
	pid, shell := k.PID(), k.Info.ShellPort
	k.Restart(t)
	if k.PID() == pid || k.Info.ShellPort != shell {
		t.Fatalf("after restart pid %d -> %d, shell port %d -> %d", pid, k.PID(), shell, k.Info.ShellPort)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the old client did not notice the restart")
	}
	c2 := k.Client(t)
	res, err := c2.Run(ctx, "print('marker' in globals())")
	if err != nil || res.Stdout != "False\n" {
		t.Fatalf("after restart: %+v, %v", res, err)
	}
}

// Close stops every goroutine the client started.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	k := kerneltest.Start(t, kerneltest.Options{})
	k.Client(t) // warm up: the kernel answers
	ctx := testCtx(t)

	base := runtime.NumGoroutine()
	for range 3 {
		c, err := jupyter.Dial(ctx, k.Info)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ready(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Run(ctx, "print('x')"); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := c.KernelInfo(ctx); !errors.Is(err, jupyter.ErrClosed) {
			t.Fatalf("KernelInfo after Close = %v, want ErrClosed", err)
		}
		if _, ok := <-c.IOPub(); ok {
			// Drain what was buffered; the channel must end.
			for range c.IOPub() {
			}
		}
	}
	waitFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<16)
			buf = buf[:runtime.Stack(buf, true)]
			return errors.New(strconv.Itoa(n-base) + " goroutines left:\n" + string(buf))
		}
		return nil
	})
}
