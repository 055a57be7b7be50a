// Package agent is the per-workspace sidecar: it reads the workspace's
// secret records from JetStream, verifies and opens them, keeps the
// workspace's desired environment, and brings every running kernel of the
// workspace to it, live over the Jupyter protocol (a re-seed) where it can.
// It also serves the injector and `nbsecrets status` on a local unix socket.
package agent
