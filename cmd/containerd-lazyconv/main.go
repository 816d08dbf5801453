// Command containerd-lazyconv is upstream containerd's daemon, with its
// built-in plugins, plus lazyconv's plugins: image conversion in-process,
// served on containerd's own socket.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/cmd/containerd/command"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"

	lazyconvplugin "github.com/lazyconv/lazyconv/plugin"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	lazyconvplugin.Version = version
	if err := command.App().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		os.Exit(1)
	}
}
