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

	"github.com/nbsecrets/nbsecrets/protocol"
	"github.com/nbsecrets/nbsecrets/protocol/localapi"
)

// maxResponse bounds what the injector reads from the agent: far more than
// any workspace's secrets (protocol.MaxValueSize each).
const maxResponse = 32 << 20

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
func (c *client) env(ctx context.Context, connFile string) (resp *localapi.EnvResponse, answered bool, err error) {
	u := "http://agent" + localapi.EnvPath
	if connFile != "" {
		u += "?" + url.Values{"connection_file": {connFile}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	var out localapi.EnvResponse
	answered, err = c.do(req, &out)
	if err != nil {
		return nil, answered, err
	}
	return &out, true, nil
}

// announce tells the agent about the kernel about to start.
func (c *client) announce(ctx context.Context, ann localapi.Announcement) error {
	if ann.Versions == nil {
		ann.Versions = map[string]uint64{}
	}
	b, err := json.Marshal(ann)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+localapi.KernelsPath, bytes.NewReader(b))
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
		var e localapi.ErrorResponse
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

// printable keeps an agent's error message to one short line, safe on a
// terminal.
func printable(s string) string { return protocol.SafeText(s, 200) }
