// Package localapi is the wire form of a workspace agent's local API: what
// the injector and `nbsecrets status` send and receive over the agent's
// unix socket (HTTP/1.1, mode 0600, peers of the agent's own uid only; the
// host in the URL is ignored).
//
//	GET  /v1/env?connection_file=ABS  200 EnvResponse, else ErrorResponse
//	POST /v1/kernels                  Announcement; 204
//	GET  /v1/status                   200 the agent's status as JSON (never a value)
package localapi

const (
	// EnvPath answers GET with an EnvResponse for the kernel named by the
	// connection_file query parameter (absent when the kernel's argv names
	// none). It waits, within the request's deadline, for the agent's first
	// load of the records.
	EnvPath = "/v1/env"
	// KernelsPath takes a POSTed Announcement and answers 204.
	KernelsPath = "/v1/kernels"
	// StatusPath answers GET with the agent's status.
	StatusPath = "/v1/status"
)

// ManagedVar is the variable in which a kernel keeps, comma-separated, the
// names nbsecrets gave it (names only), so that a restarted agent or a new
// launch knows which to remove.
const ManagedVar = "NBSECRETS_MANAGED"

// EnvResponse is the body of a 200 answer to GET /v1/env.
type EnvResponse struct {
	// Env is the kernel's secrets by name, and ManagedVar listing the
	// names the agent manages.
	Env map[string]string `json:"env"`
	// Versions are the secrets' versions by name.
	Versions map[string]uint64 `json:"versions"`
}

// Announcement is the body of POST /v1/kernels: a kernel that is starting,
// with what it was given.
type Announcement struct {
	ConnectionFile string            `json:"connection_file"`
	PID            int               `json:"pid"`
	Versions       map[string]uint64 `json:"versions"`
}

// ErrorResponse is the body of a non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}
