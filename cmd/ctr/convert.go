package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/cmd/ctr/commands"
	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"
	"google.golang.org/grpc"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/lazyconv/lazyconv/service"
)

// extendConvert adds lazyconv's format flags to `ctr images convert`; a
// conversion that names one runs in the plugin, any other is upstream's.
func extendConvert(ctr *cli.Command) error {
	images := subcommand(ctr, "images")
	if images == nil {
		return errors.New("upstream ctr has no images command")
	}
	convert := subcommand(images, "convert")
	if convert == nil {
		return errors.New("upstream ctr has no images convert command")
	}
	// Upstream's flags keep their meaning (its --uncompress is its own).
	var upstream []string
	for _, f := range convert.Flags {
		upstream = append(upstream, f.Names()...)
	}
	var others []string
	for _, f := range service.Formats() {
		if slices.Contains(upstream, f.Name) {
			others = append(others, f.Name)
		}
	}
	convert.Flags = append(convert.Flags, append(convertcmd.FormatFlags(others...), convertcmd.RequireLosslessFlag, convertcmd.NoRegistryCacheFlag, convertcmd.OverwriteFlag)...)
	convert.Usage += " (lazyconv: --estargz, --zstdchunked, --nydus run in the daemon)"
	upstreamAction := convert.Action
	convert.Action = func(ctx context.Context, cmd *cli.Command) error {
		f, err := lazyconvFormat(cmd, others)
		if err != nil {
			return err
		}
		if f.Name == service.FormatNone {
			return upstreamAction(ctx, cmd)
		}
		return convertInDaemon(ctx, cmd, f)
	}
	return nil
}

// lazyconvFormat is the lazyconv format the flags name (FormatNone for
// none), refusing a mix with upstream's own layer conversions.
func lazyconvFormat(cmd *cli.Command, others []string) (format.Format, error) {
	f, err := convertcmd.ChosenFormat(cmd, others...)
	if err != nil || f.Name == service.FormatNone {
		return f, err
	}
	if cmd.Bool("uncompress") || cmd.IsSet("erofs") {
		return format.Format{}, fmt.Errorf("--%s is lazyconv's and --uncompress/--erofs are upstream's: convert with one of them: %w",
			f.Name, errdefs.ErrInvalidArgument)
	}
	return f, nil
}

// convertInDaemon asks the lazyconv plugin on containerd's socket for the
// conversion, showing its progress, and prints the new image's digest as
// upstream's convert does.
func convertInDaemon(ctx context.Context, cmd *cli.Command, f format.Format) error {
	src, dst := cmd.Args().Get(0), cmd.Args().Get(1)
	if src == "" || dst == "" {
		return errors.New("src and target image need to be specified")
	}
	opts, err := convertcmd.FlagOptions(cmd, f)
	if err != nil {
		return err
	}
	client, ctx, cancel, err := commands.NewClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer cancel()
	defer client.Close()
	conn, ok := client.Conn().(*grpc.ClientConn)
	if !ok {
		return fmt.Errorf("containerd's connection is no gRPC connection: %w", errdefs.ErrNotImplemented)
	}
	converter := api.NewConverterClient(conn)
	req := &api.ConvertRequest{
		Source: src, Target: dst, Format: f.Name, Oci: cmd.Bool("oci"), Options: opts,
		Platforms: cmd.StringSlice("platform"), AllPlatforms: cmd.Bool("all-platforms"),
		RequireLossless: cmd.Bool("require-lossless"), NoRegistryCache: cmd.Bool("no-registry-cache"),
		Overwrite: cmd.Bool("overwrite"),
	}
	result, _, err := convertcmd.Run(ctx, cmd.Root().ErrWriter, false, func(ctx context.Context, onEvent func(*api.ConvertEvent) error) error {
		stream, err := converter.Convert(ctx, req)
		if err == nil {
			_, err = api.ReceiveConvert(stream, onEvent)
		}
		return convertcmd.NativeError(err, fmt.Sprintf("containerd at %s has no lazyconv plugin (io.containerd.grpc.v1.lazyconv): run containerd-lazyconv",
			cmd.Root().String("address")))
	})
	if err != nil {
		return err
	}
	for _, w := range result.GetWarnings() {
		_, _ = fmt.Fprintln(cmd.Root().ErrWriter, "warning:", w)
	}
	_, _ = fmt.Fprintln(cmd.Writer, result.GetTarget().GetDigest())
	return nil
}
