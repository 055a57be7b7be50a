package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbsecrets/nbsecrets/protocol/jupyter"
)

// packet is one UDP datagram from the kernel, stamped when it arrived.
type packet struct {
	kind byte // 'E' an observer saw a new value, 'B' the busy cell started
	n    int  // the sample number: the N of "bench-N"
	at   time.Time
	// putenv is when os.putenv set that value in the kernel, by the
	// kernel's wall clock (the audit hook's time.time_ns()); zero if the
	// packet did not say.
	putenv time.Time
}

// listenUDP opens the bench's loopback UDP port and reads it until the
// socket is closed. Each datagram is "E N", "E N T" or "B".
func listenUDP() (*net.UDPConn, <-chan packet, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, fmt.Errorf("UDP listener: %w", err)
	}
	ch := make(chan packet, 1024)
	go func() { // ends when conn is closed
		defer close(ch)
		buf := make([]byte, 64)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			at := time.Now()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			p, ok := parsePacket(buf[:n])
			if !ok {
				continue
			}
			p.at = at
			select {
			case ch <- p:
			default: // nobody is reading: drop rather than block the reader
			}
		}
	}()
	return conn, ch, nil
}

// parsePacket reads "B", "E N" or "E N T" (T: the putenv's time in
// nanoseconds since the epoch, from the kernel's clock).
func parsePacket(b []byte) (packet, bool) {
	if len(b) == 1 && b[0] == 'B' {
		return packet{kind: 'B'}, true
	}
	if len(b) < 3 || b[0] != 'E' || b[1] != ' ' {
		return packet{}, false
	}
	f := strings.Fields(string(b[2:]))
	if len(f) < 1 || len(f) > 2 {
		return packet{}, false
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return packet{}, false
	}
	p := packet{kind: 'E', n: n}
	if len(f) == 2 {
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || ns <= 0 {
			return packet{}, false
		}
		p.putenv = time.Unix(0, ns)
	}
	return p, true
}

// setupCell installs, in the live kernel, the audit hook that notes when
// os.putenv sets the bench's variable (time.time_ns(), kept with the value:
// no system call, so the hook never lets go of the GIL in the middle of the
// re-seed) and the daemon thread that polls os.environ every 0.2 ms and
// reports each new value ("E N T", T the putenv's time). What the busy cell
// needs of it lives in sys.modules['_nbsecrets_bench']: the putenv note,
// and the poller's switch (poll, set while it polls; parked, set while it
// waits for poll). It prints the versions of what runs the kernel as JSON.
const setupCell = `
def _nbsecrets_bench_setup(addr, name):
    import os, socket, sys, threading, time, types
    b = types.ModuleType('_nbsecrets_bench')
    b.put = (None, 0)  # (value, time.time_ns()) of the last putenv of name
    b.poll, b.parked = threading.Event(), threading.Event()
    b.poll.set()
    sys.modules['_nbsecrets_bench'] = b
    bname = name.encode()
    def hook(event, args):
        if event == 'os.putenv' and args and args[0] in (name, bname):
            v = args[1]
            if isinstance(v, bytes):
                v = v.decode('utf-8', 'replace')
            b.put = (v, time.time_ns())
    sys.addaudithook(hook)
    def poll():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        last = os.environ.get(name)
        while True:
            if not b.poll.is_set():
                b.parked.set()
                b.poll.wait()
                b.parked.clear()
            v = os.environ.get(name)
            if v != last:
                last = v
                if v is not None and v.startswith('bench-'):
                    pv, pt = b.put
                    s.sendto(('E %%s %%d' %% (v[6:], pt if pv == v else 0)).encode(), addr)
            time.sleep(0.0002)
    threading.Thread(target=poll, name='nbsecrets-bench-poll', daemon=True).start()
_nbsecrets_bench_setup(('127.0.0.1', %d), %q)
del _nbsecrets_bench_setup
import json as _j, sys as _s, IPython as _I, ipykernel as _k, jupyter_client as _c
print(_j.dumps({'python': _s.version.split()[0], 'ipykernel': _k.__version__, 'ipython': _I.__version__, 'jupyter_client': _c.__version__, 'switch_interval_s': _s.getswitchinterval()}))
del _j, _s, _I, _k, _c
`

// busyCell is a pure-Python CPU-bound loop that is its own observer: each
// iteration reads os.environ.get(NAME) (pure Python too: os.environ is a
// Python mapping) and, when the value changes, sends "E N T". It parks the
// set-up cell's poller first, so that the only threads that want the GIL
// are the cell's and nbsecrets', as in a user's kernel; it lets the poller
// go again when it ends (the interrupt). It says "B" once the poller is
// parked, so the bench knows it runs.
const busyCell = `import os as _o, socket as _sk, sys as _sy
_b = _sy.modules['_nbsecrets_bench']
_b.poll.clear()
try:
    if not _b.parked.wait(10):
        raise RuntimeError('the poller did not park')
    _u = _sk.socket(_sk.AF_INET, _sk.SOCK_DGRAM)
    _u.sendto(b'B', ('127.0.0.1', %d))
    _last = _o.environ.get(%q)
    while True:
        _v = _o.environ.get(%q)
        if _v != _last:
            _last = _v
            if _v is not None and _v.startswith('bench-'):
                _pv, _pt = _b.put
                _u.sendto(('E %%s %%d' %% (_v[6:], _pt if _pv == _v else 0)).encode(), ('127.0.0.1', %d))
finally:
    _b.poll.set()
`

// busyPolledCell is the same loop without looking: a pure-Python loop that
// holds the GIL but for the interpreter's switch interval, the value seen by
// the set-up cell's poller, a third thread that competes for the GIL with
// the cell and nbsecrets' thread. Reported without a target: it measures
// what a second thread of the user's would see. It says "B" first.
const busyPolledCell = `import socket as _sk
_sk.socket(_sk.AF_INET, _sk.SOCK_DGRAM).sendto(b'B', ('127.0.0.1', %d))
x = 0
while True:
    x += 1
`

// waitingCell is a cell that runs but mostly waits, releasing the GIL: a
// sleep, as cells that wait on the network, on disk or in native code do.
const waitingCell = `import socket as _sk, time as _t
_sk.socket(_sk.AF_INET, _sk.SOCK_DGRAM).sendto(b'B', ('127.0.0.1', %d))
while True:
    _t.sleep(0.05)
`

// versions is what the set-up cell prints.
type versions struct {
	Python         string  `json:"python"`
	IPyKernel      string  `json:"ipykernel"`
	IPython        string  `json:"ipython"`
	JupyterClient  string  `json:"jupyter_client"`
	SwitchInterval float64 `json:"switch_interval_s"`
}

// liveSample is one live re-seed, all times from the moment Update
// returned.
type liveSample struct {
	Latency time.Duration // to the observer's packet: the measurement
	Putenv  time.Duration // to the putenv in the kernel (its wall clock); may be negative
	Update  time.Duration // the Update call itself, request to reply
	GotPut  bool          // the observer's packet said when putenv ran
	// Published is when the record message for the workspace reached a
	// plain subscriber of its subject; negative: before Update returned.
	Published time.Duration
	GotPub    bool
}

// liveRow is a live phase's result.
type liveRow struct {
	Samples []liveSample
	Lost    int // samples whose packet did not come within the timeout
}

func (r *liveRow) latencies() []time.Duration {
	var out []time.Duration
	for _, s := range r.Samples {
		out = append(out, s.Latency)
	}
	return out
}

// execResult is what a non-waiting Execute came back with.
type execResult struct {
	r   *jupyter.ExecuteReply
	err error
}

// liveBench drives the live measurements against one kernel.
type liveBench struct {
	cfg     *config
	w       *world
	k       *kernel
	c       *jupyter.Client
	packets <-chan packet
	port    int
	seq     *int // the last sample number given out (shared with the restart rows)
}

// measure takes warmup unrecorded and n recorded samples: for each, update
// the secret to "bench-<seq>", start the clock when Update returns, stop it
// when the observer's packet for seq arrives; then wait cfg.pause.
func (lb *liveBench) measure(ctx context.Context, name string, n int) (*liveRow, error) {
	row := &liveRow{}
	consecutiveLost := 0
	for i := -lb.cfg.warmup; i < n; i++ {
		if err := lb.w.agent.alive(); err != nil {
			return nil, err
		}
		*lb.seq++
		s := *lb.seq
		drain(lb.w.records)
		t0 := time.Now()
		if _, err := lb.w.client.Update(ctx, secretName, []byte(sampleValue(s))); err != nil {
			return nil, fmt.Errorf("%s: update %d: %w", name, s, err)
		}
		start := time.Now()
		smp, ok, err := lb.wait(ctx, s, start)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		smp.Update = start.Sub(t0)
		select {
		case at := <-lb.w.records:
			smp.Published, smp.GotPub = at.Sub(start), true
		default:
		}
		if i >= 0 {
			if ok {
				row.Samples = append(row.Samples, smp)
			} else {
				row.Lost++
			}
		}
		if ok {
			consecutiveLost = 0
		} else if consecutiveLost++; consecutiveLost >= 10 {
			return nil, fmt.Errorf("%s: 10 samples in a row never reached the kernel (timeout %v each); is the agent serving it?", name, lb.cfg.timeout)
		}
		if err := sleepCtx(ctx, lb.cfg.pause); err != nil {
			return nil, err
		}
	}
	return row, nil
}

// wait waits for the observer's packet of sample s, or returns with ok
// false after cfg.timeout.
func (lb *liveBench) wait(ctx context.Context, s int, start time.Time) (liveSample, bool, error) {
	var smp liveSample
	timer := time.NewTimer(lb.cfg.timeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return smp, false, ctx.Err()
		case <-timer.C:
			return smp, false, nil
		case p, ok := <-lb.packets:
			if !ok {
				return smp, false, errors.New("UDP listener closed")
			}
			if p.n != s {
				continue // a late packet of an earlier sample
			}
			if p.kind != 'E' {
				continue
			}
			smp.Latency = p.at.Sub(start)
			if !p.putenv.IsZero() {
				// The kernel's wall clock against the bench's (start
				// has both readings; p.putenv only the wall one).
				smp.Putenv, smp.GotPut = p.putenv.Sub(start), true
			}
			return smp, true, nil
		}
	}
}

// drain empties ch.
func drain(ch chan time.Time) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func sampleValue(n int) string { return "bench-" + strconv.Itoa(n) }

// setUpLiveKernel starts the kernel in the agent's runtime dir, waits until
// the agent serves it live with the current version, connects the bench's
// own client and runs the set-up cell.
func setUpLiveKernel(ctx context.Context, lb *liveBench, version uint64, cl *cleanups) (*versions, error) {
	k, err := newKernel(lb.w.agent.runtimeDir, lb.cfg.python, nil, kernelEnv(lb.w.agent.runtimeDir, lb.w.dir+"/ipython"))
	if err != nil {
		return nil, err
	}
	cl.add(k.kill)
	lb.k = k
	for attempt := 1; ; attempt++ {
		if err := k.start(); err != nil {
			return nil, err
		}
		lb.c, _, err = k.connect(ctx)
		if err == nil {
			break
		}
		_ = k.kill()
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			return nil, fmt.Errorf("starting the live kernel: %w", err)
		}
		if err := k.newPorts(); err != nil {
			return nil, err
		}
	}
	cl.add(lb.c.Close)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := lb.w.agent.waitFor(wctx, kernelLive(k.ConnFile, version)); err != nil {
		return nil, fmt.Errorf("the agent did not serve the live kernel: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := lb.c.Run(rctx, fmt.Sprintf(setupCell, lb.port, secretName))
	if err != nil {
		return nil, fmt.Errorf("set-up cell: %w", err)
	}
	if err := res.Reply.Err(); err != nil {
		return nil, fmt.Errorf("set-up cell: %w (%s)", err, res.Stderr)
	}
	var v versions
	if err := json.Unmarshal([]byte(strings.TrimSpace(res.Stdout)), &v); err != nil {
		return nil, fmt.Errorf("set-up cell printed %q: %w", res.Stdout, err)
	}
	return &v, nil
}

// measureBusy runs a cell (source src) on shell without waiting for it,
// takes the samples while it runs, then interrupts it (SIGINT to the kernel
// process, as jupyter_client does) and checks that the kernel is idle again.
func (lb *liveBench) measureBusy(ctx context.Context, n int, src, label string) (*liveRow, error) {
	cellCtx, cancelCell := context.WithCancel(ctx)
	defer cancelCell()
	done := make(chan execResult, 1)
	go func() { // ends when the cell ends or cellCtx is cancelled
		r, err := lb.c.Execute(cellCtx, jupyter.Shell, src, jupyter.ExecuteOptions{})
		done <- execResult{r, err}
	}()
	if err := lb.waitBusy(ctx, done); err != nil {
		return nil, err
	}
	row, err := lb.measure(ctx, label, n)
	if err != nil {
		return nil, err
	}
	select {
	case r := <-done:
		return nil, fmt.Errorf("%s: the running cell ended before the interrupt (%v %v): the samples were not all taken while it ran", label, r.err, replyErr(r.r))
	default:
	}
	if err := syscall.Kill(lb.k.PID(), syscall.SIGINT); err != nil {
		return nil, fmt.Errorf("interrupting the kernel: %w", err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("busy cell: %w", r.err)
		}
		if r.r.EName != "KeyboardInterrupt" {
			return nil, fmt.Errorf("busy cell ended with status %q %q, not KeyboardInterrupt", r.r.Status, r.r.EName)
		}
	case <-time.After(10 * time.Second):
		return nil, errors.New("the kernel did not stop the busy cell within 10s of SIGINT")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := lb.c.Run(ictx, "pass")
	if err != nil {
		return nil, fmt.Errorf("kernel not idle after the interrupt: %w", err)
	}
	if err := res.Reply.Err(); err != nil {
		return nil, fmt.Errorf("kernel not idle after the interrupt: %w", err)
	}
	return row, nil
}

// waitingSource, busySource and busyPolledSource are the cells with the
// bench's port (and the variable's name) filled in.
func (lb *liveBench) waitingSource() string { return fmt.Sprintf(waitingCell, lb.port) }
func (lb *liveBench) busySource() string {
	return fmt.Sprintf(busyCell, lb.port, secretName, secretName, lb.port)
}
func (lb *liveBench) busyPolledSource() string { return fmt.Sprintf(busyPolledCell, lb.port) }

// waitBusy waits for the busy cell's "B" packet.
func (lb *liveBench) waitBusy(ctx context.Context, done <-chan execResult) error {
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-done:
			return fmt.Errorf("the busy cell ended before it started looping (%v %v)", r.err, replyErr(r.r))
		case <-timer.C:
			return errors.New("the busy cell did not start within 30s")
		case p, ok := <-lb.packets:
			if !ok {
				return errors.New("UDP listener closed")
			}
			if p.kind == 'B' {
				return nil
			}
		}
	}
}

func replyErr(r *jupyter.ExecuteReply) error {
	if r == nil {
		return nil
	}
	return r.Err()
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
