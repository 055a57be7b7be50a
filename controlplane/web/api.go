package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nbsecrets/nbsecrets/controlplane"
	"github.com/nbsecrets/nbsecrets/protocol"
)

// The API, JSON under <base>/api/v1/ (openapi.json is the reference):
//
//	GET    api/v1/me                                 the caller, their projects and communities administered, the CSRF token
//	GET    api/v1/secrets                            list (never a value)
//	POST   api/v1/secrets                            create {"name","value","project"}
//	GET    api/v1/secrets/{id}                       one secret (metadata, never a value)
//	PATCH  api/v1/secrets/{id}                       update {"name","value"}: a new name and/or value
//	DELETE api/v1/secrets/{id}                       delete
//	POST   api/v1/secrets/{id}/clone                 clone {"name","value","project"}; no value = the source's
//	PUT    api/v1/secrets/{id}/communities/{c}       share with community c
//	DELETE api/v1/secrets/{id}/communities/{c}       withdraw from community c
//	GET    api/v1/secrets/{id}/rollout               who receives it: workspaces, kernels and the version each holds
//	GET    api/v1/secrets/{id}/rollout/events        the same as server-sent events, one each time it changes
//	GET    api/v1/names/{name}                       whether a name is allowed, in the rule's words
//	GET    api/v1/openapi.json                       this API's OpenAPI document
//
// Every request but GET carries the session's CSRF token in X-CSRF-Token.
// PATCH and DELETE take an optional If-Match: "<version>"; a secret that
// has moved on is refused with 409 conflict. Values go only in request
// bodies and come back in no reply.

func (s *Server) apiRoutes() {
	s.handle("GET", "/api/v1/openapi.json", true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	s.handle("GET", "/api/v1/me", true, s.api(func(r *http.Request, c *controlplane.Caller, id Identity) (int, any, error) {
		p := c.Profile()
		return http.StatusOK, struct {
			controlplane.Profile
			CSRF string `json:"csrf_token"`
		}{p, id.CSRF}, nil
	}))
	s.handle("GET", "/api/v1/secrets", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		list, err := c.List(r.Context())
		if list == nil {
			list = []controlplane.SecretInfo{}
		}
		return http.StatusOK, map[string]any{"secrets": list}, err
	}))
	s.handle("POST", "/api/v1/secrets", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		var b secretBody
		if err := decodeBody(r, &b); err != nil {
			return 0, nil, err
		}
		defer clear(b.value)
		if b.value == nil {
			return 0, nil, newError("invalid_value", "value is required")
		}
		info, err := c.Create(r.Context(), controlplane.Args{Name: b.Name, Project: b.Project}, b.value)
		return http.StatusCreated, secretReply(info), err
	}))
	s.handle("GET", "/api/v1/secrets/{id}", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		info, err := find(r.Context(), c, r.PathValue("id"))
		return http.StatusOK, secretReply(info), err
	}))
	s.handle("PATCH", "/api/v1/secrets/{id}", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		var b secretBody
		if err := decodeBody(r, &b); err != nil {
			return 0, nil, err
		}
		defer clear(b.value)
		if b.Project != "" {
			return 0, nil, newError("invalid", "an update cannot move a secret to another project (clone it)")
		}
		v, err := ifMatch(r)
		if err != nil {
			return 0, nil, err
		}
		info, err := s.update(r.Context(), c, r.PathValue("id"), changeArgs{Name: b.Name, Value: b.value, Version: v})
		return http.StatusOK, secretReply(info), err
	}))
	s.handle("DELETE", "/api/v1/secrets/{id}", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		v, err := ifMatch(r)
		if err != nil {
			return 0, nil, err
		}
		info, err := s.remove(r.Context(), c, r.PathValue("id"), v)
		return http.StatusOK, secretReply(info), err
	}))
	s.handle("POST", "/api/v1/secrets/{id}/clone", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		var b secretBody
		if err := decodeBody(r, &b); err != nil {
			return 0, nil, err
		}
		defer clear(b.value)
		info, err := s.clone(r.Context(), c, r.PathValue("id"), changeArgs{Name: b.Name, Value: b.value, Project: b.Project})
		return http.StatusCreated, secretReply(info), err
	}))
	share := func(on bool) http.HandlerFunc {
		return s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
			info, err := s.setShared(r.Context(), c, r.PathValue("id"), r.PathValue("community"), on)
			return http.StatusOK, secretReply(info), err
		})
	}
	s.handle("PUT", "/api/v1/secrets/{id}/communities/{community}", true, share(true))
	s.handle("DELETE", "/api/v1/secrets/{id}/communities/{community}", true, share(false))
	s.handle("GET", "/api/v1/secrets/{id}/rollout", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		info, err := find(r.Context(), c, r.PathValue("id"))
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, s.rolloutOf(info), nil
	}))
	s.handle("GET", "/api/v1/secrets/{id}/rollout/events", true, s.rolloutEvents)
	s.handle("GET", "/api/v1/names/{name}", true, s.api(func(r *http.Request, c *controlplane.Caller, _ Identity) (int, any, error) {
		name := r.PathValue("name")
		out := map[string]any{"name": name, "valid": true}
		if err := protocol.ValidateName(name); err != nil {
			out["valid"] = false
			out["message"] = strings.TrimPrefix(err.Error(), "protocol: ")
		} else if !protocol.IsShellIdentifier(name) {
			out["message"] = "allowed, but a shell cannot expand a name with a hyphen: Python's os.environ sees it, $" + name + " does not"
		}
		return http.StatusOK, out, nil
	}))
	s.handle("GET", "/api/v1/", false, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": newError("not_found", "no API route %s %s", r.Method, printable(r.URL.Path))})
	})
}

// api adapts an API handler: authentication and CSRF first, then JSON
// reply or JSON error.
func (s *Server) api(fn func(*http.Request, *controlplane.Caller, Identity) (int, any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, id, err := s.caller(r, r.Header.Get("X-CSRF-Token"))
		var status int
		var v any
		if err == nil {
			status, v, err = fn(r, c, id)
		}
		if err != nil {
			ae := toAPIError(err)
			if ae.Code != "unauthenticated" {
				s.log.Info("API request refused", "route", r.Pattern, "user", id.User, "code", ae.Code, "status", ae.status)
			}
			writeJSON(w, ae.status, map[string]any{"error": ae})
			return
		}
		writeJSON(w, status, v)
	}
}

func secretReply(info *controlplane.SecretInfo) any {
	return map[string]any{"secret": info}
}

// secretBody is the body of create, update and clone. Value is a string
// in the JSON, taken as its UTF-8 bytes.
type secretBody struct {
	Name    string           `json:"name"`
	Value   *json.RawMessage `json:"value"`
	Project string           `json:"project"`
	value   []byte
}

// decodeBody reads a JSON body of at most maxBody bytes, refusing unknown
// fields and trailing data; a value must be a JSON string.
func decodeBody(r *http.Request, b *secretBody) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return newError("invalid", "Content-Type must be application/json, not %q", printable(ct))
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return newError("invalid", "reading the request body: %v", err)
	}
	defer clear(data)
	if len(data) > maxBody {
		return newError("too_large", "request body over %d bytes", maxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(b); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			return newError("invalid", "field %q must be a %s", te.Field, te.Type)
		case errors.As(err, &se), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return newError("invalid", "request body is not a JSON object")
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return newError("invalid", "unknown field %s (want name, value, project)", strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return newError("invalid", "request body is not a JSON object")
	}
	if dec.More() {
		return newError("invalid", "trailing data after the JSON object")
	}
	if b.Value != nil {
		raw := []byte(*b.Value)
		defer clear(raw)
		var v string
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &v) != nil {
			return newError("invalid_value", "value must be a JSON string")
		}
		b.value = []byte(v)
		b.Value = nil
	}
	return nil
}

// ifMatch reads an optional If-Match: "<version>".
func ifMatch(r *http.Request) (uint64, error) {
	h := r.Header.Get("If-Match")
	if h == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(strings.Trim(strings.TrimPrefix(h, "W/"), `"`), 10, 64)
	if err != nil || v == 0 {
		return 0, newError("invalid", "If-Match must be a version, as \"3\", not %q", printable(h))
	}
	return v, nil
}

// Stream pacing: at most one rollout event per streamMinGap (a change
// arriving sooner waits), and a look at the secret every streamRefresh
// even when no agent reports (an edit changes the version first).
const (
	streamMinGap  = 20 * time.Millisecond
	streamRefresh = time.Second
)

// rolloutEvents serves GET api/v1/secrets/{id}/rollout/events: the rollout
// view as server-sent events ("data: <rollout JSON>"), one when the stream
// opens and one each time it changes, until the client goes, the server
// closes, or the secret is gone (then one "event: gone" with the error).
func (s *Server) rolloutEvents(w http.ResponseWriter, r *http.Request) {
	c, _, err := s.caller(r, "")
	var info *controlplane.SecretInfo
	if err == nil {
		info, err = find(r.Context(), c, r.PathValue("id"))
	}
	fl, ok := w.(http.Flusher)
	if err == nil && !ok {
		err = newError("internal", "streaming unsupported")
	}
	if err != nil {
		ae := toAPIError(err)
		writeJSON(w, ae.status, map[string]any{"error": ae})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	refresh := time.NewTicker(streamRefresh)
	defer refresh.Stop()
	var last []byte
	for {
		changed := s.rollout.changes()
		data, _ := json.Marshal(s.rolloutOf(info))
		if !bytes.Equal(data, last) {
			if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
				return
			}
			fl.Flush()
			last = data
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.closed:
			return
		case <-changed:
		case <-refresh.C:
		}
		select { // pace: one event per gap at most
		case <-r.Context().Done():
			return
		case <-s.closed:
			return
		case <-time.After(streamMinGap):
		}
		if info, err = find(r.Context(), c, info.ID); err != nil {
			ae := toAPIError(err)
			b, _ := json.Marshal(map[string]any{"error": ae})
			_, _ = fmt.Fprintf(w, "event: gone\ndata: %s\n\n", b)
			fl.Flush()
			return
		}
	}
}
