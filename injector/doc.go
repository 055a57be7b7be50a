// Package injector starts kernels with the current secrets: `nbsecrets
// inject -- ARGV...` asks the workspace agent for the environment, then
// replaces itself with the kernel, and `nbsecrets kernelspec install` wraps a
// Jupyter kernelspec so that every kernel start goes through inject.
package injector
