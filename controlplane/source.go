package controlplane

import "context"

// DirectorySource says who exists and who belongs where: the directory
// file (nbsecrets serve), or a JupyterHub's users and groups
// (controlplane/hub). Either way a change reaches the service through
// [Service.SetDirectory]: the same recomputation, the same sealed puts and
// signed tombstones.
type DirectorySource interface {
	// Directory returns the directory as it is now.
	Directory(ctx context.Context) (*Directory, error)
	// Watch follows the source until ctx ends, calling apply with every
	// directory that differs from the last one applied.
	Watch(ctx context.Context, apply func(*Directory) error)
}
