package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v3"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
)

func contentCommand() *cli.Command {
	return &cli.Command{
		Name:  "content",
		Usage: "inspect blobs in the content store",
		Commands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list blobs with their size and labels",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					s, err := openSession(ctx, cmd)
					if err != nil {
						return err
					}
					defer s.Close()
					tw := tabwriter.NewWriter(s.out, 1, 8, 2, ' ', 0)
					fmt.Fprintln(tw, "DIGEST\tSIZE\tLABELS")
					err = s.client.ContentStore().Walk(s.ctx, func(info content.Info) error {
						fmt.Fprintf(tw, "%s\t%s\t%s\n", info.Digest, convertcmd.HumanSize(info.Size), formatLabels(info.Labels))
						return nil
					})
					tw.Flush()
					return err
				},
			},
			{
				Name:      "check",
				Usage:     "tell whether a blob is eStargz (from the label cache when known)",
				ArgsUsage: "DIGEST",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					dgst, err := digest.Parse(cmd.Args().First())
					if err != nil {
						return fmt.Errorf("content check needs a digest: %v: %w", err, errdefs.ErrInvalidArgument)
					}
					s, err := openSession(ctx, cmd)
					if err != nil {
						return err
					}
					defer s.Close()
					resp, err := s.api.CheckEStargz(s.ctx, &api.CheckEStargzRequest{Digest: dgst.String()})
					if err != nil {
						return err
					}
					is, cached := resp.GetEstargz(), resp.GetCached()
					source := "checked footer and TOC"
					if cached {
						source = "cached"
					}
					verdict := "not eStargz"
					if is {
						verdict = "eStargz"
					}
					fmt.Fprintf(s.out, "%s: %s (%s)\n", dgst, verdict, source)
					return nil
				},
			},
		},
	}
}
