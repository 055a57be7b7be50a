// Package jupyter speaks the Jupyter messaging protocol (version 5.3) to a
// running kernel over its ZeroMQ sockets, using the pure-Go
// github.com/go-zeromq/zmq4. It is how the agent re-seeds a kernel's
// environment without restarting it.
//
// # Wire format
//
// A message is a multipart ZeroMQ message:
//
//	[identities..., "<IDS|MSG>", hmac_hex, header, parent_header, metadata, content, buffers...]
//
// The signature is the hex HMAC (by default HMAC-SHA256) of the four JSON
// dict frames, keyed with the connection file's "key" taken as raw bytes.
// An empty key means unsigned messages. [Codec] encodes and decodes this
// form; it never looks at the socket.
//
// Kernels remember every signature they have seen and refuse a repeat, so
// every request needs a fresh msg_id: [NewMessage] makes one each time.
//
// # Client
//
// [Dial] connects DEALER sockets to shell and control and a SUB socket
// (subscribed to everything) to iopub. One goroutine per socket reads and
// routes: replies go to the [Client.Request] call whose msg_id is their
// parent's, iopub messages to [Client.Run] calls waiting on their parent and
// to the buffered [Client.IOPub] channel, which drops rather than blocks when
// its consumer is slow. [Client.Close] stops every goroutine the client
// started before it returns.
//
// zmq4 has no receive timeout, does not report a send without a live
// connection and does not reconnect reliably. So a client that loses its
// connection (the kernel died or restarted) fails its pending and later
// requests with [ErrDisconnected] and closes [Client.Done]; make a new client
// with Dial once the kernel is back. Every wait honours its context.
//
// # Executing code beside a running cell
//
// ipykernel 6 handles control messages on their own thread and accepts
// execute_request there, so a silent execute on [Control] runs while a long
// cell runs on shell. It is not the documented use of control and frontends
// may see a status flicker. ipykernel 7 offers subshells instead
// ([Client.CreateSubshell], then [ExecuteOptions].SubshellID on shell); use
// them where kernel_info lists the "kernel subshells" feature.
package jupyter
