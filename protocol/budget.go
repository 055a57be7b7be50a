package protocol

// The per-workspace budget. Every secret that reaches a workspace goes into
// the environment of each of its kernels and of every program those start,
// and Linux refuses to start a program whose argument and environment
// strings pass ARG_MAX (a quarter of the stack limit, 2 MiB by default):
// execve fails with E2BIG ("argument list too long"). Without a budget, one
// project member with thirty-four 64 KiB project secrets stops every
// kernel start, and every subprocess of every running kernel, in the
// project. The budget keeps the secrets' share of the environment far
// below that limit: the service refuses a create, update, clone or share
// that would take a workspace over it, and the agent, should a workspace
// still receive more (records written before the budget, or two changes
// racing), keeps secrets by precedence until the budget is spent and drops
// and logs the rest.
const (
	// MaxWorkspaceSecrets is the most secrets one workspace's environment
	// holds.
	MaxWorkspaceSecrets = 256
	// MaxWorkspaceEnvBytes is the most bytes the secrets of one workspace
	// take in a process's environment, counted by EnvSize.
	MaxWorkspaceEnvBytes = 256 << 10
)

// EnvSize is what a variable called name with a value of size bytes costs a
// process towards ARG_MAX: the string "name=value" with its NUL, and the
// pointer to it.
func EnvSize(name string, size int) int { return len(name) + 1 + size + 1 + 8 }
