// Package web is the secrets service's front door for people: a JSON API
// under <base>/api/v1/ and the web UI over it, served by the service's
// process (nbsecrets dev; nbsecrets serve once an identity source is
// configured). Both call the operations of controlplane through
// [controlplane.Service.As], so the rules and the errors are the NATS
// path's: one implementation of each operation, two transports.
//
// Who calls is an [Authenticator]'s answer; [DevLogin] is the one of
// nbsecrets dev (one-time login URLs from `nbsecrets ui`, then an
// HttpOnly, SameSite=Strict session cookie). Every state-changing request
// carries the session's CSRF token and must come from the same origin;
// every reply has a Content-Security-Policy without inline scripts.
//
// Values travel only in request bodies and never come back: no reply,
// page, log line, cookie or URL holds one. Errors are JSON
// {"error":{"code","message"}} with stable codes (see openapi.json, also
// served at api/v1/openapi.json) mapped to 400, 401, 403, 404, 409, 413.
//
// The live rollout view ([Rollout]) shows, for a secret, each workspace
// that receives it, each kernel there and the version it holds, from the
// status agents publish on protocol.StatusSubject, as JSON or as
// server-sent events (the page uses those); call [Server.Close] before
// shutting the HTTP server down, to end the streams.
package web
