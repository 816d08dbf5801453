package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/lazyconv/lazyconv/service"
)

func imageConvertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image to eStargz or zstd:chunked (lossless), or uncompressed layers",
		ArgsUsage: "SRC DST",
		Description: `Convert an image's layers, writing the result as DST.

e.g. 'lazyconv image convert --estargz --oci example.com/foo:orig example.com/foo:esgz'

Layers already converted (by lazyconv, for this or any image sharing them) come
from the variant cache without being read. eStargz conversion is lossless:
unpacking a converted layer yields the source tar byte for byte. Against a
daemon the conversion runs inside it (or in the lazyconvd sidecar); no blob
crosses the socket.

An image pulled from a registry is first looked up there: a conversion another
node pushed (published as a referrer of the source manifest) is adopted without
converting or reading a layer, if it rebuilds from the source to the same
digest. --no-registry-cache converts here.

DST may be SRC (in-place conversion). A DST that exists and that lazyconv did
not make (pulled, imported, tagged, built) is refused unless --overwrite is
given; one lazyconv made, by an earlier conversion or a rule, is replaced.`,
		Flags: append(append([]cli.Flag{
			&cli.BoolFlag{Name: "oci", Usage: "convert Docker media types to OCI ones (eStargz annotations need it)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the new image's digest"},
			convertcmd.RequireLosslessFlag,
			convertcmd.NoRegistryCacheFlag,
			convertcmd.OverwriteFlag,
		}, convertcmd.FormatFlags()...), append(append([]cli.Flag{}, registryFlags...), platformFlags...)...),
		DisableSliceFlagSeparator: true,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 2 {
				return fmt.Errorf("image convert takes SRC and DST: %w", errdefs.ErrInvalidArgument)
			}
			req, err := convertRequest(cmd)
			if err != nil {
				return err
			}
			if _, err := platformMatcher(cmd); err != nil {
				return err
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			return runConvert(s, cmd, req, time.Now())
		},
	}
}

// runConvert runs a conversion request with live progress, then prints the
// summary (or, with --quiet, the new image's digest).
func runConvert(s *session, cmd *cli.Command, req *api.ConvertRequest, start time.Time) error {
	result, layers, err := convertcmd.Run(s.ctx, s.out, cmd.Bool("quiet"), func(ctx context.Context, onEvent func(*api.ConvertEvent) error) error {
		return s.api.Convert(ctx, req, onEvent)
	})
	if s.embedded() {
		// As containerd's GC scheduler does after a lease is dropped.
		if _, gcErr := s.store.GarbageCollect(s.ctx); gcErr != nil && err == nil {
			err = gcErr
		}
	}
	if err != nil {
		return err
	}
	for _, w := range result.GetWarnings() {
		fmt.Fprintln(os.Stderr, "lazyconv: warning:", w)
	}
	if cmd.Bool("quiet") {
		fmt.Fprintln(s.out, result.GetTarget().GetDigest())
		return nil
	}
	fmt.Fprintln(s.out)
	convertcmd.PrintSummary(s.out, layers, time.Since(start))
	for _, src := range slices.Sorted(maps.Keys(result.GetShared())) {
		fmt.Fprintf(s.out, "manifest %s: converted by another node, adopted from %s\n", convertcmd.ShortDigest(src), result.GetShared()[src])
	}
	fmt.Fprintf(s.out, "%s %s\n", result.GetName(), result.GetTarget().GetDigest())
	return nil
}

// convertRequest builds the API request the flags ask for. Options are sent
// only when set, so that a daemon's configured defaults apply otherwise.
func convertRequest(cmd *cli.Command) (*api.ConvertRequest, error) {
	req := &api.ConvertRequest{
		Source: cmd.Args().Get(0), Target: cmd.Args().Get(1), Oci: cmd.Bool("oci"),
		Platforms: cmd.StringSlice("platform"), AllPlatforms: cmd.Bool("all-platforms"),
		RequireLossless: cmd.Bool("require-lossless"), NoRegistryCache: cmd.Bool("no-registry-cache"),
		Overwrite: cmd.Bool("overwrite"),
	}
	// Layers of a lazily pulled image are fetched from their registry on first use.
	opts := registryOptions(cmd)
	req.Registry = &api.RegistryOptions{PlainHttp: opts.PlainHTTP, Username: opts.Username, Password: opts.Password}
	f, err := convertcmd.ChosenFormat(cmd)
	if err != nil {
		return nil, err
	}
	req.Format = f.Name
	if f.Name == service.FormatNone {
		return req, nil
	}
	// Validate here, so that bad options fail before any connection.
	if req.Options, err = convertcmd.FlagOptions(cmd, f); err != nil {
		return nil, err
	}
	if f.Name == service.FormatEStargz && !cmd.Bool("oci") {
		fmt.Fprintln(os.Stderr, "lazyconv: warning: without --oci, Docker-typed layers lose their eStargz TOC digest annotations")
	}
	return req, nil
}
