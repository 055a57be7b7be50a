// Package controlplane is the secrets service, the other side of the
// protocol: it carries out users' operations on secrets (create, update,
// delete, ...), enforces who may see what, and writes a signed, sealed
// record for every workspace that may have a secret into JetStream.
package controlplane
