// Command lazyconv converts container images to lazy-pull formats in the style
// of ctr. With --root (the default) it embeds containerd's metadata store
// in-process and needs no daemon.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/urfave/cli/v3"

	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/lazyconv/lazyconv/localstore"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app().Run(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "lazyconv:", err)
		os.Exit(1)
	}
}

func app() *cli.Command {
	return &cli.Command{
		Name:    "lazyconv",
		Usage:   "convert container images to lazy-pull formats (eStargz) inside containerd's stores",
		Version: version,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "root", Usage: "embedded store directory (containerd metadata DB + content store, no daemon); chosen when set, or when no containerd socket exists", Value: localstore.DefaultRoot(), Sources: cli.EnvVars("LAZYCONV_ROOT")},
			&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Usage: "containerd's socket (daemon mode)", Value: defaultAddress, Sources: cli.EnvVars("CONTAINERD_ADDRESS")},
			&cli.StringSliceFlag{Name: "trusted-publisher", Usage: "embedded store: a repository pattern (host/repository, path.Match syntax, /** for everything below) whose published conversions are adopted without reading their layers (repeatable; the daemon's is trusted_publishers)"},
			&cli.StringFlag{Name: "converter-address", Usage: "lazyconvd sidecar socket serving the conversion API (daemon mode)", Sources: cli.EnvVars("LAZYCONV_CONVERTER_ADDRESS")},
			&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Usage: "containerd namespace", Value: namespaces.Default, Sources: cli.EnvVars("CONTAINERD_NAMESPACE")},
			&cli.BoolFlag{Name: "debug", Usage: "debug logging"},
		}, convertcmd.LimitFlags()...),
		Before: func(ctx context.Context, cmd *cli.Command) (context.Context, error) {
			level := "error"
			if cmd.Bool("debug") {
				level = "debug"
			}
			if err := log.SetLevel(level); err != nil {
				return ctx, err
			}
			return ctx, nil
		},
		Commands: []*cli.Command{imageCommand(), contentCommand(), gcCommand(), versionCommand()},
	}
}

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove content no image, lease or reference keeps",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			if !s.embedded() {
				return fmt.Errorf("containerd collects garbage itself after leases and images are removed; gc is for --root stores: %w", errdefs.ErrNotImplemented)
			}
			stats, err := s.store.GarbageCollect(s.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "garbage collected in %s\n", stats.Elapsed())
			return nil
		},
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the client's version and the conversion service's capabilities",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			fmt.Fprintf(cmd.Root().Writer, "lazyconv %s\n", version)
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			caps, err := s.api.Capabilities(s.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "service %s at %s: default format %s, %d workers\n", caps.GetVersion(), s.where, caps.GetDefaultFormat(), caps.GetWorkers())
			if d := caps.GetDeflate(); d != "" { // older services do not say
				fmt.Fprintf(s.out, "  deflate %s (eStargz's gzip; %s)\n", d, deflateNote(d))
			}
			for _, f := range caps.GetFormats() {
				state := "available"
				if !f.GetAvailable() {
					state = "unavailable: " + f.GetReason()
				}
				fmt.Fprintf(s.out, "  format %-12s %s\n", f.GetName(), state)
			}
			for _, b := range caps.GetBuilders() {
				fmt.Fprintf(s.out, "  builder %-11s found=%t %s %s\n", b.GetName(), b.GetFound(), b.GetPath(), b.GetVersion())
			}
			return nil
		},
	}
}

// deflateNote says what a build's deflate means for eStargz conversion.
func deflateNote(d string) string {
	if strings.HasPrefix(d, "libdeflate") {
		return "linked in: several times faster than the pure-Go build at the same level, and smaller"
	}
	return "pure Go: build with libdeflate-dev installed (make) for several times faster eStargz"
}
