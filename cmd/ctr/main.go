// Command ctr is containerd's own ctr (every upstream command unchanged)
// whose `images convert` also takes lazyconv's formats: --estargz,
// --zstdchunked, --nydus and their option flags, run by the lazyconv plugin
// inside containerd-lazyconv with live progress. Without them, convert is
// upstream's (--uncompress, --erofs, --oci, --platform, --all-platforms).
// ctr-remote and accelerated-container-image's ctr are the precedents.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/cmd/ctr/app"
	"github.com/urfave/cli/v3"
)

func main() {
	ctx := context.Background()
	ctr := app.New()
	if err := extendConvert(ctr); err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "ctr:", err)
		os.Exit(1)
	}
	if err := ctr.Run(ctx, os.Args); err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "ctr:", err)
		os.Exit(1)
	}
}

// subcommand finds a command's subcommand by name.
func subcommand(cmd *cli.Command, name string) *cli.Command {
	for _, c := range cmd.Commands {
		if c.Name == name {
			return c
		}
	}
	return nil
}
