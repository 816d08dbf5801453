// Command lazyconv converts container images to lazy-pull formats in the style
// of ctr. With --root (the default) it embeds containerd's metadata store
// in-process and needs no daemon.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/urfave/cli/v3"

	"github.com/lazyconv/lazyconv/converter"
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
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "root", Usage: "embedded store directory (containerd metadata DB + content store, no daemon)", Value: localstore.DefaultRoot(), Sources: cli.EnvVars("LAZYCONV_ROOT")},
			&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Usage: "containerd namespace", Value: namespaces.Default, Sources: cli.EnvVars("CONTAINERD_NAMESPACE")},
			&cli.BoolFlag{Name: "debug", Usage: "debug logging"},
		},
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
		Commands: []*cli.Command{imageCommand(), contentCommand(), gcCommand()},
	}
}

// session is an open embedded store with a namespaced context.
type session struct {
	ctx   context.Context
	store *localstore.Store
	out   io.Writer
}

func openSession(ctx context.Context, cmd *cli.Command) (*session, error) {
	ctx = namespaces.WithNamespace(ctx, cmd.String("namespace"))
	st, err := localstore.Open(ctx, cmd.String("root"))
	if err != nil {
		return nil, err
	}
	return &session{ctx: ctx, store: st, out: cmd.Root().Writer}, nil
}

func (s *session) Close() error { return s.store.Close() }

// converter returns a Converter over the session's store.
func (s *session) converter() (*converter.Converter, error) {
	return converter.New(s.store.ContentStore(), s.store.LeaseManager())
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
			stats, err := s.store.GarbageCollect(s.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "garbage collected in %s\n", stats.Elapsed())
			return nil
		},
	}
}
