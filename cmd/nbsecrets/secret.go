package main

import (
	"context"
	"errors"
)

func runSecret(ctx context.Context, env *cliEnv, args []string) error {
	return errors.New("not implemented yet")
}
