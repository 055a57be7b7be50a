package main

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/nbsecrets/nbsecrets/controlplane"
)

// fileSource is the directory file as a controlplane.DirectorySource (the
// other is a JupyterHub, controlplane/hub): Watch follows the file as
// watchDirectory does (SIGHUP, file events, a periodic check).
type fileSource struct {
	path    string
	current []byte // the bytes Directory last read
	log     hclog.Logger
}

var _ controlplane.DirectorySource = (*fileSource)(nil)

// Directory reads and checks the file.
func (f *fileSource) Directory(context.Context) (*controlplane.Directory, error) {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	d, err := parseDirectory(f.path, data)
	if err != nil {
		return nil, err
	}
	f.current = data
	return d, nil
}

// Watch calls apply with each new version of the file until ctx ends.
func (f *fileSource) Watch(ctx context.Context, apply func(*controlplane.Directory) error) {
	watchDirectory(ctx, f.path, f.current, f.log, func(data []byte) error {
		d, err := parseDirectory(f.path, data)
		if err != nil {
			return err
		}
		return apply(d)
	})
}
