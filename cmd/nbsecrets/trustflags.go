package main

import (
	"flag"
	"strconv"
)

// allowRemoteKernelsFlag defines --allow-remote-kernels for `nbsecrets
// agent`: serve kernels whose connection files name TCP addresses other
// than loopback. Off by default, also from $NBSECRETS_ALLOW_REMOTE_KERNELS
// ("true", "1"). Wire it as agent.Config.AllowRemoteKernels.
func allowRemoteKernelsFlag(fs *flag.FlagSet) *bool {
	def, _ := strconv.ParseBool(envOr("NBSECRETS_ALLOW_REMOTE_KERNELS", "false"))
	return fs.Bool("allow-remote-kernels", def,
		"serve kernels whose connection files name non-loopback TCP addresses; their listeners' uids cannot be checked ($NBSECRETS_ALLOW_REMOTE_KERNELS)")
}
