package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// JupyterServer is a Jupyter Server through whose REST API the agent
// restarts kernels: POST /api/kernels/{id}/restart keeps the kernel's id
// and ports and runs the kernelspec argv again, so the injector gives the
// new process the current values. Jupyter reports it as an ordinary
// restart. The kernel id is the one in the connection file's name
// (kernel-<id>.json), checked against GET /api/kernels first: a kernel the
// server does not manage is not restarted.
type JupyterServer struct {
	// URL is the server's base URL, with its base_url path if it has one,
	// e.g. http://127.0.0.1:8888/ or http://127.0.0.1:8888/user/alice/.
	URL string
	// Token is the server's API token, sent as "Authorization: token ...".
	// Empty: none (a server without authentication).
	Token string
	// Client makes the requests. Nil: a client of its own; every request
	// is bounded by the restart's deadline.
	Client *http.Client
}

// ErrKernelNotManaged is a kernel the configured Jupyter Server does not
// list: the agent does not restart it.
var ErrKernelNotManaged = errors.New("agent: kernel not managed by the Jupyter Server")

// errServerAuth is a request the server refused: a wrong or missing token.
var errServerAuth = errors.New("agent: the Jupyter Server refused the token")

var defaultJupyterClient = &http.Client{}

func (j *JupyterServer) check() error {
	u, err := url.Parse(j.URL)
	if err != nil {
		return fmt.Errorf("agent: Jupyter Server URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("agent: Jupyter Server URL %q: want http(s)://host[:port][/base_url]", j.URL)
	}
	return nil
}

func (j *JupyterServer) String() string { return "jupyter-server" }

// endpoint is the base URL joined with the API path elements.
func (j *JupyterServer) endpoint(elem ...string) (string, error) {
	u, err := url.Parse(j.URL)
	if err != nil {
		return "", err
	}
	for i, e := range elem {
		elem[i] = url.PathEscape(e)
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/" + strings.Join(elem, "/")
	u.RawPath = ""
	return u.String(), nil
}

func (j *JupyterServer) do(ctx context.Context, method string, out any, elem ...string) error {
	target, err := j.endpoint(elem...)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		return err
	}
	if j.Token != "" {
		req.Header.Set("Authorization", "token "+j.Token)
	}
	c := j.Client
	if c == nil {
		c = defaultJupyterClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return err // url.Error: the URL, never the token (it is a header)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %s %s: HTTP %d", errServerAuth, method, req.URL.Path, resp.StatusCode)
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s %s: HTTP 404", ErrKernelNotManaged, method, req.URL.Path)
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("agent: Jupyter Server: %s %s: HTTP %d", method, req.URL.Path, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("agent: Jupyter Server: %s %s: %w", method, req.URL.Path, err)
		}
	}
	return nil
}

// managed reports whether the server lists the kernel id.
func (j *JupyterServer) managed(ctx context.Context, id string) (bool, error) {
	var ks []struct {
		ID string `json:"id"`
	}
	if err := j.do(ctx, http.MethodGet, &ks, "api", "kernels"); err != nil {
		return false, fmt.Errorf("listing kernels: %w", err)
	}
	for _, k := range ks {
		if k.ID == id {
			return true, nil
		}
	}
	return false, nil
}

// restart restarts the kernel through the server. The server answers once
// the new process has started (same id, same ports, same connection file).
func (j *JupyterServer) restart(ctx context.Context, k kernelRef, _ session) error {
	ok, err := j.managed(ctx, k.ID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrKernelNotManaged, k.ID)
	}
	var model struct {
		ID string `json:"id"`
	}
	if err := j.do(ctx, http.MethodPost, &model, "api", "kernels", k.ID, "restart"); err != nil {
		return err
	}
	if model.ID != k.ID {
		return fmt.Errorf("agent: Jupyter Server restarted kernel %q, asked for %q", model.ID, k.ID)
	}
	return nil
}
