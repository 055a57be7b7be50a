// Package injector starts kernels with the current secrets: `nbsecrets
// inject -- ARGV...` asks the workspace agent for the environment, then
// replaces itself with the kernel, and `nbsecrets kernelspec install` wraps a
// Jupyter kernelspec so that every kernel start goes through inject.
//
// # Starting a kernel
//
// [Prepare] asks the agent, over its local API (HTTP/1.1 on a unix socket),
// for the environment of the kernel named by the connection file in the
// kernel's argv ([ConnectionFile]), computes the kernel's environment and
// announces the kernel to the agent, so that the agent watches it from its
// first instant. [Exec] then replaces the process with the kernel
// (execve(2)), so the PID the kernel manager knows, its process group and the
// signals it sends stay the kernel's.
//
// The agent is never a reason for a kernel not to start: when it cannot be
// reached within [Options.Timeout] or answers an error, the kernel starts
// without secrets, one line on standard error says so, and the agent re-seeds
// the kernel when it finds it in the Jupyter runtime directory. A kernel
// program that cannot be found is an error.
//
// The environment: start from the inherited one; remove the names that an
// inherited NBSECRETS_MANAGED lists and the agent no longer gives (Jupyter
// reuses the first launch's environment on every restart, and a kernel
// started from inside another kernel inherits its secrets); then set the
// agent's names. NBSECRETS_MANAGED is set to the names actually set, so that
// the next start and the agent's re-seeds know what nbsecrets owns. Names the
// agent gives that are not valid secret names ([protocol.ValidateName]) are
// ignored, and an inherited NBSECRETS_MANAGED never removes such a name (PATH,
// LD_PRELOAD...). Values are never printed; messages name variables at most.
//
// # The agent's local API (client side)
//
//	GET  /v1/env?connection_file=ABS  -> 200 EnvResponse, else {"error": "..."}
//	POST /v1/kernels  KernelAnnouncement -> 204 (best effort)
//
// connection_file is left out of GET /v1/env when the kernel's argv names no
// connection file, and no announcement is made then.
//
// # Kernelspecs
//
// [InstallKernelspec] finds a kernelspec the way jupyter_client does (the
// first directory of the Jupyter data path holding kernels/NAME/kernel.json,
// names compared without regard to case; ipykernel's built-in spec for
// python3 when none is installed) and writes DATA_DIR/kernels/NAME whose argv
// is `nbsecrets inject --socket SOCKET -- ORIGINAL_ARGV...`, recording what it
// wrapped under metadata.nbsecrets. Installing again updates the binary and
// socket in place; [UninstallKernelspec] restores a user spec it replaced or
// removes the directory it made.
package injector
