package kerneltest

import (
	"context"
	"strings"
	"testing"
)

// TestIRkernel starts Debian's IRkernel from its kernelspec and runs a cell.
func TestIRkernel(t *testing.T) {
	k := Start(t, Options{Argv: IRkernel(t), KernelName: "ir"})
	c := k.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	ki, err := c.KernelInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ki.LanguageInfo.Name != "R" {
		t.Errorf("language %q, want R", ki.LanguageInfo.Name)
	}
	res, err := c.Run(ctx, "cat(6 * 7)")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(res.Stdout); got != "42" {
		t.Errorf("stdout %q", got)
	}
}
