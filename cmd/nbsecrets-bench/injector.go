package main

import (
	"context"
	"fmt"
	"os/exec"
	"time"
)

// measureInjectorExec times n starts of `true` directly and n through
// `nbsecrets inject --socket S -- true`, alternating: the injector's own
// cost (its process start, the agent's answer, the exec) without a kernel's
// start-up noise, which in the restart rows is hundreds of milliseconds
// wide. Each clock runs from the fork to the child's exit.
func measureInjectorExec(ctx context.Context, bin, socket string, n int) (direct, inject []time.Duration, err error) {
	trueBin, err := exec.LookPath("true")
	if err != nil {
		return nil, nil, fmt.Errorf("injector overhead: %w", err)
	}
	run := func(argv ...string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		d := time.Since(start)
		if err != nil {
			return 0, fmt.Errorf("%s: %w: %s", argv[0], err, out)
		}
		return d, nil
	}
	for range n {
		d, err := run(trueBin)
		if err != nil {
			return nil, nil, err
		}
		direct = append(direct, d)
		// No -f FILE in the argv: the injector asks for the environment and
		// skips the announcement, as for a kernel without a connection file.
		i, err := run(bin, "inject", "--socket", socket, "--", trueBin)
		if err != nil {
			return nil, nil, err
		}
		inject = append(inject, i)
	}
	return direct, inject, nil
}
