package hub

import (
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.APIURL, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	req.Header.Set("Authorization", "token "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("hub: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("hub: GET %s: reading: %w", path, err)
	}
	switch {
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%w: GET %s: %s", ErrBadToken, path, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("hub: GET %s: %s", path, resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("hub: GET %s: decoding: %w", path, err)
	}
	return nil
}

// pageSize is how many items one request asks for; the hub caps it (200
// by default) and says where the next page starts.
const pageSize = 200

// list fetches every page of a list endpoint (users, groups).
func list[T any](ctx context.Context, c *Client, path string) ([]T, error) {
	var all []T
	for offset := 0; ; {
		// The hub answers a plain list unless asked for pagination; an old
		// hub ignores offset and limit and returns everything.
		var items []T
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		if err := c.get(ctx, fmt.Sprintf("%s%soffset=%d&limit=%d", path, sep, offset, pageSize), c.Token, &items); err != nil {
			return nil, err
		}
		all = append(all, items...)
		if len(items) < pageSize {
			return all, nil
		}
		offset += len(items)
	}
}

// Users lists the hub's users with their groups and servers (scopes
// list:users, read:users, read:servers).
func (c *Client) Users(ctx context.Context) ([]User, error) {
	return list[User](ctx, c, "/users")
}

// Groups lists the hub's groups with their members (scopes list:groups,
// read:groups).
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	return list[Group](ctx, c, "/groups")
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
