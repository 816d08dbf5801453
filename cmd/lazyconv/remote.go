package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/remote"
)

var registryFlags = []cli.Flag{
	&cli.BoolFlag{Name: "plain-http", Usage: "talk HTTP, not HTTPS, to the registry"},
	&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "registry credentials, USER[:PASSWORD]"},
}

// registryOptions reads --plain-http and --user.
func registryOptions(cmd *cli.Command) remote.RegistryOptions {
	user, pass, _ := strings.Cut(cmd.String("user"), ":")
	return remote.RegistryOptions{PlainHTTP: cmd.Bool("plain-http"), Username: user, Password: pass}
}

func imagePullCommand() *cli.Command {
	return &cli.Command{
		Name:  "pull",
		Usage: "fetch an image's content from a registry (no unpacking: conversion needs only content)",
		Description: `With --lazy only the index, manifests and configs are fetched: each layer is
fetched from the same registry the first time a conversion needs it.`,
		ArgsUsage: "REF",
		Flags: append(append([]cli.Flag{
			&cli.BoolFlag{Name: "lazy", Usage: "fetch index, manifests and configs only; layers come on first use"},
		}, registryFlags...), platformFlags...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 {
				return fmt.Errorf("image pull takes one REF: %w", errdefs.ErrInvalidArgument)
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
			resolver := registryOptions(cmd).ResolverFor(cmd.Args().First())
			var img images.Image
			if cmd.Bool("lazy") {
				img, err = remote.PullLazy(s.ctx, s.client.ContentStore(), s.client.ImageService(), s.client.LeasesService(), resolver, cmd.Args().First(), pm)
			} else {
				img, err = s.client.Fetch(s.ctx, cmd.Args().First(), containerd.WithResolver(resolver), containerd.WithPlatformMatcher(pm))
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "%s %s\n", img.Name, img.Target.Digest)
			return nil
		},
	}
}

func imagePushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "push an image to a registry",
		ArgsUsage: "REMOTE [LOCAL]",
		Description: `Layers whose distribution source is a repository of the target registry are
mounted across repositories instead of uploaded. With --force-compression every
pushed layer is in that format: missing variants are converted on the way (and
kept in the variant cache).`,
		Flags: append(append([]cli.Flag{
			&cli.StringFlag{Name: "force-compression", Usage: "push every layer as FORMAT (estargz, zstdchunked, gzip, zstd, uncompress)"},
		}, registryFlags...), platformFlags...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if n := cmd.Args().Len(); n < 1 || n > 2 {
				return fmt.Errorf("image push takes REMOTE and optionally LOCAL: %w", errdefs.ErrInvalidArgument)
			}
			target, local := cmd.Args().Get(0), cmd.Args().Get(1)
			if local == "" {
				local = target
			}
			if _, err := platformMatcher(cmd); err != nil {
				return err
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			opts := registryOptions(cmd)
			resp, err := s.api.Push(s.ctx, &api.PushRequest{
				Ref: target, Local: local, ForceCompression: cmd.String("force-compression"),
				Platforms: cmd.StringSlice("platform"), AllPlatforms: cmd.Bool("all-platforms"),
				Registry: &api.RegistryOptions{PlainHttp: opts.PlainHTTP, Username: opts.Username, Password: opts.Password},
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "pushed %s %s\n", target, resp.GetTarget().GetDigest())
			for _, p := range resp.GetPublished() {
				fmt.Fprintf(s.out, "published conversion %s\n", p)
			}
			for _, w := range resp.GetWarnings() {
				fmt.Fprintln(os.Stderr, "lazyconv: warning:", w)
			}
			return nil
		},
	}
}
