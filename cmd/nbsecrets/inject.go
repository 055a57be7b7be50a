package main

import (
	"context"
	"errors"
)

func runInject(ctx context.Context, env *cliEnv, args []string) error {
	return errors.New("not implemented yet")
}
