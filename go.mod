module github.com/nbsecrets/nbsecrets

go 1.26.0

require github.com/nats-io/nkeys v0.4.17

require (
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
