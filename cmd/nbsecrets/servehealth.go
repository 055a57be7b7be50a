package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// serveHealth is `nbsecrets serve --health-addr`: /healthz (the process
// answers), /readyz (the service has started and its NATS connection is
// up: a replica that lost NATS is taken out of rotation, not restarted)
// and /metrics (Prometheus text: the same two facts and whether this
// replica holds the background lease). Nothing it serves names a user, a
// secret or a workspace.
type serveHealth struct {
	nc  *nats.Conn
	svc atomic.Pointer[controlplane.Service] // set once Start returned
}

func (h *serveHealth) ready() error {
	if h.svc.Load() == nil {
		return errors.New("the service is starting")
	}
	if !h.nc.IsConnected() {
		return fmt.Errorf("NATS connection %s", h.nc.Status())
	}
	return nil
}

func (h *serveHealth) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		ready, lease := 0, 0
		if h.ready() == nil {
			ready = 1
		}
		if s := h.svc.Load(); s != nil && s.HoldsLease() {
			lease = 1
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP nbsecrets_service_ready Whether this replica has started and is connected to NATS.\n# TYPE nbsecrets_service_ready gauge\nnbsecrets_service_ready %d\n", ready)
		fmt.Fprintf(w, "# HELP nbsecrets_service_lease_held Whether this replica holds the background lease.\n# TYPE nbsecrets_service_lease_held gauge\nnbsecrets_service_lease_held %d\n", lease)
	})
	return mux
}

// startServeHealth listens on addr and serves until ctx ends; stop waits
// for the server to close. Unlike the agent's metrics, addr may be any
// address: in a pod the kubelet probes the pod's IP.
func startServeHealth(ctx context.Context, addr string, h *serveHealth, log hclog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--health-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { // ends when srv is shut down below
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint stopped", "error", err)
		}
	}()
	log.Info("health endpoint", "addr", ln.Addr().String())
	stopped := make(chan struct{})
	go func() { // ends with ctx or stop
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return func() { close(stopped); <-done }, nil
}
