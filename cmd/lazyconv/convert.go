package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	"github.com/lazyconv/lazyconv/converter"
)

func imageConvertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image to eStargz (lossless) or uncompressed layers",
		ArgsUsage: "SRC DST",
		Description: `Convert an image's layers, writing the result as DST.

e.g. 'lazyconv image convert --estargz --oci example.com/foo:orig example.com/foo:esgz'

Layers already converted (by lazyconv, for this or any image sharing them) come
from the variant cache without being read. eStargz conversion is lossless:
unpacking a converted layer yields the source tar byte for byte.`,
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "estargz", Usage: "convert layers to eStargz (lossless)"},
			&cli.BoolFlag{Name: "uncompress", Usage: "convert layers to uncompressed tar"},
			&cli.BoolFlag{Name: "oci", Usage: "convert Docker media types to OCI ones (eStargz annotations need it)"},
			&cli.IntFlag{Name: "estargz-compression-level", Usage: "eStargz gzip level", Value: converter.DefaultEStargzCompressionLevel},
			&cli.IntFlag{Name: "estargz-chunk-size", Usage: "eStargz chunk size in bytes (0: 4 MiB)", Value: converter.DefaultEStargzChunkSize},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the new image's digest"},
		}, platformFlags...),
		DisableSliceFlagSeparator: true,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 2 {
				return fmt.Errorf("image convert takes SRC and DST: %w", errdefs.ErrInvalidArgument)
			}
			src, dst := cmd.Args().Get(0), cmd.Args().Get(1)
			lc, err := layerConverter(cmd)
			if err != nil {
				return err
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
			conv, err := s.converter()
			if err != nil {
				return err
			}
			progress := converter.NewProgress()
			start := time.Now()
			displayCtx, stopDisplay := context.WithCancel(ctx)
			displayDone := make(chan struct{})
			if !cmd.Bool("quiet") {
				go func() {
					newProgressDisplay(s.out, progress).run(displayCtx)
					close(displayDone)
				}()
			} else {
				close(displayDone)
			}
			res, err := conv.ConvertImage(s.ctx, s.store.ImageStore(), src, dst, converter.ImageOptions{
				Layer: lc, DockerToOCI: cmd.Bool("oci"), Platforms: pm, Progress: progress,
			})
			stopDisplay()
			<-displayDone
			// As containerd's GC scheduler does after a lease is dropped.
			if _, gcErr := s.store.GarbageCollect(s.ctx); gcErr != nil && err == nil {
				err = gcErr
			}
			if err != nil {
				return err
			}
			if cmd.Bool("quiet") {
				fmt.Fprintln(s.out, res.Image.Target.Digest)
				return nil
			}
			fmt.Fprintln(s.out)
			printSummary(s.out, res, progress, time.Since(start))
			fmt.Fprintf(s.out, "%s %s\n", res.Image.Name, res.Image.Target.Digest)
			return nil
		},
	}
}

// layerConverter builds the layer converter the flags ask for.
func layerConverter(cmd *cli.Command) (converter.LayerConverter, error) {
	switch {
	case cmd.Bool("estargz") && cmd.Bool("uncompress"):
		return nil, fmt.Errorf("--estargz and --uncompress exclude each other: %w", errdefs.ErrInvalidArgument)
	case cmd.Bool("estargz"):
		if !cmd.Bool("oci") {
			fmt.Fprintln(os.Stderr, "lazyconv: warning: --estargz without --oci drops the TOC digest annotations of Docker-typed layers")
		}
		return converter.NewEStargz(
			converter.WithEStargzCompressionLevel(int(cmd.Int("estargz-compression-level"))),
			converter.WithEStargzChunkSize(int(cmd.Int("estargz-chunk-size"))),
		)
	case cmd.Bool("uncompress"):
		return converter.NewRecompress(converter.Uncompressed, 0)
	}
	return nil, nil
}
