package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrBadToken is the error of a token the hub does not accept.
var ErrBadToken = errors.New("hub: token refused by the hub")

// ErrNotFound is the error of a user (or other item) the hub does not have.
var ErrNotFound = errors.New("hub: not found")

// maxReply bounds a hub API reply.
const maxReply = 32 << 20

// Client calls the JupyterHub REST API as the service.
type Client struct {
	// APIURL is the hub's API, as $JUPYTERHUB_API_URL
	// ("http://127.0.0.1:8081/hub/api"). Required.
	APIURL string
	// Token is the service's api_token ($JUPYTERHUB_API_TOKEN): it lists
	// users and groups, and is the OAuth client secret. Required.
	Token string
	// HTTP is the client to use. Nil: one with a 10s timeout.
	HTTP *http.Client
}

// User is the part of the hub's user model nbsecrets uses.
type User struct {
	Name    string            `json:"name"`
	Admin   bool              `json:"admin"`
	Groups  []string          `json:"groups"`
	Servers map[string]Server `json:"servers"`
	// Scopes are those of the token a /user request was made with.
	Scopes []string `json:"scopes,omitempty"`
	Kind   string   `json:"kind,omitempty"`
}

// Server is one of a user's servers in the hub's model.
type Server struct {
	Name    string `json:"name"`
	Ready   bool   `json:"ready"`
	Pending string `json:"pending"`
	URL     string `json:"url"`
}

// Group is a hub group and its members.
type Group struct {
	Name  string   `json:"name"`
	Users []string `json:"users"`
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 10 * time.Second}
}

// get calls GET path (relative to APIURL) with token and decodes the JSON
// reply into out.
func (c *Client) get(ctx context.Context, path, token string, out any) error {
	body, err := c.getRaw(ctx, path, token, "application/json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("hub: GET %s: decoding: %w", path, err)
	}
	return nil
}

// getRaw calls GET path with token and returns the reply's body.
func (c *Client) getRaw(ctx context.Context, path, token, accept string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.APIURL, "/")+path, nil)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	req.Header.Set("Authorization", "token "+token)
	req.Header.Set("Accept", accept)
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return nil, fmt.Errorf("hub: GET %s: reading: %w", path, err)
	}
	switch {
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("%w: GET %s: %s", ErrBadToken, path, resp.Status)
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%w: GET %s", ErrNotFound, path)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("hub: GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// pageSize is how many items one request asks for; the hub caps it at its
// api_page_max_limit (200 by default) and says so in the reply.
const pageSize = 200

// paginationType asks JupyterHub (2.0+) for list pages in an envelope
// that says the list's total and where the next page starts.
const paginationType = "application/jupyterhub-pagination+json"

// maxPages bounds the pages of one list.
const maxPages = 10000

// listAttempts is how often a list that changed while it was read is read
// again before the poll fails (and the directory in force stays).
const listAttempts = 3

// page is a list reply in the pagination envelope.
type page[T any] struct {
	Items      []T `json:"items"`
	Pagination *struct {
		Offset int `json:"offset"`
		Limit  int `json:"limit"`
		Total  int `json:"total"`
	} `json:"_pagination"`
}

// errListChanged is a list read while the hub changed it.
var errListChanged = errors.New("the list changed while it was read")

// list fetches every page of a list endpoint (users, groups), which the hub
// orders by creation. Pages overlap by one item, and the item a page
// starts with must be the one the page before ended with: an item removed
// from a page already read shifts the rest, which would skip one item
// unseen, and shows as a mismatch; the total must not change either. A
// list that changed is read again (up to listAttempts times): a user
// missing from one poll would lose, and then regain, every secret.
func list[T any](ctx context.Context, c *Client, path string, key func(T) string) ([]T, error) {
	var err error
	for range listAttempts {
		var all []T
		if all, err = listOnce(ctx, c, path, key); !errors.Is(err, errListChanged) {
			return all, err
		}
	}
	return nil, fmt.Errorf("hub: GET %s: %w %d times in a row", path, errListChanged, listAttempts)
}

func listOnce[T any](ctx context.Context, c *Client, path string, key func(T) string) ([]T, error) {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	var all []T
	total, offset := -1, 0
	for range maxPages {
		body, err := c.getRaw(ctx, fmt.Sprintf("%s%soffset=%d&limit=%d", path, sep, offset, pageSize), c.Token, paginationType)
		if err != nil {
			return nil, err
		}
		if b := bytes.TrimSpace(body); len(b) > 0 && b[0] == '[' {
			// A hub older than 2.0: no pagination, the whole list.
			if offset != 0 {
				return nil, fmt.Errorf("hub: GET %s: a plain list after a page", path)
			}
			if err := json.Unmarshal(body, &all); err != nil {
				return nil, fmt.Errorf("hub: GET %s: decoding: %w", path, err)
			}
			return all, nil
		}
		var p page[T]
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("hub: GET %s: decoding: %w", path, err)
		}
		if p.Pagination == nil || p.Pagination.Offset != offset || p.Pagination.Total < 0 {
			return nil, fmt.Errorf("hub: GET %s: no usable pagination in the reply", path)
		}
		if total == -1 {
			total = p.Pagination.Total
		} else if p.Pagination.Total != total {
			return nil, errListChanged
		}
		items := p.Items
		if offset > 0 {
			// The overlap: this page starts where the last one ended.
			if len(items) == 0 || key(items[0]) != key(all[len(all)-1]) {
				return nil, errListChanged
			}
			items = items[1:]
		}
		all = append(all, items...)
		end := offset + len(p.Items)
		if end >= total || len(p.Items) == 0 {
			if len(all) != total {
				return nil, errListChanged
			}
			return all, nil
		}
		if len(p.Items) < 2 {
			return nil, fmt.Errorf("hub: GET %s: pages of %d items cannot overlap; raise the hub's api_page_max_limit", path, len(p.Items))
		}
		offset = end - 1
	}
	return nil, fmt.Errorf("hub: GET %s: more than %d pages", path, maxPages)
}

// Users lists the hub's users with their groups and servers (scopes
// list:users, read:users, read:servers).
func (c *Client) Users(ctx context.Context) ([]User, error) {
	return list(ctx, c, "/users", func(u User) string { return u.Name })
}

// Groups lists the hub's groups with their members (scopes list:groups,
// read:groups).
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	return list(ctx, c, "/groups", func(g Group) string { return g.Name })
}

// User returns one user's model (scope read:users, read:servers).
func (c *Client) User(ctx context.Context, name string) (*User, error) {
	var u User
	if err := c.get(ctx, "/users/"+url.PathEscape(name), c.Token, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// UserForToken asks the hub whose token is: GET /user with it. Any valid
// token may identify itself. A service's token is refused here (ErrBadToken):
// only users call nbsecrets.
func (c *Client) UserForToken(ctx context.Context, token string) (*User, error) {
	if token == "" || len(token) > 1024 || strings.ContainsAny(token, " \r\n\t") {
		return nil, fmt.Errorf("%w: malformed token", ErrBadToken)
	}
	var u User
	if err := c.get(ctx, "/user", token, &u); err != nil {
		return nil, err
	}
	if u.Name == "" || (u.Kind != "" && u.Kind != "user") {
		return nil, fmt.Errorf("%w: the token is not a user's", ErrBadToken)
	}
	return &u, nil
}
