package hub

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
)

// hubPages answers a list request the way JupyterHub 3.0's list handlers
// do (apihandlers/base.py get_api_pagination, paginated_model): the
// envelope {"items": [...], "_pagination": {"offset", "limit", "total",
// "next": {"offset", "limit", "url"}|null}} for a client that accepts
// paginationType, offset
// and limit from the query, limit capped at maxLimit (api_page_max_limit,
// 200 by default), the default limit maxLimit for a client that does not
// ask for the envelope, which then gets a plain list.
func hubPages[T any](w http.ResponseWriter, r *http.Request, all []T, maxLimit int) {
	q := r.URL.Query()
	offset, _ := strconv.Atoi(q.Get("offset"))
	limit := maxLimit
	if l := q.Get("limit"); l != "" {
		limit, _ = strconv.Atoi(l)
	}
	limit = min(max(limit, 1), maxLimit)
	offset = max(offset, 0)
	end := min(offset+limit, len(all))
	items := []T{}
	if offset < len(all) {
		items = all[offset:end]
	}
	w.Header().Set("Content-Type", "application/json")
	if !strings.Contains(r.Header.Get("Accept"), paginationType) {
		_ = json.NewEncoder(w).Encode(items)
		return
	}
	page := map[string]any{"offset": offset, "limit": limit, "total": len(all), "next": nil}
	if offset+limit < len(all) {
		next := *r.URL
		nq := next.Query()
		nq.Set("offset", strconv.Itoa(offset+limit))
		nq.Set("limit", strconv.Itoa(limit))
		next.RawQuery = nq.Encode()
		page["next"] = map[string]any{"offset": offset + limit, "limit": limit, "url": "http://" + r.Host + next.String()}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"items": items, "_pagination": page})
}

// activeUsers is JupyterHub's ?state=active filter: users with a server.
func activeUsers(users []User) []User {
	var out []User
	for _, u := range users {
		if len(u.Servers) > 0 {
			out = append(out, u)
		}
	}
	return out
}

// counter counts the requests and reply bytes of a handler.
type counter struct {
	requests, bytes atomic.Int64
}

type countingWriter struct {
	http.ResponseWriter
	c *counter
}

func (w countingWriter) Write(b []byte) (int, error) {
	w.c.bytes.Add(int64(len(b)))
	return w.ResponseWriter.Write(b)
}

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.requests.Add(1)
		h.ServeHTTP(countingWriter{w, c}, r)
	})
}
