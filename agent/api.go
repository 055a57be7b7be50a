package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// The local API, HTTP/1.1 on a unix socket (mode 0600) whose peers must run
// as the agent's own user (checked with SO_PEERCRED):
//
//	GET  /v1/env?connection_file=F  the environment a starting kernel gets:
//	                                {"env": {NAME: value, ..., NBSECRETS_MANAGED: "A,B"},
//	                                 "versions": {NAME: version}}
//	POST /v1/kernels                {"connection_file": F, "pid": N}: a kernel is starting
//	GET  /v1/status                 Status as JSON (never a value)
//
// /v1/env waits, within the request's deadline, for the first load of the
// records, so a kernel that starts with the agent still gets the values.

// uidListener accepts only connections from processes of one user.
type uidListener struct {
	*net.UnixListener
	uid uint32
	log hclog.Logger
}

func (l *uidListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && uid == l.uid {
			return c, nil
		}
		l.log.Warn("local API connection refused", "peer_uid", uid, "error", err)
		_ = c.Close()
	}
}

func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	err = raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err = errors.Join(err, serr); err != nil {
		return 0, fmt.Errorf("reading peer credentials: %w", err)
	}
	return cred.Uid, nil
}

// listen opens the socket at path, replacing a stale one, mode 0600.
func listen(path string, log hclog.Logger) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("another agent is listening on %s", path)
	}
	_ = os.Remove(path)
	old := unix.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, err
	}
	return &uidListener{UnixListener: l, uid: uint32(os.Getuid()), log: log}, nil
}

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+localapi.EnvPath, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-a.st.loaded:
		case <-r.Context().Done():
			writeError(w, http.StatusServiceUnavailable, "records not loaded yet")
			return
		}
		d, _ := a.st.snapshot()
		resp := localapi.EnvResponse{Env: make(map[string]string, len(d.Env)+1), Versions: make(map[string]uint64, len(d.Env))}
		for n, v := range d.Env {
			resp.Env[n] = string(v.Value)
			resp.Versions[n] = v.Version
		}
		resp.Env[ManagedVar] = managedList(d)
		if f := r.URL.Query().Get("connection_file"); f != "" {
			a.log.Info("kernel starting with current values", "kernel", kernelID(f), "secrets", len(d.Env))
			a.kernels.started(f, d) // what it holds, for restart decisions
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST "+localapi.KernelsPath, func(w http.ResponseWriter, r *http.Request) {
		var ann localapi.Announcement
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&ann); err != nil || !filepath.IsAbs(ann.ConnectionFile) {
			writeError(w, http.StatusBadRequest, "want {\"connection_file\": absolute path}")
			return
		}
		a.kernels.add(ann.ConnectionFile)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+localapi.StatusPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, localapi.ErrorResponse{Error: msg})
}

// serveAPI serves the local API until ctx ends.
func (a *Agent) serveAPI(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: a.log.Named("api").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { // owned by serveAPI
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	cancel()
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
