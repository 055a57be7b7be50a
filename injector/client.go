package injector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// The agent's local API, as the injector uses it. The agent serves it over
// HTTP/1.1 on a unix socket; the host in the URL is ignored.
const (
	// EnvPath answers GET with an EnvResponse for the kernel named by the
	// connection_file query parameter (absent when the kernel's argv
	// names none).
	EnvPath = "/v1/env"
	// KernelsPath takes a POSTed KernelAnnouncement and answers 204.
	KernelsPath = "/v1/kernels"
)

// maxResponse bounds what the injector reads from the agent: far more than
// any workspace's secrets (protocol.MaxValueSize each).
const maxResponse = 32 << 20

// EnvResponse is the body of a 200 answer to GET /v1/env.
type EnvResponse struct {
	// Env is the kernel's secrets by name, and NBSECRETS_MANAGED listing
	// the names the agent manages (the injector recomputes that one from
	// the names it actually sets).
	Env map[string]string `json:"env"`
	// Versions are the secrets' versions by name.
	Versions map[string]uint64 `json:"versions"`
}

// KernelAnnouncement is the body of POST /v1/kernels: the kernel the
// injector is about to become, with what it was given.
type KernelAnnouncement struct {
	ConnectionFile string            `json:"connection_file"`
	PID            int               `json:"pid"`
	Versions       map[string]uint64 `json:"versions"`
}

// ErrorResponse is the body of a non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// client talks to the agent over its unix socket, one request per
// connection (the injector makes two requests in its life).
type client struct {
	socket string
	tr     *http.Transport
	hc     *http.Client
}

func newClient(socket string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &client{socket: socket, tr: tr, hc: &http.Client{Transport: tr}}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// env asks for the kernel's environment. answered reports whether the agent
// gave an HTTP answer at all (an error answer included), as opposed to not
// being reachable.
func (c *client) env(ctx context.Context, connFile string) (resp *EnvResponse, answered bool, err error) {
	u := "http://agent" + EnvPath
	if connFile != "" {
		u += "?" + url.Values{"connection_file": {connFile}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	var out EnvResponse
	answered, err = c.do(req, &out)
	if err != nil {
		return nil, answered, err
	}
	return &out, true, nil
}

// announce tells the agent about the kernel about to start.
func (c *client) announce(ctx context.Context, ann KernelAnnouncement) error {
	if ann.Versions == nil {
		ann.Versions = map[string]uint64{}
	}
	b, err := json.Marshal(ann)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+KernelsPath, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	_, err = c.do(req, nil)
	return err
}

// do sends req and decodes a 2xx answer into out (when out is not nil).
func (c *client) do(req *http.Request, out any) (answered bool, err error) {
	res, err := c.hc.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // drop the URL: it says nothing the socket does not
		}
		return false, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxResponse+1))
	if err != nil {
		return true, fmt.Errorf("reading the answer to %s %s: %w", req.Method, req.URL.Path, err)
	}
	if len(body) > maxResponse {
		return true, fmt.Errorf("answer to %s %s larger than %d bytes", req.Method, req.URL.Path, maxResponse)
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		var e ErrorResponse
		msg := ""
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = ": " + printable(e.Error)
		}
		return true, fmt.Errorf("%s %s: %s%s", req.Method, req.URL.Path, res.Status, msg)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			// A syntax error quotes a character of the body, which may be
			// part of a value: say only where.
			var serr *json.SyntaxError
			if errors.As(err, &serr) {
				err = fmt.Errorf("invalid JSON at offset %d", serr.Offset)
			}
			return true, fmt.Errorf("decoding the answer to %s %s: %w", req.Method, req.URL.Path, err)
		}
	}
	return true, nil
}

// printable keeps an agent's error message to one short line.
func printable(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
