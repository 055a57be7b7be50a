// Package agent is the per-workspace sidecar: it reads the workspace's
// secret records from JetStream, verifies and opens them, keeps the
// workspace's desired environment, and brings every running kernel of the
// workspace to it, live (a re-seed) where it can: IPython kernels over the
// quiet channel (quiet.go), which Jupyter does not see, others over the
// Jupyter protocol.
// It also serves the injector and `nbsecrets status` on a local unix socket.
package agent
