package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/urfave/cli/v3"
)

var platformFlags = []cli.Flag{
	&cli.StringSliceFlag{Name: "platform", Usage: "only this platform (repeatable; default: this machine's)"},
	&cli.BoolFlag{Name: "all-platforms", Usage: "every platform"},
}

// platformMatcher follows ctr: --all-platforms, else the --platform list,
// else this machine's platform.
func platformMatcher(cmd *cli.Command) (platforms.MatchComparer, error) {
	if cmd.Bool("all-platforms") {
		return platforms.All, nil
	}
	if pss := cmd.StringSlice("platform"); len(pss) > 0 {
		all, err := platforms.ParseAll(pss)
		if err != nil {
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		return platforms.Ordered(all...), nil
	}
	return platforms.DefaultStrict(), nil
}

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:    "image",
		Aliases: []string{"images", "i"},
		Usage:   "manage and convert images",
		Commands: []*cli.Command{
			imageImportCommand(), imageExportCommand(), imageListCommand(), imageRemoveCommand(),
			imageConvertCommand(), imageVerifyCommand(), imagePullCommand(), imagePushCommand(), imageOptimizeCommand(),
		},
	}
}

func imageImportCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "import an OCI or Docker image archive ('-' reads standard input)",
		ArgsUsage: "FILE",
		Flags:     platformFlags,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 {
				return fmt.Errorf("image import takes one FILE: %w", errdefs.ErrInvalidArgument)
			}
			var r io.Reader = os.Stdin
			if name := cmd.Args().First(); name != "-" {
				f, err := os.Open(name)
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			pm, err := platformMatcher(cmd)
			if err != nil {
				return err
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			imgs, err := s.client.Import(s.ctx, r, containerd.WithImportPlatform(pm),
				containerd.WithAllPlatforms(cmd.Bool("all-platforms")))
			if err != nil {
				return fmt.Errorf("importing %s: %w", cmd.Args().First(), err)
			}
			for _, img := range imgs {
				fmt.Fprintf(s.out, "imported %s %s\n", img.Name, img.Target.Digest)
			}
			return nil
		},
	}
}

func imageExportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "export images as an OCI archive (with Docker's manifest.json) ('-' writes standard output)",
		ArgsUsage: "FILE REF...",
		Flags:     platformFlags,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() < 2 {
				return fmt.Errorf("image export takes FILE and at least one REF: %w", errdefs.ErrInvalidArgument)
			}
			pm, err := platformMatcher(cmd)
			if err != nil {
				return err
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			opts := []archive.ExportOpt{archive.WithPlatform(pm)}
			if cmd.Bool("all-platforms") {
				opts = append(opts, archive.WithAllPlatforms())
			}
			for _, ref := range cmd.Args().Slice()[1:] {
				opts = append(opts, archive.WithImage(s.client.ImageService(), ref))
			}
			var w io.Writer = os.Stdout
			if name := cmd.Args().First(); name != "-" {
				f, err := os.Create(name)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			return s.client.Export(s.ctx, w, opts...)
		},
	}
}

func imageListCommand() *cli.Command {
	return &cli.Command{
		Name:    "ls",
		Aliases: []string{"list"},
		Usage:   "list images",
		Flags:   []cli.Flag{&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "names only"}},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			imgs, err := s.client.ImageService().List(s.ctx)
			if err != nil {
				return err
			}
			sort.Slice(imgs, func(i, j int) bool { return imgs[i].Name < imgs[j].Name })
			if cmd.Bool("quiet") {
				for _, img := range imgs {
					fmt.Fprintln(s.out, img.Name)
				}
				return nil
			}
			cs := s.client.ContentStore()
			tw := tabwriter.NewWriter(s.out, 1, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "REF\tTYPE\tDIGEST\tSIZE\tPLATFORMS")
			for _, img := range imgs {
				size, err := img.Size(s.ctx, cs, platforms.All)
				sizeText := convertcmd.HumanSize(size)
				if err != nil {
					sizeText = "-"
				}
				var plats []string
				if ps, err := images.Platforms(s.ctx, cs, img.Target); err == nil {
					for _, p := range ps {
						plats = append(plats, platforms.Format(p))
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Name, img.Target.MediaType, img.Target.Digest, sizeText, strings.Join(plats, ","))
			}
			return tw.Flush()
		},
	}
}

func imageRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Aliases:   []string{"remove", "delete"},
		Usage:     "remove images (their content goes at the next gc)",
		ArgsUsage: "REF...",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() == 0 {
				return fmt.Errorf("image rm takes at least one REF: %w", errdefs.ErrInvalidArgument)
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			var failed error
			for _, ref := range cmd.Args().Slice() {
				if err := s.client.ImageService().Delete(s.ctx, ref, images.SynchronousDelete()); err != nil {
					fmt.Fprintf(os.Stderr, "%s: %v\n", ref, err)
					failed = err
					continue
				}
				fmt.Fprintln(s.out, ref)
			}
			return failed
		},
	}
}

func imageVerifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "verify every eStargz or zstd:chunked layer of an image (TOC digest, and every file against the TOC) and every zTOC of a SOCI-enabled one (each span inflated from its checkpoint, the file table)",
		ArgsUsage: "REF",
		Description: `Against a daemon the layers are verified inside it (or in the lazyconvd
sidecar): no blob crosses the socket.`,
		Flags: platformFlags,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 {
				return fmt.Errorf("image verify takes one REF: %w", errdefs.ErrInvalidArgument)
			}
			if _, err := platformMatcher(cmd); err != nil {
				return err
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			ref := cmd.Args().First()
			resp, err := s.api.Verify(s.ctx, &api.VerifyRequest{
				Ref: ref, Platforms: cmd.StringSlice("platform"), AllPlatforms: cmd.Bool("all-platforms"),
			})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(s.out, 1, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "LAYER\tTOC DIGEST\tENTRIES\tFILES\tBYTES")
			var bad int
			for _, l := range resp.GetLayers() {
				if l.GetError() != "" {
					bad++
					fmt.Fprintf(tw, "%s\tFAILED: %s\t\t\t\n", convertcmd.ShortDigest(l.GetDigest()), l.GetError())
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", convertcmd.ShortDigest(l.GetDigest()), convertcmd.ShortDigest(l.GetTocDigest()), l.GetEntries(), l.GetFiles(), convertcmd.HumanSize(l.GetBytes()))
			}
			tw.Flush()
			if bad > 0 {
				return fmt.Errorf("%d of %d layers failed verification: %w", bad, len(resp.GetLayers()), errdefs.ErrDataLoss)
			}
			fmt.Fprintf(s.out, "%s: %d lazy-pull layers verified\n", ref, len(resp.GetLayers()))
			return nil
		},
	}
}

func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
